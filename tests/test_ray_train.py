"""Ray Train on a real local Ray (2 CPU workers): DeepSpeed ZeRO-2 pretraining with a worker killed mid-run
resuming from its sharded checkpoint, gathered to fp32, then DDP distillation in the same job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, compose
from synthetic import synthetic_run_overrides

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time (conftest)

RAY = ["launcher=ray", "ray.num_workers=2", "ray.num_cpus=2", "trainer.batch_size=32", "trainer.patience=50"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from loglm.ingest.prepare import run as prepare

    root = tmp_path_factory.mktemp("runs")
    overrides = synthetic_run_overrides(root, 200, seed=5)
    prepare(compose("prepare", overrides))
    return root, overrides


@pytest.fixture(scope="module")
def head():
    """One Ray head on 127.0.0.1 for every job of this module (the killed-worker test finds its workers by the
    PIDs they recorded, not under its own process tree)."""
    from loglm.ray_cluster import LocalHead

    h = LocalHead(num_cpus=2)
    yield [f"ray.address={h.address}"]
    h.stop(timeout_s=3)  # a disposable test cluster: killed if it does not stop at once


def run_info(root: Path, run_id: str):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(run_id)


def train_workers_of(root: Path, storage: Path) -> list[int]:
    """PIDs of this run's Ray Train workers, as each rank recorded itself when training started
    (``<paths.root>/checkpoints/<run id>/workers.jsonl``); the run id is its Ray storage folder's name."""
    runs = [p.name for p in storage.iterdir() if p.is_dir()]
    if len(runs) != 1:
        return []
    path = root / "checkpoints" / runs[0] / "workers.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return sorted(r["pid"] for r in rows)


def test_killed_deepspeed_worker_resumes_from_its_zero_checkpoint_then_ddp_distillation(prepared, head, tmp_path):
    """One job, two strategies, one failure. Pretraining under DeepSpeed ZeRO-2 in bf16 on two CPU processes; ``kill -9``
    of one Ray Train worker after its first checkpoint: Ray restarts the group, which continues from that sharded
    checkpoint (not from step 0) and finishes the same MLflow run; the last checkpoint gathers to fp32 for the
    model folder. Then the student trains on the same workers under DDP. (DDP pretraining on Ray is
    tests/test_two_nodes.py's and tests/test_launch.py's.)"""
    import torch

    from loglm.model.store import load_model
    from loglm.training.distill import run as distill
    from loglm.training.job import resume_target
    from loglm.training.ray_train import latest_ray_checkpoint
    from loglm.training.zero import zero_state_dict

    root, overrides = prepared
    storage = tmp_path / "ray_results"  # this run's own: another run's checkpoints must not trigger the kill
    staged = set(Path(tempfile.gettempdir()).glob("lightning_checkpoints-*"))
    cmd = [sys.executable, "-m", "pipelines.pretrain", *overrides, *RAY, *head, "strategy=deepspeed_stage2",
           "trainer.precision=bf16-mixed", "trainer.max_epochs=5", "ray.max_failures=2", f"ray.storage_path={storage}"]
    log = open(tmp_path / "pretrain.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if list(storage.glob("*/checkpoint_*/checkpoint.ckpt/latest")):  # a whole ZeRO checkpoint
                time.sleep(2.0)  # a checkpoint counts once the controller has registered it
                pids = train_workers_of(root, storage)
                if pids:
                    killed = pids[0]
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.2)
        assert killed, "no checkpoint and worker to kill appeared: " + (tmp_path / "pretrain.log").read_text()[-3000:]
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    out = (tmp_path / "pretrain.log").read_text()
    assert rc == 0, out[-3000:]
    result = json.JSONDecoder().raw_decode(out[out.index('{\n  "run_id"'):])[0]
    run_id = next(p.name for p in storage.iterdir() if p.is_dir())
    attempts = [json.loads(x) for x in (root / "checkpoints" / run_id / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2, attempts
    assert all(a["checkpoint_writers"] == [] for a in attempts), attempts  # only Ray Train checkpoints
    first, second = attempts
    assert first["resumed"] is None and first["start_step"] == 0
    assert second["resumed"] == "ray" and second["start_epoch"] >= 1 and second["start_step"] > 0, attempts  # not 0
    # Ray's report callback stages each epoch's checkpoint in the temp dir; its folders do not outlive the run
    assert set(Path(tempfile.gettempdir()).glob("lightning_checkpoints-*")) <= staged
    run = run_info(root, run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["worker_group_starts"] == "2"
    assert tags["world_size"] == "2" and tags["launcher"] == "ray" and tags["strategy"] == "deepspeed_stage2"
    assert tags["ray_job_id"] and tags["ray_storage"].endswith(run_id)
    assert "val/loss" in run.data.metrics and "calib/threshold" in run.data.metrics  # rank 0 logged, driver too
    # Ray's report of the last epoch carries that epoch's throughput (it once sent the epoch before's, and
    # none at all after a one-epoch run)
    assert result["metrics"]["perf/events_per_s"] == pytest.approx(run.data.metrics["perf/events_per_s"], rel=1e-5)
    model = load_model(root / "models" / run_id)
    assert model.calibration["threshold"] > 0
    # the last ZeRO checkpoint (a folder of shards) gathers to fp32 weights, and those are the model folder's:
    # in bf16 the optimizer's fp32 master weights, not the modules' bf16-rounded copies
    ckpt = latest_ray_checkpoint(storage, run_id)
    assert (ckpt / "latest").is_file()
    state = zero_state_dict(ckpt)
    enc = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    assert set(enc) <= set(state)
    assert all(state[k].dtype == torch.float32 and torch.isfinite(state[k]).all() for k in enc)
    assert all(torch.equal(state[k], v) for k, v in enc.items())
    # resume_from=<Ray run id> finds the checkpoint its workers reported to Ray
    found_run, found = resume_target(compose("pretrain", overrides + RAY + [f"resume_from={run_id}",
                                                                            f"ray.storage_path={storage}"]),
                                     "loglm-pretrain")
    assert found_run == run_id and found.name == "checkpoint.ckpt" and found.parent.parent.name == run_id
    # distillation is the same job: the student trains on the two workers under DDP
    student = distill(compose("distill", overrides + RAY + head + [
        "strategy=ddp", f"teacher={run_id}", "distill.max_epochs=1", "distill.d_model=16",
        "distill.n_layers=1", "distill.d_ff=32"]))
    srun = run_info(root, student["run_id"])
    assert srun.info.status == "FINISHED" and student["worker_group_starts"] == 1 and student["epochs"] == 1
    assert srun.data.tags["world_size"] == "2" and srun.data.tags["strategy"] == "ddp"
    assert srun.data.tags["teacher_run_id"] == run_id and "val/teacher_agreement" in srun.data.metrics
    student_model = load_model(student["model_dir"])
    assert student_model.encoder.cfg.d_model == 16 and student_model.calibration["scorer"] == "rtd"


def test_zero3_trains_two_workers_on_the_shipped_blocks_to_an_fp32_model(head, tmp_path):
    """DeepSpeed ZeRO-3 as a run, not only as a config: two CPU workers, bf16, the shipped HDFS blocks (one row
    group: dealt in slices, tests/test_stream.py). It once hung in its first steps: each rank chose per batch
    whether to skip padding, so the ranks called different submodules, and ZeRO-3's per-submodule weight
    gathers (collectives) waited on each other; ZeRO-3 now always takes the padded path. The model folder
    holds the best epoch's fp32 weights, gathered from the shards while training (here the last epoch's, as
    the last ZeRO checkpoint gathers them)."""
    import torch

    from loglm.model.store import load_model
    from loglm.training.ray_train import latest_ray_checkpoint
    from loglm.training.strategies import unpad_share
    from loglm.training.zero import zero_state_dict

    trainer = compose("pretrain", ["strategy=deepspeed_stage3", "launcher=ray"])
    assert trainer.trainer.unpad_share == 0.1 and unpad_share(trainer.strategy, trainer.trainer) is None
    assert unpad_share(compose("pretrain", ["strategy=deepspeed_stage2"]).strategy, trainer.trainer) is None
    assert unpad_share(compose("pretrain", ["strategy=ddp"]).strategy, trainer.trainer) == 0.1
    root = tmp_path / "runs"
    common = ["data=hdfs_blocks_sample", f"paths.root={root}"]
    subprocess.run([sys.executable, "-m", "pipelines.prepare", *common], cwd=ROOT, check=True, capture_output=True)
    storage = tmp_path / "ray_results"
    cmd = [sys.executable, "-m", "pipelines.pretrain", *common, "model=tiny", "launcher=ray", "ray.num_workers=2",
           "ray.num_cpus=2", *head, f"ray.storage_path={storage}", "strategy=deepspeed_stage3",
           "trainer.precision=bf16-mixed", "trainer.max_epochs=2", "trainer.batch_size=64", "trainer.progress_bar=false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    limit = 400  # about 50 s when it works
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in train_workers_of(root, storage):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"ZeRO-3 on two workers did not finish in {limit} s (hung)")
    assert proc.returncode == 0, out[-3000:]
    result = json.JSONDecoder().raw_decode(out[out.index('{\n  "run_id"'):])[0]
    assert result["epochs"] == 2 and result["global_step"] > 2 and result["worker_group_starts"] == 1
    model = load_model(root / "models" / result["run_id"])
    assert result["best_epoch"] == model.meta["epoch"] == 1  # written at its best epoch, as every strategy does
    state = zero_state_dict(latest_ray_checkpoint(storage, result["run_id"]))
    enc = model.encoder.state_dict()
    assert all(state[f"encoder.{k}"].dtype == torch.float32 and torch.equal(state[f"encoder.{k}"], v)
               for k, v in enc.items())
    assert model.calibration["threshold"] > 0


def test_deepspeed_configs_are_valid_for_deepspeed():
    from deepspeed.runtime.config import DeepSpeedConfig

    from loglm.config import TrainerConfig, load_group
    from loglm.training.strategies import deepspeed_config

    for name, stage in (("deepspeed_stage2", 2), ("deepspeed_stage3", 3)):
        strategy = load_group("strategy", name)
        for precision in ("32-true", "bf16-mixed"):
            ds = deepspeed_config(strategy, TrainerConfig(precision=precision, accelerator="gpu"))
            parsed = DeepSpeedConfig(ds)
            assert parsed.zero_optimization_stage == stage
            assert parsed.bfloat16_config.enabled == (precision == "bf16-mixed")
    with pytest.raises(ValueError, match="no_such_key"):  # pydantic ValidationError is a ValueError
        DeepSpeedConfig({**deepspeed_config(load_group("strategy", "deepspeed_stage2"), TrainerConfig()),
                         "zero_optimization": {"stage": 2, "no_such_key": 1}})
