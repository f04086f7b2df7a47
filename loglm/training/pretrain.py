"""Pretraining job: prepared shards -> masked-event LogLM -> best weights + calibration, tracked in MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import time
from pathlib import Path

from loglm.config import RootConfig


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler or `kill`) is handled like Ctrl-C: stop, keep the last checkpoint, mark the run."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a Ray worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def encoder_config(cfg: RootConfig, vocab_size: int, gap_buckets: int) -> dict:
    m = cfg.model
    if cfg.data.session.max_events + 2 > m.max_len:  # + [SUM] and [END]
        raise ValueError(f"data.session.max_events={cfg.data.session.max_events} needs model.max_len >= "
                         f"{cfg.data.session.max_events + 2} (got {m.max_len})")
    return {"vocab_size": vocab_size, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
            "d_ff": m.d_ff, "dropout": m.dropout, "max_len": m.max_len, "gap_buckets": gap_buckets}


def resume_target(cfg) -> tuple[str | None, Path | None]:
    """(MLflow run id, Lightning checkpoint) to continue, from ``resume_from`` = run id or checkpoint path."""
    if not cfg.resume_from:
        return None, None
    p = Path(cfg.resume_from).expanduser()
    if p.is_file():
        return (p.parent.name if p.parent.parent.name == "checkpoints" else None), p.resolve()
    ckpt = Path(cfg.paths.root).resolve() / "checkpoints" / cfg.resume_from / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"resume_from={cfg.resume_from!r}: no checkpoint {ckpt} (nor a checkpoint file of that name)")
    return cfg.resume_from, ckpt


def run(cfg) -> dict:
    import lightning.pytorch as pl
    import mlflow
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger
    from omegaconf import OmegaConf

    from loglm import tracking
    from loglm.artifacts import atomic_write_bytes, atomic_write_json
    from loglm.detect.calibrate import calibrate
    from loglm.ingest.prepare import prepared_dir
    from loglm.model.store import finalize, load_model
    from loglm.training.callbacks import BestWeights
    from loglm.training.checkpoint_io import VerifiedCheckpointIO, verify_checkpoint
    from loglm.training.data import SessionDataModule
    from loglm.training.module import LogLMModule
    from loglm.vocab import Vocabulary

    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    if not (data_dir / "vocab.json").is_file():
        raise FileNotFoundError(f"{data_dir} has no prepared data: run `python -m pipelines.prepare data={cfg.data.name}`")
    from loglm.artifacts import verify_manifest

    summary = verify_manifest(data_dir)["summary"]
    vocab = Vocabulary.load(data_dir / "vocab.json")
    pl.seed_everything(cfg.trainer.seed, workers=True)
    enc = encoder_config(cfg, vocab.size, vocab.gap_buckets)
    module = LogLMModule(enc, cfg.objective.mask_ratio, cfg.objective.hypersphere_weight,
                         cfg.objective.center_momentum, cfg.objective.top_k, cfg.trainer.lr,
                         cfg.trainer.weight_decay, cfg.trainer.warmup_steps)
    dm = SessionDataModule(data_dir, cfg.trainer.batch_size, cfg.trainer.num_workers, cfg.trainer.seed)

    tracking.ensure_experiment(cfg, cfg.logger.experiment)
    resume_run, resume_ckpt = resume_target(cfg)
    if resume_ckpt is not None:
        verify_checkpoint(resume_ckpt)  # before any run is touched
    logger = MLFlowLogger(experiment_name=cfg.logger.experiment, tracking_uri=tracking.tracking_uri(cfg),
                          run_name=cfg.logger.run_name, run_id=resume_run,
                          tags=tracking.run_tags(cfg, {"data_sha256": summary["data_sha256"], "stage": "pretrain",
                                                       "model_size": cfg.model.name, "world_size": 1,
                                                       "strategy": "single"}))
    run_id = tracking.start_logger_run(logger)
    if resume_run is None:
        logger.log_hyperparams(tracking.loggable_params(cfg))
    else:
        mlflow.MlflowClient(tracking.tracking_uri(cfg)).set_tag(run_id, "resumed_from", str(resume_ckpt))
    ckpt_dir = Path(cfg.paths.root).resolve() / "checkpoints" / run_id
    model_dir = Path(cfg.paths.root).resolve() / "models" / run_id
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / "vocab.json", model_dir / "vocab.json")
    best = BestWeights(model_dir, {"run_id": run_id, "data_sha256": summary["data_sha256"],
                                   "dataset": cfg.data.name, "objective": dataclasses.asdict(cfg.objective)})
    trainer = pl.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        precision=cfg.trainer.precision, logger=logger, log_every_n_steps=cfg.trainer.log_every_n_steps,
        callbacks=[best, EarlyStopping("val/loss", patience=cfg.trainer.patience, mode="min"),
                   ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, monitor=None,
                                   every_n_epochs=1, enable_version_counter=False)], use_distributed_sampler=False, deterministic=False,
        enable_progress_bar=cfg.trainer.progress_bar, enable_model_summary=cfg.trainer.progress_bar,
        limit_train_batches=cfg.trainer.limit_train_batches, num_sanity_val_steps=0,
        plugins=[VerifiedCheckpointIO()],
    )
    t0 = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            trainer.fit(module, datamodule=dm, ckpt_path=resume_ckpt, weights_only=True)
    except (KeyboardInterrupt, SystemExit) as e:
        # the last epoch's checkpoint stays usable; the run is KILLED, not RUNNING forever
        client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
        client.set_tag(run_id, "interrupted", f"{type(e).__name__} at epoch {trainer.current_epoch}")
        client.set_terminated(run_id, "KILLED")
        print(f"\npretraining interrupted; MLflow run {run_id} marked KILLED. Continue with: "
              f"python -m pipelines.pretrain resume_from={run_id} (same data/model config)", flush=True)
        raise SystemExit(130) from None
    train_s = time.perf_counter() - t0

    atomic_write_bytes(model_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    loaded = load_model(model_dir, verify=False)
    cal = calibrate(loaded.encoder, data_dir, cfg.detect, model_dir)
    finalize(model_dir, data_dir / "vocab.json", {"run_id": run_id, "data_sha256": summary["data_sha256"]})

    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    for k, v in {"calib/threshold": cal["threshold"], "calib/val_fpr": cal["val_fpr_at_threshold"],
                 "perf/train_seconds": train_s, "best/val_loss": best.best, "model/parameters": loaded.encoder.num_parameters()}.items():
        client.log_metric(run_id, k, float(v))
    client.set_tag(run_id, "model_dir", str(model_dir))
    client.log_artifacts(run_id, str(model_dir), "model")
    atomic_write_json(model_dir.parent / "latest.json", {"run_id": run_id, "model_dir": str(model_dir)})
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"run_id": run_id, "model_dir": str(model_dir), "calibration": cal, "metrics": metrics,
            "best_val_loss": best.best, "best_epoch": best.best_epoch, "epochs": trainer.current_epoch,
            "train_seconds": train_s, "tracking_uri": tracking.tracking_uri(cfg)}
