"""Vector search (exact and HNSW), few-shot classifiers and ATT&CK mapping on controlled inputs (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from loglm.analyst.attack import by_evidence, evidence_text, for_kind, techniques
from loglm.analyst.fewshot import UNKNOWN, FewShot, fewshot_accuracy
from loglm.analyst.search import VectorIndex


def clustered(n: int, d: int = 32, centers: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_search_is_brute_force_and_hnsw_recalls_it():
    x = clustered(5000)
    q = x[:50]
    sims, idx = VectorIndex(x, "exact").search(q, 10, block=7)
    brute = q @ x.T
    assert np.allclose(sims, -np.sort(-brute, axis=1)[:, :10], atol=1e-5)
    assert (idx[:, 0] == np.arange(50)).all()  # each vector is its own nearest
    _, hidx = VectorIndex(x, "hnsw").search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, hidx)])
    assert recall > 0.9, recall
    assert VectorIndex(x[:3], "exact").search(q[:1], 10)[1].shape == (1, 3)  # k larger than the set
    with pytest.raises(ValueError, match="auto, exact or hnsw"):
        VectorIndex(x, "annoy")


def test_fewshot_prototypes_and_unknown():
    rng = np.random.default_rng(1)
    centers = {"ssh": np.eye(8)[0], "dos": np.eye(8)[1], "scan": np.eye(8)[2]}
    x = np.concatenate([c + 0.2 * rng.normal(size=(40, 8)) for c in centers.values()])
    y = [k for k in centers for _ in range(40)]
    for method in ("prototype", "logreg"):
        r = fewshot_accuracy(x, y, 5, method, trials=5)
        assert r["balanced_accuracy"] > 0.95 and r["kinds"] == {"dos": 40, "scan": 40, "ssh": 40}
    clf = FewShot("prototype", min_confidence=0.9).fit(x[::8], y[::8])
    names, conf = clf.predict(np.stack([centers["ssh"], np.eye(8)[5]]))
    assert names[0] == "ssh" and conf[0] > 0.9 and names[1] == UNKNOWN  # an unlabelled kind is not forced
    with pytest.raises(ValueError, match="more than 40"):
        fewshot_accuracy(x, y, 40)


def test_window_disjoint_fewshot_does_not_let_a_window_tell_its_own_items():
    """Items of one window share a marker that says nothing of their kind elsewhere: drawn at random, a
    classifier reads the kind off the marker (the neighbours of its examples); window-disjoint, it cannot."""
    rng = np.random.default_rng(2)
    kinds = ["ssh", "dos", "scan"]
    x, y, groups = [], [], []
    for w in range(12):  # 4 windows per kind, 30 items each; only the window marker differs
        marker = np.zeros(12)
        marker[w] = 3.0
        for _ in range(30):
            x.append(np.concatenate([marker, 0.3 * rng.normal(size=4)]))
            y.append(kinds[w % 3])
            groups.append(w)
    x = np.stack(x)
    shared = fewshot_accuracy(x, y, 20, "logreg", trials=5)["balanced_accuracy"]
    disjoint = fewshot_accuracy(x, y, 20, "logreg", trials=5, groups=groups)
    assert shared > 0.9 and disjoint["balanced_accuracy"] < 0.6 and disjoint["group_disjoint"], (shared, disjoint)
    # examples come from whole windows; a kind in one window only cannot be measured this way
    with pytest.raises(ValueError, match="at least two groups"):
        fewshot_accuracy(x, y, 5, groups=[w % 3 for w in groups])


def test_fewshot_file_roundtrip(tmp_path):
    x = np.eye(4)[[0, 0, 1, 1]] + 0.01
    clf = FewShot("prototype", 0.3).fit(x, ["a", "a", "b", "b"])
    clf.save(tmp_path / "k.json")
    again = FewShot.load(tmp_path / "k.json")
    assert again.predict(x)[0] == clf.predict(x)[0] == ["a", "a", "b", "b"]


@pytest.mark.parametrize("n_kinds", [2, 3])
def test_a_saved_logistic_regression_gives_scikit_learns_probabilities_in_numpy(tmp_path, n_kinds):
    """`loglm kinds fit --method logreg`: weights and standardisation saved as JSON; the loaded classifier
    (numpy, no scikit-learn at detection) gives scikit-learn's own probabilities, two kinds (one row of
    weights) and more."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(loc=3 * i, size=(6, 5)) * (1 + i) for i in range(n_kinds)])
    y = [f"k{i}" for i in range(n_kinds) for _ in range(6)]
    clf = FewShot("logreg", 0.4, standardize=True).fit(x, y)
    clf.save(tmp_path / "k.json")
    again = FewShot.load(tmp_path / "k.json")
    z = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=10.0, max_iter=2000).fit(z, [int(k[1]) for k in y]).predict_proba(z)
    q = rng.normal(size=(4, 5)) * 4
    np.testing.assert_allclose(again.proba(x), ref, atol=1e-6)
    np.testing.assert_allclose(again.proba(q), clf.proba(q), atol=1e-12)
    assert again.predict(x)[0] == y and again.dims == 5 and again.method == "logreg"


def test_attack_context_from_kind_and_from_evidence():
    assert len(techniques()) > 600 and "T1110.001" in techniques()
    (t,) = for_kind("SSH-Patator")
    assert t["id"] == "T1110.001" and t["name"] == "Brute Force: Password Guessing" and t["tactics"] == ["credential-access"]
    assert t["url"] == "https://attack.mitre.org/techniques/T1110/001"
    assert for_kind("dos_hulk")[0]["id"] == "T1499.002" and for_kind("something new") == []
    flood = {"n_events": 400, "surprising_events": [{"template": "proto=tcp dir=in svc=- port=80 state=- | dur=1"}]}
    assert "http web server" in evidence_text(flood) and "flood" in evidence_text(flood)
    top = [t["id"] for t in by_evidence(flood)]
    assert "T1499.002" in top and all(t["source"] == "evidence" for t in by_evidence(flood))
    ssh = {"n_events": 3, "surprising_events": [{"template": "proto=tcp dir=in svc=- port=22 state=-"}]}
    assert by_evidence(ssh)[0]["id"].startswith("T1021")  # remote services over SSH
    assert by_evidence({"surprising_events": []}) == []


def test_windows_security_events_point_to_their_techniques():
    """Security events as field sentences (data.message_fields): the Windows event ids say what happened in
    ATT&CK's words; many failed logons, counted over all the alert's unexpected events and not only the
    listed ones, are brute force; a few are nothing; the field names themselves are not evidence."""
    def alert(code, listed=1, unexpected=None, kind="-", outcome="success"):
        tpl = f"fields: event.code={code} winlog.logon.type={kind} event.outcome={outcome}"
        return {"surprising_events": [{"template": tpl}] * listed, "n_events": unexpected or listed,
                "n_unexpected_events": unexpected or listed}

    brute = alert(4625, listed=5, unexpected=42, kind="Network", outcome="failure")
    assert by_evidence(brute)[0]["id"] == "T1110"
    assert "T1110" not in [t["id"] for t in by_evidence(alert(4625, listed=3, kind="Network", outcome="failure"))]
    assert "event" not in evidence_text(brute).split() and "winlog" not in evidence_text(brute)
    for code, technique in ((1102, "T1070.001"), (4698, "T1053"), (4720, "T1136.001"), (4769, "T1558"),
                            (5140, "T1021.002"), (7045, "T1543")):
        assert by_evidence(alert(code))[0]["id"] == technique, (code, by_evidence(alert(code)))
    # CloudTrail API calls, as data.message_fields=[eventSource,eventName,errorCode] writes them
    for call, technique in (("StopLogging", "T1562.008"), ("CreateUser", "T1136.003"), ("CreateAccessKey", "T1098.001"),
                            ("AttachUserPolicy", "T1098.003"), ("GetSecretValue", "T1555.006"),
                            ("RunInstances", "T1578.002"), ("DescribeInstances", "T1580"), ("ConsoleLogin", "T1078.004")):
        cloud = {"surprising_events": [{"template": f"fields: eventSource=x.amazonaws.com eventName={call} errorCode=-"}]}
        assert by_evidence(cloud)[0]["id"] == technique, (call, by_evidence(cloud))


def test_the_program_that_wrote_a_syslog_event_points_to_its_technique():
    """A syslog or journald event carries its program (data.event_fields; an alert's surprising event names
    it): useradd, sudo, cron and sshd say what the event is about in ATT&CK's words (``benchmarks.attack_programs``:
    the cases looked at while ``PROGRAMS`` was written, each in the top 2, and cases written after it, 7 of 8
    in the top 3).  Without the program the same templates point nowhere useful (0 of 8); "root", the
    superuser, is no evidence of a root certificate."""
    from benchmarks.attack_programs import BUILT_WITH, HELD_OUT, alert, measure

    for program, templates, accepted in BUILT_WITH:
        top = [t["id"] for t in by_evidence(alert(program, templates))]
        assert set(top[:2]) & accepted and "T1553.004" not in top, (program, top)
    assert measure(HELD_OUT)["hits"] >= 7 and measure(HELD_OUT, with_program=False)["hits"] == 0


def test_an_alert_takes_the_kind_its_sure_events_vote_for():
    """Event kinds (loglm.analyst.enrich.event_kinds): events below the confidence floor do not vote; the kind
    with the highest summed confidence wins; an alert with no sure event is unknown."""
    from loglm.analyst.enrich import event_kinds
    from loglm.analyst.fewshot import FewShot

    clf = FewShot("prototype", min_confidence=0.9, unit="event").fit(
        np.array([[1.0, 0.0], [0.0, 1.0]]), ["brute-force", "flood"])
    a = np.array([[1.0, 0.02], [0.02, 1.0], [1.0, 0.05], [0.7, 0.7]])  # two sure brute-force, one flood, one neither
    b = np.array([[0.7, 0.71]])
    got = event_kinds(clf, ["s1", "s1", "s2"], [a[:2], a[2:], b])
    assert got["s1"]["name"] == "brute-force" and got["s1"]["events"] == 2 and got["s1"]["confidence"] > 0.9
    assert got["s2"] == {"name": "unknown", "confidence": 0.0, "events": 0}


def test_min_similarity_keeps_an_item_far_from_every_example_unknown(tmp_path):
    """A classifier is confident far from its examples: an item unlike any example (a benign flow among
    attack kinds) still gets a kind above the confidence floor. With ``min_similarity`` an item whose cosine
    with every example is below it is ``unknown``; items near the examples keep their kinds; the gate and
    the examples survive save and load."""
    import json

    rng = np.random.default_rng(0)
    d = 6
    dirs = np.eye(d)[:3]  # two kinds along two axes; the stranger along a third
    x = np.concatenate([dirs[i] * 5 + rng.normal(scale=0.2, size=(5, d)) for i in range(2)])
    y = ["a"] * 5 + ["b"] * 5
    near = np.concatenate([dirs[i] * 5 + rng.normal(scale=0.2, size=(20, d)) for i in range(2)])
    far = dirs[2] * 5 + dirs[0] * 1.5 + rng.normal(scale=0.2, size=(20, d))
    plain = FewShot("logreg", 0.5, standardize=True).fit(x, y)
    names, conf = plain.predict(far)
    assert UNKNOWN not in names and conf.min() >= 0.5  # forced into a kind, confidently
    gated = FewShot("logreg", 0.5, standardize=True, min_similarity=0.8).fit(x, y)
    gated.save(tmp_path / "k.json")
    again = FewShot.load(tmp_path / "k.json")
    for clf in (gated, again):
        assert clf.predict(far)[0] == [UNKNOWN] * 20
        assert clf.predict(near)[0] == ["a"] * 20 + ["b"] * 20
    np.testing.assert_allclose(again.proba(far), gated.proba(far), atol=1e-12)
    plain.save(tmp_path / "p.json")
    assert "support" not in json.loads((tmp_path / "p.json").read_text())  # off: nothing extra in the file
    with pytest.raises(ValueError, match="min_similarity"):
        FewShot(min_similarity=1.5)


def test_standardising_by_unlabelled_background_vectors_beats_the_examples_own_spread_at_one_example(tmp_path):
    """logreg standardises each dimension; from k = 1 example per kind the examples' own spread is that of a
    handful of points (every dimension comes out the same size), while a background of unlabelled vectors of
    the same model (`loglm kinds fit`: every vector of its embeddings file) gives each dimension its real
    spread: on dimensions of every scale with four informative ones, balanced accuracy rises at k = 1 and
    holds at k = 5. The background's statistics are what the kinds file keeps."""
    rng = np.random.default_rng(0)
    kinds = np.array(["a", "b", "c", "d"])
    means = rng.normal(size=(4, 4)) * 3
    scale = np.exp(rng.uniform(-3, 3, 40))

    def draw(n):
        y = kinds[np.arange(n) % 4]
        x = rng.normal(size=(n, 40)) * scale
        x[:, :4] = means[np.arange(n) % 4] + rng.normal(size=(n, 4))
        return x, list(y)

    x, y = draw(400)
    background, _ = draw(1000)  # other vectors, no labels used
    own = {k: fewshot_accuracy(x, y, k, "logreg", trials=10, standardize=True)["balanced_accuracy"] for k in (1, 5)}
    by_bg = {k: fewshot_accuracy(x, y, k, "logreg", trials=10, standardize=True, background=background)[
        "balanced_accuracy"] for k in (1, 5)}
    assert by_bg[1] > own[1] + 0.05 and by_bg[5] >= own[5] - 0.02, (own, by_bg)
    clf = FewShot("logreg", standardize=True).fit(x[:4], y[:4], background=background)
    np.testing.assert_allclose(clf.mean, background.mean(0))
    np.testing.assert_allclose(clf.std, background.std(0))
    clf.save(tmp_path / "k.json")
    np.testing.assert_allclose(FewShot.load(tmp_path / "k.json").std, background.std(0))
    with pytest.raises(ValueError, match="background vectors have"):
        FewShot("logreg", standardize=True).fit(x[:4], y[:4], background=background[:, :5])


def test_decorrelating_by_background_vectors_finds_a_kind_signal_that_shared_variation_hides(tmp_path):
    """Flow vectors vary together (a few directions dominate every dimension), and a kind's signal lies across
    dimensions. logreg whitens the standardised vectors by the background's correlation matrix shrunk towards
    the identity (``decorrelate``, off by default, 0.1 here): on 400 dimensions driven by two shared factors, balanced
    accuracy rises at k = 1 and k = 5 over plain standardisation (``decorrelate=0``). The whitening is folded
    into the saved weights: the loaded kinds file gives the same probabilities, and those of a logistic
    regression fitted on the whitened vectors."""
    from sklearn.linear_model import LogisticRegression

    from loglm.analyst.fewshot import Background

    rng = np.random.default_rng(0)
    kinds = np.array(["a", "b", "c", "d"])
    pattern = rng.normal(size=(4, 400)) * 0.15
    load = rng.normal(size=(2, 400))

    def draw(n, y):
        return rng.normal(size=(n, 2)) * 3 @ load + rng.normal(size=(n, 400)) * 0.2 + pattern[y]

    y = np.arange(400) % 4
    x = draw(400, y)
    background = draw(2000, rng.integers(0, 4, 2000))  # unlabelled: no kinds used
    acc = {w: [fewshot_accuracy(x, list(kinds[y]), k, "logreg", trials=10, standardize=True, background=background,
                                decorrelate=w)["balanced_accuracy"] for k in (1, 5)] for w in (0.0, 0.1)}
    assert acc[0.1][0] > acc[0.0][0] + 0.05 and acc[0.1][1] > acc[0.0][1], acc

    assert FewShot("logreg", standardize=True).decorrelate == 0.0
    clf = FewShot("logreg", standardize=True, decorrelate=0.1).fit(x[:8], list(kinds[y[:8]]), background=background)
    bg = Background(background, 0.1)
    z = (x - bg.mean) / bg.std
    ref = LogisticRegression(C=10.0, max_iter=2000).fit(z[:8] @ bg.whiten, y[:8])
    np.testing.assert_allclose(clf.proba(x[8:]), ref.predict_proba(z[8:] @ bg.whiten), atol=1e-6)
    clf.save(tmp_path / "k.json")
    again = FewShot.load(tmp_path / "k.json")
    assert again.decorrelate == 0.1
    np.testing.assert_allclose(again.proba(x[8:]), clf.proba(x[8:]), atol=1e-9)
    # prototypes are cosine-based: they are standardised, never whitened
    with pytest.raises(ValueError, match="decorrelate"):
        FewShot("prototype", standardize=True, decorrelate=0.1).fit(x[:8], list(kinds[y[:8]]), background=bg)
    with pytest.raises(ValueError, match="decorrelate"):
        FewShot(decorrelate=1.0)


def test_kinds_fit_refuses_a_decorrelation_weight_outside_zero_to_one(capsys):
    from loglm.analyst.cli import kinds_main

    with pytest.raises(SystemExit) as e:
        kinds_main(["fit", "--embeddings", "x.parquet", "--out", "k.json", "--decorrelate", "1.5"])
    assert e.value.code == 2 and "--decorrelate is a weight in [0, 1), got 1.5" in capsys.readouterr().err


def test_kinds_fit_defaults_to_logistic_regression_with_two_kinds_and_prototypes_with_one(tmp_path, capsys):
    """`loglm kinds fit` without --method: logistic regression standardised by the file's vectors when the
    examples name two kinds or more (it led prototypes at every k on cic_flowprep and zeek_ctu), a prototype
    when they name one (a logistic regression needs two)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from loglm.analyst.cli import kinds_main

    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(30, 4)).astype(np.float32)
    pq.write_table(pa.table({"session_id": [f"s{i}" for i in range(30)],
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), 4)}),
                   tmp_path / "emb.parquet")
    two, one = tmp_path / "two.csv", tmp_path / "one.csv"
    two.write_text("session_id,kind\ns0,a\ns1,a\ns2,b\ns3,b\n")
    one.write_text("session_id,kind\ns0,a\ns1,a\n")
    for examples, method in ((two, "logreg"), (one, "prototype")):
        out = tmp_path / f"{method}.json"
        assert kinds_main(["fit", "--embeddings", str(tmp_path / "emb.parquet"), "--examples", str(examples),
                           "--out", str(out)]) == 0
        assert json.loads(capsys.readouterr().out)["method"] == method
        saved = FewShot.load(out)
        assert saved.method == method and saved.standardize == (method == "logreg")
    # asked for explicitly, one kind is still refused
    assert kinds_main(["fit", "--embeddings", str(tmp_path / "emb.parquet"), "--examples", str(one),
                       "--method", "logreg", "--out", str(tmp_path / "x.json")]) == 2
    assert "needs examples of two kinds" in capsys.readouterr().err
