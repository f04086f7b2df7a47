"""The numpy scoring core: per-event surprisal and per-window scores at a constant number of forward passes per window.

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

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from loglm.config import DetectConfig
from loglm.progress import Progress
from loglm.vocab import END, MASK, UNK
from loglm.windows import length_batches, pad_windows

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
    # the window is closed and the model did not expect it to end there (its [END] position is a miss; it
    # counts in n_miss, which scores positions, but it is not an event)
    end_miss: np.ndarray | None = None
    # the window is closed and shorter than every closed normal training window (``detect.short_alarm``)
    shorter: np.ndarray | None = None
    # the score rule over the window's known events alone, before any alarm (``alarm_unit=event``: what
    # the window's other events score beside an unseen one; see event_alarm_scores)
    known_base: np.ndarray | None = None
    # with own_event_scores: per window, per position (events, then [END]) what a known event there scores as
    # an item: the score rule over that event alone, lifted by the alarm where the window closed shorter
    event_own: list[np.ndarray] | None = None


def calibrated_config(cfg: DetectConfig, calibration: dict) -> DetectConfig:
    """``cfg`` with the scoring settings a threshold was calibrated with: detection must score the same way.
    (Calibrations written before ``unknown_alarm`` existed were made without it.)"""
    return replace(cfg, score=calibration["score"], top_k=calibration["top_k"], n_views=calibration["n_views"],
                   unk_surprisal=calibration["unk_surprisal"], scorer=calibration.get("scorer", "views"),
                   unknown_alarm=calibration.get("unknown_alarm", False),
                   tie_scale=calibration.get("tie_scale", 1e4), end_in_score=calibration.get("end_in_score", True),
                   short_alarm=calibration.get("short_alarm", False),
                   min_closed_events=calibration.get("min_closed_events", 0),
                   alarm_unit=calibration.get("alarm_unit", "window"),
                   event_score=calibration.get("event_score", "window"))


TIE_CAP = 99.0  # the mean surprisal that breaks miss-ratio ties is capped here (nats)


def _mean(s: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(s), 0.0, s).sum(1) / np.maximum((~np.isnan(s)).sum(1), 1)


def _max(s: np.ndarray) -> np.ndarray:
    real = ~np.isnan(s)
    return np.where(real.any(1), np.where(real, s, -np.inf).max(1), 0.0)


def _median(s: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():  # a window without events: its median is 0, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(s, axis=1) if (~np.isnan(s)).any() else np.zeros(len(s))
    return np.where((~np.isnan(s)).any(1), np.nan_to_num(med), 0.0)


@dataclass(frozen=True)
class ScoreRule:
    """A window score (``detect.score``): ``window(surprisal, miss, cfg)`` gets a batch's per-position
    surprisals (float64, NaN outside each window's events) and whether each position fell outside the top-k,
    and returns one score per window; ``alarm(cfg)`` is how far an unseen event type ([UNK]) lifts a window
    (above every window without one); ``quiet_top(cfg)`` the highest score a window without any miss or
    unseen event can have, where the rule has such a band.  A new rule is one entry in :data:`SCORE_RULES`."""

    window: Callable[[np.ndarray, np.ndarray, DetectConfig], np.ndarray]
    alarm: Callable[[DetectConfig], float]
    quiet_top: Callable[[DetectConfig], float | None] = lambda cfg: None
    # the rule reads each position's surprisal in excess of the model's own uncertainty there (surprisal
    # minus the entropy of its prediction) instead of the surprisal: the views scorer only
    excess: bool = False


SCORE_RULES: dict[str, ScoreRule] = {
    # share of events outside the top-k; mean surprisal, scaled below the smallest miss ratio, breaks ties
    "miss_ratio": ScoreRule(
        lambda s, miss, cfg: (miss & ~np.isnan(s)).sum(1) / np.maximum((~np.isnan(s)).sum(1), 1)
        + np.minimum(_mean(s), TIE_CAP) / cfg.tie_scale,
        lambda cfg: 1.0, lambda cfg: TIE_CAP / cfg.tie_scale),
    "mean_surprisal": ScoreRule(lambda s, miss, cfg: _mean(s), lambda cfg: cfg.unk_surprisal),
    # the typical event of the window: a few odd events (a host's one rare flow) do not lift it, a window most
    # of whose events are surprising does
    "median_surprisal": ScoreRule(lambda s, miss, cfg: _median(s), lambda cfg: cfg.unk_surprisal),
    "max_surprisal": ScoreRule(lambda s, miss, cfg: _max(s), lambda cfg: cfg.unk_surprisal),
    # the mean of each event's surprisal minus the entropy of the model's prediction at it: an event the model
    # could not have been sure of (a host's varied ordinary traffic) counts for what surprised it beyond that
    # uncertainty, an event it was sure of and got wrong counts in full ([UNK]: unk_surprisal)
    "mean_excess_surprisal": ScoreRule(lambda s, miss, cfg: _mean(s), lambda cfg: cfg.unk_surprisal, excess=True),
}
SCORES = tuple(SCORE_RULES)


def score_rule(cfg: DetectConfig) -> ScoreRule:
    if cfg.score not in SCORE_RULES:
        raise ValueError(f"detect.score must be one of {SCORES}, got {cfg.score!r}")
    return SCORE_RULES[cfg.score]


def quiet_band_top(cfg: DetectConfig) -> float | None:
    """The highest score a window without any miss or unseen event can have (None for scores without such a
    band): everything above it holds at least one event outside the model's top-k."""
    return score_rule(cfg).quiet_top(cfg)


def window_score(cfg: DetectConfig, base: np.ndarray, n_unknown: np.ndarray,
                 shorter: np.ndarray | None = None) -> np.ndarray:
    """A window holding an event type training never saw scores above every window without one (a miss ratio
    is at most 1 plus the tie-break): one unseen template in a long session is not averaged away.  A flag, not
    a count: windows that all hold unseen events still rank by their score, not by their length.  A closed
    window shorter than every closed training window (``shorter``, :func:`shorter_than_training`) is lifted the
    same way."""
    alarm = (n_unknown > 0) if cfg.unknown_alarm else np.zeros(len(base), bool)
    if shorter is not None:
        alarm = alarm | shorter
    return base + alarm * score_rule(cfg).alarm(cfg)


def own_event_scores(cfg: DetectConfig) -> bool:
    """Whether a known event is an item with its own score (``detect.event_score=own`` where an unseen event
    alarms alone, ``alarm_unit=event``), and its window scores its highest event."""
    return cfg.alarm_unit == "event" and cfg.unknown_alarm and cfg.event_score == "own"


def event_alarm_scores(cfg: DetectConfig, session_ids: list[str], ws: WindowScores) -> dict[str, tuple[float, float]]:
    """Per session, what its events score in the per-event unit (e.g. per flow): (known, unseen).  With
    ``alarm_unit=event`` an event the model never saw ([UNK]) alarms by itself: it scores its window's score
    (lifted by the alarm), and the window's other events score the rule over its known events alone, so they
    are not flagged for sitting beside it.  The window still alerts, with the score it always had (its highest
    event), so alerts and per-event items agree.  With ``alarm_unit=window`` every event scores its
    session's score.  A session cut into windows takes the highest of each."""
    out: dict[str, tuple[float, float]] = {}
    per_event = cfg.alarm_unit == "event" and cfg.unknown_alarm
    lift = score_rule(cfg).alarm(cfg)
    shorter = ws.shorter if ws.shorter is not None else np.zeros(len(ws.score), bool)
    for sid, score, known_base, short in zip(session_ids, ws.score, ws.known_base, shorter):
        known = float(known_base + short * lift) if per_event else float(score)
        old = out.get(sid)
        out[sid] = (known, float(score)) if old is None else (max(old[0], known), max(old[1], float(score)))
    return out


def event_item_scores(cfg: DetectConfig, per_session: dict[str, tuple[float, float]], session_ids: list[str],
                      tokens: list, keep: list | None = None, ws: WindowScores | None = None) -> np.ndarray:
    """One score per event of each row (``keep``: per row, which of its events are items), by
    :func:`event_alarm_scores`: an unseen event takes its session's unseen score, the others the known one;
    with :func:`own_event_scores` (``ws``: the rows' scores) a known event its own (``WindowScores.event_own``)."""
    own = ws is not None and ws.event_own is not None
    out = []
    for r, (sid, t) in enumerate(zip(session_ids, tokens)):
        known, unseen = per_session[sid]
        t = np.asarray(t)
        if own:
            known = ws.event_own[r][:len(t)]
        s = np.where(t == UNK, unseen, known)
        out.append(s if keep is None else s[np.asarray(keep[r], bool)])
    return np.concatenate(out) if out else np.zeros(0)


def shorter_than_training(cfg: DetectConfig, n_events: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """Closed windows with fewer events than every closed normal training window (``detect.short_alarm``, the
    length from calibration): none for time windows (``end_in_score`` false), whose length is traffic volume."""
    if not cfg.short_alarm or cfg.end_in_score is False or cfg.min_closed_events <= 0:
        return np.zeros(len(n_events), bool)
    return np.asarray(closed, bool) & (np.asarray(n_events) < cfg.min_closed_events)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries along the last axis, largest first (ties: lower index first)."""
    k = min(k, scores.shape[-1])
    if scores.shape[-1] <= 64:
        return np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(scores, part, -1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1)


class _Windows:
    """Per-window results gathered batch by batch; aggregates computed on whole padded batches."""

    def __init__(self, n: int, cfg: DetectConfig):
        e = cfg.expected_per_event
        self.cfg = cfg
        self.surprisal: list[np.ndarray] = [np.zeros(0, np.float32)] * n
        self.rank: list[np.ndarray] = [np.zeros(0, np.int64)] * n
        self.expected: list[np.ndarray] = [np.zeros((0, e), np.int64)] * n
        self.expected_p: list[np.ndarray] = [np.zeros((0, e), np.float32)] * n
        self.n_events = np.zeros(n, np.int64)
        self.n_miss = np.zeros(n, np.int64)
        self.n_unknown = np.zeros(n, np.int64)
        self.end_miss = np.zeros(n, bool)
        self.shorter = np.zeros(n, bool)
        self.mean_s = np.zeros(n, np.float64)
        self.max_s = np.zeros(n, np.float64)
        self.base = np.zeros(n, np.float64)  # the score rule's value, before the unseen-event alarm
        self.known_base = np.zeros(n, np.float64)  # the same over the window's known events
        self.rule = score_rule(cfg)
        self.own = own_event_scores(cfg)
        self.event_own: list[np.ndarray] | None = [np.zeros(0, np.float64)] * n if self.own else None

    def add(self, rows: list[int], tok: np.ndarray, m: np.ndarray, s_out, r_out, x_out, p_out, miss,
            h_out=None) -> None:
        """Batch results, position 0 being [SUM]; window j covers positions 1 .. m[j] (events, [END]);
        ``h_out``: the entropy of the model's prediction at each position (rules that read the excess)."""
        pos = np.arange(tok.shape[1])[None]
        valid = (pos >= 1) & (pos <= m[:, None])
        idx = np.asarray(rows)
        self.n_events[idx] = m
        self.n_miss[idx] = (miss & valid).sum(1)
        self.n_unknown[idx] = (tok == UNK).sum(1)
        last = np.arange(len(rows)), np.minimum(m, tok.shape[1] - 1)
        ends = (tok[last] == END) & (m > 0)
        self.end_miss[idx] = ends & miss[last]
        self.shorter[idx] = shorter_than_training(self.cfg, m - 1, ends)  # m: events + [END]
        s64 = np.where(valid, s_out.astype(np.float64), np.nan)
        self.mean_s[idx] = _mean(s64)
        self.max_s[idx] = _max(s64)
        if self.rule.excess:  # DetectConfig refuses such a rule with the rtd scorer, which makes no h_out
            s64 = s64 - np.where(valid, h_out.astype(np.float64), 0.0)
        events = valid & (tok != END) if self.cfg.end_in_score is False else valid  # time windows: events only
        known = events & (tok != UNK)
        if self.own:  # each event scored alone (the rule over one event); its window by its highest event
            bsz, length = s64.shape
            own = self.rule.window(np.where(events, s64, np.nan).reshape(-1, 1), (miss & events).reshape(-1, 1),
                                   self.cfg).reshape(bsz, length)
            self.known_base[idx] = _max(np.where(known, own, np.nan))
            # a window holding an unseen event (which alarms, window_score) ranks among such windows by the
            # rule over all its events (an all-unseen window above one unseen flow among known ones), or by its
            # highest known event where that is higher; a window without one scores its highest event
            with_unseen = ((tok == UNK) & events).any(1)
            whole = self.rule.window(np.where(events, s64, np.nan), miss & events, self.cfg)
            self.base[idx] = np.where(with_unseen, np.maximum(self.known_base[idx], whole), self.known_base[idx])
            items = own + self.shorter[idx][:, None] * self.rule.alarm(self.cfg)  # as event_alarm_scores lifts
            for j, i in enumerate(rows):
                self.event_own[i] = items[j, 1:1 + m[j]]
        else:
            self.base[idx] = self.rule.window(np.where(events, s64, np.nan), miss & events, self.cfg)
            if self.cfg.alarm_unit == "event":  # what the other events of a window with an unseen one score
                self.known_base[idx] = self.rule.window(np.where(known, s64, np.nan), miss & known, self.cfg)
            else:  # not read (event_alarm_scores gives every event its window's score)
                self.known_base[idx] = self.base[idx]
        for j, i in enumerate(rows):
            end = 1 + m[j]
            self.surprisal[i] = s_out[j, 1:end]
            self.rank[i] = r_out[j, 1:end]
            self.expected[i] = x_out[j, 1:end]
            self.expected_p[i] = p_out[j, 1:end]

    def result(self) -> WindowScores:
        return WindowScores(window_score(self.cfg, self.base, self.n_unknown, self.shorter), self.n_events,
                            self.n_miss, self.mean_s, self.max_s, self.surprisal, self.rank, self.expected,
                            self.expected_p, self.end_miss, self.shorter, self.known_base, self.event_own)


def _lengths(tokens: list[np.ndarray], closed: list[bool], rows: list[int]) -> np.ndarray:
    return np.array([len(tokens[i]) + int(closed[i]) for i in rows], dtype=np.int64)  # events (+ [END])


def ordered_map(fn: Callable, items: list, workers: int) -> Iterator:
    """``map(fn, items)`` on ``workers`` threads, in order, with at most 2 x workers results in flight
    (bounded memory); ONNX Runtime and numpy release the GIL, so batches run truly in parallel."""
    if workers <= 1:
        yield from map(fn, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="loglm-score") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def score_windows_with(logp_fn: LogProbFn, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool],
                       cfg: DetectConfig, workers: int = 1) -> WindowScores:
    e = cfg.expected_per_event
    excess = score_rule(cfg).excess

    def batch(rows: list[int]):
        tok, gap, pad = pad_windows([(tokens[i], gaps[i], closed[i]) for i in rows])
        bsz, length = tok.shape
        s_out = np.zeros((bsz, length), np.float32)
        r_out = np.zeros((bsz, length), np.int64)
        x_out = np.zeros((bsz, length, e), np.int64)
        p_out = np.zeros((bsz, length, e), np.float32)
        h_out = np.zeros((bsz, length), np.float32)  # entropy of the prediction (0 at [UNK]: its excess is in full)
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
            top = top_k(logp, e)
            x_out[target, :top.shape[1]] = top
            p_out[target, :top.shape[1]] = np.exp(np.take_along_axis(logp, top, 1))
            if excess:
                h_out[target] = -(np.exp(logp) * logp).sum(1)
        unk = tok == UNK
        s_out[unk] = cfg.unk_surprisal
        r_out[unk] = 1 << 30
        h_out[unk] = 0.0
        return rows, tok, s_out, r_out, x_out, p_out, r_out >= cfg.top_k, h_out

    out = _Windows(len(tokens), cfg)
    batches = length_batches([len(t) for t in tokens], cfg.batch_size, cfg.max_batch_tokens)
    progress = Progress("scoring", "windows")
    for rows, tok, *arrays in ordered_map(batch, batches, workers):
        out.add(rows, tok, _lengths(tokens, closed, rows), *arrays)
        progress.tick(len(rows), f"of {len(tokens):,}")
    return out.result()


# (tokens, gaps, pad_mask) -> (replaced logits (B, L), top expected tokens (B, L, k), their log-probabilities
# (B, L, k)) from one unmasked pass
RtdFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def rtd_outputs_from_logits(logits: np.ndarray, replaced: np.ndarray, k: int):
    """RtdFn outputs from full logits (bundles exported before the graph computed the top-k itself)."""
    logp = log_softmax(logits.astype(np.float32, copy=False))
    top = top_k(logp, k)
    return replaced, top, np.take_along_axis(logp, top, -1)


def score_windows_rtd_with(rtd_fn: RtdFn, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool],
                           cfg: DetectConfig, workers: int = 1) -> WindowScores:
    """One forward pass per window: per-position surprisal = -log(1 - p(replaced)); a position counts as a
    miss when p(replaced) > 0.5; "expected" comes from the masked-event head on the unmasked input."""
    def batch(rows: list[int]):
        tok, gap, pad = pad_windows([(tokens[i], gaps[i], closed[i]) for i in rows])
        return rows, tok, *rtd_fn(tok, gap, pad)

    out = _Windows(len(tokens), cfg)
    batches = length_batches([len(t) for t in tokens], cfg.batch_size, cfg.max_batch_tokens)
    progress = Progress("scoring", "windows")
    for rows, tok, rtd, top, top_logp in ordered_map(batch, batches, workers):
        progress.tick(len(rows), f"of {len(tokens):,}")
        rtd = rtd.astype(np.float32, copy=False)
        unk = tok == UNK
        # -log(1 - sigmoid(z)) = softplus(z), computed stably
        surprisal = np.logaddexp(np.float32(0.0), rtd)
        surprisal[unk] = cfg.unk_surprisal
        miss = (rtd > 0) | unk
        rank = np.where(miss, 1 << 30, 0).astype(np.int64)
        k = cfg.expected_per_event
        out.add(rows, tok, _lengths(tokens, closed, rows), surprisal, rank, top[..., :k].astype(np.int64, copy=False),
                np.exp(top_logp[..., :k].astype(np.float32, copy=False)), miss)
    return out.result()


def session_max(session_ids: list[str], scores: np.ndarray) -> dict[str, float]:
    """A session split into chunks scores as its most anomalous chunk."""
    out: dict[str, float] = {}
    for sid, s in zip(session_ids, scores):
        v = float(s)
        if sid not in out or v > out[sid]:
            out[sid] = v
    return out
