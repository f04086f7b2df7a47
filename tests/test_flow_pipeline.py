"""Network flows through the whole pipeline: Zeek conn.log -> flow sentences -> model -> per-flow
evaluation -> alerts that name the hosts, on a small synthetic capture in the real format."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import compose
from flow_fixtures import HOST, write_zeek

pytestmark = pytest.mark.slow


def test_zeek_flows_end_to_end(tmp_path):
    from loglm.detect.detector import run as detect
    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    capture = tmp_path / "conn.log.labeled"
    write_zeek(capture, n_normal=2000, n_attack=150, seed=3)
    cfg = compose("pretrain", [f"paths.root={tmp_path}/runs", "data=zeek_ctu", f"data.inputs=[{capture}]",
                               "data.local_networks=[10.0.0.0/8]", "data.session.window_s=300", "model=tiny",
                               "trainer.max_epochs=8", "trainer.batch_size=16", "trainer.progress_bar=false",
                               "detect.score=mean_surprisal", "detect.small_validation=warn", "data.flow_facets=true"])
    prep = prepare(cfg)
    assert prep["lines"]["metadata"] == 9 and prep["lines"]["rejected"] == 0
    result = pretrain(cfg)
    # calibrated at the unit that is reported: one item per Benign validation flow, not per window
    import pyarrow.parquet as pq

    from loglm.shards import read_sessions

    data_dir = tmp_path / "runs" / "data" / "zeek_ctu"
    labels = pq.read_table(data_dir / "events.parquet").column("label").to_pylist()
    val = read_sessions(data_dir, "val")
    benign = sum(1 for idx in val.column("event_idx").to_pylist() for j in idx if labels[j] == "Benign")
    cal = result["calibration"]
    assert cal["val_population"].startswith("labelled-normal events") and cal["n_val_sessions"] == benign
    # the model reads each flow's facets beside its sentence token (data.flow_facets)
    from loglm.ingest.flows import FACET_FIELDS
    from loglm.model.store import load_model
    from loglm.windows import windows_of

    toks, gaps, _ = windows_of(val)
    assert all(g.shape == (len(t), 1 + len(FACET_FIELDS)) and (g[:, 1:] >= 1).all() for t, g in zip(toks, gaps))
    loaded = load_model(result["model_dir"])
    assert loaded.encoder.cfg.n_facets == loaded.vocab.n_facets > len(FACET_FIELDS)
    assert benign > len(set(val.column("session_id").to_pylist()))
    # the FPR promise counts windows' worth of independent items, not flows: a window's flows share a score
    assert 0 < cal["n_val_effective"] <= len(set(val.column("session_id").to_pylist())) < benign
    assert cal["promise"]["n_normal"] == cal["n_val_effective"]
    # an alert is a session (a host's window): its own threshold from the validation sessions with no Malicious
    # flow and a Benign one, never below the per-flow threshold
    normal_sessions = {sid for sid, idx in zip(val.column("session_id").to_pylist(), val.column("event_idx").to_pylist())
                       if any(labels[j] == "Benign" for j in idx)}
    normal_sessions -= {sid for sid, idx in zip(val.column("session_id").to_pylist(), val.column("event_idx").to_pylist())
                        if any(labels[j] == "Malicious" for j in idx)}
    assert cal["alert_unit"] == "session" and cal["alert_n_val_sessions"] == len(normal_sessions) > 0
    assert cal["alert_threshold"] >= cal["threshold"]
    # the baselines of the suite calibrate on the same items: one per Benign validation flow, carrying the
    # highest score of its session's windows (a scorer that numbers the windows shows which window each took)
    import numpy as np

    from loglm.evaluation_suite import validation_scores

    items = validation_scores(lambda toks, closed: np.arange(len(toks), dtype=float), data_dir, cfg.data)
    assert len(items) == benign == cal["n_val_sessions"]
    assert len(set(items.tolist())) <= len(set(val.column("session_id").to_pylist()))
    run_cfg = replace(cfg, ckpt=result["run_id"])
    from loglm.detect.recalibrate import run as recalibrate

    rec = recalibrate(replace(run_cfg, inputs=[str(capture)], out=str(tmp_path / "recal")))
    assert rec["items"] == rec["lines"]["accepted"] == 2151 and rec["sessions"] < rec["items"]  # one item per flow
    recal = json.loads((tmp_path / "recal" / "calibration.json").read_text())
    assert "per event" in recal["val_population"] and recal["recalibrated_on"]["items"] == 2151
    # the recalibration sets the alert threshold again too, never keeping a stale one
    assert recal["alert_threshold"] >= recal["threshold"] and 0 < recal["alert_n_val_sessions"] <= rec["sessions"]
    # per flow only the unseen flows are set aside (they alert whatever the threshold), not their windows'
    assert 0 < rec["unseen_share"] < 0.2 and "is an event type the model never saw" in rec["warning"], rec["warning"]
    ev = evaluate(run_cfg)
    m = ev["metrics"]["all"]
    assert m["n"] > 100 and m["auroc"] > 0.95  # per flow, Background excluded
    assert "per event" in ev["table"]
    alerts_row = ev["metrics"]["alerts"]  # what an analyst is sent: sessions at the alert threshold
    assert alerts_row["unit"] == "session" and alerts_row["threshold"] == cal["alert_threshold"]
    assert alerts_row["fpr"] <= alerts_row["fpr_at_item_threshold"] and alerts_row["n"] < m["n"]
    assert f"alert threshold {cal['alert_threshold']:.4g} (per session)" in Path(ev["report"]).read_text()

    out = tmp_path / "alerts.jsonl"
    summary = detect(replace(run_cfg, inputs=[str(capture)], out=str(out)))
    assert summary["lines"]["read"] == summary["lines"]["accepted"] + summary["lines"]["rejected"] + 9
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    assert alerts
    # raised at the alert threshold: exactly the scored sessions above it
    assert summary["threshold"] == cal["alert_threshold"] and all(a["threshold"] == round(cal["alert_threshold"], 6)
                                                                  for a in alerts)
    scored = pq.read_table(summary["scores_path"]).to_pylist()
    assert len(alerts) == len({r["session_id"] for r in scored if r["score"] > cal["alert_threshold"]})
    # streaming detection raises its alerts at the same alert threshold
    streamed = detect(replace(run_cfg, inputs=[str(capture)], out=str(tmp_path / "stream.jsonl"), follow=True,
                              follow_exit_s=1))
    live = [json.loads(x) for x in open(streamed["alerts_path"])]
    assert live and all(a["threshold"] == round(cal["alert_threshold"], 6) and a["score"] > cal["alert_threshold"]
                        for a in live)
    top = alerts[0]
    assert top["entity"]["type"] == "src_ip" and top["entity"]["value"] == "198.51.100.7"
    assert HOST in top["entities"]["dst_ip"]
    ev0 = top["surprising_events"][0]
    assert "dir=in" in ev0["template"] and "Malicious" in ev0["raw"] and ev0["line"] > 8
    # the SIEM feed: the scanner's windows grouped into one OCSF Detection Finding
    findings = [json.loads(x) for x in open(summary["findings_path"])]
    scanner = [f for f in findings if f["unmapped"]["loglm"]["entity"]["value"] == "198.51.100.7"]
    assert len(scanner) == 1 and scanner[0]["class_uid"] == 2004
    assert scanner[0]["finding_info"]["related_events_count"] == sum(a["entity"]["value"] == "198.51.100.7" for a in alerts)
    assert {"name": "unmapped.loglm.entities.dst_ip", "type_id": 2, "type": "IP Address", "value": HOST} in scanner[0]["observables"]
    # the torch-free engine reads the facets from its bundle's vocabulary: the same alerts as torch
    from loglm.engine.detect import run as onnx_detect
    from loglm.export.writer import run as export

    bundle = export(replace(run_cfg, export=replace(run_cfg.export, quantize=False)))
    assert bundle["parity"]["fp32"]["min_embedding_cosine"] > 0.999
    # each flow's vector in the graph holds its facets one by one, as torch's does (LogEncoder.event_embedding)
    assert bundle["parity"]["fp32"]["min_event_vector_cosine"] > 0.999
    got = onnx_detect(bundle["bundle"], [str(capture)], str(tmp_path / "onnx.jsonl"), variant="fp32")
    assert got["events_scored"] == summary["events_scored"]
    onnx_alerts = {json.loads(x)["session_id"] for x in open(got["alerts_path"])}
    torch_alerts = {a["session_id"] for a in alerts}
    # the same alerts up to a window sitting at the threshold, which fp32 rounding in onnxruntime can flip
    assert len(onnx_alerts ^ torch_alerts) <= max(1, len(torch_alerts) // 20) and "198.51.100.7" in {
        s.split("@")[0] for s in onnx_alerts}


def test_background_flows_are_skipped_in_training_windows_not_the_windows(tmp_path):
    """A training window is not thrown away because it holds an unlabelled (Background) flow: that flow is
    skipped and the window's Benign flows train; validation and test windows keep every flow."""
    import pyarrow.parquet as pq
    from flow_fixtures import ZEEK_HEADER, zeek_rows

    from loglm.ingest.prepare import run as prepare
    from loglm.shards import read_sessions

    rows = [r.split("\t") for r in zeek_rows(900, 0, seed=1)]
    for i, r in enumerate(rows):
        if i % 7 == 0:
            r[21] = "Background"
    capture = tmp_path / "conn.log.labeled"
    capture.write_text(ZEEK_HEADER + "\n".join("\t".join(r) for r in rows) + "\n")
    cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data=zeek_ctu", f"data.inputs=[{capture}]",
                              "data.local_networks=[10.0.0.0/8]"])
    summary = prepare(cfg)
    data_dir = tmp_path / "runs" / "data" / "zeek_ctu"
    events = pq.read_table(data_dir / "events.parquet").column("label").to_pylist()
    train = read_sessions(data_dir, "train")
    train_events = [j for idx in train.column("event_idx").to_pylist() for j in idx]
    assert train.num_rows > 0 and set(train.column("label").to_pylist()) == {0}
    assert train_events and all(events[j] == "Benign" for j in train_events)  # no Background event trains
    assert summary["sessions_by_split"].get("train_heldout_unlabelled", 0) == 0  # no window was lost
    assert summary["train_events_skipped_unlabelled"] > 0
    val = read_sessions(data_dir, "val")  # validation keeps its Background flows
    assert any(events[j] == "Background" for idx in val.column("event_idx").to_pylist() for j in idx)
