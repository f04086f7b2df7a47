"""Pretraining on Ray Train: ``TorchTrainer`` runs the same Lightning module and Trainer on
``ray.num_workers`` workers (RayDDPStrategy or RayDeepSpeedStrategy), reports a checkpoint every epoch to
``ray.storage_path``, and restarts the worker group from the latest checkpoint when a worker dies
(``ray.max_failures``).

Data: every worker streams its rank's share of the prepared Parquet shards' row groups
(:mod:`loglm.training.stream`: disjoint per rank, an order drawn from seed and epoch, length-bucketed in a
bounded buffer, equal step counts).  We chose this over Ray Data's streaming split: the split must be
identical after a restart (the stream is a function of seed, epoch, rank and world, and a checkpoint records
how far into the epoch it was), and no dataset service has to run beside the workers.
Rank 0 alone logs to the MLflow run the driver created (one run per job); on a multi-node cluster
``paths.root`` and ``ray.storage_path`` must be shared storage and ``logger.tracking_uri`` an MLflow server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path


def _attempt_logger(path: Path, resumed: str | None):
    import lightning.pytorch as pl

    class AttemptLog(pl.Callback):
        """Rank 0 appends one line per (re)start of the worker group, with the epoch/step training
        resumed at (restored from the checkpoint before on_train_start): the driver and tests read it."""

        def on_train_start(self, trainer, module) -> None:
            import ray

            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_name("workers.jsonl"), "a") as fh:  # where each rank runs (every rank)
                fh.write(json.dumps({"time": time.time(), "rank": trainer.global_rank, "pid": os.getpid(),
                                     "node": ray.get_runtime_context().get_node_id()}) + "\n")
            if not trainer.is_global_zero:
                return
            with open(path, "a") as fh:
                fh.write(json.dumps({"time": time.time(), "resumed": resumed, "pid": os.getpid(),
                                     "world_size": trainer.world_size, "start_epoch": trainer.current_epoch,
                                     "start_step": trainer.global_step,
                                     # Lightning's own checkpoint writers (none: Ray Train checkpoints)
                                     "checkpoint_writers": [type(c).__name__ for c in trainer.checkpoint_callbacks]})
                         + "\n")

    return AttemptLog()


def _worker_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import lightning.pytorch as pl
    import ray.train
    from omegaconf import OmegaConf
    from ray.train.lightning import RayTrainReportCallback, prepare_trainer

    from loglm.config import RootConfig, register_schema
    from loglm.training.job import RunContext, build_trainer, datamodule, get_stage

    register_schema()
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RootConfig), config["cfg"]))
    ctx = RunContext(**config["ctx"])
    pl.seed_everything(cfg.trainer.seed, workers=True)
    module = get_stage(ctx.stage).build_module(cfg, ctx)
    dm = datamodule(cfg, ctx)
    ckpt_path, resumed = None, None
    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts the group after a failure
    if checkpoint is not None:
        resumed = "ray"
    elif ctx.resume_ckpt:
        ckpt_path, resumed = ctx.resume_ckpt, "resume_from"
    trainer, _ = build_trainer(cfg, ctx, on_ray=True,
                               extra_callbacks=[_attempt_logger(Path(ctx.ckpt_dir) / "attempts.jsonl", resumed)])
    trainer = prepare_trainer(trainer)
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.fit(module, datamodule=dm, ckpt_path=os.path.join(d, RayTrainReportCallback.CHECKPOINT_NAME))
    else:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)


def ray_storage(cfg) -> Path:
    """Where Ray Train keeps each run's reported checkpoints (``ray.storage_path``, default runs/ray_results)."""
    return Path(cfg.ray.storage_path or Path(cfg.paths.root) / "ray_results").expanduser().resolve()


def latest_ray_checkpoint(storage: Path, run_id: str) -> Path | None:
    """The newest reported checkpoint of a Ray run (for ``resume_from=<run id>``)."""
    found = sorted((storage / run_id).glob("checkpoint_*/checkpoint.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def fit_on_ray(cfg, ctx) -> dict:
    from omegaconf import OmegaConf
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from loglm import tracking
    from loglm.ray_cluster import ray_session

    storage = ray_storage(cfg)
    plain = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # workers get plain data
    resources = dict(cfg.ray.resources_per_worker) or None
    with ray_session(cfg.ray) as ray:
        client = tracking.client(cfg)
        client.set_tag(ctx.run_id, "ray_job_id", ray.get_runtime_context().get_job_id())
        client.set_tag(ctx.run_id, "ray_storage", str(storage / ctx.run_id))
        dashboard = os.environ.get("RAY_DASHBOARD_URL") or (ray.get_runtime_context().gcs_address if cfg.ray.address else "")
        if dashboard:
            client.set_tag(ctx.run_id, "ray_cluster", dashboard)
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"cfg": plain, "ctx": dataclasses.asdict(ctx)},
            scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                         resources_per_worker=resources,
                                         placement_strategy=cfg.ray.placement_strategy),
            run_config=RunConfig(name=ctx.run_id, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train run {ctx.run_id} failed: {result.error}") from result.error
    attempts_path = Path(ctx.ckpt_dir) / "attempts.jsonl"
    attempts = [json.loads(x) for x in attempts_path.read_text().splitlines()] if attempts_path.is_file() else []
    client.set_tag(ctx.run_id, "worker_group_starts", str(len(attempts)))
    workers_path = attempts_path.with_name("workers.jsonl")
    placed = [json.loads(x) for x in workers_path.read_text().splitlines()] if workers_path.is_file() else []
    last = {w["rank"]: w["node"] for w in placed}  # the last group's placement
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    arch = json.loads((Path(ctx.model_dir) / "model.json").read_text()) if (Path(ctx.model_dir) / "model.json").is_file() else {}
    return {"metrics": metrics, "best_val_loss": float(arch.get("val_loss", metrics.get("val/loss", float("nan")))),
            "best_epoch": int(arch.get("epoch", -1)), "epochs": int(metrics.get("epoch", -1)) + 1,
            "global_step": int(metrics.get("step", -1)), "worker_group_starts": len(attempts),
            "attempts": attempts, "worker_nodes": sorted(set(last.values())), "ray_storage": str(storage / ctx.run_id),
            "checkpoint": result.checkpoint.path if result.checkpoint else None}
