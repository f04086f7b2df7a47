"""Parsed events grouped into sessions: per entity (HDFS block id) or per time window (BGL)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
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

    def __len__(self) -> int:
        return len(self.ts)


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
        return [datetime.fromtimestamp(int(ts // cfg.window_s) * cfg.window_s, UTC).isoformat()]
    raise ValueError(f"data.session.by must be 'entity' or 'window', got {cfg.by!r}")


def sessionize(events: Events, cfg: SessionConfig, account: LineAccount,
               rejections: list[tuple[str, int, str]]) -> list[Session]:
    """Group events; a line without a session key is counted as rejected (never silently dropped)."""
    groups: dict[str, list[int]] = {}
    for i in range(len(events)):
        keys = session_keys(events.entities[i], events.ts[i], cfg)
        if not keys:
            account.accepted -= 1
            reason = f"no {cfg.entity_type} in line: cannot assign a session"
            account.reject(reason)
            rejections.append((events.source[i], events.line_no[i], reason))
            continue
        for key in keys:
            groups.setdefault(key, []).append(i)

    entity_type = cfg.entity_type if cfg.by == "entity" else "window"
    input_end = max(events.ts) if len(events) else 0.0
    sessions = []
    for key, idx in groups.items():
        idx.sort(key=lambda j: (events.ts[j], j))
        if cfg.by == "window":
            closed = int(events.ts[idx[0]] // cfg.window_s) * cfg.window_s + cfg.window_s <= input_end
        else:
            closed = cfg.idle_close_s <= 0 or events.ts[idx[-1]] <= input_end - cfg.idle_close_s
        for c in range(0, len(idx), cfg.max_events):
            last = c + cfg.max_events >= len(idx)
            sessions.append(Session(key, entity_type, key, idx[c:c + cfg.max_events], chunk=c // cfg.max_events,
                                    closed=closed and last))
    return sessions


def label_sessions(sessions: list[Session], events: Events, anomalous_ids: set[str] | None) -> None:
    """Entity lists label whole sessions; per-line labels (BGL: anything but '-') label any window they touch."""
    by_id: dict[str, int] = {}
    for s in sessions:
        if anomalous_ids is not None:
            lab = int(s.entity in anomalous_ids)
        elif events.label[s.event_idx[0]] is not None:
            lab = int(any(events.label[j] not in (None, "-") for j in s.event_idx))
        else:
            lab = -1
        by_id[s.session_id] = max(by_id.get(s.session_id, -1), lab)
    for s in sessions:  # every chunk carries its session's label
        s.label = by_id[s.session_id]


def assign_splits(sessions: list[Session], events: Events, cfg: SplitConfig) -> None:
    """Session-disjoint split; all chunks of a session share it.

    chronological: sessions ordered by first timestamp, earliest train_frac train, next val_frac val, rest test.
    seeded: a stable hash of (seed, session id) decides, independent of input order.
    """
    firsts: dict[str, tuple[float, str]] = {}
    for s in sessions:
        t = s.start(events)
        if s.session_id not in firsts or t < firsts[s.session_id][0]:
            firsts[s.session_id] = (t, s.session_id)
    if cfg.method == "chronological":
        order = sorted(firsts.values())
        rank = {sid: r / max(1, len(order)) for r, (_, sid) in enumerate(order)}
    elif cfg.method == "seeded":
        rank = {sid: int(hashlib.sha256(f"{cfg.seed}:{sid}".encode()).hexdigest()[:12], 16) / 16**12 for sid in firsts}
    else:
        raise ValueError(f"data.split.method must be 'chronological' or 'seeded', got {cfg.method!r}")
    for s in sessions:
        r = rank[s.session_id]
        s.split = "train" if r < cfg.train_frac else "val" if r < cfg.train_frac + cfg.val_frac else "test"
