"""Distillation: a small CPU student learns the teacher's masked-event distributions and hidden states.

Loss = kl_weight * KL(teacher || student) on temperature-softened distributions at masked positions (x T^2)
     + hard_weight * cross-entropy on the true masked events
     + cosine_weight * (1 - cos) between projected student and teacher hidden states (all real positions,
       the summary token included).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from loglm.config import trained_data_config
from loglm.model.encoder import EncoderConfig, LogEncoder
from loglm.objectives import IGNORE, hide_facets, mask_events
from loglm.training.job import Setup, Stage
from loglm.training.job import run as run_job
from loglm.vocab import END


def init_from_teacher(student: LogEncoder, teacher: LogEncoder) -> list[str]:
    """Copy tensors whose shapes match; student block i takes teacher block round(i * Lt / Ls)."""
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    ls, lt = student.cfg.n_layers, teacher.cfg.n_layers
    pick = {i: min(lt - 1, round(i * lt / ls)) for i in range(ls)}
    copied = []
    for name, tensor in s_state.items():
        src = name
        if name.startswith("blocks."):
            i = int(name.split(".")[1])
            src = f"blocks.{pick[i]}." + ".".join(name.split(".")[2:])
        if src in t_state and t_state[src].shape == tensor.shape:
            s_state[name] = t_state[src].clone()
            copied.append(name)
    student.load_state_dict(s_state)
    return copied


def propose_replacements(t_logits: torch.Tensor, gold: torch.Tensor, temperature: float, uniform: float,
                         generator=None) -> torch.Tensor:
    """One wrong event per masked position, drawn from the teacher's distribution softened by
    ``temperature`` and mixed with ``uniform`` of a uniform draw; never the true event nor PAD/MASK/UNK/SUM
    ([END], a premature end, is allowed).  A sharp teacher puts nearly all its remaining mass on the one
    plausible alternative (often a normal variant): the student then learns only those hard cases and its
    one-pass detection varies from run to run (hdfs_keys F1 0.92-0.998 over seeds at temperature 1,
    0.9983-0.9985 at 3; `make bench` key inference)."""
    probs = torch.softmax(t_logits.float() / temperature, -1)
    if uniform > 0:
        probs = (1 - uniform) * probs + uniform / probs.shape[-1]
    probs[:, :END] = 0.0
    probs[torch.arange(len(gold)), gold] = 0.0
    probs[probs.sum(-1) == 0, END] = 1.0  # nothing else possible: propose ending here
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class ResumableOneCycle(torch.optim.lr_scheduler.OneCycleLR):
    """OneCycle whose length is this run's: a run resumed with more epochs keeps its step count and learning
    rate state but follows the longer schedule from there (OneCycle refuses to step past its saved length)."""

    def load_state_dict(self, state_dict: dict) -> None:
        total, phases = self.total_steps, self._schedule_phases
        super().load_state_dict(state_dict)
        self.total_steps, self._schedule_phases = total, phases


class DistillModule(pl.LightningModule):
    def __init__(self, teacher: LogEncoder, student_cfg: dict, mask_ratio: float, temperature: float,
                 kl_weight: float, hard_weight: float, cosine_weight: float, lr: float, init: str,
                 rtd_weight: float = 0.0, proposal_temperature: float = 3.0, proposal_uniform: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["teacher"])
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = LogEncoder(EncoderConfig(**student_cfg))
        self.copied = init_from_teacher(self.student, teacher) if init == "layers" else []
        ds, dt = self.student.cfg.d_model, teacher.cfg.d_model
        self.project = torch.nn.Linear(ds, dt) if ds != dt else torch.nn.Identity()
        self.register_buffer("center", torch.zeros(ds))

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (no dropout either)
        return self

    def _losses(self, batch: dict, generator=None) -> dict[str, torch.Tensor]:
        hp = self.hparams
        inputs, labels = mask_events(batch["tokens"], batch["pad_mask"], hp.mask_ratio,
                                     self.student.cfg.vocab_size, generator)
        target = labels != IGNORE
        gaps = hide_facets(batch["gaps"], target)
        with torch.no_grad():
            t_hidden = self.teacher(inputs, gaps, batch["pad_mask"])
            t_logits = self.teacher.logits(t_hidden[target])
        s_hidden = self.student(inputs, gaps, batch["pad_mask"])
        s_logits = self.student.logits(s_hidden[target])
        t = hp.temperature
        kl = F.kl_div(F.log_softmax(s_logits / t, -1), F.log_softmax(t_logits / t, -1), log_target=True,
                      reduction="batchmean") * t * t
        hard = F.cross_entropy(s_logits, labels[target])
        real = batch["pad_mask"]
        cos = 1 - F.cosine_similarity(self.project(s_hidden[real]), t_hidden[real], dim=-1).mean()
        loss = hp.kl_weight * kl + hp.hard_weight * hard + hp.cosine_weight * cos
        out = {"kl": kl, "hard": hard, "cos": cos, "s_logits": s_logits, "gold": labels[target], "t_logits": t_logits}
        if hp.rtd_weight > 0:
            out["rtd"], out["rtd_acc"] = self._replaced_event_loss(batch, target, t_logits, labels[target], generator)
            loss = loss + hp.rtd_weight * out["rtd"]
        out["loss"] = loss
        return out

    def _replaced_event_loss(self, batch, target, t_logits, gold, generator):
        """ELECTRA-style: the teacher proposes plausible wrong events at the masked positions; the student
        says, for every position of the unmasked window, whether its event was replaced."""
        hp = self.hparams
        with torch.no_grad():
            replacement = propose_replacements(t_logits, gold, hp.proposal_temperature, hp.proposal_uniform,
                                               generator)
            corrupted = batch["tokens"].clone()
            corrupted[target] = replacement
            replaced = torch.zeros_like(batch["tokens"], dtype=torch.float)
            replaced[target] = (replacement != gold).float()
            scored = batch["pad_mask"].clone()
            scored[:, 0] = False
        z = self.student.replaced_logit(self.student(corrupted, batch["gaps"], batch["pad_mask"]))
        loss = F.binary_cross_entropy_with_logits(z[scored], replaced[scored])
        acc = ((z[scored] > 0).float() == replaced[scored]).float().mean()
        return loss, acc

    def training_step(self, batch, batch_idx):
        out = self._losses(batch)
        b, length = batch["tokens"].shape  # the teacher's forward is a third of its training step
        self.flops_per_batch = (self.student.train_flops(b, length, self.hparams.mask_ratio)
                                + self.teacher.train_flops(b, length, self.hparams.mask_ratio) / 3)
        bs = batch["tokens"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("distill/kl", out["kl"], batch_size=bs)
        self.log("distill/hard", out["hard"], batch_size=bs)
        self.log("distill/cosine", out["cos"], batch_size=bs)
        if "rtd" in out:
            self.log("distill/rtd", out["rtd"], batch_size=bs)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        gen = torch.Generator().manual_seed(1000 + batch_idx)
        out = self._losses(batch, gen)
        n = out["gold"].numel()
        s_top, t_top = out["s_logits"].argmax(-1), out["t_logits"].argmax(-1)
        self.log("val/loss", out["hard"], prog_bar=True, batch_size=n)
        self.log("val/distill_loss", out["loss"], batch_size=n)
        self.log("val/masked_acc", (s_top == out["gold"]).float().mean(), batch_size=n)
        self.log("val/teacher_agreement", (s_top == t_top).float().mean(), batch_size=n)
        if "rtd" in out:
            self.log("val/rtd_loss", out["rtd"], batch_size=n)
            self.log("val/rtd_acc", out["rtd_acc"], batch_size=n)

    def configure_optimizers(self):
        params = list(self.student.parameters()) + list(self.project.parameters())
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=0.01)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = ResumableOneCycle(opt, max_lr=self.hparams.lr, total_steps=total, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Distill(Stage):
    """The student trains through the same job as pretraining (strategies, Ray, checkpoints, resume, stops);
    it reads its teacher's prepared data with the teacher's ingest settings, and calibrates like the teacher
    did (one-pass replaced-event scoring when it has that head)."""

    name = "distill"
    encoder_attr = "student"
    early_stopping = False  # the student follows a fixed schedule (OneCycle over distill.max_epochs)
    model_name = "loglm-student"

    def experiment(self, cfg) -> str:
        return cfg.distill.experiment

    def max_epochs(self, cfg) -> int:
        return cfg.distill.max_epochs

    def job_config(self, cfg):
        from loglm.model.store import resolve_model_dir

        if not cfg.teacher:
            raise ValueError("give the teacher: teacher=<model directory or MLflow run id>")
        teacher_dir = resolve_model_dir(cfg.teacher, cfg.paths.root)
        return dataclasses.replace(cfg, teacher=str(teacher_dir), data=trained_data_config(teacher_dir, cfg.data))

    def setup(self, cfg) -> Setup:
        from loglm.artifacts import verify_manifest
        from loglm.detect.calibrate import check_validation
        from loglm.ingest.prepare import prepared_dir
        from loglm.model.store import load_model

        teacher = load_model(cfg.teacher)  # verified against its manifest
        data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
        summary = verify_manifest(data_dir)["summary"]
        if teacher.meta.get("data_sha256") and summary["data_sha256"] != teacher.meta["data_sha256"]:
            raise ValueError(f"{data_dir} is not the data teacher {cfg.teacher} was trained on (data_sha256 "
                             f"{summary['data_sha256'][:12]} vs {teacher.meta['data_sha256'][:12]}): prepare it again")
        check_validation(data_dir, cfg.detect, cfg.data)  # the student calibrates on the same split
        d = cfg.distill
        student = {**teacher.encoder.cfg.to_dict(), "d_model": d.d_model, "n_layers": d.n_layers,
                   "n_heads": d.n_heads, "d_ff": d.d_ff, "dropout": d.dropout, "rtd_head": d.rtd_weight > 0}
        if d.rtd_weight > 0:
            # a replaced-event student reads no flow facets: a replacement shown with the original's facets is
            # given away by them, and one shown without would teach "hidden facets = replaced", which never
            # occurs when it scores.  Its input stays the teacher's (the facets are ignored).
            student["n_facets"] = 0
        run_id = teacher.meta.get("run_id")
        # what the driver's finish-up needs of the teacher, read here once (plain data: it travels to the ranks)
        copied = len(init_from_teacher(LogEncoder(EncoderConfig(**student)), teacher.encoder)) if d.init == "layers" else 0
        return Setup(data_dir, Path(cfg.teacher) / "vocab.json", student,
                     {"teacher_run_id": run_id, "parent_run_id": run_id, "dataset": cfg.data.name,
                      "data_sha256": summary["data_sha256"]},
                     {"teacher_dir": cfg.teacher, "teacher_run_id": run_id,
                      "objective": teacher.meta.get("objective", {}), "teacher_calibration": teacher.calibration,
                      "teacher_parameters": teacher.encoder.num_parameters(), "tensors_from_teacher": copied})

    def lineage(self, ctx) -> dict:
        return {"teacher_run_id": ctx.spec.get("teacher_run_id")}

    def build_module(self, cfg, ctx):
        from loglm.model.store import load_model

        d = cfg.distill
        teacher = load_model(ctx.spec["teacher_dir"], verify=False)  # verified by the driver
        module = DistillModule(teacher.encoder, ctx.encoder,
                               ctx.spec["objective"].get("mask_ratio", cfg.objective.mask_ratio), d.temperature,
                               d.kl_weight, d.hard_weight, d.cosine_weight, d.lr, d.init, d.rtd_weight,
                               d.proposal_temperature, d.proposal_uniform)
        module.student.unpad_share = cfg.trainer.unpad_share  # the teacher only infers: padded path
        return module

    def weights_meta(self, cfg, ctx) -> dict:
        return {"objective": ctx.spec["objective"], "distill": dataclasses.asdict(cfg.distill)}

    def finish(self, cfg, ctx, model) -> tuple[dict, dict, dict]:
        from loglm.detect.calibrate import calibrate
        from loglm.detect.score_core import calibrated_config

        spec = ctx.spec
        teacher_cal = spec["teacher_calibration"]
        detect_cfg = calibrated_config(cfg.detect, teacher_cal) if teacher_cal else cfg.detect
        if cfg.distill.rtd_weight > 0:
            detect_cfg = dataclasses.replace(detect_cfg, scorer="rtd")  # the student scores in one pass
        cal = calibrate(model.encoder, Path(ctx.data_dir), detect_cfg, Path(ctx.model_dir), cfg.data)
        sizes = {"student_parameters": model.encoder.num_parameters(),
                 "teacher_parameters": spec["teacher_parameters"], "tensors_from_teacher": spec["tensors_from_teacher"]}
        return cal, {"model/teacher_parameters": sizes["teacher_parameters"],
                     "distill/tensors_from_teacher": sizes["tensors_from_teacher"]}, \
            {"teacher_run_id": spec["teacher_run_id"], **sizes}


STAGE = Distill()


def run(cfg) -> dict:
    """Distil ``cfg.teacher`` into a student with ``cfg.launcher`` and ``cfg.strategy``; returns the run's summary."""
    return run_job(cfg, STAGE)
