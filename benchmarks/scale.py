"""Bench section ``scale``: prepare, 200 pretraining steps and batch detection on generated HDFS corpora of
growing size.

Each stage runs as its own process (as a user runs it); its peak RSS is the largest resident set of that
process and of every process it started (``wait4``: the driver or one of its read/session workers; they
run side by side, so the machine holds about their sum).  The largest corpus is prepared once more under an
address-space cap (``prlimit --as``) to show it completes in bounded memory.  Every corpus is prepared three
times and its median counts, in rounds that take each size in turn (a 10 s prepare swings by a third on a
shared 2-core machine, and the machine's speed drifts within the bench's hour; the ratio of lines/s between
sizes is a key, so the sizes it compares are measured side by side), each with its input read into the page
cache first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak(args: list[str], **kw) -> dict:
    """One stage in a fresh interpreter that reports its own process tree's peak (RUSAGE_CHILDREN of this
    process only ever grows, so each measurement gets its own measuring parent)."""
    code = ("import json, resource, subprocess, sys, time; t=time.perf_counter(); "
            "p=subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps({'rc': p.returncode, 'seconds': time.perf_counter()-t, "
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, 'err': p.stderr[-1500:]}))")
    cmd = [sys.executable, "-m", *args]
    if kw.get("cap_bytes"):
        cmd = ["prlimit", f"--as={kw['cap_bytes']}", *cmd]
    proc = subprocess.run([sys.executable, "-c", code, *cmd], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "LOGLM_PROGRESS": "0"})
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if r["rc"]:
        raise RuntimeError(f"{args[0]} failed ({r['rc']}): {r['err']}")
    return {"seconds": round(r["seconds"], 2), "peak_rss_mb": round(r["peak_rss_mb"], 1)}


def _warm(path: Path) -> None:
    """Read ``path`` once so its prepare starts with the input in the page cache (this machine's holds about
    5 GB; a larger size's spill evicts a smaller corpus, which is then read from disk at ~55 MB/s)."""
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def bench_scale(tmp: Path, sizes: list[int], steps: int = 200, cap_gb: float = 2.0, repeats: int = 3) -> dict:
    from loglm.synth import generate

    def data(n: int) -> list[str]:
        corpus = tmp / f"hdfs_{n}.log"
        return ["data=hdfs_loglead", f"data.inputs=[{corpus}]", f"data.anomalous_ids={corpus}.anomalous_ids.txt",
                f"paths.root={tmp / 'runs'}", "logger=none"]

    gens = {n: generate(tmp / f"hdfs_{n}.log", n, ROOT / "data/hdfs_loglead/HDFS_loglead_early.log.gz",
                        ROOT / "data/hdfs_loglead/anomalous_block_ids.txt", seed=0) for n in sizes}
    # rounds of every size in turn: the machine's speed drifts by a quarter within the hour a bench takes, and
    # the ratio of lines/s between sizes is a key, so each round's sizes share one stretch of that drift
    runs: dict[int, list] = {n: [] for n in sizes}
    for r in range(repeats):
        for n in sizes:
            if runs[n]:
                shutil.rmtree(tmp / "runs" / "data" / f"scale_{n}_{r - 1}")
            _warm(tmp / f"hdfs_{n}.log")
            prep = _peak(["pipelines.prepare", *data(n), f"data.name=scale_{n}_{r}"])
            manifest = json.loads((tmp / "runs" / "data" / f"scale_{n}_{r}" / "MANIFEST.json").read_text())["summary"]
            runs[n].append((manifest["seconds"], prep, manifest))
            print(json.dumps({"round": r, "lines": gens[n]["lines"], "prepare_inner_s": manifest["seconds"]}), flush=True)
    rows = []
    for n in sizes:
        _, prep, manifest = sorted(runs[n], key=lambda x: x[0])[len(runs[n]) // 2]
        # training reads the last round's folder (the same dataset each round)
        train = _peak(["pipelines.pretrain", *data(n), f"data.name=scale_{n}_{repeats - 1}", "trainer.max_epochs=1",
                       f"trainer.limit_train_batches={steps}", "trainer.progress_bar=false",
                       "detect.small_validation=warn"])
        # batch detection of the whole raw corpus with that model (read out of core, scored a shard at a time)
        model_dir = json.loads((tmp / "runs" / "models" / "latest.json").read_text())["model_dir"]
        _warm(tmp / f"hdfs_{n}.log")
        detect = _peak(["pipelines.detect", f"paths.root={tmp / 'runs'}", f"ckpt={model_dir}",
                        f"inputs=[{tmp / f'hdfs_{n}.log'}]", f"out={tmp / f'alerts_{n}.jsonl'}", "logger=none"])
        lines = gens[n]["lines"]
        rows.append({"lines": lines, "sessions": manifest["sessions"], "prepare_s": prep["seconds"],
                     "detect_s": detect["seconds"], "peak_rss_mb_detect": detect["peak_rss_mb"],
                     "detect_lines_per_s": round(lines / detect["seconds"]),
                     "prepare_inner_s": manifest["seconds"],
                     "peak_rss_mb_prepare": max(x[1]["peak_rss_mb"] for x in runs[n]),
                     "lines_per_s": round(lines / manifest["seconds"]), "pretrain_s": train["seconds"],
                     "peak_rss_mb_train": train["peak_rss_mb"], "input_mb": round((tmp / f"hdfs_{n}.log").stat().st_size / 2**20, 1),
                     "prepare_runs_inner_s": [x[0] for x in runs[n]]})
        print(json.dumps(rows[-1]), flush=True)
    big = max(sizes)
    _warm(tmp / f"hdfs_{big}.log")
    capped = _peak(["pipelines.prepare", *data(big), "data.name=scale_capped"], cap_bytes=int(cap_gb * 2**30))
    shutil.rmtree(tmp, ignore_errors=True)
    first, last = rows[0], rows[-1]
    per_round = [round((last["lines"] / b) / (first["lines"] / a), 3)
                 for a, b in zip(first["prepare_runs_inner_s"], last["prepare_runs_inner_s"])]
    return {
        "peak_rss_mb_prepare_max": max(r["peak_rss_mb_prepare"] for r in rows),
        "peak_rss_mb_train_max": max(r["peak_rss_mb_train"] for r in rows),
        "peak_rss_mb_detect_max": max(r["peak_rss_mb_detect"] for r in rows),
        "peak_rss_mb_detect_largest_over_smallest": round(last["peak_rss_mb_detect"] / first["peak_rss_mb_detect"], 3),
        "lines_per_s_largest_over_smallest": round(last["lines_per_s"] / first["lines_per_s"], 3),
        "lines_per_s_largest_over_smallest_per_round": per_round,
        "prepare_end_to_end_lines_per_s": last["lines_per_s"],
        "capped_prepare": {"lines": last["lines"], "cap_gb_address_space": cap_gb, "completed": True,
                           "seconds": capped["seconds"], "peak_rss_mb": capped["peak_rss_mb"]},
        "pretrain_steps": steps, "repeats": repeats, "workers": os.cpu_count(),
        "sizes": {f"{r['lines']:,} lines": r for r in rows},
    }
