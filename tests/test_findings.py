"""Alerts grouped into findings and written as OCSF Detection Findings (batch and streaming)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loglm.detect.findings import FindingStream, group_alerts, to_ocsf

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def alert(aid: str, etype: str, value: str, start_s: float, dur_s: float, score: float, severity: str,
          surprisals: list[float], entities: dict | None = None) -> dict:
    start, end = T0 + timedelta(seconds=start_s), T0 + timedelta(seconds=start_s + dur_s)
    events = [{"position": i, "time": iso(start + timedelta(seconds=i)), "file": "conn.log", "line": 10 + i,
               "raw": f"raw line {aid}/{i}", "template": f"tpl {i}", "known_event": True, "surprisal": s, "rank": 7,
               "expected": [{"template": "tpl 0", "p": 0.9}]} for i, s in enumerate(surprisals)]
    return {"alert_id": aid, "time": iso(end), "severity": severity, "title": f"Unusual event sequence for {etype} {value}",
            "session_id": f"{value}@{start_s}", "entity": {"type": etype, "value": value}, "score": score,
            "threshold": 1.0, "start_time": iso(start), "end_time": iso(end), "n_events": len(surprisals),
            "n_unexpected_events": 1, "entities": entities or {etype: [value]}, "surprising_events": events,
            "model": {"run_id": "r1", "model_dir": "/m"}, "label": 1}


def test_alerts_of_one_entity_within_the_gap_become_one_finding():
    alerts = [alert("a1", "src_ip", "198.51.100.7", 0, 60, 3.0, "high", [5.0, 1.0]),
              alert("a2", "src_ip", "198.51.100.7", 300, 60, 9.0, "critical", [2.0, 8.0, 0.5],
                    {"src_ip": ["198.51.100.7"], "dst_ip": ["10.0.0.5"]}),
              alert("a3", "src_ip", "198.51.100.7", 5000, 60, 1.5, "low", [1.5]),  # an hour later: new finding
              alert("b1", "hostname", "web01", 10, 60, 2.0, "medium", [3.0])]
    findings = group_alerts(alerts, gap_s=600, evidence_events=3)
    assert [f["n_alerts"] for f in findings] == [2, 1, 1]  # worst first
    top = findings[0]
    assert top["alert_ids"] == ["a1", "a2"] and top["score"] == 9.0 and top["severity"] == "critical"
    assert top["first_seen"] == iso(T0) and top["last_seen"] == iso(T0 + timedelta(seconds=360))
    assert top["entities"] == {"src_ip": ["198.51.100.7"], "dst_ip": ["10.0.0.5"]}
    assert sorted(e["surprisal"] for e in top["surprising_events"]) == [2.0, 5.0, 8.0]  # across both windows
    assert top["n_events"] == 5 and top["label"] == 1
    assert len(group_alerts(alerts, gap_s=0)) == 4


def test_ocsf_detection_finding_shape():
    alerts = [alert("a1", "src_ip", "198.51.100.7", 0, 60, 3.0, "high", [5.0],
                    {"src_ip": ["198.51.100.7"], "hostname": ["web01"], "user": ["bob"], "block_id": ["blk_1"]})]
    f = to_ocsf(group_alerts(alerts, 600)[0], "1.2.3")
    assert (f["class_uid"], f["category_uid"], f["activity_id"], f["type_uid"]) == (2004, 2, 1, 200401)
    assert f["severity_id"] == 4 and f["severity"] == "High" and isinstance(f["time"], int)
    info = f["finding_info"]
    assert info["first_seen_time"] == int(T0.timestamp() * 1000) and info["last_seen_time"] - info["first_seen_time"] == 60_000
    assert info["analytic"]["type_id"] == 4 and info["analytic"]["uid"] == "r1" and info["uid"]
    obs = {(o["name"], o["type_id"], o["value"]) for o in f["observables"]}
    path = "unmapped.loglm.entities."
    assert obs == {(path + "src_ip", 2, "198.51.100.7"), (path + "hostname", 1, "web01"), (path + "user", 4, "bob"),
                   (path + "block_id", 99, "blk_1")}
    for o in f["observables"]:  # each observable names the path of its value in the event
        node = f
        for key in o["name"].split("."):
            node = node[key]
        assert o["value"] in node
    ev = f["evidences"][0]["data"]
    assert ev["raw"] and ev["template"] and ev["surprisal"] == 5.0 and ev["expected"][0]["template"] == "tpl 0"
    assert f["metadata"]["product"] == {"name": "LogLM", "vendor_name": "LogLM", "version": "1.2.3"}
    assert f["metadata"]["version"].startswith("1.") and f["unmapped"]["loglm"]["alert_ids"] == ["a1"]


def test_streaming_findings_create_then_update_and_stay_bounded():
    stream = FindingStream(gap_s=600, evidence_events=5, product_version="x", max_open=2)
    first = stream.feed(alert("a1", "src_ip", "1.1.1.1", 0, 60, 3.0, "low", [2.0]))
    second = stream.feed(alert("a2", "src_ip", "1.1.1.1", 200, 60, 5.0, "high", [4.0]))
    assert (first["activity_id"], second["activity_id"]) == (1, 2) and second["type_uid"] == 200402
    assert first["finding_info"]["uid"] == second["finding_info"]["uid"]
    assert second["finding_info"]["related_events_count"] == 2 and second["severity_id"] == 4
    later = stream.feed(alert("a3", "src_ip", "1.1.1.1", 9000, 60, 2.0, "low", [1.0]))
    assert later["activity_id"] == 1 and later["finding_info"]["uid"] != first["finding_info"]["uid"]
    for i in range(10):
        stream.feed(alert(f"x{i}", "src_ip", f"9.9.9.{i}", 0, 1, 2.0, "low", [1.0]))
    assert len(stream.open) == 2


def test_findings_validate_against_the_ocsf_schema_they_declare():
    """Create and Update events against the official OCSF JSON schema of the declared version (generated
    offline from the schema export the ocsf-json-schema package ships)."""
    import jsonschema
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    from loglm.detect.findings import OCSF_VERSION

    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION)).get_class_schema("detection_finding")
    validator = jsonschema.Draft202012Validator(schema)
    stream = FindingStream(600, 3, "1.2.3")
    events = [stream.feed(alert("a1", "src_ip", "198.51.100.7", 0, 60, 3.0, "high", [5.0, 2.0],
                                {"src_ip": ["198.51.100.7"], "hostname": ["web01"], "user": ["bob"]})),
              stream.feed(alert("a2", "src_ip", "198.51.100.7", 120, 60, 7.0, "critical", [9.0]))]
    assert [e["activity_name"] for e in events] == ["Create", "Update"]
    events.append(to_ocsf(group_alerts([alert("b1", "block_id", "blk_9", 0, 5, 2.0, "low", [3.0])], 600)[0], "1.2.3"))
    # ATT&CK context (a sub-technique from a few-shot kind, a technique from evidence) as OCSF attack objects
    from loglm.analyst.attack import by_evidence, for_kind

    tagged = alert("c1", "src_ip", "203.0.113.9", 0, 60, 5.0, "high", [4.0])
    tagged["kind"] = {"name": "SSH-Patator", "confidence": 0.93}
    tagged["attacks"] = for_kind("SSH-Patator") + by_evidence(
        {"n_events": 300, "surprising_events": [{"template": "proto=tcp dir=in svc=- port=80 state=-"}]})
    tagged_event = to_ocsf(group_alerts([tagged], 600)[0], "1.2.3")
    attacks = tagged_event["finding_info"]["attacks"]
    assert attacks[0]["sub_technique"]["uid"] == "T1110.001" and attacks[0]["technique"]["uid"] == "T1110"
    assert attacks[0]["tactic"]["name"] == "Credential Access" and attacks[0]["version"] == "18.1"
    assert tagged_event["unmapped"]["loglm"]["kind"]["name"] == "SSH-Patator"
    events.append(tagged_event)
    for event in events:
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(event)]
        assert not errors, errors


def test_severity_is_rarity_among_normal_validation_scores_not_a_ratio_to_the_threshold():
    """A tiny threshold (4e-5, the 'no miss' band of a miss-ratio score) used to make any window with one miss
    'critical' (its margin is 800x the threshold); by rarity it is 'high': above every normal validation window,
    with one unexpected event.  Scores some normal windows reach are 'low' or 'medium'."""
    from loglm.detect.alerts import severity, severity_rule

    tail = [4e-5] * 5 + [3e-5] * 20 + [1e-5] * 231  # the highest of 2,000 normal validation windows
    cal = {"val_top_scores": tail, "target_fpr": 0.01, "n_val_sessions": 2000}  # budget: 20 windows
    rate = severity_rule(cal, 2e-5)
    assert severity(0.033, 4e-5) == "critical"  # the old rule
    assert rate(0.033, 1) == "high" and rate(0.5, 7) == "critical"
    assert rate(4e-5, 1) == "medium"  # 5 normal windows score as high: at most a quarter of the budget
    assert rate(3e-5, 1) == "low"  # 25 do
    # a calibration written before the tail was recorded keeps the old rule
    assert severity_rule({"target_fpr": 0.01}, 2.0)(7.0, 3) == severity(7.0, 2.0) == "critical"
    # where alerts have their own unit (flows as items, host-windows as alerts), rarity is among the normal
    # validation sessions: a score above every normal flow but reached by 31 of 400 normal sessions is low
    flows = {"val_top_scores": [5.0] * 10 + [1.0] * 246, "target_fpr": 0.01, "n_val_sessions": 4000}
    sessions = {"alert_val_top_scores": [9.0] + [6.0] * 30 + [2.0] * 225, "alert_n_val_sessions": 400}
    assert severity_rule(flows, 4.0)(6.0, 1) == "high"
    rate = severity_rule({**flows, **sessions}, 6.0)  # budget: 4 sessions
    assert rate(6.0, 1) == "low" and rate(9.0, 1) == "medium" and rate(9.5, 2) == "critical"
