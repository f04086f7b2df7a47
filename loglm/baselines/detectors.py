"""One protocol for every baseline of the evaluation suite.

A baseline is named by ``conf/baseline/<name>.yaml``: ``_target_`` (a factory below, or one of your own)
and its own settings.  The factory returns a :class:`Detector`:

- ``unit``: ``"window"`` (it scores LogLM's windows of event ids, as LogLM does) or ``"flow"`` (it scores
  each flow on its own fields);
- ``fit(train, val)``: train on the normal training items (``val``: validation normal items, for models that
  stop early on them, as LogLM does);
- ``score(items) -> np.ndarray``: one score per item, higher = more anomalous;
- ``keys(items)``: what makes two items "the same" for the unique-item metrics (flows only; windows use
  their event sequences).

The suite (``loglm.evaluation_suite``) builds each with the runtime facts its factory asks for by name
(:data:`RUNTIME`), trains it on the same items, thresholds it on LogLM's validation items at the same
target FPR and scores the same test items: one threshold rule, one event-level expansion, one MLflow loop.
Settings in the YAML file win over the runtime defaults; ``suite.baseline_epochs`` wins over both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# what the suite knows at run time and passes to a factory that has a parameter of that name
RUNTIME = ("vocab_size", "seed", "epochs", "patience", "unk_surprisal", "local_networks")


@dataclass
class Windows:
    """LogLM's windows of one split: event-id sequences and whether each one's session had ended."""

    tokens: list
    closed: list[bool]


class Detector(Protocol):
    unit: str

    def fit(self, train, val=None) -> Detector: ...

    def score(self, items) -> np.ndarray: ...


class SequenceDetector:
    """DeepLog-style next-event LSTM over each window's events (its highest surprisal scores the window)."""

    unit = "window"

    def __init__(self, model, patience: int | None, unk_surprisal: float):
        self.model, self.patience, self.unk_surprisal = model, patience, unk_surprisal

    @property
    def epochs_run(self) -> int:
        return self.model.epochs_run

    @staticmethod
    def _seqs(w: Windows) -> list[list[int]]:
        from loglm.baselines.deeplog import DeepLog

        return DeepLog.sequences(w.tokens, w.closed)

    def fit(self, train: Windows, val: Windows | None = None) -> SequenceDetector:
        self.model.fit(self._seqs(train), self._seqs(val) if val is not None else None, patience=self.patience)
        return self

    def score(self, items: Windows) -> np.ndarray:
        return self.model.score(self._seqs(items), self.unk_surprisal)

    @property
    def quiet_top(self) -> float | None:
        """The threshold's floor (DeepLog's top-g rule: the highest score of a window without a miss)."""
        return self.model.quiet_top


class CountsDetector:
    """A model of each window's event counts (order ignored)."""

    unit = "window"

    def __init__(self, model, vocab_size: int):
        self.model, self.vocab_size = model, vocab_size

    def _x(self, w: Windows):
        from loglm.baselines.event_counts import count_matrix

        return count_matrix(w.tokens, w.closed, self.vocab_size)

    def fit(self, train: Windows, val: Windows | None = None) -> CountsDetector:
        self.model.fit(self._x(train))
        return self

    def score(self, items: Windows) -> np.ndarray:
        return self.model.score(self._x(items))


class FlowDetector:
    """A model of each flow's own numeric fields (``loglm.baselines.flow_features``), features fitted on the
    training flows."""

    unit = "flow"

    def __init__(self, model, local_networks: tuple):
        from loglm.baselines.flow_features import FlowFeatures

        self.model, self.features = model, FlowFeatures(local_networks=tuple(local_networks))

    @property
    def epochs_run(self) -> int | None:
        return getattr(self.model, "epochs", None)

    def fit(self, train: list[dict], val=None) -> FlowDetector:
        self.model.fit(self.features.fit(train))
        return self

    def score(self, items: list[dict]) -> np.ndarray:
        return self.model.score(self.features.transform(items))

    def keys(self, items: list[dict]) -> list[tuple]:
        return [tuple(np.round(row, 3)) for row in self.features.transform(items)]  # identical feature vectors


# ------------------------------------------------------------------------------- factories (conf/baseline)

def deeplog(vocab_size: int, seed: int, epochs: int, patience: int, unk_surprisal: float, window: int = 10,
            hidden: int = 64, layers: int = 2, top_g: int | None = None) -> SequenceDetector:
    from loglm.baselines.deeplog import DeepLog

    return SequenceDetector(DeepLog(vocab_size, window=window, hidden=hidden, layers=layers, epochs=epochs, seed=seed,
                                    top_g=top_g), patience, unk_surprisal)


def pca(vocab_size: int, variance: float = 0.95) -> CountsDetector:
    from loglm.baselines.event_counts import PCABaseline

    return CountsDetector(PCABaseline(variance), vocab_size)


def iforest(vocab_size: int, seed: int) -> CountsDetector:
    from loglm.baselines.event_counts import IsolationForestBaseline

    return CountsDetector(IsolationForestBaseline(seed), vocab_size)


def flow_iforest(seed: int, local_networks: tuple) -> FlowDetector:
    from loglm.baselines.flow_features import FlowIsolationForest

    return FlowDetector(FlowIsolationForest(seed), local_networks)


def flow_pca(local_networks: tuple, variance: float = 0.95) -> FlowDetector:
    from loglm.baselines.flow_features import FlowPCA

    return FlowDetector(FlowPCA(variance), local_networks)


def kitnet(seed: int, epochs: int, local_networks: tuple, max_group: int = 10) -> FlowDetector:
    from loglm.baselines.flow_features import KitNET

    return FlowDetector(KitNET(max_group=max_group, epochs=epochs, seed=seed), local_networks)


def build(name: str, runtime: dict, epochs_override: int | None = None) -> Detector:
    """The baseline ``conf/baseline/<name>.yaml`` describes, given the runtime facts its factory asks for."""
    import inspect

    from hydra.utils import get_method

    spec = baseline_spec(name)
    factory = get_method(spec.pop("_target_"))
    params = inspect.signature(factory).parameters
    args = {k: v for k, v in runtime.items() if k in params}
    args.update(spec)  # the YAML's own settings win over the runtime defaults
    if epochs_override is not None and "epochs" in params:
        args["epochs"] = epochs_override
    missing = [p.name for p in params.values() if p.default is inspect.Parameter.empty and p.name not in args]
    if missing:
        raise ValueError(f"baseline {name}: its factory {factory.__module__}.{factory.__name__} needs {missing}, "
                         f"which neither conf/baseline/{name}.yaml nor the suite ({', '.join(RUNTIME)}) gives")
    return factory(**args)


def baseline_path(name: str):
    """``conf/baseline/<name>.yaml`` (refused, naming the known ones, when there is none)."""
    from loglm.config import PROJECT_ROOT

    folder = PROJECT_ROOT / "conf" / "baseline"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ValueError(f"unknown baseline {name!r} (no {path}); known: {known}")
    return path


def baseline_spec(name: str) -> dict:
    """``conf/baseline/<name>.yaml`` as a plain dict."""
    from omegaconf import OmegaConf

    path = baseline_path(name)
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
        raise ValueError(f"{path} must name its factory with _target_")
    return spec


def describe(name: str) -> str:
    """The header comment of ``conf/baseline/<name>.yaml`` (what the model is, at which settings), one line."""
    from loglm.config import PROJECT_ROOT

    lines = (PROJECT_ROOT / "conf" / "baseline" / f"{name}.yaml").read_text().splitlines()
    text = " ".join(x.lstrip("# ").strip() for x in lines if x.startswith("#"))
    return text.rstrip(".") + "." if text else ""
