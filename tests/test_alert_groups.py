"""Alert groups (loglm.analyst.groups): alerts whose sessions' centred vectors are near-identical are one
group, led by the highest-scoring one; a group is no wider than its threshold around the leader."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from loglm.analyst.groups import group_alerts, groups_of


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_near_identical_sessions_group_under_the_highest_scoring_alert_and_no_chain_joins_two_patterns():
    """Vectors centred on the file's mean first: here every session shares a large common direction c (as the
    encoder's session vectors do), which alone would put every alert in one group."""
    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=16)), unit(rng.normal(size=16))
    step = unit(a + 0.04 * b)  # cosine with a about 0.999; a second step further from a than the threshold
    x = np.stack([a, unit(a + 1e-5 * rng.normal(size=16)), step, unit(step + 0.04 * b), b,
                  unit(rng.normal(size=16))])
    c = 50 * unit(rng.normal(size=16))
    vectors = np.concatenate([c + x, c - x])  # sessions without alerts mirror them: the file's mean is c
    meta = pa.table({"session_id": [f"s{i}" for i in range(12)]})
    alerts = [{"alert_id": f"a{i}", "session_id": f"s{i}", "score": score}
              for i, score in enumerate([5.0, 9.0, 4.0, 3.0, 2.0, 1.0])]
    alerts.append({"alert_id": "a9", "session_id": "not embedded", "score": 8.0})
    assert float(a @ step) >= 0.999 and float(a @ x[3]) < 0.999 <= float(step @ x[3])
    leader = group_alerts(alerts, meta, vectors, 0.999)
    assert leader["a0"] == leader["a1"] == "a1"  # the higher score leads
    assert leader["a2"] == "a1"  # within the threshold of the leader
    assert leader["a3"] == "a3"  # near a2, not near the leader: a group of its own, not a chain
    assert leader["a4"] == "a4" and leader["a5"] == "a5" and leader["a9"] == "a9"
    assert groups_of(leader)["a1"] == ["a1", "a0", "a2"]
    assert len(groups_of(leader)) == 5
    raw = (c + x) / np.linalg.norm(c + x, axis=1, keepdims=True)  # uncentred, every pair looks the same
    assert (raw @ raw.T).min() > 0.99
    assert set(group_alerts(alerts, meta, vectors, 0.5)) == set(leader)  # every alert placed at any threshold
    with pytest.raises(ValueError, match="min_cosine"):
        group_alerts(alerts, meta, vectors, 0)
