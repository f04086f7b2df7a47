"""Baselines and the evaluation suite: LogLM, DeepLog-style LSTM, PCA and IsolationForest on one split,
one MLflow parent run with a child run per model, a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose
from synthetic import make_log

from loglm.baselines.deeplog import DeepLog
from loglm.baselines.event_counts import IsolationForestBaseline, PCABaseline, count_matrix


def test_deeplog_learns_an_order_and_flags_a_swap():
    normal = [[5, 6, 7, 8, 9, 6, 7, 8]] * 200
    model = DeepLog(vocab_size=12, window=4, hidden=16, layers=1, epochs=30, batch_size=64).fit(
        DeepLog.sequences(normal, [True] * 200))
    scores = model.score(DeepLog.sequences([[5, 6, 7, 8, 9, 6, 7, 8], [5, 7, 6, 8, 9, 6, 7, 8], [5, 6, 2]],
                                           [True, True, True]))
    assert scores[1] > scores[0] + 1 and scores[2] == 20.0  # swapped order; an [UNK] event


def test_deeplog_pairs_are_gathered_a_batch_at_a_time_as_the_windows_they_stand_for():
    """DeepLog's (context, next event) pairs are built per batch from the events: the windows a whole-split
    build gives ([SUM] first, left-padded with [PAD], never across two sequences), while what is held
    follows the events (a few integers each), not ``window`` times them."""
    import tracemalloc

    from loglm.baselines.deeplog import Contexts
    from loglm.vocab import PAD, SUM

    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 40, n).tolist() for n in (0, 1, 3, 10, 11, 25, 2)]
    want_x, want_y, want_owner = [], [], []
    for i, s in enumerate(seqs):
        full = [SUM] + s
        for t in range(1, len(full)):
            ctx = full[max(0, t - 4):t]
            want_x.append([PAD] * (4 - len(ctx)) + ctx)
            want_y.append(full[t])
            want_owner.append(i)
    pairs = Contexts(seqs, 4)
    assert len(pairs) == len(want_y) == sum(map(len, seqs))
    order = rng.permutation(len(pairs))
    x, y = pairs.batch(order)
    assert x.tolist() == [want_x[i] for i in order] and y.tolist() == [want_y[i] for i in order]
    assert pairs.owner[order].tolist() == [want_owner[i] for i in order]
    assert len(Contexts([], 4)) == 0
    big = [rng.integers(5, 40, 50) for _ in range(4_000)]  # 200,000 events
    tracemalloc.start()
    held = Contexts(big, 10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(held) == 200_000 and peak / len(held) < 40, peak / len(held)  # windows of 10 int64: 80 B alone


def test_deeplog_top_g_rule_counts_events_outside_its_g_likeliest_and_floors_the_threshold():
    """``conf/baseline/deeplog_topg.yaml``: the paper's rule. A window scores its share of events outside the
    model's top g (an unseen event always is one); a window without one scores at most ``quiet_top``, and the
    suite's threshold never falls below it."""
    from loglm.detect.thresholds import QUIET_RULE, threshold_above_quiet

    normal = [[5, 6, 7, 8, 9, 6, 7, 8]] * 200
    model = DeepLog(vocab_size=12, window=4, hidden=16, layers=1, epochs=30, batch_size=64, top_g=1).fit(
        DeepLog.sequences(normal, [True] * 200))
    seqs = DeepLog.sequences([[5, 6, 7, 8, 9, 6, 7, 8], [5, 7, 6, 8, 9, 6, 7, 8], [5, 6, 2]], [True, True, True])
    scores = model.score(seqs)
    assert 0 < scores[0] <= model.quiet_top < 1 / 9  # nothing outside the top 1: only the tie-break
    assert scores[1] >= 1 / 9  # the swap: at least one of its 9 positions ([END] included) is a miss
    assert scores[2] >= 1 / 4  # [UNK]
    plain = DeepLog(vocab_size=12, window=4, hidden=16, layers=1, epochs=1)
    assert plain.quiet_top is None
    with pytest.raises(ValueError, match="top_g"):
        DeepLog(vocab_size=12, top_g=0)
    quiet = np.full(500, scores[0])  # every validation window without a miss: the floor, not their quantile
    assert threshold_above_quiet(quiet, 0.01, model.quiet_top) == (model.quiet_top, QUIET_RULE)
    above = np.linspace(0.2, 0.9, 500)
    assert threshold_above_quiet(above, 0.01, model.quiet_top)[0] > 0.85


def test_deeplog_stops_early_on_validation_loss_and_keeps_its_best_epoch():
    """The suite gives DeepLog LogLM's budget and rule: up to max_epochs, stopping when the validation normal
    loss has not improved for `patience` epochs, with the best epoch's weights."""
    rng = np.random.default_rng(0)  # random events: nothing to learn past their frequencies, so it plateaus
    seqs = [list(rng.integers(5, 12, 12)) for _ in range(80)]
    model = DeepLog(12, window=3, hidden=16, layers=1, epochs=100, seed=0).fit(seqs[:60], seqs[60:], patience=2)
    assert model.epochs_run < 100 and model.best_val_loss < np.log(7) + 0.3
    again = DeepLog(12, window=3, hidden=16, layers=1, epochs=3, seed=0).fit(seqs)  # no validation: all epochs
    assert again.epochs_run == 3


def test_count_matrix_counts_each_windows_events_from_one_flat_array():
    """Each row holds its window's event counts, [END] once where the window closed; built from one flat
    array, so what it holds while building follows the events (a few bytes each)."""
    import tracemalloc

    from loglm.vocab import END

    rng = np.random.default_rng(1)
    toks = [rng.integers(5, 40, n) for n in (0, 1, 7, 30)] + [np.array([6, 6, 6])]
    closed = [True, False, True, False, True]
    x = count_matrix(toks, closed, 45).toarray()
    want = np.zeros((5, 45))
    for i, (t, c) in enumerate(zip(toks, closed)):
        np.add.at(want[i], list(t) + ([END] if c else []), 1)
    assert np.array_equal(x, want) and x[4, 6] == 3 and count_matrix([], [], 45).shape == (0, 45)
    big = [rng.integers(5, 3000, 50) for _ in range(4_000)]
    tracemalloc.start()
    count_matrix(big, [True] * len(big), 3000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak / (51 * len(big)) < 50, peak / (51 * len(big))  # per-pair Python lists: about 83 B


def test_count_baselines_flag_an_unusual_mix_of_events():
    rng = np.random.default_rng(0)
    train = [[5] * rng.integers(1, 4) + [6] * rng.integers(1, 4) + [7, 8] for _ in range(300)]
    x = count_matrix(train, [True] * 300, 12)
    odd = count_matrix([[5, 5, 6, 6, 7, 8], [9, 9, 9, 10, 10, 11]], [True, True], 12)
    for model in (PCABaseline(), IsolationForestBaseline()):
        s = model.fit(x).score(odd)
        assert s[1] > s[0], type(model).__name__


@pytest.mark.slow
def test_suite_runs_every_model_on_one_split_with_parent_and_child_runs(tmp_path):
    import mlflow

    from loglm.evaluation_suite import run as suite

    lines, kinds = make_log(240, seed=3, anomalies={i: ("swap" if i % 2 else "unseen") for i in range(150, 240, 6)})
    log = tmp_path / "app.log"
    log.write_text("\n".join(lines) + "\n")
    ids = tmp_path / "anomalous.txt"
    ids.write_text("\n".join(kinds) + "\n")
    cfg_overrides = [f"paths.root={tmp_path}/runs", "model=tiny", "data.name=suite_synth", f"data.inputs=[{log}]",
                     f"data.anomalous_ids={ids}", "data.split.method=chronological", "trainer.max_epochs=3",
                     "trainer.progress_bar=false", "suite.enabled=true", "suite.protocol=synthetic",
                     "suite.baseline_epochs=2", f"suite.reports_dir={tmp_path}/reports", "detect.small_validation=warn",
                     "+suite.baseline_tokenizer.min_count=1"]  # LogLM's own: nothing to prepare again
    cfg = compose("evaluate", cfg_overrides)
    result = suite(cfg)
    assert set(result["models"]) == {"LogLM", "deeplog", "deeplog_topg", "pca", "iforest"}
    assert {r["data"]["name"] for n, r in result["models"].items() if n != "LogLM"} == {"suite_synth"}
    assert not (tmp_path / "runs" / "data" / "suite_synth.baselines").exists()
    for r in result["models"].values():
        m = r["metrics"]["all"]
        assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == m["n"] > 0 and "unique" in r["metrics"]
    # the same test items for every model
    assert len({r["metrics"]["all"]["n"] for r in result["models"].values()}) == 1
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    children = client.search_runs([client.get_experiment_by_name("loglm-eval").experiment_id],
                                  f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    assert sorted(r.data.tags["model"] for r in children) == ["deeplog", "deeplog_topg", "iforest", "loglm", "pca"]
    assert all("eval/f1" in r.data.metrics for r in children)
    # the compare view has something to compare: threshold, target FPR, split; and the data each one read
    for r in children:
        assert float(r.data.params["threshold"]) == pytest.approx(r.data.metrics.get("eval/threshold", float(r.data.params["threshold"])))
        assert r.data.params["target_fpr"] == "0.01" and r.data.params["split"] == cfg.split
        assert [i.dataset.name for i in r.inputs.dataset_inputs] == ["suite_synth"]
    assert children[0].data.params.get("scorer") or any("scorer" in r.data.params for r in children)
    assert client.get_run(result["parent_run_id"]).info.status == "FINISHED"
    reports = sorted((tmp_path / "reports").glob("eval_synthetic__suite_synth-*.md"))
    assert len(reports) == 1 and reports[0].name == Path(result["markdown"]).name  # named by protocol and dataset
    table = reports[0].read_text()
    assert "| LogLM | all |" in table and "| deeplog | unique |" in table
    # whether each threshold holds over the test period: per quarter of the test items (the log spans minutes)
    assert "Test FPR by period" in table and "| model | Q1 | Q2 | Q3 | Q4 |" in table
    by = result["models"]["LogLM"]["metrics"]["fpr_by_period"]
    m = result["models"]["LogLM"]["metrics"]["all"]
    assert sum(p["normal"] for p in by.values()) == m["tn"] + m["fp"] and sum(p["fp"] for p in by.values()) == m["fp"]
    fpr = result["models"]["LogLM"]["metrics"]["all"]["fpr"]
    assert f"| {fpr:.4f} | {fpr / 0.01:.2f}" in table  # the test FPR beside its ratio to the target
    # what the target allows on this split: the F1 of catching every anomaly at a test FPR equal to the target
    n_anom, n_normal = m["tp"] + m["fn"], m["fp"] + m["tn"]
    top = 2 * n_anom / (2 * n_anom + 0.01 * n_normal)
    assert f"with {n_anom:,} anomalous and {n_normal:,} normal test sessions" in table
    assert f"reaches at most F1 {top:.3f}" in table
    assert client.get_run(result["parent_run_id"]).data.metrics["f1_ceiling_at_target"] == pytest.approx(top)
    assert json.loads(reports[0].with_suffix(".json").read_text())["parent_run_id"] == result["parent_run_id"]
    # a trained model keeps its threshold: asking the suite for another target would threshold the baselines
    # for one FPR and LogLM for another, so it is refused before any run starts
    with pytest.raises(ValueError, match="calibrated for target FPR 0.01.*detect.target_fpr=0.005"):
        suite(compose("evaluate", [*cfg_overrides, f"ckpt={result['model_dir']}", "detect.target_fpr=0.005"]))


def test_recall_per_attack_class(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loglm.config import DataConfig
    from loglm.evaluation import recall_by_class

    labels = ["BENIGN", "DoS", "DoS", "PortScan", "Background", None, "DoS"]
    pq.write_table(pa.table({"label": labels}), tmp_path / "events.parquet")
    out = recall_by_class(list(range(7)), np.array([0.1, 0.9, 0.2, 0.95, 0.99, 0.99, 0.7]), 0.5, tmp_path, DataConfig())
    assert out == {"DoS": {"n": 3, "detected": 2, "recall": 2 / 3}, "PortScan": {"n": 1, "detected": 1, "recall": 1.0}}


def test_fpr_by_period_splits_days_or_quarters():
    from loglm.evaluation import fpr_by_period

    day = 86400.0
    t0 = 1_499_040_000.0  # 2017-07-03 00:00 UTC
    times = np.array([t0 + 10, t0 + 20, t0 + day + 5, t0 + day + 6, t0 + 2 * day + 1, t0 + 2 * day + 2, t0 + 30])
    labels = np.array([0, 0, 0, 0, 0, 1, -1])
    scores = np.array([0.1, 0.9, 0.9, 0.8, 0.1, 0.9, 0.9])
    by = fpr_by_period(times, labels, scores, 0.5)
    assert by == {"2017-07-03": {"normal": 2, "fp": 1, "fpr": 0.5}, "2017-07-04": {"normal": 2, "fp": 2, "fpr": 1.0},
                  "2017-07-05": {"normal": 1, "fp": 0, "fpr": 0.0}}  # anomalous and unlabelled items left out
    short = fpr_by_period(np.arange(8, dtype=float), np.zeros(8, int), np.array([0, 0, 0, 0, 0, 0, 1, 1.0]), 0.5)
    assert list(short) == ["Q1", "Q2", "Q3", "Q4"] and short["Q4"] == {"normal": 2, "fp": 2, "fpr": 1.0}
    assert fpr_by_period(times, np.ones(7, int), scores, 0.5) == {}



def test_report_names_keep_datasets_and_seeds_apart():
    from loglm.evaluation_suite import report_stem

    base = report_stem("cic_flowprep", "cic_flowprep", "4de74b88aa")
    assert base == "eval_cic_flowprep__cic_flowprep-4de74b88"  # the default seed keeps the name it always had
    names = {base, report_stem("cic_flowprep", "cic_flowprep", "4de74b88aa", seed=1),
             report_stem("cic_flowprep", "cic_flowprep", "4de74b88aa", seed=2),
             report_stem("cic_flowprep", "cic_other_day", "4de74b88aa"), report_stem("cic_flowprep", "cic_flowprep", "0badc0de")}
    assert len(names) == 5 and report_stem("p", "d", "ab", seed=1).endswith("-seed1")
