"""An alerts file still being written (loglm.analyst.alerts_file) and the triage page over it: whole lines only,
read on from where the last read ended, read again when replaced, cut or rewritten; a line that is not an alert
is kept out with its line number; the page ranks and groups again when the file changed."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglm.analyst.alerts_file import AlertsFile
from loglm.analyst.feedback import load_alerts


def alert(i: int, score: float) -> dict:
    return {"alert_id": f"a{i}", "session_id": f"s{i}", "score": score, "severity": "high", "title": f"alert {i}",
            "start_time": "2026-12-05T00:00:00", "n_events": 3, "entities": {}, "surprising_events": []}


def line(a: dict) -> str:
    return json.dumps(a) + "\n"


def test_a_growing_file_is_read_on_whole_lines_only_and_read_again_when_rewritten(tmp_path):
    path = tmp_path / "alerts.jsonl"
    path.write_text(line(alert(0, 1.0)) + line(alert(1, 2.0))[:30])  # the second is being written
    f = AlertsFile(path)
    assert [a["alert_id"] for a in f.refresh()] == ["a0"]
    assert f.refresh() == []  # nothing whole yet
    with open(path, "a") as fh:
        fh.write(line(alert(1, 2.0))[30:] + "not json\n" + json.dumps({"x": 1}) + "\n" + line(alert(2, 3.0)))
    assert [a["alert_id"] for a in f.refresh()] == ["a1", "a2"]
    assert [n for n, _ in f.rejected] == [3, 4] and "not JSON" in f.rejected[0][1]
    assert "no alert_id, session_id, score" in f.rejected[1][1]
    assert f.describe_rejected().startswith(f"{path}:3: not JSON")
    assert len(f.alerts) == 3 and f.lines == 5 and f.reloads == 0
    # a new run over the same name, longer than what was read: its first bytes tell
    path.write_text("".join(line(alert(i, float(i))) for i in range(10, 20)))
    new = f.refresh()
    assert f.reloads == 1 and [a["alert_id"] for a in new] == [f"a{i}" for i in range(10, 20)]
    assert f.alerts == new and f.rejected == []
    # cut shorter, and replaced by another file (logrotate's create)
    path.write_text(line(alert(30, 1.0)))
    assert [a["alert_id"] for a in f.refresh()] == ["a30"] and f.reloads == 2
    other = tmp_path / "other.jsonl"
    other.write_text(line(alert(30, 1.0)) + line(alert(31, 1.0)))
    os.replace(other, path)
    assert [a["alert_id"] for a in f.refresh()] == ["a30", "a31"] and f.reloads == 3


def test_load_alerts_names_the_line_that_is_not_an_alert(tmp_path):
    path = tmp_path / "alerts.jsonl"
    path.write_text(line(alert(0, 1.0)) + "\n" + "{broken\n" + line(alert(1, 1.0)).rstrip("\n"))
    with pytest.raises(ValueError, match=r"1 lines are not alerts: .*alerts.jsonl:3: not JSON"):
        load_alerts(path)
    path.write_text(line(alert(0, 1.0)) + line(alert(1, 1.0)).rstrip("\n"))  # a complete file's last line
    assert [a["alert_id"] for a in load_alerts(path)] == ["a0", "a1"]


def test_the_triage_page_ranks_and_groups_the_alerts_a_stream_appends(tmp_path):
    from loglm.analyst.triage import Triage

    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 8))
    vectors = np.concatenate([base[[0, 0, 1, 1]] + 1e-4 * rng.normal(size=(4, 8)), rng.normal(size=(20, 8))])
    def write(v):
        flat = pa.array(v.astype(np.float32).ravel())
        pq.write_table(pa.table({"session_id": [f"s{i}" for i in range(24)],
                                 "embedding": pa.FixedSizeListArray.from_arrays(flat, 8)}), tmp_path / ".emb.tmp")
        os.replace(tmp_path / ".emb.tmp", tmp_path / "emb.parquet")

    write(vectors)
    path = tmp_path / "alerts.jsonl"
    path.write_text(line(alert(0, 5.0)) + line(alert(2, 4.0)))
    t = Triage(path, tmp_path / "feedback.jsonl", tmp_path / "emb.parquet")
    assert [a["alert_id"] for a in t.alerts] == ["a0", "a2"] and len(t.groups) == 2
    assert t.refresh() is False  # unchanged: nothing is read, ranked or grouped again
    with open(path, "a") as fh:
        fh.write(line(alert(1, 9.0)) + line(alert(3, 1.0)) + "oops\n" + line(alert(0, 5.0))  # a0 again (a restart)
                 + line(alert(4, 2.0))[:10])
    assert t.refresh() is True
    assert [a["alert_id"] for a in t.alerts] == ["a1", "a0", "a2", "a3"]  # ranked again, the cut line waits
    assert t.groups == {"a1": ["a1", "a0"], "a2": ["a2", "a3"]}  # the new alert leads its pattern's group
    page = t.index_page()
    assert "4 alerts from" in page and "watch(4, 0)" in page
    assert "1 lines of the alerts file are not alerts" in page and "alerts.jsonl:5: not JSON" in page
    # the embeddings written again (pipelines.embed: a new file renamed into place): read again, regrouped
    vectors[1] = vectors[0]  # s1 (a1) now sits apart from s0 (a0): a1 leads alone
    vectors[1, :4] *= -1
    write(vectors)
    assert t.refresh() is True and t.embeddings_loads == 2
    assert t.groups["a1"] == ["a1"] and t.leader["a0"] != "a1"
    (tmp_path / "emb.parquet").write_bytes(b"not parquet")  # a broken file: the vectors read before stay
    assert t.refresh() is False and t.embeddings_loads == 2 and "the vectors read before are used" in t.index_page()
    path.unlink()  # rotated away: what was read stays on the page
    assert t.refresh() is False and len(t.alerts) == 4


def test_only_vectors_of_one_model_are_compared():
    """A stream that appended across a model's promotion holds two models' vectors: they share no space."""
    from loglm.analyst.alert_vectors import comparable

    alerts = [dict(alert(i, float(i)), model={"run_id": "old" if i < 2 else "new"}) for i in range(4)]
    vec = {a["alert_id"]: np.ones(4, np.float32) for a in alerts}
    assert sorted(comparable(alerts, vec, None, has_file=False)) == ["a2", "a3"]  # the top alert's model
    assert sorted(comparable(alerts, vec, "old", has_file=True)) == ["a0", "a1"]  # the embeddings file's
    assert comparable(alerts, vec, None, has_file=True) == {}  # a file that does not name its model
    assert comparable(alerts, {}, None, has_file=False) == {}


def test_the_page_can_wait_for_a_stream_to_write_its_alerts_file(tmp_path):
    """A page started beside its stream (two services) may come first: with wait it serves an empty list and says
    it waits; without, a missing file is an error naming it and --wait."""
    from loglm.analyst.triage import Triage

    path = tmp_path / "alerts.jsonl"
    with pytest.raises(FileNotFoundError, match=r"no alerts file .*alerts.jsonl \(loglm triage --wait"):
        Triage(path, tmp_path / "fb.jsonl")
    t = Triage(path, tmp_path / "fb.jsonl", wait=True)
    assert t.missing and t.alerts == [] and "waiting for" in t.index_page()
    assert t.refresh() is False  # still nothing
    path.write_text(line(alert(0, 1.0)))
    assert t.refresh() is True and [a["alert_id"] for a in t.alerts] == ["a0"] and "waiting for" not in t.index_page()


def test_without_an_embeddings_file_alerts_group_around_their_models_centre_kept_across_a_rotation(tmp_path):
    """The vectors file opens with the model's centre (``centre_of``): the page groups the alerts' own vectors
    around it, for the alerts of that model only; a copytruncate of the vectors file (its first row gone) keeps
    the centre read before; a vectors file without one (a model calibrated before it was kept) groups nothing."""
    from loglm.analyst.alert_vectors import vectors_path
    from loglm.analyst.triage import Triage

    rng = np.random.default_rng(1)
    centre = rng.normal(size=8)
    base = centre + rng.normal(size=(2, 8))  # two patterns, both near the model's common direction
    vec = {i: base[i // 2] + 1e-3 * rng.normal(size=8) for i in range(4)}
    path = tmp_path / "alerts.jsonl"
    path.write_text("".join(line(dict(alert(i, 10.0 - i), model={"run_id": "m1"})) for i in range(4)))
    rows = [{"alert_id": f"a{i}", "session_id": f"s{i}", "vector": (v / np.linalg.norm(v)).tolist()} for i, v in vec.items()]
    head = {"alert_id": "", "centre_of": "m1", "vector": centre.tolist()}
    vectors_path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = Triage(path, tmp_path / "fb.jsonl")
    assert not t.grouped and "alert groups need a centre" in t.index_page()
    vectors_path(path).write_text("".join(json.dumps(r) + "\n" for r in [head, *rows]))
    t = Triage(path, tmp_path / "fb.jsonl")
    assert t.grouped and t.groups == {"a0": ["a0", "a1"], "a2": ["a2", "a3"]}
    assert "centred on the model's normal sessions' mean" in t.index_page()
    os.truncate(vectors_path(path), 0)  # logrotate's copytruncate, then the stream's next alert
    with open(path, "a") as fh:
        fh.write(line(dict(alert(4, 9.5), model={"run_id": "m1"})))
    with open(vectors_path(path), "a") as fh:
        fh.write(json.dumps({**rows[0], "alert_id": "a4", "session_id": "s4"}) + "\n")
    assert t.refresh() and t.grouped and t.leader["a4"] == "a4"  # only a4 has a vector now; grouped, around m1's centre
    other = tmp_path / "other.jsonl"  # another model's alerts: m1's centre is not theirs
    other.write_text("".join(line(dict(alert(i, 10.0 - i), model={"run_id": "m2"})) for i in range(4)))
    vectors_path(other).write_text("".join(json.dumps(r) + "\n" for r in [head, *rows]))
    assert not Triage(other, tmp_path / "fb.jsonl").grouped


def test_the_model_centre_is_the_mean_of_normal_validation_sessions_drawn_to_a_bounded_count(monkeypatch):
    """``calibrate.embedding_centre``: each session's vector is the normalised mean of its windows, the centre
    the mean over sessions; only normal sessions count (per-event calibration's labels), and at most
    ``CENTRE_SESSIONS`` of them, a seeded draw, are embedded."""
    import loglm.analyst.embed as embed
    import loglm.detect.calibrate as calibrate

    embedded = []

    def fake_windows(fn, tokens, gaps, closed):  # a window's vector: its first token's direction
        embedded.append(len(tokens))
        return np.stack([np.eye(4, dtype=np.float32)[int(t[0]) % 4] for t in tokens])

    monkeypatch.setattr(embed, "embed_windows", fake_windows)
    monkeypatch.setattr(embed, "torch_embed_fn", lambda encoder: None)
    val = pa.table({"session_id": ["s0", "s0", "s1", "s2"], "tokens": [[0, 5], [1, 5], [0], [2]],
                    "gaps": [[0.0, 0.0], [0.0, 0.0], [0.0], [0.0]], "closed": [True] * 4})
    c = calibrate.embedding_centre(None, val, {"s0": 0, "s1": 0, "s2": 1})  # s2 holds an anomalous event
    s0 = np.array([1, 1, 0, 0]) / np.sqrt(2)
    assert c["sessions"] == 2 and np.allclose(c["vector"], (s0 + np.array([1, 0, 0, 0])) / 2, atol=1e-6)
    monkeypatch.setattr(calibrate, "CENTRE_SESSIONS", 2)
    embedded.clear()
    c = calibrate.embedding_centre(None, val)
    again = calibrate.embedding_centre(None, val)
    assert c["sessions"] == 2 and embedded[0] in (2, 3) and embedded[0] == embedded[1]  # 2 of 3 sessions' windows
    assert again == c  # the same draw every time
    assert calibrate.embedding_centre(None, val, {"s0": 1, "s1": 1, "s2": 1}) is None
