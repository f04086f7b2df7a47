"""Few-shot kinds: a light classifier on frozen vectors labels alerts with a known kind and a confidence.

Given k labelled examples per kind (an analyst's: "these 5 sessions were SSH brute force"), two classifiers:

- ``prototype``: each kind is the normalised mean of its examples; an item takes the kind of the most
  similar prototype (cosine), with confidence = softmax over the kinds' similarities (temperature 0.05);
- ``logreg``: multinomial logistic regression (scikit-learn) on the vectors.

With ``standardize``, each dimension is centred and scaled by the statistics of a ``background`` of unlabelled
vectors from the same model where one is given (``loglm kinds fit``: every vector of the embeddings file), else
of the examples themselves, which at k = 1 are a handful of points (docs/analyst.md).  With a background and
``decorrelate`` = w > 0, ``logreg`` also decorrelates: the standardised vectors are whitened by the
background's correlation matrix shrunk towards the identity, ``C = (1 - w) I + w R``.  A flow vector's 12
pieces are strongly correlated, and a few examples' L2-penalised fit spends its weight on directions every
flow varies along.  Off by default: w = 0.1 raised k = 1 by 0.14 on cic_flowprep attack classes and lowered
it by 0.11 on zeek_ctu's kinds (docs/analyst.md "Decorrelated by unlabelled vectors").  The whitening is
folded into the saved weights, so a kinds file keeps its format.

Below ``min_confidence`` an item is ``unknown``.  A classifier is confident far from its examples too (a
benign flow is forced into the nearest attack kind), so ``min_similarity`` adds a gate: an item whose cosine
with every example is below it is ``unknown`` whatever its confidence (the examples' unit vectors are kept in
the kinds file; docs/analyst.md "Benign alerts get an attack kind too").
The same classifiers run on raw flow features (``loglm.baselines.flow_features``), which is what shows what
pretraining adds (``make bench`` key ``analyst``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

UNKNOWN = "unknown"
TEMPERATURE = 0.05
DECORRELATE = 0.0  # off by default: it helps on one flow dataset and hurts on another at k <= 5
MEASURED_DECORRELATE = 0.1  # the weight the bench measures beside plain standardisation
BACKGROUND_ROWS = 20_000  # rows of the background its correlation matrix is estimated from (seeded draw)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class FewShot:
    def __init__(self, method: str = "prototype", min_confidence: float = 0.0, standardize: bool = False,
                 unit: str = "session", min_similarity: float = 0.0, decorrelate: float = DECORRELATE):
        if method not in ("prototype", "logreg"):
            raise ValueError(f"few-shot method must be prototype or logreg, got {method!r}")
        if unit not in ("session", "event"):
            raise ValueError(f"few-shot unit must be session or event, got {unit!r}")
        if not 0.0 <= min_similarity <= 1.0:
            raise ValueError(f"few-shot min_similarity is a cosine floor in [0, 1] (0: off), got {min_similarity}")
        if not 0.0 <= decorrelate < 1.0:
            raise ValueError(f"few-shot decorrelate is the background correlations' weight in [0, 1), got {decorrelate}")
        self.decorrelate = decorrelate
        self.method, self.min_confidence, self.standardize, self.unit = method, min_confidence, standardize, unit
        self.min_similarity, self.support = min_similarity, None

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return (x - self.mean) / self.std if self.standardize else x

    def fit(self, x: np.ndarray, kinds: list[str], background: np.ndarray | Background | None = None) -> FewShot:
        """``background``: unlabelled vectors of the same model (or their ``Background``, computed once for many
        fits) whose mean and spread standardise the vectors and, for ``logreg``, whose correlations decorrelate
        them (with ``standardize``); without it the examples' own spread is used and nothing is decorrelated."""
        x = np.asarray(x, np.float64)
        if len(x) != len(kinds) or not len(x):
            raise ValueError(f"few-shot needs one kind per example, got {len(x)} vectors and {len(kinds)} kinds")
        self.kinds = sorted(set(kinds))
        if self.min_similarity > 0:
            self.support = _unit(x)
        whiten = None
        if self.standardize:
            weight = self.decorrelate if self.method == "logreg" else 0.0
            if isinstance(background, Background):
                bg = background
                if bg.decorrelate != weight:
                    raise ValueError(f"few-shot background was computed with decorrelate={bg.decorrelate}, "
                                     f"this classifier uses {weight}")
            elif background is not None and len(background):
                bg = Background(background, weight)
            else:
                bg = Background(x, 0.0)  # the examples' own spread: nothing to decorrelate by
            if bg.dims != x.shape[1]:
                raise ValueError(f"few-shot background vectors have ({bg.dims},) dims, the examples {x.shape[1:]}")
            self.mean, self.std, whiten = bg.mean, bg.std, bg.whiten
        z = self._prep(x)
        y = np.array([self.kinds.index(k) for k in kinds])
        if self.method == "prototype" or len(self.kinds) < 2:
            self.prototypes = _unit(np.stack([z[y == c].mean(0) for c in range(len(self.kinds))]))
            self.model = None
        else:
            from sklearn.linear_model import LogisticRegression

            m = LogisticRegression(C=10.0, max_iter=2000).fit(z if whiten is None else z @ whiten, y)
            # its predict_proba, in numpy (saved and loaded as is); logits of z @ W are those of z with the
            # weights coef @ W (W is symmetric), so the whitening lives in the weights
            coef = m.coef_ if whiten is None else m.coef_ @ whiten
            self.model = _Softmax(coef, m.intercept_)
        return self

    def proba(self, x: np.ndarray) -> np.ndarray:
        z = self._prep(x)
        if self.model is not None:
            return self.model.predict_proba(z)
        sims = _unit(z) @ self.prototypes.T / TEMPERATURE
        sims -= sims.max(1, keepdims=True)
        e = np.exp(sims)
        return e / e.sum(1, keepdims=True)

    def predict(self, x: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(kind or ``unknown`` per item, confidence per item)."""
        p = self.proba(x)
        best, conf = p.argmax(1), p.max(1)
        near = np.ones(len(p), bool)
        if self.support is not None:
            near = (_unit(x) @ self.support.T).max(1) >= self.min_similarity
        return [self.kinds[b] if c >= self.min_confidence and n else UNKNOWN
                for b, c, n in zip(best, conf, near)], conf

    def save(self, path: Path) -> None:
        """The classifier as plain JSON (kinds, settings, and the prototypes or the logistic regression's
        weights, with the standardisation): what detection loads to label alerts, numpy only."""
        out = {"method": self.method, "kinds": self.kinds, "min_confidence": self.min_confidence,
               "standardize": self.standardize, "unit": self.unit, "decorrelate": self.decorrelate}
        if self.standardize:
            out["mean"], out["std"] = self.mean.tolist(), self.std.tolist()
        if self.support is not None:
            out["min_similarity"], out["support"] = self.min_similarity, self.support.round(6).tolist()
        if self.model is None:
            out["method"], out["prototypes"] = "prototype", self.prototypes.round(6).tolist()
        else:
            out["coef"], out["intercept"] = self.model.coef.tolist(), self.model.intercept.tolist()
        Path(path).write_text(json.dumps(out))

    @property
    def dims(self) -> int:
        return int(self.prototypes.shape[1] if self.model is None else self.model.coef.shape[1])

    @classmethod
    def load(cls, path: Path) -> FewShot:
        d = json.loads(Path(path).read_text())
        f = cls(d.get("method", "prototype"), float(d["min_confidence"]), bool(d.get("standardize", False)),
                d.get("unit", "session"), decorrelate=float(d.get("decorrelate", 0.0)))
        f.kinds, f.model = list(d["kinds"]), None
        if "support" in d:
            f.min_similarity, f.support = float(d["min_similarity"]), np.asarray(d["support"], np.float64)
        if f.standardize:
            f.mean, f.std = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)
        if "coef" in d:
            f.model = _Softmax(np.asarray(d["coef"], np.float64), np.asarray(d["intercept"], np.float64))
        else:
            f.prototypes = np.asarray(d["prototypes"], np.float64)
        return f


class Background:
    """What unlabelled vectors give a few-shot classifier: each dimension's mean and spread and, with
    ``decorrelate`` > 0, the whitening by their shrunk correlation matrix (``FewShot.fit``).  Computed once,
    it serves every fit on the same vectors (the bench's draws)."""

    def __init__(self, vectors: np.ndarray, decorrelate: float = 0.0):
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError(f"few-shot background needs a 2-d array of vectors, got shape {vectors.shape}")
        self.decorrelate, self.dims = float(decorrelate), int(vectors.shape[1])
        self.mean, self.std = vectors.mean(0, dtype=np.float64), vectors.std(0, dtype=np.float64)
        self.std[self.std < 1e-9] = 1.0
        self.whiten = None
        if self.decorrelate > 0 and len(vectors) > 1:
            z = (np.asarray(_rows(vectors), np.float64) - self.mean) / self.std
            self.whiten = _whitener(z, self.decorrelate)


def _rows(background: np.ndarray, n: int = BACKGROUND_ROWS) -> np.ndarray:
    """At most ``n`` rows of the background, a seeded draw (the same vectors give the same classifier)."""
    background = np.asarray(background)
    if len(background) <= n:
        return background
    return background[np.sort(np.random.default_rng(0).choice(len(background), n, replace=False))]


def _whitener(z: np.ndarray, weight: float) -> np.ndarray:
    """The symmetric inverse square root of ``(1 - weight) I + weight R``, R the correlation matrix of the
    standardised background ``z`` (two rows or more): always invertible (eigenvalues >= 1 - weight)."""
    r = np.cov(z, rowvar=False)  # z is standardised: its covariance is the correlation matrix
    np.fill_diagonal(r, 1.0)  # a constant dimension (spread 0, set to 1) correlates with nothing
    vals, vecs = np.linalg.eigh((1 - weight) * np.eye(len(r)) + weight * r)
    return (vecs / np.sqrt(np.maximum(vals, 1 - weight))) @ vecs.T


class _Softmax:
    """A saved logistic regression's predict_proba in numpy (no scikit-learn at detection time). Two kinds:
    scikit-learn keeps one row of weights (the second kind's logit), softmax over (0, logit) is its sigmoid."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray):
        self.coef, self.intercept = coef, intercept

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        logits = z @ self.coef.T + self.intercept
        if logits.shape[1] == 1:
            logits = np.concatenate([np.zeros_like(logits), logits], 1)
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)


def _draw(rng, items: np.ndarray, k: int, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(support, held-out) items of one kind: k at random; with ``groups``, the support comes from whole groups
    drawn at random until they hold k items, and only the kind's other groups are held out (a kind needs two)."""
    if groups is None:
        support = rng.choice(items, k, replace=False)
        return support, np.setdiff1d(items, support)
    mine = groups[items]
    order = rng.permutation(np.unique(mine))
    used = 1
    while used < len(order) - 1 and np.isin(mine, order[:used]).sum() < k:
        used += 1
    inside = np.isin(mine, order[:used])
    pool = items[inside]
    return rng.choice(pool, min(k, len(pool)), replace=False), items[~inside]


def fewshot_accuracy(x: np.ndarray, kinds: list[str], k: int, method: str = "prototype", trials: int = 20,
                     seed: int = 0, standardize: bool = False, groups=None, background=None,
                     decorrelate: float = DECORRELATE) -> dict:
    """k examples per kind drawn at random, every other item classified; over ``trials`` draws: the mean
    accuracy and the mean balanced accuracy (mean per-kind recall: a large kind does not hide a small one).

    ``groups`` (one id per item, e.g. its window): examples and classified items never share a group, so an
    item is not told by a neighbour of its own window (flows of one window share their context, and one
    attack's flows look alike).  Each kind needs items in two groups; its examples are then at most what the
    groups drawn for them hold.  ``background``: unlabelled vectors that standardise and, for logreg with
    ``decorrelate`` > 0, decorrelate (``FewShot.fit``), or their ``Background`` (whose own weight then holds)."""
    rng = np.random.default_rng(seed)
    kinds_arr = np.asarray(kinds)
    groups = None if groups is None else np.asarray(groups)
    classes = sorted(set(kinds))
    by_class = {c: np.flatnonzero(kinds_arr == c) for c in classes}
    if min(len(v) for v in by_class.values()) <= k:
        raise ValueError(f"k={k} needs more than {k} items of every kind: "
                         + ", ".join(f"{c} {len(v)}" for c, v in by_class.items()))
    if groups is not None and min(len(np.unique(groups[v])) for v in by_class.values()) < 2:
        raise ValueError("group-disjoint few-shot needs every kind in at least two groups: "
                         + ", ".join(f"{c} {len(np.unique(groups[v]))}" for c, v in by_class.items()))
    if isinstance(background, Background):
        decorrelate = background.decorrelate if method == "logreg" else decorrelate
    elif standardize and background is not None and len(background):
        background = Background(background, decorrelate if method == "logreg" else 0.0)
    acc, bal = [], []
    for _ in range(trials):
        drawn = [_draw(rng, v, k, groups) for v in by_class.values()]
        support = np.concatenate([d[0] for d in drawn])
        query = np.concatenate([d[1] for d in drawn])
        clf = FewShot(method, standardize=standardize, decorrelate=decorrelate).fit(x[support], list(kinds_arr[support]), background)
        pred = np.asarray(clf.predict(x[query])[0])
        truth = kinds_arr[query]
        acc.append(float((pred == truth).mean()))
        bal.append(float(np.mean([(pred[truth == c] == c).mean() for c in classes])))
    return {"k": k, "method": method, "trials": trials, "accuracy": float(np.mean(acc)),
            "balanced_accuracy": float(np.mean(bal)), "balanced_accuracy_std": float(np.std(bal)),
            "kinds": {c: int(len(v)) for c, v in by_class.items()}, "group_disjoint": groups is not None}
