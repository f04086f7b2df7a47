"""Alert groups: alerts whose sessions the model sees as the same pattern, judged once.

Many alerts of a day are one pattern repeated (on the demo's HDFS blocks, dozens of blocks that stop after the
same two events).  Alerts are grouped by the cosine of their sessions' vectors (``pipelines.embed`` /
``loglm embed``), each vector first centred on the mean of every vector in the file: the encoder's session
vectors share a large common direction (on ``openstack_kalaki`` all 692 test alerts' raw vectors had cosine
above 0.999 with the top alert's, normal and anomalous alike), which centring removes.  In score order,
the highest-scoring alert not yet in a group leads a new one, and every alert not yet grouped whose centred vector has cosine at least
``min_cosine`` with the leader's joins it.  A group is only as wide as ``min_cosine`` around its leader, so no
chain of small steps joins two patterns.  An alert whose session has no vector is a group of its own.  An alert's own vector, written by detection beside
the alerts (``alerts.vectors.jsonl``), stands in for the file's row when both come from one model, so a stream's
new alerts, which no embeddings file holds yet, are grouped too.  Without a file, the centre is the model's own:
the mean of its normal validation sessions' vectors, kept in its calibration and written by detection as the first
row of the vectors (on the demo's alerts: 171 groups at 0.995, none mixed, against 163 around the file's mean);
centred on the alerts' own mean instead, the demo's alerts formed mixed groups at 0.995 (docs/analyst.md).

``GROUP_MIN_COSINE`` is the lowest threshold at which no group of the demo's alerts (``hdfs_loglead``, 373
alerts) mixed anomalous and normal sessions; on ``openstack_kalaki``'s test alerts, not used to choose it, it
held too (docs/analyst.md "Alert groups")."""

from __future__ import annotations

import numpy as np

GROUP_MIN_COSINE = 0.995


def group_alerts(alerts: list[dict], meta, vectors: np.ndarray | None, min_cosine: float = GROUP_MIN_COSINE,
                 own: dict[str, np.ndarray] | None = None, centre: np.ndarray | None = None) -> dict[str, str]:
    """alert_id -> its group's leader alert_id, for ``alerts`` (any order; leaders are taken by score),
    ``meta`` and ``vectors`` as :func:`loglm.analyst.embed.read_embeddings` gives them (every session of the
    file: their mean is the centre).  ``own``: alert_id -> the alert's own session vector
    (``alerts.vectors.jsonl``, :mod:`loglm.analyst.alert_vectors`), used before the file's row.  ``centre``
    replaces the file's mean (``benchmarks.alert_groups --vectors alone``: the alerts' own mean, which mixes
    patterns, so the page never groups without a file)."""
    if not 0 < min_cosine <= 1:
        raise ValueError(f"min_cosine must be in (0, 1], got {min_cosine}")
    if centre is None and vectors is None:
        raise ValueError("alert groups need an embeddings file: its sessions' mean vector is the centre")
    own = own or {}
    row = {sid: i for i, sid in enumerate(meta.column("session_id").to_pylist())} if meta is not None else {}

    def vector_of(a: dict):
        v = own.get(a["alert_id"])
        if v is None and a["session_id"] in row:
            v = vectors[row[a["session_id"]]]
        return v

    ranked = sorted(alerts, key=lambda a: -a["score"])
    found = [(a, vector_of(a)) for a in ranked]
    has = [a for a, v in found if v is not None]
    leader = {a["alert_id"]: a["alert_id"] for a, v in found if v is None}
    if not has:
        return leader
    v = np.asarray([v for _, v in found if v is not None], dtype=np.float64)
    if centre is None:
        centre = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    v = v - np.asarray(centre, dtype=np.float64)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    left = np.ones(len(has), dtype=bool)
    for i in range(len(has)):
        if not left[i]:
            continue
        members = np.flatnonzero(left & (v @ v[i] >= min_cosine - 1e-6))
        left[members] = False
        left[i] = False
        for j in (i, *members):
            leader[has[j]["alert_id"]] = has[i]["alert_id"]
    return leader


def group_alerts_file(alerts: list[dict], alerts_path, meta, vectors: np.ndarray | None,
                      min_cosine: float = GROUP_MIN_COSINE, own=None) -> dict[str, str] | None:
    """:func:`group_alerts` as the triage page groups an alerts file: by the vectors detection wrote beside it
    (``own``: an :class:`~loglm.analyst.alert_vectors.AlertVectors` read on, or read here) where they share
    the embeddings file's model, else by the file's rows, around the file's mean.  Without an embeddings file
    (``meta`` and ``vectors`` None), by those vectors alone, around their model's centre (the mean of its normal
    validation sessions, the first row detection writes there); None when it wrote none (a model calibrated
    before it was kept): nothing is grouped then, since centred on the alerts' own mean, groups mix patterns."""
    from loglm.analyst.alert_vectors import AlertVectors, comparable, space_of
    from loglm.analyst.embed import embeddings_model

    if own is None:
        own = AlertVectors(alerts_path)
        own.refresh()
    if vectors is not None:
        return group_alerts(alerts, meta, vectors, min_cosine,
                            comparable(alerts, own.by_alert, embeddings_model(meta), True))
    centre = own.centres.get(space_of(alerts, own.by_alert))
    if centre is None:
        return None
    return group_alerts(alerts, None, None, min_cosine, comparable(alerts, own.by_alert, None, False), centre=centre)


def groups_of(leader: dict[str, str]) -> dict[str, list[str]]:
    """leader alert_id -> its members' alert_ids (the leader first), from :func:`group_alerts`' mapping."""
    out: dict[str, list[str]] = {}
    for aid, lead in leader.items():
        out.setdefault(lead, [lead])
        if aid != lead:
            out[lead].append(aid)
    return out
