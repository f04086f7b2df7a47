"""Windows as model input, in numpy (shared by torch training and the torch-free ONNX engine).

A window is (tokens, gaps, closed).  ``gaps`` holds what the model reads beside each event's token: its
time-gap bucket, shape (n,), or, for a model with flow facets (loglm.ingest.flows), the gap bucket then the
event's facet ids, shape (n, 1 + len(FACET_FIELDS)).  The encoder and the ONNX graph take it as it is.
"""

from __future__ import annotations

import numpy as np

from loglm.vocab import END, PAD, SUM


def pad_windows(items: list[tuple[np.ndarray, np.ndarray, bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, gaps, pad_mask), padded to the longest window: [SUM], the events, [END] if closed; gaps
    (B, L) or, with facets, (B, L, 1 + facets), zero (no facet) at [SUM], [END] and padding."""
    length = 2 + max(len(t) for t, _, _ in items)
    tokens = np.full((len(items), length), PAD, dtype=np.int64)
    gaps = np.zeros((len(items), length, *items[0][1].shape[1:]), dtype=np.int64)
    for i, (t, g, closed) in enumerate(items):
        tokens[i, 0] = SUM
        tokens[i, 1:1 + len(t)] = t
        if closed:
            tokens[i, 1 + len(t)] = END
        gaps[i, 1:1 + len(g)] = g
    return tokens, gaps, tokens != PAD


def with_end(tokens: list, closed: list[bool]) -> list[np.ndarray]:
    """Each window's events as an int64 array, ``[END]`` after a closed one (what the baselines read: the
    DeepLog LSTM's sequences, the count models' rows)."""
    end = np.array([END], np.int64)
    return [np.concatenate([np.asarray(t, np.int64), end]) if c else np.asarray(t, np.int64)
            for t, c in zip(tokens, closed)]


def length_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Window indices in batches of similar length (shortest first): at most ``batch_size`` windows and at
    most ``max_tokens`` padded positions each, so activation memory (attention grows with B x L^2) stays
    bounded whatever the window length; a window longer than ``max_tokens`` is a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:  # ascending lengths: the window being added is the batch's longest
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * (lengths[i] + 2) > max_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def windows_of(table) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]]:
    """(tokens, gaps, closed) per row of a session table; a table whose rows hold facets gives gaps of shape
    (n, 1 + facets) (see the module's docstring)."""
    toks = [np.asarray(t, dtype=np.int64) for t in table.column("tokens").to_pylist()]
    gaps = [np.asarray(g, dtype=np.int64) for g in table.column("gaps").to_pylist()]
    if "facets" in table.column_names:
        for i, f in enumerate(table.column("facets").to_pylist()):
            if f:
                gaps[i] = np.column_stack([gaps[i], np.asarray(f, dtype=np.int64).reshape(len(toks[i]), -1)])
    return toks, gaps, [bool(c) for c in table.column("closed").to_pylist()]
