"""Bench section ``analyst``: few-shot kinds on frozen LogLM flow vectors vs the same classifiers on raw flow
features (cic_flowprep attack classes), and similar-sequence search speed, exact vs HNSW."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np


def zeek_detailed_labels(data_dir: Path) -> list[str | None]:
    """Each event's ``detailedlabel`` (Stratosphere's labelled Zeek conn.logs: why a flow is Malicious or
    Benign, e.g. External-Attack-to-Device, Microsoft, ESET), read from its raw row by the column its file's
    ``#fields`` header names; None where unset (``-``, ``(empty)``) or where a file has no such column."""
    import pyarrow.parquet as pq

    ev = pq.read_table(data_dir / "events.parquet", columns=["source", "raw"])
    column: dict[str, int | None] = {}
    for src in set(ev.column("source").to_pylist()):
        column[src] = None
        with open(src, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                if line.startswith("#fields"):
                    names = line.rstrip("\r\n").split("\t")[1:]
                    column[src] = names.index("detailedlabel") if "detailedlabel" in names else None
    out = []
    for src, raw in zip(ev.column("source").to_pylist(), ev.column("raw").to_pylist()):
        values, i = raw.split("\t"), column[src]
        v = values[i] if i is not None and i < len(values) else None
        out.append(None if v in (None, "-", "(empty)", "") else v)
    return out


def flow_vectors(model_dir: Path, data_dir: Path, split: str = "test", min_flows: int = 100,
                 kinds_of: list | None = None):
    """Attack flows of ``split`` with their class: (LogLM vector of each flow: its context half, its own half
    and, for a model with facets, each facet (LogEncoder.event_embedding); raw flow features fitted on
    training flows; kinds; the window each flow is in). Classes with fewer than ``min_flows`` flows are left
    out. ``kinds_of``: a kind per event instead of its label (e.g.
    ``zeek_detailed_labels``: benign services as kinds beside the attack). Last, the LogLM vectors of every
    training flow and their raw features (a dict): unlabelled, what standardises a few-shot classifier
    (``FewShot.fit``'s background)."""
    import pyarrow.parquet as pq

    from loglm.analyst.embed import embed_events, torch_event_embed_fn
    from loglm.baselines.flow_features import FlowFeatures, read_flows
    from loglm.config import compose
    from loglm.model.store import load_model
    from loglm.shards import read_sessions
    from loglm.windows import windows_of

    loaded = load_model(model_dir)
    labels = kinds_of or pq.read_table(data_dir / "events.parquet", columns=["label"]).column("label").to_pylist()
    table = read_sessions(data_dir, split)
    toks, gaps, closed = windows_of(table)
    per_window = embed_events(torch_event_embed_fn(loaded.encoder), toks, gaps, closed)
    counts = Counter(labels[i] for idx in table.column("event_idx").to_pylist() for i in idx)
    keep = {c for c, n in counts.items() if c not in (None, "BENIGN") and n >= min_flows}
    ids, vecs, kinds, windows = [], [], [], []
    for w, (idx, v) in enumerate(zip(table.column("event_idx").to_pylist(), per_window)):
        for j, i in enumerate(idx):
            if labels[i] in keep:
                ids.append(i)
                vecs.append(v[j])
                kinds.append(labels[i])
                windows.append(w)
    train = read_sessions(data_dir, "train")
    train_ids = [i for idx in train.column("event_idx").to_pylist() for i in idx]
    background = np.concatenate([np.asarray(v, np.float32) for v in embed_events(
        torch_event_embed_fn(loaded.encoder), *windows_of(train))])
    data_cfg = compose("evaluate", [f"dataset={data_dir.name}"]).data if (Path(__file__).parents[1] / "conf" / "dataset" / f"{data_dir.name}.yaml").is_file() else None
    ff = FlowFeatures(local_networks=tuple(data_cfg.local_networks) if data_cfg else ())
    raw_train = ff.fit(read_flows(data_dir, train_ids))
    raw = ff.transform(read_flows(data_dir, ids))
    return np.stack(vecs), raw, kinds, np.asarray(windows), {"loglm": background, "raw": raw_train}


HEADLINE_SETTING = "logreg_standardized_by_training"


def bench_fewshot(model_dir: Path, data_dir: Path, ks=(1, 5, 20), trials: int = 20, kinds_of: list | None = None
                  ) -> dict:
    """Few-shot kinds on the frozen LogLM flow vectors, on raw flow features, and on both side by side; each
    with both classifiers, unstandardised, standardised by the examples and by every training flow; the headline
    keys take one setting fixed in advance (``HEADLINE_SETTING``) for every representation. Two
    draws: examples and classified flows at random (``*_k{k}``), and window-disjoint (``*_k{k}_by_window``:
    flows of the examples' windows are not classified, so a flow is not told by its own window's neighbours)."""
    from loglm.analyst.fewshot import MEASURED_DECORRELATE, Background, fewshot_accuracy

    emb, raw, kinds, windows, background = flow_vectors(model_dir, data_dir, kinds_of=kinds_of)
    what = "detailed labels" if kinds_of else "attack classes"
    out: dict = {"kinds": dict(Counter(kinds)), "trials": trials, "unit": f"flow ({what} with >= 100 test flows)",
                 "windows_per_kind": {c: int(len(set(windows[np.asarray(kinds) == c]))) for c in sorted(set(kinds))},
                 "loglm_vector": f"{emb.shape[1]} dims: context half, own half and, with facets, each facet "
                                 "(LogEncoder.event_embedding)"}
    table = {}
    both = np.concatenate([raw, emb], 1)
    bg_both = np.concatenate([background["raw"], background["loglm"]], 1)
    # standardised by the examples themselves, or by every training flow (unlabelled; what `loglm kinds fit`
    # does with the vectors of its embeddings file), and for logreg also decorrelated by them (--decorrelate)
    stds = (("", False, 0.0), ("_standardized", True, 0.0), ("_standardized_by_training", True, 0.0),
            ("_decorrelated_by_training", True, MEASURED_DECORRELATE))
    for name, x, bg in (("loglm", emb, background["loglm"]), ("raw_features", raw, background["raw"]),
                        ("raw_plus_loglm", both, bg_both)):
        by_training = {w: Background(bg, w) for w in (0.0, MEASURED_DECORRELATE)}  # computed once for every draw
        for method in ("prototype", "logreg"):
            for suffix, std, weight in stds:
                if method == "prototype" and weight:
                    continue  # prototypes compare by cosine: standardised, never whitened
                row = {}
                for k in ks:
                    for split, groups in (("", None), ("_by_window", windows)):
                        r = fewshot_accuracy(x, kinds, k, method, trials, seed=k, standardize=std, groups=groups,
                                             background=by_training[weight] if "by_training" in suffix else None)
                        row[f"k{k}{split}_balanced"] = round(r["balanced_accuracy"], 4)
                        row[f"k{k}{split}_accuracy"] = round(r["accuracy"], 4)
                table[f"{name}_{method}{suffix}"] = row
    out["fewshot"] = table
    # headline keys: one classifier fixed before measuring, the same for both representations (what
    # `loglm kinds fit` fits by default: logistic regression standardised by unlabelled vectors, not
    # decorrelated), balanced accuracy; the best row per key is chosen on the measured flows themselves, so it
    # is reported apart (``best_setting``: per key, its value and the row it came from), never as the headline
    out["headline_setting"] = HEADLINE_SETTING
    out["best_setting"] = {}
    for k in ks:
        for split in ("", "_by_window"):
            for key, name in (("fewshot_accuracy", "loglm"), ("raw_fewshot_accuracy", "raw_features")):
                col = f"k{k}{split}_balanced"
                out[f"{key}_k{k}{split}"] = table[f"{name}_{HEADLINE_SETTING}"][col]
                best = max((t for t in table if t.startswith(name + "_")), key=lambda t: table[t][col])
                out["best_setting"][f"{key}_k{k}{split}"] = {"balanced_accuracy": table[best][col], "row": best}
    return out


def bench_search(sizes=(100_000, 1_000_000), d: int = 128, queries: int = 200, seed: int = 0) -> dict:
    """Queries/s and recall@10 of HNSW against exact search, on clustered unit vectors."""
    from loglm.analyst.search import VectorIndex

    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        centers = rng.normal(size=(2000, d)).astype(np.float32)
        x = centers[rng.integers(0, 2000, n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[rng.integers(0, n, queries)] + 0.05 * rng.normal(size=(queries, d)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exact = VectorIndex(x, "exact")
        t = time.perf_counter()
        _, ie = exact.search(q, 10)
        te = time.perf_counter() - t
        t = time.perf_counter()
        hnsw = VectorIndex(x, "hnsw")
        build = time.perf_counter() - t
        t = time.perf_counter()
        _, ih = hnsw.search(q, 10)
        th = time.perf_counter() - t
        out[f"n{n}"] = {"exact_qps": round(queries / te, 1), "hnsw_qps": round(queries / th, 1),
                        "hnsw_build_s": round(build, 2),
                        "hnsw_recall_at_10": round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ie, ih)])), 4)}
    return out




def test_alerts(model_dir: Path, data_dir: Path, work: Path | None = None) -> list[dict]:
    """The alerts of ``model_dir`` on the test split of the prepared ``data_dir`` (no report, no ATT&CK)."""
    import dataclasses
    import json
    import tempfile

    from loglm.config import compose
    from loglm.detect.detector import detect_with
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.store import load_model

    loaded = load_model(model_dir)
    cfg = compose("detect", [f"dataset={data_dir.name}", f"paths.root={data_dir.parent.parent}", "split=test"])
    out = Path(tempfile.mkdtemp(prefix="loglm-alerts-", dir=work)) / "alerts.jsonl"
    cfg = dataclasses.replace(cfg, out=str(out), detect=dataclasses.replace(cfg.detect, report=False,
                                                                            attack_context=False))
    detect_with(cfg, loaded, lambda t, g, c, d: score_windows(loaded.encoder, t, g, c, d))
    return [json.loads(x) for x in out.read_text().splitlines()]


def session_classes(labels: list, table, keep=None) -> dict[str, str]:
    """Each session's most frequent attack class among its events' labels (not None or BENIGN; only those in
    ``keep`` when given); sessions without one are left out."""
    held: dict[str, Counter] = {}
    for sid, idx in zip(table.column("session_id").to_pylist(), table.column("event_idx").to_pylist()):
        held.setdefault(sid, Counter()).update(
            labels[i] for i in idx if labels[i] not in (None, "BENIGN") and (keep is None or labels[i] in keep))
    return {s: c.most_common(1)[0][0] for s, c in held.items() if c}


def bench_attack(model_dir: Path, data_dir: Path, work: Path | None = None, alerts: list[dict] | None = None
                 ) -> dict:
    """ATT&CK from evidence alone, on the test alerts of a labelled flow dataset (``alerts``, or detected
    here): for each alert whose attack class has a known technique (KIND_TECHNIQUES), is that technique (or
    its parent) among the top 3?"""
    import pyarrow.parquet as pq

    from loglm.analyst.attack import KIND_TECHNIQUES, by_evidence
    from loglm.shards import read_sessions

    alerts = test_alerts(model_dir, data_dir, work) if alerts is None else alerts
    labels = pq.read_table(data_dir / "events.parquet", columns=["label"]).column("label").to_pylist()
    cls = session_classes(labels, read_sessions(data_dir, "test"))
    per_class: dict[str, list[int]] = {}
    for a in alerts:
        kind = cls.get(a["session_id"])
        if not kind:
            continue
        want = KIND_TECHNIQUES.get(kind.lower().replace("–", "-"))
        if not want:
            continue
        got = {x["id"] for x in by_evidence(a)} | {x["id"].split(".")[0] for x in by_evidence(a)}
        per_class.setdefault(kind, []).append(int(any(w in got or w.split(".")[0] in got for w in want)))
    return {"unit": "test alert (window) with a labelled attack class", "hit_at_3": {
        k: {"alerts": len(v), "hit_rate": round(sum(v) / len(v), 3), "technique": KIND_TECHNIQUES[k.lower()][0]}
        for k, v in per_class.items()},
        "overall": round(sum(sum(v) for v in per_class.values()) / max(1, sum(len(v) for v in per_class.values())), 3)}


def bench_alert_kinds(model_dir: Path, data_dir: Path, ks=(5, 20), trials: int = 20, seed: int = 0,
                      alerts: list[dict] | None = None) -> dict:
    """Kinds as the analyst sees them, per alert: the test alerts (``alerts``, or detected here) of a
    labelled flow dataset whose flows hold an attack class (>= 100 test flows), each drawn split putting half
    the sessions aside; k flows per class from that half are the examples (event vectors, logistic
    regression standardised by all the half's vectors as `loglm kinds fit` by its embeddings file, confidence
    floor 0.5), and the alerts of the other half take the kind their events
    vote for (``enrich.event_kinds``, what detection does with an event kinds file).  Balanced accuracy over
    the alerts' majority classes; a draw whose half lacks k flows of a class is skipped (GoldenEye spans two
    sessions)."""
    import pyarrow.parquet as pq

    from loglm.analyst.embed import embed_events, torch_event_embed_fn
    from loglm.analyst.enrich import event_kinds
    from loglm.analyst.fewshot import FewShot
    from loglm.model.store import load_model
    from loglm.shards import read_sessions
    from loglm.windows import windows_of

    alerts = test_alerts(model_dir, data_dir) if alerts is None else alerts
    labels = pq.read_table(data_dir / "events.parquet", columns=["label"]).column("label").to_pylist()
    table = read_sessions(data_dir, "test")
    per_window = embed_events(torch_event_embed_fn(load_model(model_dir).encoder), *windows_of(table))
    sids, idx = table.column("session_id").to_pylist(), table.column("event_idx").to_pylist()
    counts = Counter(labels[i] for ev in idx for i in ev)
    keep = sorted(c for c, n in counts.items() if c not in (None, "BENIGN") and n >= 100)
    classes = session_classes(labels, table, set(keep))
    truth = {a["session_id"]: classes[a["session_id"]] for a in alerts if a["session_id"] in classes}
    rng = np.random.default_rng(seed)
    sessions = sorted(set(sids))
    out_k = {"alerts": dict(Counter(truth.values())), "unit": "alert (session) with an attack class"}
    for k in ks:
        accs = []
        for _ in range(trials):
            half = set(rng.permutation(sessions)[: len(sessions) // 2])
            pool: dict[str, list] = {c: [] for c in keep}
            every = []  # the half's vectors, labelled or not: what `loglm kinds fit` standardises by
            for s, ev, v in zip(sids, idx, per_window):
                if s in half:
                    every.append(np.asarray(v))
                    for j, i in enumerate(ev):
                        if labels[i] in pool:
                            pool[labels[i]].append(v[j])
            if any(len(p) < k for p in pool.values()):
                continue
            x, y = [], []
            for c, p in pool.items():
                x += [p[j] for j in rng.choice(len(p), k, replace=False)]
                y += [c] * k
            clf = FewShot("logreg", 0.5, standardize=True, unit="event").fit(np.stack(x), y,
                                                                             background=np.concatenate(every))
            test = {s for s in truth if s not in half}
            rows = [r for r, s in enumerate(sids) if s in test]
            got = event_kinds(clf, [sids[r] for r in rows], [per_window[r] for r in rows])
            per: dict[str, list] = {}
            for s in test:
                per.setdefault(truth[s], []).append(got[s]["name"] == truth[s])
            accs.append(float(np.mean([np.mean(v) for v in per.values()])))
        out_k[f"alert_kind_accuracy_k{k}"] = round(float(np.mean(accs)), 4) if accs else None
        out_k[f"draws_k{k}"] = len(accs)
    return out_k


def _pretrained(tmp: Path, dataset: str, overrides: tuple[str, ...], model_dir: str | None = None):
    """(model directory, prepared folder): ``dataset`` prepared under ``tmp`` and pretrained with its
    protocol's budget and ``overrides``, or ``model_dir`` when given."""
    import dataclasses

    from loglm.config import compose
    from loglm.ingest.prepare import prepared_dir
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    cfg = compose("evaluate", [f"dataset={dataset}", f"paths.root={tmp}", *overrides])
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, progress_bar=False))
    prepare(cfg)
    if model_dir is None:
        model_dir = pretrain(cfg)["model_dir"]
    return Path(model_dir), prepared_dir(cfg.paths.root, dataset)


def bench_analyst(tmp: Path, model_dir: str | None = None, dataset: str = "cic_flowprep",
                  overrides: tuple[str, ...] = ("data.flow_facets=true", "tokenizer.min_count=1", "objective.unk_rate=0"),
                  zeek: bool = True) -> dict:
    """The ``analyst`` section: pretrain on ``dataset`` with its protocol's budget and ``overrides`` (flow
    facets: what a flow's own half of its vector is made of; off by default for detection, docs/accuracy.md "Flow
    facets"; every flow form its own token, as the few-shot figures were measured, where ``cic_flowprep``'s
    detection preset reads forms seen once as [UNK]), or take ``model_dir``; then few-shot kinds, ATT&CK from evidence, and search speed.  With
    ``zeek`` (and the shared Zeek captures), few-shot kinds on ``zeek_ctu`` too: a model pretrained the same
    way, its test flows' detailed labels as kinds (the attack and the benign services)."""
    trained_here = model_dir is None
    model, data_dir = _pretrained(tmp, dataset, overrides, model_dir)
    out = {"dataset": dataset, "model_dir": str(model), "overrides": " ".join(overrides) if trained_here else ""}
    out.update(bench_fewshot(model, data_dir))
    alerts = test_alerts(model, data_dir, tmp)  # one detection run for both
    out["attack_from_evidence"] = bench_attack(model, data_dir, alerts=alerts)
    out["alert_kinds"] = bench_alert_kinds(model, data_dir, alerts=alerts)
    out["search"] = bench_search()
    if zeek:
        from loglm.config import compose

        inputs = [Path(p) for p in compose("evaluate", ["dataset=zeek_ctu"]).data.inputs]
        if all(p.is_file() for p in inputs):
            zmodel, zdir = _pretrained(tmp, "zeek_ctu", overrides)
            z = bench_fewshot(zmodel, zdir, kinds_of=zeek_detailed_labels(zdir))
            out["zeek_ctu"] = {"model_dir": str(zmodel), **z}
            for k, v in z.items():
                if k.startswith(("fewshot_accuracy_", "raw_fewshot_accuracy_")):
                    out[f"zeek_{k}"] = v
        else:
            out["zeek_ctu"] = {"skipped": f"the protocol's captures are not here: {[str(p) for p in inputs]}"}
    return out
