"""tokenizer.time_resolution_s: time gaps measured on one clock, recorded in the vocabulary, used by detection."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from flow_fixtures import write_zeek

from loglm.ingest.prepare import ingest_fingerprint
from loglm.ingest.templates import TemplateMiner
from loglm.vocab import Vocabulary, gap_bucket


def test_a_clock_floors_timestamps_before_gaps_are_bucketed():
    seconds = Vocabulary(TemplateMiner(), [], 16, True)
    minutes = Vocabulary(TemplateMiner(), [], 16, True, time_resolution_s=60)
    ts = [120.0, 121.5, 150.0, 179.9, 180.0, 305.0]
    assert seconds.gaps(ts) == [0] + [gap_bucket(b - a, 16) for a, b in zip(ts, ts[1:])]
    # on a minute clock: 120 120 120 120 180 300
    assert minutes.gaps(ts) == [0, 0, 0, 0, gap_bucket(60, 16), gap_bucket(120, 16)]
    assert minutes.gaps(np.array(ts)) == minutes.gaps(ts)
    # recorded in the vocabulary (and absent when unset, so older vocabularies stay byte-identical)
    assert Vocabulary.from_dict(minutes.to_dict()).time_resolution_s == 60
    assert "time_resolution_s" not in seconds.to_dict()
    assert Vocabulary.from_dict(seconds.to_dict()).time_resolution_s == 0


def _prepare(tmp_path, name, *overrides):
    from loglm.config import compose
    from loglm.ingest.prepare import prepared_dir, run

    logs = tmp_path / "conn.log"
    if not logs.exists():
        write_zeek(logs, 200, 30)
    cfg = compose("prepare", [f"paths.root={tmp_path}", "data=zeek_ctu", f"data.name={name}",
                              f"data.inputs=[{logs}]", "data.split.per_input=false", *overrides])
    run(cfg)
    return cfg, prepared_dir(cfg.paths.root, name)


def test_prepared_gaps_follow_the_vocabulary_clock_and_detection_reads_it(tmp_path):
    from loglm.shards import read_sessions, session_table

    cfg0, plain = _prepare(tmp_path, "plain")
    cfg60, coarse = _prepare(tmp_path, "coarse", "tokenizer.time_resolution_s=60")
    # the setting is part of what a prepared folder is made from; unset, the fingerprint is as before it existed
    assert "time_resolution_s" not in ingest_fingerprint(cfg0)["config"]["tokenizer"]
    assert ingest_fingerprint(cfg60)["config"]["tokenizer"]["time_resolution_s"] == 60
    vocab = Vocabulary.load(coarse / "vocab.json")
    assert vocab.time_resolution_s == 60 and json.loads((plain / "vocab.json").read_text()).get("time_resolution_s") is None
    ts = pq.read_table(coarse / "events.parquet", columns=["ts"]).column("ts").to_numpy()
    fine_gaps, coarse_gaps = [], []
    for split in ("train", "val", "test"):
        a, b = read_sessions(plain, split), read_sessions(coarse, split)
        assert a.column("event_idx").to_pylist() == b.column("event_idx").to_pylist()  # the same sessions
        for idx, g in zip(b.column("event_idx").to_pylist(), b.column("gaps").to_pylist()):
            minute = np.floor(ts[idx] / 60) * 60
            assert g == [0] + [gap_bucket(float(y - x), vocab.gap_buckets) for x, y in zip(minute[:-1], minute[1:])]
            coarse_gaps += g[1:]
        fine_gaps += [x for g in a.column("gaps").to_pylist() for x in g[1:]]
    # the fixture's flows come seconds apart: on a minute clock most gaps are none at all
    assert all(g == 0 or g >= gap_bucket(60, 16) for g in coarse_gaps)
    assert any(0 < g < gap_bucket(60, 16) for g in fine_gaps)
    assert coarse_gaps.count(0) > fine_gaps.count(0)
    # detection builds its sessions with the model's vocabulary (session_table: streaming, batch detection on
    # new inputs, transfer evaluation), so new data is read on the model's clock
    from loglm.ingest.sessions import Events, Session

    ev = Events(ts=[600.0, 610.0, 655.0, 700.0], template=[-1] * 4)
    table = session_table([Session("s", "src_ip", "h", [0, 1, 2, 3], split="test")], ev, vocab)
    assert table.column("gaps").to_pylist()[0] == [0, 0, 0, gap_bucket(60, 16)]


def test_prepare_warns_when_later_timestamps_sit_on_a_coarser_clock_than_training(tmp_path, capsys):
    from flow_fixtures import ZEEK_HEADER, zeek_rows

    from loglm.config import compose
    from loglm.ingest.prepare import run

    rows = zeek_rows(300, 0, seed=3)
    cut = int(len(rows) * 0.65)  # the later part logged on a minute clock (CIC-IDS2017's Tuesday-Wednesday)
    coarse = []
    for i, r in enumerate(rows):
        ts, rest = r.split("\t", 1)
        coarse.append(f"{(float(ts) // 60) * 60:.6f}\t{rest}" if i >= cut else r)
    logs = tmp_path / "conn.log"
    logs.write_text(ZEEK_HEADER + "\n".join(coarse) + "\n")

    def prepare(name, *extra):
        cfg = compose("prepare", [f"paths.root={tmp_path}", "data=zeek_ctu", f"data.name={name}",
                                  f"data.inputs=[{logs}]", "data.split.per_input=false", *extra])
        return run(cfg)

    summary = prepare("as_read")
    assert summary["clock_by_split_s"]["train"] == 0.0 and summary["clock_by_split_s"]["test"] == 60.0
    assert "set tokenizer.time_resolution_s=60" in summary["clock_warning"]
    assert "loglm: warning: training timestamps sit on a sub-millisecond clock but test on 60 s" in capsys.readouterr().err
    # on the minute clock every split is read alike: no warning
    assert prepare("minutes", "tokenizer.time_resolution_s=60")["clock_warning"] is None
