"""Bench section ``stream``: streaming detection (``follow=true``, from the file and from a relay over TCP,
``inputs=[tcp://127.0.0.1:PORT]``) against batch detection on the same raw lines, lines/s and peak RSS, on the shipped HDFS lines (``data/hdfs_loglead``) and on the same lines four
times over (each copy with its own block ids, a week later than the one before): memory that does not
follow the input is the claim measured."""

from __future__ import annotations

import gzip
import json
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "hdfs_loglead" / "HDFS_loglead_early.log.gz"
_STAMP = re.compile(rb"^(\d{6} \d{6})")
_BLOCK = re.compile(rb"blk_(-?\d+)")


def copies(out: Path, times: int) -> int:
    """``times`` copies of the shipped lines into ``out``, copy k a week after copy k-1 with block ids of its
    own (blk_<id>0<k>); the number of lines written."""
    lines = gzip.open(SHIPPED, "rb").read().splitlines(keepends=True)
    n = 0
    with open(out, "wb") as fh:
        for k in range(times):
            shift, suffix = timedelta(days=7 * k), b"0" + str(k).encode()
            for line in lines:
                if k:
                    m = _STAMP.match(line)
                    if m:
                        t = datetime.strptime(m.group(1).decode(), "%y%m%d %H%M%S") + shift
                        line = t.strftime("%y%m%d %H%M%S").encode() + line[m.end():]
                    line = _BLOCK.sub(rb"blk_\g<1>" + suffix, line)
                fh.write(line)
                n += 1
    return n


def _model(tmp: Path) -> Path:
    """The demo's model (``experiment=demo``: the small encoder, 6 epochs on the shipped lines)."""
    from loglm.config import compose
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    overrides = ["experiment=demo", f"paths.root={tmp / 'runs'}", "trainer.progress_bar=false"]
    prepare(compose("prepare", overrides))
    return Path(pretrain(compose("pretrain", overrides))["model_dir"])


def _detect(tmp: Path, model: Path, log: Path, follow: bool) -> dict:
    """One detection in its own process: its summary, wall seconds and peak RSS (the process and every
    process it starts, summed, sampled every 50 ms)."""
    import psutil

    mode = {False: "batch", True: "stream"}.get(follow, follow)
    out = tmp / f"{log.stem}-{mode}.jsonl"
    port = _free_port() if mode == "tcp" else None
    source = f"tcp://127.0.0.1:{port}" if port else str(log)
    cmd = [sys.executable, "-m", "pipelines.detect", f"paths.root={tmp / 'runs'}", f"ckpt={model}",
           f"inputs=[{source}]", f"out={out}", "detect.report=false"]
    if follow:
        cmd += ["follow=true", "follow_exit_s=1", "follow_from=start", "detect.stream_status_s=0"]
    t0 = time.perf_counter()
    with open(tmp / "stdout.txt", "w") as so, open(tmp / "stderr.txt", "w") as se:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=so, stderr=se)
        top, peak = psutil.Process(proc.pid), 0
        sender = _send_when_listening(tmp / "stderr.txt", port, log, proc) if port else None
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [top, *top.children(recursive=True)])
            except psutil.Error:  # a process ended between listing and reading
                continue
            peak = max(peak, rss)
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    if sender is not None:
        sender.join()
    if proc.returncode != 0:
        raise RuntimeError(f"detect failed ({proc.returncode}): {(tmp / 'stderr.txt').read_text()[-2000:]}")
    return {"summary": json.loads((tmp / "stdout.txt").read_text()), "wall_s": wall, "peak_rss_mb": peak / 2**20}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send_when_listening(stderr: Path, port: int, log: Path, proc):
    """A thread that waits for the stream to say it follows, then sends ``log`` to it over one TCP
    connection, a relay's newline framing, as fast as the stream takes it."""
    import socket
    import threading

    def send():
        while proc.poll() is None and b"loglm: following" not in stderr.read_bytes():
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port)) as conn, open(log, "rb") as fh:
            while block := fh.read(1 << 16):
                conn.sendall(block)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def bench_stream(tmp: Path, model_dir: str | None = None, times: tuple[int, ...] = (1, 4), repeats: int = 3) -> dict:
    model = Path(model_dir) if model_dir else _model(tmp)
    out: dict = {"model": model_dir or "experiment=demo, pretrained by this run", "input": str(SHIPPED.relative_to(ROOT)), "repeats": repeats, "sizes": {}}
    for k in times:
        log = tmp / f"hdfs_x{k}.log"
        lines = copies(log, k)
        row: dict = {"lines": lines}
        for mode, follow in (("batch", False), ("stream", True), ("tcp", "tcp")):
            runs = [_detect(tmp, model, log, follow) for _ in range(repeats)]
            secs = [r["summary"]["seconds"] - (1.0 if follow else 0.0) for r in runs]  # less the idle exit
            s = runs[0]["summary"]
            assert s["lines"]["read"] == lines, (mode, s["lines"])
            row.update({f"{mode}_lines_per_s": round(lines / statistics.median(secs)),
                        f"{mode}_lines_per_s_spread": [round(lines / max(secs)), round(lines / min(secs))],
                        f"{mode}_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
                        f"{mode}_alerts": s.get("alerts", s.get("n_alerts"))})
        out["sizes"][f"x{k}"] = row
        log.unlink()
    return out
