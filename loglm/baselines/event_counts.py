"""Event-count baselines (Xu et al., SOSP 2009; Liu et al., ICDM 2008 for IsolationForest): each session is
a vector of event counts (TF-IDF weighted, L2-normalised); PCA scores the squared residual outside the
principal subspace of normal training sessions, IsolationForest its isolation depth.  Order is ignored.
"""

from __future__ import annotations

import numpy as np


def count_matrix(tokens: list, closed: list[bool], vocab_size: int):
    """Each window's event counts ([END] counted once for a closed window) as a sparse matrix, built from one
    flat array of the windows' events: a few integers per event while it is built, not a Python object per
    (window, event) pair."""
    from scipy.sparse import csr_matrix

    from loglm.windows import with_end

    parts = with_end(tokens, closed)  # [END]: the session finished
    lens = np.fromiter((len(p) for p in parts), np.int64, len(parts))
    cols = (np.concatenate(parts) if parts else np.zeros(0, np.int64)).astype(np.int32)  # ids < vocab_size
    del parts
    rows = np.repeat(np.arange(len(lens), dtype=np.int32), lens)
    x = csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(lens), vocab_size), dtype=np.float64)
    x.sum_duplicates()  # one entry per (window, event): its count
    return x


class _Weighting:
    def fit(self, x):
        df = np.asarray((x > 0).sum(0)).ravel()
        self.idf = np.log((1 + x.shape[0]) / (1 + df)) + 1.0
        return self

    def transform(self, x) -> np.ndarray:
        dense = np.asarray(x.multiply(self.idf[None, :]).todense())
        norm = np.linalg.norm(dense, axis=1, keepdims=True)
        return dense / np.maximum(norm, 1e-12)


class PCABaseline:
    def __init__(self, variance: float = 0.95):
        self.variance = variance

    def fit(self, x) -> PCABaseline:
        from sklearn.decomposition import PCA

        self.w = _Weighting().fit(x)
        z = self.w.transform(x)
        self.mean = z.mean(0)
        self.pca = PCA(n_components=self.variance, svd_solver="full").fit(z - self.mean)
        return self

    def score(self, x) -> np.ndarray:
        z = self.w.transform(x) - self.mean
        proj = self.pca.inverse_transform(self.pca.transform(z))
        return ((z - proj) ** 2).sum(1)  # squared prediction error (SPE / Q statistic)


class IsolationForestBaseline:
    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, x) -> IsolationForestBaseline:
        from sklearn.ensemble import IsolationForest

        self.w = _Weighting().fit(x)
        self.forest = IsolationForest(n_estimators=200, random_state=self.seed).fit(self.w.transform(x))
        return self

    def score(self, x) -> np.ndarray:
        return -self.forest.score_samples(self.w.transform(x))
