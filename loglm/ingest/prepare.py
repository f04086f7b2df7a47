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

from loglm.artifacts import atomic_write_bytes, sha256_file, swap_in, work_folder, write_manifest
from loglm.config import DataConfig, TokenizerConfig
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
)
from loglm.ingest.sessions import (
    Events,
    Session,
    sessionize,
)
from loglm.ingest.templates import TemplateMiner
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
    masked, params = mask_params(item.content) if mask else (item.content, {})
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
        items = read_lines(fast, path, account, reader.max_line_bytes) if fast else reader.read(path, account)
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


def build_vocab(miner: TemplateMiner, sessions: list[Session], events: Events, tok: TokenizerConfig,
                codec: FlowCodec | None = None) -> Vocabulary:
    """Vocabulary from training sessions only: templates first seen elsewhere are UNK to the model."""
    counts: Counter = Counter()
    for s in sessions:
        if s.split == "train":
            counts.update(events.template[j] for j in s.event_idx)
    keep = sorted(tid for tid, c in counts.items() if c >= tok.min_count and tid >= 0)
    return Vocabulary(miner, keep, tok.gap_buckets, tok.mask_params, codec, tok.time_resolution_s)


def write_prepared_in_place(out: Path, parsed: Parsed, vocab: Vocabulary, data: DataConfig, extra: dict) -> dict:
    """write_prepared beside ``out`` and swapped in when complete: a failure while writing keeps the previous
    good dataset (prepare, and tuning's dataset in a model's vocabulary)."""
    tmp = work_folder(out, "preparing")
    try:
        summary = write_prepared(tmp, parsed, vocab, data, extra)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def session_pauses(parsed: Parsed) -> dict:
    """The longest pause (seconds between consecutive events) inside each normal training session, as
    quantiles: streaming detection closes a session after a pause longer than nearly every training session
    held, so it cuts sessions where training did (a shorter idle close splits them and the pieces alarm)."""
    import numpy as np

    ts = parsed.events.ts
    longest: dict[str, float] = {}
    for s in parsed.sessions:
        if s.split != "train" or len(s.event_idx) < 2:
            continue
        t = np.sort(np.asarray([ts[j] for j in s.event_idx], np.float64))
        longest[s.session_id] = max(longest.get(s.session_id, 0.0), float(np.diff(t).max()))
    if not longest:
        return {"n": 0}
    v = np.fromiter(longest.values(), np.float64)
    return {"n": int(len(v)), "p99": float(np.quantile(v, 0.99)), "p999": float(np.quantile(v, 0.999)),
            "max": float(v.max())}


def write_prepared(out: Path, parsed: Parsed, vocab: Vocabulary, data: DataConfig, extra: dict) -> dict:
    import pyarrow.parquet as pq

    from loglm.shards import EVENTS_ROW_GROUP, events_table, session_table, write_session_shards

    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "sessions").glob("shard-*.parquet"):
        old.unlink()
    table = session_table(parsed.sessions, parsed.events, vocab)
    shards = write_session_shards(table, out / "sessions", data.shard_rows)
    tmp = out / ".events.parquet.tmp"
    pq.write_table(events_table(parsed.events), tmp, compression="zstd", row_group_size=EVENTS_ROW_GROUP)
    tmp.replace(out / "events.parquet")
    vocab_sha = vocab.save(out / "vocab.json")
    lines = [json.dumps({"file": f, "line": n, "reason": r}) for f, n, r in parsed.rejections]
    atomic_write_bytes(out / "rejected.jsonl", ("\n".join(lines) + ("\n" if lines else "")).encode())

    splits = Counter(s.split for s in parsed.sessions if s.chunk == 0)
    labels = Counter((s.split, s.label) for s in parsed.sessions if s.chunk == 0)
    acct = parsed.account.as_dict()
    if not parsed.account.reconciles():  # an invariant: a bug if it ever fires
        raise RuntimeError(f"line accounting does not reconcile: {acct}")
    shard_hashes = "".join(sha256_file(p) for p in shards)
    summary = {
        "dataset": data.name, "format": data.format, "inputs": list(data.inputs), "lines": acct,
        "events": len(parsed.events), "sessions": len({s.session_id for s in parsed.sessions}),
        "session_rows": len(parsed.sessions), "sessions_split": sum(1 for s in parsed.sessions if s.chunk == 1),
        "sessions_by_split": dict(splits),
        "labels_by_split": {f"{k[0]}/{k[1]}": v for k, v in sorted(labels.items())},
        "session_pause_s": session_pauses(parsed), "templates_mined": len(vocab.miner.templates), "vocab_size": vocab.size, "vocab_sha256": vocab_sha,
        # identifies the model-visible data: every token shard plus the vocabulary
        "data_sha256": hashlib.sha256((shard_hashes + vocab_sha).encode()).hexdigest(),
        **extra,
    }
    write_manifest(out, {"summary": summary})
    return summary


def prepared_dir(root: str | Path, name: str) -> Path:
    return Path(root).resolve() / "data" / name


# DataConfig keys that do not change what prepare writes (how results are reported)
NOT_INGEST_KEYS = ("eval_unit", "eval_pair_window_s", "spill_partitions")


# bumped whenever what a prepared folder holds changes (2: events.parquet gains the flows' `fields`; 3:
# prepared out of core, templates mined in a canonical order), so a
# folder written by an older LogLM is prepared again instead of read as if it were current
PREPARED_LAYOUT = 3


def ingest_fingerprint(cfg) -> dict:
    """What a prepared folder is made from: the data and tokenizer settings, and each input file's path,
    size and modification time (as `make` judges staleness; contents are not re-read)."""
    import dataclasses


    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in NOT_INGEST_KEYS}
    tokenizer = dataclasses.asdict(cfg.tokenizer)
    if not tokenizer.get("time_resolution_s"):  # unset: folders prepared before the setting existed stay fresh
        tokenizer.pop("time_resolution_s", None)
    config = {"data": data, "tokenizer": tokenizer, "layout": PREPARED_LAYOUT}
    files = {}
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
    return {"config": config, "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str)
                                                              .encode()).hexdigest(), "files": files}


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
    now = ingest_fingerprint(cfg)
    if recorded["config"].get("layout", 1) != PREPARED_LAYOUT:
        return f"{data_dir} was prepared by another LogLM version (layout {recorded['config'].get('layout', 1)}, now {PREPARED_LAYOUT})"
    if now["config_sha256"] != recorded["config_sha256"]:
        keys = _diff_keys(recorded["config"], now["config"])
        return f"settings changed since {data_dir} was prepared: {', '.join(keys[:6]) or 'config'}"
    if now["files"] != recorded["files"]:
        changed = sorted(f for f in set(now["files"]) | set(recorded["files"])
                         if now["files"].get(f) != recorded["files"].get(f))
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
            return run_in_memory(cfg, out, fingerprint, t0)
        except Stopped as e:
            print(f"loglm: prepare stopped by {signal.Signals(e.signum).name}: its workers were ended and its "
                  f"partial folder removed; nothing was written to {out}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None


def run_in_memory(cfg, out: Path, fingerprint: dict, t0: float) -> dict:
    """Pre-sequenced formats (:data:`loglm.ingest.builders.BUILDERS`), built in memory, written beside
    ``out`` and swapped in when complete."""
    from loglm.ingest import builders

    data: DataConfig = cfg.data
    parsed, miner = builders.BUILDERS[data.format](data)
    if parsed.account.accepted == 0:
        f, n, reason = parsed.rejections[0] if parsed.rejections else ("?", 0, "no lines")
        raise ValueError(f"no line of {list(data.inputs)} was accepted with data.format={data.format!r}; "
                         f"first rejection: {f}:{n}: {reason}")
    if data.train_normal_only:
        # anomalous training sessions are held out of training entirely (they are never test items either)
        for s in parsed.sessions:
            if s.split == "train" and s.label == 1:
                s.split = "train_heldout_anomalous"
    vocab = build_vocab(miner, parsed.sessions, parsed.events, cfg.tokenizer)
    elapsed = time.perf_counter() - t0
    summary = write_prepared_in_place(out, parsed, vocab, data, {
        "seconds": round(elapsed, 3), "backend": "local", "train_events_skipped_unlabelled": 0,
        "fingerprint": fingerprint, "lines_per_s": round(parsed.account.read / max(elapsed, 1e-9), 1),
        "path": str(out)})
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
