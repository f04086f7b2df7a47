"""pipelines.launch against a real Ray head (`ray start --head --block` on 127.0.0.1, stopped by PID):
the job ingests on Ray Data and pretrains on Ray Train, and the launcher reports its MLflow run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow
DASHBOARD = 8276


@pytest.fixture
def ray_head(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port=6392",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD}",
         "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{DASHBOARD}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("Ray head did not come up:\n" + (tmp_path / "head.log").read_text()[-2000:])
        yield f"http://127.0.0.1:{DASHBOARD}", env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its cluster processes on SIGTERM
        try:
            head.wait(timeout=10)  # usually 3 s; after a job it can hang for minutes, so the group is killed
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.xdist_group("ray")  # one Ray cluster at a time (conftest); the local DDP test runs beside them
def test_launch_submits_prepare_and_pretrain_and_reports_the_run(ray_head, tmp_path):
    import mlflow

    address, env = ray_head
    root = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.launch", "--prepare", "--address", address, "--timeout", "300", "--",
         "experiment=hdfs_demo", "model=tiny", "trainer.max_epochs=1", "trainer.progress_bar=false",
         "strategy=ddp", "ray.num_workers=2", f"paths.root={root}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "submitted Ray job raysubmit_" in out and "SUCCEEDED" in out
    run_id = out.rsplit("MLflow run ", 1)[1].split()[0]
    run = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["launcher"] == "ray" and run.data.tags["world_size"] == "2"
    assert (root / "data" / "hdfs_sample" / "MANIFEST.json").is_file()  # ingest ran in the job (Ray Data)


def test_cluster_manifests_run_the_same_entry_point():
    launcher = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    assert launcher["max_workers"] >= 1 and launcher["head_node_type"] in launcher["available_node_types"]
    gpu = [t for t in launcher["available_node_types"].values() if t.get("resources", {}).get("GPU")]
    assert gpu, "the cluster launcher config has no GPU worker type"
    job = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"]
    assert "pipelines.pretrain" in entry and "launcher=ray" in entry and "strategy=deepspeed_stage2" in entry
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1


@pytest.mark.slow
def test_local_ddp_on_two_processes_trains_one_run(tmp_path):
    """`launcher=local strategy=ddp trainer.devices=2` (conf/launcher/local.yaml): Lightning starts rank 1 by
    running the same command again; it joins rank 0's MLflow run instead of creating (or crashing on) its own."""

    import mlflow
    from synthetic import synthetic_run_overrides

    overrides = synthetic_run_overrides(tmp_path, 80, seed=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "pipelines.prepare", *overrides], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "pipelines.pretrain", *overrides, "launcher=local", "strategy=ddp",
                           "trainer.devices=2", "trainer.max_epochs=2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("loglm-pretrain").experiment_id])
    assert [(r.info.status, r.data.tags["world_size"]) for r in runs] == [("FINISHED", "2")]
    assert '"rank": 1' in proc.stdout and runs[0].info.run_id in proc.stdout
    assert (tmp_path / "models" / runs[0].info.run_id / "calibration.json").is_file()
