"""Threshold calibration on held-out normal validation sessions, for a target false-positive rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from loglm.artifacts import atomic_write_json
from loglm.config import DetectConfig
from loglm.detect.scoring import score_windows, session_max, threshold_for_fpr
from loglm.model.store import CALIBRATION
from loglm.shards import read_sessions
from loglm.windows import windows_of


def calibrate(encoder, data_dir: str | Path, cfg: DetectConfig, out_dir: Path | None = None) -> dict:
    val = read_sessions(data_dir, "val")
    val = val.filter(pa.array(np.asarray(val.column("label").to_numpy()) != 1))  # normal or unlabelled
    ws = score_windows(encoder, *windows_of(val), cfg)
    per_session = np.array(list(session_max(val.column("session_id").to_pylist(), ws.score).values()))
    thr = threshold_for_fpr(per_session, cfg.target_fpr)
    result = {
        "threshold": thr, "target_fpr": cfg.target_fpr, "score": cfg.score, "top_k": cfg.top_k, "scorer": cfg.scorer,
        "n_views": cfg.n_views, "unk_surprisal": cfg.unk_surprisal, "unknown_alarm": cfg.unknown_alarm,
        "n_val_sessions": int(len(per_session)),
        "val_fpr_at_threshold": float((per_session > thr).mean()),
        "val_score_quantiles": {q: float(np.quantile(per_session, float(q))) for q in ("0.5", "0.9", "0.99")},
    }
    if out_dir is not None:
        atomic_write_json(out_dir / CALIBRATION, result)
    return result
