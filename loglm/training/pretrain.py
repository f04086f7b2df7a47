"""Pretraining job: prepared shards -> masked-event LogLM -> best weights + calibration, tracked in MLflow."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from loglm.config import RootConfig


def encoder_config(cfg: RootConfig, vocab_size: int, gap_buckets: int) -> dict:
    m = cfg.model
    if cfg.data.session.max_events + 2 > m.max_len:  # + [SUM] and [END]
        raise ValueError(f"data.session.max_events={cfg.data.session.max_events} needs model.max_len >= "
                         f"{cfg.data.session.max_events + 2} (got {m.max_len})")
    return {"vocab_size": vocab_size, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
            "d_ff": m.d_ff, "dropout": m.dropout, "max_len": m.max_len, "gap_buckets": gap_buckets}


def run(cfg) -> dict:
    import lightning.pytorch as pl
    import mlflow
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import MLFlowLogger
    from omegaconf import OmegaConf

    from loglm import tracking
    from loglm.artifacts import atomic_write_bytes, atomic_write_json
    from loglm.detect.calibrate import calibrate
    from loglm.ingest.prepare import prepared_dir
    from loglm.model.store import finalize, load_model
    from loglm.training.callbacks import BestWeights
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
    logger = MLFlowLogger(experiment_name=cfg.logger.experiment, tracking_uri=tracking.tracking_uri(cfg),
                          run_name=cfg.logger.run_name,
                          tags=tracking.run_tags(cfg, {"data_sha256": summary["data_sha256"], "stage": "pretrain",
                                                       "model_size": cfg.model.name, "world_size": 1,
                                                       "strategy": "single"}))
    logger.log_hyperparams(tracking.loggable_params(cfg))
    run_id = logger.run_id
    model_dir = Path(cfg.paths.root).resolve() / "models" / run_id
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / "vocab.json", model_dir / "vocab.json")
    best = BestWeights(model_dir, {"run_id": run_id, "data_sha256": summary["data_sha256"],
                                   "dataset": cfg.data.name, "objective": dataclasses.asdict(cfg.objective)})
    trainer = pl.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        precision=cfg.trainer.precision, logger=logger, log_every_n_steps=cfg.trainer.log_every_n_steps,
        callbacks=[best, EarlyStopping("val/loss", patience=cfg.trainer.patience, mode="min")],
        enable_checkpointing=False, use_distributed_sampler=False, deterministic=False,
        enable_progress_bar=cfg.trainer.progress_bar, enable_model_summary=cfg.trainer.progress_bar,
        limit_train_batches=cfg.trainer.limit_train_batches, num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
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
