"""Alert thresholds for a target false-positive rate, with what they promise on new data.

The threshold is a split-conformal quantile of the scores of **normal** validation items: with ``n``
normal validation scores, ``k`` of them are allowed above the threshold where ``k + 1 <= target (n + 1)``.
For a new normal item exchangeable with the validation ones, P(score > threshold) = (k + 1) / (n + 1) <= target
(the expected test FPR); the FPR realised over many new items, given this validation set, follows
Beta(k + 1, n - k), whose 5 % / 95 % quantiles are reported as the interval.  When ``n + 1 < 1 / target``
no threshold can promise the target (even the maximum leaves 1 / (n + 1)): that validation set is too small.
"""

from __future__ import annotations

import numpy as np

SMALL_VALIDATION_POLICIES = ("refuse", "warn")


def normal_validation_mask(labels: np.ndarray) -> tuple[np.ndarray, str]:
    """Which validation items to calibrate on: those labelled normal (0) when the split carries labels;
    every item when it carries none (a user's own unlabelled logs, assumed mostly normal).  Items labelled
    unknown (-1) in a labelled split — part unlabelled, like Zeek windows holding `Background` flows —
    and anomalous items (1) are never used."""
    labels = np.asarray(labels)
    if (labels >= 0).any():
        return labels == 0, "labelled normal"
    return np.ones(len(labels), dtype=bool), "unlabelled (assumed normal)"


def allowed_above(n: int, target_fpr: float) -> int:
    """Validation normals allowed above the threshold: the largest k with (k + 1) / (n + 1) <= target."""
    return max(0, int(np.floor(target_fpr * (n + 1) + 1e-9)) - 1)


QUIET_RULE = "any miss or unseen event (the target quantile fell among windows without a miss)"


def threshold_above_quiet(items: np.ndarray, target_fpr: float, quiet_top: float | None) -> tuple[float, str]:
    """The conformal threshold, raised to ``quiet_top`` (the highest score of a window without a single miss,
    for scores that have such a band) when it falls below it: those windows differ only by a tie-breaking
    surprisal that drifts with time (LogLM's miss ratio, DeepLog's top-g rule)."""
    thr = threshold_for_fpr(items, target_fpr)
    if quiet_top is not None and thr < quiet_top:
        return quiet_top, QUIET_RULE
    return thr, "conformal quantile"


def threshold_for_fpr(normal_scores: np.ndarray, target_fpr: float) -> float:
    """Split-conformal threshold t: alerts fire on score > t; expected FPR on new normal items <= target
    whenever the validation set is large enough (:func:`validation_size_problem`)."""
    if len(normal_scores) == 0:
        raise ValueError("no validation normal items to calibrate on; check data.split.val_frac and the labels")
    if not 0 < target_fpr < 1:
        raise ValueError(f"detect.target_fpr must be in (0, 1), got {target_fpr}")
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))
    t = float(s[len(s) - 1 - allowed_above(len(s), target_fpr)])
    # identical sessions score identically only up to float noise (batch and streaming pad them in different
    # batches: ~1e-12 here); the threshold sits just above that noise, so a session equal to the threshold
    # item does not alert in one path and not the other.  Real score differences are far larger (>= 1e-9).
    return t + TIE_NOISE * max(1.0, abs(t))


TIE_NOISE = 1e-10


def fpr_promise(n: int, target_fpr: float) -> dict:
    """What the threshold promises on new normal data: expected FPR and a 90 % interval of the realised one."""
    from scipy.stats import beta

    k = allowed_above(n, target_fpr)
    lo, hi = beta.ppf([0.05, 0.95], k + 1, max(n - k, 1))
    return {"n_normal": n, "allowed_above": k, "expected_fpr": (k + 1) / (n + 1),
            "fpr_interval_90": [float(lo), float(hi)]}


def min_validation_normal(target_fpr: float) -> int:
    """Fewest normal validation items for which the expected test FPR can be at most the target."""
    return int(np.ceil(1.0 / target_fpr - 1 - 1e-9))


def effective_items(weights) -> int:
    """How many independent items ``weights`` are worth when each weight is a number of items sharing one
    score (the normal flows of one window): Kish's effective sample size (sum w)^2 / sum w^2, rounded down.
    Equal to the item count when every weight is 1, to the number of windows when they are all equal."""
    w = np.asarray(weights, dtype=np.float64)
    w = w[w > 0]
    return int(np.floor(w.sum() ** 2 / (w ** 2).sum() + 1e-9)) if len(w) else 0


def validation_size_problem(n: int, target_fpr: float, what: str | None = None) -> tuple[str, str] | None:
    """(severity, message) when ``n`` normal validation items cannot support ``target_fpr``; None when fine.
    ``what`` describes the items when they are not plain independent ones (say, flows sharing their window's
    score); ``n`` is then their effective number (:func:`effective_items`).

    "error": the target is out of reach (expected FPR > target);
    "warning": reachable, but the 95 % bound of the realised FPR is above twice the target."""
    what = what or f"{n} normal validation items"
    if n < min_validation_normal(target_fpr):
        return "error", (f"{what} cannot calibrate detect.target_fpr={target_fpr}: "
                         f"even the highest score leaves an expected FPR of 1/{n + 1} = {1 / (n + 1):.3g}; "
                         f"it needs at least {min_validation_normal(target_fpr)} (raise data.split.val_frac, add "
                         f"normal data, or raise detect.target_fpr; detect.small_validation=warn proceeds anyway)")
    promise = fpr_promise(n, target_fpr)
    if promise["fpr_interval_90"][1] > 2 * target_fpr:
        return "warning", (f"{what} give detect.target_fpr={target_fpr} a wide promise: the test "
                           f"FPR is expected at {promise['expected_fpr']:.3g} but lies up to "
                           f"{promise['fpr_interval_90'][1]:.3g} (95 %) on new data; more validation data narrows it")
    return None


def check_validation_size(n: int, target_fpr: float, policy: str, what: str | None = None) -> str | None:
    """Refuse (policy "refuse") or return a loud warning for a validation set too small for the target."""
    if policy not in SMALL_VALIDATION_POLICIES:
        raise ValueError(f"detect.small_validation must be one of {SMALL_VALIDATION_POLICIES}, got {policy!r}")
    if n == 0:
        raise ValueError("no normal validation items to calibrate on: check data.split.val_frac and the labels")
    problem = validation_size_problem(n, target_fpr, what)
    if problem is None:
        return None
    severity, message = problem
    if severity == "error" and policy == "refuse":
        raise ValueError(message)
    return message


def shared_score_items(sessions: int, items: int, effective: int) -> str:
    """How a per-event validation set is described in size messages: its items share their session's score."""
    return (f"{items} normal validation events in {sessions} sessions, worth {effective} independent items (a "
            "session's events share its score)")
