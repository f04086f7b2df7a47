"""How alert groups (loglm.analyst.groups) cut an analyst's queue, and whether a group ever mixes anomalous and
normal sessions: ``python -m benchmarks.alert_groups --alerts A.jsonl --embeddings E.parquet`` (the
embeddings file carries each session's label, as ``pipelines.embed`` writes it for labelled data).

For each threshold: the number of groups, purity (the share of alerts whose label is their group's majority
label: what one verdict per group gets right) and the groups that mix labels."""

from __future__ import annotations

import argparse
import json
from collections import Counter

THRESHOLDS = (0.999, 0.995, 0.99, 0.98, 0.95, 0.9)


def measure(alerts_path: str, embeddings: str, thresholds=THRESHOLDS) -> dict:
    from loglm.analyst.embed import read_embeddings
    from loglm.analyst.feedback import load_alerts
    from loglm.analyst.groups import group_alerts, groups_of

    alerts = load_alerts(alerts_path)
    meta, vectors = read_embeddings(embeddings)
    label = dict(zip(meta.column("session_id").to_pylist(), meta.column("label").to_pylist()))
    labels = {a["alert_id"]: label.get(a["session_id"]) for a in alerts}
    out = {"alerts": len(alerts), "labels": dict(Counter(str(v) for v in labels.values())), "by_threshold": {}}
    for th in thresholds:
        groups = groups_of(group_alerts(alerts, meta, vectors, th))
        counts = [Counter(labels[m] for m in members) for members in groups.values()]
        out["by_threshold"][str(th)] = {
            "groups": len(groups), "purity": round(sum(c.most_common(1)[0][1] for c in counts) / len(alerts), 4),
            "mixed_groups": sum(len(c) > 1 for c in counts),
            "largest": sorted((len(m) for m in groups.values()), reverse=True)[:5]}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", required=True)
    ap.add_argument("--embeddings", required=True)
    args = ap.parse_args(argv)
    result = measure(args.alerts, args.embeddings)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
