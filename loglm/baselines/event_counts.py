"""Event-count baselines (Xu et al., SOSP 2009; Liu et al., ICDM 2008 for IsolationForest): each session is
a vector of event counts (TF-IDF weighted, L2-normalised); PCA scores the squared residual outside the
principal subspace of normal training sessions, IsolationForest its isolation depth.  Order is ignored.
"""

from __future__ import annotations

import numpy as np

from loglm.vocab import END


def count_matrix(tokens: list, closed: list[bool], vocab_size: int):
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for i, (t, c) in enumerate(zip(tokens, closed)):
        seq = np.asarray(list(t) + ([END] if c else []), dtype=np.int64)  # [END]: the session finished
        ids, counts = np.unique(seq, return_counts=True)
        rows.extend([i] * len(ids))
        cols.extend(ids.tolist())
        vals.extend(counts.tolist())
    return csr_matrix((vals, (rows, cols)), shape=(len(tokens), vocab_size), dtype=np.float64)


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
