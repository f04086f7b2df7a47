"""Alerts: one JSON object per anomalous session, with the evidence an analyst needs to judge it."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from loglm.detect.score_core import WindowScores
from loglm.ingest.templates import namespace_in, shown
from loglm.vocab import UNK, Vocabulary


def iso(ts: float) -> str:
    return datetime.fromtimestamp(float(ts), UTC).isoformat().replace("+00:00", "Z")


SEVERITIES = ("low", "medium", "high", "critical")


def severity(score: float, threshold: float) -> str:
    """Legacy rule for calibrations without the validation tail: the margin over the threshold in units of
    the threshold (misleading when the threshold is tiny: any miss then reads "critical")."""
    margin = score - threshold
    scale = max(abs(threshold), 1e-6)
    if margin > 2 * scale:
        return "critical"
    if margin > scale:
        return "high"
    if margin > 0.25 * scale:
        return "medium"
    return "low"


def severity_rule(calibration: dict | None, threshold: float) -> Callable[[float, int], str]:
    """(score, unexpected events) -> severity, from how rare the score is among the **normal validation**
    items the threshold was calibrated on (``val_top_scores``, their highest scores):

    - low: above the threshold, and more than a quarter of the FPR budget of normal items scored as high;
    - medium: fewer normal items (but at least one) scored as high;
    - high: higher than every normal validation item;
    - critical: higher than every normal validation item, with at least 2 unexpected events.

    So severity reads the same whatever the score's scale (a miss ratio, nats of surprisal).  Where alerts have
    their own unit (``alert_val_top_scores``: items are flows, an alert is a session), rarity is among the
    normal validation sessions, the unit an alert is."""
    cal = calibration or {}
    own = "alert_val_top_scores" in cal
    tail = cal.get("alert_val_top_scores" if own else "val_top_scores")
    if not tail:
        return lambda score, n_unexpected: severity(score, threshold)
    import numpy as np

    ascending = np.sort(np.asarray(tail, np.float64))
    n = int(cal["alert_n_val_sessions" if own else "n_val_sessions"])
    budget = max(1.0, float(cal["target_fpr"]) * n)

    def rule(score: float, n_unexpected: int) -> str:
        as_high = len(ascending) - int(np.searchsorted(ascending, score, "left"))  # normal items scoring >= score
        if as_high == 0:
            return "critical" if n_unexpected >= 2 else "high"
        return "medium" if as_high <= budget / 4 else "low"

    return rule


def build_alerts(table, ws: WindowScores, event: Callable[[int], dict], vocab: Vocabulary, threshold: float,
                 evidence_events: int, model_info: dict, calibration: dict | None = None) -> list[dict]:
    """Group chunk rows by session; a session alerts when its max chunk score exceeds the threshold.
    ``calibration`` (the model's) sets severities by rarity among normal validation items."""
    rate = severity_rule(calibration, threshold)
    sids = table.column("session_id").to_pylist()
    rows_of: dict[str, list[int]] = {}
    for r, sid in enumerate(sids):
        rows_of.setdefault(sid, []).append(r)
    tokens = table.column("tokens").to_pylist()
    event_idx = table.column("event_idx").to_pylist()
    labels = table.column("label").to_pylist()
    etype = table.column("entity_type").to_pylist()
    entity = table.column("entity").to_pylist()
    session_score = {sid: max(float(ws.score[r]) for r in rows) for sid, rows in rows_of.items()}
    alerting = {sid: rows for sid, rows in rows_of.items() if session_score[sid] > threshold}
    if hasattr(event, "prefetch"):  # a lookup on disk: the alerting sessions' events in one ordered pass
        event.prefetch(j for rows in alerting.values() for r in rows for j in event_idx[r])
    alerts = []
    for sid, rows in alerting.items():
        score = session_score[sid]
        cands = []  # (surprisal, row, position)
        for r in rows:
            for p, s in enumerate(ws.surprisal[r]):
                cands.append((float(s), r, p))
        cands.sort(key=lambda c: -c[0])
        evidence = []
        for s, r, p in cands[:evidence_events]:
            expected = [{"template": vocab.token_text(int(t)), "p": round(float(pp), 4)}
                        for t, pp in zip(ws.expected[r][p], ws.expected_p[r][p]) if pp > 0]
            position = int(sum(len(tokens[q]) for q in rows if q < r) + p)
            if p >= len(event_idx[r]):  # the [END] position: the session stopped where the model did not expect
                last = event(event_idx[r][-1])
                evidence.append({"position": position, "time": iso(last["ts"]), "file": last["source"],
                                 "line": int(last["line_no"]), "raw": None, "template": "[END] (session ends here)",
                                 "known_event": True, "surprisal": round(s, 4),
                                 "rank": int(min(ws.rank[r][p], 1 << 30)), "expected": expected})
                continue
            ev = event(event_idx[r][p])
            tok = tokens[r][p]
            tid = ev["template"]
            tpl = vocab.miner.templates[tid].text if tid is not None and tid >= 0 else shown(ev.get("masked", ""))
            evidence.append({
                "position": position, "time": iso(ev["ts"]), "file": ev["source"], "line": int(ev["line_no"]),
                "raw": ev["raw"], "template": tpl, "known_event": tok != UNK, "surprisal": round(s, 4),
                # an event type training never saw has no rank among the model's predictions
                "rank": None if tok == UNK else int(min(ws.rank[r][p], 1 << 30)), "expected": expected,
                # the program that wrote it, where it is part of the event (data.event_fields)
                **({"program": program} if (program := namespace_in(ev.get("masked") or "")) else {}),
            })
        evidence.sort(key=lambda e: e["position"])
        ents: dict[str, list[str]] = {}
        starts, ends = [], []
        ports: Counter = Counter()
        for r in rows:
            idx = event_idx[r]
            first, last = event(idx[0]), event(idx[-1])
            starts.append(first["ts"])
            ends.append(last["ts"])
            for j in idx:
                e = event(j)
                for kind, values in e["entities"].items():
                    bucket = ents.setdefault(kind, [])
                    bucket.extend(v for v in values if v not in bucket)
                if e.get("fields") and e["fields"].get("dst_port") is not None:
                    ports[f"{e['fields'].get('proto') or 'na'}/{e['fields']['dst_port']}"] += 1
        n_events = int(sum(len(tokens[r]) for r in rows))
        # n_miss counts scored positions, the closing [END] among them: an early or late end is reported apart
        ends_early = ws.end_miss is not None and bool(any(ws.end_miss[r] for r in rows))
        # closed with fewer events than every closed normal training window (detect.short_alarm)
        shorter = ws.shorter is not None and bool(any(ws.shorter[r] for r in rows))
        n_miss = int(sum(int(ws.n_miss[r]) - int(ws.end_miss is not None and ws.end_miss[r]) for r in rows))
        alert = {
            "alert_id": hashlib.sha256(f"{model_info.get('run_id')}|{sid}".encode()).hexdigest()[:16],
            "time": iso(max(ends)), "severity": rate(score, n_miss + (ends_early or shorter)),
            "title": f"Unusual event sequence for {etype[rows[0]]} {entity[rows[0]]}",
            "session_id": sid, "entity": {"type": etype[rows[0]], "value": entity[rows[0]]},
            "score": round(score, 6), "threshold": round(threshold, 6),
            "start_time": iso(min(starts)), "end_time": iso(max(ends)), "n_events": n_events,
            "n_unexpected_events": n_miss, "unexpected_end": ends_early or shorter,
            "shorter_than_training": shorter, "entities": ents,
            # flows: events per destination service (protocol/port), most frequent first
            **({"services": dict(ports.most_common(10))} if ports else {}),
            "surprising_events": evidence, "model": model_info,
        }
        if labels[rows[0]] is not None and labels[rows[0]] >= 0:
            alert["label"] = int(labels[rows[0]])
        alerts.append(alert)
    alerts.sort(key=lambda a: -a["score"])
    return alerts


class LineSpill:
    """JSON lines appended to a work file, each with a sort key held in memory (and its place in the file):
    read back in key order without holding the objects (alerts and findings of a large batch detection)."""

    def __init__(self, path: Path):
        self.fh = open(path, "w+b")
        self.rows: list[tuple] = []  # (key, offset, length)
        self._order: list[tuple] | None = None

    def add(self, key: tuple, obj: dict) -> None:
        line = (json.dumps(obj, sort_keys=False) + "\n").encode()
        self.fh.seek(0, 2)
        self.rows.append((key, self.fh.tell(), len(line)))
        self.fh.write(line)
        self._order = None

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, row: tuple) -> bytes:
        self.fh.seek(row[1])
        return self.fh.read(row[2])

    def ordered(self) -> list[tuple]:
        """The rows by key (sorted once until something is added)."""
        if self._order is None:
            self._order = sorted(self.rows, key=lambda r: r[0])
        return self._order

    def lines(self):
        """Each line in key order, the bytes written (nothing is parsed)."""
        for row in self.ordered():
            yield self.read(row)

    def close(self) -> None:
        self.fh.close()


class AlertSpill(LineSpill):
    """Batch detection's alerts, written to ``path`` (a work file) as each piece produces them, ordered by
    score, then start time, then session.  What stays in memory is one small index row per alert: an alert
    with its evidence is about 15 KB as a Python dict, so holding every alert of a large input until the end
    made detection's memory grow with the input.  The alerts file, the grouped findings and the report's top
    alerts are written in their final order from the file."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.vectors = open(Path(path).with_suffix(".vectors.jsonl"), "w+b")  # loglm.analyst.alert_vectors

    def add_alerts(self, alerts: list[dict]) -> None:
        from loglm.analyst.alert_vectors import take

        self.vectors.write(b"".join((json.dumps(r) + "\n").encode() for r in take(alerts)))
        for a in alerts:  # key: (-score, start, session, entity type, entity value)
            self.add((-a["score"], a["start_time"], a["session_id"], a["entity"]["type"], a["entity"]["value"]), a)

    def vector_lines(self):
        """The alerts' vector rows, in the order the pieces came (each row names its alert)."""
        self.vectors.flush()
        self.vectors.seek(0)
        yield from self.vectors

    def close(self) -> None:
        super().close()
        self.vectors.close()

    def top(self, n: int) -> list[dict]:
        return [json.loads(self.read(r)) for r in self.ordered()[:n]]

    def by_entity(self):
        """(entity type, value, that entity's alerts by start time), entities in the order their first alert
        comes in the alerts' order, each entity's alerts read when it comes (what findings group)."""
        rank: dict[tuple[str, str], int] = {}
        for r in self.ordered():
            rank.setdefault(r[0][3:5], len(rank))
        # stable: equal start times keep the alerts' order
        order = sorted(self.ordered(), key=lambda r: (rank[r[0][3:5]], r[0][1]))
        start = 0
        while start < len(order):
            end = start
            while end < len(order) and order[end][0][3:5] == order[start][0][3:5]:
                end += 1
            yield *order[start][0][3:5], (json.loads(self.read(r)) for r in order[start:end])
            start = end


class PreparedEvents:
    """Event lookup over a prepared dataset's events.parquet, a row group at a time (:class:`EventRows`):
    detection and evaluation hold the rows of the sessions that alert, never the corpus."""

    NAMES = ("source", "line_no", "ts", "template", "raw", "entities", "fields", "masked")  # those present

    def __init__(self, data_dir):
        from loglm.shards import EventRows

        self.rows = EventRows(data_dir, list(self.NAMES))

    def prefetch(self, ids) -> None:
        self.rows.prefetch(ids)

    def __call__(self, i: int) -> dict:
        e = dict(self.rows.row(i))
        e["entities"] = json.loads(e["entities"])
        if e.get("fields"):
            e["fields"] = json.loads(e["fields"])
        return e


def events_from_parsed(ev) -> Callable[[int], dict]:
    def get(i: int) -> dict:
        return {"source": ev.source[i], "line_no": ev.line_no[i], "ts": ev.ts[i], "template": ev.template[i],
                "raw": ev.raw[i], "entities": ev.entities[i], "masked": ev.masked[i],
                "fields": ev.fields[i] if i < len(ev.fields) else None}

    return get
