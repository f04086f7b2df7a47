"""Alert context added after scoring: the few-shot kind (when a kinds file is given) and ATT&CK techniques.
One step, used by batch detection, streaming and evaluation alike."""

from __future__ import annotations

from dataclasses import replace


def embed_fn_of(model):
    """The window embedder of a loaded model: an exported bundle's ONNX graph or a torch encoder's."""
    if hasattr(model, "embed"):
        return model.embed
    from loglm.analyst.embed import torch_embed_fn

    return torch_embed_fn(model.encoder)


def event_embed_fn_of(model):
    """The per-event embedder of a loaded model: a bundle's ONNX ``event_vectors`` or a torch encoder's."""
    if hasattr(model, "embed_events"):
        return model.embed_events
    from loglm.analyst.embed import torch_event_embed_fn

    return torch_event_embed_fn(model.encoder)


def event_kinds(clf, sids: list[str], per_window: list) -> dict[str, dict]:
    """An alert's kind from its events' (an event kinds file): each event is classified, the events sure of
    a kind (at least ``min_confidence``) vote, and the alert takes the kind with the highest summed
    confidence, reported as its voters' mean confidence and their count; ``unknown`` when no event is sure.
    An alert's ordinary events (benign flows beside an attack) fall below the floor or split their votes."""
    from collections import defaultdict

    import numpy as np

    votes: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sid, vec in zip(sids, per_window):
        if not len(vec):
            continue
        names, conf = clf.predict(vec)
        for n, c in zip(names, conf):
            if n != "unknown":
                votes[sid][n].append(float(c))
    out = {}
    for sid in dict.fromkeys(sids):
        v = votes.get(sid)
        if not v:
            out[sid] = {"name": "unknown", "confidence": 0.0, "events": 0}
            continue
        name = max(v, key=lambda k: sum(v[k]))
        out[sid] = {"name": name, "confidence": round(float(np.mean(v[name])), 4), "events": len(v[name])}
    return out


def enrich_alerts(alerts: list[dict], table, model, dcfg) -> list[dict]:
    """Adds ``kind`` ({name, confidence}) with ``dcfg.kinds``, ``attacks`` with ``dcfg.attack_context`` and, with
    ``dcfg.alert_vectors``, the session's vector for the writer to put beside the alerts
    (:mod:`loglm.analyst.alert_vectors`)."""
    if dcfg.alert_vectors and not getattr(model, "has_embedding", True):
        dcfg = replace(dcfg, alert_vectors=False)  # a bundle exported before its graph had vectors
    if not alerts or not (dcfg.kinds or dcfg.attack_context or dcfg.alert_vectors):
        return alerts
    clf = sub = ids = sv = None
    if dcfg.kinds or dcfg.alert_vectors:  # the alerted sessions' windows only
        wanted = {a["session_id"] for a in alerts}
        sids = table.column("session_id").to_pylist()
        rows = [r for r, s in enumerate(sids) if s in wanted]
        sub = table.take(rows)
    if dcfg.kinds:
        from loglm.analyst.fewshot import FewShot

        clf = FewShot.load(dcfg.kinds)
    if dcfg.alert_vectors or (clf is not None and clf.unit != "event"):
        from loglm.analyst.embed import embed_windows, session_vectors
        from loglm.windows import windows_of

        vec = embed_windows(embed_fn_of(model), *windows_of(sub), dcfg.batch_size, dcfg.max_batch_tokens)
        ids, sv = session_vectors([sids[r] for r in rows], vec)
    if clf is not None:
        if clf.unit == "event":
            from loglm.analyst.embed import embed_events
            from loglm.windows import windows_of

            per_window = embed_events(event_embed_fn_of(model), *windows_of(sub), dcfg.batch_size,
                                      dcfg.max_batch_tokens)
            dims = next((v.shape[1] for v in per_window if len(v)), clf.dims)
        else:
            dims = sv.shape[1]
        if dims != clf.dims:
            raise ValueError(f"detect.kinds={dcfg.kinds}: its classifier reads {clf.dims} dimensions, "
                             f"this model's {clf.unit} vectors {dims}: fit the kinds with this model's embeddings")
        if clf.unit == "event":
            kind = event_kinds(clf, [sids[r] for r in rows], per_window)
        else:
            names, conf = clf.predict(sv)
            kind = {sid: {"name": n, "confidence": round(float(c), 4)} for sid, n, c in zip(ids, names, conf)}
        for a in alerts:
            a["kind"] = kind[a["session_id"]]
    if dcfg.alert_vectors:
        from loglm.analyst.alert_vectors import attach

        attach(alerts, ids, sv)
    if dcfg.attack_context:
        from loglm.analyst.attack import attack_context

        for a in alerts:
            known = a.get("kind", {}).get("name")
            a["attacks"] = attack_context(a, None if known in (None, "unknown") else known)
    return alerts
