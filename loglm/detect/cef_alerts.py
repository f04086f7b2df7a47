"""Alerts as ArcSight CEF lines (``detect.cef=true`` writes ``<alerts>.cef`` beside the alerts), for the SIEMs
and forwarders that take CEF over syslog (ArcSight, QRadar, Microsoft Sentinel's CEF connector, rsyslog
``imfile``): one line per alert, in the order the alerts file has them.

``CEF:0|LogLM|LogLM|<version>|anomalous-session|<title>|<severity 0-10>|<extension>``, the extension holding
``rt`` / ``start`` / ``end`` (epoch ms), ``externalId`` (the alert id: a SIEM deduplicates by it), the
entity in its CEF key (``src``, ``dst``, ``shost``, ``suser``) and as ``cs2``, the session (``cs1``), the
score and threshold (``cfp1``, ``cfp2``), the events (``cn1``), ATT&CK technique ids (``cs3``), the few-shot
kind (``cs4``) and the most surprising event's template (``msg``).  Values escaped as CEF escapes them
(:mod:`loglm.ingest.cef` reads them back).
"""

from __future__ import annotations

from loglm.detect.findings import _ms

SEVERITY = {"low": 3, "medium": 5, "high": 8, "critical": 10}
# an alert entity's kind -> its CEF extension key
ENTITY_KEYS = {"ip": "src", "src_ip": "src", "dst_ip": "dst", "hostname": "shost", "user": "suser"}
MAX_MSG = 1023  # CEF's msg length


def _header(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _value(text) -> str:
    return (str(text).replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r"))


def alert_to_cef(alert: dict, version: str) -> str:
    """One alert as one CEF line (no newline)."""
    entity = alert.get("entity") or {}
    ext = [("rt", _ms(alert["time"])), ("start", _ms(alert["start_time"])), ("end", _ms(alert["end_time"])),
           ("externalId", alert["alert_id"])]
    if entity.get("type") in ENTITY_KEYS:
        ext.append((ENTITY_KEYS[entity["type"]], entity["value"]))
    ext += [("cs1Label", "session"), ("cs1", alert.get("session_id", "")),
            ("cs2Label", f"entity {entity.get('type', '')}".strip()), ("cs2", entity.get("value", "")),
            ("cfp1Label", "score"), ("cfp1", alert["score"]), ("cfp2Label", "threshold"), ("cfp2", alert["threshold"]),
            ("cn1Label", "events"), ("cn1", alert.get("n_events", 0))]
    attacks = ",".join(a["id"] for a in alert.get("attacks") or [] if a.get("id"))
    if attacks:
        ext += [("cs3Label", "ATT&CK"), ("cs3", attacks)]
    kind = (alert.get("kind") or {}).get("name") if isinstance(alert.get("kind"), dict) else alert.get("kind")
    if kind:
        ext += [("cs4Label", "kind"), ("cs4", kind)]
    events = alert.get("surprising_events") or []
    if events:
        ext.append(("msg", str(events[0].get("template") or "")[:MAX_MSG]))
        if events[0].get("program"):  # the program that wrote it (syslog, journald): CEF's source process name
            ext.append(("sproc", str(events[0]["program"])))
    head = "|".join(_header(x) for x in ("LogLM", "LogLM", version, "anomalous-session", alert.get("title", "")))
    return (f"CEF:0|{head}|{SEVERITY.get(alert.get('severity'), 5)}|"
            + " ".join(f"{k}={_value(v)}" for k, v in ext))
