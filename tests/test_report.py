"""The HTML report: self-contained, escapes log text, shows curves only when labels exist."""

from __future__ import annotations

import re

import numpy as np
from test_findings import alert

from loglm.report import write_report


def test_report_is_self_contained_and_escapes_log_lines(tmp_path):
    hostile = alert("a1", "user", "<img src=x onerror=alert(1)>", 0, 60, 3.0, "high", [5.0, 1.0])
    hostile["surprising_events"][0]["raw"] = "GET /<script>alert('x')</script> HTTP/1.1"
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1, 0.2, 300), rng.normal(3, 0.5, 30)]
    labels = np.r_[np.zeros(300, int), np.ones(30, int)]
    times = 1.7e9 + np.arange(330) * 60.0
    path = tmp_path / "report.html"
    plots = write_report(path, "LogLM evaluation: test", "model r1", scores, times, 2.0, [hostile], labels=labels,
                         metrics={"all": {"n": 330, "tp": 28, "fp": 1, "tn": 299, "fn": 2, "precision": 0.97,
                                          "recall": 0.93, "f1": 0.95, "fpr": 0.003, "auroc": 0.99, "pr_auc": 0.98}})
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "<img src=x" not in page
    assert set(plots) == {"timeline", "histogram", "pr_curve", "roc_curve"}
    assert all(v.startswith(b"\x89PNG") for v in plots.values())
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing fetched
    assert "Top alerts (1 of 1)" in page and "0.9500" in page and "rgba(192,57,43" in page


def test_report_without_labels_has_no_curves(tmp_path):
    plots = write_report(tmp_path / "r.html", "LogLM detection", "", np.array([0.1, 0.5, 3.0]),
                         np.array([1.7e9, 1.7e9 + 5, 1.7e9 + 9]), 1.0, [])
    assert set(plots) == {"timeline", "histogram"}
    assert "No session scored above the threshold" in (tmp_path / "r.html").read_text()


def test_curves_are_scikit_learns_points():
    """The report's PR and ROC curves (numpy, so the engine does not import scikit-learn/scipy/pandas) give
    scikit-learn's points on tied integer scores."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from loglm.report import curves

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 300))
        y, s = rng.integers(0, 2, n), rng.integers(0, 20, n).astype(float)
        y[:2] = [0, 1]
        p, r, f, t = curves(y, s)
        want_p, want_r, _ = precision_recall_curve(y, s)
        want_f, want_t, _ = roc_curve(y, s, drop_intermediate=False)
        assert np.allclose(np.r_[p[:-1][::-1], 1], want_p) and np.allclose(np.r_[r[:-1][::-1], 0], want_r)
        assert np.allclose(f, want_f) and np.allclose(t, want_t)


def test_a_partial_bench_run_keeps_the_sections_bench_md_holds(tmp_path, monkeypatch):
    """`make bench ARGS="--only X"` in a checkout without reports/bench.json (it is written, not shipped
    before): the other sections come back from bench.md, values typed, instead of being dropped."""
    import benchmarks.run as bench

    monkeypatch.setattr(bench, "REPORTS", tmp_path)
    speeds = iter([0.78, 1.7])  # the machine's speed at each run (cpu_reference_s, below)
    monkeypatch.setattr(bench, "cpu_reference_s", lambda: next(speeds))
    bench.write_reports({"scale": {"lines_per_s": 66402, "ok": True, "sizes": {"1M": {"lines": 1000005, "s": 14.4}}},
                         "accuracy": {"hdfs": {"loglm": {"f1": 0.99, "fpr": 0.004}}}})
    before = (tmp_path / "bench.md").read_text()
    (tmp_path / "bench.json").unlink()
    bench.write_reports({"analyst": {"fewshot_accuracy_k5": 0.85}})
    after = (tmp_path / "bench.md").read_text()
    assert "## analyst" in after and before.split("## scale", 1)[1] in after  # earlier sections as they were
    kept = __import__("json").loads((tmp_path / "bench.json").read_text())
    assert kept["scale"]["lines_per_s"] == 66402 and kept["scale"]["ok"] is True
    assert kept["scale"]["sizes"]["1M"] == {"lines": 1000005, "s": 14.4}
    assert kept["accuracy"]["hdfs"]["loglm"]["f1"] == 0.99 and kept["analyst"]["fewshot_accuracy_k5"] == 0.85
    # each section keeps how fast the machine was when it was measured
    assert kept["scale"]["cpu_reference_s"] == 0.78 and kept["analyst"]["cpu_reference_s"] == 1.7
    assert "| cpu_reference_s | 1.7 |" in after
    monkeypatch.undo()
    assert 0 < bench.cpu_reference_s(n=100_000, repeats=2) < 10


def test_a_partial_accuracy_run_says_which_protocols_it_measured(tmp_path, monkeypatch):
    """`--accuracy-datasets X` re-measures one protocol and keeps the others' rows: the section's time names
    the kept protocols, and bench.md lists when each protocol's run was measured."""
    import benchmarks.run as bench

    monkeypatch.setattr(bench, "REPORTS", tmp_path)
    monkeypatch.setattr(bench, "cpu_reference_s", lambda: 0.3)
    run = {"protocol": "hdfs", "seconds": 60.0, "measured_at": "2026-12-01 10:00:00"}
    bench.write_reports({"accuracy": {"hdfs": {"loglm": {"f1": 0.99}}}, "accuracy_runs": {"hdfs": run}})
    bench.write_reports({"accuracy": {"cic": {"loglm": {"f1": 0.97}}},
                         "accuracy_runs": {"cic": {**run, "protocol": "cic", "measured_at": "2026-12-03 08:00:00"}}})
    kept = __import__("json").loads((tmp_path / "bench.json").read_text())
    assert kept["accuracy"]["hdfs"]["loglm"]["f1"] == 0.99 and kept["accuracy"]["cic"]["loglm"]["f1"] == 0.97
    assert kept["accuracy"]["measured_at"].endswith("(not hdfs: see accuracy_runs)")
    md = (tmp_path / "bench.md").read_text()
    assert "| hdfs | hdfs | 60.0 | 2026-12-01 10:00:00 |" in md and "| cic | cic | 60.0 | 2026-12-03 08:00:00 |" in md
    # a checkout has bench.md but no bench.json (ignored): the runs table is read back as one row per protocol,
    # and the next partial run replaces its protocol's row instead of nesting the table in a "runs" row
    (tmp_path / "bench.json").unlink()
    bench.write_reports({"accuracy": {"cic": {"loglm": {"f1": 0.98}}},
                         "accuracy_runs": {"cic": {**run, "protocol": "cic", "measured_at": "2026-12-04 09:00:00"}}})
    again = __import__("json").loads((tmp_path / "bench.json").read_text())
    assert {k for k, v in again["accuracy_runs"].items() if isinstance(v, dict)} == {"hdfs", "cic"}
    assert again["accuracy_runs"]["hdfs"]["measured_at"] == "2026-12-01 10:00:00"
    md = (tmp_path / "bench.md").read_text()
    assert md.count("### accuracy_runs: runs") == 1 and "| cic | cic | 60.0 | 2026-12-04 09:00:00 |" in md


def test_a_failed_protocol_keeps_its_last_figures_and_names_are_checked_before_any_run(tmp_path, monkeypatch):
    """A protocol whose re-run fails (no data, a refused calibration) keeps the figures it last measured, with
    the error beside them, instead of losing them to an error entry; ``--accuracy-datasets`` takes a dataset
    or its protocol (the bench key) and refuses an unknown name before any protocol runs."""
    import json

    import pytest

    import benchmarks.run as bench

    monkeypatch.setattr(bench, "REPORTS", tmp_path)
    monkeypatch.setattr(bench, "cpu_reference_s", lambda: 0.3)
    run = {"protocol": "hdfs_keys", "seconds": 480.0, "measured_at": "2026-12-02 15:02:30"}
    bench.write_reports({"accuracy": {"hdfs_keys": {"loglm": {"f1": 0.9989}}}, "accuracy_runs": {"hdfs_keys": run}})
    bench.write_reports({"accuracy": {"hdfs_keys": {"error": "FileNotFoundError: no data"}},
                         "accuracy_runs": {"hdfs_keys": {"error": True, "seconds": 1.0}},
                         "analyst": {"fewshot_accuracy_k5": 0.87}})
    kept = json.loads((tmp_path / "bench.json").read_text())
    assert kept["accuracy"]["hdfs_keys"]["loglm"]["f1"] == 0.9989
    assert kept["accuracy"]["hdfs_keys"]["last_error"].endswith("FileNotFoundError: no data")
    assert kept["accuracy_runs"]["hdfs_keys"]["measured_at"] == "2026-12-02 15:02:30"
    bench.write_reports({"accuracy": {"bgl_2k": {"error": "no data"}}})  # nothing to keep: the error is recorded
    assert json.loads((tmp_path / "bench.json").read_text())["accuracy"]["bgl_2k"] == {"error": "no data"}
    assert bench.accuracy_datasets(["hdfs_keys", "bgl", "bgl_2k", "cic_flowprep"]) == ["hdfs", "bgl", "bgl", "cic_flowprep"]
    with pytest.raises(SystemExit, match=r"unknown hdfs_key; give a dataset or its protocol: .*hdfs \(hdfs_keys\)"):
        bench.accuracy_datasets(["hdfs", "hdfs_key"])


def test_a_streams_report_shows_its_top_alerts_out_of_all_of_them(tmp_path):
    """report_from_files holds only the top alerts of an alerts file, yet counts every alert in it (it said
    "20 of 20" for a stream with more); the highest come first."""
    import json
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from loglm.detect.detector import report_from_files

    alerts = [alert(f"alert-{i:02d}-id", "host", f"h{i}", i * 60, i * 60 + 30, 2.0 + i / 10, "high", [4.0]) for i in range(25)]
    path = tmp_path / "stream.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in alerts))
    scores = tmp_path / "stream.scores.parquet"
    pq.write_table(pa.table({"score": [a["score"] for a in alerts], "start_ts": [1.7e9 + i for i in range(25)],
                             "label": pa.array([None] * 25, pa.int8())}), scores)
    model = SimpleNamespace(meta={"run_id": "r1"}, folder="m", calibration={"target_fpr": 0.01})
    page = report_from_files(path, scores, 1.0, "stdin", model).read_text()
    assert "Top alerts (20 of 25)" in page
    assert page.index(alerts[24]["alert_id"]) < page.index(alerts[23]["alert_id"]) and alerts[0]["alert_id"] not in page


def test_a_large_timeline_draws_every_alert_and_an_even_sample_of_the_rest(tmp_path, monkeypatch):
    """Beyond TIMELINE_POINTS sessions the timeline draws every alert and evenly spaced others, and says so;
    the histogram still counts every session (the report's KPI too)."""
    import loglm.report as report

    highlight = np.zeros(1000, bool)
    highlight[[3, 500, 998]] = True
    shown = report.timeline_sample(highlight, limit=100)
    assert len(shown) == 100 and set(np.flatnonzero(highlight)) <= set(shown.tolist())
    assert np.all(np.diff(shown) > 0) and shown[0] == 0 and shown[-1] == 999  # sorted, spread over the whole span
    assert np.array_equal(report.timeline_sample(highlight, limit=1000), np.arange(1000))
    too_many = np.ones(1000, bool)  # alerts alone over the limit: evenly spaced alerts
    assert len(report.timeline_sample(too_many, limit=100)) == 100

    monkeypatch.setattr(report, "TIMELINE_POINTS", 50)
    scores = np.r_[np.zeros(400), np.full(5, 9.0)]
    times = 1.7e9 + np.arange(405) * 60.0
    report.write_report(tmp_path / "r.html", "LogLM detection", "", scores, times, 1.0, [])
    page = (tmp_path / "r.html").read_text()
    assert "sessions scored<b>405</b>" in page and "alerts<b>5</b>" in page


def test_session_view_holds_numpy_rows_in_the_order_added():
    from loglm.report import SessionView

    view = SessionView()
    view.add([{"score": 1.5, "start_ts": 10.0, "label": None}, {"score": 0.5, "start_ts": 11.0, "label": 1}])
    view.add([])
    view.add([{"score": 2.5, "start_ts": 12.0, "label": 0}])
    scores, starts, labels = view.arrays()
    assert len(view) == 3 and scores.tolist() == [1.5, 0.5, 2.5] and starts.tolist() == [10.0, 11.0, 12.0]
    assert labels.tolist() == [-1, 1, 0] and labels.dtype == np.int64
    assert [len(a) for a in SessionView().arrays()] == [0, 0, 0]
