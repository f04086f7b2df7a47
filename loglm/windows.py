"""Windows as model input, in numpy (shared by torch training and the torch-free ONNX engine)."""

from __future__ import annotations

import numpy as np

from loglm.vocab import END, PAD, SUM


def pad_windows(items: list[tuple[np.ndarray, np.ndarray, bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, gaps, pad_mask), padded to the longest window: [SUM], the events, [END] if closed."""
    length = 2 + max(len(t) for t, _, _ in items)
    tokens = np.full((len(items), length), PAD, dtype=np.int64)
    gaps = np.zeros((len(items), length), dtype=np.int64)
    for i, (t, g, closed) in enumerate(items):
        tokens[i, 0] = SUM
        tokens[i, 1:1 + len(t)] = t
        if closed:
            tokens[i, 1 + len(t)] = END
        gaps[i, 1:1 + len(g)] = g
    return tokens, gaps, tokens != PAD


def windows_of(table) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]]:
    """(tokens, gaps, closed) per row of a session table."""
    toks = [np.asarray(t, dtype=np.int64) for t in table.column("tokens").to_pylist()]
    gaps = [np.asarray(g, dtype=np.int64) for g in table.column("gaps").to_pylist()]
    return toks, gaps, [bool(c) for c in table.column("closed").to_pylist()]
