"""The out-of-core prepare: the same dataset whatever the division of work, memory that does not follow the
corpus, and the generated corpus it is measured on."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import compose, sigterm_at

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from loglm.synth import generate

    out = tmp_path_factory.mktemp("synth") / "hdfs.log"
    generate(out, 30_000, ROOT / "data/hdfs_loglead/HDFS_loglead_early.log.gz",
             ROOT / "data/hdfs_loglead/anomalous_block_ids.txt", anomaly_rate=0.05, seed=1)
    return out


def prepared(tmp_path: Path, corpus: Path, *overrides: str) -> dict:
    from loglm.ingest.prepare import run as prepare

    cfg = compose("prepare", [f"paths.root={tmp_path}", "data=hdfs_loglead", f"data.inputs=[{corpus}]",
                              f"data.anomalous_ids={corpus}.anomalous_ids.txt", "ray.lines_per_task=4000", *overrides])
    summary = prepare(cfg)
    folder = Path(summary["path"])
    return {"summary": summary,
            "sessions": pq.read_table(folder / "sessions").sort_by([("session_id", "ascending"), ("chunk", "ascending")]),
            "events": pq.read_table(folder / "events.parquet"),
            "vocab": (folder / "vocab.json").read_bytes(),
            "rejected": (folder / "rejected.jsonl").read_bytes()}


def assert_same(a: dict, b: dict) -> None:
    assert a["summary"]["lines"] == b["summary"]["lines"]
    assert a["sessions"].equals(b["sessions"])  # same sessions, chunks, splits, labels, token ids, gaps, event ids
    assert a["events"].equals(b["events"])
    assert a["vocab"] == b["vocab"] and a["rejected"] == b["rejected"]


def test_synth_writes_labelled_whole_blocks_reproducibly(tmp_path):
    from loglm.synth import BLOCK, generate

    src = ROOT / "data/hdfs_loglead/HDFS_loglead_early.log.gz"
    ids = ROOT / "data/hdfs_loglead/anomalous_block_ids.txt"
    a = generate(tmp_path / "a.log", 5_000, src, ids, anomaly_rate=0.2, seed=7)
    generate(tmp_path / "b.log", 5_000, src, ids, anomaly_rate=0.2, seed=7)
    assert (tmp_path / "a.log").read_bytes() == (tmp_path / "b.log").read_bytes()  # a seed gives one corpus
    assert a["lines"] >= 5_000 and a["lines"] == len((tmp_path / "a.log").read_text().splitlines())
    bad = set((tmp_path / "a.log.anomalous_ids.txt").read_text().split())
    assert len(bad) == a["anomalous_blocks"] and 0.1 < len(bad) / a["blocks"] < 0.3
    seen = {m for line in (tmp_path / "a.log").read_text().splitlines() for m in BLOCK.findall(line)}
    assert bad <= seen and len(seen) >= a["blocks"]
    c = generate(tmp_path / "c.log.gz", 2_000, src, ids, seed=8)
    assert c["out"].endswith(".gz") and (tmp_path / "c.log.gz").stat().st_size > 0


def test_the_dataset_does_not_depend_on_processes_partitions_or_parts(tmp_path, corpus, monkeypatch):
    from loglm.ingest import partitioned

    one = prepared(tmp_path / "one", corpus, "workers=1")
    assert one["summary"]["tasks"] == 1 and one["summary"]["lines"]["accepted"] == one["events"].num_rows
    monkeypatch.setattr(partitioned, "LOCAL_SPLIT_BYTES", 0)  # cut the input into tasks, two processes
    monkeypatch.setattr(partitioned, "MAX_UNIT_ROWS", 2_000)  # and partitions into parts
    two = prepared(tmp_path / "two", corpus, "workers=2", "data.spill_partitions=5")
    assert two["summary"]["tasks"] > 1
    assert_same(one, two)
    labels = one["summary"]["labels_by_split"]
    assert labels.get("test/1", 0) > 0 and labels.get("train/0", 0) > 0 and "train/1" not in labels


def pyarrow_converts(_: int) -> tuple[str, bool]:
    import sys

    import pyarrow as pa

    values = pa.array(["x", None]).to_pylist()  # pyarrow's first conversion in a process looks for pandas
    return repr(values), "pandas" in sys.modules


def test_prepare_workers_convert_with_pyarrow_without_loading_pandas():
    from loglm.ingest.partitioned import _Runner

    runner = _Runner(None, 2)
    try:
        assert runner.map(pyarrow_converts, [(0,), (1,)]) == [("['x', None]", False)] * 2
    finally:
        runner.close()


STOPPABLE_PREPARE = """
import runpy, sys
import loglm.ingest.partitioned as partitioned
partitioned.LOCAL_SPLIT_BYTES = 0  # a small corpus still goes to the two-process pool
sys.argv = ["pipelines.prepare", *sys.argv[1:]]
runpy.run_module("pipelines.prepare", run_name="__main__")
"""


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_prepare_leaves_no_worker_and_no_partial_folder(tmp_path, how):
    import os
    import signal
    import time

    import psutil

    from loglm.synth import generate

    log = tmp_path / "hdfs.log"
    generate(log, 200_000, ROOT / "data/hdfs_loglead/HDFS_loglead_early.log.gz",
             ROOT / "data/hdfs_loglead/anomalous_block_ids.txt", seed=2)
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE_PREPARE, "data=hdfs_loglead", f"data.inputs=[{log}]",
                             f"data.anomalous_ids={log}.anomalous_ids.txt", f"paths.root={root}", "logger=none",
                             "workers=2", "ray.lines_per_task=10000", "data.name=stopped"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LOGLM_PROGRESS": "0"})
    try:
        driver, workers, deadline = psutil.Process(proc.pid), [], time.time() + 120
        while len(workers) < 2 and proc.poll() is None and time.time() < deadline:  # the pool has started reading
            workers = [c for c in driver.children() if "spawn_main" in " ".join(c.cmdline())]
            time.sleep(0.05)
        assert len(workers) == 2, proc.communicate()[1][-2000:]
        assert list((root / "data").glob(".stopped.preparing-*")), "the partial folder exists while it runs"
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    gone, alive = psutil.wait_procs(workers, timeout=20)  # a killed driver's workers notice within a second
    assert not alive, f"workers left running after {how}: {[p.pid for p in alive]}"
    if how == "SIGTERM":  # stopped, not killed: it cleaned up and said so
        assert proc.returncode == 130, err[-2000:]
        assert "prepare stopped by SIGTERM" in err
        assert not list((root / "data").glob(".stopped.preparing-*")) and not (root / "data" / "stopped").exists()
    else:  # killed outright: its partial folder stays until the next prepare of the same output removes it
        left = list((root / "data").glob(".stopped.preparing-*"))
        assert len(left) == 1 and str(proc.pid) in left[0].name
        again = subprocess.run([sys.executable, "-m", "pipelines.prepare", "data=hdfs_loglead", f"data.inputs=[{log}]",
                                f"data.anomalous_ids={log}.anomalous_ids.txt", f"paths.root={root}", "logger=none",
                                "workers=1", "data.name=stopped"], cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "LOGLM_PROGRESS": "0"}, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"removed {left[0]}, the partial folder of process {proc.pid}" in again.stderr
        assert not list((root / "data").glob(".stopped.preparing-*")) and (root / "data" / "stopped" / "MANIFEST.json").is_file()


STOPPABLE_SEQUENCES = """
import runpy, sys, time
import loglm.ingest.prepare as prepare
write = prepare.write_sequences
def slow_write(out, *a, **k):  # half-written: the folder exists, then the job is stopped
    (out / "sessions").mkdir(parents=True, exist_ok=True)
    print("WRITING", flush=True)
    time.sleep(60)
    return write(out, *a, **k)
prepare.write_sequences = slow_write
sys.argv = ["pipelines.prepare", *sys.argv[1:]]
runpy.run_module("pipelines.prepare", run_name="__main__")
"""


def test_a_stopped_pre_sequenced_prepare_removes_its_partial_folder(tmp_path):
    """Pre-sequenced formats are written by the driver alone (no worker pool), under the same stop rule:
    SIGTERM while the folder is being written removes it and exits 130."""
    import os

    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE_SEQUENCES, "data=hdfs_blocks_sample",
                             f"paths.root={root}", "logger=none", "data.name=stopped"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LOGLM_PROGRESS": "0"})
    err = sigterm_at(proc, "WRITING", lambda: list((root / "data").glob(".stopped.preparing-*")))
    assert proc.returncode == 130, err[-2000:]
    assert "prepare stopped by SIGTERM" in err
    assert not list((root / "data").glob(".stopped.preparing-*")) and not (root / "data" / "stopped").exists()


def test_a_partial_folder_is_removed_only_when_its_process_is_gone(tmp_path, capsys):
    """``work_folder``: a partial folder of a process that is gone is removed; one whose process still runs
    (another run writing the same output), one another host left, and other names are kept; one whose PID now
    belongs to a process started after the folder was last changed (a reused PID) is removed."""
    import os
    import socket
    import time

    from loglm.artifacts import work_folder

    out = tmp_path / "ds"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # a process that started after its folder was last changed: an earlier process with its PID left it
    # (PIDs are reused, soon in a container)
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        folders = {"gone": tmp_path / f".ds.preparing-{host}-{gone.pid}",
                   "gone_old_name": tmp_path / f".ds.preparing-{gone.pid}",
                   "running": tmp_path / f".ds.preparing-{host}-{running.pid}",
                   "pid_reused": tmp_path / f".ds.preparing-{host}-{later.pid}",
                   "other_host": tmp_path / f".ds.preparing-elsewhere.example-{gone.pid}",
                   "other_kind": tmp_path / f".ds.partial-{gone.pid}",
                   "other_output": tmp_path / f".ds2.preparing-{host}-{gone.pid}"}
        for f in folders.values():
            (f / "spill").mkdir(parents=True)
            (f / "spill" / "part-0.arrow").write_bytes(b"x" * 1000)
        an_hour_ago = time.time() - 3600
        os.utime(folders["pid_reused"], (an_hour_ago, an_hour_ago))
        mine = work_folder(out, "preparing")
        err = capsys.readouterr().err
    finally:
        for p in (running, later):
            p.kill()
            p.wait()
    assert mine == tmp_path / f".ds.preparing-{socket.gethostname()}-{os.getpid()}" and not mine.exists()
    assert not folders["gone"].exists() and not folders["gone_old_name"].exists()
    assert not folders["pid_reused"].exists(), err
    assert all(folders[k].exists() for k in ("running", "other_host", "other_kind", "other_output"))
    assert f"removed {folders['gone']}, the partial folder of process {gone.pid}" in err
    assert f"belongs to process {running.pid}, which is still running" in err
    assert "left by a process on host 'elsewhere.example'" in err


def test_ray_with_one_or_four_cpus_gives_the_local_dataset(tmp_path, corpus):
    local = prepared(tmp_path / "local", corpus, "workers=1")
    for cpus in (1, 4):
        ray = prepared(tmp_path / f"ray{cpus}", corpus, "backend=ray", f"ray.num_cpus={cpus}")
        assert ray["summary"]["backend"] == "ray" and ray["summary"]["tasks"] > 1
        assert_same(local, ray)
        assert ray["summary"]["data_sha256"] == local["summary"]["data_sha256"]  # the same shard files


test_ray_with_one_or_four_cpus_gives_the_local_dataset = pytest.mark.slow(pytest.mark.xdist_group("ray")(
    test_ray_with_one_or_four_cpus_gives_the_local_dataset))

PEAK = """
import json, resource, sys
from conftest import compose
from loglm.ingest.prepare import run
cfg = compose("prepare", sys.argv[1:])
s = run(cfg)
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "events": s["events"]}))
"""


@pytest.mark.slow
def test_prepare_memory_does_not_follow_the_corpus(tmp_path):
    """Four times the lines, nearly the same peak: before, prepare held every event (about 1.4 KB a line)."""
    from loglm.synth import generate

    peaks = {}
    for n in (60_000, 240_000):
        log = tmp_path / f"c{n}.log"
        generate(log, n, ROOT / "data/hdfs_loglead/HDFS_loglead_early.log.gz",
                 ROOT / "data/hdfs_loglead/anomalous_block_ids.txt", seed=2)
        args = [f"paths.root={tmp_path / str(n)}", "data=hdfs_loglead", f"data.inputs=[{log}]",
                f"data.anomalous_ids={log}.anomalous_ids.txt", "workers=1"]
        proc = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True, cwd=ROOT / "tests",
                              env={"PYTHONPATH": str(ROOT / "tests"), "LOGLM_PROGRESS": "0", "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    growth_kb_per_line = (peaks[240_000]["rss_mb"] - peaks[60_000]["rss_mb"]) * 1024 / 180_000
    assert peaks[240_000]["events"] >= 240_000
    assert growth_kb_per_line < 0.35, peaks  # held events would add about 1.4 KB a line


def _blocks_file(path: Path, n: int) -> Path:
    """``n`` block sequences (``blk_<i>,<keys>``) cycled from the shipped sample's normal blocks."""
    import gzip

    lines = gzip.open(ROOT / "data/hdfs_blocks_sample/hdfs_normal.gz", "rt").read().splitlines()
    path.write_text("".join(f"blk_{i},{lines[i % len(lines)].split(',', 1)[1]}\n" for i in range(n)))
    return path


def blocks_args(tmp_path: Path, normal: Path, name: str) -> list[str]:
    sample = ROOT / "data/hdfs_blocks_sample"
    return [f"paths.root={tmp_path / name}", "data=hdfs_blocks_sample", f"data.name={name}",
            f"data.inputs=[{normal},{sample / 'hdfs_abnormal.gz'},{sample / 'HDFS_templates.csv'}]"]


def test_pre_sequenced_input_is_written_as_it_is_read_with_the_same_dataset(tmp_path, monkeypatch):
    """Pre-sequenced formats (here hdfs_blocks) are written a batch of events at a time: batches of 37 events
    give the shards (byte for byte, so the same data hash), events and summary of one batch holding them all,
    and no batch holds more than its size and one sequence."""
    from loglm.ingest import prepare

    normal = _blocks_file(tmp_path / "normal.txt", 300)
    with open(normal, "a") as fh:  # two bad lines: counted and written to rejected.jsonl with file and line
        fh.write("blk_bad,5 x 22\nblk_bad2,99999\n")
    held = {}
    close = prepare.SequenceWriter.close

    def counted(self):
        close(self)
        held[self.batch_events] = self.most_held

    monkeypatch.setattr(prepare.SequenceWriter, "close", counted)
    out = {}
    for batch in (37, 10**9):
        monkeypatch.setattr(prepare, "SEQUENCE_BATCH_EVENTS", batch)
        summary = prepare.run(compose("prepare", [*blocks_args(tmp_path, normal, f"b{batch}"), "data.shard_rows=64"]))
        folder = tmp_path / f"b{batch}" / "data" / f"b{batch}"
        out[batch] = (summary, pq.read_table(folder / "events.parquet"),
                      [p.read_bytes() for p in sorted((folder / "sessions").glob("shard-*.parquet"))])
    small, whole = out[37], out[10**9]
    skip = ("seconds", "lines_per_s", "path", "fingerprint", "dataset", "inputs")
    assert {k: v for k, v in small[0].items() if k not in skip} == {k: v for k, v in whole[0].items() if k not in skip}
    assert small[1].drop(["source"]).equals(whole[1].drop(["source"])) and small[2] == whole[2]
    assert len(small[2]) == -(-small[0]["session_rows"] // 64) > 10  # shards of 64 rows, cut across batches
    assert whole[0]["events"] == held[10**9] > 1000 and held[37] <= 37 + 300  # one sequence has < 300 events
    assert small[0]["labels_by_split"]["test/1"] == 1500  # the shipped abnormal blocks, all test items
    assert small[0]["lines"]["rejected"] == 2
    rejected = [json.loads(x) for x in (tmp_path / "b37" / "data" / "b37" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rejected] == [(str(normal), 301), (str(normal), 302)]
    assert all(r["reason"].startswith("bad key sequence") for r in rejected)


def test_a_pre_sequenced_input_that_changes_between_its_two_reads_is_refused(tmp_path, monkeypatch):
    """The vocabulary is counted on a first read and the shards written on a second: a file another process
    appends to in between is refused with the reason, and nothing is left behind."""
    from loglm.ingest import builders, prepare

    normal = _blocks_file(tmp_path / "normal.txt", 50)
    made = builders.BUILDERS["hdfs_blocks"]

    def growing(data):
        miner, sequences = made(data)
        reads = []

        def read(account, rejections):
            reads.append(1)
            if len(reads) == 2:  # another writer appends between the passes
                with open(normal, "a") as fh:
                    fh.write("blk_x,5 5 22\n")
            return sequences(account, rejections)

        return miner, read

    monkeypatch.setitem(builders.BUILDERS, "hdfs_blocks", growing)
    with pytest.raises(ValueError, match="changed while prepare read them"):
        prepare.run(compose("prepare", blocks_args(tmp_path, normal, "grown")))
    assert not list((tmp_path / "grown" / "data").iterdir())


PEAK_SEQUENCES = PEAK


def test_distinct_count_counts_ids_as_a_set_would(monkeypatch):
    """Pre-sequenced prepare counts its sessions (an id may come twice) in 8 bytes a distinct id."""
    import numpy as np

    from loglm.ingest.prepare import DistinctCount

    monkeypatch.setattr(DistinctCount, "COMPACT_AT", 50)  # compacted many times over
    rng = np.random.default_rng(0)
    ids = [f"blk_{i}" for i in rng.integers(0, 3_000, 10_000)]
    count = DistinctCount()
    for at in range(0, len(ids), 37):
        count.add(ids[at:at + 37])
    count.add([])
    assert len(count) == len(set(ids)) and len(DistinctCount()) == 0
    assert count._seen.nbytes == 8 * len(set(ids))


@pytest.mark.slow
def test_pre_sequenced_prepare_memory_does_not_follow_the_corpus(tmp_path):
    """Four times the block sequences, nearly the same peak: before, prepare built every event in memory
    (about 0.7 KB an event)."""
    peaks = {}
    for n in (10_000, 40_000):
        normal = _blocks_file(tmp_path / f"n{n}.txt", n)
        proc = subprocess.run([sys.executable, "-c", PEAK_SEQUENCES, *blocks_args(tmp_path, normal, f"n{n}")],
                              capture_output=True, text=True, cwd=ROOT / "tests",
                              env={"PYTHONPATH": str(ROOT / "tests"), "LOGLM_PROGRESS": "0", "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    added = peaks[40_000]["events"] - peaks[10_000]["events"]
    assert added > 500_000, peaks
    growth_b_per_event = (peaks[40_000]["rss_mb"] - peaks[10_000]["rss_mb"]) * 1024 * 1024 / added
    assert growth_b_per_event < 200, peaks  # events held in memory add about 770 bytes each (56 since)


def _events_file(folder: Path, n: int, row_group: int) -> None:
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"ts": [float(i) for i in range(n)], "label": [None if i % 3 else f"l{i}" for i in range(n)],
                             "raw": [f"line {i}" for i in range(n)]}), folder / "events.parquet",
                   row_group_size=row_group)


def test_event_lookups_read_only_the_row_groups_they_need(tmp_path):
    """Evaluation and detection read event columns by id a row group at a time (never the whole events
    table): values come back in the order asked, repeats included, equal to the table's own rows."""
    import numpy as np

    from loglm.shards import EventRows, event_columns

    _events_file(tmp_path, 1000, 64)
    whole = pq.read_table(tmp_path / "events.parquet").to_pydict()
    ids = [999, 0, 64, 63, 500, 0, 128, 999]
    got = event_columns(tmp_path, ids, ["raw", "label"])
    assert got["raw"] == [whole["raw"][i] for i in ids] and got["label"] == [whole["label"][i] for i in ids]
    assert event_columns(tmp_path, [], ["ts"]) == {"ts": []}
    rng = np.random.default_rng(0)
    many = rng.integers(0, 1000, 3000).tolist()
    assert event_columns(tmp_path, many, ["ts"])["ts"] == [float(i) for i in many]

    rows = EventRows(tmp_path, ["raw", "ts"], cached_groups=2)
    for i in (5, 70, 700, 71, 6, 999):
        assert rows.row(i) == {"raw": f"line {i}", "ts": float(i)}
        assert len(rows._groups) <= 2  # at most two row groups of 64 rows decoded at any time
    rows.prefetch([3, 900, 3])
    assert set(rows._rows) == {3, 900} and rows.row(900)["raw"] == "line 900"
    with pytest.raises(IndexError, match="event id 1000 outside"):
        rows.row(1000)
    with pytest.raises(IndexError, match="event id -1 outside"):
        event_columns(tmp_path, [3, -1], ["ts"])
    with pytest.raises(ValueError, match="no column 'fields'"):
        event_columns(tmp_path, [3], ["fields"])


def test_a_line_naming_its_session_twice_is_one_event_of_it(tmp_path):
    """A header entity that the message repeats (a syslog host naming itself) gives a line the same session
    key twice: the session holds the event once, in every division of the work."""
    from loglm.ingest import partitioned
    from loglm.ingest.prepare import run as prepare

    log = tmp_path / "syslog.log"
    hosts = ["alpha.lan", "beta.lan", "gamma.lan"]
    lines = []
    for i in range(900):
        h = hosts[i % 3]
        msg = f"connection from {h} port {1000 + i}" if i % 2 else f"session opened for user u{i % 7}"
        lines.append(f"Jun 14 15:{i // 60:02d}:{i % 60:02d} {h} sshd[{i}]: {msg}")
    log.write_text("\n".join(lines) + "\n")
    out = {}
    for name, overrides in (("one", ["workers=1"]), ("two", ["workers=2"])):
        if name == "two":
            partitioned.LOCAL_SPLIT_BYTES, saved = 0, partitioned.LOCAL_SPLIT_BYTES
        try:
            cfg = compose("prepare", [f"paths.root={tmp_path / name}", "data=own", "data.format=linux",
                                      f"data.inputs=[{log}]", "data.session.by=entity", "data.spill_partitions=3",
                                      "ray.lines_per_task=200",
                                      *overrides])
            summary = prepare(cfg)
        finally:
            if name == "two":
                partitioned.LOCAL_SPLIT_BYTES = saved
        sessions = pq.read_table(Path(summary["path"]) / "sessions")
        idx = [j for row in sessions.column("event_idx").to_pylist() for j in row]
        assert sorted(idx) == list(range(900)), "every event in exactly one session, once"
        assert sorted(set(sessions.column("session_id").to_pylist())) == hosts
        out[name] = (summary["data_sha256"], summary["tasks"])
    assert out["two"][1] > 1 and out["one"][0] == out["two"][0]


def test_read_tasks_cut_a_file_every_n_lines_across_read_blocks(tmp_path, monkeypatch):
    from loglm.ingest import distributed

    log = tmp_path / "a.log"
    lines = [f"line {i} " + "x" * (i % 37) for i in range(1_000)]
    log.write_text("\n".join(lines))  # the last line has no newline
    data = compose("prepare", ["data=hdfs_loglead"]).data
    monkeypatch.setattr(distributed, "PLAN_BLOCK_BYTES", 97)  # ranges end inside blocks, blocks hold several ends
    for per in (1, 3, 64, 999, 1_000, 5_000):
        tasks = list(distributed.iter_tasks([log], data, per))
        assert tasks[0]["start"] == 0 and tasks[-1]["end"] == log.stat().st_size
        assert all(a["end"] == b["start"] for a, b in zip(tasks, tasks[1:]))
        raw = log.read_bytes()
        got = [raw[t["start"]:t["end"]].decode().splitlines() for t in tasks]
        assert [len(g) for g in got[:-1]] == [per] * (len(got) - 1) and 0 < len(got[-1]) <= per
        assert [t["first_line"] for t in tasks] == [1 + k * per for k in range(len(tasks))]
        assert sum(got, []) == lines


def test_spill_rows_wait_per_partition_in_bounded_buffers(tmp_path, monkeypatch):
    import pyarrow as pa

    from loglm.ingest import partitioned

    monkeypatch.setattr(partitioned, "SPILL_GROUP_ROWS", 50)
    monkeypatch.setattr(partitioned, "SPILL_BUFFER_ROWS", 120)
    spill = partitioned._Spill(tmp_path, 3, 4, compose("prepare", ["data=hdfs_loglead"]).data)
    for b in range(10):
        n = range(b * 40, b * 40 + 40)
        spill.add(pa.array([f"blk_{i % 13}" for i in n]), b * 40, pa.table({
            "ts": [float(i) for i in n], "masked": [f"m{i % 5}" for i in n], "label": [None] * 40,
            "fields": pa.array([None] * 40, pa.string())}))
        assert spill.buffered <= 120  # what a task holds back, whatever the partitions
    stats = spill.close()
    assert stats.num_rows == 13 and sum(stats.column("n").to_pylist()) == 400
    rows = 0
    for p in range(4):
        f = pq.ParquetFile(tmp_path / "spill" / f"p{p:04d}" / "t000003.parquet")
        t = f.read()
        assert {partitioned.partition_of(k, 4) for k in t.column("key").to_pylist()} == {p}
        pos = [x & ((1 << partitioned.TASK_BITS) - 1) for x in t.column("pos").to_pylist()]
        assert pos == sorted(pos) and t.column("ts").to_pylist() == [float(x) for x in pos]  # input order
        assert f.num_row_groups < 10  # fewer row groups than batches: rows waited
        rows += t.num_rows
    assert rows == 400


def test_spill_partitions_follow_the_inputs_size_unless_set(tmp_path):
    from loglm.ingest import partitioned

    data = compose("prepare", ["data=hdfs_loglead"]).data
    sizes = {}
    for name, size in (("small", 1 << 20), ("4m", 530 << 20), ("16m", 2_127 << 20), ("huge", 1 << 40)):
        with open(tmp_path / f"{name}.log", "wb") as fh:
            fh.truncate(size)  # sparse: only the size is read
        sizes[name] = partitioned.spill_partitions(data, [tmp_path / f"{name}.log"])
    assert sizes == {"small": 16, "4m": 16, "16m": 64, "huge": partitioned.MAX_AUTO_PARTITIONS}
    with open(tmp_path / "16m.log.gz", "wb") as fh:
        fh.truncate((2_127 << 20) // 8)  # compressed: about 8x its size in lines
    assert partitioned.spill_partitions(data, [tmp_path / "16m.log.gz"]) == 64
    assert partitioned.spill_partitions(dataclasses.replace(data, spill_partitions=5),
                                        [tmp_path / "huge.log"]) == 5
