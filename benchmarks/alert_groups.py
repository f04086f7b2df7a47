"""How alert groups (loglm.analyst.groups) cut an analyst's queue, and whether a group ever mixes anomalous and
normal sessions: ``python -m benchmarks.alert_groups --alerts A.jsonl --embeddings E.parquet`` (the
embeddings file carries each session's label, as ``pipelines.embed`` writes it for labelled data).

For each threshold: the number of groups, purity (the share of alerts whose label is their group's majority
label: what one verdict per group gets right) and the groups that mix labels.  ``--vectors``: ``file`` groups by the
embeddings file's rows; ``own`` as the triage page does, by the vectors detection wrote beside the alerts
(``alerts.vectors.jsonl``) where they share the file's model; ``model`` by those vectors with no embeddings file,
centred on the model's own centre (its normal validation sessions' mean, the first row of the vectors: what the
page does without a file); ``alone`` by those vectors centred on the alerts' own mean (measured to show why the
page does not do that).  Labels come from the embeddings file in every case."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

THRESHOLDS = (0.999, 0.995, 0.99, 0.98, 0.95, 0.9)


def measure(alerts_path: str, embeddings: str, thresholds=THRESHOLDS, vectors_from: str = "file") -> dict:
    from loglm.analyst.embed import read_embeddings
    from loglm.analyst.feedback import load_alerts
    from loglm.analyst.groups import group_alerts, group_alerts_file, groups_of

    alerts = load_alerts(alerts_path)
    meta, vectors = read_embeddings(embeddings)
    label = dict(zip(meta.column("session_id").to_pylist(), meta.column("label").to_pylist()))
    labels = {a["alert_id"]: label.get(a["session_id"]) for a in alerts}
    out = {"alerts": len(alerts), "labels": dict(Counter(str(v) for v in labels.values())), "vectors": vectors_from,
           "by_threshold": {}}
    for th in thresholds:
        if vectors_from == "file":
            leader = group_alerts(alerts, meta, vectors, th)
        elif vectors_from == "own":
            leader = group_alerts_file(alerts, alerts_path, meta, vectors, th)
        elif vectors_from == "model":
            leader = group_alerts_file(alerts, alerts_path, None, None, th)
            if leader is None:
                raise ValueError(f"{alerts_path}: its vectors hold no model centre (a model calibrated before it was kept)")
        else:  # the alerts' own vectors centred on their own mean (what the page does not do)
            own = alone_vectors(alerts, alerts_path)
            leader = group_alerts(alerts, None, None, th, own, centre=np.mean(list(own.values()), axis=0))
        groups = groups_of(leader)
        counts = [Counter(labels[m] for m in members) for members in groups.values()]
        out["by_threshold"][str(th)] = {
            "groups": len(groups), "purity": round(sum(c.most_common(1)[0][1] for c in counts) / len(alerts), 4),
            "mixed_groups": sum(len(c) > 1 for c in counts),
            "largest": sorted((len(m) for m in groups.values()), reverse=True)[:5]}
    return out


def alone_vectors(alerts: list[dict], alerts_path: str) -> dict:
    from loglm.analyst.alert_vectors import AlertVectors, comparable

    own = AlertVectors(alerts_path)
    own.refresh()
    return comparable(alerts, own.by_alert, None, has_file=False)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", required=True)
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--vectors", choices=["file", "own", "model", "alone"], default="file")
    args = ap.parse_args(argv)
    result = measure(args.alerts, args.embeddings, vectors_from=args.vectors)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
