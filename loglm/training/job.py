"""One training job for every stage (pretraining, distillation).

The driver validates the data and starts the tracked run once; every training process (this one, local DDP
ranks, Ray Train workers) builds the same Trainer (strategy, plugins, Ray settings, checkpoints, best
weights, throughput); the driver finishes (config, calibration, manifest, MLflow metrics and logged model).
Stop signals, failures and ``resume_from`` (a run id, a checkpoint, or ``auto``) behave the same in every
stage.  A :class:`Stage` says only what differs: which data and run it starts, its LightningModule, its
epochs and learning rate, and how its model is calibrated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from loglm.signals import stop_on_signals


@dataclasses.dataclass
class RunContext:
    """What the driver sets up once and every training process (local or Ray worker) needs."""

    run_id: str
    data_dir: str
    model_dir: str
    ckpt_dir: str
    data_sha256: str
    encoder: dict
    resume_ckpt: str | None = None
    stage: str = "pretrain"
    spec: dict = dataclasses.field(default_factory=dict)  # the stage's own plain settings (e.g. the teacher)


@dataclasses.dataclass
class Setup:
    """What a stage's driver side decides before the run starts."""

    data_dir: Path
    vocab: Path  # copied into the model folder
    encoder: dict
    tags: dict
    spec: dict = dataclasses.field(default_factory=dict)


class Stage:
    """What one kind of training job does differently; everything else is this module's."""

    name = "stage"
    encoder_attr = "encoder"  # the module attribute whose weights become model.safetensors
    early_stopping = True
    sets_latest = False  # the job's model becomes runs/models/latest.json
    model_name = "loglm"  # MLflow logged-model name: <model_name>-<dataset>

    def experiment(self, cfg) -> str:
        raise NotImplementedError

    def job_config(self, cfg):
        """The config the job runs with (a student reads its teacher's data settings); cheap, every rank
        calls it."""
        return cfg

    def setup(self, cfg) -> Setup:
        """Driver side, before the run starts: check the data (and refuse what cannot be calibrated)."""
        raise NotImplementedError

    def lineage(self, ctx: RunContext) -> dict:
        """Where the model comes from besides its data (e.g. the teacher's run): in its weights and manifest."""
        return {}

    def max_epochs(self, cfg) -> int:
        return cfg.trainer.max_epochs

    def build_module(self, cfg, ctx: RunContext):
        raise NotImplementedError

    def weights_meta(self, cfg, ctx: RunContext) -> dict:
        return {}

    def finish(self, cfg, ctx: RunContext, model) -> tuple[dict, dict, dict]:
        """(calibration, metrics to log, extra result keys) for the trained ``model`` (loaded folder)."""
        raise NotImplementedError


def get_stage(name: str) -> Stage:
    """The stage of a run context (Ray workers and DDP ranks rebuild it by name)."""
    if name == "pretrain":
        from loglm.training.pretrain import STAGE
    elif name == "distill":
        from loglm.training.distill import STAGE
    else:
        raise ValueError(f"unknown training stage {name!r}")
    return STAGE


# --------------------------------------------------------------------------------------------- stops, failures

def stopped(cfg, run_id: str, phase: str, exc: BaseException, stage: str = "pretrain") -> SystemExit:
    """A stop signal ended the job: the run is marked KILLED (not RUNNING forever, not FINISHED), the resume
    command printed; the last epoch's checkpoint stays usable.  Returns the SystemExit to raise (exit 130)."""

    from loglm import tracking

    try:
        client = tracking.client(cfg)
        client.set_tag(run_id, "interrupted", f"{type(exc).__name__} during {phase}: {exc}")
        client.set_terminated(run_id, "KILLED")
    except Exception as e:  # the store may be what hangs or fails: still exit
        print(f"loglm: could not mark MLflow run {run_id} KILLED: {e}", flush=True)
    what = "pretraining" if stage == "pretrain" else stage
    print(f"\n{what} interrupted during {phase}; MLflow run {run_id} marked KILLED. Continue with: "
          f"python -m pipelines.{stage} resume_from={run_id} (same data/model config)", flush=True)
    return SystemExit(130)


def interrupted(exc: BaseException) -> bool:
    """A stop: Ctrl-C / SIGTERM, or Lightning's own ``sys.exit(1)`` after it caught one."""
    return isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code not in (0, None))


def mark_failed(cfg, run_id: str, phase: str, exc: BaseException) -> None:
    """An error ended the job: its run is FAILED with the reason, never left RUNNING or shown FINISHED."""

    from loglm import tracking

    try:
        client = tracking.client(cfg)
        client.set_tag(run_id, "error", f"{type(exc).__name__} during {phase}: {exc}"[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception as e:  # report the original error, not the bookkeeping one
        print(f"loglm: could not mark MLflow run {run_id} FAILED: {e}", flush=True)


# ---------------------------------------------------------------------------------------------------- resume

def config_sha256(cfg) -> str:
    """What makes two training commands the same job: the resolved config without ``resume_from``, the
    epoch budgets, and the settings that only change how it is shown (progress bar, stop grace)."""
    from loglm.config import to_plain

    plain = to_plain(cfg)
    plain.pop("resume_from", None)
    for key in ("progress_bar", "stop_grace_s", "max_epochs"):  # a resumed job may be given more epochs
        plain.get("trainer", {}).pop(key, None)
    plain.get("distill", {}).pop("max_epochs", None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def has_checkpoint(cfg, run_id: str) -> bool:
    """A run left a checkpoint to continue from: ``checkpoints/<run>/last.ckpt`` (this machine's launcher) or
    a checkpoint reported to Ray's storage."""
    if (Path(cfg.paths.root).resolve() / "checkpoints" / run_id / "last.ckpt").is_file():
        return True
    from loglm.training.ray_train import latest_ray_checkpoint, ray_storage

    return latest_ray_checkpoint(ray_storage(cfg), run_id) is not None


def latest_unfinished(cfg, experiment: str) -> str | None:
    """``resume_from=auto``: the newest run of this experiment with the same config (tag ``config_sha256``)
    that did not finish (KILLED, FAILED, or RUNNING from a dead process) and left a checkpoint."""

    from loglm import tracking

    client = tracking.client(cfg)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.config_sha256 = '{config_sha256(cfg)}'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        if run.info.status != "FINISHED" and has_checkpoint(cfg, run.info.run_id):
            return run.info.run_id
    return None


def resume_target(cfg, experiment: str) -> tuple[str | None, Path | None]:
    """(MLflow run id, Lightning checkpoint) to continue, from ``resume_from`` = run id or checkpoint path,
    or ``auto``: the latest unfinished run of the same config, else a new run."""
    if cfg.resume_from == "auto":
        found = latest_unfinished(cfg, experiment)
        print(f"loglm: resume_from=auto: {'continuing run ' + found if found else 'no unfinished run of this config; a new run'}",
              flush=True)
        if found is None:
            return None, None
        cfg = dataclasses.replace(cfg, resume_from=found)
    if not cfg.resume_from:
        return None, None
    p = Path(cfg.resume_from).expanduser()
    if p.is_file():
        return (p.parent.name if p.parent.parent.name == "checkpoints" else None), p.resolve()
    ckpt = Path(cfg.paths.root).resolve() / "checkpoints" / cfg.resume_from / "last.ckpt"
    if ckpt.is_file():
        return cfg.resume_from, ckpt
    from loglm.training.ray_train import latest_ray_checkpoint, ray_storage

    reported = latest_ray_checkpoint(ray_storage(cfg), cfg.resume_from)  # a Ray run's, restored by its workers
    if reported is not None:
        return cfg.resume_from, reported
    raise FileNotFoundError(f"resume_from={cfg.resume_from!r}: no checkpoint {ckpt}, no Ray checkpoint of that run "
                            "and no checkpoint file of that name")


# ------------------------------------------------------------------------------------------------ the job

def start_run(cfg, stage: Stage) -> RunContext:
    """Driver side (``cfg`` = ``stage.job_config(...)``): the stage's data and model checked, the MLflow run
    created (or reopened), the model folder laid out."""

    from loglm import tracking
    from loglm.training.checkpoint_files import verify_checkpoint

    s = stage.setup(cfg)
    experiment = stage.experiment(cfg)
    tracking.ensure_experiment(cfg, experiment)
    resume_run, resume_ckpt = resume_target(cfg, experiment)
    if resume_ckpt is not None and not cfg.strategy.sharded_checkpoints and resume_ckpt.is_file():
        verify_checkpoint(resume_ckpt)  # before any run is touched
    logger = tracking.job_logger(cfg, experiment, tracking.default_run_name(cfg, stage.name), resume_run,
                                 tracking.run_tags(cfg, {
        **s.tags, "stage": stage.name, "world_size": cfg.world_size(), "batch_per_process": cfg.per_process_batch(),
        "config_sha256": config_sha256(cfg), "launcher": cfg.launcher.name,
        "strategy": cfg.strategy.name}))
    run_id = tracking.start_logger_run(logger)
    summary = json.loads((s.data_dir / "MANIFEST.json").read_text())["summary"]
    if resume_run is None:
        logger.log_hyperparams(tracking.loggable_params(cfg))
        tracking.log_dataset_input(tracking.client(cfg), run_id, s.data_dir, summary, "training")
    else:
        tracking.client(cfg).set_tag(run_id, "resumed_from", str(resume_ckpt or resume_run))
    root = Path(cfg.paths.root).resolve()
    model_dir = root / "models" / run_id
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(s.vocab, model_dir / "vocab.json")
    return RunContext(run_id, str(s.data_dir), str(model_dir), str(root / "checkpoints" / run_id),
                      summary["data_sha256"], s.encoder, None if resume_ckpt is None else str(resume_ckpt),
                      stage.name, s.spec)


def build_trainer(cfg, ctx: RunContext, on_ray: bool, extra_callbacks: list | None = None):
    """The Lightning Trainer of one training process; only ``on_ray`` and the config differ between a
    laptop, local DDP, and Ray Train workers with DDP or DeepSpeed, for every stage."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from loglm import tracking
    from loglm.training.callbacks import BestWeights
    from loglm.training.checkpoint_io import VerifiedCheckpointIO
    from loglm.training.strategies import lightning_strategy
    from loglm.training.throughput import EventsPerSecond, throughput_monitor

    stage = get_stage(ctx.stage)
    best = BestWeights(Path(ctx.model_dir), {"run_id": ctx.run_id, "data_sha256": ctx.data_sha256,
                                             "dataset": cfg.data.name, **stage.lineage(ctx),
                                             **stage.weights_meta(cfg, ctx)},
                       encoder_attr=stage.encoder_attr)
    from hydra.utils import instantiate

    # EventsPerSecond before Ray's report callback (appended below), which sends the epoch's metrics
    callbacks = [best, throughput_monitor(cfg.trainer.log_every_n_steps), EventsPerSecond(), *(extra_callbacks or []),
                 *(instantiate(spec) for spec in cfg.trainer.callbacks)]  # the user's, from _target_
    if stage.early_stopping:
        callbacks.insert(1, EarlyStopping("val/loss", patience=cfg.trainer.patience, mode="min"))
    plugins = []
    if on_ray:
        from ray.train.lightning import RayLightningEnvironment

        from loglm.training.callbacks import ray_report_callback

        callbacks.append(ray_report_callback())
        plugins.append(RayLightningEnvironment())
        accelerator = "gpu" if cfg.ray.use_gpu else "cpu"
        devices = "auto"
    else:
        callbacks.append(ModelCheckpoint(dirpath=ctx.ckpt_dir, filename="last", save_top_k=1, monitor=None,
                                         every_n_epochs=1, enable_version_counter=False))
        accelerator, devices = cfg.trainer.accelerator, cfg.trainer.devices
    if not cfg.strategy.sharded_checkpoints:
        plugins.append(VerifiedCheckpointIO())  # DeepSpeed writes its own sharded checkpoints
    cuda_matmul_precision(cfg.trainer.matmul_precision, accelerator)
    quiet_lightning()
    # DeepSpeed's micro batch is what one process takes per step
    tcfg = dataclasses.replace(cfg.trainer, accelerator=accelerator, batch_size=cfg.per_process_batch())
    trainer = pl.Trainer(
        max_epochs=stage.max_epochs(cfg), accelerator=accelerator, devices=devices,
        strategy=lightning_strategy(cfg.strategy, tcfg, on_ray), precision=cfg.trainer.precision,
        logger=tracking.lightning_logger(cfg, ctx.run_id, stage.experiment(cfg), stage.name),
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        callbacks=callbacks, plugins=plugins, use_distributed_sampler=False, deterministic=False,
        enable_progress_bar=cfg.trainer.progress_bar, enable_model_summary=cfg.trainer.progress_bar,
        limit_train_batches=cfg.trainer.train_batches(), num_sanity_val_steps=0,
        enable_checkpointing=not on_ray)  # on Ray, RayTrainReportCallback checkpoints (no second, default writer)
    return trainer, best


# Lightning messages that say nothing about a LogLM run: an advertisement, a deprecation inside Lightning's own
# pytree helper, and a caveat about IterableDataset lengths under several loader workers (the training stream,
# loglm.training.stream, loads in the training process, num_workers=0, so the caveat does not apply)
LIGHTNING_NOISE = ("💡 Tip: For seamless cloud logging", "`isinstance(treespec, LeafSpec)` is deprecated",
                   "Your `IterableDataset` has `__len__` defined")


def quiet_lightning() -> None:
    """Drop :data:`LIGHTNING_NOISE` from this process's output (idempotent); every other warning stays."""
    import logging
    import warnings

    for text in LIGHTNING_NOISE[1:]:
        warnings.filterwarnings("ignore", message=re.escape(text))
    # on Lightning's own handler: its messages come from child loggers, which skip a parent logger's filters
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())


class _DropNoise:
    def filter(self, record) -> bool:
        return not str(record.getMessage()).startswith(LIGHTNING_NOISE[0])


def cuda_matmul_precision(precision: str, accelerator: str) -> bool:
    """``trainer.matmul_precision`` for float32 matmuls where this process trains on a CUDA GPU (before the
    Trainer exists, which otherwise warns that tensor cores go unused); True where it was set."""
    import torch

    if accelerator not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return False
    torch.set_float32_matmul_precision(precision)
    return True


def datamodule(cfg, ctx: RunContext):
    from loglm.training.data import SessionDataModule

    return SessionDataModule(ctx.data_dir, cfg.per_process_batch(), cfg.trainer.num_workers, cfg.trainer.seed)


def fit_local(cfg, ctx: RunContext) -> dict:
    import lightning.pytorch as pl

    pl.seed_everything(cfg.trainer.seed, workers=True)
    module = get_stage(ctx.stage).build_module(cfg, ctx)
    trainer, best = build_trainer(cfg, ctx, on_ray=False)
    trainer.fit(module, datamodule=datamodule(cfg, ctx), ckpt_path=ctx.resume_ckpt, weights_only=True)
    return {"metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}, "best_val_loss": best.best,
            "best_epoch": best.best_epoch, "epochs": trainer.current_epoch, "global_step": trainer.global_step}


RUN_CONTEXT_ENV = "LOGLM_RUN_CONTEXT"


def _ddp_child_context() -> RunContext | None:
    """In a process Lightning's local DDP launcher started for rank > 0 (it runs the same command again), the
    driver's run: every rank trains under the one MLflow run rank 0 created; only rank 0 calibrates."""
    raw = os.environ.get(RUN_CONTEXT_ENV)
    if raw and int(os.environ.get("LOCAL_RANK", "0") or 0) > 0:
        return RunContext(**json.loads(raw))
    return None


def run(cfg, stage: Stage) -> dict:
    """Train ``stage`` with ``cfg.launcher`` (local | ray) and ``cfg.strategy``; returns the run's summary."""
    cfg = stage.job_config(cfg)
    child = _ddp_child_context()
    if child is not None:  # rank > 0 of local DDP: train beside rank 0, then leave the rest to it
        fit = fit_local(cfg, child)
        return {"run_id": child.run_id, "rank": int(os.environ["LOCAL_RANK"]), **fit}
    from loglm.model.store import scoring_device

    scoring_device(cfg.detect.device)  # calibration scores here after training: a missing GPU is refused now
    ctx = start_run(cfg, stage)
    if cfg.launcher.name == "local":  # local DDP's launcher starts the other ranks with this environment
        os.environ[RUN_CONTEXT_ENV] = json.dumps(dataclasses.asdict(ctx))
    progress = {"phase": "training"}
    with stop_on_signals(cfg.trainer.stop_grace_s):  # Ctrl-C / SIGTERM: KILLED run, bounded exit
        try:
            return _train_and_finish(cfg, ctx, stage, progress)
        except BaseException as e:
            if not interrupted(e):
                mark_failed(cfg, ctx.run_id, progress["phase"], e)
                raise
            raise stopped(cfg, ctx.run_id, progress["phase"], e, stage.name) from None
        finally:
            os.environ.pop(RUN_CONTEXT_ENV, None)


def _train_and_finish(cfg, ctx: RunContext, stage: Stage, progress: dict) -> dict:
    from loglm import tracking
    from loglm.artifacts import atomic_write_bytes, atomic_write_json
    from loglm.model.store import finalize, load_model

    t0 = time.perf_counter()
    if cfg.launcher.name == "ray":
        from loglm.training.ray_train import fit_on_ray

        fit = fit_on_ray(cfg, ctx)
    elif cfg.launcher.name == "local":
        fit = fit_local(cfg, ctx)
    else:
        raise ValueError(f"launcher.name must be local or ray, got {cfg.launcher.name!r}")
    train_s = time.perf_counter() - t0

    progress["phase"] = "calibration"
    model_dir = Path(ctx.model_dir)
    atomic_write_bytes(model_dir / "config.yaml", tracking.config_yaml(cfg))  # secrets as ***
    loaded = load_model(model_dir, verify=False, device=cfg.detect.device)  # calibration scores on it
    cal, metrics, extra = stage.finish(cfg, ctx, loaded)
    finalize(model_dir, model_dir / "vocab.json", {"run_id": ctx.run_id, "data_sha256": ctx.data_sha256,
                                                   **stage.lineage(ctx)})

    client = tracking.client(cfg)
    for k, v in {"calib/threshold": cal["threshold"], "calib/val_fpr": cal["val_fpr_at_threshold"],
                 "calib/n_val_normal": cal["n_val_sessions"], "calib/expected_fpr": cal["promise"]["expected_fpr"],
                 "calib/fpr_hi_90": cal["promise"]["fpr_interval_90"][1],
                 "perf/train_seconds": train_s, "best/val_loss": fit["best_val_loss"],
                 "model/parameters": loaded.encoder.num_parameters(), **metrics,
                 **({"calib/alert_threshold": cal["alert_threshold"]} if "alert_threshold" in cal else {})}.items():
        client.log_metric(ctx.run_id, k, float(v))
    client.set_tag(ctx.run_id, "model_dir", str(model_dir))
    tracking.log_model_folder(client, ctx.run_id, model_dir, f"{stage.model_name}-{cfg.data.name}", {
        "dataset": cfg.data.name, "data_sha256": ctx.data_sha256, "threshold": cal["threshold"],
        "target_fpr": cfg.detect.target_fpr, "scorer": cal.get("scorer", cfg.detect.scorer), **stage.lineage(ctx), **{f"encoder.{k}": v for k, v in ctx.encoder.items()}},
        step=int(fit.get("global_step") or 0))
    if client.get_run(ctx.run_id).info.status != "FINISHED":
        client.set_terminated(ctx.run_id, "FINISHED")
    if stage.sets_latest:
        atomic_write_json(model_dir.parent / "latest.json", {"run_id": ctx.run_id, "model_dir": str(model_dir)})
    return {"run_id": ctx.run_id, "model_dir": str(model_dir), "calibration": cal, **fit, **extra,
            "train_seconds": train_s, "tracking_uri": tracking.tracking_uri(cfg)}
