"""Prepare out of core: raw lines -> events -> sessions -> shards, in bounded memory and in parallel.

Stages, each a function of its own inputs so the local backend runs them in a loop and ``backend=ray`` runs
the same functions as Ray tasks (any node, any number of workers; the outputs do not depend on either):

1. **read** (one task per input file, or per byte range of ``ray.lines_per_task`` lines on Ray): every line
   read, masked and given its session keys, written as it is read: the events, in input order, to
   ``events/t<task>.parquet`` in bounded row groups, and one row per (event, session key) to hash partition
   ``spill/p<p>/t<task>.parquet`` (``data.spill_partitions`` partitions, by a stable hash of the key).
   Rejected lines go to ``rejected/t<task>.jsonl``.  Lines are parsed one by one into a batch of columns;
   a batch (``ROW_GROUP`` events) becomes one Arrow table, written as a row group, and its spill rows and
   session summary are cut from that table by Arrow and numpy, not built row by row in Python.  What stays
   in memory is that batch and a per-session summary (first and last time, event and label counts), the
   small table splits are decided from.
2. **split** (driver): labels and train/val/test from the per-session table alone.
3. **count** (one task per partition): the partition's sessions, cut into chunks as detection cuts them;
   returns the distinct training messages with their counts (and the training flows, for the flow codec).
4. **mine** (driver): templates from the distinct training messages in a canonical order (most frequent
   first, then by text), so template ids do not depend on how the input was divided among tasks.
5. **write** (one task per partition): token shards ``sessions/shard-<p>-<k>.parquet``; then the driver
   writes ``events.parquet`` from the event files in input order, with each event's template.

Memory is a task's buffers, one partition's events (at most ``MAX_UNIT_ROWS``: a bigger partition is read in
parts; ``data.spill_partitions`` grows with the inputs unless set) and the per-session table; never the
corpus.  On a multi-node cluster the prepared folder
(``paths.root``) must be on storage every node mounts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loglm.ingest.readers import LineAccount, Rejection, reads_flows
from loglm.ingest.sessions import event_label, is_closed, session_keys

ROW_GROUP = 32_768  # rows buffered before a write
SPILL_GROUP_ROWS = 16_384  # spill rows of one partition written together, as one row group
SPILL_BUFFER_ROWS = 8 * 32_768  # spill rows one read task holds back, all partitions together
STATS_MERGE_ROWS = 1 << 18  # a read task's per-batch session summaries are merged past this many rows
TASK_BITS = 40  # an event's position while tasks run: task << TASK_BITS | index in task (input order)

EVENT_SCHEMA = pa.schema([("source", pa.string()), ("line_no", pa.int64()), ("ts", pa.float64()),
                          ("masked", pa.string()), ("raw", pa.string()), ("entities", pa.string()),
                          ("label", pa.string()), ("fields", pa.string()), ("keys", pa.list_(pa.string()))])
SPILL_SCHEMA = pa.schema([("key", pa.string()), ("pos", pa.int64()), ("ts", pa.float64()),
                          ("masked", pa.string()), ("label", pa.string()), ("fields", pa.string())])


def _json_encoder():
    """``json.dumps(x, sort_keys=True)`` of plain data (no cycles): JSONEncoder.encode builds its C encoder on
    every call (2.5 µs of a line's 46); this one is built once."""
    from json.encoder import c_make_encoder, encode_basestring_ascii

    base = json.JSONEncoder(sort_keys=True)
    if c_make_encoder is None:  # an interpreter without the C accelerator
        return base.encode
    enc = c_make_encoder(None, base.default, encode_basestring_ascii, None, base.key_separator,
                         base.item_separator, True, False, True)

    def encode(obj) -> str:
        return "".join(enc(obj, 0)) if isinstance(obj, (dict, list, tuple)) else base.encode(obj)

    return encode


_JSON = _json_encoder()
STATS_NAMES = ("first_ts", "first_pos", "last_ts", "n", "n_anom", "n_unk", "n_none", "part")


def _system_allocator() -> None:
    """Prepare's local worker processes use the system allocator for Arrow (``ARROW_DEFAULT_MEMORY_POOL``,
    read when pyarrow loads; ``pipelines.prepare`` sets it for the driver too; a value already set wins):
    Arrow's default jemalloc kept about 100 MB more resident at 4M lines (driver peak 351 vs 250 MB), at the
    same speed."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def release_free_memory() -> None:
    """Hand the pages freed so far back to the system (glibc's ``malloc_trim``; nothing where the C library
    has none).  Prepare's per-session tables are freed when it returns, but glibc kept their pages, so
    batch detection and a transfer evaluation, which score in the same process afterwards, started from
    prepare's peak: 16M lines, 596 MB kept after prepare, 470 MB trimmed (whole detection 991 -> 751 MB with
    the report's compact session view, ``loglm.report.SessionView``)."""
    import ctypes
    import gc

    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)


def partition_of(key: str, n: int) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % n


class _Writer:
    """A Parquet file written a row group at a time, opened on the first one."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Spill:
    """Rows per (event, session key) into the hash partitions, and the per-session summary, a batch of events
    at a time: the rows are cut from the batch's Arrow columns (no Python object per row) and the summary of
    a batch is reduced per key by :func:`merge_stats`, which also merges the tasks' summaries.

    A partition's rows wait until it has SPILL_GROUP_ROWS of them, or until the task holds SPILL_BUFFER_ROWS
    in all (then the fullest partition goes), and are written as one row group: with 64 partitions a batch
    gives each about 500 rows, and a row group per batch and partition made the read stage 1.4x slower."""

    def __init__(self, work: Path, task: int, n_parts: int, data):
        self.work, self.task, self.n_parts = work, task, n_parts
        self.parts: dict[int, _Writer] = {}
        self.pending: dict[int, list[pa.Table]] = {}
        self.pending_rows: dict[int, int] = {}
        self.buffered = 0
        self.stats: list[pa.Table] = []
        self.stat_rows = 0
        self.merge_at = STATS_MERGE_ROWS
        self.normal, self.unknown = set(data.normal_labels), set(data.unknown_labels)

    def add(self, keys: pa.Array, first: int, events: pa.Table) -> None:
        """``keys``: the session keys of each event of ``events`` (a list per event, or one string per event);
        ``first``: the task-local position of the batch's first event."""
        if isinstance(keys.type, pa.ListType):
            flat, parent = pc.list_flatten(keys), pc.list_parent_indices(keys)
        else:
            flat, parent = keys, pa.array(np.arange(len(keys), dtype=np.int64))
        if not len(flat):
            return
        parent_np = parent.to_numpy(zero_copy_only=False).astype(np.int64)
        rows = pa.table({"key": flat, "pos": pa.array((self.task << TASK_BITS) | (first + parent_np)),
                         **{n: events.column(n).take(parent) for n in ("ts", "masked", "label", "fields")}},
                        schema=SPILL_SCHEMA)
        coded = pc.dictionary_encode(flat)
        key_no = coded.indices.to_numpy(zero_copy_only=False)
        part_of = np.array([partition_of(k, self.n_parts) for k in coded.dictionary.to_pylist()], np.int64)
        part = part_of[key_no]
        order = np.argsort(part, kind="stable")  # input order inside each partition
        sorted_part = part[order]
        bounds = np.flatnonzero(np.r_[True, sorted_part[1:] != sorted_part[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            p = int(sorted_part[a])
            self.pending.setdefault(p, []).append(rows.take(pa.array(order[a:b])))  # its own buffers
            self.pending_rows[p] = self.pending_rows.get(p, 0) + int(b - a)
            self.buffered += int(b - a)
            if self.pending_rows[p] >= SPILL_GROUP_ROWS:
                self._write(p)
        while self.buffered > SPILL_BUFFER_ROWS:  # bounded: the fullest partition goes first
            self._write(max(self.pending_rows, key=self.pending_rows.get))
        self._summarise(key_no, part_of, rows)

    def _write(self, p: int) -> None:
        """Partition ``p``'s waiting rows as one row group of its spill file (input order kept)."""
        writer = self.parts.get(p)
        if writer is None:
            writer = self.parts[p] = _Writer(self.work / "spill" / f"p{p:04d}" / f"t{self.task:06d}.parquet",
                                             SPILL_SCHEMA)
        writer.write(pa.concat_tables(self.pending.pop(p)))
        self.buffered -= self.pending_rows.pop(p)

    def _summarise(self, key_no: np.ndarray, part_of: np.ndarray, rows: pa.Table) -> None:
        """The batch's per-session summary, one row per key (:func:`merge_stats` of its rows), kept with the
        task's earlier ones and merged with them once they grow."""
        label = rows.column("label").combine_chunks()
        none = label.is_null().to_numpy(zero_copy_only=False)
        coded = pc.dictionary_encode(label)
        lab_of = np.array([event_label(v, self.normal, self.unknown) for v in coded.dictionary.to_pylist()] or [0],
                          np.int64)
        lab = np.where(none, -1, lab_of[coded.indices.fill_null(0).to_numpy(zero_copy_only=False)])
        ts, pos = rows.column("ts").to_numpy(), rows.column("pos").to_numpy()
        self.stats.append(merge_stats([pa.table({
            "key": rows.column("key"), "first_ts": ts, "first_pos": pos, "last_ts": ts, "n": np.ones(len(ts), np.int64),
            "n_anom": (lab == 1).astype(np.int64), "n_unk": (lab == -1).astype(np.int64),
            "n_none": none.astype(np.int64), "part": part_of[key_no]})]))
        self.stat_rows += self.stats[-1].num_rows
        if self.stat_rows > self.merge_at:  # one row per key after a merge; merged less often as keys grow
            self.stats = [merge_stats(self.stats)]
            self.stat_rows = self.stats[0].num_rows
            self.merge_at = max(STATS_MERGE_ROWS, 2 * self.stat_rows)

    def close(self) -> pa.Table:
        for p in sorted(self.pending):
            self._write(p)
        for part in self.parts.values():
            part.close()
        return merge_stats(self.stats)


def _items(task: dict, data, account: LineAccount, mask: bool):
    """Records and rejections of one read task, accounted (the local reader, or a byte range of a file).

    A reader with line plans (``event_of``: raw text lines) yields an accepted line as the tuple
    ``(source, line_no, ts, raw, label, masked, entities)`` where it can, a Record where it cannot."""
    from loglm.ingest.distributed import _lines
    from loglm.ingest.readers import (
        event_parser,
        join_continuations,
        make_reader,
        parse_line_safely,
        read_lines,
        record_starts,
        tally,
        unreadable,
    )

    source = task["path"]
    reader = make_reader(data, source)
    fast = event_parser(reader, mask) if task["kind"] == "lines" else None
    parse = fast or reader.parse_line
    starts = record_starts(reader)

    if task["end"] < 0 or task["kind"] == "parquet":
        if fast is not None:
            yield from read_lines(parse, Path(source), account, reader.max_line_bytes, starts)
        else:
            yield from reader.read(Path(source), account)
        return
    if task["prime"]:  # headers from the top of the file set how this range is read
        with open(source, "rb") as fh:
            for n in range(1, task["prime"] + 1):
                parse_line_safely(reader.parse_line, fh.readline(), source, n)

    def lines():
        pairs = _lines(task, data.max_line_bytes)  # a range starts at a record (iter_tasks cuts there)
        records = join_continuations(pairs, starts, data.max_line_bytes) if starts else ((n, r, 0) for n, r in pairs)
        for n, raw, extra in records:
            account.read += 1 + extra
            account.continued += extra
            item = unreadable(source, n - 1, raw) if isinstance(raw, BaseException) else \
                parse_line_safely(parse, raw, source, n)
            if item is None:
                account.metadata += 1
            else:
                yield item

    yield from tally(lines(), account)


def read_task(task: dict, data_dict: dict, mask: bool, work: str, n_parts: int) -> dict:
    """Stage 1 for one task: events and spill rows written as lines are read; returns the accounting and
    the per-session summary."""
    from loglm.config import data_config_from_dict
    from loglm.ingest.prepare import event_parts

    data = data_config_from_dict(data_dict)
    work_dir, no = Path(work), task["no"]
    account = LineAccount()
    events = _Writer(work_dir / "events" / f"t{no:06d}.parquet", EVENT_SCHEMA)
    spill = _Spill(work_dir, no, n_parts, data)
    by = data.session.by
    no_key = f"no {data.session.entity_type} in line: cannot assign a session"
    rej_path = work_dir / "rejected" / f"t{no:06d}.jsonl"
    rej_path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    from loglm.progress import Progress

    progress = Progress("reading", every_s=None)
    progress.detail = f"file {task['file_no']}/{task['files']} {Path(task['path']).name}"
    # a batch of events as columns (EVENT_SCHEMA's order), written as one row group with its spill rows
    batch: list[list] = [[] for _ in EVENT_SCHEMA]
    add_source, add_line, add_ts, add_masked, add_raw, add_ents, add_label, add_fields, add_keys = (c.append for c in batch)
    repeated: dict[int, list[str]] = {}  # events naming one session key twice: spilled once per key

    def flush() -> None:
        table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(batch, EVENT_SCHEMA)],
                                     schema=EVENT_SCHEMA)
        events.write(table)
        if by != "count":  # count windows are numbered once every task is read (spill_counted)
            keys = table.column("keys").combine_chunks()
            if repeated:
                keys = pa.array([repeated.get(i, k) for i, k in enumerate(batch[-1])], pa.list_(pa.string()))
            spill.add(keys, n - table.num_rows, table)
        for c in batch:
            c.clear()
        repeated.clear()

    with open(rej_path, "w") as rej:
        for item in _items(task, data, account, mask):
            progress.tick()
            if type(item) is tuple:  # a raw text line through its reader's fast path
                source, line_no, ts, raw, label, masked, ents = item
                fields = None
            elif isinstance(item, Rejection):
                rej.write(json.dumps({"file": item.source, "line": item.line_no, "reason": item.reason}) + "\n")
                continue
            else:
                source, line_no, ts, raw, label = item.source, item.line_no, item.ts, item.raw, item.label
                masked, ents = event_parts(item, mask)
                fields = None if item.fields is None else _JSON(item.fields)
            if by == "event":
                keys = [f"{source}:{line_no}"]
            elif by == "count":
                keys = []  # numbered once every task's event count is known (spill_counted)
            else:
                keys = session_keys(ents, ts, data.session)
                if not keys:  # a line without a session key is rejected, never silently dropped
                    account.accepted -= 1
                    account.reject(no_key)
                    rej.write(json.dumps({"file": source, "line": line_no, "reason": no_key}) + "\n")
                    continue
                if len(keys) > 1 and len(set(keys)) < len(keys):
                    repeated[len(batch[0])] = list(dict.fromkeys(keys))
            add_source(source)
            add_line(line_no)
            add_ts(ts)
            add_masked(masked or "")
            add_raw(raw)
            add_ents(_JSON(ents))
            add_label(label)
            add_fields(fields)
            add_keys(keys)
            n += 1
            if len(batch[0]) >= ROW_GROUP:
                flush()
        if batch[0]:
            flush()
    events.close()
    stats = spill.close()
    return {"task": no, "events": n, "account": account.as_dict(), "stats": stats, "node": _node(),
            "peak_rss_mb": _peak_mb()}


def spill_counted(task_no: int, offset: int, data_dict: dict, work: str, n_parts: int) -> dict:
    """``session.by=count``: windows of ``window_events`` consecutive events in input order, numbered by
    each event's global position (known once every task has been read)."""
    from loglm.config import data_config_from_dict

    data = data_config_from_dict(data_dict)
    spill = _Spill(Path(work), task_no, n_parts, data)
    path = Path(work) / "events" / f"t{task_no:06d}.parquet"
    i = 0
    if path.exists():
        pf = pq.ParquetFile(path)
        size = data.session.window_events
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=["ts", "masked", "label", "fields"])
            window = (offset + i + np.arange(t.num_rows)) // size
            keys = pa.array([f"w{w:08d}" for w in window.tolist()], pa.string())
            spill.add(keys, i, t)
            i += t.num_rows
    return {"task": task_no, "stats": spill.close(), "node": _node()}


def _node() -> str:
    import sys

    ray = sys.modules.get("ray")  # imported only where Ray runs the task
    try:
        if ray is not None and ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a node name is informative only
        pass
    return "local"


# -------------------------------------------------------------------------------------------- stage 2: split

def merge_stats(tables: list[pa.Table]) -> pa.Table:
    """One row per session key from the tasks' summaries (a session may span tasks), sorted by key (a
    canonical order, whatever the tasks were): one sort, then numpy reductions over each key's rows (an Arrow
    group_by held about 1.5 KB a row at its peak)."""
    if not sum(t.num_rows for t in tables):
        return pa.table({"key": pa.array([], pa.string()), **{n: pa.array([], pa.float64() if n.endswith("_ts")
                                                                           else pa.int64()) for n in STATS_NAMES}})
    # chunked, not combined: sorted over the tables' own buffers (a combined copy: 9 MB more at the split
    # stage of 4M lines, 194k sessions)
    t = pa.concat_tables(tables)
    order = pc.sort_indices(t, sort_keys=[("key", "ascending"), ("first_ts", "ascending"), ("first_pos", "ascending")])
    keys = pa.concat_arrays(t.column("key").take(order).chunks)
    starts = np.flatnonzero(np.r_[True, pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)])
    order = order.to_numpy()

    def col(name):
        return t.column(name).to_numpy()[order]

    out = {"key": keys.take(pa.array(starts)), "first_ts": col("first_ts")[starts], "first_pos": col("first_pos")[starts],
           "last_ts": np.maximum.reduceat(col("last_ts"), starts)}
    for name in ("n", "n_anom", "n_unk", "n_none"):
        out[name] = np.add.reduceat(col(name), starts)
    out["part"] = col("part")[starts]
    return pa.table(out)


def to_global(pos: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Task-local positions -> event ids (row numbers of events.parquet)."""
    pos = np.asarray(pos, np.int64)
    return offsets[pos >> TASK_BITS] + (pos & ((1 << TASK_BITS) - 1))


def session_labels(stats: pa.Table, data, anomalous: set[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """(label per session: 1, 0, -1 unknown; partly-unknown flag) with the rules of
    :func:`loglm.ingest.sessions.label_sessions`."""
    n, anom = stats.column("n").to_numpy(), stats.column("n_anom").to_numpy()
    unk, none = stats.column("n_unk").to_numpy(), stats.column("n_none").to_numpy()
    if anomalous is not None:
        entity = stats.column("key")
        if data.session.by == "entity_window":
            entity = pc.list_element(pc.split_pattern(entity, "@", max_splits=1), 0)
        bad = pc.is_in(entity, value_set=pa.array(sorted(anomalous), pa.string())).to_numpy(zero_copy_only=False)
        return bad.astype(np.int8), np.zeros(len(bad), bool)
    label = np.where(none == n, -1, np.where(anom > 0, 1, np.where(unk > 0, -1, 0))).astype(np.int8)
    return label, (unk > 0) & (none < n)


def event_ranks(first_ts: np.ndarray, first_id: np.ndarray, work: Path, tasks: list[int], offsets: np.ndarray,
                before: float | None) -> tuple[np.ndarray, int]:
    """Each session's first event's position among all events in time order (ties by event id), and the
    number of events ranked; with ``before`` only events earlier than it count.  One pass over the events'
    times, a task at a time."""
    rank = np.zeros(len(first_ts), np.int64)
    total = 0
    for no in tasks:
        path = work / "events" / f"t{no:06d}.parquet"
        if not path.exists():
            continue
        ts = pq.read_table(path, columns=["ts"]).column("ts").to_numpy()
        ids = offsets[no] + np.arange(len(ts), dtype=np.int64)
        if before is not None:
            keep = ts < before
            ts, ids = ts[keep], ids[keep]
        order = np.lexsort((ids, ts))
        ts_s, id_s = ts[order], ids[order]
        lo = np.searchsorted(ts_s, first_ts, "left")
        hi = np.searchsorted(ts_s, first_ts, "right")
        # among events of the same time, those with a smaller id come first
        tie = np.zeros(len(first_ts), np.int64)
        for j in np.nonzero(hi > lo)[0]:
            tie[j] = np.searchsorted(id_s[lo[j]:hi[j]], first_id[j], "left")
        rank += lo + tie
        total += len(ts)
    return rank, total


def assign_splits(stats: pa.Table, data, rank_events, inputs: np.ndarray | None = None) -> np.ndarray:
    """The split of every session from its summary alone (the rules of
    :func:`loglm.ingest.sessions.assign_splits`; ``chronological_events`` with ``test_from`` ranks the
    events before the cut).  ``rank_events(before, mask, input)`` ranks the first events of the sessions
    ``mask`` selects among the events of ``input`` (all inputs: None); ``inputs``: each session's input
    number, needed by ``data.split.per_input``."""
    if data.split.per_input:
        split = np.full(stats.num_rows, "", object)
        for g in np.unique(inputs):
            mask = inputs == g
            split[mask] = _splits(stats.filter(pa.array(mask)), data,
                                  lambda before, mask=mask, g=g: rank_events(before, mask, int(g)))
        return split
    return _splits(stats, data, lambda before: rank_events(before, None, None))


def _splits(stats: pa.Table, data, rank_events) -> np.ndarray:
    import hashlib

    from loglm.ingest.sessions import test_cut

    cfg = data.split
    n = stats.num_rows
    first = stats.column("first_ts").to_numpy()
    last = stats.column("last_ts").to_numpy()
    split = np.full(n, "", object)
    cut = test_cut(cfg)
    within = np.ones(n, bool) if cut is None else first < cut
    split[~within] = "test"
    idx = np.nonzero(within)[0]
    if cfg.method == "chronological":  # by first time, ties by key (the table is sorted by key)
        order = idx[np.argsort(first[idx], kind="stable")]
        rank = np.empty(n)
        rank[order] = np.arange(len(order)) / max(1, len(order))
    elif cfg.method == "chronological_events":
        r, total = rank_events(cut)
        rank = r / max(1, total)
    elif cfg.method == "chronological_time":
        t0 = first[idx].min() if len(idx) else 0.0
        t1 = last[idx].max() if len(idx) else t0
        rank = (first - t0) / max(t1 - t0, 1e-9)
    elif cfg.method == "seeded":
        rank = np.array([int(hashlib.sha256(f"{cfg.seed}:{k}".encode()).hexdigest()[:12], 16) / 16**12
                         for k in stats.column("key").to_pylist()])
    else:
        raise ValueError("data.split.method must be 'chronological', 'chronological_events', "
                         f"'chronological_time' or 'seeded', got {cfg.method!r}")
    r = rank[idx]
    split[idx] = np.where(r < cfg.train_frac, "train", np.where(r < cfg.train_frac + cfg.val_frac, "val", "test"))
    return split


# --------------------------------------------------------------------------------- stages 3 and 5: partitions

def _partition(work: Path, p: int, offsets: np.ndarray, keys=None) -> pa.Table | None:
    """The spilled rows of partition ``p`` (only those of ``keys`` when given: a part of a big partition),
    sorted by session key, time and event id."""
    files = sorted((work / "spill" / f"p{p:04d}").glob("t*.parquet"))
    wanted = keys
    parts = []
    for f in files:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            rg = pf.read_row_group(g)
            parts.append(rg if wanted is None else rg.filter(pc.is_in(rg.column("key"), value_set=wanted)))
    if not parts:
        return None
    t = pa.concat_tables(parts)
    if not t.num_rows:
        return None
    t = t.set_column(t.schema.get_field_index("pos"), "pos", pa.array(to_global(t.column("pos").to_numpy(), offsets)))
    return t.sort_by([("key", "ascending"), ("ts", "ascending"), ("pos", "ascending")])


def _sessions(t: pa.Table, info: dict, data, input_end: float, tally: dict | None = None):
    """(key, chunk, closed, split, label, rows) of a sorted partition, cut as sessionize cuts; unlabelled
    events of mixed training sessions skipped (the Background rule), counted in ``tally["skipped"]``."""
    cfg = data.session
    keys = t.column("key").to_pylist()
    ts = t.column("ts").to_numpy()
    labels = t.column("label").to_pylist()
    unknown = set(data.unknown_labels)
    tally = {} if tally is None else tally
    start = 0
    n = len(keys)
    while start < n:
        end = start + 1
        while end < n and keys[end] == keys[start]:
            end += 1
        key = keys[start]
        split, label, mixed = info[key]
        rows = np.arange(start, end)
        if split == "train" and mixed and label != 1:
            keep = np.array([labels[i] is not None and labels[i] not in unknown for i in rows], bool)
            tally["skipped"] = tally.get("skipped", 0) + int((~keep).sum())
            rows = rows[keep]
            if len(rows):
                label = 0
            else:
                split, rows = "train_heldout_unlabelled", np.arange(start, end)
        closed = is_closed(cfg, ts[start], ts[end - 1], input_end)
        for c in range(0, len(rows), cfg.max_events):
            yield key, c // cfg.max_events, closed and c + cfg.max_events >= len(rows), split, label, rows[c:c + cfg.max_events]
        start = end


CLOCKS = (3600.0, 60.0, 1.0, 0.001)  # seconds: the clocks a split's timestamps are checked against


def on_clocks(ts: np.ndarray) -> list[bool]:
    """For each of :data:`CLOCKS`, whether every timestamp is a whole multiple of it (to a microsecond)."""
    ts = np.asarray(ts, np.float64)
    return [bool(np.all(np.abs(ts - np.round(ts / c) * c) <= 1e-6)) for c in CLOCKS]


def clock_of(flags: list[bool]) -> float:
    """The coarsest of :data:`CLOCKS` that every timestamp sits on (0.0: finer than a millisecond)."""
    return next((c for c, ok in zip(CLOCKS, flags) if ok), 0.0)


def clock_warning(clock_by_split: dict[str, float], resolution_s: float) -> str | None:
    """A warning when some split's timestamps are coarser than training's and the vocabulary's clock
    (``tokenizer.time_resolution_s``) does not cover it: the model would read that split's time gaps as new."""
    train = clock_by_split.get("train")
    if train is None:
        return None
    coarse = {s: c for s, c in clock_by_split.items() if s != "train" and c > max(train, resolution_s)}
    if not coarse:
        return None
    worst = max(coarse.values())
    where = ", ".join(f"{s} on {c:g} s" for s, c in sorted(coarse.items()))
    fine = f"{train:g} s" if train else "sub-millisecond"
    return (f"training timestamps sit on a {fine} clock but {where}: time gaps will read differently "
            f"there (many zero gaps the model rarely trained on); set tokenizer.time_resolution_s={worst:g} "
            "to measure every gap on the coarser clock")


def count_partition(unit: tuple[int, int, int], work: str, offsets: np.ndarray, info: pa.Table, data_dict: dict,
                    input_end: float) -> dict:
    """Stage 3: the distinct training messages (and flows) with counts, session counts and pauses of one
    work unit (a partition, or a part of a big one: ``unit`` = (partition, part, parts))."""
    from loglm.config import data_config_from_dict
    from loglm.ingest.flows import TrainingFlows

    data = data_config_from_dict(data_dict)
    p = unit[0]
    t = _partition(Path(work), p, offsets, None if unit[2] == 1 else info.column("key"))
    info = _info(info)
    out = {"p": p, "texts": Counter(), "flows": TrainingFlows(data.local_networks), "pauses": [], "skipped": 0,
           "by_split": Counter(), "clock": {},
           "labels": Counter(), "session_rows": 0, "sessions_split": 0, "node": _node(), "peak_rss_mb": 0.0}
    if t is None:
        return out
    ts = t.column("ts").to_numpy()
    fields = t.column("fields").to_pylist() if reads_flows(data) else None
    masked = t.column("masked").to_pylist() if fields is not None else None
    text_rows: list[np.ndarray] = []  # without flows: the training rows, their texts counted in one pass
    longest: dict[str, float] = {}
    tally: dict = {}
    split_rows: dict[str, list[np.ndarray]] = {}
    for item in _sessions(t, info, data, input_end, tally):
        key, chunk, _, split, label, rows = item
        split_rows.setdefault(split, []).append(rows)
        out["session_rows"] += 1
        out["sessions_split"] += chunk == 1
        if chunk == 0:
            out["by_split"][split] += 1
            out["labels"][f"{split}/{label}"] += 1
        if split != "train":
            continue
        if fields is None:
            text_rows.append(rows)
        else:
            for i in rows:  # flows (fields) go to the flow codec, log lines (masked text) to the miner
                if fields[i] is not None:
                    out["flows"].add(json.loads(fields[i]))
                else:
                    out["texts"][masked[i]] += 1
        if len(rows) > 1:
            longest[key] = max(longest.get(key, 0.0), float(np.diff(ts[rows]).max()))
    if text_rows:
        counts = pc.value_counts(t.column("masked").take(pa.array(np.concatenate(text_rows))))
        out["texts"].update(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))
    out["clock"] = {split: on_clocks(ts[np.concatenate(r)]) for split, r in split_rows.items()}
    out["skipped"] = tally.get("skipped", 0)
    out["pauses"] = list(longest.values())
    out["peak_rss_mb"] = _peak_mb()
    return out


class _Templates:
    """masked message -> template id: a training message's id from mining, any other matched (-1: none)."""

    def __init__(self, vocab, train_ids: dict[str, int]):
        self.vocab, self.ids = vocab, dict(train_ids)

    def __call__(self, masked: str) -> int:
        tid = self.ids.get(masked)
        if tid is None:
            found = self.vocab.miner.match(masked)
            tid = self.ids[masked] = -1 if found is None else found
        return tid

    def flow(self, fields: str | None) -> dict | None:
        """An event's canonical flow fields (its ``fields`` JSON), parsed only where the vocabulary reads flows."""
        return json.loads(fields) if fields is not None and self.vocab.flow_codec is not None else None

    def text(self, masked: str, flow: dict | None) -> str:
        return self.vocab.flow_codec.sentence(flow) if flow is not None else masked


def write_partition(unit: tuple[int, int, int], work: str, out: str, offsets: np.ndarray, info: pa.Table,
                    data_dict: dict, input_end: float, vocab_dict: dict, train_ids: dict[str, int]) -> dict:
    """Stage 5: one work unit's sessions as token shards (rows of loglm.shards.SESSION_SCHEMA)."""
    from loglm.config import data_config_from_dict
    from loglm.shards import SESSION_SCHEMA
    from loglm.vocab import Vocabulary, gap_bucket

    data = data_config_from_dict(data_dict)
    vocab = Vocabulary.from_dict(vocab_dict)
    templates = _Templates(vocab, train_ids)
    p, part = unit[0], unit[1]
    t = _partition(Path(work), p, offsets, None if unit[2] == 1 else info.column("key"))
    info = _info(info)
    paths: list[str] = []
    if t is None:
        return {"p": p, "shards": paths, "node": _node()}
    ts, pos = t.column("ts").to_numpy(), t.column("pos").to_numpy()
    fields = t.column("fields").to_pylist()
    if vocab.flow_codec is None:  # a log line's token follows from its masked text: once per distinct text
        def token(masked_text: str) -> int:
            tid = templates(masked_text)
            return vocab.token(tid if tid >= 0 else None)

        token_of_row = _per_text(t.column("masked"), token)
        masked = None
    else:
        masked = t.column("masked").to_pylist()
    # each row's gap bucket after the row before it in the partition (used where a session's rows follow
    # each other): computed once per distinct gap, as gaps repeat (clock resolution)
    clock = vocab.clock(ts)
    distinct_gaps, gap_no = np.unique(np.diff(clock, prepend=clock[:1]), return_inverse=True)
    bucket_of_gap = np.array([gap_bucket(float(g), vocab.gap_buckets) for g in distinct_gaps], np.int64)[gap_no]
    entity_type = {"entity": data.session.entity_type, "entity_window": data.session.entity_type,
                   "event": "event", "count": "window"}.get(data.session.by, "window")
    cols: dict[str, list] = {name: [] for name in SESSION_SCHEMA.names}

    def flush():
        if cols["session_id"]:
            path = Path(out) / "sessions" / f"shard-{p:05d}-{part:03d}-{len(paths):04d}.parquet"
            pq.write_table(pa.Table.from_pydict(cols, schema=SESSION_SCHEMA), path, compression="zstd")
            paths.append(str(path))
            for c in cols.values():
                c.clear()

    for item in _sessions(t, info, data, input_end):
        key, chunk, closed, split, label, rows = item
        tss = ts[rows]
        cols["session_id"].append(key)
        cols["chunk"].append(chunk)
        cols["entity_type"].append(entity_type)
        cols["entity"].append(key.split("@", 1)[0] if data.session.by == "entity_window" else key)
        cols["start_ts"].append(float(tss[0]))
        cols["end_ts"].append(float(tss[-1]))
        cols["split"].append(split)
        cols["label"].append(int(label))
        cols["closed"].append(bool(closed))
        if masked is None:
            flows = []
            cols["tokens"].append(token_of_row[rows].tolist())
        else:
            flows = [templates.flow(fields[i]) for i in rows]  # parsed once for the tokens and the facets
            cols["tokens"].append([vocab.token(tid if tid >= 0 else None)
                                   for tid in (templates(templates.text(masked[i], f)) for i, f in zip(rows, flows))])
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # consecutive rows: each after the one before
            cols["gaps"].append([0] + bucket_of_gap[rows[1:]].tolist())
        else:  # events skipped between them (the Background rule)
            cols["gaps"].append(vocab.gaps(tss))
        cols["event_idx"].append(pos[rows].tolist())
        cols["facets"].append(vocab.facets(flows) if vocab.n_facets else [])
        if len(cols["session_id"]) >= data.shard_rows:
            flush()
    flush()
    return {"p": p, "shards": paths, "node": _node(), "peak_rss_mb": _peak_mb()}


# ------------------------------------------------------------------------------------------------ the driver

MAX_UNIT_ROWS = 400_000  # spilled rows one task holds at a time: a bigger partition is read in parts
# backend=local: inputs smaller than this are read in one process (starting workers would cost more)
LOCAL_SPLIT_BYTES = 32 << 20
# data.spill_partitions=null: 16 partitions, doubled while the inputs' estimated lines exceed MAX_UNIT_ROWS a
# partition, up to MAX_AUTO_PARTITIONS (a read task keeps a writer and a buffer per partition)
MIN_AUTO_PARTITIONS, MAX_AUTO_PARTITIONS = 16, 256
BYTES_PER_LINE = 128  # estimate of a raw line's size (a compressed file: 8x its size in raw bytes)


def spill_partitions(data, paths: list[Path]) -> int:
    """``data.spill_partitions``, or when null the count for the inputs' estimated lines (their sizes; a
    Parquet file's row count): partitions small enough to be read whole (a partition over MAX_UNIT_ROWS is
    read once per part: 16 partitions of a 16M-line corpus cost 3 reads each), not so many that the read
    tasks write tiny row groups.  The same inputs give the same count on every backend and worker count."""
    if data.spill_partitions is not None:
        return data.spill_partitions
    lines = 0
    for p in paths:
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            lines += pq.ParquetFile(p).metadata.num_rows
        else:
            lines += p.stat().st_size * (8 if p.suffix == ".gz" else 1) // BYTES_PER_LINE
    n = MIN_AUTO_PARTITIONS
    while n < MAX_AUTO_PARTITIONS and lines > n * MAX_UNIT_ROWS:
        n *= 2
    return n


def work_units(info: pa.Table, n_parts: int) -> list[tuple[tuple[int, int, int], pa.Table]]:
    """((partition, part, parts), its sessions' split/label/mixed rows) for stages 3 and 5: a partition of
    more than MAX_UNIT_ROWS spilled rows is cut into parts by session key (each part reads the partition's
    files and keeps its own keys)."""
    units = []
    part = info.column("part").to_numpy()
    for p in range(n_parts):
        rows = info.filter(pa.array(part == p))  # sorted by key, as the whole table
        if not rows.num_rows:
            continue
        k = max(1, -(-int(pc.sum(rows.column("n")).as_py()) // MAX_UNIT_ROWS))
        for j in range(k):
            lo, hi = j * rows.num_rows // k, (j + 1) * rows.num_rows // k
            units.append(((p, j, k), rows.slice(lo, hi - lo).select(["key", "split", "label", "mixed"])))
    return units


def _info(rows: pa.Table) -> dict[str, tuple[str, int, bool]]:
    """A work unit's sessions as key -> (split, label, mixed): only this unit's, in the task that runs it."""
    return dict(zip(rows.column("key").to_pylist(), zip(rows.column("split").to_pylist(),
                                                         rows.column("label").to_pylist(), rows.column("mixed").to_pylist())))


def mine(texts: Counter, miner) -> dict[str, int]:
    """Templates from distinct training messages, most frequent first then by text: the same ids whatever
    order the tasks read the lines in.  Returns each message's template id."""
    ids = {}
    for text, count in sorted(texts.items(), key=lambda kv: (-kv[1], kv[0])):
        tid = miner.add(text)
        miner.templates[tid].count += count - 1
        ids[text] = tid
    return ids


def _events_schema(flows: bool, text: bool = False) -> pa.Schema:
    """events.parquet's columns; ``text``: also each event's matched text (``masked``: its masked message or
    flow sentence), which alerts show for an event the vocabulary never saw (batch detection keeps it)."""
    return pa.schema([("source", pa.string()), ("line_no", pa.int64()), ("ts", pa.float64()),
                      ("template", pa.int64()), ("raw", pa.string()), ("entities", pa.string()),
                      ("label", pa.string())] + ([("fields", pa.string())] if flows else [])
                     + ([("masked", pa.string())] if text else []))


TEMPLATE_SCHEMA = pa.schema([("template", pa.int64())])
TEXT_SCHEMA = pa.schema([("template", pa.int64()), ("masked", pa.string())])


def _per_text(texts, fn) -> np.ndarray:
    """``fn(text)`` (an int) for every row of a string column, called once per distinct text."""
    coded = pc.dictionary_encode(texts).combine_chunks()
    by_text = np.array([fn(m) for m in coded.dictionary.to_pylist()], np.int64)
    return by_text[coded.indices.to_numpy(zero_copy_only=False)] if len(by_text) else np.zeros(0, np.int64)


def template_events(no: int, work: str, vocab_dict: dict, train_ids: dict[str, int], flows: bool,
                    text: bool = False) -> dict:
    """Stage 5 for one read task's events: each event's template id, written as ``events/e<task>.parquet``
    (one column, row group for row group with the task's event file; :func:`write_events` joins them).

    A log line's template depends on its masked text alone, and masked texts repeat: each distinct one is
    looked up once per row group.  A flow's comes from its fields, one at a time."""
    from loglm.vocab import Vocabulary

    templates = _Templates(Vocabulary.from_dict(vocab_dict), train_ids)
    path = Path(work) / "events" / f"t{no:06d}.parquet"
    if path.exists():
        pf = pq.ParquetFile(path)
        schema = TEXT_SCHEMA if text else TEMPLATE_SCHEMA
        with pq.ParquetWriter(path.with_name(f"e{no:06d}.parquet"), schema, compression="zstd") as writer:
            for g in range(pf.num_row_groups):
                if flows:
                    t = pf.read_row_group(g, columns=["masked", "fields"])
                    masked, fields = t.column("masked").to_pylist(), t.column("fields").to_pylist()
                    texts = [templates.text(m, templates.flow(f)) for m, f in zip(masked, fields)]
                    tpl = pa.array([templates(x) for x in texts], pa.int64())
                    shown = pa.array(texts, pa.string())
                else:
                    shown = pf.read_row_group(g, columns=["masked"]).column(0)
                    tpl = pa.array(_per_text(shown, templates))
                writer.write_table(pa.Table.from_arrays([tpl, shown] if text else [tpl], schema=schema))
    return {"task": no, "node": _node(), "peak_rss_mb": _peak_mb()}


def write_events(work: Path, tasks: list[int], out: Path, flows: bool, text: bool = False) -> None:
    """events.parquet: every event in input order (the rows event_idx points to), each task's event file
    joined with its template ids (and, ``text``, matched texts) a row group at a time."""
    schema = _events_schema(flows, text)
    tmp = out / ".events.parquet.tmp"
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for no in tasks:
            path = work / "events" / f"t{no:06d}.parquet"
            if path.exists():
                pf, tpl = pq.ParquetFile(path), pq.ParquetFile(path.with_name(f"e{no:06d}.parquet"))
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g, columns=[n for n in schema.names if n not in ("template", "masked")])
                    made = tpl.read_row_group(g)
                    cols = [made.column(n) if n in ("template", "masked") else t.column(n) for n in schema.names]
                    writer.write_table(pa.Table.from_arrays(cols, schema=schema))
    tmp.replace(out / "events.parquet")


def _peak_mb() -> float:
    """This process's peak resident set so far (MB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _NoPandas:
    """A meta-path finder that answers an import of pandas with ModuleNotFoundError."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is not loaded in prepare's worker processes (no stage needs it)",
                                      name=name)
        return None


def worker_init(parent: int) -> None:
    """Initializer of prepare's local worker processes (a private pool that runs this module's stages only).

    - pandas is refused: pyarrow imports it on a process's first conversion to check for pandas objects
      (about 0.3-0.5 s a process here, a fixed cost of every prepare), and no stage uses it, so pyarrow goes
      on without it.  Not for Ray's workers, which other libraries share.
    - The worker exits when its driver is gone: a driver killed outright (SIGKILL, the OOM killer) cannot
      stop its pool, and a spawned worker holds both ends of its task queue, so it would wait forever."""
    import sys
    import threading

    if "pandas" not in sys.modules and _NoPandas not in sys.meta_path:
        sys.meta_path.insert(0, _NoPandas)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="loglm-driver-watch", daemon=True).start()


class _Runner:
    """Runs a stage's calls here, in ``processes`` local processes (one pool for every stage), or as Ray tasks
    spread over the cluster."""

    def __init__(self, ray_mod=None, processes: int = 1):
        self.ray, self.processes = ray_mod, processes
        self.pool = None

    def map(self, fn, calls) -> list:
        return self.start(fn, calls)()

    def start(self, fn, calls):
        """The calls begun now; the returned function waits for their results, in order, so the driver can
        work meanwhile (one local process: the calls run when collected).  ``calls`` may be a generator:
        each call is begun as it is made."""
        import itertools

        calls = iter(calls)
        head = list(itertools.islice(calls, 2))
        calls = itertools.chain(head, calls)
        if self.ray is None and (self.processes <= 1 or len(head) <= 1):
            return lambda: [fn(*args) for args in calls]
        if self.ray is None:
            if self.pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # spawn: a forked child would inherit the parent's Arrow and torch threads
                self.pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=worker_init, initargs=(os.getpid(),))
            futures = [self.pool.submit(fn, *args) for args in calls]
            return lambda: [f.result() for f in futures]
        remote = self.ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(fn)
        shared = {}

        def put(v):  # large read-only arguments go to the object store once
            if isinstance(v, (np.ndarray, dict)) and id(v) not in shared:
                shared[id(v)] = self.ray.put(v)
            return shared.get(id(v), v)

        refs = [remote.remote(*[put(a) for a in args]) for args in calls]
        return lambda: self.ray.get(refs)

    def close(self, abort: bool = False) -> None:
        """Stop the local pool: after its work, or with ``abort`` (a stop signal or an error) at once, its
        running tasks ended rather than waited for."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            if not abort:
                pool.shutdown()
                return
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for w in workers:
                w.terminate()
            for w in workers:
                w.join(10)


class NothingAccepted(ValueError):
    """Every line was rejected: the message, the line accounting and the first rejection (file, line, reason)."""

    def __init__(self, message: str, lines: dict, first: list[tuple[str, int, str]]):
        super().__init__(message)
        self.lines, self.first = lines, first


def prepare(cfg, out: Path, ray_mod=None, vocab=None, split: str | None = None, adjust=None,
            grow=None) -> tuple[dict, dict]:
    """Write the prepared dataset of ``cfg`` into the (new, empty) folder ``out``; returns (summary, extra).

    Given a trained model's ``vocab``, nothing is mined: every line is read with it (what it never saw is
    ``[UNK]``), out of core like any prepare.  With ``split`` every session goes to that one split (new inputs
    to score: batch detection); without it splits and labels follow the data's rules (a transfer evaluation).
    ``adjust(keys, split, label)`` may change the sessions' splits and labels in place before anything is
    counted (tuning: analysts' verdicts, the new traffic taken as normal).  ``grow(vocab, texts, flows)``
    returns the vocabulary the shards are written with, from the training sessions' distinct messages
    (Counter) and flows (``TrainingFlows``): tuning's vocabulary growth."""
    from loglm.ingest.readers import expand_inputs

    _system_allocator()
    paths = expand_inputs(list(cfg.data.inputs))
    processes = cfg.workers or os.cpu_count() or 1
    size = sum(p.stat().st_size for p in paths if p.is_file())
    runner = _Runner(ray_mod, 1 if ray_mod is not None or size < LOCAL_SPLIT_BYTES else processes)
    try:
        return _prepare(cfg, out, ray_mod, runner, paths, vocab, split, adjust, grow)
    except BaseException:
        runner.close(abort=True)
        raise
    finally:
        runner.close()
        release_free_memory()


def _prepare(cfg, out: Path, ray_mod, runner: _Runner, paths: list[Path], frozen=None,
             one_split: str | None = None, adjust=None, grow=None) -> tuple[dict, dict]:
    from loglm.ingest.distributed import iter_tasks, whole_file
    from loglm.ingest.flows import FlowCodec, TrainingFlows
    from loglm.ingest.prepare import read_id_list
    from loglm.ingest.templates import TemplateMiner
    from loglm.progress import Progress
    from loglm.vocab import Vocabulary

    data = cfg.data
    data_dict = dataclasses.asdict(data)
    mask = cfg.tokenizer.mask_params if frozen is None else frozen.mask_params  # as the vocabulary was made
    n_parts = spill_partitions(data, paths)
    work = out / "_work"
    work.mkdir(parents=True)
    file_no = {os.fspath(p): k for k, p in enumerate(paths, 1)}
    tasks: list[dict] = []

    def read_calls():  # each read task begins as soon as its byte range is cut (the file is cut as it is read)
        if ray_mod is None and runner.processes == 1:
            planned = (whole_file(p) for p in paths)
        else:
            planned = iter_tasks(paths, data, cfg.ray.lines_per_task)
        for no, task in enumerate(planned):
            task.update(no=no, file_no=file_no.get(task["path"], 0), files=len(paths))
            tasks.append(task)
            yield task, data_dict, mask, str(work), n_parts

    t0 = time.perf_counter()
    stage_s: dict[str, float] = {}
    stage_peak: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:  # seconds per stage and the driver's peak RSS after it, in the manifest
        nonlocal clock
        now = time.perf_counter()
        stage_s[name] = round(now - clock, 3)
        stage_peak[name] = _peak_mb()
        clock = now

    progress = Progress("reading")
    read = runner.map(read_task, read_calls())
    account = LineAccount()
    for r in read:
        a = r["account"]
        account.read += a["read"]
        account.accepted += a["accepted"]
        account.rejected += a["rejected"]
        account.metadata += a["metadata"]
        account.continued += a.get("continued", 0)
        account.reasons.update(a["rejected_by_reason"])
    counts = np.array([r["events"] for r in read], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else np.zeros(0, np.int64)
    n_events = int(counts.sum())
    progress.done(f"read {account.read:,} lines in {len(tasks)} task{'s' * (len(tasks) != 1)}: {n_events:,} events, "
                  f"{account.rejected:,} lines rejected")
    if n_events == 0:
        first = next((json.loads(line) for p in sorted((work / "rejected").glob("*.jsonl"))
                      for line in p.read_text().splitlines()), None)
        where = f"{first['file']}:{first['line']}: {first['reason']}" if first else "no lines"
        raise NothingAccepted(f"no line of {list(data.inputs)} was accepted with data.format={data.format!r}; "
                              f"first rejection: {where}", account.as_dict(),
                              [] if first is None else [(first["file"], first["line"], first["reason"])])
    if data.session.by == "count":
        read = runner.map(spill_counted, [(no, int(offsets[no]), data_dict, str(work), n_parts) for no in range(len(tasks))])
    lap("read")
    stats = merge_stats([r.pop("stats") for r in read])  # the tasks' summaries are not kept past the merge
    nodes = {r["node"] for r in read}

    # stage 2: labels and splits from the per-session table
    anomalous = read_id_list(data.anomalous_ids) if data.anomalous_ids else None
    label, mixed = session_labels(stats, data, anomalous)
    first_id = to_global(stats.column("first_pos").to_numpy(), offsets)

    task_of = stats.column("first_pos").to_numpy() >> TASK_BITS
    input_of = np.array([t["file_no"] for t in tasks], np.int64)[task_of] if len(tasks) else np.zeros(0, np.int64)

    def rank_events(before, mask, input_no):
        first_ts = stats.column("first_ts").to_numpy()
        if mask is None:
            return event_ranks(first_ts, first_id, work, list(range(len(tasks))), offsets, before)
        return event_ranks(first_ts[mask], first_id[mask], work,
                           [no for no, t in enumerate(tasks) if t["file_no"] == input_no], offsets, before)

    if one_split is not None:  # inputs to score with a trained vocabulary: one split, nothing held out
        split = np.full(stats.num_rows, one_split, dtype=object)
    else:
        split = assign_splits(stats, data, rank_events, input_of)
    if data.train_normal_only and one_split is None:  # anomalous training sessions are held out of training entirely
        split[(split == "train") & (label == 1)] = "train_heldout_anomalous"
    if adjust is not None:
        adjust(stats.column("key"), split, label)
    n_sessions = stats.num_rows
    info = pa.table({"key": stats.column("key"), "split": pa.array(split, pa.string()), "label": pa.array(label, pa.int8()),
                     "mixed": pa.array(mixed & bool(data.train_normal_only)), "n": stats.column("n"),
                     "part": stats.column("part")})
    input_end = float(stats.column("last_ts").to_numpy().max())
    del split, label, mixed
    units = work_units(info, n_parts)
    del info
    lap("split")

    # stage 3: distinct training messages per partition
    progress = Progress("sessions", unit="partitions")
    counted = runner.map(count_partition, [(u, str(work), offsets, info, data_dict, input_end) for u, info in units])
    texts: Counter = Counter()
    train_flows = TrainingFlows(data.local_networks)  # compact: ~48 bytes a training flow
    by_split: Counter = Counter()
    labels: Counter = Counter()
    pauses: list[float] = []
    clocks: dict[str, list[bool]] = {}
    skipped = session_rows = sessions_split = 0
    for c in counted:
        for split, flags in c["clock"].items():
            clocks[split] = [a and b for a, b in zip(clocks.get(split, [True] * len(CLOCKS)), flags)]
        texts.update(c["texts"])
        train_flows.extend(c["flows"])  # partitions in order: the codec breaks port ties by first occurrence
        by_split.update(c["by_split"])
        labels.update(c["labels"])
        pauses.extend(c["pauses"])
        skipped += c["skipped"]
        session_rows += c["session_rows"]
        sessions_split += c["sessions_split"]
        nodes.add(c["node"])
    progress.done(f"{n_sessions:,} sessions in {n_parts} partitions ({len(units)} work units)")
    clock_by_split = {split: clock_of(flags) for split, flags in sorted(clocks.items())}
    clock_warn = clock_warning(clock_by_split, cfg.tokenizer.time_resolution_s)
    if clock_warn:
        print(f"loglm: warning: {clock_warn}", file=sys.stderr, flush=True)
    lap("count")

    # stage 4: templates and vocabulary
    flows = reads_flows(data)
    codec = None
    miner = TemplateMiner(cfg.tokenizer.sim_threshold, cfg.tokenizer.max_templates)  # flow sentences: exact
    if frozen is not None:  # the trained vocabulary matches every text (workers: _Templates); nothing mined
        vocab, train_ids = frozen, {}
        if grow is not None:
            vocab = grow(frozen, texts, train_flows)
        del train_flows
    elif flows:
        if not len(train_flows):
            raise ValueError(f"dataset {data.name!r} has no training flows: check data.split and the labels")
        codec = FlowCodec(data.flow_buckets, data.flow_port_budget, data.flow_min_count,
                          local_networks=list(data.local_networks)).fit(train_flows, facets=data.flow_facets)
        texts.update(codec.sentences(train_flows))
        del train_flows
    if frozen is None:
        train_ids = mine(texts, miner)
        tok_counts: Counter = Counter()
        for text, c in texts.items():
            tok_counts[train_ids[text]] += c
        keep = sorted(tid for tid, c in tok_counts.items() if c >= cfg.tokenizer.min_count)
        vocab = Vocabulary(miner, keep, cfg.tokenizer.gap_buckets, cfg.tokenizer.mask_params, codec,
                           cfg.tokenizer.time_resolution_s)
        Progress("mining").done(f"{len(miner.templates):,} templates mined from {len(texts):,} distinct messages "
                                f"of {sum(texts.values()):,} training lines")

    # stage 5: token shards per partition, then the events table in input order
    (out / "sessions").mkdir(parents=True, exist_ok=True)
    vocab_dict = vocab.to_dict()
    text = frozen is not None  # scoring new inputs: alerts show an unseen event's text
    templated = runner.map(template_events, [(no, str(work), vocab_dict, train_ids, flows, text)
                                             for no in range(len(tasks))])
    lap("mine_and_templates")
    # the shards are written by the workers while the driver joins the events table (one sequential file)
    shards_written = runner.start(write_partition, [(u, str(work), str(out), offsets, info, data_dict, input_end,
                                                     vocab_dict, train_ids) for u, info in units])
    write_events(work, list(range(len(tasks))), out, flows, text)
    lap("events_table")
    written = shards_written()
    shards = [Path(s) for w in written for s in w["shards"]]
    nodes |= {w["node"] for w in written}
    lap("shards_after_events_table")
    with open(out / "rejected.jsonl", "wb") as fh:
        for no in range(len(tasks)):
            path = work / "rejected" / f"t{no:06d}.jsonl"
            if path.exists():
                with open(path, "rb") as src:
                    while block := src.read(1 << 20):
                        fh.write(block)
    import shutil

    shutil.rmtree(work)
    if not shards:  # an empty table still carries the schema readers expect
        from loglm.shards import SESSION_SCHEMA

        pq.write_table(SESSION_SCHEMA.empty_table(), out / "sessions" / "shard-00000-000-0000.parquet")
        shards = [out / "sessions" / "shard-00000-000-0000.parquet"]
    if not account.reconciles():  # an invariant: a bug if it ever fires
        raise RuntimeError(f"line accounting does not reconcile: {account.as_dict()}")
    v = np.asarray(pauses, np.float64)
    pause = {"n": 0} if not len(v) else {"n": int(len(v)), "p99": float(np.quantile(v, 0.99)),
                                         "p999": float(np.quantile(v, 0.999)), "max": float(v.max())}
    summary = {
        "lines": account.as_dict(), "events": n_events, "sessions": n_sessions, "session_rows": session_rows,
        "sessions_split": sessions_split, "sessions_by_split": dict(by_split),
        "labels_by_split": dict(sorted(labels.items())), "session_pause_s": pause,
        # the coarsest clock (s) every timestamp of each split sits on; a warning when one is coarser than
        # training's and tokenizer.time_resolution_s does not cover it
        "clock_by_split_s": clock_by_split, "clock_warning": clock_warn,
        "train_events_skipped_unlabelled": skipped, "seconds_reading": round(time.perf_counter() - t0, 3),
        "tasks": len(tasks), "spill_partitions": n_parts, "nodes": len(nodes), "stage_s": stage_s, "driver_peak_mb_after": stage_peak,
        # this process and the largest of the processes that ran stages (the same process when local, 1 worker)
        "peak_rss_mb": {"driver": _peak_mb(), "workers_max": max(r.get("peak_rss_mb", 0.0) for r in
                                                                  [*read, *counted, *written, *templated])},
    }
    return summary, {"vocab": vocab, "shards": shards}
