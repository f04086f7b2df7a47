"""Streaming detection: bounded memory on an endless input, alerts as sessions close, exact accounting."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ROOT, compose
from synthetic import T0, normal_block, render, synthetic_run_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    root = tmp_path_factory.mktemp("stream")
    cfg = compose("detect", synthetic_run_overrides(root, 200, seed=21) + [
        "trainer.max_epochs=6", "detect.top_k=1", "detect.batch_size=64", "detect.stream_idle_close_s=5",
        "detect.max_open_sessions=50"])
    prepare(cfg)
    return cfg, pretrain(cfg)


def endless(seed: int, blocks: int):
    """A generator of log lines: overlapping block lifecycles forever (bounded here by `blocks`), some garbage."""
    rng = random.Random(seed)
    for b in range(blocks):
        t = T0 + timedelta(seconds=b)
        for line in render(normal_block(f"blk_{rng.randint(10**17, 10**18)}", rng, t)):
            yield line.encode() + b"\n"
        if b % 97 == 0:
            yield b"\xff garbage that is not a log line\n"


def test_endless_input_keeps_memory_bounded_and_accounts_every_line(model):
    from loglm.detect.streaming import StreamingDetector
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.store import load_model

    cfg, result = model
    loaded = load_model(result["model_dir"])
    out = io.StringIO()
    det = StreamingDetector(cfg, loaded, lambda t, g, c, d: score_windows(loaded.encoder, t, g, c, d), out)
    tracemalloc.start()
    n = 0
    peaks = []
    for n, raw in enumerate(endless(1, 3000), 1):
        det.feed(raw, "gen", n)
        if n % 10000 == 0:
            peaks.append(tracemalloc.get_traced_memory()[0])
            assert len(det.open) <= cfg.detect.max_open_sessions
    tracemalloc.stop()
    assert det.stats["sessions_scored"] > 2500 and len(peaks) >= 3  # sessions were closed and scored while the input ran
    summary = det.finish()
    assert summary["lines"]["read"] == n == summary["lines"]["accepted"] + summary["lines"]["rejected"]
    assert summary["lines"]["rejected"] == len(range(0, 3000, 97))
    assert summary["events_scored"] == summary["lines"]["accepted"]
    assert summary["max_open_seen"] <= cfg.detect.max_open_sessions
    # memory does not grow with the input: the last sample is close to the first
    assert peaks[-1] < 2 * peaks[0] + 5_000_000, peaks


def test_follow_a_growing_file_and_alert_on_its_sessions(model, tmp_path):
    cfg, result = model
    log = tmp_path / "live.log"
    log.write_bytes(b"")
    out = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.detect", f"paths.root={cfg.paths.root}", f"ckpt={result['run_id']}",
         f"inputs=[{log}]", f"out={out}", "follow=true", "follow_exit_s=4", "detect.stream_idle_close_s=5",
         "detect.batch_size=8"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []  # what it printed up to "following": the file it follows is open from then on
    while not any("following" in x for x in said) and proc.poll() is None:
        said.append(proc.stderr.readline())
    rng = random.Random(3)
    written = before_rotation = 0
    fh = open(log, "ab")
    for b in range(40):
        t = T0 + timedelta(seconds=10 * b)
        events = normal_block(f"blk_{rng.randint(10**17, 10**18)}", rng, t)
        if b == 5:  # an event the model never saw, then the block goes on
            events.insert(3, (t, f"writeBlock blk_9{b} received exception java.io.IOException"))
        if b == 20:  # logrotate (create) midway: the file renamed, the application writes to a new one
            fh.close()
            log.rename(log.with_suffix(".log.1"))
            fh, before_rotation = open(log, "ab"), written
        for line in render(events):
            fh.write(line.encode() + b"\n")
            written += 1
        fh.flush()
        time.sleep(0.05)
    fh.close()
    stdout, stderr = proc.communicate(timeout=180)
    stderr = "".join(said) + stderr
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["lines"]["read"] == written, stderr[-3000:]  # both files' lines, the rotated one's to its end
    assert summary["rotations"] == [{"how": "replaced", "first_line": before_rotation + 1}]
    assert summary["sessions_scored"] >= 40
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    assert any(not e["known_event"] for a in alerts for e in a["surprising_events"])
    # the files batch detection writes: every scored session's score, the HTML report, rejections, findings
    import pyarrow.parquet as pq

    scores = pq.read_table(summary["scores_path"]).to_pylist()
    assert len(scores) == summary["sessions_scored"]
    assert sum(r["score"] > summary["threshold"] for r in scores) == len(alerts) == summary["alerts"]
    report = Path(summary["report_path"]).read_text()
    assert "LogLM detection" in report and "streamed" in report and alerts[0]["alert_id"] in report
    assert Path(summary["rejected_path"]).is_file() and Path(summary["findings_path"]).is_file()


def start_stream(model, inputs: str, out: Path, *extra: str) -> subprocess.Popen:
    """pipelines.detect follow=true on ``inputs`` in its own process, once it says it follows (its input is
    open or bound from then on); stderr is left to read after that line."""
    cfg, result = model
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.detect", f"paths.root={cfg.paths.root}", f"ckpt={result['run_id']}",
         f"inputs=[{inputs}]", f"out={out}", "follow=true", "follow_exit_s=300", *extra],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.said = []  # what it printed up to that line
    for line in proc.stderr:
        proc.said.append(line.decode())
        if b"loglm: following" in line:
            break
    return proc


def blocks_with_one_anomaly(seed: int, n: int, anomalous: int) -> list[list[bytes]]:
    """``n`` normal blocks 10 s apart, block ``anomalous`` with an event the model never saw: lines each."""
    rng = random.Random(seed)
    blocks = []
    for b in range(n):
        events = normal_block(f"blk_{rng.randint(10**17, 10**18)}", rng, T0 + timedelta(seconds=10 * b))
        if b == anomalous:
            events.insert(3, (events[3][0], f"writeBlock blk_9{b} received exception java.io.IOException"))
        blocks.append([line.encode() for line in render(events)])
    return blocks


def alerts_while_running(proc: subprocess.Popen, out: Path, wait_s: float = 90) -> list[dict]:
    """The alerts ``out`` holds once it holds any, [] if none came within ``wait_s`` or the process ended."""
    deadline, alerts = time.monotonic() + wait_s, []
    while not alerts and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        alerts = [json.loads(x) for x in out.read_text().splitlines()] if out.is_file() else []
    return alerts if proc.poll() is None else []


def stop(proc: subprocess.Popen) -> tuple[int, dict | None, str]:
    """SIGTERM, then (exit code, summary, stderr) with the process's stdin left open until it exits."""
    proc.send_signal(signal.SIGTERM)
    stdin, proc.stdin = proc.stdin, None
    stdout, stderr = proc.communicate(timeout=60)
    stdin.close()
    return proc.returncode, json.loads(stdout) if stdout.strip() else None, stderr.decode(errors="replace")


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_a_log_gone_quiet_alerts_without_waiting_for_more_lines(model, tmp_path, via):
    """Lines stop coming after an anomalous block: its alert is written while the stream waits for more,
    not when it ends. Before, the block stayed open until later lines moved event time on (and its scoring
    waited for a full batch of 64 sessions), so a quiet log kept its last alerts until the stream stopped."""
    log, out = tmp_path / "quiet.log", tmp_path / "alerts.jsonl"
    log.write_bytes(b"")
    proc = start_stream(model, str(log) if via == "file" else "-", out, "detect.stream_idle_close_s=2",
                        "detect.batch_size=64")
    lines = [line + b"\n" for block in blocks_with_one_anomaly(8, 12, 11) for line in block]
    if via == "file":
        log.write_bytes(b"".join(lines))
    else:
        proc.stdin.write(b"".join(lines))
        proc.stdin.flush()  # and left open: more lines could come
    alerts = alerts_while_running(proc, out)
    code, summary, stderr = stop(proc)
    assert alerts, stderr[-2000:]
    assert any("IOException" in (e["raw"] or "") for a in alerts for e in a["surprising_events"])
    assert code == 0 and summary["lines"]["read"] == len(lines) == summary["events_scored"]
    assert summary["closed_quiet"] >= 1  # closed by the quiet, not by later events


def test_logrotate_copytruncate_of_a_streams_own_alerts_leaves_no_hole(model, tmp_path):
    """A stream run as a service has its alerts rotated by logrotate's copytruncate (the file emptied while the
    stream writes it). Started fresh (follow_from=start), the stream wrote without O_APPEND: its next alert
    landed at the old offset, after a hole of NUL bytes that broke every JSON reader of the file."""
    log, out = tmp_path / "live.log", tmp_path / "alerts.jsonl"
    out.write_text("an earlier run's alert\n")  # a fresh run empties it first
    log.write_bytes(b"".join(line + b"\n" for line in blocks_with_one_anomaly(4, 2, 0)[0]))
    proc = start_stream(model, str(log), out, "detect.stream_idle_close_s=1", "follow_from=start")
    try:
        first = alerts_while_running(proc, out)
        assert first and not out.with_suffix(".rejected.jsonl").read_text()
        for path in (out, out.with_suffix(".ocsf.jsonl"), out.with_suffix(".vectors.jsonl")):
            shutil.copy(path, path.with_name(path.name + ".1"))  # what copytruncate does
            os.truncate(path, 0)
        with open(log, "ab") as fh:
            fh.write(b"".join(line + b"\n" for line in blocks_with_one_anomaly(5, 2, 0)[0]))
        second = alerts_while_running(proc, out)
    finally:
        code, summary, stderr = stop(proc)
    assert code == 0, stderr[-2000:]
    assert second  # the second anomalous block's alert, read from the emptied file (json.loads failed on NULs)
    assert [json.loads(x) for x in out.with_name(out.name + ".1").read_text().splitlines()] == first
    for path in (out, out.with_suffix(".ocsf.jsonl"), out.with_suffix(".vectors.jsonl")):
        data = path.read_bytes()
        assert b"\x00" not in data and all(json.loads(x) for x in data.splitlines()), path


def test_a_running_stream_serves_prometheus_metrics_on_loopback(model, tmp_path):
    """detect.metrics_port=0: the stream says where its metrics are; a scrape while it runs gives the lines
    read, the alerts written, the sessions open, the input's age and the event-time lag; the server stops
    with the stream."""
    import re
    import urllib.request

    log, out = tmp_path / "live.log", tmp_path / "alerts.jsonl"
    lines = [line + b"\n" for block in blocks_with_one_anomaly(6, 6, 5) for line in block]
    log.write_bytes(b"".join(lines) + b"\xff not a log line\n")
    proc = start_stream(model, str(log), out, "detect.stream_idle_close_s=2", "detect.metrics_port=0")
    (url,) = [m.group(1) for line in proc.said if (m := re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", line))]
    try:
        alerts = alerts_while_running(proc, out)
        assert alerts
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        import urllib.error

        with pytest.raises(urllib.error.HTTPError, match="400"):  # another host's page (DNS rebinding)
            urllib.request.urlopen(urllib.request.Request(url, headers={"Host": "evil.example"}), timeout=10)
        local = url.replace("127.0.0.1", "localhost")
        assert "loglm_stream_lines_read_total" in urllib.request.urlopen(local, timeout=10).read().decode()
    finally:
        code, summary, stderr = stop(proc)
    assert code == 0, stderr[-2000:]
    got = {m.group(1): float(m.group(2)) for m in re.finditer(r"^loglm_stream_(\w+)\{[^}]*\} (\S+)$", text, re.M)}
    assert got["lines_read_total"] == len(lines) + 1 and got["lines_rejected_total"] == 1
    assert got["alerts_total"] == len(alerts) and got["sessions_scored_total"] >= 6
    assert got["sessions_scored_total"] + got["sessions_open"] <= summary["sessions_scored"]  # 7: blk_95's too
    assert got["last_line_age_seconds"] > 0 and got["event_time_lag_seconds"] > 86400  # T0 is years ago
    assert f'model_run="{model[1]["run_id"]}"' in text
    with pytest.raises(OSError):  # gone with the stream
        urllib.request.urlopen(url, timeout=5)


def test_syslog_over_tcp_from_a_relay_is_scored_as_a_stream(model, tmp_path):
    """follow=true inputs=[tcp://127.0.0.1:PORT]: a relay's two connections (newline and octet-counted
    framing, <PRI> on every message) carry the blocks; the anomalous one alerts while the stream still
    listens, a message over max_line_bytes is rejected with its number, and every message is accounted."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "alerts.jsonl"
    proc = start_stream(model, f"tcp://127.0.0.1:{port}", out, "detect.stream_idle_close_s=2")
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as a, socket.create_connection(("127.0.0.1", port)) as o:
        for b, lines in enumerate(blocks_with_one_anomaly(9, 12, 9)):
            lines = [b"<134>" + m for m in lines]
            if b % 2:
                o.sendall(b"".join(str(len(m)).encode() + b" " + m for m in lines))
            else:
                a.sendall(b"".join(m + b"\n" for m in lines))
            sent += len(lines)
        o.sendall(b"70000 " + b"x" * 70_000)  # over data.max_line_bytes (64 KiB)
        sent += 1
    alerts = alerts_while_running(proc, out)
    code, summary, stderr = stop(proc)
    assert alerts, stderr[-2000:]
    assert code == 0, stderr[-2000:]
    assert summary["lines"]["read"] == sent and summary["lines"]["rejected"] == 1
    assert summary["events_scored"] == sent - 1 and summary["sessions_scored"] >= 12
    assert summary["listener"]["connections"] == 2
    assert any("IOException" in (e["raw"] or "") for a in alerts for e in a["surprising_events"])
    (rejected,) = [json.loads(x) for x in Path(summary["rejected_path"]).read_text().splitlines()]
    assert rejected["file"] == f"tcp://127.0.0.1:{port}" and "70,000" in rejected["reason"].replace("70000", "70,000")


def test_a_second_detection_with_the_same_out_is_refused_while_a_stream_writes_it(model, tmp_path):
    """A unit started twice, or a batch run pointed at a stream's alerts: the second is refused before it
    opens anything, naming the first's pid; the first's alerts and resume positions are untouched. Before,
    the second truncated the alerts file and both saved positions to the same file."""
    from loglm.detect.detector import run as detect

    cfg, result = model
    log, out = tmp_path / "live.log", tmp_path / "alerts.jsonl"
    log.write_bytes(b"".join(line + b"\n" for line in blocks_with_one_anomaly(4, 1, 0)[0]))
    proc = start_stream(model, str(log), out, "detect.stream_idle_close_s=1")
    try:
        assert alerts_while_running(proc, out)  # the stream has alerted on the block (closed by the quiet)
        written = out.read_text()
        for extra in (["follow=true"], []):  # a second stream, then a batch run
            with pytest.raises(ValueError, match=f"another detection is writing these alerts \\(pid {proc.pid}"):
                detect(compose("detect", [f"paths.root={cfg.paths.root}", f"ckpt={result['model_dir']}",
                                          f"inputs=[{log}]", f"out={out}", "follow_exit_s=1", *extra]))
        assert out.read_text() == written
    finally:
        code, summary, stderr = stop(proc)
    assert code == 0, stderr[-2000:]
    assert summary["alerts"] == len(written.splitlines()) >= 1
    assert not out.with_name(out.name + ".lock").exists()  # removed as the stream ended
    # the lock went with the process: the same out is free again
    again = detect(compose("detect", [f"paths.root={cfg.paths.root}", f"ckpt={result['model_dir']}",
                                      f"inputs=[{log}]", f"out={out}", "follow=true", "follow_exit_s=1"]))
    assert again["lines"]["read"] == 0 and out.read_text() == written  # resumed after the first run's lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_on_stdin_scores_what_is_held_and_prints_the_summary(model, tmp_path, sig):
    """`docker stop` / systemd send SIGTERM, a terminal Ctrl-C: the stream must not lose buffered sessions."""
    cfg, result = model
    out = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.detect", f"paths.root={cfg.paths.root}", f"ckpt={result['run_id']}",
         "inputs=[-]", f"out={out}", "follow=true", "detect.stream_idle_close_s=100000", "detect.batch_size=8"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stderr:  # the handlers are in place once it says it follows
        if b"loglm: following" in line:
            break
    rng = random.Random(5)
    written = 0
    for b in range(30):
        events = normal_block(f"blk_{rng.randint(10**17, 10**18)}", rng, T0 + timedelta(seconds=b))
        if b == 7:
            events.insert(3, (events[3][0], f"writeBlock blk_9{b} received exception java.io.IOException"))
        for line in render(events):
            proc.stdin.write(line.encode() + b"\n")
            written += 1
    proc.stdin.flush()  # stdin stays open: the stream would wait for more lines forever
    time.sleep(3)  # the pipe is drained (every line read; sessions open, none idle)
    proc.send_signal(sig)
    stdin, proc.stdin = proc.stdin, None  # communicate() would close stdin: the input must not end
    stdout, stderr = proc.communicate(timeout=60)
    stdin.close()
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["stopped_by"] == signal.Signals(sig).name
    assert summary["lines"]["read"] == written == summary["lines"]["accepted"]
    # nothing held was lost: 30 blocks and the injected line's own block (blk_97)
    assert summary["events_scored"] == written and summary["sessions_scored"] == 31
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(alerts) == summary["alerts"] >= 1
    assert any(not e["known_event"] for a in alerts for e in a["surprising_events"])


def test_a_stop_signal_as_the_input_ends_still_finishes_cleanly(model, tmp_path):
    """The race the stdin test once lost: the input ends (EOF) while a SIGTERM is on its way. Whichever the
    stream sees first, it scores everything, prints the summary and exits 0."""
    cfg, result = model
    lines = b"".join(line.encode() + b"\n" for b in range(10)
                     for line in render(normal_block(f"blk_{b}", random.Random(b), T0 + timedelta(seconds=b))))
    read = []
    for delay in (0.0, 0.05, 0.2):
        out = tmp_path / f"alerts-{delay}.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.detect", f"paths.root={cfg.paths.root}", f"ckpt={result['run_id']}",
             "inputs=[-]", f"out={out}", "follow=true", "detect.batch_size=8"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for line in proc.stderr:
            if b"loglm: following" in line:
                break
        proc.stdin.write(lines)
        proc.stdin.close()  # EOF ...
        proc.stdin = None
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)  # ... and a stop, close together
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, (delay, stdout[-300:], stderr[-2000:])
        summary = json.loads(stdout)
        # what was read before the stop is scored and accounted; lines still in the pipe were never read (on a
        # busy machine the stop can come before the first line is read: nothing read, nothing lost)
        assert summary["lines"]["read"] == summary["events_scored"] <= lines.count(b"\n")
        assert summary["lines"]["accepted"] == summary["lines"]["read"]
        read.append(summary["lines"]["read"])
    assert max(read) > 0, read  # at least one stop came after lines were read and scored


def test_a_restarted_stream_goes_on_where_it_stopped(model, tmp_path, capsys):
    """follow_from=resume (the default): a second run with the same out reads only the lines written since the
    first stopped, appends its alerts to the first run's and keeps the first run's scores file;
    follow_from=start reads the file again from its first line into empty outputs."""
    import pyarrow.parquet as pq

    from loglm.detect.detector import run as detect

    cfg, result = model
    log, out = tmp_path / "live.log", tmp_path / "alerts.jsonl"
    rng = random.Random(4)

    def write(first: int, count: int) -> int:
        lines = []
        for b in range(first, first + count):
            t = T0 + timedelta(seconds=10 * b)
            events = normal_block(f"blk_{rng.randint(10**17, 10**18)}", rng, t)
            if b % 10 == 5:  # an event the model never saw: an alert in each run
                events.insert(3, (t, f"writeBlock blk_9{b} received exception java.io.IOException"))
            lines += render(events)
        with open(log, "a") as fh:
            fh.write("".join(x + "\n" for x in lines))
        return len(lines)

    def follow(*extra):
        return detect(compose("detect", [f"paths.root={cfg.paths.root}", f"ckpt={result['run_id']}", f"inputs=[{log}]",
                                         f"out={out}", "follow=true", "follow_exit_s=0.5", *extra]))

    first_lines = write(0, 20)
    first = follow("detect.stream_status_s=1e-9")  # a status line after every line
    status = [x for x in capsys.readouterr().err.splitlines() if x.startswith("loglm: stream: ")]
    assert len(status) >= first_lines - 1 and f"{first_lines:,} lines read (0 rejected)" in status[-1], status[-1:]
    assert first["lines"]["read"] == first_lines and first["resumed"] is None and first["alerts"] >= 1
    assert json.loads(Path(first["state_path"]).read_text())["positions"][0]["line"] == first_lines
    second_lines = write(20, 10)
    second = follow()
    assert second["resumed"]["line"] == first_lines and second["lines"]["read"] == second_lines
    assert second["alerts"] >= 1 and len(out.read_text().splitlines()) == first["alerts"] + second["alerts"]
    assert pq.read_table(out.with_suffix(".scores.1.parquet")).num_rows == first["sessions_scored"]
    assert pq.read_table(out.with_suffix(".scores.parquet")).num_rows == second["sessions_scored"]
    again = follow("follow_from=start")
    assert again["lines"]["read"] == first_lines + second_lines and again["resumed"] is None
    assert len(out.read_text().splitlines()) == again["alerts"]


def test_two_files_followed_together_score_each_and_resume_each(model, tmp_path):
    """follow=true with two inputs: every line of both read and accounted, a bad line rejected with its own
    file and line; a block whose lines are in both files is one session; a restart reads only what each
    file gained."""
    from loglm.detect.detector import run as detect

    cfg, result = model
    a, b, out = tmp_path / "dn1.log", tmp_path / "dn2.log", tmp_path / "alerts.jsonl"
    rng = random.Random(6)
    blocks = [render(normal_block(f"blk_{rng.randint(10**17, 10**18)}", rng, T0 + timedelta(seconds=10 * i)))
              for i in range(20)]
    a.write_text("".join(x + "\n" for blk in blocks[:10] for x in blk) + "".join(blocks[19][0] + "\n"))
    b.write_text(blocks[10][0] + "\n" + blocks[10][1] + "\n" + "not a log line\n" +
                 "".join(x + "\n" for blk in blocks[10:] for x in (blk[2:] if blk is blocks[10] else
                                                                    blk[1:] if blk is blocks[19] else blk)))
    lines = len(a.read_text().splitlines()) + len(b.read_text().splitlines())

    def follow():
        return detect(compose("detect", [f"paths.root={cfg.paths.root}", f"ckpt={result['run_id']}",
                                         f"inputs=[{a},{b}]", f"out={out}", "follow=true", "follow_exit_s=0.5"]))

    first = follow()
    assert first["lines"]["read"] == lines and first["lines"]["rejected"] == 1
    assert [json.loads(x) for x in open(first["rejected_path"])] == [
        {"file": str(b), "line": 3, "reason": "header does not match format hdfs"}]
    assert first["sessions_scored"] == 20  # the block split across the files is one session
    with open(a, "a") as fh:
        fh.write("".join(x + "\n" for x in render(normal_block("blk_42", rng, T0 + timedelta(seconds=300)))))
    second = follow()
    assert second["lines"]["read"] == len(a.read_text().splitlines()) - len(blocks[19][:1]) - sum(map(len, blocks[:10]))
    assert set(second["resumed"]) == {str(a), str(b)} and second["lines"]["rejected"] == 0


def test_a_crash_leaves_a_position_before_every_line_it_had_not_scored(model, tmp_path, monkeypatch):
    """At least once: the position saved while the stream runs is before the first line of every session not
    yet scored, so a restart after a crash (here: scoring fails on its fourth batch) reads them again."""
    from loglm.detect import streaming
    from loglm.detect.detector import run as detect

    cfg, result = model
    log, out = tmp_path / "live.log", tmp_path / "alerts.jsonl"
    log.write_bytes(b"".join(endless(5, 60)))
    monkeypatch.setattr(streaming, "STATE_EVERY_S", 0.0)  # saved after every line
    monkeypatch.setattr(streaming, "SCORE_SESSIONS", 8)  # a call scores at most 8 sessions, however many close
    scored, calls, score = set(), [0], streaming.StreamingDetector._score_pending

    def crashing(self):
        if self.pending:
            calls[0] += 1
            if calls[0] == 4:
                raise RuntimeError("scoring failed")
            batch = self.pending[:max(self.dcfg.batch_size, streaming.SCORE_SESSIONS)]  # what one call scores
            scored.update(e["line_no"] for _, events, _ in batch for e in events)
        score(self)

    monkeypatch.setattr(streaming.StreamingDetector, "_score_pending", crashing)
    with pytest.raises(RuntimeError, match="scoring failed"):
        detect(compose("detect", [f"paths.root={cfg.paths.root}", f"ckpt={result['run_id']}", f"inputs=[{log}]",
                                  f"out={out}", "follow=true", "follow_exit_s=0.5", "detect.batch_size=8"]))
    saved, = json.loads(out.with_suffix(".follow.json").read_text())["positions"]
    garbage = {n for n, raw in enumerate(log.read_bytes().splitlines(), 1) if raw.startswith(b"\xff")}
    unscored = set(range(1, log.read_bytes().count(b"\n") + 1)) - scored - garbage
    assert scored and unscored and saved["line"] < min(unscored), (saved["line"], min(unscored))


def test_count_windows_stream_like_the_batch_path(model):
    """``data.session.by=count`` (the batch path's rule for sparse logs) works in streaming too: windows of
    ``window_events`` events in arrival order, each scored as it fills, the last one at the end."""
    from dataclasses import replace

    from loglm.detect.streaming import StreamingDetector
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.store import load_model

    cfg, result = model
    cfg = replace(cfg, data=replace(cfg.data, session=replace(cfg.data.session, by="count", window_events=25)))
    loaded = load_model(result["model_dir"])
    out = io.StringIO()
    det = StreamingDetector(cfg, loaded, lambda t, g, c, d: score_windows(loaded.encoder, t, g, c, d), out)
    lines = [raw for raw in endless(3, 40) if not raw.startswith(b"\xff")]
    for n, raw in enumerate(lines, 1):
        det.feed(raw, "gen", n)
    summary = det.finish()
    assert summary["lines"]["accepted"] == len(lines) == summary["events_scored"]
    assert summary["sessions_scored"] == -(-len(lines) // 25)  # every full window and the last partial one


def test_stream_cuts_sessions_where_training_did_and_alerts_like_batch(model, tmp_path):
    """With no idle close set, a stream closes a session after twice the longest pause inside 99.9% of normal
    training sessions (recorded at prepare, carried in calibration.json): the same sessions and the same
    alerts as batch detection on the same file (what is still open when the input ends is closed as batch
    closes it).  A fixed 60 s close on HDFS
    blocks, whose lifecycles pause for minutes, gave 104 alerts where batch gave 67."""
    from dataclasses import replace

    from synthetic import make_log

    from loglm.detect.detector import run as batch
    from loglm.detect.streaming import StreamingDetector, stream_idle_close
    from loglm.model.store import load_model

    cfg, result = model
    loaded = load_model(result["model_dir"])
    pauses = loaded.calibration["session_pause_s"]
    assert pauses["n"] > 100 and pauses["p999"] == pytest.approx(1.0)  # a synthetic block pauses 1 s
    cfg = replace(cfg, detect=replace(cfg.detect, stream_idle_close_s=None))
    assert stream_idle_close(cfg, loaded.calibration)[0] == pytest.approx(2.0)
    assert stream_idle_close(cfg, {})[0] == 60  # a model that records no pauses
    lines, kinds = make_log(80, seed=5, anomalies={10: "swap", 30: "unseen", 50: "swap"})
    log = tmp_path / "new.log"
    log.write_text("\n".join(lines) + "\n")
    summary = batch(replace(cfg, ckpt=result["run_id"], inputs=[str(log)], out=str(tmp_path / "batch.jsonl")))
    want = {json.loads(x)["session_id"] for x in open(tmp_path / "batch.jsonl")}
    assert set(kinds) <= want

    def stream(idle_s):
        out = io.StringIO()
        # room for every open block: an evicted session is cut short (no [END]) and differs from batch by design
        c = replace(cfg, detect=replace(cfg.detect, stream_idle_close_s=idle_s, max_open_sessions=10_000))
        det = StreamingDetector(c, loaded, loaded_scorer(loaded), out)
        for n, line in enumerate(lines, 1):
            det.feed(line.encode() + b"\n", str(log), n)
        return det.finish(), [json.loads(x) for x in out.getvalue().splitlines()]

    got, alerts = stream(None)
    assert got["idle_close_s"] == pytest.approx(2.0) and got["evicted"] == 0
    assert got["sessions_scored"] == summary["sessions_scored"] == 80
    assert {a["session_id"] for a in alerts} == want


def loaded_scorer(loaded):
    from loglm.detect.torch_scoring import score_windows

    return lambda t, g, c, d: score_windows(loaded.encoder, t, g, c, d)


def test_stream_reads_each_source_with_its_own_reader(model):
    """data.sources in streaming: lines from a ``*.jsonl`` source are parsed as JSON lines, the others as raw
    HDFS lines, and the same messages get the same templates either way."""
    from dataclasses import replace

    from loglm.detect.streaming import StreamingDetector
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.store import load_model

    cfg, result = model
    src = {"match": "*.jsonl", "format": "jsonl", "fields": {"message": "msg", "time": "t"}, "time_format": "epoch"}
    cfg = replace(cfg, data=replace(cfg.data, sources=[src]))
    loaded = load_model(result["model_dir"])
    det = StreamingDetector(cfg, loaded, lambda t, g, c, d: score_windows(loaded.encoder, t, g, c, d), io.StringIO())
    rng = random.Random(5)
    raw = render(normal_block("blk_111", rng, T0))
    as_json = [json.dumps({"t": 1_226_260_800 + k, "msg": line.split(": ", 1)[1].replace("blk_111", "blk_222")})
               for k, line in enumerate(render(normal_block("blk_222", random.Random(5), T0)))]
    for n, line in enumerate(raw, 1):
        det.feed(line.encode(), "node1/hdfs.log", n)
    for n, line in enumerate(as_json, 1):
        det.feed(line.encode(), "node2/hdfs.jsonl", n)
    assert det.account.accepted == len(raw) + len(as_json) and det.account.rejected == 0
    by_block = {k: [e["template"] for e in v] for k, v in det.open.items()}
    assert len(by_block) == 2 and by_block["blk_111"] == by_block["blk_222"], by_block
    assert all(t >= 0 for t in by_block["blk_111"])
    det.finish()


def test_on_a_stop_stdin_lines_read_by_the_thread_are_handed_on_and_the_pipe_read_to_its_end():
    """The thread that reads stdin holds up to 256 lines the stream has not taken; a stop must not drop them,
    nor what the pipe holds (the writer of `journalctl -f | loglm ...` stopped with it: the pipe ends)."""
    import os
    import threading

    from loglm.detect.streaming import Ticked

    r, w = os.pipe()
    lines = [b"line %d\n" % i for i in range(5000)]
    writer = threading.Thread(target=lambda: (os.write(w, b"".join(lines)), os.close(w)))
    with open(r, "rb") as fh:
        writer.start()  # 5000 lines: more than the thread's queue and the pipe's buffer together
        ticked = Ticked(enumerate(fh, 1), poll_s=0.05)
        got = []
        for n, raw in ticked:
            if n is not None:
                got.append((n, raw))
            if len(got) == 3:
                break  # the stop
        got += list(ticked.drain(30))
        writer.join()
    assert got == list(enumerate(lines, 1))
    # an input that stays open: the drain ends once it is caught up
    r, w = os.pipe()
    os.write(w, b"a\nb\n")
    with open(r, "rb") as fh:
        ticked = Ticked(enumerate(fh, 1), poll_s=0.05)
        t0 = time.monotonic()
        assert list(ticked.drain(30)) == [(1, b"a\n"), (2, b"b\n")]
        assert time.monotonic() - t0 < 10
        os.close(w)


def test_a_stop_while_a_relay_sends_scores_every_message_it_sent(model, tmp_path):
    """SIGTERM while the stream is behind a relay that sent 20,000 messages at once: what waits in the
    socket is read and scored before the stream exits (summary `read_at_stop`), every message accounted."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "alerts.jsonl"
    proc = start_stream(model, f"tcp://127.0.0.1:{port}", out, "detect.stream_idle_close_s=100000")
    blocks = blocks_with_one_anomaly(11, 2000, 3)
    lines = [line + b"\n" for block in blocks for line in block]
    with socket.create_connection(("127.0.0.1", port)) as relay:
        relay.sendall(b"".join(lines))
        code, summary, stderr = stop(proc)  # the relay's connection still open
    assert code == 0, stderr[-2000:]
    assert summary["stopped_by"] == "SIGTERM"
    assert summary["lines"]["read"] == len(lines) == summary["events_scored"], stderr[-2000:]
    assert summary["read_at_stop"] > 0
