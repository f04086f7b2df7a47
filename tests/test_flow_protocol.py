"""Flow protocol pieces (cic_flowprep shape): a test cut by time, pair-window metrics, flow-feature
baselines, and the whole suite on a small NetFlow Parquet in Tempo's ten fields."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime

import numpy as np
import pytest
from conftest import compose

from loglm.config import SplitConfig
from loglm.ingest.sessions import Events, Session, assign_splits

DAY1 = datetime(2017, 7, 3, 9, 0, tzinfo=UTC).timestamp()
DAY2 = datetime(2017, 7, 4, 9, 0, tzinfo=UTC).timestamp()


def _events(ts: list[float]) -> Events:
    n = len(ts)
    return Events(source=["f"] * n, line_no=list(range(1, n + 1)), ts=ts, template=[0] * n, masked=[""] * n,
                  raw=[""] * n, entities=[{}] * n, label=[None] * n, fields=[None] * n)


def test_test_from_cuts_by_time_and_fractions_divide_what_comes_before():
    ts = [DAY1 + 60 * i for i in range(10)] + [DAY2 + 60 * i for i in range(30)]
    ev = _events(ts)
    sessions = [Session(f"s{i}", "src_ip", "h", [i]) for i in range(len(ts))]
    assign_splits(sessions, ev, SplitConfig(method="chronological_events", train_frac=0.8, val_frac=0.2,
                                            test_from="2017-07-04T00:00:00"))
    splits = [s.split for s in sessions]
    assert splits[:8] == ["train"] * 8 and splits[8:10] == ["val"] * 2  # 80/20 of day 1 only
    assert splits[10:] == ["test"] * 30  # every day-2 session is test, none dropped
    with pytest.raises(ValueError, match="test_from must be an ISO 8601 time"):
        assign_splits(sessions, ev, SplitConfig(method="chronological_events", test_from="monday"))


def test_pair_windows_take_the_highest_flow_score_and_any_attack(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loglm.evaluation import pair_window_items

    ents = [{"src_ip": [a], "dst_ip": [b]} for a, b in (("a", "b"), ("a", "b"), ("a", "c"), ("a", "b"), ("x", "b"))]
    ts = [0.0, 100.0, 100.0, 400.0, 50.0]
    pq.write_table(pa.table({"ts": ts, "entities": [json.dumps(e) for e in ents]}), tmp_path / "events.parquet")
    keys, y, s = pair_window_items([0, 1, 2, 3, 4], np.array([0, 1, 0, 0, -1]), np.array([0.1, 0.5, 0.9, 0.2, 0.3]),
                                   tmp_path, 300)
    got = {k: (int(a), float(b)) for k, a, b in zip(keys, y, s)}
    assert got == {("a", "b", 0): (1, 0.5), ("a", "c", 0): (0, 0.9), ("a", "b", 1): (0, 0.2), ("x", "b", 0): (-1, 0.3)}


def test_pair_windows_are_calibrated_on_their_own_validation_items_not_per_flow(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loglm.config import DataConfig
    from loglm.evaluation import pair_window_calibration

    # 150 pair-windows of 2 normal flows each (scores i and i + 0.5), one more holding an attack flow (score 1000)
    ents, ts, labels, scores = [], [], [], []
    for i in range(150):
        for k in range(2):
            ents.append({"src_ip": [f"h{i}"], "dst_ip": ["srv"]})
            ts.append(10.0 * k)
            labels.append(0)
            scores.append(i + 0.5 * k)
    ents += [{"src_ip": ["evil"], "dst_ip": ["srv"]}] * 2
    ts += [0.0, 5.0]
    labels += [0, 1]
    scores += [0.0, 1000.0]
    pq.write_table(pa.table({"ts": ts, "entities": [json.dumps(e) for e in ents]}), tmp_path / "events.parquet")
    data = DataConfig(eval_unit="event", eval_pair_window_s=300)
    got = pair_window_calibration(list(range(len(ts))), np.array(labels), np.array(scores), tmp_path, data, 0.01,
                                  "refuse")
    # 150 normal pair-windows (the attacked one left out), each its highest flow: k = floor(0.01 * 151) - 1 = 0
    # above, so the threshold is the highest normal pair-window (149.5), not the per-flow quantile
    assert got["n_normal"] == 150 and got["threshold"] == pytest.approx(149.5)
    assert got["promise"]["allowed_above"] == 0 and got["warning"] is None
    got = pair_window_calibration(list(range(len(ts))), np.array(labels), np.array(scores), tmp_path, data, 0.05,
                                  "refuse")
    assert got["threshold"] == pytest.approx(143.5)  # 6 of 150 above: (6 + 1) / 151 <= 0.05
    assert got["threshold"] > np.quantile(scores[:300], 0.95)  # stricter than the flows' own quantile
    few = list(range(40))  # 20 pair-windows cannot promise a 1 % FPR: refused, naming the unit
    with pytest.raises(ValueError, match="20 labelled normal validation pair-windows cannot calibrate"):
        pair_window_calibration(few, np.array(labels[:40]), np.array(scores[:40]), tmp_path, data, 0.01, "refuse")
    assert pair_window_calibration(few, np.array(labels[:40]), np.array(scores[:40]), tmp_path,
                                   DataConfig(eval_unit="event"), 0.01, "refuse") is None  # not reported


def test_pair_window_compounding_counts_each_normal_windows_flows():
    from loglm.evaluation import pair_window_compounding

    keys = [("a", "b", 0)] * 3 + [("a", "c", 0), ("a", "c", 1), ("x", "y", 0)]
    labels = np.array([0, 0, 0, 0, 1, -1])
    scores = np.array([0.1, 0.9, 0.2, 0.3, 5.0, 9.0])  # one normal flow of four above 0.5
    got = pair_window_compounding(keys, labels, scores, 0.5, [("a", "b", 0), ("a", "c", 0)])
    assert got["normal_flows_per_item"] == 2.0 and got["flow_fpr"] == 0.25
    assert got["fpr_if_flows_independent"] == pytest.approx(((1 - 0.75 ** 3) + 0.25) / 2)


def test_false_positives_beside_attacks_count_either_direction_in_the_same_window(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loglm.evaluation import false_positives_beside_attacks

    pairs = [("a", "b"), ("a", "b"), ("b", "a"), ("a", "c"), ("a", "b"), ("b", "a")]
    ts = [0.0, 10.0, 20.0, 30.0, 400.0, 40.0]
    ents = [{"src_ip": [x], "dst_ip": [y]} for x, y in pairs]
    pq.write_table(pa.table({"ts": ts, "entities": [json.dumps(e) for e in ents]}), tmp_path / "events.parquet")
    labels = np.array([0, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.9, 0.8, 0.9, 0.9, 0.01])
    # flows 0 (same direction) and 2 (reverse) are beside the attack; 3 (other host), 4 (next window) and
    # 5 (below the threshold) are not
    assert false_positives_beside_attacks(list(range(6)), labels, scores, 0.5, tmp_path, 300) == 2


def _flow(rng, src, dst, port, ob, ib, op, ip, dur):
    j = lambda v: max(0, int(v * rng.uniform(0.8, 1.2)))  # noqa: E731
    return {"src_ip": src, "dst_ip": dst, "dst_port": port, "src_port": rng.randint(49152, 65000),
            "fwd_bytes": j(ob), "bwd_bytes": j(ib), "fwd_pkts": j(op), "bwd_pkts": j(ip), "duration": dur * rng.uniform(0.8, 1.2),
            "ts": 0.0}


def _normal(rng, host):
    port, ob, ib, op, ip, dur = rng.choice([(443, 900, 6000, 10, 12, 0.8), (80, 500, 20000, 8, 20, 0.3),
                                            (53, 40, 90, 1, 1, 0.01)])
    return _flow(rng, host, f"93.184.0.{rng.randint(1, 40)}", port, ob, ib, op, ip, dur)


def test_flow_baselines_flag_flows_unlike_training_flows():
    from loglm.baselines.flow_features import FlowFeatures, make

    rng = random.Random(0)
    train = [_normal(rng, "192.168.10.5") for _ in range(1500)]
    normal = [_normal(rng, "192.168.10.5") for _ in range(200)]
    brute = [_flow(rng, "172.16.0.1", "192.168.10.5", 22, 1500, 2500, 20, 25, 6.0) for _ in range(50)]
    feats = FlowFeatures(local_networks=("192.168.10.0/24",))
    x = feats.fit(train)
    for name in ("flow_iforest", "flow_pca", "kitnet"):
        model = make(name, seed=0, epochs=20).fit(x)
        s_normal, s_brute = model.score(feats.transform(normal)), model.score(feats.transform(brute))
        assert np.median(s_brute) > np.quantile(s_normal, 0.95), name


def write_week(path, seed: int = 0) -> dict:
    """NetFlow Parquet in Tempo's ten fields (cic2017_flowprep's columns): day 1 benign only; day 2 benign
    plus an SSH brute force from one outside address and a burst of HTTP floods."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows = []
    hosts = [f"192.168.10.{i}" for i in range(3, 12)]
    for day in (DAY1, DAY2):
        t = day
        while t < day + 4 * 3600:
            t += rng.uniform(2, 12)
            f = _normal(rng, rng.choice(hosts))
            rows.append({**f, "ts": t, "kind": "BENIGN"})
    for i in range(150):
        f = _flow(rng, "172.16.0.1", "192.168.10.50", 22, 1500, 2500, 20, 25, 6.0)
        rows.append({**f, "ts": DAY2 + 3600 + i * 4.0, "kind": "SSH-Patator"})
    for i in range(150):
        f = _flow(rng, "172.16.0.1", "192.168.10.50", 80, 3000, 0, 300, 0, 100.0)
        rows.append({**f, "ts": DAY2 + 2 * 3600 + i * 3.0, "kind": "DoS Hulk"})
    rows.sort(key=lambda r: r["ts"])
    table = pa.table({
        "timestamp": pa.array([int(r["ts"] * 1e9) for r in rows], type=pa.timestamp("ns")),
        "flow_dur": [r["duration"] for r in rows], "src_ip": [r["src_ip"] for r in rows],
        "dest_ip": [r["dst_ip"] for r in rows], "dest_port": [r["dst_port"] for r in rows],
        "src_port": [r["src_port"] for r in rows], "bwd_bytes": [r["bwd_bytes"] for r in rows],
        "fwd_bytes": [r["fwd_bytes"] for r in rows], "total_bwd_pkts": [r["bwd_pkts"] for r in rows],
        "total_fwd_pkts": [r["fwd_pkts"] for r in rows], "label": [int(r["kind"] != "BENIGN") for r in rows],
        "attack_type_inferred": [r["kind"] for r in rows]})
    pq.write_table(table, path)
    return {"flows": len(rows), "attacks": sum(r["kind"] != "BENIGN" for r in rows)}


@pytest.mark.slow
def test_cic_flowprep_protocol_end_to_end_with_flow_baselines(tmp_path):
    from loglm.evaluation_suite import run as suite

    week = write_week(tmp_path / "week.parquet")
    cfg = compose("evaluate", [
        "dataset=cic_flowprep", f"paths.root={tmp_path}/runs", "model=tiny", f"data.inputs=[{tmp_path}/week.parquet]",
        "data.name=cic_week", "trainer.max_epochs=2", "trainer.progress_bar=false", "suite.baseline_epochs=2",
        "suite.baselines=[pca,flow_iforest,flow_pca,kitnet]", f"suite.reports_dir={tmp_path}/reports",
        "detect.small_validation=warn", "tokenizer.min_count=20"])  # rarer forms [UNK] to LogLM, not to PCA
    result = suite(cfg)
    assert set(result["models"]) == {"LogLM", "pca", "flow_iforest", "flow_pca", "kitnet"}
    n_test = {r["metrics"]["all"]["n"] for r in result["models"].values()}
    assert len(n_test) == 1  # every model on the same test flows
    day2 = n_test.pop()
    assert week["attacks"] < day2 < week["flows"] * 0.6  # day 2 only, every flow of it
    for name, r in result["models"].items():
        assert "pair_window" in r["metrics"], name
        pw = r["metrics"]["pair_window"]
        assert 0 < pw["n"] < day2 and pw["tp"] + pw["fn"] >= 1
        assert set(r["recall_by_class"]) == {"SSH-Patator", "DoS Hulk"}
        assert r["recall_by_class"]["SSH-Patator"]["n"] == 150
    # the flow-feature models see the brute force for what it is: flows unlike any of day 1
    assert result["models"]["flow_iforest"]["recall_by_class"]["SSH-Patator"]["recall"] > 0.9
    table = open(result["markdown"]).read()
    assert "| kitnet | pair_window |" in table and "SSH-Patator (150)" in table
    for name, r in result["models"].items():  # every model's pair-windows at a threshold of their own
        pw = r["metrics"]["pair_window"]
        assert pw["threshold_unit"] == "pair_window" and pw["n_val_pair_windows"] > 0, name
        assert pw["normal_flows_per_item"] >= 1 and pw["fpr_if_flows_independent"] >= pw["flow_fpr"]
        assert 0 <= pw["fpr_at_flow_threshold"] <= 1 and f"| {name} | {pw['threshold']:.4g} |" in table
        assert f"| {pw['tn']} | {pw['fn']} | {pw['threshold']:.4g} |" in table  # the row names its own threshold
    assert "Pair-window thresholds" in table and "Pair-window FPR over twice the target" not in table
    alerts = result["models"]["LogLM"]["metrics"]["alerts"]  # LogLM's alerts: host-windows at their own threshold
    assert alerts["unit"] == "session" and "| LogLM | alerts | " in table and alerts["n"] < day2
    assert "False positives beside attacks" in table and all(
        "fp_beside_attack" in r["metrics"]["all"] for r in result["models"].values())
    # the window baseline (PCA on counts) read its own vocabulary, the preset's suite.baseline_tokenizer
    # (every flow form a token), prepared from the same inputs beside LogLM's; the flow models read LogLM's
    from loglm.evaluation_suite import baseline_data, baselines, run_baseline
    from loglm.ingest.prepare import prepared_dir
    from loglm.vocab import Vocabulary

    assert cfg.suite.baseline_tokenizer == {"min_count": 1}  # the preset's
    assert result["models"]["pca"]["data"]["name"] == "cic_week.baselines"
    assert result["models"]["flow_pca"]["data"]["name"] == "cic_week"
    data_dir = prepared_dir(cfg.paths.root, "cic_week")
    b_cfg, b_dir, b_summary = baseline_data(cfg, data_dir)  # fresh: not prepared again
    assert b_summary["data_sha256"] == result["models"]["pca"]["data"]["data_sha256"]
    assert b_dir.name == "cic_week.baselines" and b_cfg.tokenizer.min_count == 1
    vocab, b_vocab = Vocabulary.load(data_dir / "vocab.json"), Vocabulary.load(b_dir / "vocab.json")
    assert b_vocab.size > vocab.size  # forms seen under 20 times on day 1 are tokens of their own there
    # its row is what the baseline gives on that folder, and differs from PCA on LogLM's vocabulary
    own = run_baseline(baselines(["pca"], b_vocab.size, b_cfg)["pca"], b_cfg, b_dir)
    assert own[0] == result["models"]["pca"]["metrics"]
    shared = run_baseline(baselines(["pca"], vocab.size, cfg)["pca"], cfg, data_dir)
    assert shared[0]["all"]["n"] == own[0]["all"]["n"] and shared[0] != own[0]
    assert "The window baselines read their own vocabulary (`tokenizer.min_count=1`" in table


@pytest.mark.parametrize("method", ["chronological_time", "chronological_events", "chronological"])
def test_per_input_split_divides_each_capture_on_its_own(tmp_path, method):
    """Two captures, one after the other: with split.per_input each trains on its own early part and tests on
    its late part; as one stream, the second capture would be validation and test only.  The out-of-core
    prepare and the in-memory rule (tuning, transfer evaluation) give every session the same split."""
    import pyarrow.parquet as pq
    from flow_fixtures import ZEEK_HEADER, zeek_rows

    from loglm.ingest.prepare import parse_inputs
    from loglm.ingest.prepare import run as prepare
    from loglm.shards import read_sessions
    from loglm.vocab import Vocabulary

    day1, day2 = tmp_path / "day1.log", tmp_path / "day2.log"
    day1.write_text(ZEEK_HEADER + "\n".join(zeek_rows(300, 0, seed=1, t0=1_655_000_000.0)) + "\n")
    day2.write_text(ZEEK_HEADER + "\n".join(zeek_rows(300, 0, seed=2, t0=1_655_100_000.0)) + "\n")
    spans = {}
    for per_input in (True, False):
        cfg = compose("prepare", [f"paths.root={tmp_path}/r{int(per_input)}", "data=zeek_ctu", "data.name=days",
                                  f"data.inputs=[{day1},{day2}]", "data.local_networks=[10.0.0.0/8]",
                                  "data.session.window_s=60", f"data.split.method={method}",
                                  f"data.split.per_input={per_input}"])
        prepare(cfg)
        data_dir = tmp_path / f"r{int(per_input)}" / "data" / "days"
        events = pq.read_table(data_dir / "events.parquet", columns=["source"]).column("source").to_pylist()
        got = {}
        for split in ("train", "val", "test"):
            t = read_sessions(data_dir, split)
            for sid, idx in zip(t.column("session_id").to_pylist(), t.column("event_idx").to_pylist()):
                got[sid] = split
                spans.setdefault((per_input, split), set()).add(events[idx[0]])
        # the in-memory rule on the same inputs agrees session by session
        vocab = Vocabulary.load(data_dir / "vocab.json")
        parsed = parse_inputs([str(day1), str(day2)], cfg.data, vocab.miner, frozen=True, mask=vocab.mask_params,
                              codec=vocab.flow_codec)
        assign_splits(parsed.sessions, parsed.events, cfg.data.split)
        mine = {s.session_id: s.split for s in parsed.sessions}
        assert {k: v for k, v in mine.items() if k in got} == got
    for split in ("train", "val", "test"):  # per input: both captures in every part
        assert spans[(True, split)] == {str(day1), str(day2)}, split
    assert str(day1) in spans[(False, "train")] and spans[(False, "test")] == {str(day2)}  # one stream


def test_zeek_detailed_labels_come_from_each_files_own_header(tmp_path):
    """Few-shot kinds on zeek_ctu (benchmarks.analyst) are the captures' ``detailedlabel``: read per event from
    its raw row by the column its file's ``#fields`` header names (two files, columns in another order in the
    second), None for the unset ``(empty)`` and for a file without that column."""
    from flow_fixtures import ZEEK_HEADER, zeek_rows

    from benchmarks.analyst import zeek_detailed_labels
    from loglm.ingest.prepare import prepared_dir
    from loglm.ingest.prepare import run as prepare

    a, b, c = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"
    a.write_text(ZEEK_HEADER + "\n".join(zeek_rows(30, 5, seed=1)) + "\n")
    head = ZEEK_HEADER.splitlines()
    names = head[6].split("\t")[1:]
    order = [names.index("detailedlabel"), *[i for i in range(len(names)) if names[i] != "detailedlabel"]]
    rows = [r.split("\t") for r in zeek_rows(20, 4, seed=2, t0=1_655_200_000.0)]
    b.write_text("\n".join(head[:6] + ["\t".join(["#fields", *[names[i] for i in order]])] + head[7:]) + "\n"
                 + "\n".join("\t".join(r[i] for i in order) for r in rows) + "\n")
    c.write_text("\n".join(head[:6] + ["\t".join(["#fields", *names[:-1]])] + head[7:]) + "\n"
                 + "\n".join("\t".join(r[:-1]) for r in rows[:3]) + "\n")
    cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data=zeek_ctu", f"data.inputs=[{a},{b},{c}]",
                              "data.local_networks=[10.0.0.0/8]"])
    prepare(cfg)
    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    got = zeek_detailed_labels(data_dir)
    import pyarrow.parquet as pq

    ev = pq.read_table(data_dir / "events.parquet", columns=["source", "label"])
    by_source = {}
    for src, label, kind in zip(ev.column("source").to_pylist(), ev.column("label").to_pylist(), got):
        by_source.setdefault(src, []).append((label, kind))
    want = {"Benign": "Browsing", "Malicious": "External-Attack", "Background": None}
    assert [k for _, k in by_source[str(a)]] == [want[lab] for lab, _ in by_source[str(a)]]
    assert [k for _, k in by_source[str(b)]] == [want[lab] for lab, _ in by_source[str(b)]]
    assert len(by_source[str(b)]) == 25 and {k for _, k in by_source[str(c)]} == {None}
    assert sum(k == "External-Attack" for k in got) == 9


def test_baselines_score_the_test_split_a_piece_at_a_time_with_the_same_metrics(tmp_path, monkeypatch):
    """The suite's baselines never hold the test split whole: it is scored in pieces of sessions, as LogLM's
    evaluation scores it, and the metrics are those of scoring it in one piece."""
    import loglm.shards
    from loglm.evaluation_suite import baselines, run_baseline
    from loglm.ingest.prepare import prepared_dir
    from loglm.ingest.prepare import run as prepare
    from loglm.vocab import Vocabulary

    write_week(tmp_path / "week.parquet")
    cfg = compose("evaluate", [
        "dataset=cic_flowprep", f"paths.root={tmp_path}/runs", f"data.inputs=[{tmp_path}/week.parquet]",
        "data.name=cic_week", "suite.baseline_epochs=2", "detect.small_validation=warn"])
    prepare(cfg)
    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    size = Vocabulary.load(data_dir / "vocab.json").size
    whole_pieces, piece_rows = loglm.shards.split_pieces, loglm.shards.PIECE_ROWS
    pieces: list[int] = []

    def counted(data_dir, split=None, max_rows=None):  # the pieces a split is scored in (not whole-split reads)
        for piece in whole_pieces(data_dir, split, max_rows):
            if max_rows is not None and split == "test":  # (validation is read in pieces too: pair-windows)
                pieces.append(piece.num_rows)
            yield piece

    monkeypatch.setattr(loglm.shards, "split_pieces", counted)
    whole_columns, reads = loglm.shards.event_columns, []

    def read(source, ids, columns):  # the events table's reads: a flow piece's fields and labels come in one
        reads.append(tuple(columns))
        return whole_columns(source, ids, columns)

    monkeypatch.setattr(loglm.shards, "event_columns", read)
    one_piece = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shard_rows=10**9))
    for name in ("pca", "flow_pca"):  # a window model (each flow takes its window's score) and a flow model
        whole, _, _, whole_by_class = run_baseline(baselines([name], size, cfg)[name], one_piece, data_dir)
        assert len(pieces) == 1, name  # the whole test split at once
        pieces.clear()
        reads.clear()
        monkeypatch.setattr(loglm.shards, "PIECE_ROWS", 3)
        cut, _, _, cut_by_class = run_baseline(baselines([name], size, cfg)[name], cfg, data_dir)
        monkeypatch.setattr(loglm.shards, "PIECE_ROWS", piece_rows)
        assert len(pieces) > 50 and sorted(pieces)[-2] <= 3, (name, pieces[:20])  # one longer session at most alone
        n_pieces = len(pieces)
        pieces.clear()
        assert cut == whole and cut_by_class == whole_by_class, name
        if name == "flow_pca":
            piece_reads = [c for c in reads if "fields" in c]
            assert len(piece_reads) == n_pieces + 2, (len(piece_reads), n_pieces)  # + training and validation
            # labels come with the fields, never in a read of their own; the one label read is the class recall's
            assert reads.count(("label",)) == 1, reads[:10]
        reads.clear()
        assert whole["all"]["n"] > 1000


@pytest.mark.slow
def test_daily_recalibration_judges_a_day_neither_training_nor_the_threshold_saw(tmp_path):
    """benchmarks.cic_rolling: Monday's model, its threshold set again from Tuesday's flows written without any
    label column, judged on Wednesday; the figures are Wednesday's (its benign flows, its attack classes)."""
    import datetime as dt
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from benchmarks.cic_rolling import main

    write_week(tmp_path / "a.parquet", seed=0)
    write_week(tmp_path / "b.parquet", seed=1)
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    day2 = pa.scalar(dt.datetime(2017, 7, 4), type=a.schema.field("timestamp").type)
    wed = b.filter(pc.greater_equal(b["timestamp"], day2))
    wed = wed.set_column(0, "timestamp", pc.add(wed["timestamp"], pa.scalar(dt.timedelta(days=1), type=pa.duration("ns"))))
    wed = wed.set_column(wed.schema.get_field_index("attack_type_inferred"), "attack_type_inferred",
                         pc.replace_substring(wed["attack_type_inferred"], "SSH-Patator", "Wednesday brute force"))
    week = pa.concat_tables([a, wed]).sort_by("timestamp")
    pq.write_table(week, tmp_path / "week.parquet")
    out = main(["--root", str(tmp_path / "runs"), "--data", str(tmp_path / "week.parquet"), "--peers", "deeplog,flow_pca",
                "model=tiny", "trainer.max_epochs=2", "detect.small_validation=warn", "tokenizer.min_count=20"])
    for day in ("2017-07-04", "2017-07-05"):  # what the recalibration read holds no label
        assert not {"label", "attack", "attack_type_inferred"} & set(
            pq.read_schema(tmp_path / "runs" / f"flows_{day}_unlabelled.parquet").names)
    wed_kinds = pc.value_counts(wed["attack_type_inferred"]).to_pylist()
    benign = next(c["counts"] for c in wed_kinds if c["values"] == "BENIGN")
    assert out["calibration_day_classes"] == {"BENIGN": out["calibration_day_classes"]["BENIGN"], "DoS Hulk": 150,
                                             "SSH-Patator": 150}
    for row in out["judged"].values():
        assert row["normal"] == benign and row["fpr"] == row["fp"] / benign
        if "recall_by_class" in row:  # LogLM's rows; the peer's come from its own scored items
            assert set(row["recall_by_class"]) == {"Wednesday brute force", "DoS Hulk"}
            # and the host-windows its detection alerts on that day, at its alert threshold
            assert 0 < row["alerts"]["normal"] < benign and row["alerts"]["fpr"] == row["alerts"]["fp"] / row["alerts"]["normal"]
    peer = {k: v for k, v in out["judged"].items() if k.startswith("deeplog")}
    assert len(peer) == 3 and len({v["threshold"] for v in peer.values()}) >= 2  # Monday's and Tuesday's differ
    assert all(v["normal"] == benign for v in peer.values())  # the same Wednesday flows as LogLM's rows
    flow = {k: v for k, v in out["judged"].items() if k.startswith("flow_pca")}
    assert len(flow) == 2 and all(v["normal"] == benign for v in flow.values())  # no unseen rule for flow fields
    assert out["recalibrated_model_dir"] != out["model_dir"] and Path(out["recalibrated_model_dir"]).is_dir()
