"""Per-event surprisal and per-window scores at a constant number of forward passes per window.

Positions are the window's events followed, for a closed window, by [END] (so a window that stops early
is surprising too).
Every window is scored from ``n_views`` masked views: view r masks event positions p with
(p - 1) % n_views == r, so each event is masked exactly once and the cost does not grow with the window
length (LogBERT's one-mask-per-event scoring needs one pass per event).  For each event we keep its
surprisal (-log p of the true event), its rank among all events, and the model's top candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from loglm.config import DetectConfig
from loglm.training.data import collate
from loglm.vocab import MASK, UNK

SCORES = ("miss_ratio", "mean_surprisal", "max_surprisal")


@dataclass
class WindowScores:
    score: np.ndarray
    n_events: np.ndarray
    n_miss: np.ndarray
    mean_surprisal: np.ndarray
    max_surprisal: np.ndarray
    surprisal: list[np.ndarray]  # per window, per event
    rank: list[np.ndarray]  # 0 = the model's first choice
    expected: list[np.ndarray]  # (n_events, E) top predicted tokens
    expected_p: list[np.ndarray]


def window_score(kind: str, miss_ratio, mean_s, max_s) -> np.ndarray:
    if kind == "miss_ratio":
        # share of events outside the top-k; mean surprisal (scaled below one step) breaks ties
        return miss_ratio + np.minimum(mean_s, 99.0) / 1e4
    if kind == "mean_surprisal":
        return mean_s
    if kind == "max_surprisal":
        return max_s
    raise ValueError(f"detect.score must be one of {SCORES}, got {kind!r}")


@torch.inference_mode()
def score_windows(encoder, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool],
                  cfg: DetectConfig) -> WindowScores:
    encoder.eval()
    n = len(tokens)
    e = cfg.expected_per_event
    surprisal: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    rank: list[np.ndarray] = [np.zeros(0, np.int32)] * n
    expected: list[np.ndarray] = [np.zeros((0, e), np.int32)] * n
    expected_p: list[np.ndarray] = [np.zeros((0, e), np.float32)] * n
    order = sorted(range(n), key=lambda i: len(tokens[i]))
    for b in range(0, n, cfg.batch_size):
        rows = order[b:b + cfg.batch_size]
        batch = collate([(tokens[i], gaps[i], closed[i]) for i in rows])
        tok, gap, pad = batch["tokens"], batch["gaps"], batch["pad_mask"]
        bsz, length = tok.shape
        s_out = torch.zeros(bsz, length)
        r_out = torch.zeros(bsz, length, dtype=torch.long)
        x_out = torch.zeros(bsz, length, e, dtype=torch.long)
        p_out = torch.zeros(bsz, length, e)
        pos = torch.arange(length)
        for view in range(cfg.n_views):
            target = pad & (pos > 0) & ((pos - 1) % cfg.n_views == view)[None]
            if not target.any():
                continue
            inputs = tok.masked_fill(target, MASK)
            hidden = encoder(inputs, gap, pad)
            logits = encoder.logits(hidden[target])
            logp = torch.log_softmax(logits.float(), -1)
            gold = tok[target]
            gold_lp = logp.gather(1, gold[:, None])[:, 0]
            s_out[target] = -gold_lp
            r_out[target] = (logp > gold_lp[:, None]).sum(1)
            top = logp.topk(min(e, logp.shape[1]), -1)
            x_out[target, : top.indices.shape[1]] = top.indices
            p_out[target, : top.values.shape[1]] = top.values.exp()
        unk = tok == UNK
        s_out[unk] = cfg.unk_surprisal
        r_out[unk] = 1 << 30
        for j, i in enumerate(rows):
            m = len(tokens[i]) + int(closed[i])  # events (+ [END])
            surprisal[i] = s_out[j, 1:1 + m].numpy()
            rank[i] = r_out[j, 1:1 + m].numpy().astype(np.int64)
            expected[i] = x_out[j, 1:1 + m].numpy()
            expected_p[i] = p_out[j, 1:1 + m].numpy()
    n_events = np.array([len(s) for s in surprisal], dtype=np.int64)  # scored positions incl. [END]
    n_miss = np.array([(r >= cfg.top_k).sum() for r in rank], dtype=np.int64)
    mean_s = np.array([s.mean() if len(s) else 0.0 for s in surprisal], dtype=np.float64)
    max_s = np.array([s.max() if len(s) else 0.0 for s in surprisal], dtype=np.float64)
    miss_ratio = n_miss / np.maximum(n_events, 1)
    return WindowScores(window_score(cfg.score, miss_ratio, mean_s, max_s), n_events, n_miss, mean_s, max_s,
                        surprisal, rank, expected, expected_p)


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
