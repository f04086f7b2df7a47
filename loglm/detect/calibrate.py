"""Threshold calibration on held-out normal validation sessions, for a target false-positive rate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa

from loglm.artifacts import atomic_write_json
from loglm.config import DetectConfig
from loglm.detect.calibration_record import (  # noqa: F401  (calibration_of, threshold_of: re-exported)
    CALIBRATION,
    VAL_TAIL,
    alert_calibration,
    calibration_of,
    threshold_of,
    validation_size,
)
from loglm.detect.score_core import event_alarm_scores, event_item_scores
from loglm.detect.thresholds import check_validation_size, normal_validation_mask
from loglm.detect.torch_scoring import score_windows, session_max
from loglm.shards import read_sessions
from loglm.windows import windows_of


def normal_validation(table: pa.Table) -> tuple[pa.Table, str, int]:
    """The validation windows to calibrate on, which population they are, and how many sessions they form."""
    keep, population = normal_validation_mask(table.column("label").to_numpy(zero_copy_only=False))
    table = table.filter(pa.array(keep))
    return table, population, len(set(table.column("session_id").to_pylist()))


def normal_validation_events(val: pa.Table, mask: list[list[bool]]) -> dict[str, int]:
    """Per-event calibration (``data.eval_unit=event``, e.g. per flow): how many labelled-normal events each
    validation session holds (``mask``: :func:`normal_event_mask`).  Each such event is one calibration item,
    so the threshold is set at the unit that is reported; unlabelled (Background) and anomalous events never
    count.  Every session of the split is considered, whatever its own label (a window with one Malicious flow
    still holds normal flows, which a per-flow FPR counts)."""
    counts: dict[str, int] = {}
    for sid, keep in zip(val.column("session_id").to_pylist(), mask):
        counts[sid] = counts.get(sid, 0) + sum(keep)
    return {sid: n for sid, n in counts.items() if n}


def event_label_codes(val: pa.Table, data_dir: str | Path, data) -> list[list[int]]:
    """Per row of ``val``, each event's label: 0 normal, 1 anomalous, -1 unlabelled."""
    from loglm.ingest.sessions import event_label
    from loglm.shards import event_columns

    idxs = val.column("event_idx").to_pylist()
    labels = iter(event_columns(data_dir, [j for idx in idxs for j in idx], ["label"])["label"])
    normal, unknown = set(data.normal_labels), set(data.unknown_labels)
    return [[event_label(next(labels), normal, unknown) for _ in idx] for idx in idxs]


def normal_event_mask(val: pa.Table, data_dir: str | Path, data) -> list[list[bool]]:
    """Per row of ``val``, which of its events are labelled normal (the per-event calibration items)."""
    return [[c == 0 for c in row] for row in event_label_codes(val, data_dir, data)]


def session_labels_of_events(session_ids: list[str], codes: list[list[int]]) -> dict[str, int]:
    """Per session, from its events' labels: anomalous (1) if any event is, else normal (0) if any event is
    labelled normal, else unlabelled (-1).  Unlabelled events (Background) beside normal ones leave a session
    normal, as they stay out of the per-event metrics."""
    out: dict[str, int] = {}
    for sid, row in zip(session_ids, codes):
        out[sid] = max(out.get(sid, -1), max(row, default=-1))
    return out


ALERT_POPULATION = "normal validation sessions (no anomalous event, one or more labelled normal)"


def validation_items(data_dir: str | Path, data
                     ) -> tuple[pa.Table, str, dict[str, int] | None, int, list[list[bool]] | None]:
    """(windows to score, population, per-session item weights or None, number of calibration items, and per
    row which of its events are items, or None where the items are sessions)."""
    val = read_sessions(data_dir, "val")
    if data is not None and data.eval_unit == "event":
        mask = normal_event_mask(val, data_dir, data)
        weights = normal_validation_events(val, mask)
        if weights:
            keep = [sid in weights for sid in val.column("session_id").to_pylist()]
            return (val.filter(pa.array(keep)), "labelled-normal events (per-event unit)", weights,
                    int(sum(weights.values())), [m for m, k in zip(mask, keep) if k])
    val, population, n = normal_validation(val)
    return val, population, None, n, None


def check_validation(data_dir: str | Path, cfg: DetectConfig, data=None) -> str | None:
    """Before any training: refuse a validation split too small for ``cfg.target_fpr`` (or return the warning)."""
    _, _, weights, n, _ = validation_items(data_dir, data)
    effective, what = validation_size(weights, n)
    return check_validation_size(effective, cfg.target_fpr, cfg.small_validation, what)


def calibrate(encoder, data_dir: str | Path, cfg: DetectConfig, out_dir: Path | None = None, data=None) -> dict:
    """Score the validation items (sessions, or with ``data.eval_unit=event`` their normal events) and write
    the calibration for ``cfg.target_fpr``."""
    cfg = with_alarm_unit(with_short_rule(with_end_rule(cfg, data), data_dir), data)
    val, population, weights, n, mask = validation_items(data_dir, data)
    effective, what = validation_size(weights, n)
    warning = check_validation_size(effective, cfg.target_fpr, cfg.small_validation, what)
    ws = score_windows(encoder, *windows_of(val), cfg)
    sids = val.column("session_id").to_pylist()
    if weights is None:
        items = np.array(list(session_max(sids, ws.score).values()))
    else:  # one item per normal event: its session's score, or with alarm_unit=event its own (event_alarm_scores)
        items = event_item_scores(cfg, event_alarm_scores(cfg, sids, ws), sids, val.column("tokens").to_pylist(), mask,
                                  ws)
    cal = calibration_of(items, cfg, population, warning, None, {"session_pause_s": prepared_pauses(data_dir)},
                         n_effective=effective)
    labels = None
    if weights is not None:  # items are events, alerts are sessions: the alert unit's own threshold
        labels = session_labels_of_events(sids, event_label_codes(val, data_dir, data))
        per_session = session_max(sids, ws.score)
        cal.update(alert_calibration(np.array([v for sid, v in per_session.items() if labels[sid] == 0]),
                                     cal["threshold"], cfg, ALERT_POPULATION))
    centre = embedding_centre(encoder, val, labels)
    if centre is not None:
        cal["embedding_centre"] = centre
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / CALIBRATION, cal)
    return cal


CENTRE_SESSIONS = 20_000  # at most this many validation sessions (a seeded draw) make the centre


def embedding_centre(encoder, val: pa.Table, labels: dict[str, int] | None = None) -> dict | None:
    """The mean of the normal validation sessions' unit vectors (:mod:`loglm.analyst.embed`, the vectors
    detection writes beside its alerts), kept with the calibration: the centre alert groups compare a model's
    session vectors around when no embeddings file of past sessions is given (:mod:`loglm.analyst.groups`; on
    the demo's alerts it groups as the file's mean does, docs/analyst.md).  ``labels``: per session, 0 for
    normal (per-event calibration, where ``val`` holds every session with a normal event); None: ``val`` is
    normal sessions only.  At most ``CENTRE_SESSIONS`` of them (a seeded draw: the mean's error is then ~1/140 of a
    unit vector's spread).  None when there is no such session."""
    from loglm.analyst.embed import embed_windows, session_vectors, torch_embed_fn

    sids = val.column("session_id").to_pylist()
    keep = [labels.get(s) == 0 for s in sids] if labels is not None else [True] * len(sids)
    ids = sorted({s for s, k in zip(sids, keep) if k})
    if len(ids) > CENTRE_SESSIONS:  # a mean of this many unit vectors is as good, at bounded cost and memory
        rng = np.random.default_rng(0)
        chosen = set(rng.choice(np.array(ids, dtype=object), CENTRE_SESSIONS, replace=False).tolist())
        keep = [k and s in chosen for s, k in zip(sids, keep)]
    val = val.filter(pa.array(keep))
    if val.num_rows == 0:
        return None
    vectors = embed_windows(torch_embed_fn(encoder), *windows_of(val))
    _, sessions = session_vectors(val.column("session_id").to_pylist(), vectors)
    return {"vector": [round(float(x), 6) for x in sessions.mean(axis=0)], "sessions": len(sessions),
            "population": "normal validation sessions"}


TIME_WINDOWS = ("window", "entity_window")


def with_end_rule(cfg: DetectConfig, data=None) -> DetectConfig:
    """``cfg`` with ``end_in_score`` decided: as set, else from the sessions (``data.session.by``). A time
    window ends when the clock says so, and whether a host's last flow of a 5-minute window is its last is
    noise the score should not read (on cic_flowprep, [END] is a third of a 2-flow window's median); a block,
    a connection or a count window ends by its own events."""
    if cfg.end_in_score is not None:
        return cfg
    timed = data is not None and data.session.by in TIME_WINDOWS
    return dataclasses.replace(cfg, end_in_score=not timed)


def with_alarm_unit(cfg: DetectConfig, data=None) -> DetectConfig:
    """``cfg`` with ``alarm_unit`` decided: as set, else the unit that is reported (``data.eval_unit``): per
    event (flow), an unseen event type alarms by itself instead of lifting its window's other events."""
    if cfg.alarm_unit is not None:
        return cfg
    return dataclasses.replace(cfg, alarm_unit="event" if data is not None and data.eval_unit == "event" else "window")


def with_short_rule(cfg: DetectConfig, data_dir: str | Path) -> DetectConfig:
    """``cfg`` with ``min_closed_events`` taken from the training split: the fewest events of a closed normal
    training window (``detect.short_alarm``; 0, no rule, without it or where the score does not read a
    window's end).  Decided once, here, and recorded in calibration.json, as the end rule is."""
    from loglm.shards import shortest_closed

    on = cfg.short_alarm and cfg.end_in_score is not False
    return dataclasses.replace(cfg, min_closed_events=shortest_closed(data_dir, "train") if on else 0)


def prepared_pauses(data_dir: str | Path) -> dict | None:
    """The prepared data's pause quantiles inside normal training sessions (None for older datasets)."""
    import json

    try:
        return json.loads((Path(data_dir) / "MANIFEST.json").read_text())["summary"].get("session_pause_s")
    except (OSError, ValueError, KeyError):
        return None
