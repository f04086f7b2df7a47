"""Alert context added after scoring: the few-shot kind (when a kinds file is given) and ATT&CK techniques.
One step, used by batch detection, streaming and evaluation alike."""

from __future__ import annotations


def embed_fn_of(model):
    """The window embedder of a loaded model: an exported bundle's ONNX graph or a torch encoder's."""
    if hasattr(model, "embed"):
        return model.embed
    from loglm.analyst.embed import torch_embed_fn

    return torch_embed_fn(model.encoder)


def enrich_alerts(alerts: list[dict], table, model, dcfg) -> list[dict]:
    """Adds ``kind`` ({name, confidence}) with ``dcfg.kinds`` and ``attacks`` with ``dcfg.attack_context``."""
    if not alerts or not (dcfg.kinds or dcfg.attack_context):
        return alerts
    if dcfg.kinds:
        from loglm.analyst.embed import embed_windows, session_vectors
        from loglm.analyst.fewshot import FewShot

        clf = FewShot.load(dcfg.kinds)
        wanted = {a["session_id"] for a in alerts}
        sids = table.column("session_id").to_pylist()
        rows = [r for r, s in enumerate(sids) if s in wanted]
        sub = table.take(rows)
        from loglm.windows import windows_of

        vec = embed_windows(embed_fn_of(model), *windows_of(sub), dcfg.batch_size, dcfg.max_batch_tokens)
        ids, sv = session_vectors([sids[r] for r in rows], vec)
        if sv.shape[1] != clf.dims:
            raise ValueError(f"detect.kinds={dcfg.kinds}: its classifier reads {clf.dims} dimensions, "
                             f"this model's vectors {sv.shape[1]}: fit the kinds with this model's embeddings")
        names, conf = clf.predict(sv)
        kind = {sid: {"name": n, "confidence": round(float(c), 4)} for sid, n, c in zip(ids, names, conf)}
        for a in alerts:
            a["kind"] = kind[a["session_id"]]
    if dcfg.attack_context:
        from loglm.analyst.attack import attack_context

        for a in alerts:
            known = a.get("kind", {}).get("name")
            a["attacks"] = attack_context(a, None if known in (None, "unknown") else known)
    return alerts

