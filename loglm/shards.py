"""Token sequences on disk: Parquet session shards and the events table they point into."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loglm.ingest.sessions import Events, Session
from loglm.vocab import Vocabulary

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
    # flows' facet ids, FACET_FIELDS per event, flattened (loglm.ingest.flows); empty without facets
    ("facets", pa.list_(pa.int32())),
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
        cols["gaps"].append(vocab.gaps(ts))
        cols["event_idx"].append(idx)
        cols["facets"].append(vocab.facets([events.fields[j] if j < len(events.fields) else None for j in idx]) if vocab.n_facets else [])
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


def write_session_shard(table: pa.Table, folder: Path, index: int) -> Path:
    """Session rows as ``sessions/shard-<index>.parquet`` (pre-sequenced datasets: shards in input order),
    written beside and renamed into place.  One chunk per column, so a table gathered from batches gives the
    bytes (and the data hash) of the same rows written whole."""
    path = folder / f"shard-{index:05d}.parquet"
    tmp = folder / f".{path.name}.tmp"
    pq.write_table(table.combine_chunks(), tmp, compression="zstd")
    tmp.replace(path)
    return path


def session_files(data_dir: str | Path) -> list[Path]:
    folder = Path(data_dir) / "sessions"
    files = sorted(folder.glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no session shards in {folder}; run `python -m pipelines.prepare` first")
    return files


PIECE_ROWS = 16_384  # session rows a split is scored in at a time (at most; data.shard_rows when smaller)


def split_pieces(data_dir: str | Path, split: str | None = None, max_rows: int | None = None):
    """The session rows (of one split) in pieces of at most ``max_rows`` rows, each session whole in one piece
    (a session with more chunk rows than that is a piece of its own).  A session whose chunk rows run on into
    the next shard (shards are cut by row count) is held back and given with that one; the rows of small
    shards are gathered and those of big ones cut at session boundaries, so pieces are even whatever the
    shards: what scores a split out of core iterates these, and its memory follows ``max_rows``, not the
    split or the shards.  ``max_rows=None``: each shard's sessions as they come."""
    import bisect

    tables = _whole_sessions(data_dir, split)
    if max_rows is None:
        yield from tables
        return
    gathered, n = [], 0
    for t in tables:
        sids = t.column("session_id").to_numpy(zero_copy_only=False)
        bounds = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]]).tolist() + [len(sids)]
        i = 0
        while i < len(bounds) - 1:
            j = bisect.bisect_right(bounds, bounds[i] + max_rows - n) - 1  # the sessions that fit
            if j <= i:
                if gathered:  # not one more fits: this piece is full
                    yield pa.concat_tables(gathered)
                    gathered, n = [], 0
                    continue
                j = i + 1  # one session longer than a piece: a piece of its own
            gathered.append(t.slice(bounds[i], bounds[j] - bounds[i]))
            n += bounds[j] - bounds[i]
            i = j
    if gathered:
        yield pa.concat_tables(gathered)


def _whole_sessions(data_dir: str | Path, split: str | None):
    """Each shard's rows (of one split), a session running on into the next shard moved there."""
    import pyarrow.compute as pc

    files = session_files(data_dir)
    carry = None
    for k, f in enumerate(files):
        t = pq.read_table(f)
        if split is not None:
            t = t.filter(pc.equal(t.column("split"), split))
        if carry is not None:
            t = pa.concat_tables([carry, t])
            carry = None
        if k < len(files) - 1 and t.num_rows:  # the last session may go on in the next shard
            sids = t.column("session_id")
            other = np.flatnonzero(~pc.equal(sids, sids[-1]).to_numpy(zero_copy_only=False))
            cut = int(other[-1]) + 1 if len(other) else 0  # where the last session's trailing rows begin
            t, carry = t.slice(0, cut), t.slice(cut)
        if t.num_rows:
            yield t


def read_sessions(data_dir: str | Path, split: str | None = None) -> pa.Table:
    """The session rows (of one split), read a shard at a time so only the split's rows are kept."""
    parts = list(split_pieces(data_dir, split))
    if not parts:  # the split is empty: its schema, no rows
        return pq.read_table(session_files(data_dir)[0]).slice(0, 0)
    return pa.concat_tables(parts)


def sample_sessions(data_dir: str | Path, splits: tuple[str, ...], n: int, seed: int = 0) -> pa.Table:
    """``n`` session rows drawn without replacement from ``splits`` (the rows of the splits in that order,
    each in shard order; the same rows as drawing from their concatenation), read a shard at a time: one
    pass counts the rows with only the ``split`` column, the second keeps the drawn rows."""
    import numpy as np
    import pyarrow.compute as pc

    files = session_files(data_dir)
    in_split = {}
    for f in files:
        col = pq.read_table(f, columns=["split"]).column("split")
        for sp in splits:
            in_split[(sp, f)] = pc.equal(col, sp)
    sizes = [int(pc.sum(in_split[(sp, f)]).as_py() or 0) for sp in splits for f in files]
    total = sum(sizes)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(total, size=min(n, total), replace=False))
    parts, start, k = [], 0, 0
    for sp in splits:
        for f in files:
            size = sizes[k]
            k += 1
            lo, hi = np.searchsorted(idx, [start, start + size])
            if hi > lo:
                t = pq.read_table(f).filter(in_split[(sp, f)])
                parts.append(t.take(pa.array(idx[lo:hi] - start)))
            start += size
    return pa.concat_tables(parts) if parts else pq.read_table(files[0]).schema.empty_table()


def shortest_closed(data_dir: str | Path, split: str = "train") -> int:
    """The fewest events of a closed, not anomalous window of ``split`` (0 when there is none), read a shard at
    a time and only the columns it needs: what ``detect.short_alarm`` compares new windows with."""
    import pyarrow.compute as pc

    shortest = 0
    for f in session_files(data_dir):
        t = pq.read_table(f, columns=["split", "label", "closed", "tokens"])
        keep = pc.and_(pc.and_(pc.equal(t.column("split"), split), t.column("closed")),
                       pc.not_equal(t.column("label"), 1))
        lengths = pc.list_value_length(t.column("tokens").filter(keep))
        if len(lengths):
            low = int(pc.min(lengths).as_py())
            shortest = low if shortest == 0 else min(shortest, low)
    return shortest


EVENTS_ROW_GROUP = 32_768  # rows per row group of events.parquet: what a lookup reads at a time


class EventRows:
    """Rows of a prepared dataset's ``events.parquet`` by event id (its row number), read one row group at a
    time: only the row groups of the rows asked for are decoded, and at most ``cached_groups`` are kept, so
    a lookup holds a few row groups, never the corpus.  :meth:`prefetch` reads a set of ids in one ordered
    pass and keeps just those rows (what alerting over many sessions asks for)."""

    def __init__(self, data_dir: str | Path, columns: list[str] | None = None, cached_groups: int = 2):
        self.path = Path(data_dir) / "events.parquet"
        self.file = pq.ParquetFile(self.path)
        names = self.file.schema_arrow.names
        self.columns = [c for c in (columns or names) if c in names]
        meta = self.file.metadata
        self.starts = np.concatenate([[0], np.cumsum([meta.row_group(g).num_rows
                                                      for g in range(meta.num_row_groups)])]).astype(np.int64)
        self.n = int(self.starts[-1])
        self.cached_groups = cached_groups
        self._groups: dict[int, dict[str, list]] = {}  # insertion order = least recently read first
        self._rows: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.n

    def _group_of(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"event id {i} outside {self.path} ({self.n} events)")
        return int(np.searchsorted(self.starts, i, side="right")) - 1

    def _group(self, g: int) -> dict[str, list]:
        cols = self._groups.pop(g, None)
        if cols is None:
            t = self.file.read_row_group(g, columns=self.columns)
            cols = {c: t.column(c).to_pylist() for c in self.columns}
            while len(self._groups) >= self.cached_groups:
                self._groups.pop(next(iter(self._groups)))
        self._groups[g] = cols
        return cols

    def row(self, i: int) -> dict:
        i = int(i)
        if i in self._rows:
            return self._rows[i]
        g = self._group_of(i)
        cols, off = self._group(g), i - int(self.starts[g])
        return {c: cols[c][off] for c in self.columns}

    def prefetch(self, ids) -> None:
        """Keep the rows of ``ids`` (read a row group at a time, in order), replacing what was prefetched."""
        ids = sorted({int(i) for i in ids})
        values = event_columns(self, ids, self.columns)
        self._rows = {i: {c: values[c][k] for c in self.columns} for k, i in enumerate(ids)}


def event_columns(source: str | Path | EventRows, ids, columns: list[str]) -> dict[str, list]:
    """``columns`` of the events ``ids`` (any order, repeats allowed) of a prepared folder (or an open
    :class:`EventRows`), as lists in the order of ``ids``: one pass over the row groups that hold them, each
    decoded once and only its asked rows kept."""
    rows = source if isinstance(source, EventRows) else EventRows(source, columns)
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise ValueError(f"{rows.path} has no column {missing[0]!r}")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    out = {c: [None] * len(ids) for c in columns}
    if not len(ids):
        return out
    if ids.min() < 0 or ids.max() >= rows.n:
        bad = int(ids[(ids < 0) | (ids >= rows.n)][0])
        raise IndexError(f"event id {bad} outside {rows.path} ({rows.n} events)")
    order = np.argsort(ids, kind="stable")
    groups = np.searchsorted(rows.starts, ids[order], side="right") - 1
    bounds = np.flatnonzero(np.diff(groups)) + 1
    for part in np.split(np.arange(len(order)), bounds):
        g = int(groups[part[0]])
        t = rows.file.read_row_group(g, columns=columns)
        picked = t.take(pa.array(ids[order[part]] - rows.starts[g]))
        for c in columns:
            for pos, v in zip(order[part], picked.column(c).to_pylist()):
                out[c][pos] = v
    return out
