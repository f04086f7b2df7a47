"""A generated raw HDFS corpus of any size, built from the real block lifecycles of the shipped sample.

Each generated block replays one real block of ``data/hdfs_loglead`` (its lines, their order and the time
between them), under a new block id and a new start time; a share ``anomaly_rate`` of the blocks replays an
anomalous one, and their ids are written beside the corpus (``<out>.anomalous_ids.txt``), so a generated
corpus is labelled as the real one is.  Blocks start ``blocks_per_s`` per second; lines are written in time
order within each batch of ``batch_blocks`` blocks (a long block's last lines may come before the next
batch's first ones in the file, as in logs gathered from several hosts).  Memory is one batch of blocks plus
the source, whatever the size asked for; used by the scale benchmark and the memory tests.
"""

from __future__ import annotations

import gzip
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

BLOCK = re.compile(r"blk_-?\d+")


@dataclass
class SourceBlock:
    offsets: list[float]  # seconds after the block's first line
    texts: list[str]  # the line after its timestamp, block ids replaced by "{0}" (other blocks "{1}", ...)
    others: int  # how many other block ids its lines mention


def load_source(path: Path, anomalous_ids: Path) -> tuple[list[SourceBlock], list[SourceBlock]]:
    """(normal, anomalous) blocks of a raw HDFS file, each line kept with the first block id it names."""
    from datetime import UTC, datetime

    bad = {line.strip() for line in anomalous_ids.read_text().splitlines() if line.strip()}
    lines: dict[str, list[tuple[float, str]]] = {}
    days: dict[str, float] = {}  # a day's midnight (UTC: only the time between a block's lines is kept)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split(" ", 2)
            ids = BLOCK.findall(line)
            if len(parts) < 3 or not ids:
                continue
            day, hms = parts[0], parts[1]
            try:
                midnight = days.get(day)
                if midnight is None:
                    midnight = days[day] = datetime.strptime(day, "%y%m%d").replace(tzinfo=UTC).timestamp()
                if len(hms) != 6 or not hms.isdigit() or hms[:2] > "23" or hms[2:4] > "59" or hms[4:] > "59":
                    raise ValueError(hms)
            except ValueError:
                raise ValueError(f"{path}:{n}: not an HDFS line (yymmdd HHMMSS ...): {line[:80]!r}") from None
            ts = midnight + int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + int(hms[4:])
            lines.setdefault(ids[0], []).append((ts, parts[2]))
    normal, anomalous = [], []
    for block, items in lines.items():
        t0 = items[0][0]
        names: dict[str, int] = {block: 0}
        texts = []
        for _, text in items:
            for other in BLOCK.findall(text):
                names.setdefault(other, len(names))
            escaped = text.replace("{", "{{").replace("}", "}}")
            texts.append(BLOCK.sub(lambda m, names=names: "{" + str(names[m.group(0)]) + "}", escaped))
        src = SourceBlock([ts - t0 for ts, _ in items], texts, len(names) - 1)
        (anomalous if block in bad else normal).append(src)
    if not normal or not anomalous:
        raise ValueError(f"{path}: the source needs normal and anomalous blocks ({len(normal)} and {len(anomalous)} found)")
    return normal, anomalous


def generate(out: Path, lines: int, source: Path, anomalous_ids: Path, anomaly_rate: float = 0.03,
             blocks_per_s: float = 10.0, seed: int = 0, batch_blocks: int = 2000, start: str = "2008-11-09") -> dict:
    """Write at least ``lines`` lines (whole blocks) to ``out`` (.gz compresses) and the anomalous ids beside it."""
    from datetime import UTC, datetime

    from loglm.progress import Progress

    if lines < 1:
        raise ValueError(f"synth.lines must be >= 1, got {lines}")
    if not 0 <= anomaly_rate <= 1:
        raise ValueError(f"synth.anomaly_rate must lie in [0, 1], got {anomaly_rate}")
    if blocks_per_s <= 0:
        raise ValueError(f"synth.blocks_per_s must be > 0, got {blocks_per_s}")
    normal, anomalous = load_source(source, anomalous_ids)
    rng = random.Random(seed)
    t_start = datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp()
    out.parent.mkdir(parents=True, exist_ok=True)
    ids_path = out.with_name(out.name + ".anomalous_ids.txt")
    tmp, tmp_ids = out.with_name(f".{out.name}.tmp"), ids_path.with_name(f".{ids_path.name}.tmp")
    opener = gzip.open if out.suffix == ".gz" else open
    written = blocks = n_bad = 0
    t0 = time.perf_counter()
    progress = Progress("generating", every_s=None)
    with opener(tmp, "wt", encoding="utf-8") as fh, open(tmp_ids, "w") as ids_fh:
        while written < lines:
            batch: list[tuple[float, int, str]] = []
            for _ in range(batch_blocks):
                if written + len(batch) >= lines:
                    break
                bad = rng.random() < anomaly_rate
                src = rng.choice(anomalous if bad else normal)
                names = [f"blk_{rng.getrandbits(62) - (1 << 61)}" for _ in range(src.others + 1)]
                begin = t_start + blocks / blocks_per_s
                for off, text in zip(src.offsets, src.texts):
                    batch.append((begin + off, len(batch), text.format(*names)))
                if bad:
                    ids_fh.write(names[0] + "\n")
                    n_bad += 1
                blocks += 1
            batch.sort()
            for ts, _, text in batch:
                stamp = datetime.fromtimestamp(ts, UTC).strftime("%y%m%d %H%M%S")
                fh.write(f"{stamp} {text}\n")
            written += len(batch)
            progress.tick(len(batch))
    tmp.replace(out)
    tmp_ids.replace(ids_path)
    seconds = time.perf_counter() - t0
    progress.done(f"wrote {written:,} lines of {blocks:,} blocks ({n_bad:,} anomalous) to {out}")
    return {"out": str(out), "anomalous_ids": str(ids_path), "lines": written, "blocks": blocks,
            "anomalous_blocks": n_bad, "seconds": round(seconds, 2), "lines_per_s": round(written / max(seconds, 1e-9))}


def run(cfg) -> dict:
    """``python -m pipelines.synth synth.lines=N out=<file>`` (see conf/synth.yaml)."""
    from loglm.config import PROJECT_ROOT

    s = cfg.synth
    if not cfg.out:
        raise ValueError("give out=<file> (.log, or .log.gz to compress)")
    source = Path(s.source) if s.source else PROJECT_ROOT / "data/hdfs_loglead/HDFS_loglead_early.log.gz"
    ids = Path(s.source_anomalous_ids) if s.source_anomalous_ids else PROJECT_ROOT / "data/hdfs_loglead/anomalous_block_ids.txt"
    return generate(Path(cfg.out), s.lines, source, ids, s.anomaly_rate, s.blocks_per_s, s.seed, s.batch_blocks)
