"""Pretraining job: prepared shards -> masked-event LogLM -> best weights + calibration, tracked in MLflow."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from loglm.config import RootConfig
from loglm.signals import stop_on_signals


def stopped(cfg, run_id: str, phase: str, exc: BaseException, what: str = "pretraining") -> SystemExit:
    """A stop signal ended the job: the run is marked KILLED (not RUNNING forever, not FINISHED), the resume
    command printed; the last epoch's checkpoint stays usable.  Returns the SystemExit to raise (exit 130)."""

    from loglm import tracking

    try:
        client = tracking.client(cfg)
        client.set_tag(run_id, "interrupted", f"{type(exc).__name__} during {phase}: {exc}")
        client.set_terminated(run_id, "KILLED")
    except Exception as e:  # the store may be what hangs or fails: still exit
        print(f"loglm: could not mark MLflow run {run_id} KILLED: {e}", flush=True)
    hint = (f"python -m pipelines.pretrain resume_from={run_id} (same data/model config)" if what == "pretraining"
            else f"python -m pipelines.{what} with the same arguments")
    print(f"\n{what} interrupted during {phase}; MLflow run {run_id} marked KILLED. Continue with: {hint}",
          flush=True)
    return SystemExit(130)


def interrupted(exc: BaseException) -> bool:
    """A stop: Ctrl-C / SIGTERM, or Lightning's own ``sys.exit(1)`` after it caught one."""
    return isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code not in (0, None))


def encoder_config(cfg: RootConfig, vocab_size: int, gap_buckets: int) -> dict:
    m = cfg.model
    if cfg.data.session.max_events + 2 > m.max_len:  # + [SUM] and [END]
        raise ValueError(f"data.session.max_events={cfg.data.session.max_events} needs model.max_len >= "
                         f"{cfg.data.session.max_events + 2} (got {m.max_len})")
    return {"vocab_size": vocab_size, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
            "d_ff": m.d_ff, "dropout": m.dropout, "max_len": m.max_len, "gap_buckets": gap_buckets}


def config_sha256(cfg) -> str:
    """What makes two pretraining commands the same job: the resolved config without ``resume_from``, the
    epoch budget, and the settings that only change how it is shown (progress bar, stop grace)."""
    import hashlib

    from loglm.config import to_plain

    plain = to_plain(cfg)
    plain.pop("resume_from", None)
    for key in ("progress_bar", "stop_grace_s", "max_epochs"):  # a resumed job may be given more epochs
        plain.get("trainer", {}).pop(key, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def latest_unfinished(cfg) -> str | None:
    """``resume_from=auto``: the newest run of this experiment with the same config (tag ``config_sha256``)
    that did not finish (KILLED, FAILED, or RUNNING from a dead process) and left a checkpoint."""

    from loglm import tracking

    client = tracking.client(cfg)
    exp = client.get_experiment_by_name(cfg.logger.experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.config_sha256 = '{config_sha256(cfg)}'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    root = Path(cfg.paths.root).resolve()
    for run in runs:
        if run.info.status != "FINISHED" and (root / "checkpoints" / run.info.run_id / "last.ckpt").is_file():
            return run.info.run_id
    return None


def resume_target(cfg) -> tuple[str | None, Path | None]:
    """(MLflow run id, Lightning checkpoint) to continue, from ``resume_from`` = run id or checkpoint path,
    or ``auto``: the latest unfinished run of the same config, else a new run."""
    if cfg.resume_from == "auto":
        found = latest_unfinished(cfg)
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
    if not ckpt.is_file():
        raise FileNotFoundError(f"resume_from={cfg.resume_from!r}: no checkpoint {ckpt} (nor a checkpoint file of that name)")
    return cfg.resume_from, ckpt


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


def _logger(cfg, run_id: str | None, tags: dict | None = None):
    from loglm import tracking

    return tracking.job_logger(cfg, cfg.logger.experiment, tracking.default_run_name(cfg, "pretrain"), run_id, tags)


def start_run(cfg) -> RunContext:
    """Driver side: check the data, create (or reopen) the MLflow run, lay out the model folder."""

    from loglm import tracking
    from loglm.artifacts import verify_manifest
    from loglm.ingest.prepare import prepared_dir, stale_reason
    from loglm.training.checkpoint_io import verify_checkpoint
    from loglm.vocab import Vocabulary

    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    if not (data_dir / "vocab.json").is_file():
        raise FileNotFoundError(f"{data_dir} has no prepared data: run `python -m pipelines.prepare data={cfg.data.name}`")
    summary = verify_manifest(data_dir)["summary"]
    stale = stale_reason(data_dir, cfg)
    if stale:
        raise ValueError(f"{stale}: prepare it again (python -m pipelines.prepare with the same data overrides) "
                         "before training on it")
    from loglm.detect.calibrate import check_validation

    small_validation = check_validation(data_dir, cfg.detect, cfg.data)  # refused here, before any training
    vocab = Vocabulary.load(data_dir / "vocab.json")
    enc = encoder_config(cfg, vocab.size, vocab.gap_buckets)
    tracking.ensure_experiment(cfg, cfg.logger.experiment)
    resume_run, resume_ckpt = resume_target(cfg)
    if resume_ckpt is not None and cfg.strategy.name != "deepspeed" and resume_ckpt.is_file():
        verify_checkpoint(resume_ckpt)  # before any run is touched
    world = cfg.world_size()
    logger = _logger(cfg, resume_run, tracking.run_tags(cfg, {
        "data_sha256": summary["data_sha256"], "stage": "pretrain", "model_size": cfg.model.name,
        "world_size": world, "batch_per_process": cfg.per_process_batch(), "config_sha256": config_sha256(cfg),
        "strategy": cfg.strategy.name if cfg.strategy.name != "deepspeed"
        else f"deepspeed_stage{cfg.strategy.zero_stage}", "launcher": cfg.launcher.name}))
    run_id = tracking.start_logger_run(logger)
    if small_validation:
        print(f"loglm: WARNING: {small_validation}", flush=True)
        tracking.client(cfg).set_tag(run_id, "calibration_warning", small_validation)
    if resume_run is None:
        logger.log_hyperparams(tracking.loggable_params(cfg))
        tracking.log_dataset_input(tracking.client(cfg), run_id, data_dir, summary,
                                   "training")
    else:
        tracking.client(cfg).set_tag(run_id, "resumed_from", str(resume_ckpt))
    root = Path(cfg.paths.root).resolve()
    model_dir = root / "models" / run_id
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / "vocab.json", model_dir / "vocab.json")
    return RunContext(run_id, str(data_dir), str(model_dir), str(root / "checkpoints" / run_id),
                      summary["data_sha256"], enc, None if resume_ckpt is None else str(resume_ckpt))


def build_module(cfg, ctx: RunContext):
    from loglm.training.module import LogLMModule

    module = LogLMModule(ctx.encoder, cfg.objective.mask_ratio, cfg.objective.hypersphere_weight,
                         cfg.objective.center_momentum, cfg.objective.top_k, cfg.trainer.lr,
                         cfg.trainer.weight_decay, cfg.trainer.warmup_steps)
    if cfg.init_from:  # tuning: a trained model's weights are the starting point
        from loglm.model.store import load_model

        start = load_model(cfg.init_from)
        module.encoder.load_state_dict(grown_state(start, ctx, cfg.init_from))
        module.center.copy_(start.center)
        module.center_ready.fill_(True)
    return module


def grown_state(start, ctx: RunContext, where: str) -> dict:
    """``start``'s encoder weights for this run's encoder: the same, or, where this run's vocabulary extends
    the model's (tuning with ``tune.grow_vocab``), with a row per new token in the tied embedding and the
    output bias, started from the mean of the model's template rows (a token the model has never seen is
    predicted like an average one until training moves it)."""
    import torch

    from loglm.vocab import SPECIALS, Vocabulary

    old, new = start.encoder.cfg.to_dict(), {**start.encoder.cfg.to_dict(), **ctx.encoder}
    state = start.encoder.state_dict()
    if old == new:
        return state
    if {k: v for k, v in old.items() if k != "vocab_size"} != {k: v for k, v in new.items() if k != "vocab_size"} \
            or new["vocab_size"] < old["vocab_size"]:
        raise ValueError(f"init_from={where}: its encoder {old} does not match this run's {ctx.encoder} "
                         "(same model size, and the same or a grown vocabulary, needed)")
    ours = Vocabulary.load(Path(ctx.data_dir) / "vocab.json")
    if ours.template_ids[:len(start.vocab.template_ids)] != start.vocab.template_ids:
        raise ValueError(f"init_from={where}: this run's vocabulary does not extend the model's (its first "
                         f"{len(start.vocab.template_ids)} templates differ): prepare the data with the model's "
                         "vocabulary (pipelines.tune does)")
    extra = new["vocab_size"] - old["vocab_size"]
    for key in ("tok.weight", "head_bias"):
        rows = state[key]
        known = rows[len(SPECIALS):] if len(rows) > len(SPECIALS) else rows
        state[key] = torch.cat([rows, known.mean(0, keepdim=True).expand(extra, *rows.shape[1:])])
    return state


def build_trainer(cfg, ctx: RunContext, on_ray: bool, extra_callbacks: list | None = None):
    """The Lightning Trainer of one training process; only ``on_ray`` and the config differ between a
    laptop, local DDP, and Ray Train workers with DDP or DeepSpeed."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from loglm import tracking
    from loglm.training.callbacks import BestWeights
    from loglm.training.checkpoint_io import VerifiedCheckpointIO
    from loglm.training.strategies import lightning_strategy

    zero3 = cfg.strategy.name == "deepspeed" and cfg.strategy.zero_stage == 3
    best = BestWeights(Path(ctx.model_dir), {"run_id": ctx.run_id, "data_sha256": ctx.data_sha256,
                                             "dataset": cfg.data.name,
                                             "objective": dataclasses.asdict(cfg.objective)},
                       enabled=not zero3)  # ZeRO-3 shards parameters: weights come from the final checkpoint
    callbacks = [best, EarlyStopping("val/loss", patience=cfg.trainer.patience, mode="min"), *(extra_callbacks or [])]
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
    if cfg.strategy.name != "deepspeed":
        plugins.append(VerifiedCheckpointIO())  # DeepSpeed writes its own sharded checkpoints
    # DeepSpeed's micro batch is what one process takes per step
    tcfg = dataclasses.replace(cfg.trainer, accelerator=accelerator, batch_size=cfg.per_process_batch())
    trainer = pl.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator=accelerator, devices=devices,
        strategy=lightning_strategy(cfg.strategy, tcfg, on_ray), precision=cfg.trainer.precision,
        logger=tracking.lightning_logger(cfg, ctx.run_id), log_every_n_steps=cfg.trainer.log_every_n_steps,
        callbacks=callbacks, plugins=plugins, use_distributed_sampler=False, deterministic=False,
        enable_progress_bar=cfg.trainer.progress_bar, enable_model_summary=cfg.trainer.progress_bar,
        limit_train_batches=cfg.trainer.train_batches(), num_sanity_val_steps=0,
        enable_checkpointing=not on_ray)  # on Ray, RayTrainReportCallback checkpoints (no second, default writer)
    return trainer, best


def _fit_local(cfg, ctx: RunContext) -> dict:
    import lightning.pytorch as pl

    from loglm.training.data import SessionDataModule

    pl.seed_everything(cfg.trainer.seed, workers=True)
    module = build_module(cfg, ctx)
    dm = SessionDataModule(ctx.data_dir, cfg.per_process_batch(), cfg.trainer.num_workers, cfg.trainer.seed)
    trainer, best = build_trainer(cfg, ctx, on_ray=False)
    trainer.fit(module, datamodule=dm, ckpt_path=ctx.resume_ckpt, weights_only=True)
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


def run(cfg) -> dict:
    """Pretrain ``cfg.data`` with ``cfg.launcher`` (local | ray) and ``cfg.strategy``; returns the run's summary."""
    child = _ddp_child_context()
    if child is not None:  # rank > 0 of local DDP: train beside rank 0, then leave the rest to it
        fit = _fit_local(cfg, child)
        return {"run_id": child.run_id, "rank": int(os.environ["LOCAL_RANK"]), **fit}
    ctx = start_run(cfg)
    if cfg.launcher.name == "local":  # local DDP's launcher starts the other ranks with this environment
        os.environ[RUN_CONTEXT_ENV] = json.dumps(dataclasses.asdict(ctx))
    progress = {"phase": "training"}
    with stop_on_signals(cfg.trainer.stop_grace_s):  # Ctrl-C / SIGTERM: KILLED run, bounded exit
        try:
            return _train_and_calibrate(cfg, ctx, progress)
        except BaseException as e:
            if not interrupted(e):
                mark_failed(cfg, ctx.run_id, progress["phase"], e)
                raise
            raise stopped(cfg, ctx.run_id, progress["phase"], e) from None
        finally:
            os.environ.pop(RUN_CONTEXT_ENV, None)


def mark_failed(cfg, run_id: str, phase: str, exc: BaseException) -> None:
    """An error ended the job: its run is FAILED with the reason, never left RUNNING or shown FINISHED."""

    from loglm import tracking

    try:
        client = tracking.client(cfg)
        client.set_tag(run_id, "error", f"{type(exc).__name__} during {phase}: {exc}"[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception as e:  # report the original error, not the bookkeeping one
        print(f"loglm: could not mark MLflow run {run_id} FAILED: {e}", flush=True)


def _train_and_calibrate(cfg, ctx: RunContext, progress: dict) -> dict:

    from loglm import tracking
    from loglm.artifacts import atomic_write_bytes, atomic_write_json
    from loglm.detect.calibrate import calibrate
    from loglm.model.store import finalize, load_model

    t0 = time.perf_counter()
    if cfg.launcher.name == "ray":
        from loglm.training.ray_train import fit_on_ray

        fit = fit_on_ray(cfg, ctx)
    elif cfg.launcher.name == "local":
        fit = _fit_local(cfg, ctx)
    else:
        raise ValueError(f"launcher.name must be local or ray, got {cfg.launcher.name!r}")
    train_s = time.perf_counter() - t0

    progress["phase"] = "calibration"
    model_dir, data_dir = Path(ctx.model_dir), Path(ctx.data_dir)
    atomic_write_bytes(model_dir / "config.yaml", tracking.config_yaml(cfg))  # secrets as ***
    loaded = load_model(model_dir, verify=False)
    cal = calibrate(loaded.encoder, data_dir, cfg.detect, model_dir, cfg.data)
    finalize(model_dir, data_dir / "vocab.json", {"run_id": ctx.run_id, "data_sha256": ctx.data_sha256})

    client = tracking.client(cfg)
    for k, v in {"calib/threshold": cal["threshold"], "calib/val_fpr": cal["val_fpr_at_threshold"],
                 "calib/n_val_normal": cal["n_val_sessions"], "calib/expected_fpr": cal["promise"]["expected_fpr"],
                 "calib/fpr_hi_90": cal["promise"]["fpr_interval_90"][1],
                 "perf/train_seconds": train_s, "best/val_loss": fit["best_val_loss"],
                 "model/parameters": loaded.encoder.num_parameters()}.items():
        client.log_metric(ctx.run_id, k, float(v))
    client.set_tag(ctx.run_id, "model_dir", str(model_dir))
    tracking.log_model_folder(client, ctx.run_id, model_dir, f"loglm-{cfg.data.name}", {
        "dataset": cfg.data.name, "data_sha256": ctx.data_sha256, "threshold": cal["threshold"],
        "target_fpr": cfg.detect.target_fpr, "scorer": cfg.detect.scorer, **{f"encoder.{k}": v for k, v in ctx.encoder.items()}},
        step=int(fit.get("global_step") or 0))
    if client.get_run(ctx.run_id).info.status != "FINISHED":
        client.set_terminated(ctx.run_id, "FINISHED")
    atomic_write_json(model_dir.parent / "latest.json", {"run_id": ctx.run_id, "model_dir": str(model_dir)})
    return {"run_id": ctx.run_id, "model_dir": str(model_dir), "calibration": cal, **fit,
            "train_seconds": train_s, "tracking_uri": tracking.tracking_uri(cfg)}
