from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import compose

from loglm.privacy import Pseudonymizer
from loglm.tracking import loggable_params


def test_secret_like_keys_are_scrubbed_from_params():
    cfg = compose("pretrain", ["+logger.tags.api_key=abc123", "+logger.tags.team=soc", "+logger.tags.db_password=hunter2"])
    params = loggable_params(cfg)
    assert params["logger.tags.api_key"] == "***" and params["logger.tags.db_password"] == "***"
    assert params["logger.tags.team"] == "soc"
    assert "hunter2" not in json.dumps(params) and "abc123" not in json.dumps(params)


def test_secrets_stay_out_of_tags_and_config_files():
    from omegaconf import OmegaConf

    from loglm.tracking import config_yaml, run_tags

    cfg = compose("pretrain", ["+logger.tags.api_key=abc123", "+logger.tags.team=soc",
                               "+data.fields={token: tok, ts: time}"])
    tags = run_tags(cfg)
    assert tags["api_key"] == "***" and tags["team"] == "soc"
    written = config_yaml(cfg).decode()
    assert "abc123" not in written and OmegaConf.create(written).logger.tags.api_key == "***"
    assert OmegaConf.create(written).data.fields == {"token": "tok", "ts": "time"}  # a column map is no secret
    # a count of tokens is a setting, not a credential: config.yaml next to a model must load back as written
    assert OmegaConf.create(written).detect.max_batch_tokens == cfg.detect.max_batch_tokens
    assert run_tags(compose("pretrain", ["+logger.tags.hf_token=xyz"]))["hf_token"] == "***"


def test_pseudonymisation_covers_templates_ipv6_users_and_rejection_reasons():
    p = Pseudonymizer(b"k" * 32, ["ip", "src_ip", "user", "hostname"])
    alert = {"entity": {"type": "src_ip", "value": "10.0.0.7"}, "entities": {"src_ip": ["10.0.0.7"]},
             "session_id": "10.0.0.7@w1", "title": "Unusual event sequence for src_ip 10.0.0.7",
             "surprising_events": [{"raw": "Failed password for user alice from 2001:db8::7 port 22",
                                    "template": "Failed password for user alice from 2001:db8::7 port <num>",
                                    "expected": [{"template": "session opened for user root by uid=0", "p": 0.4}]}]}
    out = json.dumps(p.alert(alert))
    for secret in ("10.0.0.7", "alice", "2001:db8::7", "root"):
        assert secret not in out, secret
    assert p.token("user", "alice") in out and p.token("ip", "2001:db8::7") in out
    reason = p.scrub("bad timestamp: 'fe80::1%eth0 user=mallory 192.168.1.9'")
    assert "mallory" not in reason and "fe80" not in reason and "192.168.1.9" not in reason
    assert p.scrub("12:00:01 at 10:30") == "12:00:01 at 10:30"  # clock times are not addresses


def test_pseudonyms_are_keyed_and_stable():
    a = Pseudonymizer(b"k" * 32, ["ip"])
    b = Pseudonymizer(b"j" * 32, ["ip"])
    assert a.token("ip", "10.0.0.1") == a.token("ip", "10.0.0.1") != a.token("ip", "10.0.0.2")
    assert a.token("ip", "10.0.0.1") != b.token("ip", "10.0.0.1")
    assert a.text("from /10.0.0.1:50010 to 10.0.0.12", {"ip": ["10.0.0.1", "10.0.0.12"]}).count("ip~") == 2
    with pytest.raises(ValueError):
        Pseudonymizer(b"short", ["ip"])


@pytest.mark.slow
def test_pseudonymised_alerts_hide_entities_but_stay_correlatable(tmp_path, monkeypatch):
    from synthetic import make_log

    from loglm.detect.detector import run as detect
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    lines, _ = make_log(120, seed=4)
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    cfg = compose("pretrain", [f"paths.root={tmp_path}", "model=tiny", "data.name=s", f"data.inputs=[{log}]",
                               "data.anomalous_ids=null", "data.split.method=seeded", "trainer.max_epochs=2",
                               "trainer.progress_bar=false", "detect.target_fpr=0.5"])
    prepare(cfg)
    model = pretrain(cfg)
    new, _ = make_log(30, seed=11, anomalies={2: "unseen"})
    live = tmp_path / "live.log"
    live.write_text("\n".join(new) + "\n")
    pseudo_cfg = replace(cfg.detect, pseudonymize=True)
    with pytest.raises(ValueError, match="LOGLM_PSEUDONYM_KEY"):
        detect(replace(cfg, ckpt=model["run_id"], inputs=[str(live)], out=str(tmp_path / "x.jsonl"), detect=pseudo_cfg))
    monkeypatch.setenv("LOGLM_PSEUDONYM_KEY", "a-deployment-secret-of-32-bytes!")
    runs = []
    for name in ("one", "two"):
        s = detect(replace(cfg, ckpt=model["run_id"], inputs=[str(live)], out=str(tmp_path / f"{name}.jsonl"),
                           detect=pseudo_cfg))
        runs.append([json.loads(x) for x in open(s["alerts_path"])])
    text = (tmp_path / "one.jsonl").read_text()
    ips = {ip for line in new for ip in __import__("re").findall(r"10\.250\.\d+\.\d+", line)}
    assert runs[0] and not any(ip in text for ip in ips)  # no IP survives, in entities or raw lines
    assert all(v.startswith("ip~") for a in runs[0] for v in a["entities"].get("ip", []))
    assert [a["entities"] for a in runs[0]] == [a["entities"] for a in runs[1]]  # stable: still correlatable
    assert runs[0][0]["entity"]["type"] == "block_id" and runs[0][0]["entity"]["value"].startswith("blk_")


def fake_bundle(folder):
    from loglm.artifacts import atomic_write_json, write_manifest
    from loglm.engine.runtime import BUNDLE_FORMAT

    folder.mkdir()
    atomic_write_json(folder / "bundle.json", {"format": BUNDLE_FORMAT})
    (folder / "model.onnx").write_bytes(b"onnx")
    write_manifest(folder)
    return folder


def test_export_refuses_a_folder_it_did_not_write_and_deletes_nothing(tmp_path):
    from loglm.export.writer import check_replaceable, replace_folder

    user = tmp_path / "v"
    user.mkdir()
    (user / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        check_replaceable(user)
    new = fake_bundle(tmp_path / "new")
    with pytest.raises(ValueError, match="notes.txt"):
        replace_folder(new, user)
    assert (user / "notes.txt").read_text() == "x" and (new / "model.onnx").is_file()
    (tmp_path / "plain").write_text("y")  # a file where the folder would go
    with pytest.raises(ValueError, match="not a folder"):
        check_replaceable(tmp_path / "plain")
    check_replaceable(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")


def test_export_replaces_its_own_bundle_but_not_files_added_to_it(tmp_path):
    from loglm.export.writer import check_replaceable, replace_folder

    out = fake_bundle(tmp_path / "b")
    replace_folder(fake_bundle(tmp_path / "b2"), out)  # a bundle LogLM wrote: replaced
    assert (out / "bundle.json").is_file() and not (tmp_path / "b2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the old bundle is gone, nothing left over
    (out / "alerts").mkdir()
    (out / "alerts" / "detect.jsonl").write_text("{}\n")  # alerts written into the bundle by `loglm detect`
    with pytest.raises(ValueError, match="alerts/detect.jsonl"):
        check_replaceable(out)
    (out / "alerts" / "detect.jsonl").unlink()
    (out / ".hidden").write_text("z")  # hidden files are not part of a bundle either
    with pytest.raises(ValueError, match=".hidden"):
        check_replaceable(out)


def _open_store(root: str, barrier) -> str:
    from conftest import compose

    from loglm import tracking

    cfg = compose("pretrain", [f"paths.root={root}"])
    barrier.wait()
    return tracking.ensure_experiment(cfg, "loglm-pretrain")


def test_jobs_started_together_on_a_fresh_store_do_not_race(tmp_path):
    """Two jobs opening a fresh sqlite store at the same moment: one creates the schema and the experiment
    while the other waits on the lock (before: `duplicate column name: client_request_id`)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for attempt in range(1):
        root = str(tmp_path / f"root{attempt}")
        barrier = ctx.Manager().Barrier(3)
        with ctx.Pool(3) as pool:
            ids = pool.starmap(_open_store, [(root, barrier)] * 3)
        assert len(set(ids)) == 1, ids


def test_outputs_are_readable_by_the_group_as_new_files_would_be(tmp_path):
    """Alerts and artifacts were written 0600 (mkstemp), so another service user could not read them."""
    import os

    from loglm.artifacts import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
