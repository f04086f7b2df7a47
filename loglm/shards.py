"""Token sequences on disk: Parquet session shards and the events table they point into."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loglm.ingest.sessions import Events, Session
from loglm.vocab import Vocabulary, gap_bucket

SESSION_SCHEMA = pa.schema([
    ("session_id", pa.string()),
    ("chunk", pa.int32()),
    ("entity_type", pa.string()),
    ("entity", pa.string()),
    ("start_ts", pa.float64()),
    ("end_ts", pa.float64()),
    ("split", pa.string()),
    ("label", pa.int8()),
    ("closed", pa.bool_()),
    ("tokens", pa.list_(pa.int32())),
    ("gaps", pa.list_(pa.int8())),
    ("event_idx", pa.list_(pa.int64())),
])


def session_table(sessions: list[Session], events: Events, vocab: Vocabulary) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in SESSION_SCHEMA.names}
    for s in sessions:
        idx = s.event_idx
        ts = [events.ts[j] for j in idx]
        cols["session_id"].append(s.session_id)
        cols["chunk"].append(s.chunk)
        cols["entity_type"].append(s.entity_type)
        cols["entity"].append(s.entity)
        cols["start_ts"].append(ts[0])
        cols["end_ts"].append(ts[-1])
        cols["split"].append(s.split)
        cols["label"].append(s.label)
        cols["closed"].append(s.closed)
        cols["tokens"].append([vocab.token(t if t >= 0 else None) for t in (events.template[j] for j in idx)])
        cols["gaps"].append([0] + [gap_bucket(b - a, vocab.gap_buckets) for a, b in zip(ts, ts[1:])])
        cols["event_idx"].append(idx)
    return pa.Table.from_pydict(cols, schema=SESSION_SCHEMA)


def events_table(events: Events) -> pa.Table:
    columns = {
        "source": events.source, "line_no": events.line_no, "ts": events.ts, "template": events.template,
        "raw": events.raw, "entities": [json.dumps(e, sort_keys=True) for e in events.entities],
        "label": events.label if len(events.label) == len(events.ts) else [None] * len(events.ts),
    }
    if len(events.fields) == len(events.ts) and any(f is not None for f in events.fields):
        # flows: their canonical fields (numeric baselines read them; null for text lines)
        columns["fields"] = [None if f is None else json.dumps(f, sort_keys=True) for f in events.fields]
    return pa.Table.from_pydict(columns)


def write_session_shards(table: pa.Table, folder: Path, shard_rows: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, max(1, table.num_rows), shard_rows)):
        path = folder / f"shard-{i:05d}.parquet"
        tmp = folder / f".{path.name}.tmp"
        pq.write_table(table.slice(start, shard_rows), tmp, compression="zstd")
        tmp.replace(path)
        paths.append(path)
    return paths


def session_files(data_dir: str | Path) -> list[Path]:
    folder = Path(data_dir) / "sessions"
    files = sorted(folder.glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no session shards in {folder}; run `python -m pipelines.prepare` first")
    return files


def read_sessions(data_dir: str | Path, split: str | None = None) -> pa.Table:
    """The session rows (of one split), read a shard at a time so only the split's rows are kept."""
    import pyarrow.compute as pc

    parts = []
    for f in session_files(data_dir):
        t = pq.read_table(f)
        parts.append(t if split is None else t.filter(pc.equal(t.column("split"), split)))
    return pa.concat_tables(parts)


def read_events(data_dir: str | Path, rows: list[int] | None = None) -> pa.Table:
    table = pq.read_table(Path(data_dir) / "events.parquet")
    return table if rows is None else table.take(pa.array(rows, type=pa.int64()))
