"""Timestamps without a year (traditional syslog): each line placed in its year (loglm.ingest.noyear,
data.year_reference), a log crossing New Year read forward, streams placed before the clock."""

from __future__ import annotations

import gzip
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import compose

from loglm.config import DataConfig
from loglm.ingest.readers import LineAccount, Record, make_reader

# an auth.log across New Year: Dec 30 to Jan 2, one line every 3 hours
START = datetime(2025, 12, 30, 0, 0, 5, tzinfo=UTC)
TIMES = [START + timedelta(hours=3 * i) for i in range(25)]


def write_log(path: Path, written: datetime, times=TIMES) -> Path:
    text = "".join(f"{t:%b %e %H:%M:%S} host{i % 3} sshd[{100 + i}]: Accepted publickey for u{i % 4} from 10.0.0.{i}\n"
                   for i, t in enumerate(times))
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    os.utime(path, (written.timestamp(), written.timestamp()))
    return path


def times_of(path: Path, **data) -> list[float]:
    account = LineAccount()
    items = list(make_reader(DataConfig(format="syslog", **data), path).read(path, account))
    assert account.reconciles() and account.accepted == len(items), [i for i in items if not isinstance(i, Record)]
    return [r.ts for r in items]


@pytest.mark.parametrize("name", ["auth.log", "auth.log.1.gz"])
def test_a_log_crossing_new_year_reads_forward_in_its_years(tmp_path, name):
    # written just after its last line, as a live log is
    path = write_log(tmp_path / name, TIMES[-1] + timedelta(seconds=30))
    assert times_of(path) == [t.timestamp() for t in TIMES]
    # a copy made long after (its modification time the copy's): the same order and spacing, a year off at most
    later = write_log(tmp_path / f"copy-{name}", datetime(2027, 12, 31, 23, 0, tzinfo=UTC))
    copied = times_of(later)
    assert [b - a for a, b in zip(copied, copied[1:])] == [3 * 3600.0] * 24
    assert datetime.fromtimestamp(copied[-1], UTC) == TIMES[-1].replace(year=2027)


def test_a_year_or_a_date_given_says_when_the_logs_end(tmp_path):
    path = write_log(tmp_path / "auth.log", datetime(2030, 6, 1, tzinfo=UTC))
    expected = [t.timestamp() for t in TIMES]
    assert times_of(path, year_reference="2026") == expected  # they end in 2026
    assert times_of(path, year_reference="2026-01-02") == expected  # on or before Jan 2, 2026
    # a day of slack (local time read as UTC): ending "on or before Dec 31" puts Jan 2 a year back
    assert times_of(path, year_reference="2025-12-31")[-1] == TIMES[-1].replace(year=2025).timestamp()
    for bad in ("yesterday", "26", "2026-13-01"):
        with pytest.raises(ValueError, match="data.year_reference"):
            DataConfig(format="syslog", year_reference=bad)


def test_feb_29_goes_to_a_leap_year(tmp_path):
    path = write_log(tmp_path / "leap.log", datetime(2026, 3, 2, tzinfo=UTC),
                     [datetime(2024, 2, 28, 23, 0, tzinfo=UTC), datetime(2024, 2, 29, 1, 0, tzinfo=UTC)])
    assert times_of(path, year_reference="2025") == [datetime(2024, 2, 28, 23, 0, tzinfo=UTC).timestamp(),
                                                     datetime(2024, 2, 29, 1, 0, tzinfo=UTC).timestamp()]


def test_a_stream_places_lines_before_the_clock():
    reader = make_reader(DataConfig(format="syslog"), live=True)
    now = time.time()
    for ago in (60, 86_400 * 200):  # a minute ago; 200 days ago (last year's date when read in summer)
        t = datetime.fromtimestamp(now - ago, UTC).replace(microsecond=0)
        line = f"{t:%b %e %H:%M:%S} web1 sshd[1]: Accepted publickey for alice from 10.0.0.9\n".encode()
        assert reader.parse_line(line, "-", 1).ts == t.timestamp()


def test_ranges_read_by_two_processes_place_every_line_as_one_does(tmp_path, monkeypatch, capfd):
    """Each of prepare's line ranges places its lines from the file's last line, so a range of December lines
    read by one process and a range of January lines read by another agree on the years."""
    from loglm.ingest import partitioned
    from loglm.ingest.prepare import run as prepare

    monkeypatch.setattr(partitioned, "LOCAL_SPLIT_BYTES", 0)
    times = [START + timedelta(minutes=7 * i) for i in range(700)]  # Dec 30 to Jan 2
    path = write_log(tmp_path / "auth.log", times[-1] + timedelta(minutes=1), times)
    out = []
    for workers in (1, 2):
        cfg = compose("prepare", [f"paths.root={tmp_path}/w{workers}", "data=own", "data.name=auth", "data.format=syslog",
                                  f"data.inputs=[{path}]", f"workers={workers}", "ray.lines_per_task=50"])
        events = pq.read_table(Path(prepare(cfg)["path"]) / "events.parquet").sort_by("line_no").to_pylist()
        out.append([(e["line_no"], e["ts"]) for e in events])
        tasks = int(re.search(r"lines in (\d+) task", capfd.readouterr().err).group(1))
        assert tasks == 1 if workers == 1 else tasks > 10
    assert out[0] == out[1] and [ts for _, ts in out[0]] == [t.timestamp() for t in times]


def test_detection_takes_the_year_reference_from_its_command_and_the_rest_from_the_model(tmp_path):
    """When new logs end describes the new logs, not the model: a detection command's data.year_reference is
    used, while the format and sessions stay the model's."""
    from dataclasses import replace

    from omegaconf import OmegaConf

    from loglm.detect.detector import with_model_data

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    trained = DataConfig(format="syslog", name="auth", year_reference="2023")
    OmegaConf.save(OmegaConf.create({"data": OmegaConf.structured(trained)}), model_dir / "config.yaml")
    cfg = compose("detect", [f"paths.root={tmp_path}", "data.year_reference=2026", f"inputs=[{tmp_path}/new.log]"])
    data = with_model_data(cfg, model_dir).data
    assert (data.format, data.name, data.year_reference) == ("syslog", "auth", "2026")
    assert with_model_data(replace(cfg, data=replace(cfg.data, year_reference="mtime")), model_dir).data.year_reference == "mtime"


def test_the_arithmetic_placement_is_the_calendar_one():
    """YearPlacer's fast path (a shift per year, a day less after February in common years) against
    datetime's calendar, over every day of a year at several times, before references in leap and common
    years and on both sides of New Year and Feb 29."""
    from loglm.ingest.noyear import _Before, place

    y2000 = datetime(2000, 1, 1, tzinfo=UTC)
    stamps = [(y2000 + timedelta(days=d, seconds=s)).timestamp() for d in range(366) for s in (0, 3599, 86_399)]
    for ref in ("2024-02-28", "2024-02-29", "2024-03-01", "2025-01-01", "2025-12-31", "2023-06-15", "2100-03-01"):
        reference = datetime.fromisoformat(ref).replace(tzinfo=UTC).timestamp()
        fast = _Before(reference)
        assert [fast(t) for t in stamps] == [place(t, reference) for t in stamps], ref


def test_one_reader_reading_two_files_places_each_by_its_own_last_line(tmp_path):
    first = write_log(tmp_path / "a.log", TIMES[-1] + timedelta(seconds=30))
    second = write_log(tmp_path / "b.log", TIMES[-1].replace(year=2027) + timedelta(seconds=30))
    reader = make_reader(DataConfig(format="syslog"))
    a, b = ([r.ts for r in reader.read(p, LineAccount())] for p in (first, second))
    assert list(b) == [t.timestamp() + (2027 - 2026) * 365 * 86400 for t in TIMES] and list(a) == [t.timestamp() for t in TIMES]


def test_json_lines_without_a_year_are_placed_as_syslog_lines_are_and_flow_tables_refuse_them(tmp_path):
    import json

    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps({"time": f"{t:%b %d %H:%M:%S}", "message": f"event {i}"}) + "\n"
                            for i, t in enumerate(TIMES)))
    os.utime(path, (TIMES[-1].timestamp() + 30, TIMES[-1].timestamp() + 30))
    data = DataConfig(format="jsonl", fields={"time": "time", "message": "message"}, time_format="noyear:%b %d %H:%M:%S")
    assert [r.ts for r in make_reader(data, path).read(path, LineAccount())] == [t.timestamp() for t in TIMES]
    with pytest.raises(ValueError, match="flow records carry full times"):
        make_reader(DataConfig(format="netflow", time_format="noyear:%b %d %H:%M:%S"), path)
