"""The README's commands as a user runs them: the demo pipeline, then the MLflow UI over its store."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.demo", f"paths.root={root}", "model=tiny", "trainer.max_epochs=2",
         "demo.blocks_epochs=1", "trainer.progress_bar=false", "distill.max_epochs=1", "distill.d_model=16",
         "distill.d_ff=32"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc.stdout


def test_demo_prints_metrics_alerts_and_run_ids(demo_run):
    root, out = demo_run
    assert "LogLM on hdfs_loglead/test" in out
    assert "AUROC" in out and "MLflow runs: pretrain" in out
    assert "test FPR" in out and "for a target of 0.01" in out  # the figure a newcomer reads first
    assert "at that FPR no detector exceeds F1" in out  # and what that target allows on this split
    cal = json.loads(next((root / "models").glob("*/calibration.json")).read_text())
    assert cal["n_val_sessions"] >= 99 and cal["val_population"] == "labelled normal" and not cal["warning"]
    alerts = [p for p in (root / "models").glob("*/alerts/*.jsonl") if p.name.count(".") == 1]  # not .ocsf/.rejected
    assert len(alerts) == 1
    for path in alerts:
        for line in path.read_text().splitlines():
            a = json.loads(line)
            assert a["score"] > a["threshold"] and a["surprising_events"] and a["entity"]["type"] == "block_id"
    bundles = [p for p in (root / "bundles").iterdir() if not p.name.startswith(".")]
    assert len(bundles) == 1 and (bundles[0] / "model.onnx").is_file()
    assert (bundles[0] / "alerts" / "detect.jsonl").is_file() and "loglm detect --bundle" in out
    assert re.search(r"alert groups: (\d+) alerts in (\d+) groups", out)  # what the triage page groups
    assert "dataset label: " in out  # whether the top alert is right, from the data's own label
    engine_alerts = (bundles[0] / "alerts" / "detect.jsonl").read_text().splitlines()
    vectors = (bundles[0] / "alerts" / "detect.vectors.jsonl").read_text().splitlines()
    assert len(vectors) == len(engine_alerts) + 1 > 1  # the model's centre, then each alert's session vector
    assert json.loads(vectors[0])["centre_of"] == bundles[0].name
    prepared = json.loads((root / "data" / "hdfs_loglead" / "MANIFEST.json").read_text())["summary"]
    assert prepared["lines"] == {"read": 165563, "accepted": 165563, "rejected": 0, "metadata": 0,
                                 "rejected_by_reason": {}}
    assert prepared["sessions"] == 8050


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_ui_shows_the_demo_runs(demo_run):
    root, _ = demo_run
    port = _free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--default-artifact-root", str(root / "mlartifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up")
        exps = json.loads(urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=loglm-pretrain", timeout=10).read())
        exp_id = exps["experiment"]["experiment_id"]
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [exp_id]}).encode(),
                                     headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(req, timeout=10).read())["runs"]
        assert len(runs) == 1
        for run in runs:
            params = {p["key"] for p in run["data"]["params"]}
            metrics = {m["key"] for m in run["data"]["metrics"]}
            assert "model.d_model" in params and "val/loss" in metrics and "eval/f1" in metrics
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
