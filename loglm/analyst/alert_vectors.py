"""Each alert's session vector, written beside its alerts file: ``alerts.jsonl`` -> ``alerts.vectors.jsonl``.

Detection (batch, streaming and evaluation alike: :func:`loglm.analyst.enrich.enrich_alerts`) embeds the
sessions it alerts on (``detect.alert_vectors``, on by default; only alerted sessions, so it costs a forward
pass per alert) and writes one row per alert: ``{"alert_id", "session_id", "vector"}`` (the unit vector of
:mod:`loglm.analyst.embed`, rounded to 6 decimals).  The triage page then finds similar past sessions for, and
groups, alerts whose sessions are in no embeddings file, such as the ones a stream raised a minute ago.  The
vectors stay out of the alerts themselves: a SIEM reading ``alerts.jsonl`` gets no arrays of floats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

KEY = "_vector"  # where enrich_alerts leaves an alert's vector for its writer to take out
CENTRE = "centre_of"  # a row holding a model's centre (its run id), not an alert's vector


def centre_line(model) -> bytes:
    """The row that opens an alerts file's vectors: the model's centre, the mean of its normal validation
    sessions' vectors (``calibration.json``'s ``embedding_centre``), around which the triage page groups alerts
    when no embeddings file is given (:mod:`loglm.analyst.groups`); empty for a model calibrated before it was
    kept."""
    import json

    centre = (model.calibration or {}).get("embedding_centre")
    run = model.meta.get("run_id")
    if not centre or not run:
        return b""
    return (json.dumps({"alert_id": "", CENTRE: run, "vector": centre["vector"]}) + "\n").encode()


def vectors_path(alerts_path: str | Path) -> Path:
    return Path(alerts_path).with_suffix(".vectors.jsonl")


def attach(alerts: list[dict], session_ids: list[str], vectors: np.ndarray) -> None:
    """Gives each alert its session's vector (``session_ids`` and ``vectors`` row for row)."""
    row = {sid: i for i, sid in enumerate(session_ids)}
    for a in alerts:
        i = row.get(a["session_id"])
        if i is not None:
            a[KEY] = [round(float(x), 6) for x in vectors[i]]


def take(alerts: list[dict]) -> list[dict]:
    """The vector rows of ``alerts``, taken out of them (after pseudonymisation: the session id is the one
    the alert shows)."""
    rows = []
    for a in alerts:
        vec = a.pop(KEY, None)
        if vec is not None:
            rows.append({"alert_id": a["alert_id"], "session_id": a["session_id"], "vector": vec})
    return rows


class AlertVectors:
    """alert_id -> unit vector, read on as detection appends (:class:`~loglm.analyst.alerts_file.JsonLines`);
    an absent file is no vectors."""

    def __init__(self, alerts_path: str | Path):
        from loglm.analyst.alerts_file import JsonLines

        self.file = JsonLines(vectors_path(alerts_path), ("alert_id", "vector"))
        self.file.what = "an alert's vector"
        self.by_alert: dict[str, np.ndarray] = {}
        self.centres: dict[str, np.ndarray] = {}  # model run id -> its centre (a row naming CENTRE)
        self._seen = (-1, -1)

    def refresh(self) -> bool:
        try:
            self.file.refresh()
        except FileNotFoundError:
            return False
        seen = (self.file.reloads, len(self.file.rows))
        if seen == self._seen:
            return False
        start = self._seen[1] if self.file.reloads == self._seen[0] else 0
        if start == 0:  # centres are kept: a file rotated by copytruncate loses its first row, not its model
            self.by_alert = {}
        self._seen = seen
        for r in self.file.rows[start:]:
            if r.get(CENTRE):
                self.centres[r[CENTRE]] = np.asarray(r["vector"], dtype=np.float64)
            else:
                self.by_alert[r["alert_id"]] = np.asarray(r["vector"], dtype=np.float32)
        return True


def model_of(alert: dict) -> str | None:
    return (alert.get("model") or {}).get("run_id")


def comparable(alerts: list[dict], by_alert: dict[str, np.ndarray], space: str | None, has_file: bool
               ) -> dict[str, np.ndarray]:
    """The alerts' own vectors that share one vector space: the embeddings file's model (``space``, its run id;
    with a file that does not record its model, none: its sessions' rows are used instead), or without a file
    the model of the highest-scoring alert that has a vector.  Vectors of two models are not comparable (an
    alerts file a stream appended to across a model's promotion holds both): the others are left out."""
    if has_file and space is None:
        return {}
    if not has_file:
        space = space_of(alerts, by_alert)
        if space is None:
            return {}
    return {a["alert_id"]: by_alert[a["alert_id"]] for a in alerts
            if a["alert_id"] in by_alert and model_of(a) == space}


def space_of(alerts: list[dict], by_alert: dict[str, np.ndarray]) -> str | None:
    """Without an embeddings file, the vector space alerts are compared in: the model of the highest-scoring
    alert that has a vector (None when none has)."""
    top = max((a for a in alerts if a["alert_id"] in by_alert), key=lambda a: a["score"], default=None)
    return None if top is None else model_of(top)
