"""Stage-by-stage runs of the real pipeline on small controlled and shipped data."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import compose, sigterm_at
from synthetic import make_log, synthetic_run_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LogLM trained on 300 normal synthetic blocks (shared by the tests of this module)."""
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    root = tmp_path_factory.mktemp("runs")
    cfg = compose("pretrain", synthetic_run_overrides(root, 300, seed=1) + [
        "data.split.train_frac=0.8", "data.split.val_frac=0.2", "trainer.max_epochs=12", "trainer.batch_size=32",
        "trainer.patience=50", "trainer.lr=0.003", "detect.top_k=1"])
    prep = prepare(cfg)
    result = pretrain(cfg)
    return cfg, prep, result


def test_prepare_writes_hashed_shards_and_vocab(trained):
    from loglm.artifacts import verify_manifest

    cfg, prep, _ = trained
    assert prep["lines"]["read"] == prep["lines"]["accepted"] == 300 * 13
    assert prep["templates_mined"] == 5 and prep["sessions"] == 300
    manifest = verify_manifest(prep["path"] and __import__("pathlib").Path(prep["path"]))
    assert any(k.startswith("sessions/shard-") for k in manifest["files"]) and "vocab.json" in manifest["files"]
    assert len(manifest["summary"]["data_sha256"]) == 64


def test_pretraining_learns_the_normal_lifecycle(trained):
    _, _, result = trained
    assert result["metrics"]["val/masked_acc"] > 0.6
    assert result["calibration"]["n_val_sessions"] > 30


def test_injected_anomalies_outrank_every_normal_session(trained, tmp_path):
    from loglm.detect.detector import run as detect
    from loglm.model.store import load_model

    cfg, _, result = trained
    lines, kinds = make_log(60, seed=99, anomalies={10: "swap", 20: "unseen", 30: "swap", 40: "unseen", 15: "cut"})
    lines.insert(5, "this line has no header")
    lines.insert(9, "081109 203518 143 INFO dfs.DataNode: no block mentioned here")
    log = tmp_path / "new.log"
    log.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    out = tmp_path / "alerts.jsonl"
    summary = detect(replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(out)))

    lines_acct = summary["lines"]
    assert lines_acct["read"] == len(lines) + 1
    assert lines_acct["read"] == lines_acct["accepted"] + lines_acct["rejected"]
    assert lines_acct["rejected"] == 3
    scores = pq.read_table(summary["scores_path"]).to_pylist()
    assert len(scores) == 60 and summary["events_scored"] == lines_acct["accepted"]
    anomalous = [r["score"] for r in scores if r["session_id"] in kinds]
    normal = [r["score"] for r in scores if r["session_id"] not in kinds]
    assert min(anomalous) > max(normal)

    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    alerted = {a["entity"]["value"] for a in alerts}
    assert set(kinds) <= alerted
    unseen = next(a for a in alerts if kinds.get(a["entity"]["value"]) == "unseen")
    ev = max(unseen["surprising_events"], key=lambda e: e["surprisal"])
    assert ev["known_event"] is False and "exception" in ev["raw"] and ev["rank"] is None  # no rank: never seen
    assert ev["template"].startswith("writeBlock <block_id> received exception")
    assert ev["expected"] and ev["line"] > 0 and ev["file"] == str(log)
    assert unseen["entities"]["block_id"] == [unseen["entity"]["value"]] and unseen["entities"]["ip"]
    # a closed session's [END] is scored but is not an event: it never makes the count exceed the events
    assert all(0 <= a["n_unexpected_events"] <= a["n_events"] for a in alerts)
    assert all(isinstance(a["unexpected_end"], bool) for a in alerts)
    # every training block has 13 events: a closed block of 4 is shorter than any, whatever the model thinks
    assert load_model(result["model_dir"]).calibration["min_closed_events"] == 13
    cut = next(a for a in alerts if kinds.get(a["entity"]["value"]) == "cut")
    assert cut["shorter_than_training"] and cut["unexpected_end"] and cut["n_events"] == 4
    assert not any(a["shorter_than_training"] for a in alerts if kinds.get(a["entity"]["value"]) != "cut")
    # severity by rarity among the normal validation sessions the threshold came from
    tail = max(load_model(result["model_dir"]).calibration["val_top_scores"])
    for a in alerts:
        above_all = a["score"] > tail
        assert (a["severity"] in ("high", "critical")) == above_all, a
    rejected = [json.loads(x) for x in open(summary["rejected_path"])]
    assert {r["reason"].split(":")[0] for r in rejected} == {
        "header does not match format hdfs", "no block_id in line", "undecodable bytes"}


def test_mlflow_run_has_params_metrics_and_artifacts(trained):
    import mlflow

    from loglm import tracking

    cfg, _, result = trained
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.d_model"] == "32" and run.data.params["objective.mask_ratio"] == "0.15"
    for key in ("train/loss", "val/loss", "val/masked_acc", "val/top_k_acc", "perf/events_per_s", "calib/threshold"):
        assert key in run.data.metrics, key
    assert run.data.tags["git_commit"] and run.data.tags["data_sha256"]
    assert run.info.run_name == f"pretrain-{cfg.data.name}"  # no logger.run_name: named after the dataset
    # the weights are an MLflow logged model produced by this run (plain files, nothing pickled)
    model = client.get_logged_model(run.data.tags["logged_model_id"])
    assert model.source_run_id == result["run_id"] and model.status == "READY"
    assert model.name == f"loglm-{cfg.data.name}" and float(model.params["threshold"]) == result["calibration"]["threshold"]
    arts = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"model.safetensors", "vocab.json", "config.yaml", "calibration.json"} <= arts
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    # the prepared dataset is the run's input, identified by its digest
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == cfg.data.name and run.data.tags["data_sha256"].startswith(inp.dataset.digest)
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"


def test_tampered_model_is_refused_naming_the_file(trained, tmp_path):
    from loglm.model.store import load_model

    _, _, result = trained
    copy = tmp_path / "model"
    shutil.copytree(result["model_dir"], copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(copy)
    (copy / "calibration.json").unlink()
    with pytest.raises(ValueError, match="calibration.json"):
        load_model(copy)


def test_evaluate_on_shipped_hdfs_head(hdfs_head, tmp_path):
    """Real HDFS lines end to end with a tiny budget: the metrics table and its MLflow run exist."""
    from conftest import SHIPPED_ANOMALOUS

    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    cfg = compose("pretrain", [f"paths.root={tmp_path}", "model=tiny", "data.name=hdfs_head",
                               f"data.inputs=[{hdfs_head}]", f"data.anomalous_ids={SHIPPED_ANOMALOUS}",
                               "trainer.max_epochs=2", "trainer.progress_bar=false", "data.split.train_frac=0.5",
                               "data.split.val_frac=0.2", "detect.small_validation=warn"])
    prep = prepare(cfg)
    assert prep["lines"]["read"] == 3000 and prep["labels_by_split"]
    result = pretrain(cfg)
    ev = evaluate(replace(cfg, ckpt=result["model_dir"]))
    m = ev["metrics"]["all"]
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == m["n"] == prep["sessions_by_split"]["test"]
    assert "F1" in ev["table"] and 0 <= m["fpr"] <= 1
    # the HTML report and its plots are in the evaluation's MLflow run
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    logged = {f.path for f in client.list_artifacts(ev["run_id"], "eval")}
    plots = {f.path for f in client.list_artifacts(ev["run_id"], "eval/plots")}
    assert "eval/report.html" in logged and {"eval/plots/timeline.png", "eval/plots/histogram.png"} <= plots


def test_distill_a_tiny_teacher_into_a_linked_student(trained):
    import mlflow

    from loglm import tracking
    from loglm.model.store import load_model
    from loglm.training.distill import run as distill

    cfg, _, result = trained
    d = replace(cfg.distill, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_epochs=3)
    lr_monitor = [{"_target_": "lightning.pytorch.callbacks.LearningRateMonitor", "logging_interval": "step"}]
    out = distill(replace(cfg, teacher=result["run_id"], distill=d, trainer=replace(cfg.trainer, callbacks=lr_monitor)))
    student = load_model(out["model_dir"])
    assert student.encoder.cfg.d_model == 16 and student.calibration["threshold"] >= 0
    assert out["student_parameters"] < out["teacher_parameters"]
    assert out["metrics"]["val/teacher_agreement"] > 0.5
    assert student.encoder.rtd is not None and student.calibration["scorer"] == "rtd"
    assert out["metrics"]["val/rtd_acc"] > 0.5
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(out["run_id"])
    assert run.data.tags["teacher_run_id"] == result["run_id"] and "distill/kl" in run.data.metrics
    assert run.data.tags["stage"] == "distill" and run.data.tags["strategy"] == "single"
    assert "lr-AdamW" in run.data.metrics  # trainer.callbacks: a user's callback from its _target_
    assert run.data.metrics["train/device/samples_per_sec"] > 0 and run.data.metrics["train/device/flops_per_sec"] > 0
    # the same job as pretraining: given more epochs, the finished run continues from its checkpoint
    steps = out["global_step"]
    more = distill(replace(cfg, teacher=result["run_id"], distill=replace(d, max_epochs=4), resume_from=out["run_id"]))
    assert more["run_id"] == out["run_id"] and more["global_step"] == steps * 4 // 3
    assert client.get_run(out["run_id"]).info.status == "FINISHED"
    assert load_model(more["model_dir"]).meta["teacher_run_id"] == result["run_id"]


def test_a_teacher_scored_by_the_excess_keeps_its_student_on_the_views_scorer(trained, capsys):
    """detect.score=mean_excess_surprisal reads each masked prediction's entropy, which the one-pass rtd scorer
    does not make: the student still learns its replaced-event head but calibrates and detects with views."""
    from loglm.detect.score_core import score_rule
    from loglm.model.store import load_model
    from loglm.training.distill import run as distill
    from loglm.training.distill import student_detect_config
    from loglm.training.pretrain import run as pretrain

    base, _, _ = trained
    cfg = replace(base, detect=replace(base.detect, score="mean_excess_surprisal"),
                  trainer=replace(base.trainer, max_epochs=2))
    teacher = pretrain(cfg)
    assert load_model(teacher["model_dir"]).calibration["score"] == "mean_excess_surprisal"
    d = replace(cfg.distill, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_epochs=1)
    out = distill(replace(cfg, teacher=teacher["run_id"], distill=d))
    student = load_model(out["model_dir"])
    assert student.encoder.rtd is not None  # the head is trained all the same
    assert student.calibration["scorer"] == "views" and student.calibration["score"] == "mean_excess_surprisal"
    assert "the student scores with detect.scorer=views, not rtd" in capsys.readouterr().err
    # every other rule keeps the one-pass scorer
    plain = replace(cfg.detect, score="median_surprisal")
    assert student_detect_config(plain, 1.0).scorer == "rtd" and not score_rule(plain).excess
    assert student_detect_config(plain, 0.0).scorer == plain.scorer


def test_student_inherits_the_teachers_ingest_settings(trained, tmp_path):
    """A student distilled under another default data config still records the teacher's data."""
    from omegaconf import OmegaConf

    from loglm.training.distill import run as distill

    cfg, _, result = trained
    other = replace(cfg, data=replace(cfg.data, name="hdfs_sample", format="bgl"),
                    distill=replace(cfg.distill, d_model=16, n_layers=1, d_ff=32, max_epochs=1))
    out = distill(replace(other, teacher=result["run_id"]))
    data = OmegaConf.load(f"{out['model_dir']}/config.yaml").data
    assert data.name == "synthetic" and data.format == "hdfs"


def test_recalibrate_on_a_new_environments_unlabelled_traffic(trained, tmp_path):
    """pipelines.calibrate: the threshold set again from new traffic alone, into a new model folder; the
    original is untouched, the new one detects, an existing folder or too little traffic is refused."""
    import mlflow

    from loglm import tracking
    from loglm.detect.detector import run as detect
    from loglm.detect.recalibrate import POPULATION
    from loglm.detect.recalibrate import run as recalibrate

    cfg, _, result = trained
    model_dir = Path(result["model_dir"])
    before = (model_dir / "calibration.json").read_bytes()
    lines, kinds = make_log(150, seed=7, anomalies={i: "swap" for i in range(0, 150, 10)})
    log = tmp_path / "site_b.log"
    log.write_text("\n".join(lines) + "\n")
    run_cfg = replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(tmp_path / "recal"),
                      detect=replace(cfg.detect, target_fpr=0.05))
    r = recalibrate(run_cfg)
    new = Path(r["model_dir"])
    assert new == (tmp_path / "recal").resolve() and (model_dir / "calibration.json").read_bytes() == before
    cal = json.loads((new / "calibration.json").read_text())
    assert cal["n_val_sessions"] == 150 and cal["val_population"] == POPULATION and cal["target_fpr"] == 0.05
    assert cal["previous"]["threshold"] == result["calibration"]["threshold"]
    assert cal["recalibrated_on"]["inputs"] == [str(log.resolve())] and cal["recalibrated_on"]["lines"]["read"] == len(lines)
    # at most k = floor(0.05 * 151) - 1 = 6 sessions of the calibration traffic score above the new threshold
    summary = detect(replace(cfg, ckpt=str(new), inputs=[str(log)], out=str(tmp_path / "a.jsonl")))
    assert summary["alerts"] <= 6 and summary["threshold"] == cal["threshold"]
    with pytest.raises(ValueError, match="never replaces"):
        recalibrate(run_cfg)
    small = tmp_path / "few.log"
    small.write_text("\n".join(make_log(5, seed=8)[0]) + "\n")
    with pytest.raises(ValueError, match="5 normal validation items cannot calibrate"):
        recalibrate(replace(run_cfg, inputs=[str(small)], out=str(tmp_path / "r2"),
                            detect=replace(cfg.detect, target_fpr=0.01, small_validation="refuse")))
    assert not (tmp_path / "r2").exists()
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(r["run_id"])
    assert run.data.tags["parent_run_id"] == result["run_id"] and run.data.metrics["calib/threshold"] == cal["threshold"]


def test_recalibration_on_traffic_full_of_unseen_events_keeps_them_alerting(trained, tmp_path):
    """New traffic where 40 % of the sessions hold an event type the model never saw (an attack campaign in
    the unlabelled traffic): with recalibration_unseen=alert the quantile comes from the other sessions and
    every unseen-event session alerts, with their share recorded and warned about; ranking all of them
    ("rank") lifts the threshold among the unseen-event sessions and misses most of them."""
    from loglm.detect.detector import run as detect
    from loglm.detect.recalibrate import run as recalibrate

    cfg, _, result = trained
    lines, kinds = make_log(300, seed=11, anomalies={i: "unseen" for i in range(0, 300, 5) for i in (i, i + 1)})
    log = tmp_path / "site_c.log"
    log.write_text("\n".join(lines) + "\n")
    unseen = {b for b, k in kinds.items() if k == "unseen"}
    assert len(unseen) == 120
    alerted = {}
    for mode in ("alert", "rank"):
        det = replace(cfg.detect, target_fpr=0.05, recalibration_unseen=mode)
        r = recalibrate(replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(tmp_path / mode), detect=det))
        cal = json.loads((Path(r["model_dir"]) / "calibration.json").read_text())
        assert cal["recalibration_unseen"] == mode and abs(cal["unseen_share"] - 0.4) < 1e-9
        out = tmp_path / f"{mode}.jsonl"
        detect(replace(cfg, ckpt=r["model_dir"], inputs=[str(log)], out=str(out), detect=replace(det, report=False)))
        alerted[mode] = {json.loads(x)["session_id"] for x in out.read_text().splitlines()}
        if mode == "alert":
            assert cal["n_val_sessions"] == 180 and "40.0% of the recent traffic" in cal["warning"]
            assert "without an unseen event" in cal["threshold_rule"]
            assert unseen <= alerted["alert"] and len(alerted["alert"] - unseen) <= 0.05 * 181 + 1
        else:
            assert cal["n_val_sessions"] == 300 and not cal["warning"]
    assert len(unseen & alerted["rank"]) < 30  # the old rule: the threshold among the unseen-event sessions
    # traffic where every session holds one: nothing to set the threshold on but them, said loudly
    lines, _ = make_log(120, seed=12, anomalies={i: "unseen" for i in range(120)})
    everything = tmp_path / "site_d.log"
    everything.write_text("\n".join(lines) + "\n")
    r = recalibrate(replace(cfg, ckpt=result["run_id"], inputs=[str(everything)], out=str(tmp_path / "all_unseen"),
                            detect=replace(cfg.detect, target_fpr=0.05)))
    cal = json.loads((Path(r["model_dir"]) / "calibration.json").read_text())
    assert cal["unseen_share"] == 1.0 and cal["n_val_sessions"] == 120 and "every window" in cal["warning"]


def test_recalibration_reads_verdicts_malicious_sessions_out_benign_unseen_ones_ranked(trained, tmp_path):
    """detect.recalibration_feedback: sessions an analyst marked malicious are left out of the traffic the
    threshold comes from; windows with an unseen event in sessions marked benign are ranked with the rest
    (an analyst said they are normal here) while unjudged ones stay aside; calibration.json says how many."""
    from loglm.analyst import feedback as fb
    from loglm.detect.recalibrate import run as recalibrate

    cfg, _, result = trained
    lines, kinds = make_log(300, seed=11, anomalies={i: "unseen" for i in range(0, 300, 5) for i in (i, i + 1)})
    log = tmp_path / "site_c.log"
    log.write_text("\n".join(lines) + "\n")
    unseen = sorted(b for b, k in kinds.items() if k == "unseen")
    table = tmp_path / "feedback.jsonl"
    for sid in unseen[:50]:
        fb.record(table, {"alert_id": f"a-{sid}", "session_id": sid}, "benign")
    for sid in unseen[50:70]:
        fb.record(table, {"alert_id": f"a-{sid}", "session_id": sid}, "malicious")
    det = replace(cfg.detect, target_fpr=0.05)
    plain = recalibrate(replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(tmp_path / "plain"), detect=det))
    r = recalibrate(replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(tmp_path / "judged"),
                            detect=replace(det, recalibration_feedback=str(table))))
    cal = json.loads((Path(r["model_dir"]) / "calibration.json").read_text())
    assert cal["feedback"]["malicious_sessions_left_out"] == 20 and cal["feedback"]["benign_unseen_items_ranked"] == 50
    assert r["feedback"] == cal["feedback"]
    # the 180 other sessions and the 50 benign unseen ones; 20 malicious left out, 50 unjudged unseen aside
    assert cal["n_val_sessions"] == 230 and "judged benign" in cal["val_population"]
    assert abs(cal["unseen_share"] - 100 / 280) < 1e-9
    assert r["threshold"] >= plain["threshold"]  # ranking unseen-event sessions can only lift the quantile
    # 50 of 230 items, far above the 5 % target: the quantile lands among them, above every other item; said
    assert "only unseen events can alert" in cal["warning"] and "pipelines.tune" in cal["warning"]
    assert "(50 of 280 items) is in windows holding an event type the model never saw and no analyst judged benign" in cal["warning"]
    with pytest.raises(FileNotFoundError, match="no such feedback table"):
        recalibrate(replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(tmp_path / "none"),
                            detect=replace(det, recalibration_feedback=str(tmp_path / "missing.jsonl"))))


def test_recalibration_sets_blocks_shorter_than_training_aside_as_it_does_unseen_events(trained, tmp_path):
    """New traffic where 40 of 300 blocks are cut to 4 events (every training block has 13): they alert
    whatever the threshold (detect.short_alarm), so recalibration takes its quantile over the other blocks,
    records their share and warns, and detection with the new threshold alerts on every one of them."""
    from loglm.detect.detector import run as detect
    from loglm.detect.recalibrate import run as recalibrate

    cfg, _, result = trained
    lines, kinds = make_log(300, seed=13, anomalies={i: "cut" for i in range(0, 200, 5)})
    log = tmp_path / "site_e.log"
    log.write_text("\n".join(lines) + "\n")
    det = replace(cfg.detect, target_fpr=0.05)
    r = recalibrate(replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(tmp_path / "recal"), detect=det))
    cal = json.loads((Path(r["model_dir"]) / "calibration.json").read_text())
    assert cal["min_closed_events"] == 13 and cal["short_alarm"]
    assert abs(cal["unseen_share"] - 40 / 300) < 1e-9 and cal["n_val_sessions"] == 260
    assert "closed shorter than every training window" in cal["warning"]
    out = tmp_path / "recal.jsonl"
    detect(replace(cfg, ckpt=r["model_dir"], inputs=[str(log)], out=str(out), detect=replace(det, report=False)))
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    assert set(kinds) <= {a["session_id"] for a in alerts}
    assert all(a["shorter_than_training"] for a in alerts if a["session_id"] in kinds)


def test_transfer_evaluation_scores_other_data_with_the_models_own_vocabulary(trained, tmp_path):
    """pipelines.evaluate ckpt=<model> data=<other prepared data>: not refused for its other vocabulary; the
    other data's test sessions are read again with the model's templates, and an unseen event still alarms."""
    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import run as prepare
    from loglm.shards import read_sessions

    cfg, _, result = trained
    lines, kinds = make_log(120, seed=31, anomalies={i: "unseen" for i in range(3, 120, 12)})
    log = tmp_path / "site_c.log"
    log.write_text("\n".join(lines) + "\n")
    ids = tmp_path / "anomalous.txt"
    ids.write_text("\n".join(kinds) + "\n")
    other = replace(cfg, data=replace(cfg.data, name="site_c", inputs=[str(log)], anomalous_ids=str(ids),
                                      split=replace(cfg.data.split, train_frac=0.5, val_frac=0.1)))
    prep = prepare(other)
    data_dir = Path(prep["path"])
    ev = evaluate(replace(other, ckpt=result["run_id"]))
    assert ev["transfer"] and "transfer: model trained on synthetic" in ev["table"]
    test = read_sessions(data_dir, "test")
    assert ev["metrics"]["all"]["n"] == len(set(test.column("session_id").to_pylist()))
    n_anom = sum(1 for lab in test.column("label").to_pylist() if lab == 1)
    assert n_anom > 0 and ev["metrics"]["all"]["tp"] == n_anom  # every unseen-event block alarms
    # read again out of core (prepare's stages, the model's vocabulary) into a work folder, removed after
    assert sorted(ev["scores"]["ids"]) == sorted(set(test.column("session_id").to_pylist()))
    assert not list(data_dir.parent.glob(f".{data_dir.name}.transfer-*"))


def test_evaluation_scores_its_split_a_piece_at_a_time_with_the_whole_splits_figures(trained, tmp_path):
    """pipelines.evaluate scores its split a shard at a time (ScoredSplit): with sessions cut into chunks
    and shards of 2 rows, so that a session's chunks run on from one shard into the next, every session is
    scored once, whole, and the figures, item scores and alerts are those of one table of the whole split.
    Detection on the prepared split counts each session once too; no work folder is left."""
    from loglm.detect.detector import detect_config_of
    from loglm.detect.detector import run as detect
    from loglm.detect.torch_scoring import score_windows
    from loglm.evaluation import item_metrics, session_scores, session_starts
    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import run as prepare
    from loglm.model.store import load_model
    from loglm.shards import read_sessions, session_files
    from loglm.windows import windows_of

    cfg, prep, result = trained
    # the training data again, a quarter of its validation blocks labelled anomalous (training is untouched,
    # so the vocabulary is the model's), sessions cut into chunks of 5 events and shards of 2 rows
    val_ids = sorted(set(read_sessions(prep["path"], "val").column("session_id").to_pylist()))
    ids_file = tmp_path / "anomalous.txt"
    ids_file.write_text("\n".join(val_ids[::4]) + "\n")
    data = replace(cfg.data, name="pieces", shard_rows=2, session=replace(cfg.data.session, max_events=5),
                   anomalous_ids=str(ids_file))
    run = replace(cfg, data=data, ckpt=result["run_id"], split="val")  # the fixture has no test split
    prep = prepare(run)
    folder = Path(prep["path"])
    test = read_sessions(folder, "val")
    sids = test.column("session_id").to_pylist()
    assert len(sids) > len(set(sids))  # chunked sessions
    straddling = 0
    for a, b in zip(session_files(folder), session_files(folder)[1:]):
        straddling += pq.read_table(a).column("session_id")[-1] == pq.read_table(b).column("session_id")[0]
    assert straddling > 0
    ev = evaluate(run)
    assert not ev["transfer"]
    # the reference: every test session in one table
    loaded = load_model(result["model_dir"])
    ws = score_windows(loaded.encoder, *windows_of(test), detect_config_of(loaded, run.detect))
    ids, labels, scores, seqs = session_scores(test, ws.score)
    ref, _ = item_metrics(ids, labels, scores, seqs, float(loaded.calibration["threshold"]), folder, data,
                          session_starts(test))
    assert sorted(ev["scores"]["ids"]) == sorted(ids) and len(ids) == len(set(sids))
    got = dict(zip(ev["scores"]["ids"], ev["scores"]["scores"]))
    assert np.allclose([got[i] for i in ids], scores, rtol=1e-5, atol=1e-6)
    for part in ("all", "unique"):
        for k in ("n", "tp", "fp", "tn", "fn"):
            assert ev["metrics"][part][k] == ref[part][k], (part, k)
        assert ev["metrics"][part]["auroc"] == pytest.approx(ref[part]["auroc"], abs=1e-9)
    assert ev["metrics"]["fpr_by_period"] == ref["fpr_by_period"]
    report = Path(ev["report"]).read_text()
    n_alerts = int((scores > float(loaded.calibration["threshold"])).sum())
    assert n_alerts > 0 and f"Top alerts ({min(n_alerts, 20)} of {n_alerts})" in report
    assert not [p for p in (Path(cfg.paths.root) / "eval").iterdir() if ".evaluating-" in p.name]
    # detection on the prepared split: a session whose chunks lie in two shards is one session
    summary = detect(replace(run, inputs=[], out=str(tmp_path / "t.jsonl")))
    assert summary["sessions_scored"] == len(set(sids)) and summary["alerts"] == n_alerts
    alerted = [json.loads(x)["session_id"] for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(alerted) == len(set(alerted))


def test_a_diverged_run_fails_instead_of_finishing(tmp_path, monkeypatch):
    """A diverged model (trainer.lr=1e12 made one; that value is now refused when the config is composed)
    scores NaN, so there is no threshold: the run is FAILED with the reason, and latest.json does not point
    at a model that cannot decide anything."""
    import mlflow

    from loglm import tracking
    from loglm.detect import calibrate as calibration
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    with pytest.raises(ValueError, match=r"trainer.lr must be in \(0, 10\]"):  # refused before any work
        compose("pretrain", synthetic_run_overrides(tmp_path, 120, seed=6) + ["trainer.lr=1e12"])
    cfg = compose("pretrain", synthetic_run_overrides(tmp_path, 120, seed=6) + ["trainer.max_epochs=2"])
    real = calibration.score_windows

    def diverged(*args, **kwargs):  # what a diverged model's scores are
        ws = real(*args, **kwargs)
        ws.score[:] = float("nan")
        return ws

    monkeypatch.setattr(calibration, "score_windows", diverged)
    prepare(cfg)
    with pytest.raises(ValueError, match="non-finite"):
        pretrain(cfg)
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "non-finite" in runs[0].data.tags["error"] and "calibration" in runs[0].data.tags["error"]
    assert not (tmp_path / "models" / "latest.json").exists()


def test_detection_reads_inputs_the_way_the_model_was_trained(trained, tmp_path):
    """A detect command that repeats none of the training data.* overrides reads raw inputs with the model's
    own data settings (its config.yaml), but divides the work as the command says (spill partitions, rows
    per shard); detect.data_from=command uses the command's.  A clean rerun leaves no stale rejection file."""
    from loglm.detect.detector import run as detect

    cfg, _, result = trained
    lines, _ = make_log(30, seed=12)
    log = tmp_path / "new.log"
    log.write_text("\n".join(lines) + "\n")
    plain = compose("detect", [f"paths.root={cfg.paths.root}", f"ckpt={result['run_id']}", f"inputs=[{log}]",
                               f"out={tmp_path}/a.jsonl", "data.format=bgl", "data.name=other"])
    summary = detect(plain)  # the command says bgl; the model was trained on hdfs-format lines
    assert summary["lines"]["accepted"] == len(lines) and summary["lines"]["rejected"] == 0
    assert (tmp_path / "a.rejected.jsonl").read_text() == ""
    # how the work is cut stays the command's (this machine's), what is read is the model's
    cut = detect(replace(plain, data=replace(plain.data, spill_partitions=3, shard_rows=1)))
    assert cut["lines"] == summary["lines"] and cut["sessions_scored"] == summary["sessions_scored"]
    assert cut["pieces_scored"] >= cut["sessions_scored"] > summary["pieces_scored"]  # a session a piece
    with pytest.raises(ValueError, match="lines were rejected with data.format='bgl'"):
        detect(replace(plain, detect=replace(plain.detect, data_from="command")))
    with pytest.raises(ValueError, match="data_from must be"):
        detect(replace(plain, detect=replace(plain.detect, data_from="nope")))


def test_detection_on_a_prepared_split_looks_events_up_by_id(trained, tmp_path):
    """pipelines.detect without inputs scores a prepared split; alerts take their raw lines and entities from
    events.parquet by event id (PreparedEvents, prefetched in one pass), the same rows the table holds."""
    from loglm.detect.alerts import PreparedEvents, build_alerts
    from loglm.detect.detector import run as detect
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.store import load_model
    from loglm.shards import read_sessions
    from loglm.windows import windows_of

    cfg, prep, result = trained
    summary = detect(replace(cfg, ckpt=result["run_id"], inputs=[], split="val", out=str(tmp_path / "v.jsonl")))
    val = read_sessions(prep["path"], "val")
    assert summary["sessions_scored"] == len(set(val.column("session_id").to_pylist())) > 0
    # every session alerting (threshold below every score): each one's evidence is looked up
    loaded = load_model(result["model_dir"])
    ws = score_windows(loaded.encoder, *windows_of(val), cfg.detect)
    lookup = PreparedEvents(prep["path"])
    alerts = build_alerts(val, ws, lookup, loaded.vocab, float("-inf"), 3, {"run_id": "t"})
    assert len(alerts) == summary["sessions_scored"] and len(lookup.rows._rows) == sum(map(len, val.column("event_idx").to_pylist()))
    events = pq.read_table(Path(prep["path"]) / "events.parquet").to_pydict()
    raw_at = {(s, n): r for s, n, r in zip(events["source"], events["line_no"], events["raw"])}
    for a in alerts:
        assert a["entities"]["block_id"] == [a["entity"]["value"]]
        for ev in a["surprising_events"]:
            if ev["raw"] is not None:
                assert raw_at[(ev["file"], ev["line"])] == ev["raw"]


def test_detection_with_inputs_of_a_pre_sequenced_format_says_to_prepare_them(trained, tmp_path):
    """Files of event keys (hdfs_blocks, hdfs_keys, id_sequences) carry their protocol's split: detection with
    inputs= names the format and the commands that read them, instead of a log-format error."""
    from loglm.detect.detector import run as detect

    cfg, _, result = trained
    seqs = tmp_path / "blocks.txt"
    seqs.write_text("blk_1,5 5 22 11 9\n")
    run = replace(cfg, ckpt=result["run_id"], inputs=[str(seqs)], out=str(tmp_path / "alerts.jsonl"),
                  data=replace(cfg.data, format="hdfs_blocks"), detect=replace(cfg.detect, data_from="command"))
    with pytest.raises(ValueError, match=r"data.format='hdfs_blocks' is pre-sequenced.*pipelines.prepare.*split=test"):
        detect(run)
    assert not (tmp_path / "alerts.jsonl").exists() and not list(tmp_path.glob(".alerts*"))


def test_batch_detection_scores_raw_inputs_a_shard_at_a_time_with_the_same_alerts(trained, tmp_path):
    """Raw inputs are prepared out of core with the model's vocabulary and scored a shard at a time: the
    alerts are those of one in-memory table of every session (the same ids, scores and evidence), whatever
    the number of shards, in one order; the alerts go to a spill file as pieces come, and the OCSF findings
    are those of grouping every alert at once; the work folders are gone afterwards, also when detection
    fails."""
    from loglm.detect.alerts import build_alerts
    from loglm.detect.detector import detect_config_of, score_input, with_model_data
    from loglm.detect.detector import run as detect
    from loglm.detect.findings import group_alerts, product_version, to_ocsf
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.store import load_model
    from loglm.windows import windows_of

    cfg, _, result = trained
    lines, kinds = make_log(90, seed=77, anomalies={i: "unseen" for i in range(2, 90, 9)})
    log = tmp_path / "new.log"
    log.write_text("\n".join(lines) + "\n")
    outs = {}
    for parts in (1, 7):
        out = tmp_path / f"alerts-{parts}.jsonl"
        run = replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(out),  # the training data settings
                      data=replace(cfg.data, spill_partitions=parts, shard_rows=5 if parts > 1 else 50_000),
                      detect=replace(cfg.detect, data_from="command"))
        summary = detect(run)
        assert summary["sessions_scored"] == 90 and summary["lines"]["accepted"] == len(lines)
        assert (summary["pieces_scored"] == 1) == (parts == 1) and summary["pieces_scored"] >= parts
        outs[parts] = [json.loads(x) for x in out.read_text().splitlines()]
        assert not list(tmp_path.glob(".alerts-*.detecting-*")), "the work folder was left behind"
        assert not list(tmp_path.glob(".alerts-*.alerting-*")), "the alerts' spill was left behind"
        ocsf = [json.loads(x) for x in out.with_suffix(".ocsf.jsonl").read_text().splitlines()]
        assert ocsf == [to_ocsf(f, product_version()) for f in group_alerts(outs[parts], cfg.detect.group_gap_s,
                                                                            cfg.detect.evidence_events)]
    assert outs[1] == outs[7] and len(outs[1]) > 0
    assert [a["score"] for a in outs[7]] == sorted((a["score"] for a in outs[7]), reverse=True)
    # the in-memory reference: every session in one table
    loaded = load_model(result["model_dir"])
    ref_cfg = with_model_data(replace(cfg, ckpt=result["run_id"], inputs=[str(log)]), Path(loaded.folder))
    table, event, _, _ = score_input(ref_cfg, loaded)
    dcfg = detect_config_of(loaded, ref_cfg.detect)
    ws = score_windows(loaded.encoder, *windows_of(table), dcfg)
    ref = build_alerts(table, ws, event, loaded.vocab, float(loaded.calibration["threshold"]), dcfg.evidence_events,
                       {"run_id": loaded.meta.get("run_id"), "model_dir": str(loaded.folder)}, loaded.calibration)
    got = {a["session_id"]: a for a in outs[7]}
    assert set(got) == {a["session_id"] for a in ref}
    for a in ref:
        b = got[a["session_id"]]
        assert b["score"] == a["score"] and b["entities"] == a["entities"]
        assert [e["raw"] for e in b["surprising_events"]] == [e["raw"] for e in a["surprising_events"]]
        assert [e["template"] for e in b["surprising_events"]] == [e["template"] for e in a["surprising_events"]]
    # a failure while reading (every line rejected) leaves no work folder either
    bad = tmp_path / "bad.log"
    bad.write_text("not a log line\n")
    with pytest.raises(ValueError, match="lines were rejected"):
        detect(replace(cfg, ckpt=result["run_id"], inputs=[str(bad)], out=str(tmp_path / "bad.jsonl")))
    assert not [p for p in tmp_path.iterdir() if ".detecting-" in p.name]


def test_embedding_raw_inputs_a_shard_at_a_time_gives_the_same_vectors(trained, tmp_path):
    """pipelines.embed reads raw inputs as batch detection does (out of core, a shard at a time): one piece or
    many, every session gets the same vector, entity and span, and no work folder is left."""
    from loglm.analyst.embed import read_embeddings, torch_embed_fn
    from loglm.analyst.embed import run as embed
    from loglm.model.store import load_model

    cfg, _, result = trained
    lines, _ = make_log(60, seed=78)
    log = tmp_path / "new.log"
    log.write_text("\n".join(lines) + "\n")
    loaded = load_model(result["model_dir"])
    got = {}
    for parts in (1, 7):
        out = tmp_path / f"emb-{parts}.parquet"
        run = replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(out),
                      data=replace(cfg.data, spill_partitions=parts, shard_rows=5 if parts > 1 else 50_000),
                      detect=replace(cfg.detect, data_from="command"))
        summary = embed(run, loaded, torch_embed_fn(loaded.encoder))
        assert summary["sessions"] == 60 and summary["lines"]["accepted"] == len(lines)
        meta, vecs = read_embeddings(out)
        got[parts] = {s: (v, e, a, b) for s, v, e, a, b in zip(meta.column("session_id").to_pylist(), vecs,
                                                               meta.column("entity").to_pylist(),
                                                               meta.column("start_ts").to_pylist(),
                                                               meta.column("end_ts").to_pylist())}
    assert got[1].keys() == got[7].keys()
    for sid, (v, e, a, b) in got[1].items():
        v7, e7, a7, b7 = got[7][sid]
        assert np.allclose(v, v7, atol=1e-5) and (e, a, b) == (e7, a7, b7)
    assert not [p for p in tmp_path.iterdir() if ".detecting-" in p.name or p.name.startswith(".emb")]


STOPPABLE_DETECT = """
import runpy, sys, time
import loglm.detect.detector as detector
tables = detector.DetectionInput.tables
def slow_tables(self):  # the input is prepared in its work folder; the job is stopped while scoring
    for piece in tables(self):
        print("SCORING", flush=True)
        time.sleep(60)
        yield piece
detector.DetectionInput.tables = slow_tables
sys.argv = ["pipelines.detect", *sys.argv[1:]]
runpy.run_module("pipelines.detect", run_name="__main__")
"""


def test_a_stopped_batch_detection_removes_its_work_folder(trained, tmp_path):
    """SIGTERM while batch detection scores: the work folder beside the alerts is removed, no half-written
    scores file is left, it says so and exits 130."""
    import os
    import subprocess
    import sys

    cfg, _, result = trained
    lines, _ = make_log(30, seed=79)
    log = tmp_path / "new.log"
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "alerts" / "a.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE_DETECT, f"paths.root={cfg.paths.root}",
                             f"ckpt={result['model_dir']}", f"inputs=[{log}]", f"out={out}", "logger=none"],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "LOGLM_PROGRESS": "0"})
    err = sigterm_at(proc, "SCORING", lambda: [p for p in out.parent.iterdir() if ".detecting-" in p.name])
    assert proc.returncode == 130, err[-2000:]
    assert "detection stopped by SIGTERM" in err
    assert sorted(p.name for p in out.parent.iterdir()) == [], sorted(p.name for p in out.parent.iterdir())


STOPPABLE_EVALUATE = """
import runpy, sys, time
import loglm.evaluation as evaluation
add = evaluation.ScoredSplit.add
def slow_add(self, table):  # the job is stopped while it scores its split
    print("SCORING", flush=True)
    time.sleep(60)
    return add(self, table)
evaluation.ScoredSplit.add = slow_add
sys.argv = ["pipelines.evaluate", *sys.argv[1:]]
runpy.run_module("pipelines.evaluate", run_name="__main__")
"""


def test_a_stopped_evaluation_removes_its_work_folder(trained, tmp_path):
    """SIGTERM while an evaluation scores its split: the alerts' spill folder is removed, it says so and exits
    130 (the default action killed it and left the folder for the next run to remove)."""
    import os
    import subprocess
    import sys

    cfg, _, result = trained
    root = Path(cfg.paths.root)
    same_data = [f"paths.root={root}", "debug=tests", "data.name=synthetic", f"data.inputs=[{root / 'train.log'}]",
                 "data.anomalous_ids=null", "data.split.method=seeded", "data.split.train_frac=0.8",
                 "data.split.val_frac=0.2", "split=val", f"ckpt={result['model_dir']}", "suite.enabled=false"]
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE_EVALUATE, *same_data],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "LOGLM_PROGRESS": "0"})

    def work():
        return [p for p in (root / "eval").iterdir() if ".evaluating-" in p.name]

    err = sigterm_at(proc, "SCORING", work)
    assert proc.returncode == 130, err[-2000:]
    assert "evaluation stopped by SIGTERM" in err
    assert work() == []


def test_parity_windows_are_drawn_a_shard_at_a_time_as_from_the_whole_splits(trained):
    """Export's parity check draws its windows from validation and test without holding both splits: the
    same rows as drawing from their concatenation (the draw before), for a few rows and for more than exist."""
    import numpy as np
    import pyarrow as pa

    from loglm.shards import read_sessions, sample_sessions, session_files

    _, prep, _ = trained
    assert len(session_files(prep["path"])) > 1
    whole = pa.concat_tables([read_sessions(prep["path"], s) for s in ("val", "test")])
    for n in (7, whole.num_rows + 5):
        idx = np.random.default_rng(0).choice(whole.num_rows, size=min(n, whole.num_rows), replace=False)
        drawn = sample_sessions(prep["path"], ("val", "test"), n)
        assert drawn.num_rows == min(n, whole.num_rows) and drawn.equals(whole.take(pa.array(np.sort(idx))))


def test_split_pieces_keep_sessions_whole_and_even_whatever_the_shards(tmp_path):
    """A split is scored in pieces of at most max_rows rows, each session whole in one piece: a session whose
    chunk rows run on into the next shard is moved there, small shards are gathered, big ones cut at session
    boundaries, and a session longer than a piece is a piece of its own; in order, every row once."""
    import pyarrow as pa

    from loglm.shards import read_sessions, split_pieces, write_session_shard

    rng = np.random.default_rng(0)
    sids, splits = [], []
    for s in range(60):
        n = int(rng.choice([1, 1, 2, 3, 9]))  # chunk rows of one session; one of 9 is longer than a piece
        sids += [f"s{s:02d}"] * n
        splits += [["train", "test"][s % 2]] * n
    rows = pa.table({"session_id": sids, "split": splits})
    (tmp_path / "sessions").mkdir()
    for i, start in enumerate(range(0, rows.num_rows, 7)):  # shards of 7 rows, cut by row count
        write_session_shard(rows.slice(start, 7), tmp_path / "sessions", i)
    test_rows = [sid for sid, sp in zip(sids, splits) if sp == "test"]
    assert read_sessions(tmp_path, "test").column("session_id").to_pylist() == test_rows
    for max_rows in (1, 4, 8, 1000):
        pieces = [p.column("session_id").to_pylist() for p in split_pieces(tmp_path, "test", max_rows)]
        assert [sid for p in pieces for sid in p] == test_rows
        owner = {}
        for k, p in enumerate(pieces):
            for sid in p:
                assert owner.setdefault(sid, k) == k, f"{sid} in two pieces"
            assert len(p) <= max_rows or len(set(p)) == 1
        if max_rows == 1000:
            assert len(pieces) == 1  # every shard's rows gathered
        if max_rows == 8:  # as full as whole sessions allow: no two neighbours would fit in one
            assert all(len(a) + len(b) > 8 for a, b in zip(pieces, pieces[1:]))
