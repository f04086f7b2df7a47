"""README "Your own logs": syslog with a custom header, JSON lines and NetFlow CSV, each from a raw file to
alerts with `data=own` (nothing inherited from a preset: no label file, no block-id sessions), then
detection on new raw lines with none of the data settings repeated."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, compose

pytestmark = pytest.mark.slow
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
HOSTS = ["web1", "web2", "db1"]
MESSAGES = ["Accepted password for user {u} from 10.0.{a}.{b} port {p} ssh2",
            "pam_unix(sshd:session): session opened for user {u} by (uid=0)",
            "Received disconnect from 10.0.{a}.{b} port {p}:11: disconnected by user",
            "pam_unix(sshd:session): session closed for user {u}"]


def syslog_lines(n: int, seed: int, start: datetime) -> list[tuple[datetime, str, str]]:
    rng = random.Random(seed)
    out, t = [], start
    for i in range(n):
        t += timedelta(seconds=rng.uniform(5, 40))
        msg = MESSAGES[i % 4].format(u=rng.choice(["alice", "bob"]), a=rng.randint(0, 9), b=rng.randint(1, 250),
                                     p=rng.randint(30000, 60000))
        out.append((t, rng.choice(HOSTS), msg))
    return out


def write_syslog(path, n, seed, start=T0):
    lines = syslog_lines(n, seed, start)
    path.write_text("".join(f"{t:%b %d %H:%M:%S} {h} sshd[{1000 + i}]: {m}\n" for i, (t, h, m) in enumerate(lines)))
    last = lines[-1][0].timestamp()
    os.utime(path, (last, last))  # as a log's last write: its lines' year comes from it (data.year_reference)


def write_jsonl(path, n, seed, start=T0):
    path.write_text("".join(json.dumps({"@timestamp": t.isoformat(), "host": {"name": h}, "event": {"message": m}}) + "\n"
                            for t, h, m in syslog_lines(n, seed, start)))


def write_netflow(path, n, seed):
    from flow_fixtures import netflow_rows

    rows = netflow_rows(n, seed)
    for i, r in enumerate(rows):  # a flow every 20 s: many 5-minute windows
        r["first_seen"] = 1_700_000_000.0 + 20 * i + (86_400 if seed != 1 else 0)
    cols = list(rows[0])
    path.write_text(",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows))


SYSLOG = ["data.format=syslog_custom", "data.header='<Month> <Day> <Time> <Host> <Component>: <Content>'",
          "data.time_fields=[Month,Day,Time]", "data.time_format='noyear:%b %d %H:%M:%S'",
          "+data.entity_fields={Host: hostname}"]
JSONL = ["data.format=jsonl", "+data.fields={message: event.message, time: '@timestamp'}", "data.time_format=iso",
         "+data.entity_fields={host.name: hostname}"]


def netflow_overrides():
    from flow_fixtures import NETFLOW_FIELDS

    fields = ", ".join(f"{k}: {v}" for k, v in NETFLOW_FIELDS.items())
    return ["data.format=netflow", f"+data.fields={{{fields}}}", "data.session.entity_type=src_ip",
            "data.local_networks=[10.0.0.0/8]"]


@pytest.mark.parametrize("kind", ["syslog", "jsonl", "netflow"])
def test_your_own_logs_from_raw_file_to_alerts(tmp_path, kind):
    from loglm.detect.detector import run as detect
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    train, new = tmp_path / f"train.{kind}", tmp_path / f"new.{kind}"
    if kind == "syslog":
        write_syslog(train, 1500, 1)
        write_syslog(new, 200, 2, T0 + timedelta(days=1))
        extra = SYSLOG
    elif kind == "jsonl":
        write_jsonl(train, 1500, 1)
        write_jsonl(new, 200, 2, T0 + timedelta(days=1))
        extra = JSONL
    else:
        write_netflow(train, 1500, 1)
        write_netflow(new, 200, 2)
        extra = netflow_overrides()
    overrides = [f"paths.root={tmp_path}/runs", "data=own", f"data.name=own_{kind}", f"data.inputs=[{train}]",
                 "model=tiny", "trainer.max_epochs=1", "trainer.progress_bar=false", "detect.small_validation=warn",
                 *extra]
    cfg = compose("pretrain", overrides)
    assert cfg.data.anomalous_ids is None and cfg.data.session.by == "entity_window"  # nothing inherited
    summary = prepare(cfg)
    assert summary["lines"]["accepted"] == 1500
    model = pretrain(cfg)
    # detection names only the model and the new file: the format, header, fields and sessions come with it
    det = compose("detect", [f"paths.root={tmp_path}/runs", f"ckpt={model['run_id']}", f"inputs=[{new}]",
                             f"out={tmp_path}/alerts.jsonl"])
    result = detect(det)
    assert result["lines"]["accepted"] == 200 and result["lines"]["rejected"] == 0
    assert result["sessions_scored"] > 0 and (tmp_path / "alerts.jsonl").exists()
    assert (tmp_path / "alerts.ocsf.jsonl").exists()


def readme_block(after: str) -> str:
    """The first ```bash block of the README after the line holding ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```bash\n", text.index(after)) + len("```bash\n")
    return text[start:text.index("```", start)]


def run_readme_block(after: str, paths: dict[str, str], extra: str, tmp_path) -> dict:
    """The README's bash block after ``after``, run in bash with its log paths swapped (``paths``, longest
    first) and ``extra`` (settings for a fast run) added before its first command; detect's summary."""
    script = readme_block(after)
    for old, new in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        assert old in script, old
        script = script.replace(old, new)
    script = script.replace("python -m ", f"{sys.executable} -m ")
    first = script.index(f"{sys.executable} -m")
    script = "set -euo pipefail\n" + script[:first] + extra + "\n" + script[first:]
    env = {**os.environ, "LOGLM_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.rindex("\n{"):])  # detect's summary, printed last


def test_the_readme_syslog_commands_run_as_written_in_bash(tmp_path):
    """The README's syslog block, pasted into bash with only the log paths swapped and a tiny model added:
    prepare, pretrain and detect succeed and every line of the new file is accounted for (a quoting mistake
    in the block, a value with spaces split into two arguments, fails here)."""
    train, new = tmp_path / "auth.log", tmp_path / "auth.log.1"
    write_syslog(train, 1500, 1)
    write_syslog(new, 200, 2, T0 + timedelta(days=1))
    assert "OWN=(" in readme_block("**Syslog with your own header**")
    summary = run_readme_block("**Syslog with your own header**", {"/var/log/auth.log.1": str(new),
                                                                     "/var/log/auth.log": str(train)},
                               "OWN+=(model=tiny trainer.max_epochs=1 trainer.progress_bar=false "
                               "detect.small_validation=warn)", tmp_path)
    alerts = list((tmp_path / "runs").rglob("*.jsonl"))
    assert summary["lines"]["accepted"] == 200 and summary["lines"]["rejected"] == 0, summary["lines"]
    assert alerts, "detection wrote no alerts file"


def test_the_readme_security_events_block_alerts_on_the_brute_force_only(tmp_path):
    """The README's Windows security events block, run as written in bash on generated Winlogbeat logons (20
    days train a tiny model; a new day holds one brute force): every line is scored, and of the new day's
    user sessions the only alert is the brute force, its evidence and expectations field sentences."""
    from synthetic import windows_logons

    train, new = tmp_path / "security.ndjson", tmp_path / "security-today.ndjson"
    train.write_text("".join(json.dumps(e) + "\n" for e in windows_logons(20, seed=1)))
    today = windows_logons(1, seed=2, first_day=25, attack=True)
    new.write_text("".join(json.dumps(e) + "\n" for e in today))
    summary = run_readme_block("**Security events**", {"/var/log/winlogbeat/security-today.ndjson": str(new),
                                                        "/var/log/winlogbeat/security.ndjson": str(train)},
                               "SEC+=(model=tiny trainer.max_epochs=5 trainer.progress_bar=false)", tmp_path)
    assert summary["lines"]["accepted"] == len(today) and summary["lines"]["rejected"] == 0, summary["lines"]
    alerts = [json.loads(x) for x in open(summary["alerts_path"])]
    assert [a["entity"] for a in alerts] == [{"type": "user", "value": "user7"}], [a["session_id"] for a in alerts]
    assert alerts[0]["entities"]["ip"] == ["203.0.113.5"]
    top = alerts[0]["surprising_events"][0]
    assert top["template"] == "fields: event.code=4625 winlog.logon.type=Network event.outcome=failure"
    assert all(x["template"].startswith("fields: ") or x["template"].startswith("[") for x in top["expected"])
    assert alerts[0]["attacks"][0]["id"] == "T1110"  # ATT&CK context: Brute Force, from the Windows event ids


def test_preview_shows_how_prepare_reads_the_first_lines_and_what_to_fix(tmp_path):
    """prepare preview=N: the first N lines of each input, accepted (time, session, event text, entities) or
    rejected (reason), per-file tallies, hints when nothing fits; nothing is written."""
    import io

    from flow_fixtures import write_zeek

    from loglm.ingest.preview import preview

    log = tmp_path / "auth.log"
    log.write_text("Nov  2 08:00:14 web1 sshd[1001]: Accepted password for alice from 10.0.0.9 port 5022 ssh2\n"
                   "not syslog at all\n"
                   "Nov  2 08:00:15 web1 sshd[1001]: session opened for user alice\n"
                   "Nov  2 08:00:16 web2 CRON[7]: (root) CMD (run-parts)\n")
    written = datetime(2025, 1, 10, tzinfo=UTC).timestamp()
    os.utime(log, (written, written))  # no year in the lines: theirs is the last line's before this last write
    root = tmp_path / "runs"

    def show(*overrides, n=3):
        buf = io.StringIO()
        result = preview(compose("prepare", [f"paths.root={root}", "data=own", *overrides]), n, buf)
        return result, buf.getvalue()

    result, text = show("data.format=syslog", f"data.inputs=[{log}]")
    assert "line 1: 2024-11-02T08:00:14Z session=web1@2024-11-02T08:00:00+00:00" in text  # written 2025-01-10
    assert "event: sshd: Accepted password for alice from <ip> port <num> ssh2" in text  # the program: its event's
    assert "line 2: REJECTED header does not match format syslog" in text and "line 4" not in text  # first 3
    assert result["files"][str(log)]["accepted"] == 2 and result["files"][str(log)]["rejected"] == 1
    assert "hint" not in text and not root.exists()  # nothing written
    _, text = show("data.format=apache", f"data.inputs=[{log}]")
    assert "hint: no line fits data.format=apache" in text
    _, text = show("data.format=syslog", f"data.inputs=[{log}]", "data.session.entity_type=user")
    assert "session=NONE" in text and "hint: no line names a user entity" not in text  # line 3 names alice
    _, text = show("data.format=syslog", f"data.inputs=[{log}]", "data.session.entity_type=container")
    assert "hint: no line names a container entity" in text
    conn = tmp_path / "conn.log"
    write_zeek(conn, 5, 0)
    _, text = show("data.format=zeek", f"data.inputs=[{conn}]", "data.session.entity_type=src_ip", n=2)
    assert "event: flow " in text and "dst_port=" in text and "label=Benign" in text
    with pytest.raises(ValueError, match="sequence builder"):
        show("data=hdfs_keys")


def test_java_logs_with_stack_traces_batch_and_stream_alike(tmp_path):
    """data.multiline end to end: a model trained on a Java service's log (records with stack traces) scores
    a new log in batch and as a stream with the same accounting (every trace line "continued", none rejected)
    and the same events; a record's raw text, the alert's evidence, holds its trace."""
    from synthetic import java_log

    from loglm.detect.detector import run as detect
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    train, new = tmp_path / "app.log", tmp_path / "app.log.1"
    train.write_text("\n".join(java_log(3000, seed=3)) + "\n")
    new_lines = java_log(300, seed=4, start=datetime(2015, 10, 25, 9, 0, 0))
    at = next(i for i, line in enumerate(new_lines) if i > 150 and line[:4].isdigit())  # a record never seen, traced
    new_lines[at:at] = [new_lines[at][:23] + " FATAL [main] org.apache.hadoop.mapred.YarnChild: Error running child",
                        "java.lang.OutOfMemoryError: Java heap space", "\tat java.util.Arrays.copyOf(Arrays.java:3332)"]
    new.write_text("\n".join(new_lines) + "\n")
    own = [f"paths.root={tmp_path}/runs", "data=own", "data.name=java", "data.format=hadoop", f"data.inputs=[{train}]",
           "data.multiline=true", "data.session.by=window", "data.session.window_s=120", "model=tiny",
           "trainer.max_epochs=1", "trainer.progress_bar=false", "detect.small_validation=warn"]
    prepare(compose("prepare", own))
    model = pretrain(compose("pretrain", own))
    summaries = {}
    for mode in ("batch", "stream"):
        # the stream waits 4 s for more lines: after 2 s of quiet it takes the record it holds as complete
        extra = ["follow=true", "follow_exit_s=4"] if mode == "stream" else []
        summaries[mode] = detect(compose("detect", [f"paths.root={tmp_path}/runs", f"ckpt={model['model_dir']}",
                                                    f"inputs=[{new}]", f"out={tmp_path}/{mode}.jsonl", *extra]))
    lines = {mode: {k: v for k, v in s["lines"].items()} for mode, s in summaries.items()}
    traces = sum(not line[:4].isdigit() for line in new_lines)
    assert lines["batch"] == lines["stream"], lines
    assert lines["batch"]["continued"] == traces and lines["batch"]["accepted"] == 301 and lines["batch"]["rejected"] == 0
    assert summaries["batch"]["events_scored"] == summaries["stream"]["events_scored"] == 301
    assert summaries["stream"]["records_closed_quiet"] == 1  # the last record, scored before the stream ended
    assert pq.read_table(summaries["stream"]["scores_path"]).num_rows > 0
    for mode in ("batch", "stream"):  # the unseen record alerts, its evidence the record with its trace
        alerts = [json.loads(x) for x in open(tmp_path / f"{mode}.jsonl")]
        evidence = [e for a in alerts for e in a["surprising_events"] if "FATAL" in (e.get("raw") or "")]
        assert evidence and evidence[0]["raw"] == "\n".join(new_lines[at:at + 3]), (mode, evidence)


def test_zeek_dns_events_train_and_alert_on_an_nxdomain_burst(tmp_path):
    """A Zeek dns.log read as events (data.message_fields) through the whole path: prepare, a tiny model,
    detection on a new log with a DGA-like NXDOMAIN burst from one host: that host's window alerts, and its
    evidence is the NXDOMAIN field sentence."""
    from flow_fixtures import zeek_dns_lines

    from loglm.detect.detector import run as detect
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    train, new = tmp_path / "dns.log", tmp_path / "dns-today.log"
    train.write_text("\n".join(zeek_dns_lines(6000, seed=1)) + "\n")
    new.write_text("\n".join(zeek_dns_lines(400, seed=2, nxdomain_burst=40, t0=1_656_000_000.0)) + "\n")
    own = [f"paths.root={tmp_path}/runs", "data=own", "data.name=dns", "data.format=zeek", f"data.inputs=[{train}]",
           "data.message_fields=[qtype_name,rcode_name]", "data.session.entity_type=src_ip",
           "data.session.window_s=120", "model=tiny", "trainer.max_epochs=3", "trainer.progress_bar=false"]
    prepare(compose("prepare", own))
    model = pretrain(compose("pretrain", own))
    result = detect(compose("detect", [f"paths.root={tmp_path}/runs", f"ckpt={model['model_dir']}",
                                       f"inputs=[{new}]", f"out={tmp_path}/alerts.jsonl"]))
    assert result["lines"]["accepted"] == 440 and result["lines"]["rejected"] == 0
    alerts = [json.loads(x) for x in open(tmp_path / "alerts.jsonl")]
    hosts = {a["entity"]["value"] for a in alerts}
    assert "10.0.0.66" in hosts and len(hosts) <= 2, [(a["session_id"], a["score"]) for a in alerts]
    burst = next(a for a in alerts if a["entity"]["value"] == "10.0.0.66")
    assert burst["surprising_events"][0]["template"] == "fields: qtype_name=A rcode_name=NXDOMAIN"



def write_auth_log(path, n, seed, start=T0, extra: tuple[tuple[datetime, str], ...] = ()):
    """``write_syslog``'s sshd lines in the traditional syslog layout (the ``syslog`` preset), plus ``extra``
    lines (time, ``host program[pid]: message``), in time order."""
    lines = [(t, f"{h} sshd[{1000 + i}]: {m}") for i, (t, h, m) in enumerate(syslog_lines(n, seed, start))]
    lines = sorted([*lines, *extra], key=lambda x: x[0])
    path.write_text("".join(f"{t:%b %d %H:%M:%S} {rest}\n" for t, rest in lines))
    last = lines[-1][0].timestamp()
    os.utime(path, (last, last))


@pytest.mark.parametrize("event_fields", [None, "[]"])
def test_a_second_ssh_server_accepting_a_login_is_an_unseen_event_because_events_carry_their_program(
        tmp_path, event_fields):
    """Syslog events carry the program that wrote them (``data.event_fields``, the ``syslog`` preset's
    ``Component``): a login accepted by ``dropbear``, an SSH server that never logged on these hosts, reads
    exactly like sshd's, and only its program tells it apart.  With ``data.event_fields=[]`` (the content
    alone, as before) it is sshd's familiar event and not surprising."""
    from loglm.detect.detector import run as detect
    from loglm.ingest.prepare import run as prepare
    from loglm.ingest.templates import with_namespace
    from loglm.model.store import load_model
    from loglm.training.pretrain import run as pretrain

    train, new = tmp_path / "auth.log", tmp_path / "auth.log.new"
    write_auth_log(train, 1500, 1)
    day2 = T0 + timedelta(days=1)
    write_auth_log(new, 200, 2, day2, extra=((day2 + timedelta(minutes=30),
                                               "db1 dropbear[4242]: Accepted password for user root from 10.0.3.3 "
                                               "port 40000 ssh2"),))
    overrides = [f"paths.root={tmp_path}/runs", "data=own", "data.name=auth", f"data.inputs=[{train}]",
                 "data.format=syslog", "model=tiny", "trainer.max_epochs=1", "trainer.progress_bar=false",
                 "detect.small_validation=warn", *([f"data.event_fields={event_fields}"] if event_fields else [])]
    cfg = compose("pretrain", overrides)
    assert prepare(cfg)["lines"]["accepted"] == 1500
    model = pretrain(cfg)
    det = compose("detect", [f"paths.root={tmp_path}/runs", f"ckpt={model['run_id']}", f"inputs=[{new}]",
                             f"out={tmp_path}/alerts.jsonl"])
    result = detect(det)
    assert result["lines"]["accepted"] == 201 and result["lines"]["rejected"] == 0
    alerts = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    seen = [e for a in alerts for e in a["surprising_events"] if "dropbear[" in (e["raw"] or "")]
    if event_fields is None:
        assert len(seen) == 1 and not seen[0]["known_event"]
        assert seen[0]["template"] == "dropbear: Accepted password for user root from <ip> port <num> ssh2"
        assert seen[0]["program"] == "dropbear"  # named in the evidence (ATT&CK context reads it)
        assert {e["template"] for e in seen[0]["expected"]} <= {
            "sshd: " + m for m in ("Accepted password for user <*> from <ip> port <num> ssh2",
                                   "pam_unix(sshd:session): session opened for user <*> by (uid=<num>)",
                                   "Received disconnect from <ip> port <num>:<num>: disconnected by user",
                                   "pam_unix(sshd:session): session closed for user <*>")}
    else:  # the content alone: sshd's own, familiar event
        assert all(e["known_event"] and e["template"].startswith("Accepted password for user") and "program" not in e
                   for e in seen)
    miner = load_model(model["model_dir"]).vocab.miner
    login = "Accepted password for user root from <ip> port <num> ssh2"
    if event_fields is None:
        assert miner.match(with_namespace("sshd", login)) is not None
        assert miner.match(with_namespace("dropbear", login)) is None and miner.match(login) is None
    else:
        assert miner.match(login) is not None
