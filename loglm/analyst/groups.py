"""Alert groups: alerts whose sessions the model sees as the same pattern, judged once.

Many alerts of a day are one pattern repeated (on the demo's HDFS blocks, dozens of blocks that stop after the
same two events).  Alerts are grouped by the cosine of their sessions' vectors (``pipelines.embed`` /
``loglm embed``), each vector first centred on the mean of every vector in the file: the encoder's session
vectors share a large common direction (on ``openstack_kalaki`` all 692 test alerts' raw vectors had cosine
above 0.999 with the top alert's, normal and anomalous alike), which centring removes.  In score order,
the highest-scoring alert not yet in a group leads a new one, and every alert not yet grouped whose centred vector has cosine at least
``min_cosine`` with the leader's joins it.  A group is only as wide as ``min_cosine`` around its leader, so no
chain of small steps joins two patterns.  An alert whose session has no vector is a group of its own.

``GROUP_MIN_COSINE`` is the lowest threshold at which no group of the demo's alerts (``hdfs_loglead``, 373
alerts) mixed anomalous and normal sessions; on ``openstack_kalaki``'s test alerts, not used to choose it, it
held too (docs/analyst.md "Alert groups")."""

from __future__ import annotations

import numpy as np

GROUP_MIN_COSINE = 0.995


def group_alerts(alerts: list[dict], meta, vectors: np.ndarray, min_cosine: float = GROUP_MIN_COSINE
                 ) -> dict[str, str]:
    """alert_id -> its group's leader alert_id, for ``alerts`` (any order; leaders are taken by score),
    ``meta`` and ``vectors`` as :func:`loglm.analyst.embed.read_embeddings` gives them (every session of the
    file: their mean is the centre)."""
    if not 0 < min_cosine <= 1:
        raise ValueError(f"min_cosine must be in (0, 1], got {min_cosine}")
    row = {sid: i for i, sid in enumerate(meta.column("session_id").to_pylist())}
    ranked = sorted(alerts, key=lambda a: -a["score"])
    has = [a for a in ranked if a["session_id"] in row]
    leader = {a["alert_id"]: a["alert_id"] for a in ranked if a["session_id"] not in row}
    if not has:
        return leader
    centre = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    v = np.asarray(vectors[[row[a["session_id"]] for a in has]], dtype=np.float64) - centre
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


def groups_of(leader: dict[str, str]) -> dict[str, list[str]]:
    """leader alert_id -> its members' alert_ids (the leader first), from :func:`group_alerts`' mapping."""
    out: dict[str, list[str]] = {}
    for aid, lead in leader.items():
        out.setdefault(lead, [lead])
        if aid != lead:
            out[lead].append(aid)
    return out
