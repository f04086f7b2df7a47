"""The calibration record (calibration.json): the threshold for a target FPR from a model's scores of normal
items, the scoring settings it holds for and what it promises on new data.  Torch-free, so that a bundle
recalibrated on CPU (`loglm calibrate --bundle`) writes the record a model folder's calibration writes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from loglm.artifacts import atomic_write_json
from loglm.config import DetectConfig
from loglm.detect.score_core import quiet_band_top
from loglm.detect.thresholds import (
    effective_items,
    fpr_promise,
    shared_score_items,
    threshold_above_quiet,
    validation_size_problem,
)

CALIBRATION = "calibration.json"


def validation_size(weights: dict[str, int] | None, n: int) -> tuple[int, str | None]:
    """(independent items the size check and the FPR promise count, how size messages describe them).
    Per-event items share their session's score: a window of 50 normal flows is one draw, not 50."""
    if weights is None:
        return n, None
    effective = effective_items(list(weights.values()))
    return effective, shared_score_items(len(weights), n, effective)


VAL_TAIL = 256


def threshold_of(per_session: np.ndarray, cfg: DetectConfig) -> tuple[float, str]:
    """The conformal threshold, raised to "any miss" when it falls among windows without a single miss.

    Those windows differ only by their tie-breaking mean surprisal, which drifts with time: on hdfs_loglead
    a threshold inside that group (4e-5) gave a test FPR of 0.060 for a 0.01 target; above it, 0.0085 at the
    same recall.  Raising a conformal threshold only lowers the FPR it promises."""
    return threshold_above_quiet(per_session, cfg.target_fpr, quiet_band_top(cfg))


def calibration_of(per_session: np.ndarray, cfg: DetectConfig, population: str, warning: str | None,
                   out_dir: Path | None = None, extra: dict | None = None, n_effective: int | None = None) -> dict:
    """calibration.json: the threshold, the scoring settings it holds for, and what it promises on new data.
    ``n_effective``: how many independent items ``per_session`` is worth (events sharing a session's score),
    which the promise counts; all of them by default."""
    thr, rule = threshold_of(per_session, cfg)
    n_effective = int(len(per_session) if n_effective is None else n_effective)
    if not np.isfinite(thr):
        raise ValueError(f"calibration gave a non-finite threshold ({thr}): the model's scores are not finite")
    if warning:
        print(f"loglm: WARNING: {warning}", file=sys.stderr, flush=True)
    result = {
        "threshold": thr, "target_fpr": cfg.target_fpr, "score": cfg.score, "top_k": cfg.top_k, "scorer": cfg.scorer,
        "n_views": cfg.n_views, "unk_surprisal": cfg.unk_surprisal, "unknown_alarm": cfg.unknown_alarm,
        "tie_scale": cfg.tie_scale, "end_in_score": cfg.end_in_score is not False, "threshold_rule": rule,
        "short_alarm": cfg.short_alarm, "min_closed_events": int(cfg.min_closed_events),
        "alarm_unit": cfg.alarm_unit or "window",
        "event_score": cfg.event_score,
        "n_val_sessions": int(len(per_session)), "val_population": population,
        "n_val_effective": n_effective,
        "val_fpr_at_threshold": float((per_session > thr).mean()),
        "promise": fpr_promise(n_effective, cfg.target_fpr),
        "warning": warning,
        "val_score_quantiles": {q: float(np.quantile(per_session, float(q))) for q in ("0.5", "0.9", "0.99")},
        # the highest normal validation scores: alert severities say how rare a score is among them
        "val_top_scores": [float(v) for v in np.sort(per_session)[::-1][:VAL_TAIL]],
        **(extra or {}),
    }
    if out_dir is not None:
        atomic_write_json(out_dir / CALIBRATION, result)
    return result


def alert_threshold(calibration: dict) -> float:
    """The threshold an alert is raised at: the alert unit's own (``alert_threshold``, where the calibrated
    items are events but an alert is a session) or, where they are one unit, the threshold."""
    return float(calibration.get("alert_threshold", calibration["threshold"]))


def alert_calibration(session_scores: np.ndarray, item_threshold: float, cfg: DetectConfig, population: str) -> dict:
    """Where the threshold is calibrated per event (per flow, ``data.eval_unit=event``) but an alert is a
    session (a host's window, raised when any of its events passes), the alert unit's own threshold: the
    conformal quantile of the normal validation sessions' scores (each its highest event), never below the
    per-event threshold.  At the per-event threshold a host's window holding many flows alerts whenever any one
    passes, so alerts compound the flows' FPR (cic_flowprep seed 42: 6.1 % of normal host-windows alerted for a
    1 % per-flow target).  A validation too small for the target is said (``alert_warning``), not refused: the
    per-event calibration stands, and the alert threshold can only be raised by it.  {} without sessions."""
    s = np.asarray(session_scores, np.float64)
    if len(s) == 0:
        return {}
    thr, rule = threshold_of(s, cfg)
    if thr < item_threshold:
        thr, rule = float(item_threshold), "the per-event threshold (the sessions' quantile fell below it)"
    problem = validation_size_problem(len(s), cfg.target_fpr, f"{len(s)} {population} (the alert unit)")
    return {"alert_unit": "session", "alert_threshold": float(thr), "alert_threshold_rule": rule,
            "alert_n_val_sessions": int(len(s)), "alert_val_population": population,
            "alert_promise": fpr_promise(len(s), cfg.target_fpr),
            "alert_val_fpr_at_item_threshold": float((s > item_threshold).mean()),
            "alert_warning": problem[1] if problem else None,
            # the highest normal validation sessions: an alert's severity says how rare its score is among them
            "alert_val_top_scores": [float(v) for v in np.sort(s)[::-1][:VAL_TAIL]]}
