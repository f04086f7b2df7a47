"""Ingest stage: raw log files -> events -> sessions -> Parquet token shards + vocabulary + manifest."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from loglm.artifacts import sha256_file, swap_in, work_folder, write_manifest
from loglm.config import DataConfig
from loglm.ingest.flows import FlowCodec
from loglm.ingest.params import entities_of, mask_params
from loglm.ingest.readers import (
    LineAccount,
    Record,
    Rejection,
    event_parser,
    expand_inputs,
    make_reader,
    read_lines,
    record_starts,
)
from loglm.ingest.sessions import (
    Events,
    Session,
    sessionize,
)
from loglm.ingest.templates import TemplateMiner, clean, with_namespace
from loglm.signals import Stopped, stop_on_signals
from loglm.vocab import Vocabulary

STOP_GRACE_S = 60.0  # a stopped prepare that has not cleaned up by then exits at once (loglm.signals)


@dataclass
class Parsed:
    events: Events
    account: LineAccount
    rejections: list[tuple[str, int, str]]
    sessions: list[Session]


def event_parts(item: Record, mask: bool = True) -> tuple[str | None, dict[str, list[str]]]:
    """(masked text, None for a flow; entities) of one accepted record: the stateless part of ingest."""
    if item.fields is not None:
        ents = {kind: [value] for kind, value in item.header_entities.items()}
        ents["ip"] = list(dict.fromkeys(v for k in ("src_ip", "dst_ip") for v in ents.get(k, [])))
        return None, ents
    masked, params = mask_params(item.content) if mask and not item.exact else (item.content, {})
    # the program that wrote the line is part of its event (data.event_fields); a line's own separator
    # character reads as a space, as it always did, never as a namespace
    masked = with_namespace(item.namespace, clean(masked))
    ents = entities_of(params)
    for kind, value in item.header_entities.items():
        ents.setdefault(kind, []).append(value)
    return masked, ents


def to_event(item: Record, miner: TemplateMiner, frozen: bool, mask: bool = True, codec: FlowCodec | None = None
             ) -> tuple[int, str, dict[str, list[str]]]:
    """(template id, -1 if unseen by a frozen miner; masked text; entities) of one accepted record.

    A flow's template is its flow sentence; without a fitted codec it is -1.
    """
    masked, ents = event_parts(item, mask)
    if masked is None:
        if codec is None:
            return -1, "", ents
        masked = codec.sentence(item.fields)
    tid = miner.match(masked) if frozen else miner.add(masked)
    return (-1 if tid is None else tid), masked, ents


def parse_inputs(inputs: list[str], data: DataConfig, miner: TemplateMiner, frozen: bool,
                 mask: bool = True, codec: FlowCodec | None = None) -> Parsed:
    """Read, mine (or, frozen, only match) templates and sessionize; every line accepted or rejected."""
    from loglm.progress import Progress

    account = LineAccount()
    rejections: list[tuple[str, int, str]] = []
    ev = Events()
    paths = expand_inputs(inputs)
    progress = Progress("reading")
    for k, path in enumerate(paths, 1):
        progress.detail = f"file {k}/{len(paths)} {path.name}"
        reader = make_reader(data, path)
        fast = event_parser(reader, mask)
        items = read_lines(fast, path, account, reader.max_line_bytes, record_starts(reader)) if fast else \
            reader.read(path, account)
        for item in items:
            progress.tick()
            if type(item) is tuple:  # a raw text line through its reader's fast path
                source, line_no, ts, raw, label, masked, ents = item
                tid = miner.match(masked) if frozen else miner.add(masked)
                tid, fields = -1 if tid is None else tid, None
            elif isinstance(item, Rejection):
                rejections.append((item.source, item.line_no, item.reason))
                continue
            else:
                source, line_no, ts, raw, label, fields = item.source, item.line_no, item.ts, item.raw, item.label, \
                    item.fields
                tid, masked, ents = to_event(item, miner, frozen, mask, codec)
            ev.source.append(source)
            ev.line_no.append(line_no)
            ev.ts.append(ts)
            ev.template.append(tid)
            ev.masked.append(masked)
            ev.raw.append(raw)
            ev.entities.append(ents)
            ev.label.append(label)
            ev.fields.append(fields)
    sessions = sessionize(ev, data.session, account, rejections)
    progress.done(f"read {account.read:,} lines from {len(paths)} file{'s' * (len(paths) != 1)}: "
                  f"{account.accepted:,} events in {len(sessions):,} sessions, {account.rejected:,} lines rejected")
    return Parsed(ev, account, rejections, sessions)


def read_id_list(path: str) -> set[str]:
    with open(path) as fh:
        return {line.strip() for line in fh if line.strip()}


SEQUENCE_BATCH_EVENTS = 65_536  # events of pre-sequenced input gathered before they are written


class SequenceWriter:
    """Writes a pre-sequenced dataset into ``out`` as its sequences come, in bounded memory: events are
    gathered into batches of about ``batch_events`` and each batch becomes rows of ``events.parquet`` (row
    groups of ``EVENTS_ROW_GROUP``) and session rows that fill ``sessions/shard-*.parquet`` of
    ``shard_rows`` rows each, the shards and row groups a whole-corpus write would make.  What stays is one
    batch, one unfinished shard and row group, and per-session counts."""

    def __init__(self, out: Path, vocab: Vocabulary, data: DataConfig, batch_events: int | None = None):
        import pyarrow.parquet as pq

        from loglm.shards import EVENTS_ROW_GROUP

        self.out, self.vocab, self.data = out, vocab, data
        self.batch_events = batch_events or SEQUENCE_BATCH_EVENTS
        self.most_held = 0  # the most events one batch held (what memory follows)
        (out / "sessions").mkdir(parents=True, exist_ok=True)
        self._pq, self._row_group = pq, EVENTS_ROW_GROUP
        self.events, self.sessions = Events(), []
        self.offset = 0  # id of the batch's first event in the dataset (after close: the events written)
        self._rows: list = []  # session rows not yet in a shard (Arrow tables)
        self._n_rows = 0
        self._event_parts: list = []  # event rows not yet in a row group
        self._n_event_rows = 0
        self._writer = None
        self.shards: list[Path] = []
        self.session_rows = self.sessions_split = 0
        self.session_ids = DistinctCount()  # the sessions, by id (an id may come twice)
        self.splits: Counter = Counter()
        self.labels: Counter = Counter()
        self._paused = DistinctCount()  # training sessions with a pause (two events or more)
        self._pauses: list = []  # each one's longest pause, a float32 array per batch

    def add(self, seq) -> None:
        from loglm.ingest.builders import add_sequence

        add_sequence(self.events, self.sessions, seq, self.data.session.max_events)
        if len(self.events) >= self.batch_events:
            self._flush()

    def _flush(self) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from loglm.shards import events_table, session_table

        if not len(self.events):
            return
        self.most_held = max(self.most_held, len(self.events))
        ts = self.events.ts
        longest: dict[str, float] = {}  # a sequence's chunks all come in the batch that holds it
        for s in self.sessions:
            self.session_rows += 1
            self.sessions_split += s.chunk == 1
            if s.chunk == 0:
                self.splits[s.split] += 1
                self.labels[(s.split, s.label)] += 1
            if s.split == "train" and len(s.event_idx) >= 2:
                pause = float(np.diff(np.sort(np.asarray([ts[j] for j in s.event_idx], np.float64))).max())
                longest[s.session_id] = max(longest.get(s.session_id, 0.0), pause)
        self.session_ids.add([s.session_id for s in self.sessions])
        self._paused.add(list(longest))
        self._pauses.append(np.fromiter(longest.values(), np.float32, len(longest)))
        rows = session_table(self.sessions, self.events, self.vocab)
        idx = rows.column("event_idx").combine_chunks()
        shifted = pa.ListArray.from_arrays(idx.offsets, pc.add(idx.flatten(), self.offset))
        rows = rows.set_column(rows.schema.get_field_index("event_idx"), "event_idx", shifted.cast(idx.type))
        self._rows.append(rows)
        self._n_rows += rows.num_rows
        self._event_parts.append(events_table(self.events))
        self._n_event_rows += len(self.events)
        self.offset += len(self.events)
        self.events, self.sessions = Events(), []
        self._write_shards(final=False)
        self._write_events(final=False)

    def _take(self, parts: list, n: int):
        import pyarrow as pa

        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        rest = table.slice(n)
        return table.slice(0, n), ([rest] if rest.num_rows else [])

    def _write_shards(self, final: bool) -> None:
        from loglm.shards import write_session_shard

        size = self.data.shard_rows
        while self._n_rows >= size or (final and self._n_rows):  # (an accepted line always makes a session)
            n = min(size, self._n_rows)
            shard, self._rows = self._take(self._rows, n)
            self._n_rows -= n
            self.shards.append(write_session_shard(shard, self.out / "sessions", len(self.shards)))

    def _write_events(self, final: bool) -> None:
        while self._n_event_rows >= self._row_group or (final and self._n_event_rows):
            n = min(self._row_group, self._n_event_rows)
            part, self._event_parts = self._take(self._event_parts, n)
            if self._writer is None:
                self._writer = self._pq.ParquetWriter(self.out / ".events.parquet.tmp", part.schema,
                                                      compression="zstd")
            self._writer.write_table(part, row_group_size=self._row_group)
            self._n_event_rows -= n

    def close(self) -> None:
        self._flush()
        self._write_shards(final=True)
        self._write_events(final=True)
        if self._writer is not None:
            self._writer.close()
            (self.out / ".events.parquet.tmp").replace(self.out / "events.parquet")

    def pauses(self) -> dict:
        """The longest pause inside each normal training session, as quantiles (streaming detection's idle
        close; a pre-sequenced event has no time, so these are 0)."""
        import numpy as np

        n = len(self._paused)
        if not n:
            return {"n": 0}
        v = np.concatenate(self._pauses).astype(np.float64)  # (4 bytes a session while held)
        return {"n": n, "p99": float(np.quantile(v, 0.99)), "p999": float(np.quantile(v, 0.999)),
                "max": float(v.max())}


class DistinctCount:
    """How many distinct strings were added, holding 8 bytes a distinct one (a 64-bit hash each, deduplicated
    as they grow) rather than the strings in a set.  Two different ids share a hash with a chance of about
    n^2 / 2^65: one in 370,000 at ten million sessions."""

    COMPACT_AT = 1 << 20

    def __init__(self):
        import numpy as np

        self._np = np
        self._seen = np.zeros(0, np.uint64)  # distinct, sorted
        self._new: list = []
        self._n_new = 0

    def add(self, items: list[str]) -> None:
        if not items:
            return
        np = self._np
        self._new.append(np.fromiter((hash(i) & 0xFFFFFFFFFFFFFFFF for i in items), np.uint64, len(items)))
        self._n_new += len(items)
        if self._n_new >= max(self.COMPACT_AT, len(self._seen) // 4):
            self._compact()

    def _compact(self) -> None:
        if self._new:
            self._seen = self._np.unique(self._np.concatenate([self._seen, *self._new]))
            self._new, self._n_new = [], 0

    def __len__(self) -> int:
        self._compact()
        return int(len(self._seen))


def write_sequences(out: Path, sequences, vocab: Vocabulary, data: DataConfig, extra: dict) -> dict:
    """A pre-sequenced dataset into ``out``: shards, events, vocabulary and rejected lines; returns the
    manifest's summary (written by the caller)."""
    account = LineAccount()
    writer = SequenceWriter(out, vocab, data)
    with _RejectedFile(out / "rejected.jsonl") as rejections:
        for seq in sequences(account, rejections):
            writer.add(_heldout(seq, data))
    writer.close()
    vocab_sha = vocab.save(out / "vocab.json")
    acct = account.as_dict()
    if not account.reconciles():  # an invariant: a bug if it ever fires
        raise RuntimeError(f"line accounting does not reconcile: {acct}")
    shard_hashes = "".join(sha256_file(p) for p in writer.shards)
    summary = {
        "dataset": data.name, "format": data.format, "inputs": list(data.inputs), "lines": acct,
        "events": writer.offset, "sessions": len(writer.session_ids),
        "session_rows": writer.session_rows, "sessions_split": writer.sessions_split,
        "sessions_by_split": dict(writer.splits),
        "labels_by_split": {f"{k[0]}/{k[1]}": v for k, v in sorted(writer.labels.items())},
        "session_pause_s": writer.pauses(), "templates_mined": len(vocab.miner.templates), "vocab_size": vocab.size,
        "vocab_sha256": vocab_sha,
        # identifies the model-visible data: every token shard plus the vocabulary
        "data_sha256": hashlib.sha256((shard_hashes + vocab_sha).encode()).hexdigest(),
        **extra,
    }
    return summary


class _RejectedFile:
    """A rejections list that writes each rejected line to ``rejected.jsonl`` as it comes (never held)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fh = open(self.path, "w", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def append(self, item: tuple[str, int, str]) -> None:
        f, n, r = item
        self.fh.write(json.dumps({"file": f, "line": n, "reason": r}) + "\n")


class _FirstRejection(list):
    """A rejections list that keeps only the first (the vocabulary pass needs it for its error alone)."""

    def append(self, item) -> None:
        if not self:
            super().append(item)


def _heldout(seq, data: DataConfig):
    """With ``data.train_normal_only``, an anomalous training sequence is held out of training entirely (it is
    never a test item either)."""
    if data.train_normal_only and seq.split == "train" and seq.label == 1:
        seq.split = "train_heldout_anomalous"
    return seq


def prepared_dir(root: str | Path, name: str) -> Path:
    return Path(root).resolve() / "data" / name


# DataConfig keys that do not change what prepare writes (how results are reported)
NOT_INGEST_KEYS = ("eval_unit", "eval_pair_window_s", "spill_partitions")


# bumped whenever what a prepared folder holds changes (2: events.parquet gains the flows' `fields`; 3:
# prepared out of core, templates mined in a canonical order), so a
# folder written by an older LogLM is prepared again instead of read as if it were current
PREPARED_LAYOUT = 3


def file_digest(path: Path) -> str:
    """A file's contents as a 16-byte BLAKE2b digest, read a MiB at a time."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ingest_fingerprint(cfg, contents: bool = True) -> dict:
    """What a prepared folder is made from: the data and tokenizer settings, and each input file's path,
    size and modification time (as `make` judges staleness) and, with ``contents``, its contents' digest: a
    file copied, checked out or re-mounted gets a new modification time with the same bytes, and is then
    recognised as the same input instead of preparing the corpus again (:func:`stale_reason`).  The digest
    reads each input once, far faster than preparing it (BLAKE2b runs at several hundred MB/s)."""
    import dataclasses


    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in NOT_INGEST_KEYS}
    # the program fields each event carries, as resolved (a preset's own included): a folder prepared before
    # events carried their program is stale; one without any keeps its fingerprint
    from loglm.ingest.formats import event_fields_of
    from loglm.ingest.readers import source_data

    data.pop("event_fields", None)
    if fields := event_fields_of(cfg.data):
        data["event_fields"] = list(fields)
    for src in data.get("sources") or []:  # each source's own, as resolved (set there, or its preset's)
        fields = event_fields_of(source_data(cfg.data, src))
        src.pop("event_fields", None)
        if fields:
            src["event_fields"] = list(fields)
    tokenizer = dataclasses.asdict(cfg.tokenizer)
    if not tokenizer.get("time_resolution_s"):  # unset: folders prepared before the setting existed stay fresh
        tokenizer.pop("time_resolution_s", None)
    config = {"data": data, "tokenizer": tokenizer, "layout": PREPARED_LAYOUT}
    files, digests = {}, {}
    paths = list(cfg.data.inputs) + ([cfg.data.anomalous_ids] if cfg.data.anomalous_ids else [])
    for p in paths:
        try:
            found = expand_inputs([p])
        except (FileNotFoundError, ValueError):
            found = []
        if not found:
            files[str(Path(p).resolve())] = "missing"
        for q in found:
            st = q.stat()
            files[str(q.resolve())] = f"{st.st_size}:{st.st_mtime_ns}"
            if contents:
                digests[str(q.resolve())] = file_digest(q)
    out = {"config": config, "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str)
                                                             .encode()).hexdigest(), "files": files}
    if contents:
        out["contents"] = digests
    return out


def _same_contents(changed: list[str], now: dict, recorded: dict) -> bool:
    """Whether every input in ``changed`` kept its size and its recorded contents (only its modification time
    moved): hashed now only for those files, and only where the folder recorded a digest."""
    digests = recorded.get("contents") or {}
    for f in changed:
        a, b = now["files"].get(f), recorded["files"].get(f)
        if a is None or b is None or a == "missing" or b == "missing" or a.split(":")[0] != b.split(":")[0]:
            return False
        if f not in digests or file_digest(Path(f)) != digests[f]:
            return False
    return True


PATH_KEYS = ("data.inputs", "data.anomalous_ids")  # the same files however their paths are spelled


def _at(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _same_paths(a, b) -> bool:
    """``a`` and ``b`` name the same files (``/x/repo/../shared/f`` and ``/x/shared/f``): each path resolved."""
    def norm(v):
        return [str(Path(p).resolve()) for p in (v if isinstance(v, list) else [v])] if v else []

    return norm(a) == norm(b)


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def stale_reason(data_dir: Path, cfg) -> str | None:
    """Why the prepared folder no longer matches ``cfg`` and its inputs (None when it does)."""
    try:
        recorded = json.loads((data_dir / "MANIFEST.json").read_text())["summary"].get("fingerprint")
    except (OSError, ValueError, KeyError):
        return f"{data_dir} has no readable MANIFEST.json"
    if not recorded:
        return f"{data_dir} was prepared by an older LogLM (no record of its inputs and settings)"
    now = ingest_fingerprint(cfg, contents=False)  # contents are read only for a file whose time moved
    if recorded["config"].get("layout", 1) != PREPARED_LAYOUT:
        return f"{data_dir} was prepared by another LogLM version (layout {recorded['config'].get('layout', 1)}, now {PREPARED_LAYOUT})"
    if now["config_sha256"] != recorded["config_sha256"]:
        keys = [k for k in _diff_keys(recorded["config"], now["config"])
                if not (k in PATH_KEYS and _same_paths(_at(recorded["config"], k), _at(now["config"], k)))]
        if keys or not _diff_keys(recorded["config"], now["config"]):
            return f"settings changed since {data_dir} was prepared: {', '.join(keys[:6]) or 'config'}"
    if now["files"] != recorded["files"]:
        changed = sorted(f for f in set(now["files"]) | set(recorded["files"])
                         if now["files"].get(f) != recorded["files"].get(f))
        if _same_contents(changed, now, recorded):
            print(f"loglm: {len(changed)} input(s) of {data_dir} have a new modification time but the contents they "
                  f"were prepared from ({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}): the prepared "
                  "folder is still theirs", file=sys.stderr, flush=True)
            return None
        return (f"inputs changed since {data_dir} was prepared (added, removed, resized or modified): "
                f"{', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
    return None


def run(cfg) -> dict:
    """Prepare ``cfg.data`` into ``<paths.root>/data/<data.name>``; returns the manifest summary."""
    from loglm.ingest import builders

    data: DataConfig = cfg.data
    out = prepared_dir(cfg.paths.root, data.name)
    t0 = time.perf_counter()
    fingerprint = ingest_fingerprint(cfg)  # before reading: a file that changes while it is read looks stale
    # Ctrl-C / SIGTERM (a scheduler's time limit): the workers are ended and the partial folder removed
    # before the exit, instead of orphaned workers and gigabytes of spill left behind
    with stop_on_signals(STOP_GRACE_S):
        try:
            if data.format not in builders.BUILDERS:
                return run_partitioned(cfg, out, fingerprint, t0)
            return run_sequences(cfg, out, fingerprint, t0)
        except Stopped as e:
            print(f"loglm: prepare stopped by {signal.Signals(e.signum).name}: its workers were ended and its "
                  f"partial folder removed; nothing was written to {out}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None


def run_sequences(cfg, out: Path, fingerprint: dict, t0: float) -> dict:
    """Pre-sequenced formats (:data:`loglm.ingest.builders.BUILDERS`), read twice and never held: the first
    pass counts the training sequences' events for the vocabulary, the second writes shards and events
    (:class:`SequenceWriter`) beside ``out``, swapped in when complete."""
    from loglm.ingest import builders

    data: DataConfig = cfg.data
    miner, sequences = builders.BUILDERS[data.format](data)
    counts: Counter = Counter()
    account, first = LineAccount(), _FirstRejection()
    for seq in sequences(account, first):
        if _heldout(seq, data).split == "train":
            counts.update(k - 1 for k in seq.keys)
    if account.accepted == 0:
        f, n, reason = first[0] if first else ("?", 0, "no lines")
        raise ValueError(f"no line of {list(data.inputs)} was accepted with data.format={data.format!r}; "
                         f"first rejection: {f}:{n}: {reason}")
    # vocabulary from training sequences only: templates first seen elsewhere are UNK to the model
    tok = cfg.tokenizer
    vocab = Vocabulary(miner, sorted(t for t, c in counts.items() if c >= tok.min_count), tok.gap_buckets,
                       tok.mask_params, None, tok.time_resolution_s)
    tmp = work_folder(out, "preparing")
    try:
        summary = write_sequences(tmp, sequences, vocab, data, {"backend": "local", "train_events_skipped_unlabelled": 0,
                                                               "fingerprint": fingerprint, "path": str(out)})
        if summary["lines"] != account.as_dict():  # the vocabulary was counted on other lines than were written
            raise ValueError(f"{list(data.inputs)} changed while prepare read them (first pass {account.as_dict()}, "
                             f"second {summary['lines']}): prepare again once they are complete")
        elapsed = time.perf_counter() - t0
        summary.update(seconds=round(elapsed, 3), lines_per_s=round(account.read / max(elapsed, 1e-9), 1))
        write_manifest(tmp, {"summary": summary})
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def run_partitioned(cfg, out: Path, fingerprint: dict, t0: float) -> dict:
    """Raw logs and flows, out of core (:mod:`loglm.ingest.partitioned`), written beside ``out`` and swapped
    in when complete."""
    data: DataConfig = cfg.data
    if not data.inputs:
        raise ValueError("data.inputs is empty: give raw log files or directories")
    if data.spill_partitions is not None and data.spill_partitions < 1:
        raise ValueError(f"data.spill_partitions must be >= 1, got {data.spill_partitions}")
    if cfg.backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {cfg.backend!r}")
    return _run_partitioned(cfg, out, fingerprint, t0, work_folder(out, "preparing"))


def _run_partitioned(cfg, out: Path, fingerprint: dict, t0: float, tmp: Path, extra: dict | None = None,
                     **read_with) -> dict:
    """Prepare into ``tmp``, then swapped in as ``out``; ``read_with``: a trained vocabulary and what goes with
    it (:func:`loglm.ingest.partitioned.prepare`: tuning's dataset in a model's vocabulary), ``extra``: more
    of the summary, merged in once the data is read (so what ``read_with`` records there is kept)."""
    from loglm.ingest import partitioned

    data: DataConfig = cfg.data
    try:
        if cfg.backend == "ray":
            from loglm.ray_cluster import ray_session

            with ray_session(cfg.ray) as ray:
                summary, made = partitioned.prepare(cfg, tmp, ray, **read_with)
        else:
            summary, made = partitioned.prepare(cfg, tmp, **read_with)
        vocab = made["vocab"]
        vocab_sha = vocab.save(tmp / "vocab.json")
        shard_hashes = "".join(sha256_file(p) for p in sorted(made["shards"], key=lambda p: p.name))
        elapsed = time.perf_counter() - t0
        summary = {
            "dataset": data.name, "format": data.format, "inputs": list(data.inputs), **summary,
            "templates_mined": len(vocab.miner.templates), "vocab_size": vocab.size, "vocab_sha256": vocab_sha,
            # identifies the model-visible data: every token shard plus the vocabulary
            "data_sha256": hashlib.sha256((shard_hashes + vocab_sha).encode()).hexdigest(),
            "seconds": round(elapsed, 3), "backend": cfg.backend, "fingerprint": fingerprint,
            "lines_per_s": round(summary["lines"]["read"] / max(elapsed, 1e-9), 1), "path": str(out),
            **(extra or {})}
        write_manifest(tmp, {"summary": summary})
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
