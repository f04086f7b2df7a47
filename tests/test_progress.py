"""Long work shows progress: prepare and detect print what they are doing, on stderr, throttled."""

from __future__ import annotations

import io

from conftest import compose
from synthetic import synthetic_run_overrides

from loglm.progress import Progress


def test_progress_is_throttled_and_silent_for_short_work(monkeypatch):
    out = io.StringIO()
    p = Progress("reading", every_s=3600, stream=out)
    for _ in range(1000):
        p.tick()
    p.done()
    assert out.getvalue() == ""  # ended before the first interval: nothing but the phase line, if any
    p = Progress("reading", every_s=0, stream=out)
    p.tick(5, "file 1/2 a.log")
    p.done("read 5 lines")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("loglm: reading: 5 lines (") and lines[0].endswith(", file 1/2 a.log)")
    assert lines[1].startswith("loglm: read 5 lines (")
    monkeypatch.setenv("LOGLM_PROGRESS", "0")
    quiet = io.StringIO()
    Progress("reading", every_s=0, stream=quiet).tick()
    assert quiet.getvalue() == ""


def test_prepare_reports_its_phases(tmp_path, capsys, monkeypatch):
    from loglm.ingest.prepare import run as prepare

    monkeypatch.setenv("LOGLM_PROGRESS_S", "0")
    cfg = compose("prepare", synthetic_run_overrides(tmp_path, 40, seed=3))
    prepare(cfg)
    err = capsys.readouterr().err
    assert "loglm: reading: 1 lines (" in err and "file 1/1 train.log" in err
    assert f"loglm: read {40 * 13} lines in 1 task: {40 * 13} events, 0 lines rejected" in err
    assert "loglm: 40 sessions in 16 partitions" in err
    assert "5 templates mined from" in err and "training lines" in err


def test_a_line_rejected_for_want_of_a_session_key_is_not_left_among_the_events(tmp_path):
    """A header-valid line without a block id is rejected when sessions are formed; it used to stay in
    events.parquet (events 4192 vs accepted 4191), and every later event index pointed one row off."""
    import pyarrow.parquet as pq

    from loglm.ingest.prepare import run as prepare
    from loglm.shards import read_sessions

    overrides = synthetic_run_overrides(tmp_path, 30, seed=4)
    log = tmp_path / "train.log"
    lines = log.read_text().splitlines()
    lines.insert(7, "081109 203518 143 INFO dfs.DataNode: no block mentioned here")
    log.write_text("\n".join(lines) + "\n")
    summary = prepare(compose("prepare", overrides))
    assert summary["lines"]["accepted"] == 30 * 13 and summary["lines"]["rejected"] == 1
    events = pq.read_table(tmp_path / "data" / "synthetic" / "events.parquet").to_pylist()
    assert summary["events"] == len(events) == 30 * 13
    assert all("no block mentioned" not in e["raw"] for e in events)
    for row in read_sessions(tmp_path / "data" / "synthetic").to_pylist():  # indices still point at their block
        assert all(row["session_id"] in events[i]["raw"] for i in row["event_idx"])
