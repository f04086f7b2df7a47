"""One corpus, several formats (data.sources): Zeek conn logs beside NetFlow Parquet in one prepared dataset,
one vocabulary; per-source reader settings checked before any work; flow sentences never generalised."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import compose
from flow_fixtures import NETFLOW_FIELDS, netflow_rows, write_zeek


def test_zeek_and_netflow_in_one_corpus(tmp_path):
    from loglm.ingest.prepare import run as prepare
    from loglm.vocab import Vocabulary

    zeek = tmp_path / "conn.log.labeled"
    write_zeek(zeek, n_normal=400, n_attack=0, seed=5)
    nf = tmp_path / "flows.parquet"
    pq.write_table(pa.Table.from_pylist(netflow_rows(300, seed=6)), nf)
    source = json.dumps({"match": "*.parquet", "format": "netflow", "fields": NETFLOW_FIELDS,
                         "time_format": "epoch"}).replace('"', "")
    cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data=zeek_ctu", "data.name=mixed",
                              f"data.inputs=[{zeek},{nf}]", "data.local_networks=[10.0.0.0/8]",
                              "data.split.method=seeded", "data.split.train_frac=0.8", "data.split.val_frac=0.2",
                              f"data.sources=[{source}]"])
    assert cfg.data.sources[0]["format"] == "netflow"
    out = prepare(cfg)
    lines = out["lines"]
    assert lines["rejected"] == 0 and lines["accepted"] == 401 + 300, lines  # 400 Benign + 1 Background, 300 flows
    data_dir = tmp_path / "runs" / "data" / "mixed"
    events = pq.read_table(data_dir / "events.parquet")
    sources = events.column("source").to_pylist()
    assert sources.count(str(nf)) == 300 and sources.count(str(zeek)) == 401
    vocab = Vocabulary.load(data_dir / "vocab.json")
    texts = [vocab.token_text(t) for t in range(5, vocab.size)]
    # both readers' flows are in the one vocabulary: Zeek's carry service and state, NetFlow's have neither
    assert any("svc=ssl" in x for x in texts) and any("svc=- " in x and "state=-" in x for x in texts), texts
    assert not any("<*>" in x for x in texts)  # flow sentences are exact templates
    tpl = events.column("template").to_pylist()
    by_source = {s: sum(1 for a, b in zip(sources, tpl) if a == s and b >= 0) for s in (str(zeek), str(nf))}
    assert by_source[str(zeek)] > 300 and by_source[str(nf)] > 200, by_source
    # detection, tuning and transfer evaluation read new inputs the same way, each file by its source's reader
    from loglm.ingest.prepare import parse_inputs

    parsed = parse_inputs([str(nf), str(zeek)], cfg.data, vocab.miner, frozen=True, mask=vocab.mask_params,
                          codec=vocab.flow_codec)
    assert parsed.account.accepted == 701 and parsed.account.rejected == 0
    assert sum(t >= 0 for t in parsed.events.template) == sum(t >= 0 for t in tpl)


def test_sources_settings_checked_when_composed(tmp_path):
    with pytest.raises(Exception, match="only reader settings"):
        compose("prepare", [f"paths.root={tmp_path}", "data=zeek_ctu", "data.sources=[{match: '*.csv', session: x}]"])
    with pytest.raises(Exception, match="needs match"):
        compose("prepare", [f"paths.root={tmp_path}", "data=zeek_ctu", "data.sources=[{format: netflow}]"])


def test_a_flow_sentence_is_never_generalised_beside_log_lines():
    from loglm.ingest.templates import TemplateMiner

    miner = TemplateMiner(sim_threshold=0.4)
    a = miner.add("proto=tcp dir=out svc=ssl port=443 state=SF | dur=3 ob=5 ib=6 op=2 ip=2")
    b = miner.add("proto=tcp dir=out svc=ssl port=443 state=SF | dur=4 ob=5 ib=6 op=2 ip=2")
    c = miner.add("Receiving block <block_id> src: <ip> dest: <ip>")
    d = miner.add("Receiving block <block_id> src: <ip> from: <ip>")
    assert a != b and c == d and "<*>" in miner.templates[c].text
    assert miner.match("proto=tcp dir=out svc=ssl port=443 state=SF | dur=5 ob=5 ib=6 op=2 ip=2") is None


def test_syslog_beside_journald_json_each_with_its_program(tmp_path):
    """A syslog file beside a journald export (data.sources): each reader names the program its own way (the
    preset's tag, the JSON's SYSLOG_IDENTIFIER), both land in one vocabulary as ``program: message``; the
    prepared folder's fingerprint records each source's program fields, so changing one reads the corpus anew."""
    from loglm.ingest.prepare import ingest_fingerprint, prepared_dir, stale_reason
    from loglm.ingest.prepare import run as prepare
    from loglm.vocab import Vocabulary

    log = tmp_path / "auth.log"
    log.write_text("".join(f"May  1 10:{m:02d}:00 web1 sshd[{100 + m}]: Accepted publickey for alice from "
                           f"10.0.0.{m + 1} port {40000 + m} ssh2\n" for m in range(30)))
    journal = tmp_path / "journal.json"
    journal.write_text("".join(json.dumps({"__REALTIME_TIMESTAMP": str((1714557600 + 60 * m) * 10**6),
                                           "_HOSTNAME": "web2", "SYSLOG_IDENTIFIER": "sudo",
                                           "MESSAGE": f"alice : TTY=pts/{m % 3} ; PWD=/home/alice ; USER=root ; "
                                                      "COMMAND=/usr/bin/id"}) + "\n" for m in range(30)))
    source = json.dumps({"match": "*.json", "format": "jsonl", "time_format": "epoch_us",
                         "fields": {"message": "MESSAGE", "time": "__REALTIME_TIMESTAMP"},
                         "entity_fields": {"_HOSTNAME": "hostname"}, "event_fields": ["SYSLOG_IDENTIFIER"]}
                        ).replace('"', "")
    overrides = [f"paths.root={tmp_path}/runs", "data=own", "data.name=mixed", f"data.inputs=[{log},{journal}]",
                 "data.format=syslog", "data.year_reference=2024", "data.split.method=seeded",
                 "data.split.train_frac=0.8", "data.split.val_frac=0.2", f"data.sources=[{source}]"]
    cfg = compose("prepare", overrides)
    fp = ingest_fingerprint(cfg, contents=False)["config"]["data"]
    assert fp["event_fields"] == ["Component"] and fp["sources"][0]["event_fields"] == ["SYSLOG_IDENTIFIER"]
    assert prepare(cfg)["lines"]["accepted"] == 60
    data_dir = prepared_dir(cfg.paths.root, "mixed")
    vocab = Vocabulary.load(data_dir / "vocab.json")
    texts = {vocab.token_text(t) for t in range(5, vocab.size)}
    assert {x.split(": ", 1)[0] for x in texts} == {"sshd", "sudo"}, texts
    changed = compose("prepare", overrides[:-1] + [f"data.sources=[{source.replace('[SYSLOG_IDENTIFIER]', '[]')}]"])
    assert "data.sources" in stale_reason(data_dir, changed)


def test_a_source_of_another_format_does_not_inherit_the_main_formats_program_fields(tmp_path):
    """``data.event_fields=[Component]`` names a field of the main header; a Zeek source beside it takes its own
    reader settings and reads as before (it inherited the setting, and its config refused it at read time)."""
    from loglm.config import DataConfig
    from loglm.ingest.readers import make_reader, source_config

    data = DataConfig(format="custom", header="<Month> <Day> <Time> <Host> <Component>: <Content>",
                      time_fields=["Month", "Day", "Time"], time_format="noyear:%b %d %H:%M:%S",
                      event_fields=["Component"], sources=[{"match": "*.labeled", "format": "zeek"},
                                                           {"match": "*.json", "format": "jsonl",
                                                            "event_fields": ["SYSLOG_IDENTIFIER"]}])
    assert source_config(data, tmp_path / "conn.log.labeled").event_fields is None
    assert type(make_reader(data, tmp_path / "conn.log.labeled")).__name__ == "ZeekConnReader"
    assert source_config(data, tmp_path / "j.json").event_fields == ["SYSLOG_IDENTIFIER"]
    assert source_config(data, tmp_path / "auth.log").event_fields == ["Component"]
