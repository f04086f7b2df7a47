"""`loglm similar | kinds | feedback | triage | model`: the analyst's commands (see README "The analyst's loop")."""

from __future__ import annotations

import argparse
import json
import os
import sys


def similar_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm similar", description="Sessions most similar to one (cosine of their vectors).")
    p.add_argument("--embeddings", required=True, help="Parquet written by pipelines.embed / loglm embed")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", help="session id (an alert's session_id)")
    which.add_argument("--alert-id", help="an alert of --alerts: by the vector detection wrote beside it (a "
                       "stream's alert, whose session no embeddings file holds yet), else by its session")
    p.add_argument("--alerts", help="alerts file (JSON lines), for --alert-id")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--index", choices=["auto", "exact", "hnsw"], default="auto")
    a = p.parse_args(argv)
    from loglm.analyst.embed import embeddings_model, read_embeddings
    from loglm.analyst.search import similar_for_alert, similar_sessions

    try:
        meta, vecs = read_embeddings(a.embeddings)
        if a.session:
            near = similar_sessions(meta, vecs, a.session, a.top, a.index)
        else:
            from loglm.analyst import feedback as fb
            from loglm.analyst.alert_vectors import AlertVectors, comparable

            if not a.alerts:
                raise ValueError("--alert-id needs --alerts (the alerts file it is in)")
            alerts = fb.load_alerts(a.alerts)
            alert = fb.find_alert(alerts, a.alert_id)
            own = AlertVectors(a.alerts)
            own.refresh()
            mine = comparable([alert], own.by_alert, embeddings_model(meta), True).get(alert["alert_id"])
            if mine is None and alert["session_id"] not in set(meta.column("session_id").to_pylist()):
                raise ValueError(f"alert {a.alert_id}: its session is not in {a.embeddings} and it has no vector "
                                 f"from this embeddings file's model beside the alerts ({own.file.path})")
            near = similar_for_alert(meta, vecs, alert, mine, a.top, a.index)
    except (FileNotFoundError, ValueError) as e:
        print(f"loglm similar: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(near, indent=2))
    return 0


def kinds_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm kinds fit",
                                description="Fit a few-shot kinds file from labelled sessions (a classifier on their vectors).")
    p.add_argument("action", choices=["fit"])
    p.add_argument("--embeddings", required=True, help="Parquet of session vectors holding the examples, or of "
                   "event vectors (embed_events=true / --events): then alerts take the kind of their events")
    p.add_argument("--examples", help="CSV with columns session_id,kind (event_idx,kind for event vectors)")
    p.add_argument("--feedback", help="feedback table: malicious verdicts that name a kind are examples")
    p.add_argument("--min-confidence", type=float, default=0.5, help="below it an alert's kind is 'unknown'")
    p.add_argument("--min-similarity", type=float, default=0.0,
                   help="below this cosine with every example an item's kind is 'unknown' whatever the classifier's "
                        "confidence (0: off); 0.85 kept 0.96-0.98 of cic_flowprep attack alerts' kinds and gave "
                        "0.002-0.027 of its false positives one (docs/analyst.md \"Benign alerts get an attack kind too\")")
    p.add_argument("--method", choices=["auto", "prototype", "logreg"], default="auto",
                   help="prototype: the nearest kind's mean vector (cosine); logreg: logistic regression on "
                        "vectors standardised by every vector of --embeddings (needs two kinds; it led prototypes "
                        "at k = 1, 5 and 20 on cic_flowprep and zeek_ctu flows, docs/analyst.md \"The analyst's "
                        "loop\"); auto (the default): logreg with examples of two kinds or more, else prototype")
    p.add_argument("--decorrelate", type=float, default=None,
                   help="logreg: weight of the --embeddings vectors' correlations when whitening them (default 0: "
                        "standardise only); 0.1 raised k = 1 from 0.56 to 0.70 on cic_flowprep attack flows and "
                        "lowered it from 0.85 to 0.74 on zeek_ctu's kinds (docs/analyst.md \"Decorrelated by "
                        "unlabelled vectors\"): measure on your own labelled alerts before using it")
    p.add_argument("--out", required=True, help="kinds file (JSON) for detect.kinds=")
    a = p.parse_args(argv)
    if a.decorrelate is not None and not 0.0 <= a.decorrelate < 1.0:
        p.error(f"--decorrelate is a weight in [0, 1), got {a.decorrelate}")
    import csv

    from loglm.analyst import feedback as fb
    from loglm.analyst.embed import read_embeddings
    from loglm.analyst.fewshot import DECORRELATE, FewShot

    meta, vecs = read_embeddings(a.embeddings)
    unit = "event" if "event_idx" in meta.column_names else "session"  # an embed_events=true file
    key = "event_idx" if unit == "event" else "session_id"
    examples: dict[str, str] = {}
    if a.examples:
        with open(a.examples, newline="") as fh:
            reader = csv.DictReader(fh)
            if key not in (reader.fieldnames or []) or "kind" not in reader.fieldnames:
                print(f"loglm kinds: error: {a.examples} needs the columns {key},kind ({a.embeddings} holds "
                      f"{unit} vectors)", file=sys.stderr)
                return 2
            for row in reader:
                examples[row[key]] = row["kind"]
    if a.feedback:
        if unit == "event":
            print("loglm kinds: error: feedback verdicts name sessions; fit them on session vectors (an embeddings "
                  "file without embed_events)", file=sys.stderr)
            return 2
        examples.update({r["session_id"]: r["kind"] for r in fb.read(a.feedback).values()
                         if r["verdict"] == "malicious" and r.get("kind")})
    if not examples:
        print("loglm kinds: error: no examples (give --examples CSV or --feedback with kinds)", file=sys.stderr)
        return 2
    row_of = {str(s): i for i, s in enumerate(meta.column(key).to_pylist())}
    missing = [s for s in examples if s not in row_of]
    if missing:
        print(f"loglm kinds: error: {len(missing)} example {unit}s are not in {a.embeddings} (first: {missing[0]})",
              file=sys.stderr)
        return 2
    ids = list(examples)
    if a.method == "auto":
        a.method = "logreg" if len(set(examples.values())) >= 2 else "prototype"
    if a.method == "logreg" and len(set(examples.values())) < 2:
        print("loglm kinds: error: --method logreg needs examples of two kinds or more", file=sys.stderr)
        return 2
    # logreg standardises by every vector of the file (labelled or not), not by the few examples alone
    clf = FewShot(a.method, a.min_confidence, standardize=a.method == "logreg", unit=unit,
                  min_similarity=a.min_similarity,
                  decorrelate=DECORRELATE if a.decorrelate is None else a.decorrelate).fit(
        vecs[[row_of[s] for s in ids]], [examples[s] for s in ids], background=vecs)
    clf.save(a.out)
    print(json.dumps({"kinds_path": a.out, "method": clf.method,
                      "kinds": {k: sum(v == k for v in examples.values()) for k in clf.kinds}}))
    return 0


def feedback_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm feedback", description="Record a verdict on an alert.")
    p.add_argument("--alerts", required=True, help="alerts file (JSON lines)")
    p.add_argument("--alert-id", required=True)
    p.add_argument("--verdict", required=True, choices=["benign", "malicious"])
    p.add_argument("--kind", help="what it is (malicious verdicts): becomes a few-shot example")
    p.add_argument("--note", default="")
    p.add_argument("--table", default="runs/feedback.jsonl", help="feedback table (JSON lines, appended)")
    p.add_argument("--group", action="store_true",
                   help="the verdict for every alert of the alert's group (loglm.analyst.groups)")
    p.add_argument("--embeddings", help="session vectors (pipelines.embed / loglm embed), for --group: as "
                   "loglm triage --embeddings")
    p.add_argument("--group-cosine", type=float, default=None, help="as loglm triage --group-cosine (default 0.995)")
    a = p.parse_args(argv)
    from loglm.analyst import feedback as fb

    try:
        alerts = fb.load_alerts(a.alerts)
        alert = fb.find_alert(alerts, a.alert_id)
        if not a.group:
            print(json.dumps(fb.record(a.table, alert, a.verdict, a.kind, a.note, alerts_file=a.alerts)))
            return 0
        from loglm.analyst.embed import read_embeddings
        from loglm.analyst.groups import GROUP_MIN_COSINE, group_alerts_file, groups_of

        meta, vectors = read_embeddings(a.embeddings) if a.embeddings else (None, None)
        leader = group_alerts_file(alerts, a.alerts, meta, vectors, a.group_cosine or GROUP_MIN_COSINE)
        if leader is None:
            raise ValueError("--group needs a centre to compare the alerts' vectors around: --embeddings (past "
                             "sessions' vectors), or the model's own beside the alerts (a model calibrated since "
                             "2026-12-05 writes it there)")
        lead = leader[alert["alert_id"]]
        by_id = {x["alert_id"]: x for x in alerts}
        members = [by_id[m] for m in groups_of(leader)[lead]]
        rows = fb.record_many(a.table, members, a.verdict, a.kind, a.note, alerts_file=a.alerts, group=lead)
        print(json.dumps({"verdict": a.verdict, "group": lead, "alerts": [r["alert_id"] for r in rows]}))
    except (FileNotFoundError, ValueError) as e:
        print(f"loglm feedback: error: {e}", file=sys.stderr)
        return 2
    return 0


def triage_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm triage", description="The triage page over an alerts file (127.0.0.1 only).")
    p.add_argument("--alerts", required=True)
    p.add_argument("--feedback", default="runs/feedback.jsonl")
    p.add_argument("--embeddings", help="session vectors for 'similar sequences' (pipelines.embed / loglm embed)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--group-cosine", type=float, default=None,
                   help="alerts whose session vectors reach this cosine with a group's leading alert are one group "
                        "(default 0.995, loglm.analyst.groups; 0 turns grouping off)")
    p.add_argument("--wait", action="store_true",
                   help="start even when the alerts file is not there yet (a page started beside its stream, as "
                        "services are); without it a missing file is an error")
    a = p.parse_args(argv)
    from loglm.analyst.triage import serve

    try:
        serve(a.alerts, a.feedback, a.embeddings, a.port, a.group_cosine, a.wait)
    except (FileNotFoundError, ValueError) as e:
        print(f"loglm triage: error: {e}", file=sys.stderr)
        return 2
    return 0


def model_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loglm model", description="Registered detector versions: list, promote, roll back.")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("--name", default="loglm-detector")
    p.add_argument("--version", help="promote: the version to make champion (default: the candidate)")
    p.add_argument("--to", help="rollback: the version champion goes back to")
    p.add_argument("--accept-calibration-warning", action="store_true",
                   help="promote: a version whose calibration warned (validation too small for its target FPR)")
    p.add_argument("--root", default=os.environ.get("LOGLM_RUNS", "runs"), help="paths.root (its mlflow.db)")
    a = p.parse_args(argv)
    from loglm.analyst import registry

    try:
        if a.action == "list":
            out = registry.versions(a.name, a.root)
        elif a.action == "promote":
            out = registry.promote(a.name, a.version, a.root, accept_warning=a.accept_calibration_warning)
        else:
            if not a.to:
                raise ValueError("rollback needs --to <version>")
            out = registry.rollback(a.name, a.to, a.root)
    except Exception as e:  # a missing model or version: the registry's own message
        print(f"loglm model: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


COMMANDS = {"model": model_main, "similar": similar_main, "kinds": kinds_main, "feedback": feedback_main, "triage": triage_main}
