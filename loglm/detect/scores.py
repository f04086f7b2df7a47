"""Per-event surprisal and per-window scores at a constant number of forward passes per window.

Backend-free (numpy): the model is reached through a function returning log-probabilities at the masked
positions, so the torch path and the torch-free ONNX engine score identically.

Positions are the window's events followed, for a closed window, by [END] (so a window that stops early is
surprising too).  Every window is scored from ``n_views`` masked views: view r masks positions p with
(p - 1) % n_views == r, so each position is masked exactly once and the cost does not grow with the window
length (LogBERT's one-mask-per-event scoring needs one pass per event; ``n_views`` >= the longest window
reproduces it).  For each position we keep its surprisal (-log p of the true event), its rank, and the
model's top candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from loglm.config import DetectConfig
from loglm.vocab import MASK, UNK
from loglm.windows import length_batches, pad_windows

SCORES = ("miss_ratio", "mean_surprisal", "max_surprisal")
# (masked tokens, gaps, pad_mask, target_mask) -> log-probabilities (n_targets, vocab) at target positions
LogProbFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class WindowScores:
    score: np.ndarray
    n_events: np.ndarray
    n_miss: np.ndarray
    mean_surprisal: np.ndarray
    max_surprisal: np.ndarray
    surprisal: list[np.ndarray]  # per window, per position
    rank: list[np.ndarray]  # 0 = the model's first choice
    expected: list[np.ndarray]  # (positions, E) top predicted tokens
    expected_p: list[np.ndarray]


def calibrated_config(cfg: DetectConfig, calibration: dict) -> DetectConfig:
    """``cfg`` with the scoring settings a threshold was calibrated with: detection must score the same way.
    (Calibrations written before ``unknown_alarm`` existed were made without it.)"""
    return replace(cfg, score=calibration["score"], top_k=calibration["top_k"], n_views=calibration["n_views"],
                   unk_surprisal=calibration["unk_surprisal"], scorer=calibration.get("scorer", "views"),
                   unknown_alarm=calibration.get("unknown_alarm", False))


def window_score(cfg: DetectConfig, miss_ratio, mean_s, max_s, n_unknown) -> np.ndarray:
    kind = cfg.score
    if kind == "miss_ratio":
        # share of events outside the top-k; mean surprisal (scaled below one step) breaks ties
        base, alarm = miss_ratio + np.minimum(mean_s, 99.0) / 1e4, 1.0
    elif kind == "mean_surprisal":
        base, alarm = mean_s, cfg.unk_surprisal
    elif kind == "max_surprisal":
        base, alarm = max_s, cfg.unk_surprisal
    else:
        raise ValueError(f"detect.score must be one of {SCORES}, got {kind!r}")
    # a window holding an event type training never saw scores above every window without one (a miss ratio
    # is at most 1 plus the tie-break): one unseen template in a long session is not averaged away.  A flag,
    # not a count: windows that all hold unseen events still rank by their score, not by their length.
    return base + (n_unknown > 0) * alarm if cfg.unknown_alarm else base


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def score_windows_with(logp_fn: LogProbFn, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool],
                       cfg: DetectConfig) -> WindowScores:
    n = len(tokens)
    e = cfg.expected_per_event
    surprisal: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    rank: list[np.ndarray] = [np.zeros(0, np.int64)] * n
    expected: list[np.ndarray] = [np.zeros((0, e), np.int64)] * n
    expected_p: list[np.ndarray] = [np.zeros((0, e), np.float32)] * n
    for rows in length_batches([len(t) for t in tokens], cfg.batch_size, cfg.max_batch_tokens):
        tok, gap, pad = pad_windows([(tokens[i], gaps[i], closed[i]) for i in rows])
        bsz, length = tok.shape
        s_out = np.zeros((bsz, length), np.float32)
        r_out = np.zeros((bsz, length), np.int64)
        x_out = np.zeros((bsz, length, e), np.int64)
        p_out = np.zeros((bsz, length, e), np.float32)
        pos = np.arange(length)
        for view in range(min(cfg.n_views, length - 1)):
            target = pad & (pos > 0) & ((pos - 1) % cfg.n_views == view)[None]
            if not target.any():
                continue
            logp = logp_fn(np.where(target, MASK, tok), gap, pad, target)
            gold = tok[target]
            gold_lp = np.take_along_axis(logp, gold[:, None], 1)[:, 0]
            s_out[target] = -gold_lp
            r_out[target] = (logp > gold_lp[:, None]).sum(1)
            k = min(e, logp.shape[1])
            top = np.argsort(-logp, axis=1, kind="stable")[:, :k]
            x_out[target, :k] = top
            p_out[target, :k] = np.exp(np.take_along_axis(logp, top, 1))
        unk = tok == UNK
        s_out[unk] = cfg.unk_surprisal
        r_out[unk] = 1 << 30
        for j, i in enumerate(rows):
            m = len(tokens[i]) + int(closed[i])  # events (+ [END])
            surprisal[i] = s_out[j, 1:1 + m]
            rank[i] = r_out[j, 1:1 + m]
            expected[i] = x_out[j, 1:1 + m]
            expected_p[i] = p_out[j, 1:1 + m]
    n_events = np.array([len(s) for s in surprisal], dtype=np.int64)
    n_miss = np.array([(r >= cfg.top_k).sum() for r in rank], dtype=np.int64)
    mean_s = np.array([s.mean() if len(s) else 0.0 for s in surprisal], dtype=np.float64)
    max_s = np.array([s.max() if len(s) else 0.0 for s in surprisal], dtype=np.float64)
    miss_ratio = n_miss / np.maximum(n_events, 1)
    n_unknown = np.array([(t == UNK).sum() for t in tokens], dtype=np.int64)
    return WindowScores(window_score(cfg, miss_ratio, mean_s, max_s, n_unknown), n_events, n_miss, mean_s, max_s,
                        surprisal, rank, expected, expected_p)


# (tokens, gaps, pad_mask) -> (logits (B, L, V), replaced logits (B, L)) from one unmasked pass
RtdFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def score_windows_rtd_with(rtd_fn: RtdFn, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool],
                           cfg: DetectConfig) -> WindowScores:
    """One forward pass per window: per-position surprisal = -log(1 - p(replaced)); a position counts as a
    miss when p(replaced) > 0.5; "expected" comes from the masked-event head on the unmasked input."""
    n = len(tokens)
    e = cfg.expected_per_event
    out_s, out_r, out_x, out_p = [None] * n, [None] * n, [None] * n, [None] * n
    for rows in length_batches([len(t) for t in tokens], cfg.batch_size, cfg.max_batch_tokens):
        tok, gap, pad = pad_windows([(tokens[i], gaps[i], closed[i]) for i in rows])
        logits, rtd = rtd_fn(tok, gap, pad)
        # -log(1 - sigmoid(z)) = softplus(z), computed stably
        surprisal = np.logaddexp(0.0, rtd.astype(np.float64)).astype(np.float32)
        surprisal[tok == UNK] = cfg.unk_surprisal
        miss = (rtd > 0) | (tok == UNK)
        k = min(e, logits.shape[-1])
        top = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
        probs = np.exp(log_softmax(logits.astype(np.float32)))
        top_p = np.take_along_axis(probs, top, -1)
        for j, i in enumerate(rows):
            m = len(tokens[i]) + int(closed[i])
            out_s[i] = surprisal[j, 1:1 + m]
            out_r[i] = np.where(miss[j, 1:1 + m], 1 << 30, 0).astype(np.int64)
            out_x[i] = top[j, 1:1 + m]
            out_p[i] = top_p[j, 1:1 + m]
    n_events = np.array([len(s) for s in out_s], dtype=np.int64)
    n_miss = np.array([(r > 0).sum() for r in out_r], dtype=np.int64)
    mean_s = np.array([s.mean() if len(s) else 0.0 for s in out_s], dtype=np.float64)
    max_s = np.array([s.max() if len(s) else 0.0 for s in out_s], dtype=np.float64)
    n_unknown = np.array([(t == UNK).sum() for t in tokens], dtype=np.int64)
    return WindowScores(window_score(cfg, n_miss / np.maximum(n_events, 1), mean_s, max_s, n_unknown), n_events,
                        n_miss, mean_s, max_s, out_s, out_r, out_x, out_p)


def session_max(session_ids: list[str], scores: np.ndarray) -> dict[str, float]:
    """A session split into chunks scores as its most anomalous chunk."""
    out: dict[str, float] = {}
    for sid, s in zip(session_ids, scores):
        v = float(s)
        if sid not in out or v > out[sid]:
            out[sid] = v
    return out


def threshold_for_fpr(normal_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold t with share(normal > t) <= target_fpr; alerts fire on score > t."""
    if len(normal_scores) == 0:
        raise ValueError("no validation normal sessions to calibrate on; check data.split.val_frac")
    if not 0 <= target_fpr < 1:
        raise ValueError(f"detect.target_fpr must be in [0, 1), got {target_fpr}")
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))
    allowed = int(np.floor(target_fpr * len(s) + 1e-9))  # normal sessions allowed above the threshold
    return float(s[len(s) - 1 - allowed])
