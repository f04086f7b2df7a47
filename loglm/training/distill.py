"""Distillation: a small CPU student learns the teacher's masked-event distributions and hidden states.

This module is the stage (teacher, data, calibration); the student's LightningModule and its loss are in
:mod:`loglm.training.distill_module`, imported only where a process trains, so a mistake (a missing
teacher, unprepared data) is reported before Lightning loads (about 10 s of CPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from loglm.config import trained_data_config
from loglm.model.encoder import EncoderConfig, LogEncoder
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
        from loglm.training.distill_module import DistillModule
        from loglm.training.strategies import unpad_share

        d = cfg.distill
        teacher = load_model(ctx.spec["teacher_dir"], verify=False)  # verified by the driver
        module = DistillModule(teacher.encoder, ctx.encoder,
                               ctx.spec["objective"].get("mask_ratio", cfg.objective.mask_ratio), d.temperature,
                               d.kl_weight, d.hard_weight, d.cosine_weight, d.lr, d.init, d.rtd_weight,
                               d.proposal_temperature, d.proposal_uniform,
                               ctx.spec["objective"].get("unk_rate", 0.0))
        module.student.unpad_share = unpad_share(cfg.strategy, cfg.trainer)  # the teacher infers: padded path
        return module

    def weights_meta(self, cfg, ctx) -> dict:
        return {"objective": ctx.spec["objective"], "distill": dataclasses.asdict(cfg.distill)}

    def finish(self, cfg, ctx, model) -> tuple[dict, dict, dict]:
        from loglm.detect.calibrate import calibrate
        from loglm.detect.score_core import calibrated_config

        spec = ctx.spec
        teacher_cal = spec["teacher_calibration"]
        detect_cfg = student_detect_config(calibrated_config(cfg.detect, teacher_cal) if teacher_cal else cfg.detect,
                                           cfg.distill.rtd_weight)
        cal = calibrate(model.encoder, Path(ctx.data_dir), detect_cfg, Path(ctx.model_dir), cfg.data)
        sizes = {"student_parameters": model.encoder.num_parameters(),
                 "teacher_parameters": spec["teacher_parameters"], "tensors_from_teacher": spec["tensors_from_teacher"]}
        return cal, {"model/teacher_parameters": sizes["teacher_parameters"],
                     "distill/tensors_from_teacher": sizes["tensors_from_teacher"]}, \
            {"teacher_run_id": spec["teacher_run_id"], **sizes}


def student_detect_config(detect_cfg, rtd_weight: float):
    """How the student scores: in one pass with its replaced-event head (``rtd``) when it has one, unless the
    score rule reads each masked prediction's entropy (``mean_excess_surprisal``), which only the ``views``
    scorer makes: then the student keeps the teacher's scorer, and says so."""
    import sys

    from loglm.detect.score_core import score_rule

    if rtd_weight <= 0:
        return detect_cfg
    if score_rule(detect_cfg).excess:
        print(f"loglm: the student scores with detect.scorer=views, not rtd: detect.score={detect_cfg.score} "
              "reads each masked prediction's entropy, which the one-pass replaced-event scorer does not make",
              file=sys.stderr, flush=True)
        return dataclasses.replace(detect_cfg, scorer="views")
    return dataclasses.replace(detect_cfg, scorer="rtd")  # the student scores in one pass


STAGE = Distill()


def run(cfg) -> dict:
    """Distil ``cfg.teacher`` into a student with ``cfg.launcher`` and ``cfg.strategy``; returns the run's summary."""
    return run_job(cfg, STAGE)
