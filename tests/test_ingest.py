from __future__ import annotations

import gzip

import pytest

from loglm.ingest.formats import get_format, header_regex
from loglm.ingest.params import entities_of, mask_params
from loglm.ingest.raw_text import RawTextReader
from loglm.ingest.readers import LineAccount, Rejection
from loglm.ingest.templates import TemplateMiner

HDFS_LINE = ("081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 "
             "src: /10.250.19.102:54106 dest: /10.250.19.102:50010")
BGL_LINE = ("- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 "
            "RAS KERNEL INFO instruction cache parity error corrected")


def test_hdfs_header_fields_and_time():
    reader = RawTextReader(get_format("hdfs"))
    rec = reader.parse_line(HDFS_LINE.encode(), "f.log", 1)
    assert not isinstance(rec, Rejection)
    assert rec.content.startswith("Receiving block blk_-1608999687919862906")
    assert rec.ts == pytest.approx(1226262918.0)  # 2008-11-09 20:35:18 UTC


def test_bgl_header_label_and_node_entity():
    reader = RawTextReader(get_format("bgl"))
    rec = reader.parse_line(BGL_LINE.encode(), "bgl.log", 7)
    assert rec.label == "-"
    assert rec.header_entities == {"hostname": "R02-M1-N0-C:J12-U11"}
    assert rec.content == "instruction cache parity error corrected"
    alert = reader.parse_line(("KERNDTLB" + BGL_LINE[1:]).encode(), "bgl.log", 8)
    assert alert.label == "KERNDTLB"


def test_user_header_regex():
    rx = header_regex("<Month> <Day> <Time> <Host> <Component>: <Content>")
    m = rx.match("Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user webmaster from 173.234.31.186")
    assert m and m["Host"] == "LabSZ" and m["Content"].startswith("Invalid user")


@pytest.mark.parametrize("raw,reason", [
    (b"\xff\xfe garbage", "undecodable bytes"),
    (b"", "empty line"),
    (b"not a log line at all", "header does not match"),
    (b"081199 253518 143 INFO dfs.X: hello", "bad timestamp"),
    (b"081109 203518 143 INFO dfs.X: a\x00b", "NUL byte"),
    (b"081109 203518 143 INFO dfs.X: " + b"a" * 200, "line too long"),
])
def test_bad_lines_are_rejected_with_reason(raw, reason):
    item = RawTextReader(get_format("hdfs"), max_line_bytes=128).parse_line(raw, "bad.log", 3)
    assert isinstance(item, Rejection)
    assert item.reason.startswith(reason) and item.line_no == 3 and item.source == "bad.log"


def test_reader_accounts_for_every_line(tmp_path):
    path = tmp_path / "mixed.log.gz"
    with gzip.open(path, "wb") as fh:
        fh.write((HDFS_LINE + "\n").encode() * 5 + b"\xff\n" + b"junk\n" + b"\n")
    acct = LineAccount()
    items = list(RawTextReader(get_format("hdfs")).read(path, acct))
    assert acct.read == 8 == len(items)
    assert acct.accepted == 5 and acct.rejected == 3
    assert sum(acct.reasons.values()) == 3


def test_typed_parameters_and_entities():
    masked, params = mask_params("Received block blk_-42 of size 67108864 from /10.251.91.84 user=alice")
    assert masked == "Received block <block_id> of size <num> from <ip> user=alice"
    assert params["block_id"] == ["blk_-42"] and params["ip"] == ["10.251.91.84"] and "num" not in params
    ents = entities_of(params)
    assert ents == {"block_id": ["blk_-42"], "ip": ["10.251.91.84"], "user": ["alice"]}
    masked, params = mask_params("BLOCK* NameSystem.allocateBlock: /mnt/hadoop/job_1/job.jar. blk_7")
    assert masked == "BLOCK* NameSystem.allocateBlock: <path> <block_id>"


def test_miner_groups_generalises_and_keeps_ids_stable():
    miner = TemplateMiner(sim_threshold=0.5)
    a = miner.add("PacketResponder <num> for block <block_id> terminating")
    b = miner.add("Verification succeeded for <block_id>")
    c = miner.add("PacketResponder <num> for block <block_id> closing")  # differs in one token
    assert a == c != b
    assert miner.templates[a].text == "PacketResponder <num> for block <block_id> <*>"
    state = miner.state()
    again = TemplateMiner.from_state(state)
    assert again.match("PacketResponder <num> for block <block_id> whatever") == a
    assert again.match("Verification succeeded for <block_id>") == b
    assert again.match("Something never seen before in training") is None
    new = again.add("Something never seen before in training")
    assert new == len(state["templates"])  # old ids untouched, new one appended


def test_miner_template_cap_is_a_clear_error():
    miner = TemplateMiner(max_templates=2)
    miner.add("a b")
    miner.add("c d e")
    with pytest.raises(OverflowError, match="max_templates"):
        miner.add("f g h i")


def test_a_namespace_keeps_programs_apart_and_groups_within_one_as_before():
    """Messages carrying the program that wrote them (``with_namespace``): one message from two programs is two
    templates; within one program messages group exactly as they do without a namespace (the namespace is in
    the group key and carries no weight in the similarity); it survives a save and load and is shown as
    ``program: message``."""
    from loglm.ingest.templates import shown, with_namespace

    msgs = ["Accepted password for <*> from <ip>", "Failed password for root from <ip>",
            "session opened for user root by (uid=<num>)", "session opened for user bob by (uid=<num>)",
            "Started foo", "Stopped foo"]
    plain = TemplateMiner()
    ids = [plain.add(m) for m in msgs]
    for program in ("sshd", "python3"):  # a program's digits do not make it a variable
        miner = TemplateMiner()
        assert [miner.add(with_namespace(program, m)) for m in msgs] == ids
        assert [t.text for t in miner.templates] == [f"{program}: {t.text}" for t in plain.templates]
    miner = TemplateMiner()
    a, b = miner.add(with_namespace("sshd", msgs[2])), miner.add(with_namespace("su", msgs[2]))
    assert a != b and miner.match(with_namespace("login", msgs[2])) is None and miner.match(msgs[2]) is None
    loaded = TemplateMiner.from_state(miner.state())
    assert loaded.match(with_namespace("su", msgs[2])) == b and loaded.templates[b].text.startswith("su: session")
    assert with_namespace("my prog", "x") == "my_prog\x1fx" and shown("my_prog\x1fx") == "my_prog: x"


def test_prepared_data_knows_when_it_is_stale(tmp_path):
    """A prepared folder records its inputs and settings; a changed input or setting is named, and pretrain
    refuses the stale folder before any work instead of training on it."""
    import os

    from conftest import compose
    from synthetic import synthetic_run_overrides

    from loglm.ingest.prepare import prepared_dir, stale_reason
    from loglm.ingest.prepare import run as prepare
    from loglm.training.job import start_run
    from loglm.training.pretrain import STAGE

    overrides = synthetic_run_overrides(tmp_path, 60, seed=2)
    cfg = compose("pretrain", overrides)
    prepare(cfg)
    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    assert stale_reason(data_dir, cfg) is None
    assert stale_reason(data_dir, compose("pretrain", overrides + ["data.eval_unit=event"])) is None  # reporting only
    changed = compose("pretrain", overrides + ["data.session.max_events=32"])
    assert "data.session.max_events" in stale_reason(data_dir, changed)
    # a program field each event carries (data.event_fields) reads lines anew; a format without one stays fresh
    assert "data.event_fields" in stale_reason(data_dir, compose("pretrain", overrides + ["data.event_fields=[Component]"]))
    assert stale_reason(data_dir, compose("pretrain", overrides + ["data.event_fields=[]"])) is None
    # the same file spelled another way (a repo's ../shared seen from elsewhere) is the same input; another is not
    (tmp_path / "sub").mkdir()
    spelled = compose("pretrain", overrides + [f"data.inputs=[{tmp_path}/sub/../train.log]"])
    assert stale_reason(data_dir, spelled) is None
    (tmp_path / "other.log").write_text((tmp_path / "train.log").read_text())
    other = compose("pretrain", overrides + [f"data.inputs=[{tmp_path}/other.log]"])
    assert "data.inputs" in stale_reason(data_dir, other)
    log = tmp_path / "train.log"
    with open(log, "a") as fh:
        fh.write("081109 203615 148 INFO dfs.DataNode$PacketResponder: one more line for blk_1\n")
    os.utime(log, ns=(log.stat().st_atime_ns, log.stat().st_mtime_ns + 10**9))
    assert "inputs changed" in stale_reason(data_dir, cfg) and str(log.resolve()) in stale_reason(data_dir, cfg)
    with pytest.raises(ValueError, match="inputs changed.*prepare it again"):
        start_run(cfg, STAGE)
    prepare(cfg)
    assert stale_reason(data_dir, cfg) is None
    # a copy, a checkout or a re-mount moves a file's modification time and keeps its bytes: still this folder's
    # (its contents' digest was recorded at prepare); the same size with other bytes is not
    os.utime(log, ns=(log.stat().st_atime_ns, log.stat().st_mtime_ns + 5 * 10**9))
    assert stale_reason(data_dir, cfg) is None
    text = log.read_text()
    log.write_text(text.replace("one more line", "one more LINE"))
    os.utime(log, ns=(log.stat().st_atime_ns, log.stat().st_mtime_ns + 10**9))
    assert log.stat().st_size == len(text.encode()) and "inputs changed" in stale_reason(data_dir, cfg)
    # a folder prepared before digests were recorded judges by size and time alone, as before
    import json

    manifest = json.loads((data_dir / "MANIFEST.json").read_text())
    del manifest["summary"]["fingerprint"]["contents"]
    (data_dir / "MANIFEST.json").write_text(json.dumps(manifest))
    log.write_text(text)
    assert "inputs changed" in stale_reason(data_dir, cfg)
    prepare(cfg)
    assert stale_reason(data_dir, cfg) is None
    # a folder written by a LogLM whose prepared layout differs (older events.parquet) is stale too
    manifest = json.loads((data_dir / "MANIFEST.json").read_text())
    manifest["summary"]["fingerprint"]["config"]["layout"] = 1
    (data_dir / "MANIFEST.json").write_text(json.dumps(manifest))
    assert "layout 1, now 3" in stale_reason(data_dir, cfg)


def test_templates_come_from_training_lines_only(tmp_path):
    """Templates first seen in validation or test lines are not mined into the vocabulary artifact, and a
    training line maps to the same template at prepare time and when a frozen miner reads it at detection."""
    import json

    import pyarrow.parquet as pq
    from conftest import compose
    from synthetic import make_log

    from loglm.ingest.prepare import prepared_dir
    from loglm.ingest.prepare import run as prepare
    from loglm.vocab import Vocabulary

    lines, _ = make_log(120, seed=5, anomalies={i: "unseen" for i in range(100, 120, 3)})  # late blocks: test
    log = tmp_path / "app.log"
    log.write_text("\n".join(lines) + "\n")
    cfg = compose("prepare", [f"paths.root={tmp_path}/runs", "data.name=late_unseen", f"data.inputs=[{log}]",
                              "data.anomalous_ids=null", "data.split.method=chronological", "data.train_normal_only=false"])
    prepare(cfg)
    data_dir = prepared_dir(cfg.paths.root, "late_unseen")
    vocab = Vocabulary.load(data_dir / "vocab.json")
    texts = [t.text for t in vocab.miner.templates]
    assert not any("Connection reset by peer" in t for t in texts)  # only in test lines: not a template
    ev = pq.read_table(data_dir / "events.parquet", columns=["raw", "template"]).to_pylist()
    unseen = [e for e in ev if "Connection reset by peer" in e["raw"]]
    assert unseen and all(e["template"] == -1 for e in unseen)  # [UNK], as detection reads them
    sessions = pq.read_table(sorted((data_dir / "sessions").glob("*.parquet"))[0]).to_pylist()
    train_ids = sorted({j for s in sessions if s["split"] == "train" for j in s["event_idx"]})
    assert len(vocab.miner.templates) == len({ev[j]["template"] for j in train_ids})  # every template is a training one
    from loglm.ingest.formats import get_format
    from loglm.ingest.params import mask_params
    from loglm.ingest.raw_text import RawTextReader

    reader = RawTextReader(get_format("hdfs"))
    for j in train_ids[:300]:  # detection reads a training line as prepare did
        rec = reader.parse_line(ev[j]["raw"].encode(), "x", 1)
        assert vocab.miner.match(mask_params(rec.content)[0]) == ev[j]["template"]
    assert json.loads((data_dir / "MANIFEST.json").read_text())["summary"]["templates_mined"] == len(texts)


def test_a_failed_re_prepare_keeps_the_previous_dataset(tmp_path, monkeypatch):
    from conftest import compose
    from synthetic import synthetic_run_overrides

    from loglm.artifacts import verify_manifest
    from loglm.ingest import partitioned
    from loglm.ingest.prepare import prepared_dir
    from loglm.ingest.prepare import run as prepare

    cfg = compose("prepare", synthetic_run_overrides(tmp_path, 40, seed=3))
    prepare(cfg)
    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    before = verify_manifest(data_dir)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(partitioned, "write_events", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare(cfg)
    assert verify_manifest(data_dir) == before  # the good dataset is untouched
    assert [p.name for p in data_dir.parent.iterdir()] == [data_dir.name]  # and no half-written folder is left


def test_a_named_pipe_is_read_as_an_input(tmp_path):
    import os
    import threading

    from synthetic import make_log

    from loglm.config import DataConfig
    from loglm.ingest.prepare import parse_inputs
    from loglm.ingest.templates import TemplateMiner

    lines, _ = make_log(5, seed=1)
    fifo = tmp_path / "ship.pipe"
    os.mkfifo(fifo)

    def ship():
        with open(fifo, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    t = threading.Thread(target=ship)
    t.start()
    parsed = parse_inputs([str(fifo)], DataConfig(format="hdfs"), TemplateMiner(), frozen=False)
    t.join(10)
    assert parsed.account.accepted == len(lines)
