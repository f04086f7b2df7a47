"""Real tokens per second the training stream hands out in one process (row groups -> windows -> padded
batches), per epoch, after its first batch: is the data path fast enough to feed a GPU? (docs/scaling.md)

    python -m benchmarks.stream_speed runs/data/<prepared folder> [--batch 256] [--epochs 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()

    from loglm.shards import session_files
    from loglm.training.stream import ShardStream, row_groups

    units = row_groups(session_files(args.data), "train")
    for epoch in range(args.epochs):
        start = time.perf_counter()
        first, real, batches = None, 0, 0
        for batch in ShardStream(units, "train", args.batch, 42, epoch):
            if first is None:  # the first batch pays the imports and the first row group's read
                first = time.perf_counter()
                continue
            real += int(batch["pad_mask"].sum())
            batches += 1
        if first is None or batches == 0:
            raise SystemExit(f"{args.data}: fewer than two training batches of {args.batch}")
        dt = time.perf_counter() - first
        print(f"epoch {epoch}: first batch after {first - start:.2f} s, then {batches} batches at "
              f"{real / dt:,.0f} real tokens/s")


if __name__ == "__main__":
    main()
