"""The `loglm` command: `loglm detect --bundle DIR INPUT...` (torch-free engine) or `loglm <pipeline> key=value ...`."""

from __future__ import annotations

import argparse
import json
import runpy
import sys

PIPELINES = ("prepare", "pretrain", "distill", "export", "detect", "calibrate", "evaluate", "demo")


def detect_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm detect", description="Score raw logs with an exported LogLM bundle (CPU).")
    p.add_argument("--bundle", required=True, help="bundle directory written by `pipelines.export`")
    p.add_argument("--out", help="alerts file (JSON lines); default <bundle>/alerts/detect.jsonl")
    p.add_argument("--threads", type=int, default=0, help="batches scored in parallel, one onnxruntime thread each (0 = one per core)")
    p.add_argument("--variant", choices=["fp32", "int8"], help="model variant (default: the bundle's preferred)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--follow", action="store_true",
                   help="stream: follow one growing file (or '-' for stdin), alerting as sessions close")
    p.add_argument("--follow-exit-s", type=float, help="with --follow: stop after this long without new lines")
    p.add_argument("inputs", nargs="+", help="raw log files or directories")
    a = p.parse_args(argv)
    from loglm.engine.detect import run

    try:
        summary = run(a.bundle, a.inputs, a.out, a.threads, a.variant, a.batch_size, a.follow, a.follow_exit_s)
    except (FileNotFoundError, ValueError) as e:
        print(f"loglm detect: error: {e}", file=sys.stderr)
        return 2
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "detect" and any(a.startswith("--bundle") for a in argv[1:]):
        return detect_main(argv[1:])
    if not argv or argv[0] not in PIPELINES:
        print(f"usage: loglm detect --bundle DIR INPUT... | loglm {{{','.join(PIPELINES)}}} [key=value ...]",
              file=sys.stderr)
        return 2
    sys.argv = [f"pipelines.{argv[0]}", *argv[1:]]
    runpy.run_module(f"pipelines.{argv[0]}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
