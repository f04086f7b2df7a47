"""SIEM output: related alerts grouped into findings, written as OCSF *Detection Finding* events.

An alert is one anomalous session (window).  An entity that misbehaves for an hour produces many windows;
an analyst wants one finding for it.  Alerts of the same entity (type and value) whose windows are at most
``detect.group_gap_s`` apart are merged into one finding: first/last seen, every member alert, the worst
score, the most surprising events across its windows, and the union of the entities involved.

Each finding becomes an OCSF 1.4 Detection Finding (class_uid 2004, category "Findings"): ``time``,
``severity_id``, ``finding_info`` (uid, title, analytic = the model), ``observables`` for every entity
(IP address, host name, user name, other ids; each observable's ``name`` is the path of its value in the
event, ``unmapped.loglm.entities.<kind>``), ``evidences`` (the surprising events with raw line,
template, surprisal and what the model expected instead), ``metadata`` (product, model version) and the
LogLM specifics under ``unmapped.loglm``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

# 1.4.0: finding_info.related_events_count (the number of windows grouped) first appears in 1.4.0; every
# finding validates against that version's official JSON schema (tests/test_findings.py)
OCSF_VERSION = "1.4.0"
SEVERITY_ID = {"low": 2, "medium": 3, "high": 4, "critical": 5}
SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
# OCSF observable type ids
OBSERVABLE_TYPE = {"ip": (2, "IP Address"), "src_ip": (2, "IP Address"), "dst_ip": (2, "IP Address"),
                   "hostname": (1, "Hostname"), "user": (4, "User Name")}


def product_version() -> str:
    """The installed LogLM version (metadata.product.version of every finding)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loglm")
    except PackageNotFoundError:
        return "0+unknown"


def _ms(iso_time: str) -> int:
    return int(datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp() * 1000)


def group_alerts(alerts: list[dict], gap_s: float, evidence_events: int = 5) -> list[dict]:
    """Findings from alerts: same entity, windows at most ``gap_s`` apart (0 = one finding per alert)."""
    by_entity: dict[tuple[str, str], list[dict]] = {}
    for a in alerts:
        by_entity.setdefault((a["entity"]["type"], a["entity"]["value"]), []).append(a)
    findings = [f for (etype, value), items in by_entity.items()
                for f in entity_findings(etype, value, sorted(items, key=lambda a: a["start_time"]), gap_s,
                                         evidence_events)]
    findings.sort(key=lambda f: -f["score"])
    return findings


def entity_findings(etype: str, value: str, items, gap_s: float, evidence_events: int = 5):
    """One entity's findings from its alerts in start-time order (an iterable: only the group being built is
    held)."""
    group: list[dict] = []
    for a in items:
        if group and (_ms(a["start_time"]) - _ms(group[-1]["end_time"])) / 1000.0 > gap_s:
            yield _merge(group, etype, value, evidence_events)
            group = []
        group.append(a)
    if group:
        yield _merge(group, etype, value, evidence_events)


def _merge(group: list[dict], etype: str, value: str, evidence_events: int) -> dict:
    worst = max(group, key=lambda a: a["score"])
    ents: dict[str, list[str]] = {}
    for a in group:
        for kind, values in a["entities"].items():
            bucket = ents.setdefault(kind, [])
            bucket.extend(v for v in values if v not in bucket)
    evidence = sorted((dict(e, alert_id=a["alert_id"]) for a in group for e in a["surprising_events"]),
                      key=lambda e: -e["surprisal"])[:evidence_events]
    evidence.sort(key=lambda e: (e["time"], e["position"]))
    first = group[0]
    return {
        "finding_id": hashlib.sha256(("|".join(a["alert_id"] for a in group[:1]) + f"|{etype}|{value}").encode()).hexdigest()[:16],
        "title": (f"{len(group)} unusual event sequences for {etype} {value}" if len(group) > 1
                  else first["title"]),
        "entity": {"type": etype, "value": value}, "severity": max((a["severity"] for a in group), key=SEVERITY_RANK.get),
        "score": worst["score"], "threshold": worst["threshold"],
        "first_seen": min(a["start_time"] for a in group), "last_seen": max(a["end_time"] for a in group),
        "time": max(a["time"] for a in group), "n_alerts": len(group), "alert_ids": [a["alert_id"] for a in group],
        "n_events": sum(a["n_events"] for a in group), "entities": ents, "surprising_events": evidence,
        "model": first["model"], **({"label": max(a["label"] for a in group)} if all("label" in a for a in group) else {}),
        "attacks": _union_attacks(group), **({"kind": worst["kind"]} if "kind" in worst else {}),
    }


def _union_attacks(group: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for a in group:
        for t in a.get("attacks", []):
            seen.setdefault(t["id"], t)
    return list(seen.values())


def ocsf_attacks(attacks: list[dict]) -> list[dict]:
    """OCSF ``attack`` objects (technique or sub-technique, tactic, ATT&CK version) of LogLM's techniques."""
    from loglm.analyst.attack import ATTACK_VERSION

    out = []
    for t in attacks:
        name = t["name"].split(": ", 1)
        ref = {"uid": t["id"], "name": name[-1], "src_url": t["url"]}
        obj = {"version": ATTACK_VERSION}
        if "." in t["id"]:
            parent = t["id"].split(".")[0]
            obj["technique"] = {"uid": parent, "name": name[0], "src_url": f"https://attack.mitre.org/techniques/{parent}"}
            obj["sub_technique"] = ref
        else:
            obj["technique"] = ref
        if t.get("tactics"):
            obj["tactic"] = {"name": t["tactics"][0].replace("-", " ").title()}
        out.append(obj)
    return out


def observables(entities: dict[str, list[str]]) -> list[dict]:
    out = []
    for kind, values in entities.items():
        type_id, type_name = OBSERVABLE_TYPE.get(kind, (99, "Other"))
        out.extend({"name": f"unmapped.loglm.entities.{kind}", "type_id": type_id, "type": type_name, "value": v}
                   for v in values)
    return out


def to_ocsf(finding: dict, product_version: str, activity_id: int = 1) -> dict:
    """One OCSF Detection Finding (activity 1 Create; 2 Update for a streaming finding that grew)."""
    model = finding["model"]
    return {
        "class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2, "category_name": "Findings",
        "activity_id": activity_id, "activity_name": {1: "Create", 2: "Update"}[activity_id],
        "type_uid": 2004 * 100 + activity_id,
        "time": _ms(finding["time"]), "severity_id": SEVERITY_ID[finding["severity"]],
        "severity": finding["severity"].capitalize(), "status_id": 1, "status": "New",
        "message": finding["title"],
        "finding_info": {
            "uid": finding["finding_id"], "title": finding["title"],
            "desc": (f"{finding['n_events']} events in {finding['n_alerts']} window(s) of {finding['entity']['type']} "
                     f"{finding['entity']['value']} were unlikely under the LogLM model of normal behaviour "
                     f"(score {finding['score']:.4g} > threshold {finding['threshold']:.4g})."),
            "types": ["Log Anomaly"], "first_seen_time": _ms(finding["first_seen"]),
            "last_seen_time": _ms(finding["last_seen"]), "related_events_count": finding["n_alerts"],
            "analytic": {"name": "LogLM masked-event model", "type_id": 4, "type": "Learning (ML/DL)",
                         "uid": model.get("run_id"), "version": model.get("bundle_version") or model.get("run_id")},
            **({"attacks": ocsf_attacks(finding["attacks"])} if finding.get("attacks") else {}),
        },
        "observables": observables(finding["entities"]),
        "evidences": [{"data": e} for e in finding["surprising_events"]],
        "metadata": {"version": OCSF_VERSION, "product": {"name": "LogLM", "vendor_name": "LogLM",
                                                          "version": product_version},
                     "correlation_uid": f"{finding['entity']['type']}:{finding['entity']['value']}"},
        "unmapped": {"loglm": {"score": finding["score"], "threshold": finding["threshold"],
                               "alert_ids": finding["alert_ids"], "entity": finding["entity"],
                               "entities": finding["entities"],
                               "model_dir": model.get("model_dir"),
                               **({"kind": finding["kind"]} if "kind" in finding else {})}},
    }


class FindingStream:
    """Streaming findings: the first alert of an entity creates a finding (OCSF activity Create); a later
    alert of the same entity within ``gap_s`` of its last window updates it (activity Update, same uid).
    At most ``max_open`` entities are remembered (least recently updated forgotten first)."""

    def __init__(self, gap_s: float, evidence_events: int, product_version: str, max_open: int = 100_000):
        from collections import OrderedDict

        self.gap_s, self.evidence_events, self.product = gap_s, evidence_events, product_version
        self.max_open = max_open
        self.open: OrderedDict[tuple[str, str], list[dict]] = OrderedDict()

    def feed(self, alert: dict) -> dict:
        key = (alert["entity"]["type"], alert["entity"]["value"])
        group = self.open.pop(key, None)
        if group is not None and (_ms(alert["start_time"]) - _ms(group[-1]["end_time"])) / 1000.0 > self.gap_s:
            group = None
        activity = 1 if group is None else 2
        group = [*(group or []), alert]
        self.open[key] = group
        while len(self.open) > self.max_open:
            self.open.popitem(last=False)
        return to_ocsf(_merge(group, key[0], key[1], self.evidence_events), self.product, activity)
