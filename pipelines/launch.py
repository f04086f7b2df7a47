"""python -m pipelines.launch --address http://HEAD:8265 [--prepare] [--no-follow] -- <pretrain overrides ...>

Submits `python -m pipelines.pretrain <overrides> launcher=ray ray.address=auto` to a running Ray cluster
(Ray Jobs API), follows its logs, prints the job id and the MLflow run id.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard / Jobs API address")
    parser.add_argument("--no-follow", action="store_true", help="return after submitting")
    parser.add_argument("--prepare", action="store_true", help="run the ingest (Ray Data) in the job first")
    parser.add_argument("--pip", nargs="*", default=None, help="extra pip requirements for the job's runtime env")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE environment variables for the job")
    parser.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    parser.add_argument("overrides", nargs="*", help="pretraining config overrides (after --)")
    args = parser.parse_args(argv)
    from loglm.launch import submit

    env = dict(kv.split("=", 1) for kv in args.env)
    result = submit(args.address, args.overrides, follow=not args.no_follow, prepare=args.prepare, pip=args.pip,
                    env=env, timeout_s=args.timeout)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0 if args.no_follow or result["status"] == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
