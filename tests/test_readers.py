"""Every reader on small shipped fixtures: loghub presets, custom headers, JSON lines, Zeek, CICFlowMeter,
NetFlow (CSV and Parquet); flow tokenization; the reject manifest; incremental miner state."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import compose
from flow_fixtures import (
    HOST,
    NETFLOW_FIELDS,
    VPC_HEADER,
    ZEEK_DNS_FIELDS,
    netflow_rows,
    vpc_flow_lines,
    write_cicflowmeter,
    write_zeek,
    zeek_dns_lines,
    zeek_json_lines,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loglm.config import DataConfig
from loglm.ingest.formats import PRESETS, format_of, header_regex
from loglm.ingest.readers import LineAccount, Record, Rejection, make_reader

FIXTURES = Path(__file__).parent / "fixtures"


def read_all(data: DataConfig, path: Path) -> tuple[list[Record], list[Rejection], LineAccount]:
    acct = LineAccount()
    items = list(make_reader(data).read(path, acct))
    assert acct.reconciles(), acct.as_dict()
    return ([i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Rejection)], acct)


@pytest.mark.parametrize("system", sorted(p.name.split("_")[0] for p in (FIXTURES / "loghub").glob("*_40.log")))
def test_every_loghub_preset_parses_its_system(system):
    records, rejected, acct = read_all(DataConfig(format=system.lower()), FIXTURES / "loghub" / f"{system}_40.log")
    assert acct.read == 40 and not rejected, rejected[:2]
    assert all(r.content and r.ts == r.ts for r in records)


def test_all_loghub_systems_have_a_preset():
    systems = {p.name.split("_")[0].lower() for p in (FIXTURES / "loghub").glob("*_40.log")}
    assert systems <= set(PRESETS) and len(systems) == 15


def test_syslog_presets_traditional_high_precision_and_rfc5424(tmp_path):
    """syslog as servers write it, each with its host as an entity: rsyslog's traditional format (a day padded
    with a space, no pid), its ISO 8601 format (the offset honoured) and RFC 5424 (<PRI>1, NIL fields)."""
    cases = {
        "syslog": ["Nov  2 08:00:14 web1 sshd[1001]: Accepted password for alice from 10.0.0.9 port 5022 ssh2",
                   "Nov 12 08:00:15 db2 kernel: [12345.678] eth0: link up"],
        "syslog_iso": ["2024-05-01T10:00:00.25+02:00 web1 sshd[1001]: Failed password for bob from 10.1.2.3",
                       "2024-05-01T10:00:01Z db2 systemd[1]: Started Session 3 of user alice."],
        "rfc5424": ["<34>1 2024-05-01T10:00:00.25+02:00 web1 su - ID47 - 'su root' failed for lonvick",
                    '<165>1 2024-05-01T10:00:01Z db2 myproc 8710 - [origin ip="192.0.2.1"] An application event'],
    }
    for fmt, lines in cases.items():
        path = tmp_path / f"{fmt}.log"
        path.write_text("\n".join(lines) + "\n")
        records, rejected, _ = read_all(DataConfig(format=fmt), path)
        assert not rejected and [r.header_entities for r in records] == [{"hostname": "web1"}, {"hostname": "db2"}]
        if fmt == "syslog":
            assert records[0].content.startswith("Accepted password") and records[1].content.startswith("[12345.678]")
            assert records[1].ts - records[0].ts == 10 * 86400 + 1  # no year: the same year for both
        else:
            assert records[1].ts - records[0].ts == 2 * 3600 + 0.75  # +02:00 honoured
            assert records[0].content.endswith("failed for lonvick") or records[0].content.startswith("Failed")
        # the program that wrote each line is its events' namespace (RFC 5424's nil APP-NAME: none)
        assert [r.namespace for r in records] == {"syslog": ["sshd", "kernel"], "syslog_iso": ["sshd", "systemd"],
                                                  "rfc5424": ["su", "myproc"]}[fmt]
    path = tmp_path / "nil.log"
    path.write_text("<34>1 2024-05-01T10:00:00Z web1 - - - - a message from no app\n")
    assert read_all(DataConfig(format="rfc5424"), path)[0][0].namespace is None


def test_event_fields_put_the_program_before_the_message_on_both_ingest_paths(tmp_path):
    """``data.event_fields``: the header fields naming the program, part of each event (``sshd\\x1f...``,
    shown ``sshd: ...``); the shape-planned fast path and the general path read a line alike; ``[]`` reads
    the content alone; a field the header lacks is an error naming it."""
    from loglm.ingest.prepare import event_parts
    from loglm.ingest.raw_text import RawTextReader
    from loglm.ingest.templates import shown

    custom = dict(format="custom", header="<Month> <Day> <Time> <Host> <Component>: <Content>",
                  time_fields=["Month", "Day", "Time"], time_format="noyear:%b %d %H:%M:%S",
                  entity_fields={"Host": "hostname"})
    lines = [b"Nov  2 08:00:14 web1 sshd: Accepted password for root from 10.0.0.5 port 22 ssh2",
             b"Nov  2 08:00:15 web1 su: pam_unix(su:session): session opened for user root by alice(uid=1000)",
             b"Nov  2 08:00:16 web1 su: a line holding the separator\x1fas a space"]
    reader = RawTextReader(format_of(DataConfig(**custom, event_fields=["Component"])))
    for i, line in enumerate(lines):
        fast = reader.event_of(line, "f", i + 1)
        masked, ents = event_parts(reader.parse_line(line, "f", i + 1))
        if i < 2:  # planned by its shape
            assert fast is not None and fast[5] == masked and fast[6] == ents
        else:  # a line holding the separator takes the general path
            assert fast is None
    assert [shown(event_parts(reader.parse_line(x, "f", 1))[0]) for x in lines] == [
        "sshd: Accepted password for root from <ip> port <num> ssh2",
        "su: pam_unix(su:session): session opened for user root by alice(uid=<num>)",
        "su: a line holding the separator as a space"]
    plain = RawTextReader(format_of(DataConfig(**custom)))  # a header of one's own: the content alone
    assert event_parts(plain.parse_line(lines[0], "f", 1))[0] == "Accepted password for root from <ip> port <num> ssh2"
    assert format_of(DataConfig(format="syslog", event_fields=[])).event_fields == ()
    pid = RawTextReader(format_of(DataConfig(**custom, event_fields=["Component"])))  # "sshd[1001]" is sshd's
    line = b"Nov  2 08:00:14 web1 sshd[1001]: Connection closed"
    assert pid.parse_line(line, "f", 1).namespace == "sshd"
    assert pid.event_of(line, "f", 1)[5] == event_parts(pid.parse_line(line, "f", 1))[0] == "sshd\x1fConnection closed"
    with pytest.raises(ValueError, match=r"data.event_fields names \['Program'\]"):
        format_of(DataConfig(**custom, event_fields=["Program"]))


def test_multiline_records_keep_their_stack_traces(tmp_path):
    """data.multiline: a line the header does not match continues the record before it; the record's event is
    its first line's, its raw text all of it; continuation lines are counted as such, not rejected. Lines before
    the first record stand alone (rejected). Off, every trace line is rejected."""
    from synthetic import java_log

    lines = ["\tat orphan.Frame(before the first record)", *java_log(200, seed=1)]
    path = tmp_path / "app.log"
    path.write_text("\n".join(lines) + "\n")
    traces = sum(not line[:4].isdigit() for line in lines) - 1
    records, rejected, acct = read_all(DataConfig(format="hadoop", multiline=True), path)
    assert len(records) == 200 and [r.line_no for r in rejected] == [1] and acct.continued == traces
    assert acct.as_dict()["continued"] == traces and acct.read == len(lines)
    first = lines.index(next(x for x in lines if x.startswith("java.io")))
    rec = next(r for r in records if r.line_no == first)  # the record above the first trace (line numbers: 1-based)
    assert rec.raw.split("\n")[0] == lines[first - 1] and rec.raw.split("\n")[1] == lines[first]
    assert "\n" not in rec.content and rec.content.startswith(("Error Recovery", "Exception running"))
    assert all("\tat " not in r.content for r in records)
    plain, rejected_off, acct_off = read_all(DataConfig(format="hadoop"), path)
    assert len(plain) == 200 and len(rejected_off) == traces + 1 and acct_off.continued == 0
    assert [r.content for r in plain] == [r.content for r in records]  # the same events either way
    # a record longer than max_line_bytes keeps its start and counts the rest
    big, _, acct_big = read_all(DataConfig(format="hadoop", multiline=True, max_line_bytes=300), path)
    assert acct_big.continued == traces and all(len(r.raw) <= 300 + 50 for r in big)
    with pytest.raises(ValueError, match="data.multiline"):
        DataConfig(format="jsonl", multiline=True)


def test_multiline_records_read_in_ranges_by_two_processes_as_by_one(tmp_path, monkeypatch, capfd):
    """Cut into 37-line ranges (most cuts fall inside a stack trace), read by two processes: each range is moved
    to end where a record starts, so the events, sessions and line accounting equal one process's."""
    from synthetic import java_log

    from loglm.ingest import partitioned
    from loglm.ingest.prepare import run as prepare

    monkeypatch.setattr(partitioned, "LOCAL_SPLIT_BYTES", 0)
    path = tmp_path / "app.log"
    path.write_text("\n".join(java_log(600, seed=2)) + "\n")
    out = []
    for workers in (1, 2):
        cfg = compose("prepare", [f"paths.root={tmp_path}/w{workers}", "data=own", "data.name=app", "data.format=hadoop",
                                  f"data.inputs=[{path}]", "data.multiline=true", "data.session.by=window",
                                  "data.session.window_s=60", f"workers={workers}", "ray.lines_per_task=37"])
        summary = prepare(cfg)
        folder = Path(summary["path"])
        events = pq.read_table(folder / "events.parquet").to_pylist()
        rows = pq.read_table(folder / "sessions").sort_by("session_id").to_pylist()
        out.append((summary["lines"], [(e["line_no"], e["raw"]) for e in events],
                    [(r["session_id"], list(r["tokens"])) for r in rows]))
        tasks = int(re.search(r"lines in (\d+) task", capfd.readouterr().err).group(1))
        assert tasks == 1 if workers == 1 else tasks > 10
    assert out[0] == out[1]
    lines_acct = out[0][0]
    assert lines_acct["accepted"] == 600 and lines_acct["rejected"] == 0 and lines_acct["continued"] > 300
    assert any("\n\tat " in raw for _, raw in out[0][1])


def test_custom_header_and_its_errors(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("2024-05-01T10:00:00 web01 nginx[12]: GET /index.html 200\n"
                   "2024-05-01T10:00:01 web02 sshd[9]: Failed password for user bob from 10.1.2.3\n"
                   "garbage\n")
    data = DataConfig(format="custom", header=r"<Time> <Host> <Component>\[<Pid>\]: <Content>", time_fields=["Time"],
                      time_format="iso", entity_fields={"Host": "hostname"})
    records, rejected, _ = read_all(data, log)
    assert [r.header_entities["hostname"] for r in records] == ["web01", "web02"]
    assert rejected[0].line_no == 3 and "header does not match" in rejected[0].reason
    with pytest.raises(ValueError, match="no <Content>"):
        header_regex("<Time> <Host>")
    with pytest.raises(ValueError, match="Nope"):
        format_of(DataConfig(header="<Time> <Content>", time_fields=["Nope"]))


def test_json_lines_nested_fields_entities_and_rejections(tmp_path):
    path = tmp_path / "events.jsonl"
    rows = [
        {"@timestamp": "2024-05-01T10:00:00Z", "event": {"message": "Accepted password for alice from 10.0.0.9"},
         "user": {"name": "alice"}, "source": {"ip": "10.0.0.9"}},
        {"@timestamp": "2024-05-01T10:00:05+02:00", "event": {"message": "session opened"}, "user": {"name": "alice"}},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", "[1, 2]", json.dumps({"@timestamp": "x", "event": {"message": "m"}}),
                                             json.dumps({"@timestamp": "2024-05-01T10:00:00Z"})]
    path.write_text("\n".join(lines) + "\n")
    data = DataConfig(format="jsonl", fields={"message": "event.message", "time": "@timestamp"}, time_format="iso",
                      entity_fields={"user.name": "user", "source.ip": "ip"})
    records, rejected, acct = read_all(data, path)
    assert acct.as_dict()["read"] == 6 and len(records) == 2
    assert records[0].content.startswith("Accepted password") and records[0].header_entities == {"user": "alice", "ip": "10.0.0.9"}
    assert records[1].ts == records[0].ts + 5 - 2 * 3600  # the offset is honoured
    reasons = [r.reason for r in rejected]
    assert reasons[0].startswith("invalid JSON") and reasons[1].startswith("not a JSON object")
    assert reasons[2].startswith("bad timestamp") and "missing field 'event.message'" in reasons[3]


def test_security_events_as_field_sentences_keep_their_codes_exactly(tmp_path):
    """data.message_fields: an event is its chosen fields, values not masked (4625 is the event, not a number),
    a field left out is "-", and every combination is its own template, never generalised; entities as before."""
    from synthetic import windows_logons

    from loglm.ingest.prepare import run as prepare

    events = windows_logons(2, seed=0, attack=True)
    path = tmp_path / "security.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n" + json.dumps({"@timestamp": "2024-05-01T11:00:00Z"})
                    + "\n")
    data = DataConfig(format="jsonl", fields={"time": "@timestamp"}, time_format="iso",
                      message_fields=["event.code", "winlog.logon.type", "event.outcome"],
                      entity_fields={"user.name": "user", "source.ip": "ip"})
    records, rejected, _ = read_all(data, path)
    assert len(records) == len(events) and [r.reason for r in rejected] == [
        "none of the message fields ['event.code', 'winlog.logon.type', 'event.outcome'] in the record"]
    failed = next(r for r, e in zip(records, events) if e["source"]["ip"] == "203.0.113.5")
    assert failed.content == "fields: event.code=4625 winlog.logon.type=Network event.outcome=failure" and failed.exact
    assert failed.header_entities == {"user": "user7", "ip": "203.0.113.5"}
    logoff = next(r for r, e in zip(records, events) if e["event"]["code"] == 4634)
    assert logoff.content == "fields: event.code=4634 winlog.logon.type=- event.outcome=success"
    cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data=own", "data.name=winsec", "data.format=jsonl",
                              f"data.inputs=[{path}]", "+data.fields={time: '@timestamp'}", "data.time_format=iso",
                              "data.message_fields=[event.code,winlog.logon.type,event.outcome]",
                              "+data.entity_fields={user.name: user, source.ip: ip}", "data.session.entity_type=user"])
    summary = prepare(cfg)
    vocab = json.loads((Path(summary["path"]) / "vocab.json").read_text())
    texts = [" ".join(t["tokens"]) if isinstance(t, dict) else str(t) for t in vocab["miner"]["templates"]]
    assert len(set(texts)) == len(texts) and all(t.startswith("fields: ") and "<" not in t for t in texts), texts
    assert {f"fields: event.code={c} winlog.logon.type={k} event.outcome={o}" for c, k, o in [
        (4624, "Interactive", "success"), (4624, "Network", "success"), (4634, "-", "success"),
        (4625, "Interactive", "failure")]} <= set(texts), texts  # none generalised into another
    rows = pq.read_table(Path(summary["path"]) / "sessions").to_pylist()
    assert {r["entity_type"] for r in rows} == {"user"} and summary["lines"]["rejected"] == 1


def cloudtrail_records(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    calls = [("s3.amazonaws.com", "GetObject"), ("ec2.amazonaws.com", "DescribeInstances"),
             ("sts.amazonaws.com", "AssumeRole"), ("iam.amazonaws.com", "CreateAccessKey")]
    return [{"eventVersion": "1.08", "eventTime": f"2024-05-01T10:{i // 60:02d}:{i % 60:02d}Z",
             "eventSource": src, "eventName": name, "sourceIPAddress": f"10.0.0.{rng.randint(2, 9)}",
             "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::123456789012:user/u{rng.randint(1, 4)}"},
             **({"errorCode": "AccessDenied"} if rng.random() < 0.1 else {})}
            for i, (src, name) in enumerate(rng.choice(calls) for _ in range(n))]


def test_cloudtrail_documents_read_as_their_records(tmp_path, monkeypatch):
    """AWS CloudTrail's S3 files ({"Records": [...]}, plain or gzipped) are read record by record, each
    accounted as a line numbered by its place in the list, exactly as the same records as JSON lines; a
    document without a Records list, or over the size bound, is one rejection saying so."""
    import gzip

    from loglm.ingest import json_lines

    records = cloudtrail_records(120)
    (tmp_path / "ct.json").write_text(json.dumps({"Records": records}))
    with gzip.open(tmp_path / "ct2.json.gz", "wt") as fh:
        json.dump({"Records": records}, fh, indent=2)  # pretty-printed too
    (tmp_path / "ct.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    data = DataConfig(format="jsonl", fields={"time": "eventTime"}, time_format="iso",
                      message_fields=["eventSource", "eventName", "errorCode"],
                      entity_fields={"userIdentity.arn": "user", "sourceIPAddress": "ip"})
    got = {}
    for name in ("ct.json", "ct2.json.gz", "ct.jsonl"):
        recs, rejected, acct = read_all(data, tmp_path / name)
        assert not rejected and acct.read == 120
        got[name] = [(r.line_no, r.ts, r.content, r.header_entities, json.loads(r.raw)) for r in recs]
    assert got["ct.json"] == got["ct2.json.gz"] == got["ct.jsonl"]
    assert got["ct.json"][0][2].startswith("fields: eventSource=") and got["ct.json"][0][4] == records[0]
    (tmp_path / "other.json").write_text(json.dumps({"Records": "none"}))
    _, rejected, acct = read_all(data, tmp_path / "other.json")
    assert [r.reason for r in rejected] == ["JSON document without a Records list"] and acct.read == 1
    monkeypatch.setattr(json_lines, "MAX_DOCUMENT_BYTES", 1000)
    _, rejected, _ = read_all(data, tmp_path / "ct.json")
    assert len(rejected) == 1 and rejected[0].reason.startswith("JSON document larger than 1000 bytes")


def test_cloudtrail_documents_prepare_the_same_in_one_or_two_processes(tmp_path, monkeypatch, capfd):
    """A folder of CloudTrail documents beside their records as JSON lines: two processes (each document one
    task, never cut into line ranges) prepare what one does."""
    from loglm.ingest import partitioned
    from loglm.ingest.prepare import run as prepare

    monkeypatch.setattr(partitioned, "LOCAL_SPLIT_BYTES", 0)
    folder = tmp_path / "trail"
    folder.mkdir()
    for k in range(3):
        (folder / f"ct{k}.json").write_text(json.dumps({"Records": cloudtrail_records(300, seed=k)}, indent=1))
    out = []
    for workers in (1, 2):
        cfg = compose("prepare", [f"paths.root={tmp_path}/w{workers}", "data=own", "data.name=trail", "data.format=jsonl",
                                  f"data.inputs=[{folder}]", "+data.fields={time: eventTime}", "data.time_format=iso",
                                  "data.message_fields=[eventSource,eventName,errorCode]",
                                  "+data.entity_fields={userIdentity.arn: user}", "data.session.entity_type=user",
                                  "data.session.window_s=600", f"workers={workers}", "ray.lines_per_task=50"])
        summary = prepare(cfg)
        rows = pq.read_table(Path(summary["path"]) / "sessions").sort_by("session_id").to_pylist()
        out.append((summary["lines"], [(r["session_id"], list(r["tokens"])) for r in rows]))
        assert re.search(r"lines in 3 task", capfd.readouterr().err)
    assert out[0] == out[1] and out[0][0]["accepted"] == 900 and out[0][0]["rejected"] == 0


def test_zeek_conn_log_flows_labels_and_metadata(tmp_path):
    path = tmp_path / "conn.log.labeled"
    write_zeek(path, n_normal=50, n_attack=10)
    records, rejected, acct = read_all(DataConfig(format="zeek"), path)
    assert not rejected and len(records) == 61 and acct.metadata == 9  # 8 header lines + #close
    labels = {r.label for r in records}
    assert labels == {"Benign", "Malicious", "Background"}
    attack = next(r for r in records if r.label == "Malicious")
    assert attack.fields["state"] == "S0" and attack.fields["dst_ip"] == HOST and attack.fields["local_resp"] is True
    assert attack.header_entities["dst_ip"] == HOST
    unset = next(r for r in records if r.label == "Background")
    assert unset.fields["duration"] is None and unset.fields["fwd_bytes"] is None  # "-" = unset, not 0


def test_zeek_bad_rows_are_rejected_with_line_and_reason(tmp_path):
    good = tmp_path / "good.log"
    write_zeek(good, 5, 0)
    lines = good.read_text().splitlines()
    lines.insert(0, "1.0\tearly row before any header")
    row = lines[9].split("\t")  # a real data row
    lines.insert(12, "1655071198.0\ttoo\tfew")
    lines.insert(13, "\t".join(row[:9] + ["lots"] + row[10:]))  # orig_bytes is not a count
    lines.insert(14, "\t".join(["yesterday"] + row[1:]))
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(lines) + "\n")
    _, rejected, acct = read_all(DataConfig(format="zeek"), bad)
    by_line = {r.line_no: r.reason for r in rejected}
    assert by_line[1] == "data row before a #fields header (and not a JSON object)"
    assert by_line[13].startswith("wrong column count")
    assert by_line[14] == "bad value: column 'orig_bytes': not a number: 'lots'"
    assert by_line[15].startswith("bad value: column 'ts'")
    assert acct.rejected == 4
    # a header that is not a conn.log refuses every row below it, naming the header line
    other = tmp_path / "dns.log"
    other.write_text("#separator \\x09\n#fields\tts\tquery\n1.0\texample.com\n")
    _, rejected, _ = read_all(DataConfig(format="zeek"), other)
    assert "lacks" in rejected[0].reason and "line 2" in rejected[0].reason


def test_zeek_json_logs_read_as_the_same_flows_as_tsv(tmp_path):
    """Zeek's JSON output (use_json=T) gives the flows its TSV gives: fields, labels, entities and time, with
    ts as epoch seconds exactly, as milliseconds or ISO 8601 to the microsecond; no header needed."""
    tsv = tmp_path / "conn.log.labeled"
    write_zeek(tsv, n_normal=50, n_attack=10)
    want, _, _ = read_all(DataConfig(format="zeek"), tsv)
    for ts in ("epoch", "millis", "iso"):
        path = tmp_path / f"conn.{ts}.json"
        path.write_text("\n".join(zeek_json_lines(50, 10, ts=ts)) + "\n")
        got, rejected, acct = read_all(DataConfig(format="zeek"), path)
        assert not rejected and acct.metadata == 0 and len(got) == len(want) == 61
        for g, w in zip(got, want):
            assert (g.label, g.header_entities) == (w.label, w.header_entities)
            assert {k: v for k, v in g.fields.items() if k != "ts"} == {k: v for k, v in w.fields.items() if k != "ts"}
            if ts == "epoch":
                assert g.ts == w.ts == g.fields["ts"]
            else:
                assert g.ts == pytest.approx(w.ts, abs=1e-3 if ts == "millis" else 1e-6)
    unset = next(r for r in got if r.label == "Background")
    assert unset.fields["duration"] is None and unset.fields["fwd_bytes"] is None  # left out = unset


def test_zeek_json_bad_records_are_rejected_with_line_and_reason(tmp_path):
    good = zeek_json_lines(3, 0)
    rec = json.loads(good[0])
    nested = {**{k: v for k, v in rec.items() if not k.startswith("id.")},
              "id": {"orig_h": rec["id.orig_h"], "orig_p": rec["id.orig_p"], "resp_h": rec["id.resp_h"],
                     "resp_p": rec["id.resp_p"]}}  # as a shipper may nest the dotted keys
    lines = [good[0], '{"ts": 1.0, "id.orig_h": ', "[1, 2]", json.dumps({k: v for k, v in rec.items() if k != "proto"}),
             json.dumps({**rec, "ts": "yesterday"}), json.dumps({**rec, "orig_bytes": "lots"}),
             json.dumps({**rec, "service": {"name": "dns"}}), json.dumps({**rec, "ts": True}), json.dumps(nested)]
    path = tmp_path / "conn.json"
    path.write_text("\n".join(lines) + "\n")
    records, rejected, acct = read_all(DataConfig(format="zeek"), path)
    by_line = {r.line_no: r.reason for r in rejected}
    assert [r.line_no for r in records] == [1, 9] and records[0].fields == records[1].fields
    assert by_line[2].startswith("invalid JSON") and by_line[3] == "data row before a #fields header (and not a JSON object)"
    assert by_line[4] == "Zeek JSON record lacks ['proto']: not a conn.log record"
    assert by_line[5] == "bad timestamp: 'yesterday'" and by_line[8] == "bad timestamp: 'True'"
    assert by_line[6] == "bad value: column 'orig_bytes': not a number: 'lots'"
    assert by_line[7] == "bad value: field 'service' is a JSON dict"
    assert acct.rejected == 7 and acct.read == 9
    # other key names (an ECS document, as Elastic's Zeek module writes one) by data.fields
    ecs = tmp_path / "ecs.json"
    ecs.write_text(json.dumps({"@timestamp": "2024-03-01T10:00:00.5Z", "source": {"ip": HOST, "port": 50000},
                               "destination": {"ip": "93.184.1.1", "port": 443}, "network": {"transport": "TCP"}}))
    fields = {"ts": "@timestamp", "src_ip": "source.ip", "src_port": "source.port", "dst_ip": "destination.ip",
              "dst_port": "destination.port", "proto": "network.transport"}
    (flow,), _, _ = read_all(DataConfig(format="zeek", fields=fields), ecs)
    assert flow.ts == datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC).timestamp()
    assert (flow.fields["src_ip"], flow.fields["dst_port"], flow.fields["proto"]) == (HOST, 443, "tcp")


def test_other_zeek_logs_are_read_as_events_by_their_fields(tmp_path):
    """dns.log (any Zeek log but conn.log), TSV or JSON, with data.message_fields: each row an exact field sentence
    with the connection's addresses as entities; prepare builds text events, not flows. Without message_fields
    the header is refused, saying how to read it."""
    from loglm.ingest.prepare import run as prepare

    lines = zeek_dns_lines(300, nxdomain_burst=30)
    tsv, js = tmp_path / "tsv" / "dns.log", tmp_path / "json" / "dns.log"
    tsv.parent.mkdir()
    js.parent.mkdir()
    tsv.write_text("\n".join(lines) + "\n")
    js.write_text("\n".join(json.dumps({k: v for k, v in zip(ZEEK_DNS_FIELDS, line.split("\t")) if v != "-"})
                            for line in lines[3:]) + "\n")
    data = DataConfig(format="zeek", message_fields=["qtype_name", "rcode_name", "answers"])
    got = {}
    for name, path in (("tsv", tsv), ("json", js)):
        records, rejected, acct = read_all(data, path)
        assert not rejected and len(records) == 330 and acct.metadata == (3 if name == "tsv" else 0)
        got[name] = [(r.ts, r.content, r.header_entities, r.exact) for r in records]
    assert got["tsv"] == [(ts, c, e, x) for ts, c, e, x in got["json"]]
    burst = got["tsv"][-1]
    assert burst[1] == "fields: qtype_name=A rcode_name=NXDOMAIN answers=-" and burst[3]
    assert burst[2] == {"src_ip": "10.0.0.66", "dst_ip": "10.0.0.1", "pair": "10.0.0.66>10.0.0.1"}
    _, refused, _ = read_all(DataConfig(format="zeek"), tsv)
    assert len(refused) == 330 and "not a conn.log (other Zeek logs are read as events with data.message_fields)" \
        in refused[0].reason
    cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data=zeek_ctu", f"data.inputs=[{tsv}]",
                              "data.message_fields=[qtype_name,rcode_name,answers]", "data.session.window_s=120"])
    summary = prepare(cfg)
    vocab = json.loads((Path(summary["path"]) / "vocab.json").read_text())
    assert vocab.get("flow_codec") is None and summary["lines"]["accepted"] == 330
    texts = {" ".join(t["tokens"]) if isinstance(t, dict) else str(t) for t in vocab["miner"]["templates"]}
    assert "fields: qtype_name=MX rcode_name=NOERROR answers=93.184.216.34" in texts


def test_cicflowmeter_csv(tmp_path):
    path = tmp_path / "cic.csv"
    write_cicflowmeter(path, 30, 10)
    records, rejected, acct = read_all(DataConfig(format="cicflowmeter"), path)
    assert not rejected and len(records) == 40 and acct.metadata == 1
    assert all(r.fields["duration"] < 5.1 for r in records)  # microseconds -> seconds
    assert records[0].ts == 2.0 and records[-1].label == "PortScan"  # no timestamp column: file order
    # a file without a required column: every row refused with the reason, nothing silently dropped
    lines = path.read_text().splitlines()
    cut = tmp_path / "cut.csv"
    cut.write_text("\n".join(",".join(line.split(",")[1:]) for line in lines) + "\n")
    records, rejected, _ = read_all(DataConfig(format="cicflowmeter"), cut)
    assert not records and len(rejected) == 40 and "Flow Duration" in rejected[0].reason


def test_netflow_parquet_and_csv_with_a_field_mapping(tmp_path):
    rows = netflow_rows(25)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nf.parquet")
    (tmp_path / "nf.csv").write_text(",".join(rows[0]) + "\n" + "\n".join(",".join(str(v) for v in r.values()) for r in rows) + "\n")
    (tmp_path / "nf.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # goflow2 / ipfixcol2 style
    data = DataConfig(format="netflow", fields=dict(NETFLOW_FIELDS), time_format="epoch")
    fields = {}
    for name in ("nf.parquet", "nf.csv", "nf.jsonl"):
        records, rejected, acct = read_all(data, tmp_path / name)
        assert not rejected and len(records) == 25
        assert records[3].fields["proto"] == "tcp" and records[3].fields["src_ip"] == HOST
        assert records[3].ts == rows[3]["first_seen"]
        fields[name] = [r.fields for r in records]
    assert fields["nf.jsonl"] == fields["nf.csv"] == fields["nf.parquet"] and acct.metadata == 0
    assert records[0].raw == json.dumps(rows[0])  # the line as it came, for the alert's evidence


def test_netflow_json_lines_goflow2_style_nanoseconds_end_times_and_bad_records(tmp_path):
    """goflow2's JSON: start and end in nanoseconds (duration from them), protocol numbers; a record without a
    required field, with a nested value or a bad end time is rejected with line and reason."""
    t0 = 1_700_000_000_123_456_789
    good = {"type": "NETFLOW_V9", "time_flow_start_ns": t0, "time_flow_end_ns": t0 + 2_500_000_000,
            "src_addr": HOST, "dst_addr": "93.184.0.9", "src_port": 50123, "dst_port": 443, "proto": 6,
            "bytes": 5400, "packets": 12}
    lines = [json.dumps(good), json.dumps({k: v for k, v in good.items() if k != "bytes"}),
             json.dumps({**good, "proto": {"name": "tcp"}}), json.dumps({**good, "time_flow_end_ns": "later"}),
             json.dumps({**good, "time_flow_end_ns": None}), "{not json"]
    path = tmp_path / "goflow.json"
    path.write_text("\n".join(lines) + "\n")
    data = DataConfig(format="netflow", time_format="epoch_ns", fields={
        "ts": "time_flow_start_ns", "end": "time_flow_end_ns", "src_ip": "src_addr", "dst_ip": "dst_addr",
        "fwd_bytes": "bytes", "fwd_pkts": "packets"})
    records, rejected, acct = read_all(data, path)
    assert [r.line_no for r in records] == [1, 5] and acct.rejected == 4
    flow = records[0].fields
    assert flow["proto"] == "tcp" and flow["duration"] == pytest.approx(2.5) and flow["fwd_bytes"] == 5400
    assert records[0].ts == pytest.approx(1_700_000_000.123456789) and records[1].fields.get("duration") is None
    by_line = {r.line_no: r.reason for r in rejected}
    assert by_line[2] == "JSON flow lacks field(s) ['bytes']"
    assert by_line[3] == "bad value: field 'proto' is a JSON dict"
    assert by_line[4] == "bad end time: 'later'" and by_line[6].startswith("invalid JSON")


@pytest.mark.parametrize("header", [True, False], ids=["s3-with-header", "cloudwatch-no-header"])
def test_aws_vpc_flow_logs(tmp_path, header):
    """AWS VPC flow logs, space-separated, with the header line S3 delivery writes or without (the default
    version-2 fields): protocol numbers named, duration from start and end, the action as the flow's state;
    NODATA records are metadata, SKIPDATA ones rejected with the reason."""
    lines = vpc_flow_lines(300)
    path = tmp_path / "vpc.log"
    path.write_text("\n".join(([VPC_HEADER] if header else []) + lines) + "\n")
    records, rejected, acct = read_all(DataConfig(format="vpcflow"), path)
    n_nodata = sum(x.endswith("NODATA") for x in lines)
    n_skip = sum(x.endswith("SKIPDATA") for x in lines)
    assert n_nodata and n_skip and acct.metadata == n_nodata + header
    assert len(records) == 300 - n_nodata - n_skip
    assert len(rejected) == n_skip and {r.reason for r in rejected} == {"SKIPDATA: AWS skipped this interval's flow records"}
    first = lines[0].split()
    flow = records[0].fields
    assert (flow["src_ip"], flow["dst_ip"], flow["dst_port"]) == (first[3], first[4], int(first[6]))
    assert flow["proto"] in ("tcp", "udp") and flow["state"] == "ACCEPT" and flow["fwd_bytes"] == float(first[9])
    assert flow["duration"] == int(first[11]) - int(first[10]) and records[0].ts == int(first[10])
    assert records[0].raw == lines[0]
    probe = next(r for r in records if r.fields["state"] == "REJECT")
    assert probe.fields["src_ip"] == "198.51.100.7" and probe.fields["dst_port"] == 22


def test_a_vpc_flow_log_without_header_prepares_the_same_in_ranges(tmp_path, monkeypatch, capfd):
    """Read in 200-line ranges by two processes, a header-less VPC flow log (each range primed by the file's
    first record) and a netflow JSON-lines file prepare to what one process reading them whole gives."""
    from loglm.ingest import partitioned
    from loglm.ingest.prepare import run as prepare

    monkeypatch.setattr(partitioned, "LOCAL_SPLIT_BYTES", 0)  # a small input still goes to the two processes

    vpc = tmp_path / "vpc.log"
    vpc.write_text("\n".join(vpc_flow_lines(1000)) + "\n")
    nf = tmp_path / "nf.jsonl"
    nf.write_text("\n".join(json.dumps(r) for r in netflow_rows(1000, seed=3)) + "\n")
    for path, extra in ((vpc, ["data.format=vpcflow"]),
                        (nf, ["data.format=netflow", "+data.fields=" + json.dumps(NETFLOW_FIELDS).replace('"', "")])):
        out = []
        for workers in (1, 2):
            cfg = compose("prepare", [f"paths.root={tmp_path}/w{workers}", "data=own", f"data.name={path.stem}",
                                      f"data.inputs=[{path}]", *extra, "data.session.by=entity_window",
                                      "data.session.entity_type=src_ip", "data.session.window_s=60",
                                      f"workers={workers}", "ray.lines_per_task=200"])
            summary = prepare(cfg)
            rows = pq.read_table(Path(summary["path"]) / "sessions").sort_by("session_id").to_pylist()
            out.append((summary["lines"], [(r["session_id"], list(r["tokens"])) for r in rows]))
            assert f"read 1,000 lines in {1 if workers == 1 else 5} task" in capfd.readouterr().err
        assert out[0] == out[1] and out[0][0]["accepted"] > 900 and len(out[0][1]) > 5, out[0][0]


def test_flow_codec_buckets_backoff_and_no_addresses_in_vocabulary(tmp_path):
    from loglm.ingest.flows import FlowCodec

    path = tmp_path / "conn.log"
    write_zeek(path, 200, 20)
    records, _, _ = read_all(DataConfig(format="zeek"), path)
    train = [r.fields for r in records if r.label == "Benign"]
    codec = FlowCodec(n_buckets=6, min_count=3).fit(train)
    sentences = {codec.sentence(f) for f in train}
    assert not any(ip in s for s in sentences for ip in (HOST, "93.184."))  # addresses are entities only
    assert all("dir=out" in s for s in sentences)
    assert any(" | " in s for s in sentences) and all(s in codec.known for s in sentences)
    attack = next(r.fields for r in records if r.label == "Malicious")
    s = codec.sentence(attack)
    assert "dir=in" in s and s not in codec.known  # a kind of flow training never saw: [UNK] to the model
    again = FlowCodec.from_state(json.loads(json.dumps(codec.state())))
    assert all(again.sentence(f) == codec.sentence(f) for f in train[:50])
    # direction from the monitored network's addresses, not the sensor's flags
    flipped = {**train[0], "local_orig": False, "local_resp": False}
    assert "dir=ext" in codec.sentence(flipped)
    by_net = FlowCodec(local_networks=["10.0.0.0/8"]).fit(train)
    assert "dir=out" in by_net.sentence(flipped)


def test_flow_facets_name_every_field_of_a_flow_that_backs_off(tmp_path):
    """Facets: a flow's ten field tokens as ids fitted on training flows (1: a value training never saw, 0: not a
    flow).  An inbound attack flow backs off to a sentence training never wrote, yet its facets still name the
    port, service and sizes it shares with training; the ids survive the vocabulary's round trip."""
    from loglm.ingest.flows import FACET_FIELDS, NO_FACET, UNSEEN_FACET, FlowCodec

    path = tmp_path / "conn.log"
    write_zeek(path, 200, 20)
    records, _, _ = read_all(DataConfig(format="zeek"), path)
    train = [r.fields for r in records if r.label == "Benign"]
    assert FlowCodec(n_buckets=6, min_count=3).fit(train).n_facets == 0  # facets are asked for
    codec = FlowCodec(n_buckets=6, min_count=3).fit(train, facets=True)
    assert codec.n_facets == 2 + len(codec.facets) and all(f.split("=")[0] in FACET_FIELDS for f in codec.facets)
    for f in train[:50]:  # a training flow: every field known, and its facets spell out its full sentence
        ids = codec.facet_ids(f)
        assert len(ids) == len(FACET_FIELDS) and min(ids) >= 2
        words = [codec.facets[i - 2] for i in ids]
        assert " ".join(words[:5]) + " | " + " ".join(words[5:]) == codec._parts(f)[1] + " | " + codec._parts(f)[2]
    attack = next(r.fields for r in records if r.label == "Malicious")
    ids = dict(zip(FACET_FIELDS, codec.facet_ids(attack)))
    assert ids["dir"] == UNSEEN_FACET  # training saw outbound flows only
    assert all(ids[f] >= 2 for f in ("proto", "svc", "dur", "op"))  # yet its other fields are ones training saw
    assert codec.facet_ids({**attack, "proto": "sctp"})[0] == UNSEEN_FACET
    assert codec.facet_ids(None) == [NO_FACET] * len(FACET_FIELDS)
    again = FlowCodec.from_state(json.loads(json.dumps(codec.state())))
    assert [again.facet_ids(f) for f in train[:50]] == [codec.facet_ids(f) for f in train[:50]]
    from loglm.ingest.flows import TrainingFlows

    assert FlowCodec(n_buckets=6, min_count=3).fit(TrainingFlows.of(train), facets=True).facets == codec.facets


def test_flow_codec_grows_only_for_flows_it_cannot_write(tmp_path):
    """Tuning on a new environment: flows written as none of the known forms get forms by fit's rule; known
    forms, edges and ports stay, so every flow read before is read the same way after."""
    from loglm.ingest.flows import FlowCodec

    path = tmp_path / "conn.log"
    write_zeek(path, 200, 30)
    records, _, _ = read_all(DataConfig(format="zeek"), path)
    train = [r.fields for r in records if r.label == "Benign"]
    attacks = [r.fields for r in records if r.label == "Malicious"]
    codec = FlowCodec(n_buckets=6, min_count=3).fit(train)
    before = {json.dumps(f, sort_keys=True): codec.sentence(f) for f in train}
    known, edges = set(codec.known), json.dumps(codec.edges)
    assert not any(codec.sentence(f) in codec.known for f in attacks)
    added = codec.grow(attacks + train)
    assert added and codec.known == known | added and json.dumps(codec.edges) == edges
    assert all("dir=in" in x for x in added)  # only the inbound flows training never saw
    assert all(codec.sentence(f) in codec.known for f in attacks)
    assert {json.dumps(f, sort_keys=True): codec.sentence(f) for f in train} == before
    assert codec.grow(attacks) == set()  # nothing left to add


def test_training_flows_table_fits_the_codec_like_the_flows_themselves(tmp_path):
    """Prepare collects training flows compactly (TrainingFlows: categorical parts once, numeric fields as
    float64); the codec fitted on it, merged from parts in order, equals the codec fitted on the dicts, and
    its sentence counts equal writing every flow."""
    from collections import Counter

    from loglm.ingest.flows import FlowCodec, TrainingFlows

    path = tmp_path / "conn.log"
    write_zeek(path, 400, 60)
    records, _, _ = read_all(DataConfig(format="zeek"), path)
    flows = [r.fields for r in records]
    for kw in ({"n_buckets": 6, "min_count": 3}, {"n_buckets": 8, "min_count": 1, "port_budget": 2},
               {"local_networks": ["10.0.0.0/8"]}):
        plain = FlowCodec(**kw).fit(flows)
        nets = kw.get("local_networks", [])
        parts = [TrainingFlows.of(flows[i:i + 97], nets) for i in range(0, len(flows), 97)]
        table = TrainingFlows(nets)
        for part in parts:
            table.extend(part)
        assert len(table) == len(flows)
        compact = FlowCodec(**kw).fit(table)
        assert compact.state() == plain.state()
        assert compact.sentences(table) == Counter(plain.sentence(f) for f in flows)
    assert len(table.cats) < len(flows) / 4  # each distinct categorical part once


def test_prepare_flows_reject_manifest_and_reconciled_totals(tmp_path):
    from loglm.ingest.prepare import run as prepare
    from loglm.vocab import UNK, Vocabulary

    path = tmp_path / "conn.log.labeled"
    write_zeek(path, 300, 40)
    with open(path, "a") as fh:
        fh.write("1655099999.0\tbroken\trow\n\n")
    cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data=zeek_ctu", f"data.inputs=[{path}]",
                              "data.local_networks=[10.0.0.0/8]", "data.session.window_s=600"])
    summary = prepare(cfg)
    lines = summary["lines"]
    assert lines["read"] == lines["accepted"] + lines["rejected"] + lines["metadata"]
    assert lines["rejected"] == 2 and lines["rejected_by_reason"] == {"wrong column count": 1, "empty line": 1}
    rejected = [json.loads(x) for x in (Path(summary["path"]) / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [351, 352] and all(r["file"] == str(path) for r in rejected)
    vocab = Vocabulary.load(Path(summary["path"]) / "vocab.json")
    assert vocab.flow_codec is not None and vocab.flow_codec.local_networks == ["10.0.0.0/8"]
    table = pq.read_table(Path(summary["path"]) / "sessions")
    rows = table.to_pylist()
    attack = [r for r in rows if r["label"] == 1]
    assert attack and all(t == UNK for r in attack for t in r["tokens"])
    assert all(r["split"] != "train" for r in attack)
    assert {r["entity_type"] for r in rows} == {"src_ip"}


def test_prepare_reads_zeek_json_into_the_sessions_tsv_gives(tmp_path):
    """The same capture as Zeek TSV and as Zeek JSON prepares to the same sessions, labels, splits and vocabulary."""
    from loglm.ingest.prepare import run as prepare

    tsv, js = tmp_path / "tsv" / "conn.log.labeled", tmp_path / "json" / "conn.log"
    tsv.parent.mkdir()
    js.parent.mkdir()
    write_zeek(tsv, 300, 40)
    js.write_text("\n".join(zeek_json_lines(300, 40)) + "\n")
    out = {}
    for name, path in (("tsv", tsv), ("json", js)):
        cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data=zeek_ctu", f"data.inputs=[{path}]",
                                  f"data.name=z_{name}", "data.local_networks=[10.0.0.0/8]", "data.session.window_s=120"])
        summary = prepare(cfg)
        assert summary["lines"]["rejected"] == 0
        rows = pq.read_table(Path(summary["path"]) / "sessions").to_pylist()
        vocab = json.loads((Path(summary["path"]) / "vocab.json").read_text())
        out[name] = ([(r["session_id"], r["split"], r["label"], list(r["tokens"])) for r in rows], vocab)
    assert out["json"] == out["tsv"] and len(out["tsv"][0]) > 20


def test_incremental_miner_keeps_ids_and_flags_new_templates(hdfs_head):
    from loglm.ingest.params import mask_params
    from loglm.ingest.templates import TemplateMiner
    from loglm.vocab import UNK, Vocabulary

    records, _, _ = read_all(DataConfig(format="hdfs"), hdfs_head)
    first, later = records[:1500], records[1500:]
    miner = TemplateMiner()
    ids = [miner.add(mask_params(r.content)[0]) for r in first]
    vocab = Vocabulary(miner, sorted(set(ids)), 16, True)
    state = json.loads(json.dumps(vocab.to_dict()))
    resumed = Vocabulary.from_dict(state)
    miner2 = TemplateMiner.from_state(state["miner"])
    n_before = len(miner2.templates)
    for r in later:
        miner2.add(mask_params(r.content)[0])
    miner2.add("a brand new kind of message never seen before")
    assert [miner2.match(mask_params(r.content)[0]) for r in first] == ids  # old ids stable
    assert len(miner2.templates) > n_before
    continued = Vocabulary(miner2, vocab.template_ids, 16, True)
    new_id = miner2.match("a brand new kind of message never seen before")
    assert new_id >= n_before and continued.token(new_id) == UNK  # unseen in training
    assert resumed.size == vocab.size and resumed.template_ids == vocab.template_ids
    assert [resumed.token(t) for t in ids] == [vocab.token(t) for t in ids]  # the same tokens after the round trip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["blk_-12", "blk_99", "10.0.0.1", "/10.2.3.4:50010", "proxy.cse.cuhk.edu.hk:5070",
                                 "www.example.com", "org.apache.Foo", "/var/log/x.log", "0x1F", "42", "-7", "3.14",
                                 "(1.20", "KB)", "user=bob", "uid=0", "word", "a-b", "0673dd71-34c5-4fbb-86c4-40623fbe45b4",
                                 "x1y2", "12ab", "IPv4", "  ", "\t", "\u0663", "1.2.3.4.5"]), max_size=12))
def test_shape_cached_masking_equals_the_patterns_on_the_text(tokens):
    """The cache keys on digit shapes: it must give what the patterns give on the actual text."""
    from loglm.ingest import params

    text = " ".join(tokens)
    for _ in range(2):  # cold, then answered from the cache
        masked, found = params.mask_params(text)
        expected = {}

        def repl(m):
            kind, v = m.lastgroup, m.group(0)
            if kind in params.ENTITY_KINDS:
                value = v.lstrip("/").split(":")[0] if kind in ("ip", "hostname") else v
                expected.setdefault(kind, []).append(value)  # noqa: B023
            return f"<{kind}>"

        assert masked == params._PARAMS.sub(repl, text)
        assert {k: v for k, v in found.items() if k != "user"} == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.sampled_from([
    b"#fields\tts\tid.orig_h\tid.resp_h\tproto", b"#separator \\x2c", b"1.5\t10.0.0.1\t10.0.0.2\ttcp",
    b'{"timestamp": 1, "message": "m"}', b'{"timestamp": "nan", "message": 1}', b"Flow Duration,Label",
    b"12,BENIGN", b"\xff\xfe", b"\x00", b"1e999\ta\tb\tc", b"1e300\t10.0.0.1\t10.0.0.2\ttcp",
    b'{"timestamp": -1e300, "message": "m"}', b'{"ts": 1e300, "id.orig_h": "a", "id.resp_h": "b", "proto": "tcp"}',
    b'{"ts": "2024-01-01T00:00:00Z", "id.orig_h": 1, "id.resp_h": [], "proto": "tcp"}',
    b'{"ts": 1e15, "src_ip": "a", "dst_ip": "b", "fwd_bytes": 1, "fwd_pkts": "x"}',
    b"2 1 eni-1 - - - - - - - 1 2 - NODATA", b"version srcaddr dstaddr bytes packets start end log-status",
    b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1e300 -5 ACCEPT OK", b"CEF:0|a|b|1|c|d|1|rt=99999999999999999999 src=x",
    b"<134>1 2024-01-01T00:00:00Z h - - - CEF:0|a\\|b|c|1|c|d|1|end=Feb 30 2024 00:00:00 a\\=b=c \\",
    b"CEF:0|a|b|1|c|d|1|rt=Jan 01 2024 00:00:00 -99:99 msg==", b"CEF:0|||||||start=1e3"]), max_size=8))
def test_structured_readers_never_raise_and_account_every_line(lines):
    """Arbitrary bytes into the JSON, CEF, Zeek, CSV, NetFlow and VPC readers: each line a record, a rejection
    or metadata."""
    import tempfile

    for fmt in ("jsonl", "cef", "zeek", "cicflowmeter", "netflow", "vpcflow"):
        data = DataConfig(format=fmt, max_line_bytes=256,
                          fields={"message": "message", "time": "timestamp"} if fmt == "jsonl" else {})
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "in.txt"
            path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
            records, rejected, acct = read_all(data, path)
            assert acct.read == len(records) + len(rejected) + acct.metadata
            for r in records:
                datetime.fromtimestamp(r.ts, UTC)  # every accepted time is a date


def test_id_sequence_builder_openstack_protocol(tmp_path):
    from loglm.ingest.prepare import run as prepare

    (tmp_path / "templates.csv").write_text("a <*>\nb <*>\nc\nd\n")
    (tmp_path / "train").write_text("".join(f"t{i},1 2 3\n" for i in range(10)))
    (tmp_path / "normal").write_text("".join(f"n{i},1 2 3\n" for i in range(100)) + "broken line\nx,1 9\n")
    (tmp_path / "abnormal").write_text("a1,1 4 3\na2,2\n")
    cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data=openstack",
                              f"data.inputs=[{tmp_path}/train,{tmp_path}/normal,{tmp_path}/abnormal,{tmp_path}/templates.csv]"])
    summary = prepare(cfg)
    by = summary["labels_by_split"]
    assert by["train/0"] == 10 and by["test/1"] == 2 and by["val/0"] + by["test/0"] == 100
    assert 5 <= by["val/0"] <= 40  # a seeded 20% of test normal, removed from the test set
    assert summary["lines"]["rejected_by_reason"] == {"not '<sequence id>,<event ids>'": 1, "bad key sequence": 1}


@pytest.mark.parametrize("header", [b"Flow Duration\r,Label", b""])
def test_unreadable_csv_header_rejects_its_rows_with_the_reason(tmp_path, header):
    path = tmp_path / "flows.csv"
    path.write_bytes(header + b"\n12,BENIGN\n13,BENIGN\n")
    records, rejected, acct = read_all(DataConfig(format="cicflowmeter"), path)
    assert not records and acct.read == len(rejected) + acct.metadata == 3
    assert all(r.line_no in (1, 2, 3) for r in rejected)
    assert any("header" in r.reason for r in rejected)


TIME_FORMATS = ["%y%m%d %H%M%S", "%Y-%m-%d %H:%M:%S", "%y/%m/%d %H:%M:%S", "%a %b %d %H:%M:%S %Y", "%b %d %H:%M:%S",
                "%Y.%m.%d %H:%M:%S", "%d/%b/%Y:%H:%M:%S", "%H%M%S"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TIME_FORMATS), st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2099, 12, 31)),
       st.sampled_from(["as written", "seconds unpadded", "seconds 60", "seconds 99", "minute unpadded", "garbage"]),
       st.text(alphabet="0123456789: -/abc", max_size=4))
def test_timestamps_parse_by_minute_exactly_as_strptime_parses_them(fmt, when, variant, junk):
    """The minute cache (one strptime per minute) gives what strptime gives, on stamps as the format writes
    them and on every other spelling (unpadded fields, leap or bad seconds, junk): the same time or the
    same refusal."""
    from loglm.ingest.formats import time_parser

    text = when.strftime(fmt)
    if variant == "seconds unpadded" and text[-2] == "0":
        text = text[:-2] + text[-1]
    elif variant in ("seconds 60", "seconds 99"):
        text = text[:-2] + variant[-2:]
    elif variant == "minute unpadded" and text[-5:-3].isdigit() and text[-5] == "0":
        text = text[:-5] + text[-4:]
    elif variant == "garbage":
        text = text[:-2] + junk

    def strptime(value):
        return datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp()

    parse = time_parser(fmt)
    for _ in range(2):  # the minute cold, then cached
        try:
            want = strptime(text)
        except ValueError:
            with pytest.raises(ValueError):
                parse(text)
        else:
            assert parse(text) == want, (fmt, text)


def test_a_raw_line_keeps_its_header_fields_label_and_entities(tmp_path):
    """The fields a raw-text line needs come out of its header match: content, timestamp, a label field
    and header entities (BGL: label '-' = normal, node -> hostname)."""
    path = tmp_path / "bgl.log"
    path.write_text("- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 "
                    "R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache parity error corrected\n"
                    "APPREAD 1117869872 2005.06.04 R04-M1-N1-I:J18-U11 2005-06-04-00.24.32.432192 "
                    "R04-M1-N1-I:J18-U11 RAS APP FATAL ciod: failed to read message prefix\n")
    data = DataConfig(format="bgl", inputs=[str(path)])
    items = list(make_reader(data, path).read(path, LineAccount()))
    assert [type(i) for i in items] == [Record, Record]
    first, second = items
    assert first.content == "instruction cache parity error corrected" and first.label == "-"
    assert second.label == "APPREAD" and second.header_entities == {"hostname": "R04-M1-N1-I:J18-U11"}
    assert first.ts == datetime(2005, 6, 3, 15, 42, 50, 675872, tzinfo=UTC).timestamp()


def _general_event(reader, raw: bytes, mask: bool):
    """What the fast path must equal: parse_line, then prepare's event_parts."""
    from loglm.ingest.prepare import event_parts

    item = reader.parse_line(raw, "f.log", 7)
    if isinstance(item, Rejection):
        return item
    masked, ents = event_parts(item, mask)
    return item.source, item.line_no, item.ts, item.raw, item.label, masked, ents


def _fast_or_general(reader, raw: bytes, mask: bool):
    fast = reader.event_of(raw, "f.log", 7, mask)
    return fast if fast is not None else _general_event(reader, raw, mask)


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("system", sorted(p.name.split("_")[0] for p in (FIXTURES / "loghub").glob("*_40.log")))
def test_the_shape_planned_fast_path_reads_every_preset_as_the_general_path(system, mask):
    """``RawTextReader.event_of`` (one header match and parameter layout per line shape) gives exactly what
    ``parse_line`` + ``event_parts`` give, line by line, on every loghub system (twice: cold and cached);
    on the digit-free presets it takes the lines itself."""
    reader = make_reader(DataConfig(format=system.lower()))
    lines = (FIXTURES / "loghub" / f"{system}_40.log").read_bytes().splitlines(keepends=True)
    taken = 0
    for _ in range(2):
        for raw in lines:
            fast = reader.event_of(raw, "f.log", 7, mask)
            taken += fast is not None
            assert (fast if fast is not None else _general_event(reader, raw, mask)) == \
                _general_event(reader, raw, mask), raw
    if reader._plans is not None:
        assert taken >= len(lines), system  # the fixture's lines are ASCII: the fast path took them


def _edited(words: list[str], edits) -> list[str]:
    """``words`` with each (position, piece, swap) of ``edits`` swapped in or inserted."""
    for at, piece, swap in edits:
        at = min(at, len(words))
        if swap and at < len(words):
            words[at] = piece
        else:
            words.insert(at, piece)
    return words


_HOSTILE = ["blk_-1608999687919862906", "blk_38865", "/10.250.19.102:54106", "10.251.71.16", "user=bob", "uid=0",
            "R02-M1-N0-C:J12-U11", "2005-06-03-15.42.50.675872", "-", "[req-38101a0b-2096-447d-96ea-a692162415ae",
            "\"quoted\"", "back\\slash", "\t", "\x00", "\x7f", "\u00e9", "\u0663", "0x1F", "3.14", "   ", "", ":",
            "99999999999999999999", "9999-99-99", "081399", "256199", "[", "]", "|", "a" * 70]
_SYSTEMS = ["HDFS", "BGL", "OpenStack", "HPC", "Zookeeper", "Spark", "Android", "HealthApp", "Proxifier"]


@settings(max_examples=500, deadline=None)
@given(system=st.sampled_from(_SYSTEMS), line=st.integers(0, 39),
       edits=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(_HOSTILE), st.booleans()), max_size=4),
       ending=st.sampled_from([b"\n", b"\r\n", b"", b"\r"]))
@example(system="HPC", line=0, edits=[(4, "99999999999999999999", True)], ending=b"\n")  # a time past year 9999
@example(system="HDFS", line=0, edits=[(0, "081399", True)], ending=b"\n")  # month 13
def test_the_fast_path_equals_the_general_path_on_hostile_lines(system, line, edits, ending):
    """Real lines of nine systems with pieces inserted or swapped in anywhere, header included (control
    characters, quotes, non-ASCII digits, impossible dates, empty fields, a missing separator): accepted or
    rejected alike, with the same fields."""
    reader = make_reader(DataConfig(format=system.lower()))
    words = _edited((FIXTURES / "loghub" / f"{system}_40.log").read_text().splitlines()[line].split(" "), edits)
    raw = " ".join(words).encode("utf-8") + ending
    for mask in (True, False):
        for _ in range(2):
            assert _fast_or_general(reader, raw, mask) == _general_event(reader, raw, mask), raw


_SYSLOG = ["Nov  2 08:00:14 web1 sshd[1001]: Accepted password for alice from 10.0.0.9 port 5022 ssh2",
           "Nov 12 08:00:15 db2 kernel: [12345.678] eth0: link up",
           "Nov 12 08:00:16 db2 systemd[1]: Started Session 3 of user alice.",
           "Nov 12 08:00:17 web10 CRON[4242]: (root) CMD (run-parts /etc/cron.hourly)",
           "Nov 12 08:00:18 web10 sudo:   alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/bash",
           "Nov 12 08:00:19 mx1 postfix/smtpd[2211]: connect from unknown[192.0.2.7]",
           "Nov 12 08:00:20 mx1 foo[bar]: a tag with a bracket that is not a pid",
           "Nov 12 08:00:21 mx1 -- MARK --"]


@settings(max_examples=300, deadline=None)
@given(line=st.integers(0, len(_SYSLOG) - 1),
       edits=st.lists(st.tuples(st.integers(0, 12), st.sampled_from(_HOSTILE), st.booleans()), max_size=3),
       fmt=st.sampled_from(["syslog", "syslog_iso"]))
@example(line=0, edits=[], fmt="syslog")
def test_the_syslog_presets_are_shape_planned_and_read_as_the_general_path(line, edits, fmt):
    """The syslog presets read a tag's ``[pid]`` with the program field (no optional group, so their headers
    qualify for shape plans, 3x faster to prepare): the fast path equals the general path on real layouts
    with pieces swapped or inserted anywhere, and the program is the tag without its pid."""
    reader = make_reader(DataConfig(format=fmt, year_reference="2024"))
    assert reader._plans is not None
    text = _SYSLOG[line]
    if fmt == "syslog_iso":
        text = "2024-05-01T10:00:00.25+02:00 " + text[16:]
    raw = " ".join(_edited(text.split(" "), edits)).encode("utf-8") + b"\n"
    for mask in (True, False):
        for _ in range(2):
            assert _fast_or_general(reader, raw, mask) == _general_event(reader, raw, mask), raw
    if not edits:
        expect = ["sshd", "kernel", "systemd", "CRON", "sudo", "postfix/smtpd", "foo", None][line]
        got = reader.parse_line(raw, "f", 1)
        assert (got.namespace if isinstance(got, Record) else None) == expect


def test_tuning_growth_never_makes_the_direction_only_catch_all_a_token():
    """Growing a flow model's vocabulary on new traffic (loglm.analyst.tune.grown_vocabulary): a new service's
    flows, seen min_count times, become a token; flows unlike every known service and size back off to
    ``proto=.. dir=..``, and that form stays [UNK] however often it occurs, or every later unseen flow of that
    direction (an attack's among them) would read as known (benchmarks.cic_rolling --tune)."""
    from collections import Counter

    from loglm.analyst.tune import grown_vocabulary
    from loglm.ingest.flows import FlowCodec, TrainingFlows
    from loglm.ingest.templates import TemplateMiner
    from loglm.vocab import UNK, Vocabulary

    def flow(port, service, size, direction="out"):
        src, dst = ("10.0.0.5", "93.184.0.9") if direction == "out" else ("93.184.0.9", "10.0.0.5")
        return {"proto": "tcp", "service": service, "state": "SF", "src_ip": src, "dst_ip": dst, "dst_port": port,
                "duration": 1.0, "fwd_bytes": size, "bwd_bytes": size, "fwd_pkts": 4, "bwd_pkts": 4}

    train = [flow(443, "ssl", 100 + 10 * (i % 7)) for i in range(60)]
    codec = FlowCodec(n_buckets=4, min_count=2, local_networks=["10.0.0.0/8"]).fit(train)
    miner = TemplateMiner()
    vocab = Vocabulary(miner, sorted({miner.add(codec.sentence(f)) for f in train}), 16, True, codec)
    service = [flow(5432, "postgres", 300, "in")] * 3  # a new service, the same form three times
    stray = [flow(1000 + i, f"svc{i}", 50 * i, "in") for i in range(6)]  # inbound, each unlike any other
    assert codec.catch_all(codec.sentence(stray[0])) and not codec.catch_all(codec.sentence(train[0]))
    new = service + stray
    texts = Counter(codec.sentence(f) for f in new)
    grown, info = grown_vocabulary(vocab, texts, TrainingFlows.of(new, ["10.0.0.0/8"]), min_count=2)
    assert info["new_tokens"] == 1 and info["catch_all_events_left_unseen"] >= len(stray)

    def token(f):
        return grown.token(grown.miner.match(grown.flow_codec.sentence(f)))

    assert token(service[0]) != UNK
    assert grown.flow_codec.catch_all(grown.flow_codec.sentence(stray[0]))
    assert all(token(f) == UNK for f in stray + [flow(9999, "never", 7, "in")])
    assert all(token(f) == vocab.token(vocab.miner.match(codec.sentence(f))) for f in train)  # old reads stay


def test_journald_json_events_carry_their_program_and_other_readers_refuse_the_setting(tmp_path):
    """``journalctl -o json``: the message in MESSAGE, the program in SYSLOG_IDENTIFIER (``data.event_fields``),
    microsecond timestamps; a record without the field has no program; a format that builds its events from
    fields of its own refuses the setting when the config is composed."""
    from loglm.ingest.prepare import event_parts
    from loglm.ingest.templates import shown

    log = tmp_path / "journal.json"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"__REALTIME_TIMESTAMP": "1714557600250000", "_HOSTNAME": "web1", "SYSLOG_IDENTIFIER": "sshd",
         "_PID": "1001", "MESSAGE": "Accepted publickey for alice from 10.0.0.9 port 5022 ssh2"},
        {"__REALTIME_TIMESTAMP": "1714557601000000", "_HOSTNAME": "web1", "SYSLOG_IDENTIFIER": "sudo",
         "MESSAGE": "pam_unix(sudo:session): session opened for user root(uid=0) by alice(uid=1000)"},
        {"__REALTIME_TIMESTAMP": "1714557602000000", "_HOSTNAME": "web1", "MESSAGE": "no identifier here"}]) + "\n")
    data = DataConfig(format="jsonl", fields={"message": "MESSAGE", "time": "__REALTIME_TIMESTAMP"},
                      time_format="epoch_us", entity_fields={"_HOSTNAME": "hostname"}, event_fields=["SYSLOG_IDENTIFIER"])
    records, rejected, _ = read_all(data, log)
    assert not rejected and [r.namespace for r in records] == ["sshd", "sudo", None]
    assert records[0].ts == 1714557600.25
    assert [shown(event_parts(r)[0]) for r in records] == [
        "sshd: Accepted publickey for alice from <ip> port <num> ssh2",
        "sudo: pam_unix(sudo:session): session opened for user root(uid=<num>) by alice(uid=<num>)",
        "no identifier here"]
    with pytest.raises(Exception, match="data.event_fields names the program"):
        compose("prepare", ["data=own", "data.format=zeek", "data.event_fields=[service]"])
    with pytest.raises(Exception, match="among data.message_fields"):
        compose("prepare", ["data=own", "data.format=jsonl", "data.message_fields=[event.code]",
                            "data.event_fields=[process.name]"])


def test_program_events_bench_names_the_templates_the_program_splits(tmp_path):
    """``benchmarks.program_events``: on loghub's Linux layout, sshd's and su's "session opened" lines are one
    template read alone and two with the program; a message only one program writes stays one."""
    from benchmarks.program_events import compare

    log = tmp_path / "Linux_2k.log"
    log.write_text("Jun 14 15:16:01 combo sshd(pam_unix)[19939]: session opened for user root by (uid=0)\n"
                   "Jun 14 15:16:02 combo su(pam_unix)[19940]: session opened for user news by (uid=0)\n"
                   "Jun 14 15:16:03 combo sshd(pam_unix)[19941]: check pass; user unknown\n")
    out = compare(log, "linux")
    assert out["lines"] == 3 and (out["templates_content_alone"], out["templates_with_program"]) == (2, 3)
    assert out["split_by_program"] == {"session opened for user <*> by (uid=<num>)": ["sshd(pam_unix)", "su(pam_unix)"]}
