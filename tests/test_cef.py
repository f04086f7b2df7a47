"""ArcSight CEF (data.format=cef): the header and extension as CEF escapes them, syslog prefixes, CEF's
times, every line accepted or rejected with its reason, and a firewall's events through the whole path."""

from __future__ import annotations

import json

from conftest import compose

from loglm.config import DataConfig
from loglm.ingest.cef import parse_cef
from loglm.ingest.readers import LineAccount, Record, Rejection, make_reader


def test_header_and_extension_as_cef_escapes_them():
    line = (r"CEF:0|Trend\|Micro|Deep Security Agent|10.0|4000010|Eicar\\Test File|6|"
            r"cn1=1 cn1Label=Host ID msg=quarantined C:\\tmp\\eicar.com ok key\=value fname=a b.txt filePath=x\ny "
            "suser=alice")
    rec = parse_cef(line)
    assert (rec["deviceVendor"], rec["deviceProduct"], rec["deviceEventClassId"], rec["name"], rec["severity"]) == \
        ("Trend|Micro", "Deep Security Agent", "4000010", "Eicar\\Test File", "6")
    assert rec["cn1Label"] == "Host ID" and rec["fname"] == "a b.txt" and rec["suser"] == "alice"
    assert rec["msg"] == "quarantined C:\\tmp\\eicar.com ok key=value" and rec["filePath"] == "x\ny"
    assert "syslog.host" not in rec and "syslog.time" not in rec


def test_syslog_prefixes_give_the_host_and_an_iso_time():
    body = "CEF:0|A|B|1|c|n|1|src=10.0.0.1"
    assert parse_cef("<134>Dec  4 20:00:01 fw01 " + body)["syslog.host"] == "fw01"
    rfc5424 = parse_cef("<134>1 2024-05-01T10:00:00.5Z fw02 ngfw - - - " + body)
    assert (rfc5424["syslog.time"], rfc5424["syslog.host"]) == ("2024-05-01T10:00:00.5Z", "fw02")
    assert "syslog.host" not in parse_cef("something else entirely " + body)  # no guess
    assert parse_cef("Dec  4 fw01 a plain syslog line") == "not a CEF event: no 'CEF:' header"
    assert parse_cef("CEF:0|A|B|1|c").startswith("CEF header has 4 of its 7 fields")


def test_every_line_is_an_event_or_a_rejection_with_its_reason(tmp_path):
    lines = [
        "<134>Dec  4 20:00:01 fw01 CEF:0|Acme|NGFW|9.1|TRAFFIC|Connection allowed|1|rt=1733342401000 src=10.1.0.5 "
        "dst=192.0.2.10 dpt=443 act=allow suser=bob",
        "CEF:0|Acme|NGFW|9.1|TRAFFIC|Connection denied|3|rt=Dec 04 2024 20:00:02.250 +02:00 src=10.1.0.6 act=deny",
        "<134>1 2024-12-04T20:00:03Z fw01 - - - CEF:0|Acme|NGFW|9.1|THREAT|Port Scan|8|src=10.1.0.66",
        "CEF:0|Acme|NGFW|9.1|TRAFFIC|x|1|rt=Dec 04 2024 20:00:04 EST src=10.1.0.7",
        "CEF:0|Acme|NGFW|9.1|TRAFFIC|x|1|src=10.1.0.8",
        "Dec  4 20:00:05 fw01 kernel: not CEF",
        "CEF:0|Acme|NGFW",
    ]
    path = tmp_path / "fw.cef"
    path.write_text("\n".join(lines) + "\n")
    account = LineAccount()
    items = list(make_reader(DataConfig(format="cef"), path).read(path, account))
    assert account.read == 7 and account.accepted == 3 and account.rejected == 4 and account.reconciles()
    records = [i for i in items if isinstance(i, Record)]
    assert [r.ts for r in records] == [1733342401.0, 1733335202.25, 1733342403.0]
    assert records[0].content == ("fields: deviceVendor=Acme deviceProduct=NGFW deviceEventClassId=TRAFFIC "
                                  "name=Connection_allowed act=allow outcome=-") and records[0].exact
    assert records[0].header_entities == {"src_ip": "10.1.0.5", "dst_ip": "192.0.2.10", "user": "bob"}
    reasons = {r.line_no: r.reason for r in items if isinstance(r, Rejection)}
    assert reasons[4].startswith("bad timestamp: time zone 'EST' not understood")
    assert reasons[5] == "missing time: none of ['rt', 'end', 'start', 'syslog.time'] in the event"
    assert reasons[6] == "not a CEF event: no 'CEF:' header" and reasons[7].startswith("CEF header has 2 of its 7")
    # the user's own choices win over CEF's defaults
    own = DataConfig(format="cef", message_fields=["deviceEventClassId", "dpt"], entity_fields={"dvchost": "device"},
                     fields={"time": "rt"})
    first = next(make_reader(own, path).read(path, LineAccount()))
    assert first.content == "fields: deviceEventClassId=TRAFFIC dpt=443" and first.header_entities == {}


def test_a_firewalls_cef_events_train_a_model_that_alerts_on_a_port_scan(tmp_path):
    """Prepare, a tiny model and detection on CEF as a firewall forwards it: in a new day, the host that scans
    one server (an IDS scan event, then 60 denied ports) is the highest alert, with the scan among its
    evidence.  Passes on new days of seeds 2 to 5 and with one thread."""
    from synthetic import cef_firewall

    from loglm.detect.detector import run as detect
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    train, new = tmp_path / "fw.cef", tmp_path / "fw-today.cef"
    train.write_text("\n".join(cef_firewall(20, seed=1)) + "\n")
    new_lines = cef_firewall(1, seed=2, first_day=20, scan=True)
    new.write_text("\n".join(new_lines) + "\n")
    own = [f"paths.root={tmp_path}/runs", "data=own", "data.name=fw", "data.format=cef", f"data.inputs=[{train}]",
           "data.session.entity_type=src_ip", "data.session.window_s=600", "model=tiny", "trainer.max_epochs=5",
           "trainer.progress_bar=false"]
    prepare(compose("prepare", own))
    model = pretrain(compose("pretrain", own))
    result = detect(compose("detect", [f"paths.root={tmp_path}/runs", f"ckpt={model['model_dir']}",
                                       f"inputs=[{new}]", f"out={tmp_path}/alerts.jsonl", "detect.cef=true"]))
    assert result["lines"]["accepted"] == len(new_lines) and result["lines"]["rejected"] == 0
    alerts = sorted((json.loads(x) for x in open(tmp_path / "alerts.jsonl")), key=lambda a: -a["score"])
    assert alerts and alerts[0]["entity"]["value"] == "10.1.0.66", [(a["session_id"], a["score"]) for a in alerts]
    assert any("name=TCP_Port_Scan" in e["template"] for e in alerts[0]["surprising_events"])
    # the others: windows of a denied connection or two (3 % of training events); a handful of the day's
    assert len(alerts) <= 6 and result["sessions_scored"] >= 20, (len(alerts), result["sessions_scored"])
    # detect.cef: each alert as a CEF line for a SIEM, read back by our own CEF reader; a stream writes the same
    streamed = detect(compose("detect", [f"paths.root={tmp_path}/runs", f"ckpt={model['model_dir']}", f"inputs=[{new}]",
                                         f"out={tmp_path}/stream.jsonl", "detect.cef=true", "follow=true",
                                         "follow_exit_s=0.5"]))
    for summary in (result, streamed):
        by_id = {a["alert_id"]: a for a in map(json.loads, open(summary["alerts_path"]))}
        cef = [parse_cef(x) for x in open(summary["cef_path"]).read().splitlines()]
        assert len(cef) == len(by_id) == summary["alerts"]
        for c in cef:
            a = by_id[c["externalId"]]
            assert (c["deviceVendor"], c["deviceEventClassId"], c["name"]) == ("LogLM", "anomalous-session", a["title"])
            assert c["src"] == c["cs2"] == a["entity"]["value"] and float(c["cfp1"]) == a["score"]
            assert c["msg"] == a["surprising_events"][0]["template"] and int(c["rt"]) > 0
    assert {c.split("externalId=")[1].split()[0] for c in open(result["cef_path"])} == \
        {c.split("externalId=")[1].split()[0] for c in open(streamed["cef_path"])}
    # without detect.cef an earlier run's CEF file does not stay beside new alerts
    detect(compose("detect", [f"paths.root={tmp_path}/runs", f"ckpt={model['model_dir']}", f"inputs=[{new}]",
                              f"out={tmp_path}/alerts.jsonl"]))
    assert not (tmp_path / "alerts.cef").exists()


def test_an_alert_as_cef_reads_back_whatever_its_text_holds():
    from loglm.detect.cef_alerts import alert_to_cef

    alert = {"alert_id": "ab12", "time": "2024-05-01T10:00:00Z", "start_time": "2024-05-01T09:59:00Z",
             "end_time": "2024-05-01T10:00:00Z", "title": "Unusual | sequence \\ for user bob", "severity": "high",
             "session_id": "bob@2024-05-01T09:55:00", "entity": {"type": "user", "value": "bob"}, "score": 3.5,
             "threshold": 1.25, "n_events": 7, "attacks": [{"id": "T1110"}, {"id": "T1078"}],
             "kind": {"name": "SSH brute force", "confidence": 0.9},
             "surprising_events": [{"template": "fields: event.code=4625 path=C:\\\\x\nnext line key=v"}]}
    line = alert_to_cef(alert, "1.2.3")
    assert "\n" not in line and line.startswith("CEF:0|LogLM|LogLM|1.2.3|anomalous-session|Unusual \\| sequence")
    back = parse_cef(line)
    assert back["name"] == alert["title"] and back["severity"] == "8" and back["suser"] == "bob"
    assert back["msg"] == alert["surprising_events"][0]["template"] and back["cs3"] == "T1110,T1078"
    assert (back["cs4"], back["externalId"], back["start"], back["cn1"]) == ("SSH brute force", "ab12", "1714557540000", "7")
    assert "sproc" not in back  # a security event's fields name no program
    syslog = {**alert, "surprising_events": [{"template": "sudo: <*> : TTY=<*> ; USER=root", "program": "sudo"}]}
    assert parse_cef(alert_to_cef(syslog, "1.2.3"))["sproc"] == "sudo"  # CEF's source process name
