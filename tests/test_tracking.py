"""MLflow bookkeeping: a run's status says how its job ended."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from loglm import tracking


@pytest.fixture()
def client(tmp_path):
    c = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    c.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    return c


def _run(client):
    return client.create_run(client.get_experiment_by_name("t").experiment_id).info.run_id


def test_a_job_that_raises_is_failed_with_its_error(client):
    rid = _run(client)
    with pytest.raises(FileNotFoundError), tracking.run_outcome(client, rid):
        raise FileNotFoundError("model.json")
    run = client.get_run(rid)
    assert run.info.status == "FAILED" and "FileNotFoundError: model.json" in run.data.tags["error"]


def test_a_stopped_job_is_killed_and_a_finished_one_finished(client):
    stopped, done = _run(client), _run(client)
    with pytest.raises(KeyboardInterrupt), tracking.run_outcome(client, stopped):
        raise KeyboardInterrupt
    with tracking.run_outcome(client, done):
        client.log_param(done, "threshold", "1.5")
    assert client.get_run(stopped).info.status == "KILLED"
    assert client.get_run(done).info.status == "FINISHED"


def test_dataset_input_and_logged_model(client, tmp_path):
    rid = _run(client)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    tracking.log_dataset_input(client, rid, tmp_path, {"dataset": "own", "data_sha256": "ab" * 32, "events": 7},
                               "training")
    mid = tracking.log_model_folder(client, rid, folder, "loglm-own", {"threshold": 2.0})
    run = client.get_run(rid)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "own" and inp.dataset.digest == ("ab" * 32)[:36] and '"events": 7' in inp.dataset.profile
    model = client.get_logged_model(mid)
    assert model.status == "READY" and model.params == {"threshold": "2.0"} and model.source_run_id == rid
    assert [a.path for a in client.list_logged_model_artifacts(mid)] == ["model.safetensors"]


@pytest.mark.slow
def test_logger_none_runs_the_whole_job_without_mlflow(tmp_path):
    """logger=none: prepare, pretrain, evaluate, export and detect run; nothing is written to an MLflow store."""
    import json
    from dataclasses import replace

    from conftest import compose
    from synthetic import make_log, synthetic_run_overrides

    from loglm.detect.detector import run as detect
    from loglm.evaluation import run as evaluate
    from loglm.export.writer import run as export
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    lines, kinds = make_log(160, seed=6, anomalies={i: "unseen" for i in range(100, 160, 7)})
    (tmp_path / "labelled.log").write_text("\n".join(lines) + "\n")
    ids = tmp_path / "anomalous.txt"
    ids.write_text("\n".join(kinds) + "\n")
    cfg = compose("export", synthetic_run_overrides(tmp_path, 0, seed=6) + [
        f"data.inputs=[{tmp_path / 'labelled.log'}]", f"data.anomalous_ids={ids}", "data.split.method=chronological",
        "logger=none", "trainer.max_epochs=2", "export.quantize=false", "data.split.train_frac=0.5",
        "data.split.val_frac=0.2"])
    assert cfg.logger._target_ == "loglm.tracking.NoTracking"
    prepare(cfg)
    model = pretrain(cfg)
    assert len(model["run_id"]) == 32 and (tmp_path / "models" / model["run_id"] / "model.safetensors").is_file()
    ev = evaluate(replace(cfg, ckpt=model["model_dir"]))
    assert (tmp_path / "eval" / ev["run_id"] / "metrics.json").is_file()
    bundle = export(replace(cfg, ckpt=model["model_dir"]))
    assert bundle["registry"] is None and (Path(bundle["bundle"]) / "bundle.json").is_file()
    lines, _ = make_log(20, seed=7, anomalies={3: "unseen"})
    log = tmp_path / "new.log"
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "alerts.jsonl"
    detect(replace(cfg, ckpt=model["model_dir"], inputs=[str(log)], out=str(out)))
    assert any(json.loads(x)["entity"]["value"] for x in out.read_text().splitlines())
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


class RecordingTracking(tracking.NoTracking):
    """A tracking backend of a user's own (logger._target_): records what the job asks of it."""

    calls: list[str] = []

    def client(self, cfg):
        RecordingTracking.calls.append("client")
        return super().client(cfg)

    def job_logger(self, cfg, experiment, run_name, run_id=None, tags=None):
        RecordingTracking.calls.append(f"job_logger:{experiment}")
        return super().job_logger(cfg, experiment, run_name, run_id, tags)


def test_the_tracking_backend_comes_from_logger_target(tmp_path):
    """logger._target_ names the backend class: a training job talks to the one named (here a recording
    one of the test's own), and a class that cannot be imported is refused when the config is composed."""
    from conftest import compose
    from synthetic import make_log, synthetic_run_overrides

    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    lines, _ = make_log(120, seed=3)
    (tmp_path / "a.log").write_text("\n".join(lines) + "\n")
    cfg = compose("pretrain", synthetic_run_overrides(tmp_path, 0, seed=3) + [
        f"data.inputs=[{tmp_path / 'a.log'}]", "trainer.max_epochs=1", "detect.small_validation=warn",
        "logger._target_=test_tracking.RecordingTracking"])
    assert isinstance(tracking.backend(cfg), RecordingTracking) and not tracking.enabled(cfg)
    RecordingTracking.calls.clear()
    prepare(cfg)
    model = pretrain(cfg)
    assert "client" in RecordingTracking.calls and "job_logger:loglm-pretrain" in RecordingTracking.calls
    assert (Path(model["model_dir"]) / "model.safetensors").is_file() and not (tmp_path / "mlflow.db").exists()
    assert tracking.enabled(compose("pretrain", [f"paths.root={tmp_path}"]))  # the default: MLflow
    with pytest.raises(Exception, match=r"logger._target_='loglm.tracking.Nope' is not an importable class"):
        compose("pretrain", [f"paths.root={tmp_path}", "logger._target_=loglm.tracking.Nope"])


def test_a_new_store_is_a_copy_of_this_mlflow_versions_empty_one(tmp_path, monkeypatch):
    """A new paths.root's store starts from the empty store built once per machine (MLflow's migrations are not
    replayed for each root); it is the store MLflow would make: its Default experiment is MLflow's own, LogLM's
    experiments and runs work. Where the cache cannot be written, MLflow makes the store itself."""
    from loglm.config import compose

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    template = tracking.store_template_path()
    assert template.parent == tmp_path / "cache" / "loglm" and mlflow.__version__ in template.name
    ids = {}
    for name in ("one", "two"):
        cfg = compose("pretrain", [f"paths.root={tmp_path / name}"])
        ids[name] = tracking.ensure_experiment(cfg, "loglm-pretrain")
        if name == "one":
            built = template.stat().st_mtime_ns
    assert template.stat().st_mtime_ns == built  # the second root reused it
    assert not list(template.parent.glob(".*"))  # no half-written copy left behind
    c = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    default = c.get_experiment("0")
    assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
    exp = c.get_experiment(ids["two"])
    assert exp.name == "loglm-pretrain" and exp.artifact_location == (tmp_path / "two" / "mlartifacts" / "loglm-pretrain").as_uri()
    rid = c.create_run(exp.experiment_id).info.run_id
    c.log_metric(rid, "val/loss", 1.5)
    assert c.get_run(rid).data.metrics == {"val/loss": 1.5}
    assert len(c.search_experiments()) == 2  # Default and loglm-pretrain
    # a cache that cannot be written (a file where its folder should be): MLflow makes the store itself
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "blocked"))
    (tmp_path / "blocked").write_text("")
    assert not tracking.seed_sqlite_store(tmp_path / "x.db") and not (tmp_path / "x.db").exists()
    cfg = compose("pretrain", [f"paths.root={tmp_path / 'three'}"])
    assert tracking.ensure_experiment(cfg, "loglm-pretrain")
    assert mlflow.MlflowClient(tracking.tracking_uri(cfg)).get_experiment("0").name == "Default"
