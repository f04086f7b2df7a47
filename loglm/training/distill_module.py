"""The student's LightningModule (the stage, with its teacher and data, is :mod:`loglm.training.distill`).

Loss = kl_weight * KL(teacher || student) on temperature-softened distributions at masked positions (x T^2)
     + hard_weight * cross-entropy on the true masked events
     + cosine_weight * (1 - cos) between projected student and teacher hidden states (all real positions,
       the summary token included).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from loglm.model.encoder import EncoderConfig, LogEncoder
from loglm.objectives import IGNORE, hide_as_unseen, hide_facets, mask_events
from loglm.training.distill import init_from_teacher, propose_replacements


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
                 rtd_weight: float = 0.0, proposal_temperature: float = 3.0, proposal_uniform: float = 0.0,
                 unk_rate: float = 0.0):
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
        if self.training:  # the teacher's own training rule: the student learns [UNK] beside its targets too
            inputs = hide_as_unseen(inputs, batch["pad_mask"], target, hp.get("unk_rate", 0.0), generator)
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
        # on the batch's device: a CPU generator cannot draw CUDA tensors (the validation step failed on a GPU)
        gen = torch.Generator(device=batch["tokens"].device).manual_seed(1000 + batch_idx)
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
