"""MLflow bookkeeping: a run's status says how its job ended."""

from __future__ import annotations

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
