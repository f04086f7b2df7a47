"""Flow-feature baselines: each flow on its own, as a vector of its numeric fields (no sequence, no context).

Features (fitted on training flows only): log1p of duration, bytes and packets each way, log bytes per
packet each way, the destination port one-hot over the training flows' most common ports (others as their
range class), and the direction (in/out/int/ext, from ``data.local_networks``).  Standardised with the
training flows' mean and spread.

- ``flow_iforest``: IsolationForest (Liu et al., ICDM 2008), 200 trees;
- ``flow_pca``: squared residual outside the principal subspace holding 95% of the variance;
- ``kitnet``: a Kitsune-style autoencoder ensemble (Mirsky et al., NDSS 2018): features clustered by
  correlation into groups of at most ``max_group``, one small autoencoder per group (hidden = 75% of its
  inputs), an output autoencoder over the groups' reconstruction errors; the score is its RMSE.  Inputs
  min-max scaled on training flows, as KitNET does.  Trained in mini-batches for ``epochs`` (KitNET trains
  online in one pass; more passes only help it).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np

from loglm.ingest.flows import NUMERIC, direction, port_class

DIRECTIONS = ("in", "out", "int", "ext", "na")


class FlowFeatures:
    def __init__(self, n_ports: int = 32, local_networks: tuple = ()):
        import ipaddress

        self.n_ports = n_ports
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in local_networks)

    def _raw(self, f: dict) -> list[float]:
        nums = [math.log1p(max(0.0, float(f.get(n) or 0.0))) for n in NUMERIC]
        fb, bb = float(f.get("fwd_bytes") or 0.0), float(f.get("bwd_bytes") or 0.0)
        fp, bp = float(f.get("fwd_pkts") or 0.0), float(f.get("bwd_pkts") or 0.0)
        nums += [math.log1p(fb / fp) if fp > 0 else 0.0, math.log1p(bb / bp) if bp > 0 else 0.0]
        port = f.get("dst_port")
        ports = [float(port == p) for p in self.ports]
        cls = "known" if port in self._port_set else port_class(port)
        ports += [float(cls == c) for c in ("sys", "reg", "eph", "na")]
        d = direction(f, self.networks)
        return nums + ports + [float(d == x) for x in DIRECTIONS]

    def fit(self, flows: list[dict]) -> np.ndarray:
        counts = Counter(f.get("dst_port") for f in flows if f.get("dst_port") is not None)
        self.ports = [p for p, _ in counts.most_common(self.n_ports)]
        self._port_set = set(self.ports)
        x = np.array([self._raw(f) for f in flows], dtype=np.float64)
        self.mean, self.std = x.mean(0), x.std(0)
        self.std[self.std < 1e-9] = 1.0
        return (x - self.mean) / self.std

    def transform(self, flows: list[dict]) -> np.ndarray:
        x = np.array([self._raw(f) for f in flows], dtype=np.float64).reshape(len(flows), -1)
        return (x - self.mean) / self.std


class FlowIsolationForest:
    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, x: np.ndarray):
        from sklearn.ensemble import IsolationForest

        self.forest = IsolationForest(n_estimators=200, random_state=self.seed).fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return -self.forest.score_samples(x)


class FlowPCA:
    def __init__(self, variance: float = 0.95):
        self.variance = variance

    def fit(self, x: np.ndarray):
        from sklearn.decomposition import PCA

        self.pca = PCA(n_components=self.variance, svd_solver="full").fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        proj = self.pca.inverse_transform(self.pca.transform(x))
        return ((x - proj) ** 2).sum(1)


def correlation_groups(x: np.ndarray, max_group: int) -> list[list[int]]:
    """KitNET's feature mapper: agglomerative clustering on correlation distance, cut so that no group
    holds more than ``max_group`` features."""
    from scipy.cluster.hierarchy import linkage, to_tree

    n = x.shape[1]
    if n <= max_group:
        return [list(range(n))]
    with np.errstate(invalid="ignore", divide="ignore"):  # constant features: correlation 0
        c = np.corrcoef(x, rowvar=False)
    c = np.nan_to_num(c, nan=0.0)
    dist = 1.0 - np.abs(c)
    iu = np.triu_indices(n, 1)
    tree = to_tree(linkage(np.clip(dist[iu], 0.0, None), method="complete"))
    groups: list[list[int]] = []

    def split(node):
        if node.get_count() <= max_group:
            groups.append(sorted(node.pre_order()))
        else:
            split(node.get_left())
            split(node.get_right())

    split(tree)
    return groups


class KitNET:
    def __init__(self, max_group: int = 10, hidden_ratio: float = 0.75, epochs: int = 10, lr: float = 1e-3,
                 batch_size: int = 256, seed: int = 0):
        self.max_group, self.hidden_ratio, self.epochs = max_group, hidden_ratio, epochs
        self.lr, self.batch_size, self.seed = lr, batch_size, seed

    @staticmethod
    def _ae(n_in: int, n_hidden: int):
        import torch

        return torch.nn.Sequential(torch.nn.Linear(n_in, n_hidden), torch.nn.Sigmoid(),
                                   torch.nn.Linear(n_hidden, n_in), torch.nn.Sigmoid())

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.lo) / self.span, -1.0, 2.0)

    def _group_errors(self, x):
        import torch

        errs = [torch.sqrt(((ae(x[:, g]) - x[:, g]) ** 2).mean(1) + 1e-12) for g, ae in zip(self.groups, self.ensemble)]
        return torch.stack(errs, 1)

    def fit(self, x: np.ndarray):
        import torch

        torch.manual_seed(self.seed)
        self.lo, hi = x.min(0), x.max(0)
        self.span = np.where(hi - self.lo > 1e-9, hi - self.lo, 1.0)
        z = self._scale(x)
        self.groups = correlation_groups(z, self.max_group)
        self.ensemble = [self._ae(len(g), max(1, math.ceil(self.hidden_ratio * len(g)))) for g in self.groups]
        n_out = len(self.groups)
        self.output = self._ae(n_out, max(1, math.ceil(self.hidden_ratio * n_out)))
        params = [p for m in [*self.ensemble, self.output] for p in m.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr)
        t = torch.tensor(z, dtype=torch.float32)
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            for b in np.array_split(rng.permutation(len(t)), max(1, len(t) // self.batch_size)):
                xb = t[b]
                errs = self._group_errors(xb)
                loss = errs.pow(2).mean()  # the ensemble learns to reconstruct its groups
                e = errs.detach()
                loss = loss + ((self.output(e) - e) ** 2).mean()  # the output layer learns normal error patterns
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            t = torch.tensor(self._scale(x), dtype=torch.float32)
            e = self._group_errors(t)
            return torch.sqrt(((self.output(e) - e) ** 2).mean(1)).numpy().astype(np.float64)


FLOW_BASELINES = ("flow_iforest", "flow_pca", "kitnet")


def make(name: str, seed: int, epochs: int):
    if name == "flow_iforest":
        return FlowIsolationForest(seed)
    if name == "flow_pca":
        return FlowPCA()
    if name == "kitnet":
        return KitNET(epochs=epochs, seed=seed)
    raise ValueError(f"unknown flow baseline {name!r}; known: {', '.join(FLOW_BASELINES)}")


def read_flows(data_dir, event_ids: list[int]) -> list[dict]:
    """The canonical fields of these events from a prepared flow dataset."""
    return read_flow_columns(data_dir, event_ids)[0]


def read_flow_columns(data_dir, event_ids: list[int], columns: tuple[str, ...] = ()) -> tuple[list[dict], dict]:
    """The canonical fields of these events and their ``columns`` (e.g. ``label``), in one pass over the
    events table's row groups: (flows, {column: values}) in the order of ``event_ids``."""
    from pathlib import Path

    import pyarrow.parquet as pq

    path = Path(data_dir) / "events.parquet"
    if "fields" not in pq.read_schema(path).names:
        raise ValueError(f"{path} holds no flow fields: flow-feature baselines need flow data prepared by this "
                         "version (prepare it again)")
    from loglm.shards import event_columns

    got = event_columns(data_dir, event_ids, ["fields", *columns])
    return [json.loads(f or "{}") for f in got.pop("fields")], got
