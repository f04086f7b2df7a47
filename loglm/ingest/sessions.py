"""Parsed events grouped into sessions: per entity (HDFS block id) or per time window (BGL)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime

from loglm.config import SessionConfig, SplitConfig
from loglm.ingest.readers import LineAccount


@dataclass
class Events:
    """Accepted lines, column-wise; index i is the event's id within one prepared dataset."""

    source: list[str] = field(default_factory=list)
    line_no: list[int] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    template: list[int] = field(default_factory=list)  # -1 = template unseen by a frozen miner
    masked: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    entities: list[dict[str, list[str]]] = field(default_factory=list)
    label: list[str | None] = field(default_factory=list)
    # canonical fields of structured records (flows), None for text lines; flows get their template once
    # the flow codec is fitted (loglm.ingest.flows)
    fields: list[dict | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def drop(self, rejected: set[int]) -> list[int]:
        """Remove the events at ``rejected`` (lines rejected after they were read) in place; returns the new
        index of every old one (-1 where removed), so no rejected line stays among the events."""
        new_of, n = [], 0
        for i in range(len(self)):
            new_of.append(-1 if i in rejected else n)
            n += i not in rejected
        for f in fields(self):
            column = getattr(self, f.name)
            if len(column) == len(new_of):
                setattr(self, f.name, [v for i, v in enumerate(column) if i not in rejected])
        return new_of


@dataclass
class Session:
    session_id: str
    entity_type: str
    entity: str
    event_idx: list[int]
    chunk: int = 0
    closed: bool = True  # the session ended inside the input ([END] is appended when scoring)
    label: int = -1  # -1 unknown, 0 normal, 1 anomalous
    split: str = "unassigned"

    def start(self, events: Events) -> float:
        return events.ts[self.event_idx[0]]

    def end(self, events: Events) -> float:
        return events.ts[self.event_idx[-1]]


def session_keys(entities: dict[str, list[str]], ts: float, cfg: SessionConfig) -> list[str]:
    """The sessions an event belongs to: its entity values (entity mode) or its time window; [] = none."""
    if cfg.by == "entity":
        return entities.get(cfg.entity_type) or []
    if cfg.by == "window":
        return [_window(ts, cfg.window_s)]
    if cfg.by == "entity_window":
        return [f"{v}@{_window(ts, cfg.window_s)}" for v in entities.get(cfg.entity_type) or []]
    if cfg.by in ("event", "count"):  # keyed by the caller (line position, arrival order), not by the event
        raise ValueError(f"data.session.by={cfg.by!r} sessions are keyed by their caller, not session_keys")
    raise ValueError(f"data.session.by must be 'entity', 'window', 'entity_window', 'event' or 'count', got {cfg.by!r}")


def _window(ts: float, window_s: float) -> str:
    start = int(ts // window_s) * window_s
    try:
        return datetime.fromtimestamp(start, UTC).isoformat()
    except (ValueError, OverflowError, OSError):  # a window starting before year 1 (0001-01-01 and a week span)
        return f"t{start:.0f}"


def is_closed(cfg: SessionConfig, first_ts: float, last_ts: float, input_end: float) -> bool:
    """Whether a session ended inside the input (it gets [END]): events and counted windows always; a time
    window once its span has elapsed before the input's last event; an entity once it has been quiet for
    ``idle_close_s`` before that (0: always).  Batch, out-of-core prepare and the end of a stream share it."""
    if cfg.by in ("event", "count"):
        return True
    if cfg.by in ("window", "entity_window"):
        return int(first_ts // cfg.window_s) * cfg.window_s + cfg.window_s <= input_end
    return cfg.idle_close_s <= 0 or last_ts <= input_end - cfg.idle_close_s


def sessionize(events: Events, cfg: SessionConfig, account: LineAccount,
               rejections: list[tuple[str, int, str]]) -> list[Session]:
    """Group events; a line without a session key is counted as rejected (never silently dropped)."""
    groups: dict[str, list[int]] = {}
    if cfg.by == "count":  # consecutive windows of window_events events in time order
        order = sorted(range(len(events)), key=lambda j: (events.ts[j], j))
        for r, i in enumerate(order):
            groups.setdefault(f"w{r // cfg.window_events:08d}", []).append(i)
    keyless: set[int] = set()
    for i in range(len(events) if cfg.by != "count" else 0):
        if cfg.by == "event":
            groups[f"{events.source[i]}:{events.line_no[i]}"] = [i]
            continue
        keys = session_keys(events.entities[i], events.ts[i], cfg)
        if not keys:
            account.accepted -= 1
            reason = f"no {cfg.entity_type} in line: cannot assign a session"
            account.reject(reason)
            rejections.append((events.source[i], events.line_no[i], reason))
            keyless.add(i)
            continue
        for key in keys:
            groups.setdefault(key, []).append(i)
    if keyless:  # a rejected line is not an event: events = accepted lines, in events.parquet too
        new_of = events.drop(keyless)
        groups = {k: [new_of[i] for i in idx] for k, idx in groups.items()}

    entity_type = {"entity": cfg.entity_type, "entity_window": cfg.entity_type, "event": "event",
                   "count": "window"}.get(cfg.by, "window")
    input_end = max(events.ts) if len(events) else 0.0
    sessions = []
    for key, idx in groups.items():
        idx.sort(key=lambda j: (events.ts[j], j))
        closed = is_closed(cfg, events.ts[idx[0]], events.ts[idx[-1]], input_end)
        for c in range(0, len(idx), cfg.max_events):
            last = c + cfg.max_events >= len(idx)
            entity = key.split("@", 1)[0] if cfg.by == "entity_window" else key
            sessions.append(Session(key, entity_type, entity, idx[c:c + cfg.max_events], chunk=c // cfg.max_events,
                                    closed=closed and last))
    return sessions


def event_label(label: str | None, normal: set[str], unknown: set[str]) -> int:
    """1 anomalous, 0 normal, -1 not labelled (no label, or a label meaning "unknown")."""
    if label is None or label in unknown:
        return -1
    return 0 if label in normal else 1


def label_sessions(sessions: list[Session], events: Events, anomalous_ids: set[str] | None,
                   normal_labels=("-",), unknown_labels=()) -> set[str]:
    """Entity lists label whole sessions; per-line labels label any session they touch: anomalous if any
    event is, normal if all its events are labelled normal, else unknown (-1).

    Returns the ids of sessions holding events labelled "unknown" (they are kept out of training).
    """
    normal, unknown = set(normal_labels), set(unknown_labels)
    by_id: dict[str, int] = {}
    partly_unknown: set[str] = set()
    for s in sessions:
        if anomalous_ids is not None:
            lab = int(s.entity in anomalous_ids)
        elif all(events.label[j] is None for j in s.event_idx):
            lab = -1
        else:
            labs = [event_label(events.label[j], normal, unknown) for j in s.event_idx]
            lab = 1 if 1 in labs else -1 if -1 in labs else 0
            if -1 in labs:
                partly_unknown.add(s.session_id)
        by_id[s.session_id] = max(by_id.get(s.session_id, -1), lab)
    for s in sessions:  # every chunk carries its session's label
        s.label = by_id[s.session_id]
    return partly_unknown


def skip_unlabelled_events(sessions: list[Session], events: Events, session_ids: set[str],
                           unknown_labels=()) -> int:
    """Training rule for sessions that mix labelled and unlabelled events (a Zeek window holding one
    `Background` flow beside Benign ones): the unlabelled events are skipped and the labelled rest trains,
    instead of the whole window being thrown away.  A chunk left empty is held out
    (``train_heldout_unlabelled``).  Only sessions in ``session_ids`` (training, not anomalous) are touched;
    validation and test keep every event (unlabelled traffic is part of what is scored).  Returns the
    number of events skipped."""
    unknown = set(unknown_labels)
    skipped = 0
    for s in sessions:
        if s.session_id not in session_ids:
            continue
        keep = [j for j in s.event_idx if events.label[j] is not None and events.label[j] not in unknown]
        skipped += len(s.event_idx) - len(keep)
        if keep:
            s.event_idx, s.label = keep, 0
        else:
            s.split = "train_heldout_unlabelled"
    return skipped


def test_cut(cfg: SplitConfig) -> float | None:
    """``split.test_from`` as epoch seconds (None when not set); a value that is not a time is an error."""
    if not cfg.test_from:
        return None
    from loglm.ingest.formats import time_parser

    try:
        return time_parser("iso")(str(cfg.test_from))
    except (ValueError, OverflowError):
        raise ValueError(f"data.split.test_from must be an ISO 8601 time, got {cfg.test_from!r}") from None


def assign_splits(sessions: list[Session], events: Events, cfg: SplitConfig, _within: list[int] | None = None) -> None:
    """Session-disjoint split; all chunks of a session share it.

    chronological: sessions ordered by first timestamp, earliest train_frac train, next val_frac val, rest test.
    seeded: a stable hash of (seed, session id) decides, independent of input order.
    per_input: each input's sessions (by the input of a session's first event) are split on their own.
    """
    if cfg.per_input:
        source_of = {}
        for s in sessions:  # a session's input: that of its earliest event, the same for all its chunks
            j = s.event_idx[0]
            if s.session_id not in source_of or (events.ts[j], j) < source_of[s.session_id][0]:
                source_of[s.session_id] = ((events.ts[j], j), events.source[j])
        groups: dict[str, list[Session]] = {}
        for s in sessions:
            groups.setdefault(source_of[s.session_id][1], []).append(s)
        for source, group in groups.items():
            within = None if _within is None else [j for j in _within if events.source[j] == source]
            if within is None and cfg.method == "chronological_events":
                within = [j for j in range(len(events)) if events.source[j] == source]
            assign_splits(group, events, replace(cfg, per_input=False), _within=within)
        return
    cut = test_cut(cfg)
    firsts: dict[str, tuple[float, str]] = {}
    for s in sessions:
        t = s.start(events)
        if s.session_id not in firsts or t < firsts[s.session_id][0]:
            firsts[s.session_id] = (t, s.session_id)
    if cut is not None:  # sessions from the cut on are test; the fractions divide what comes before it
        after = {sid for sid, (t, _) in firsts.items() if t >= cut}
        before = [s for s in sessions if s.session_id not in after]
        assign_splits(before, events, replace(cfg, test_from=None), _within=[j for s in before for j in s.event_idx])
        for s in sessions:
            if s.session_id in after:
                s.split = "test"
        return
    if cfg.method == "chronological":
        order = sorted(firsts.values())
        rank = {sid: r / max(1, len(order)) for r, (_, sid) in enumerate(order)}
    elif cfg.method == "chronological_events":
        order = sorted(range(len(events)) if _within is None else _within, key=lambda j: (events.ts[j], j))
        pos = {j: r / max(1, len(order)) for r, j in enumerate(order)}
        rank = {}
        for s in sessions:
            r = pos[s.event_idx[0]]
            rank[s.session_id] = min(rank.get(s.session_id, r), r)
    elif cfg.method == "chronological_time":
        t0 = min((t for t, _ in firsts.values()), default=0.0)
        t1 = max((events.ts[s.event_idx[-1]] for s in sessions), default=t0)
        rank = {sid: (t - t0) / max(t1 - t0, 1e-9) for sid, (t, _) in firsts.items()}
    elif cfg.method == "seeded":
        rank = {sid: int(hashlib.sha256(f"{cfg.seed}:{sid}".encode()).hexdigest()[:12], 16) / 16**12 for sid in firsts}
    else:
        raise ValueError("data.split.method must be 'chronological', 'chronological_events', "
                         "'chronological_time' or 'seeded', "
                         f"got {cfg.method!r}")
    for s in sessions:
        r = rank[s.session_id]
        s.split = "train" if r < cfg.train_frac else "val" if r < cfg.train_frac + cfg.val_frac else "test"
