"""Log lines in, vectors out: one unit vector per session (and per window), from the encoder's hidden states.

A window's vector is the mean of its positions' final hidden states, L2-normalised
(``LogEncoder.embedding``; the exported ONNX graph has it as its ``embedding`` output, so the torch-free engine
embeds too).  A session cut into several windows gets the normalised mean of its windows' vectors.  Cosine
similarity between two sessions is then the dot product of their vectors (loglm.analyst.search).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from loglm.detect.score_core import ordered_map
from loglm.progress import Progress
from loglm.windows import length_batches, pad_windows

# (tokens, gaps, pad_mask) of a padded batch -> (B, d) unit vectors
EmbedFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def torch_embed_fn(encoder) -> EmbedFn:
    import torch

    from loglm.detect.torch_scoring import on_device_of

    encoder.eval()
    to = on_device_of(encoder)

    @torch.inference_mode()
    def embed(tok: np.ndarray, gap: np.ndarray, pad: np.ndarray) -> np.ndarray:
        t = to(pad)
        hidden = encoder(to(tok), to(gap), t)
        return encoder.embedding(hidden.float(), t).cpu().numpy()

    return embed


def torch_event_embed_fn(encoder) -> EmbedFn:
    import torch

    from loglm.detect.torch_scoring import on_device_of

    encoder.eval()
    to = on_device_of(encoder)

    @torch.inference_mode()
    def embed(tok: np.ndarray, gap: np.ndarray, pad: np.ndarray) -> np.ndarray:
        t, g = to(tok), to(gap)
        return encoder.event_embedding(encoder(t, g, to(pad)).float(), t, g).cpu().numpy()

    return embed


def _padded_batches(fn: EmbedFn, tokens, gaps, closed, batch_size: int, max_batch_tokens: int, workers: int):
    """(window rows, fn's output) per length-bucketed padded batch, in order (the batching scoring uses)."""
    def batch(rows: list[int]):
        tok, gap, pad = pad_windows([(tokens[i], gaps[i], closed[i]) for i in rows])
        return rows, fn(tok, gap, pad)

    return ordered_map(batch, length_batches([len(t) for t in tokens], batch_size, max_batch_tokens), workers)


def embed_events(fn: EmbedFn, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool],
                 batch_size: int = 64, max_batch_tokens: int = 16384, workers: int = 1) -> list[np.ndarray]:
    """Per window, an (events, 2d) float32 array: each event's unit vector, its context half and its own half
    (``LogEncoder.event_embedding``)."""
    out: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(tokens)
    for rows, per_window in _event_batches(fn, tokens, gaps, closed, batch_size, max_batch_tokens, workers):
        for i, v in zip(rows, per_window):
            out[i] = v
    return out


def _event_batches(fn: EmbedFn, tokens, gaps, closed, batch_size: int, max_batch_tokens: int, workers: int):
    """(window rows, each window's (events, 2d) vectors) per padded batch: position 0 ([SUM]) and padding cut."""
    for rows, vec in _padded_batches(fn, tokens, gaps, closed, batch_size, max_batch_tokens, workers):
        yield rows, [np.ascontiguousarray(vec[j, 1:1 + len(tokens[i])], np.float32) for j, i in enumerate(rows)]


def event_embedding_batches(fn: EmbedFn, table, tokens: list[np.ndarray], gaps: list[np.ndarray],
                            closed: list[bool], batch_size: int = 64, max_batch_tokens: int = 16384,
                            workers: int = 1):
    """One table per batch of windows, one row per event: its session id, window (``chunk``), place in the
    window (``position``), event id (``event_idx``: its row in the prepared events, or in the scored input),
    entity, and ``embedding``, the event's vector (context half and own half, ``LogEncoder.event_embedding``)."""
    import pyarrow as pa

    sids, chunks = table.column("session_id").to_pylist(), table.column("chunk").to_pylist()
    ents, idx = table.column("entity").to_pylist(), table.column("event_idx").to_pylist()
    progress = Progress("embedding events", "windows")
    for rows, per_window in _event_batches(fn, tokens, gaps, closed, batch_size, max_batch_tokens, workers):
        counts = [len(v) for v in per_window]
        vecs = np.concatenate(per_window)
        yield pa.table({
            "session_id": [sids[i] for i, k in zip(rows, counts) for _ in range(k)],
            "chunk": pa.array([chunks[i] for i, k in zip(rows, counts) for _ in range(k)], pa.int32()),
            "position": pa.array([j for k in counts for j in range(k)], pa.int32()),
            "event_idx": pa.array([e for i, k in zip(rows, counts) for e in idx[i][:k]], pa.int64()),
            "entity": [ents[i] for i, k in zip(rows, counts) for _ in range(k)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()),
                                                           vecs.shape[1]),
        })
        progress.tick(len(rows), f"of {len(tokens):,}")


def embed_windows(fn: EmbedFn, tokens: list[np.ndarray], gaps: list[np.ndarray], closed: list[bool],
                  batch_size: int = 64, max_batch_tokens: int = 16384, workers: int = 1) -> np.ndarray:
    """(windows, d) float32 unit vectors, in window order; batched by length like scoring (bounded memory)."""
    if not tokens:
        return np.zeros((0, 0), np.float32)
    out: np.ndarray | None = None
    progress = Progress("embedding", "windows")
    for rows, vec in _padded_batches(fn, tokens, gaps, closed, batch_size, max_batch_tokens, workers):
        if out is None:
            out = np.zeros((len(tokens), vec.shape[1]), np.float32)
        out[rows] = vec
        progress.tick(len(rows), f"of {len(tokens):,}")
    return out


def session_vectors(session_ids: list[str], window_vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(session ids in first-seen order, (sessions, d) unit vectors): a session is the normalised mean of its
    windows."""
    index: dict[str, int] = {}
    for sid in session_ids:
        index.setdefault(sid, len(index))
    rows = np.fromiter((index[s] for s in session_ids), np.int64, len(session_ids))
    sums = np.zeros((len(index), window_vectors.shape[1]), np.float64)
    np.add.at(sums, rows, window_vectors.astype(np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return list(index), (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def embedding_table(table, window_vectors: np.ndarray, scores: np.ndarray | None = None):
    """One row per session: ids, entity, time span, events, label, score (its highest window's, when given),
    and ``embedding`` (fixed-size list of float32)."""
    import pyarrow as pa

    from loglm.detect.detector import session_score_rows

    sids = table.column("session_id").to_pylist()
    ids, vecs = session_vectors(sids, window_vectors)
    folded = session_score_rows(table, np.zeros(len(sids)) if scores is None else scores)
    row_of = {r["session_id"]: r for r in folded}
    rows = [{**row_of[s], "score": None if scores is None else row_of[s]["score"]} for s in ids]
    d = vecs.shape[1]
    out = pa.table({
        "session_id": [r["session_id"] for r in rows], "entity_type": [r["entity_type"] for r in rows],
        "entity": [r["entity"] for r in rows], "start_ts": pa.array([r["start_ts"] for r in rows], pa.float64()),
        "end_ts": pa.array([r["end_ts"] for r in rows], pa.float64()),
        "n_events": pa.array([r["n_events"] for r in rows], pa.int64()),
        "label": pa.array([r["label"] for r in rows], pa.int64()),
        "score": pa.array([r["score"] for r in rows], pa.float64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), d),
    })
    return out


MODEL_KEY = b"loglm.model_run_id"  # the schema metadata naming the model whose vectors a file holds


def with_model(table, model):
    """``table`` with its model's run id in the schema metadata (an alert's own vector is compared with a
    file's only when both come from one model: loglm.analyst.alert_vectors)."""
    run_id = (getattr(model, "meta", None) or {}).get("run_id")
    return table if run_id is None else table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                                        MODEL_KEY: str(run_id).encode()})


def embeddings_model(meta) -> str | None:
    """The run id of the model an embeddings file's vectors come from (None: not recorded, an older file)."""
    value = (meta.schema.metadata or {}).get(MODEL_KEY)
    return value.decode() if value else None


def read_embeddings(path: str | Path) -> tuple[object, np.ndarray]:
    """(the Parquet table without its vectors, (n, d) float32 vectors)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    if "embedding" not in t.column_names:
        raise ValueError(f"{path}: not an embeddings file (no 'embedding' column; pipelines.embed / loglm embed write one)")
    col = t.column("embedding").combine_chunks()
    d = col.type.list_size
    vecs = col.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)
    return t.drop(["embedding"]), vecs


def run(cfg, model, embed_fn: EmbedFn, workers: int = 1, event_fn: EmbedFn | None = None) -> dict:
    """Embed ``cfg.inputs`` (raw lines, read the way the model's data was) or the prepared split ``cfg.split``
    into ``cfg.out`` (default ``<model>/embeddings/<split or inputs>.parquet``); with ``cfg.embed_events``
    each event's vector too (``event_fn``), into the same name ending ``.events.parquet``."""
    if cfg.embed_events and event_fn is None:
        raise ValueError("embed_events=true needs per-event vectors: this model or bundle gives none (export it "
                         "again with this version)")
    import time

    from loglm.artifacts import ParquetAppender
    from loglm.detect.detector import DetectionInput, detect_config_of
    from loglm.windows import windows_of

    t0 = time.perf_counter()
    dcfg = detect_config_of(model, cfg.detect)
    out = Path(cfg.out) if cfg.out else Path(model.folder) / "embeddings" / f"{'inputs' if cfg.inputs else cfg.split}.parquet"
    sessions = ParquetAppender(out)
    events = ParquetAppender(events_path(out)) if cfg.embed_events else None
    windows, dim = 0, 0
    try:  # a piece (a prepared shard) at a time, as batch detection reads: memory follows a piece
        with DetectionInput(cfg, model, out) as source:
            for table, _ in source.tables():
                toks, gaps, closed = windows_of(table)
                vectors = embed_windows(embed_fn, toks, gaps, closed, dcfg.batch_size, dcfg.max_batch_tokens, workers)
                sessions.write(with_model(embedding_table(table, vectors), model))
                windows, dim = windows + len(toks), int(vectors.shape[1])
                if events is not None:
                    for batch in event_embedding_batches(event_fn, table, toks, gaps, closed, dcfg.batch_size,
                                                         dcfg.max_batch_tokens, workers):
                        events.write(batch)
            account = source.account
        if sessions.rows == 0:
            raise ValueError(f"no session to embed in {list(cfg.inputs) or cfg.split} (lines: {account})")
        sessions.close()
        summary = {"embeddings_path": str(out), "sessions": sessions.rows, "windows": windows, "dim": dim,
                   "lines": account}
        if events is not None:
            summary["event_embeddings_path"] = str(events.close())
            summary["events"] = events.rows
    except BaseException:
        sessions.abort()
        if events is not None:
            events.abort()
        raise
    return {**summary, "seconds": round(time.perf_counter() - t0, 3)}


def events_path(out: Path) -> Path:
    """Where the per-event vectors of ``out`` go: ``emb.parquet`` -> ``emb.events.parquet``."""
    return out.with_suffix(".events.parquet")
