"""`make bench`: throughput figures, written to reports/bench.json and reports/bench.md.

Each section adds one key to bench.json.  Uses ../shared/data when present (the larger real samples),
otherwise the data the repo ships.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
REPORTS = ROOT / "reports"


def hdfs_input() -> Path:
    shared = SHARED / "hdfs_loghub_blocks" / "HDFS_20000.log"
    return shared if shared.is_file() else ROOT / "data" / "hdfs_sample" / "HDFS_20000.log.gz"


def bench_ingest(tmp: Path) -> dict:
    """Raw lines -> templates -> sessions -> Parquet shards, end to end (our prepare stage)."""
    from loglm.config import DataConfig, RootConfig, SessionConfig
    from loglm.ingest.prepare import run as prepare

    src = hdfs_input()
    cfg = RootConfig()
    cfg.paths.root = str(tmp)
    cfg.data = DataConfig(name="bench_hdfs", format="hdfs", inputs=[str(src)], session=SessionConfig(max_events=256))
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        summary = prepare(cfg)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    lines = summary["lines"]["read"]
    return {"input": str(src), "lines": lines, "seconds": round(best, 3), "lines_per_s": round(lines / best, 1),
            "templates": summary["templates_mined"], "sessions": summary["sessions"]}


def bench_scoring() -> dict:
    """Detection scoring (n_views masked views per window) with the `small` encoder on CPU."""
    import numpy as np
    import torch

    from loglm.config import DetectConfig
    from loglm.detect.scoring import score_windows
    from loglm.model.encoder import EncoderConfig, LogEncoder

    torch.manual_seed(0)
    enc = LogEncoder(EncoderConfig(vocab_size=64, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_len=258)).eval()
    rng = np.random.default_rng(0)
    n, length = 2048, 24
    toks = [rng.integers(5, 64, size=length) for _ in range(n)]
    gaps = [np.zeros(length, dtype=np.int64) for _ in range(n)]
    cfg = DetectConfig(batch_size=256, n_views=5)
    score_windows(enc, toks[:256], gaps[:256], [True] * 256, cfg)  # warm-up
    t0 = time.perf_counter()
    score_windows(enc, toks, gaps, [True] * n, cfg)
    dt = time.perf_counter() - t0
    return {"windows": n, "events_per_window": length, "n_views": cfg.n_views, "seconds": round(dt, 3),
            "events_per_s": round(n * length / dt, 1), "torch_threads": torch.get_num_threads()}


def write_reports(results: dict) -> None:
    REPORTS.mkdir(exist_ok=True)
    path = REPORTS / "bench.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(results)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    lines = ["# LogLM benchmarks", "", f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; "
             f"written by `make bench` ({time.strftime('%Y-%m-%d %H:%M:%S')}).", ""]
    for key, section in merged.items():
        if key == "machine":
            continue
        lines += [f"## {key}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in section.items() if not isinstance(v, dict)]
        lines.append("")
    (REPORTS / "bench.md").write_text("\n".join(lines))


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="sections to run (default: all)")
    args = parser.parse_args()
    sections = {"ingest": lambda: bench_ingest(Path(tempfile.mkdtemp(prefix="loglm-bench-"))),
                "scoring_cpu": bench_scoring}
    results = {}
    for name, fn in sections.items():
        if args.only and name not in args.only:
            continue
        print(f"bench {name} ...", flush=True)
        results[name] = fn()
        print(json.dumps(results[name], indent=2), flush=True)
    results["machine"] = {"cpus": __import__("os").cpu_count(), "python": platform.python_version()}
    write_reports(results)
    print(f"wrote {REPORTS / 'bench.json'} and {REPORTS / 'bench.md'}")


if __name__ == "__main__":
    main()
