"""Dataset builders for inputs that are already event sequences (no raw lines to parse).

``hdfs_blocks``: ``blk_<id>,<event ids>`` lines (loghub numbering) from a normal file and an abnormal file:
normal blocks are split session-disjointly by a seeded hash of the block id (train / val / test by
data.split fractions); every abnormal block is a test item (anomalies are never trained on).

``id_sequences``: ``<sequence id>,<event ids>`` files (the AIT collection: OpenStack and others) with the
``openstack`` protocol of EVAL_PROTOCOLS.md: inputs = [train, test_normal, test_abnormal, templates];
train = the train file (normal); validation normal = a seeded ``data.split.val_frac`` of test_normal,
removed from the test set; test = the rest of test_normal plus every test_abnormal sequence.

``hdfs_keys``: the DeepLog/logdeep HDFS log-key sessions with the fixed ``hdfs_keys`` protocol of
EVAL_PROTOCOLS.md: train = ``hdfs_train`` (normal), validation = a seeded 10% of it, test = label-0 rows
of ``robust_log_train.csv``/``robust_log_valid.csv`` plus every session of ``hdfs_test_abnormal``.

Each format is a generator of :class:`Sequence` (one per accepted line, rejected lines counted in the
account and its rejections as they are met) over its fixed templates file: ``pipelines.prepare`` reads it
twice, once for the vocabulary and once to write shards, and never holds the corpus
(:func:`loglm.ingest.prepare.run_sequences`).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loglm.config import DataConfig
from loglm.ingest.readers import LineAccount
from loglm.ingest.sessions import Events, Session
from loglm.ingest.templates import Template, TemplateMiner


@dataclass
class Sequence:
    """One accepted line of a pre-sequenced file: its event keys (1-based template numbers), label and split."""

    source: str
    line_no: int
    sid: str
    keys: list[int]
    label: int
    split: str
    entity_type: str = "session"


# a format's reader: sequences(account, rejections) yields the accepted lines, counting the rejected ones
# (each format in BUILDERS is data config -> (template miner, its reader))
Sequences = Callable[[LineAccount, list], Iterator[Sequence]]


def _templates_miner(templates_csv: Path) -> TemplateMiner:
    miner = TemplateMiner(sim_threshold=1.0)
    for i, line in enumerate(templates_csv.read_text().splitlines()):
        miner.templates.append(Template(i, line.replace("<*>", " <*> ").split()))
    return miner


def _keys(account: LineAccount, rejections: list, source: str, line_no: int, keys_text: str,
          n_templates: int) -> list[int] | None:
    """A line's event keys, or None when it is rejected (counted as read either way)."""
    account.read += 1
    try:
        keys = [int(k) for k in keys_text.split()]
    except ValueError:
        keys = []
    if not keys or min(keys) < 1 or max(keys) > n_templates:
        account.reject("bad key sequence")
        rejections.append((source, line_no, f"bad key sequence: {keys_text[:60]!r}"))
        return None
    account.accepted += 1
    return keys


def add_sequence(ev: Events, sessions: list[Session], seq: Sequence, max_events: int) -> None:
    """A sequence's events (at the end of ``ev``) and its session rows, cut into chunks of ``max_events``."""
    start = len(ev.ts)
    for k in seq.keys:
        ev.source.append(seq.source)
        ev.line_no.append(seq.line_no)
        ev.ts.append(0.0)
        ev.template.append(k - 1)
        ev.masked.append(f"E{k}")
        ev.raw.append(f"E{k}")
        ev.entities.append({seq.entity_type: [seq.sid]})
        ev.label.append(None)
    idx = list(range(start, len(ev.ts)))
    for c in range(0, len(idx), max_events):
        sessions.append(Session(seq.sid, seq.entity_type, seq.sid, idx[c:c + max_events], chunk=c // max_events,
                                label=seq.label, split=seq.split, closed=c + max_events >= len(idx)))


def _text_lines(path: Path, account: LineAccount, rejections: list):
    """(line number, text) of every decodable line; undecodable ones are counted as rejected here."""
    from loglm.ingest.readers import open_binary

    with open_binary(path) as fh:
        for n, raw in enumerate(fh, 1):
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                account.read += 1
                account.reject(f"undecodable bytes: {e.reason}")
                rejections.append((str(path), n, f"undecodable bytes: {e.reason} at byte {e.start}"))


def hdfs_keys(data: DataConfig) -> tuple[TemplateMiner, Sequences]:
    keys_dir, templates_csv = (Path(p) for p in data.inputs)
    miner = _templates_miner(templates_csv)
    n_tpl = len(miner.templates)

    def val_or_train(line_no: int) -> str:
        h = int(hashlib.sha256(f"{data.split.seed}:{line_no}".encode()).hexdigest()[:12], 16) / 16**12
        return "val" if h < data.split.val_frac else "train"

    def sequences(account: LineAccount, rejections: list) -> Iterator[Sequence]:
        src = str(keys_dir / "hdfs_train")
        for n, line in _text_lines(Path(src), account, rejections):
            if (keys := _keys(account, rejections, src, n, line, n_tpl)) is not None:
                yield Sequence(src, n, f"train-{n}", keys, 0, val_or_train(n))
        for name in ("robust_log_train.csv", "robust_log_valid.csv"):
            src = str(keys_dir / name)
            for n, line in _text_lines(Path(src), account, rejections):
                if n == 1:  # header "Sequence,label"
                    account.read += 1
                    account.reject("header row")
                    rejections.append((src, n, "header row"))
                    continue
                try:
                    row, bad = next(csv.reader([line]), []), ""
                except csv.Error as e:  # e.g. a lone carriage return inside the line
                    row, bad = [], f"malformed CSV: {e}"
                if bad or len(row) != 2 or row[1].strip() not in ("0", "1"):
                    account.read += 1
                    reason = bad or f"wrong column count or label: {len(row)} columns"
                    account.reject(reason)
                    rejections.append((src, n, reason))
                elif row[1].strip() != "0":
                    # anomalies come from hdfs_test_abnormal, which holds all of them
                    account.read += 1
                    account.reject("excluded by the hdfs_keys protocol: anomalous LogRobust row")
                    rejections.append((src, n, "excluded by the hdfs_keys protocol: anomalous LogRobust row"))
                elif (keys := _keys(account, rejections, src, n, row[0], n_tpl)) is not None:
                    yield Sequence(src, n, f"{name}-{n}", keys, 0, "test")
        src = str(keys_dir / "hdfs_test_abnormal")
        for n, line in _text_lines(Path(src), account, rejections):
            if (keys := _keys(account, rejections, src, n, line, n_tpl)) is not None:
                yield Sequence(src, n, f"abnormal-{n}", keys, 1, "test")

    return miner, sequences


def _seeded_split(seed: int, key: str, train_frac: float, val_frac: float) -> str:
    h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12
    return "train" if h < train_frac else "val" if h < train_frac + val_frac else "test"


def hdfs_blocks(data: DataConfig) -> tuple[TemplateMiner, Sequences]:
    normal, abnormal, templates_csv = (Path(p) for p in data.inputs)
    miner = _templates_miner(templates_csv)
    n_tpl = len(miner.templates)

    def sequences(account: LineAccount, rejections: list) -> Iterator[Sequence]:
        for path, label in ((normal, 0), (abnormal, 1)):
            for n, line in _text_lines(path, account, rejections):
                blk, _, text = line.strip().partition(",")
                if (keys := _keys(account, rejections, str(path), n, text, n_tpl)) is not None:
                    split = "test" if label else _seeded_split(data.split.seed, blk, data.split.train_frac,
                                                               data.split.val_frac)
                    yield Sequence(str(path), n, blk, keys, label, split, "block_id")

    return miner, sequences


def id_sequences(data: DataConfig) -> tuple[TemplateMiner, Sequences]:
    if len(data.inputs) != 4:
        raise ValueError("format id_sequences takes inputs=[train, test_normal, test_abnormal, templates.csv]")
    train, normal, abnormal, templates_csv = (Path(p) for p in data.inputs)
    miner = _templates_miner(templates_csv)
    n_tpl = len(miner.templates)

    def sequences(account: LineAccount, rejections: list) -> Iterator[Sequence]:
        for path, label in ((train, 0), (normal, 0), (abnormal, 1)):
            src = str(path)
            for n, line in _text_lines(path, account, rejections):
                sid, sep, text = line.partition(",")
                if not sep or not sid.strip():
                    account.read += 1
                    account.reject("not '<sequence id>,<event ids>'")
                    rejections.append((src, n, "not '<sequence id>,<event ids>'"))
                    continue
                if path is train:
                    split = "train"
                elif path is normal:
                    split = "val" if _seeded_split(data.split.seed, sid, data.split.val_frac, 0.0) == "train" else "test"
                else:
                    split = "test"
                if (keys := _keys(account, rejections, src, n, text, n_tpl)) is not None:
                    yield Sequence(src, n, f"{path.name}:{sid.strip()}", keys, label, split, "sequence")

    return miner, sequences


BUILDERS = {"hdfs_keys": hdfs_keys, "hdfs_blocks": hdfs_blocks, "id_sequences": id_sequences}
