"""The analyst's loop on a tiny model of controlled raw logs: embeddings (torch and ONNX agree), similar
sequences, few-shot kinds, ATT&CK context, feedback -> tune -> promote -> rollback through the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, compose
from synthetic import make_log, synthetic_run_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A tiny model trained on normal blocks, exported and promoted to champion."""
    from loglm.analyst import registry
    from loglm.export.writer import run as export
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    root = tmp_path_factory.mktemp("analyst")
    cfg = compose("tune", synthetic_run_overrides(root, 240, seed=8) + [
        "data.split.train_frac=0.7", "data.split.val_frac=0.3", "trainer.max_epochs=8", "trainer.batch_size=32",
        "trainer.lr=0.003", "detect.top_k=1", "export.quantize=false"])
    prepare(cfg)
    model = pretrain(cfg)
    bundle = export(replace(cfg, ckpt=model["run_id"]))
    # the test suite's validation split is too small for 1 % (debug=tests warns): promoting needs consent
    registry.promote(cfg.export.registry_name, bundle["registry"]["version"], cfg.paths.root, accept_warning=True)
    return cfg, model, bundle


def alerts_of(cfg, log: Path, folder: Path):
    """A function: model -> the session ids it alerts on in ``log`` (each call its own alerts file)."""
    from loglm.detect.detector import run as detect

    def alerted(ckpt: str) -> set[str]:
        out = folder / f"alerts-{len(list(folder.glob('alerts-*')))}.jsonl"
        detect(replace(cfg, ckpt=ckpt, inputs=[str(log)], out=str(out)))
        return {json.loads(x)["session_id"] for x in out.read_text().splitlines()}

    return alerted


def write_log(path: Path, n: int, seed: int, anomalies: dict) -> dict:
    lines, kinds = make_log(n, seed=seed, anomalies=anomalies)
    path.write_text("\n".join(lines) + "\n")
    return kinds


def test_embeddings_torch_and_onnx_agree_and_search_finds_the_same_kind(deployed, tmp_path):
    from loglm.analyst.embed import read_embeddings
    from loglm.analyst.search import VectorIndex, similar_sessions
    from loglm.detect.detector import run as detect

    cfg, model, bundle = deployed
    assert bundle["parity"]["fp32"]["min_embedding_cosine"] > 0.999  # export checks the vectors too
    assert bundle["parity"]["fp32"]["min_event_vector_cosine"] > 0.999
    log = tmp_path / "new.log"
    kinds = write_log(log, 90, 31, {i: ("swap" if i % 2 else "unseen") for i in range(10, 90, 5)})
    torch_out = tmp_path / "torch.parquet"
    proc = subprocess.run([sys.executable, "-m", "pipelines.embed", f"paths.root={cfg.paths.root}",
                           f"ckpt={model['model_dir']}", f"inputs=[{log}]", f"out={torch_out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    onnx_out = tmp_path / "onnx.parquet"
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "embed", "--bundle", bundle["bundle"], "--out",
                           str(onnx_out), str(log)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tm, tv = read_embeddings(torch_out)
    om, ov = read_embeddings(onnx_out)
    assert tm.column("session_id").to_pylist() == om.column("session_id").to_pylist() and len(tv) == 90
    assert np.allclose(np.linalg.norm(tv, axis=1), 1, atol=1e-5)
    assert float((tv * ov).sum(1).min()) > 0.999  # the same session vectors from torch and the engine
    # the nearest neighbours of an anomalous session are mostly sessions of its own kind
    sids = tm.column("session_id").to_pylist()
    hits = []
    for sid, kind in kinds.items():
        near = similar_sessions(tm, tv, sid, k=3)
        assert sid not in {n["session_id"] for n in near} and near[0]["similarity"] >= near[-1]["similarity"]
        hits += [kinds.get(n["session_id"]) == kind for n in near]
    assert np.mean(hits) > 0.6, hits
    assert VectorIndex(tv).kind == "exact"  # a small set is searched exactly
    assert len(sids) == len(set(sids))
    # detection with a few-shot kinds file labels each alert with the closest kind
    examples = tmp_path / "examples.csv"
    first = {}
    for sid, kind in kinds.items():
        first.setdefault(kind, []).append(sid)
    examples.write_text("session_id,kind\n" + "".join(f"{s},{'SSH-Patator' if k == 'swap' else 'crash'}\n"
                                                      for k, v in first.items() for s in v[:2]))
    kinds_file = tmp_path / "kinds.json"
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "kinds", "fit", "--embeddings", str(torch_out),
                           "--examples", str(examples), "--min-confidence", "0.0", "--out", str(kinds_file)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "alerts.jsonl"
    detect(replace(cfg, ckpt=model["model_dir"], inputs=[str(log)], out=str(out),
                   detect=replace(cfg.detect, kinds=str(kinds_file))))
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    labelled = [(a["kind"]["name"], kinds[a["session_id"]]) for a in alerts if a["session_id"] in kinds]
    assert len(labelled) == len(kinds)
    assert np.mean([got == ("SSH-Patator" if want == "swap" else "crash") for got, want in labelled]) > 0.8
    # a kind with known techniques gives them; the OCSF finding carries them (validated in test_findings)
    ssh = next(a for a in alerts if a["kind"]["name"] == "SSH-Patator")
    assert ssh["attacks"][0]["id"] == "T1110.001" and ssh["attacks"][0]["source"] == "kind"
    findings = [json.loads(x) for x in out.with_suffix(".ocsf.jsonl").read_text().splitlines()]
    assert any(a.get("sub_technique", {}).get("uid") == "T1110.001" for f in findings
               for a in f["finding_info"].get("attacks", []))
    # the same examples through logistic regression (--method logreg): a numpy-only kinds file
    from loglm.analyst.fewshot import FewShot

    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "kinds", "fit", "--embeddings", str(torch_out),
                           "--examples", str(examples), "--min-confidence", "0.0", "--method", "logreg",
                           "--out", str(tmp_path / "kinds_lr.json")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lr = FewShot.load(tmp_path / "kinds_lr.json")
    meta, vecs = read_embeddings(torch_out)
    row = {s: i for i, s in enumerate(meta.column("session_id").to_pylist())}
    got = lr.predict(vecs[[row[s] for s in kinds]])[0]
    assert lr.method == "logreg" and np.mean([g == ("SSH-Patator" if k == "swap" else "crash")
                                              for g, k in zip(got, kinds.values())]) > 0.8


def test_feedback_tune_promote_rollback(deployed, tmp_path, capsys):
    """Benign drift: the environment's normal blocks now report 'terminating' before 'received' (the swap).
    The champion alerts on them; analysts mark some benign; tuning on the new traffic plus those verdicts
    gives a candidate that alerts on far fewer of them and still catches blocks with an exception; promote
    makes it champion; rollback brings version 1 back."""
    from loglm.analyst import feedback as fb
    from loglm.analyst import registry
    from loglm.analyst.tune import run as tune
    from loglm.detect.detector import run as detect

    cfg, model, bundle = deployed
    name = cfg.export.registry_name
    drift = tmp_path / "drift.log"
    write_log(drift, 240, 41, {i: "swap" for i in range(0, 240, 2)})
    fresh = tmp_path / "fresh.log"
    kinds = write_log(fresh, 120, 42, {**{i: "swap" for i in range(0, 120, 2)}, **{i: "unseen" for i in range(1, 120, 10)}})
    swapped = {s for s, k in kinds.items() if k == "swap"}
    crashed = {s for s, k in kinds.items() if k == "unseen"}

    alerted = alerts_of(cfg, fresh, tmp_path)
    before = alerted("models:/loglm-detector@champion")
    assert len(before & swapped) > 0.5 * len(swapped) and crashed <= before
    # an analyst marks 10 swap alerts of the drift traffic benign (through the CLI)
    drift_alerts = tmp_path / "drift-alerts.jsonl"
    detect(replace(cfg, ckpt=model["model_dir"], inputs=[str(drift)], out=str(drift_alerts)))
    table = tmp_path / "feedback.jsonl"
    for a in fb.load_alerts(drift_alerts)[:10]:
        proc = subprocess.run([sys.executable, "-m", "loglm.cli", "feedback", "--alerts", str(drift_alerts),
                               "--alert-id", a["alert_id"], "--verdict", "benign", "--table", str(table)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert len(fb.read(table)) == 10
    result = tune(replace(cfg, ckpt="models:/loglm-detector@champion", inputs=[str(drift)],
                          tune=replace(cfg.tune, feedback=str(table), max_epochs=6, lr=0.002)))
    assert result["feedback"] == {"benign": 10, "malicious": 0}
    # the drift blocks the champion alerts on and no verdict covers are counted and warned about: tuning
    # takes them as normal (here rightly: the drift is benign; on traffic under attack it would learn the attack)
    unvetted = result["unvetted_alerting"]
    assert unvetted["sessions"] == 230 and unvetted["alerting"] > 20, unvetted
    assert f"the model alerts on {unvetted['alerting']:,} of the 230 sessions" in capsys.readouterr().err
    candidate = result["export"]["registry"]["version"]
    assert candidate != bundle["registry"]["version"]
    after = alerted(f"models:/{name}/{candidate}")
    print(f"drift alerts before/after tuning: {len(before & swapped)}/{len(after & swapped)} of {len(swapped)}; "
          f"exception blocks caught {len(crashed & before)}/{len(crashed & after)} of {len(crashed)}")
    assert len(after & swapped) < 0.5 * len(before & swapped), (len(before & swapped), len(after & swapped))
    assert crashed <= after  # the exception blocks are still caught (never-seen events stay [UNK])
    # promote, then roll back: champion resolves to each version's bundle in turn. The candidate's threshold
    # comes from too few validation blocks for 1 %: promote refuses it until the warning is accepted
    listed = {v["version"]: v for v in registry.versions(name, cfg.paths.root)}
    assert "cannot calibrate" in listed[candidate]["tags"]["calibration_warning"], listed[candidate]["tags"]
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "model", "promote", "--root", str(cfg.paths.root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not trustworthy" in proc.stderr and "--accept-calibration-warning" in proc.stderr
    champion = [v["version"] for v in registry.versions(name, cfg.paths.root) if "champion" in v["aliases"]]
    assert champion == [bundle["registry"]["version"]]  # nothing moved
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "model", "promote", "--accept-calibration-warning",
                           "--root", str(cfg.paths.root)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    moved = json.loads(proc.stdout)
    assert moved["champion"] == candidate and moved["previous"] == bundle["registry"]["version"]
    def champion_run() -> str:  # the registered copy of the bundle (the export run's artifact)
        folder = registry.resolve(f"models:/{name}@champion", cfg.paths.root)
        return json.loads((folder / "bundle.json").read_text())["run_id"]

    assert champion_run() == result["run_id"]
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "model", "rollback", "--to",
                           bundle["registry"]["version"], "--root", str(cfg.paths.root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["previous"] == candidate
    assert champion_run() == model["run_id"]
    history = [v for v in registry.versions(name, cfg.paths.root) if "champion" in v["aliases"]]
    assert [v["version"] for v in history] == [bundle["registry"]["version"]]
    moves = json.loads(registry.client_for(cfg.paths.root).get_registered_model(name).tags["champion_history"])
    assert [m["action"] for m in moves][-2:] == ["promote (calibration warning accepted)", "rollback"]


def test_tune_grows_the_vocabulary_with_a_new_normal_operation(deployed, tmp_path):
    """Benign drift with a new event type: blocks are now re-replicated, two templates training never saw.
    Without growth they stay [UNK] and tuning cannot help; with tune.grow_vocab the new templates become
    tokens after the old ones (old ids unchanged), the tuned model stops alerting on replicated blocks and
    still catches the exception blocks, whose template the tuning traffic never held."""
    from loglm.analyst.tune import run as tune
    from loglm.model.store import load_model

    cfg, model, bundle = deployed
    drift = tmp_path / "drift.log"
    write_log(drift, 200, 51, {i: "replicate" for i in range(0, 200, 2)})
    fresh = tmp_path / "fresh.log"
    kinds = write_log(fresh, 120, 52, {**{i: "replicate" for i in range(0, 120, 2)},
                                       **{i: "unseen" for i in range(1, 120, 10)},
                                       **{i: "cut" for i in range(5, 120, 10)}})
    replicated = {s for s, k in kinds.items() if k == "replicate"}
    crashed = {s for s, k in kinds.items() if k == "unseen"}
    cut = {s for s, k in kinds.items() if k == "cut"}

    alerted = alerts_of(cfg, fresh, tmp_path)
    assert replicated <= alerted(model["model_dir"])  # [UNK] to the source model
    runs = {}
    for grow in (False, True):
        runs[grow] = tune(replace(cfg, ckpt=model["model_dir"], inputs=[str(drift)],
                                  tune=replace(cfg.tune, grow_vocab=grow, max_epochs=6, lr=0.002, export=False)))
    source = load_model(model["model_dir"])
    fixed, grown = load_model(runs[False]["model_dir"]), load_model(runs[True]["model_dir"])
    assert fixed.vocab.size == source.vocab.size and runs[False]["vocab_growth"] is None
    growth = runs[True]["vocab_growth"]
    assert growth["new_tokens"] == 2 and grown.vocab.size == source.vocab.size + 2, growth
    assert any("to replicate" in x for x in growth["examples"]) and not any("exception" in x for x in growth["examples"])
    n = len(source.vocab.template_ids)
    assert grown.vocab.template_ids[:n] == source.vocab.template_ids
    assert all(grown.vocab.token_text(t) == source.vocab.token_text(t) for t in range(source.vocab.size))
    assert grown.encoder.cfg.vocab_size == grown.vocab.size
    fixed_alerts, grown_alerts = alerted(runs[False]["model_dir"]), alerted(runs[True]["model_dir"])
    print(f"replicated blocks alerted: fixed vocabulary {len(fixed_alerts & replicated)}, grown "
          f"{len(grown_alerts & replicated)} of {len(replicated)}; exception blocks caught: fixed "
          f"{len(fixed_alerts & crashed)}, grown {len(grown_alerts & crashed)} of {len(crashed)}; cut blocks: "
          f"fixed {len(fixed_alerts & cut)}, grown {len(grown_alerts & cut)} of {len(cut)}; thresholds "
          f"{runs[False]['threshold']['after']:.3f}, {runs[True]['threshold']['after']:.3f}")
    # without growth half the new validation windows hold [UNK]: the threshold climbs into the unseen-event
    # alarm band (above 1), where only [UNK] windows can alert
    assert runs[False]["threshold"]["after"] > 1 > runs[True]["threshold"]["after"]
    # ~60 validation blocks cannot calibrate a 1% target: the result says so
    assert "cannot calibrate" in runs[True]["calibration_warning"] and runs[True]["validation_items"] < 99
    # blocks cut short (4 events, every training block has 13) alarm either way (detect.short_alarm); before
    # that rule the fixed vocabulary's threshold in the alarm band missed them (the 2 not caught, blocks 105 and 115, end
    # within idle_close_s of the input's end: not closed, so not known to be short)
    assert len(fixed_alerts & cut) >= 0.8 * len(cut) and len(grown_alerts & cut) >= 0.8 * len(cut)
    assert len(grown_alerts & replicated) < 0.2 * len(replicated)
    assert crashed <= grown_alerts


def test_vocabulary_growth_ignores_validation_and_malicious_sessions(deployed, tmp_path):
    """Only the new traffic's training sessions grow the vocabulary: a template seen only in sessions
    analysts marked malicious (or only in validation) stays [UNK].  Tuning's dataset is prepared out of core
    (prepare's partitioned stages): its manifest says what was kept out and grown."""
    import pyarrow.compute as pc

    from loglm.analyst.tune import prepare_with_vocab
    from loglm.detect.detector import with_model_data
    from loglm.model.store import load_model
    from loglm.shards import read_sessions

    cfg, model, _ = deployed
    log = tmp_path / "mixed.log"
    kinds = write_log(log, 60, 53, {**{i: "replicate" for i in range(0, 60, 3)}, **{i: "unseen" for i in range(1, 60, 6)}})
    loaded = load_model(model["model_dir"])
    tcfg = with_model_data(replace(cfg, inputs=[str(log)]), Path(model["model_dir"]))
    malicious = {s for s, k in kinds.items() if k == "unseen"}
    benign = sorted(s for s, k in kinds.items() if k == "replicate")[:3]

    def tuning_data(name: str, train_frac: float, val_frac: float, benign=benign):
        data = replace(tcfg.data, name=name, inputs=[str(log)], anomalous_ids=None, train_normal_only=False,
                       split=replace(tcfg.data.split, method="seeded", train_frac=train_frac, val_frac=val_frac,
                                     test_from=None))
        return prepare_with_vocab(replace(tcfg, data=data, paths=replace(tcfg.paths, root=str(tmp_path))),
                                  loaded, set(benign), malicious)

    out, summary = tuning_data("tune-mixed", 0.8, 0.2)
    growth = summary["vocab_growth"]
    assert summary["feedback_malicious_sessions_kept_out"] == len(malicious)
    assert summary["spill_partitions"] >= 1 and "stage_s" in summary  # read by prepare's out-of-core stages
    assert growth["new_tokens"] == 2 and not any("exception" in x for x in growth["examples"]), growth
    table = read_sessions(out)
    split = dict(zip(table.column("session_id").to_pylist(), table.column("split").to_pylist()))
    assert {split[s] for s in malicious} == {"excluded_malicious"} and {split[s] for s in benign} == {"train"}
    assert set(pc.unique(table.column("label")).to_pylist()) == {0}  # the new traffic is taken as normal
    # the source model's reading of the new traffic: the sessions it would alert on, unjudged ones only
    assert summary["unvetted_alerting"]["sessions"] == len(split) - len(malicious) - len(benign) == 47
    # every session in validation: the three blocks with a benign verdict still train and grow the two
    # replication templates; without them nothing grows
    assert tuning_data("tune-all-val", 0.0, 1.0)[1]["vocab_growth"]["new_tokens"] == 2
    assert tuning_data("tune-none", 0.0, 1.0, benign=[])[1]["vocab_growth"]["new_tokens"] == 0
    assert loaded.vocab.size == load_model(model["model_dir"]).vocab.size  # the model's own vocabulary untouched


def chromium() -> str | None:
    """The system Chromium (`make browser` installs it with apt), or None: Playwright's own Chromium
    (`make browser` falls back to `playwright install chromium` where apt cannot be used)."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        subprocess.run(["make", "-s", "browser"], cwd=ROOT, timeout=900)
        path = shutil.which("chromium") or shutil.which("chromium-browser")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_triage_page_in_a_real_browser(deployed, tmp_path):
    """Alerts ranked; an alert's page shows its raw lines, what the model expected, similar sequences and
    ATT&CK context; the Benign button records a verdict the table and the index page then show."""
    import time
    import urllib.error
    import urllib.request

    from playwright.sync_api import sync_playwright

    from loglm.analyst import feedback as fb
    from loglm.detect.detector import run as detect

    cfg, model, bundle = deployed
    log = tmp_path / "new.log"
    write_log(log, 60, 77, {5: "unseen", 15: "swap", 25: "unseen"})
    alerts_path = tmp_path / "alerts.jsonl"
    detect(replace(cfg, ckpt=model["model_dir"], inputs=[str(log)], out=str(alerts_path)))
    emb = tmp_path / "emb.parquet"
    subprocess.run([sys.executable, "-m", "loglm.cli", "embed", "--bundle", bundle["bundle"], "--out", str(emb),
                    str(log)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    table = tmp_path / "feedback.jsonl"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "loglm.cli", "triage", "--alerts", str(alerts_path),
                               "--embeddings", str(emb), "--feedback", str(table), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.25)
        alerts = sorted(fb.load_alerts(alerts_path), key=lambda a: -a["score"])
        from loglm.analyst.alert_vectors import AlertVectors
        from loglm.analyst.embed import read_embeddings
        from loglm.analyst.groups import group_alerts_file, groups_of

        own = AlertVectors(alerts_path)  # detection's vectors of the alerts, beside them
        assert own.refresh() and len(own.by_alert) == len(alerts)
        groups = groups_of(group_alerts_file(alerts, alerts_path, *read_embeddings(emb)))
        assert len(groups) < len(alerts)  # the log repeats its anomalies: some alerts share a group
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            rows = page.locator("tr[data-alert]")
            assert rows.count() == len(alerts) > 0
            assert rows.first.get_attribute("data-alert") == alerts[0]["alert_id"]  # ranked by score
            page.locator("tr[data-alert] a").first.click()
            page.wait_for_selector("tr.event")
            text = page.inner_text("body")
            first = alerts[0]
            assert first["surprising_events"][0]["template"].split()[0] in text
            assert "the model expected" in text and "ATT&CK context" in text
            assert page.locator("tr.similar").count() == 10  # nearest sessions from the embeddings
            assert page.locator("tr.similar td").nth(2).inner_text() in ("anomalous", "normal", "unlabelled")
            assert page.locator("#attacks a").count() == len(first.get("attacks", []))  # links, or "none"
            first_group = next(m for m in groups.values() if first["alert_id"] in m)
            assert (f"({len(first_group)}) alerts like this one" in text) == (len(first_group) > 1)
            page.screenshot(path=str(tmp_path / "triage.png"), full_page=True)
            page.fill("#note", "maintenance window")
            page.click("#benign")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('recorded')")
            page.goto(f"http://127.0.0.1:{port}/")
            assert page.locator("tr[data-alert] td.verdict").first.inner_text() == "benign"
            row = fb.read(table)[first["alert_id"]]
            # alert groups: one row per group, the largest judged at once from its page
            page.goto(f"http://127.0.0.1:{port}/groups")
            assert page.locator("tr[data-group]").count() == len(groups)
            lead = max(groups, key=lambda g: len(groups[g]))
            page.goto(f"http://127.0.0.1:{port}/group/{lead}")
            assert page.locator("tr.member").count() == len(groups[lead])
            page.click("#malicious")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('recorded')")
            assert page.inner_text("#status") == f"recorded: malicious for {len(groups[lead])} alerts"
            # a stream appends to the file the page is open on: the page says so, a reload shows them ranked
            page.goto(f"http://127.0.0.1:{port}/")
            assert page.inner_text("#live") == ""
            new = [dict(a, alert_id=f"new{i}", score=a["score"] * 10) for i, a in enumerate(alerts[:2])]
            original = alerts_path.read_text()
            with open(alerts_path, "a") as fh:
                fh.write("".join(json.dumps(a) + "\n" for a in new) + json.dumps(new[0])[:40])  # one being written
            page.wait_for_function("document.getElementById('live').textContent.startsWith('2 new alerts')",
                                   timeout=15_000)
            page.click("#live a")
            page.wait_for_selector("tr[data-alert='new0']")
            assert rows.count() == len(alerts) + 2 and rows.first.get_attribute("data-alert") == "new0"
            browser.close()
        alerts_path.write_text(original)  # the detection's own alerts again, for what follows
        verdicts = fb.read(table)
        assert all(verdicts[m]["verdict"] == "malicious" and verdicts[m]["group"] == lead for m in groups[lead])
        # another site cannot post a verdict through the analyst's browser, nor reach the page by another name
        def post(body: bytes, **headers):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/feedback", data=body, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        verdict = json.dumps({"alert_id": first["alert_id"], "verdict": "malicious"}).encode()
        before = table.read_text()
        assert post(verdict, **{"Content-Type": "text/plain"}) == 415  # a form-like post: no CORS preflight
        assert post(verdict, **{"Content-Type": "application/json", "Origin": "https://evil.example"}) == 403
        assert post(verdict, **{"Content-Type": "application/json", "Host": "evil.example"}) == 400  # DNS rebinding
        assert table.read_text() == before
        assert post(verdict, **{"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"}) == 200
        assert row["verdict"] == "benign" and row["note"] == "maintenance window" and row["session_id"] == first["session_id"]
        # the server listens on loopback only
        import socket

        addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None) if a[0] == socket.AF_INET}
        for addr in addrs - {"127.0.0.1"}:
            with pytest.raises(OSError):
                socket.create_connection((addr, port), timeout=1).close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    # the README's picture is taken the same way (`make screenshot`): the top alert's page, 1200 px wide
    from benchmarks.triage_screenshot import main as screenshot

    shot = screenshot(["--alerts", str(alerts_path), "--embeddings", str(emb), "--out", str(tmp_path / "shot.png")])
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 1200
    assert not (tmp_path / "shot.feedback.jsonl").exists()
    # the same group verdict from a shell (a SOAR playbook): any member's alert id names its group
    member = groups[lead][-1]
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "feedback", "--alerts", str(alerts_path), "--alert-id",
                           member, "--verdict", "benign", "--group", "--embeddings", str(emb), "--table",
                           str(tmp_path / "cli.jsonl")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(json.loads(proc.stdout)["alerts"]) == sorted(groups[lead])
    assert {r["group"] for r in fb.read(tmp_path / "cli.jsonl").values()} == {lead}


def test_detection_writes_each_alerts_vector_and_the_page_groups_and_searches_a_streams_alerts(deployed, tmp_path):
    """Batch and streaming detection write each alert's session vector beside the alerts (alerts.vectors.jsonl),
    the same vector pipelines.embed gives its session; the triage page then groups a stream's alerts with no
    embeddings file, and finds similar past sessions for alerts the embeddings file does not hold, but only
    when the file comes from the alerts' model."""
    from loglm.analyst import feedback as fb
    from loglm.analyst.alert_vectors import vectors_path
    from loglm.analyst.embed import embeddings_model, read_embeddings, torch_embed_fn
    from loglm.analyst.embed import run as embed
    from loglm.analyst.triage import Triage
    from loglm.detect.detector import run as detect
    from loglm.detect.detector import with_model_data
    from loglm.model.store import load_model

    cfg, model, bundle = deployed
    log = tmp_path / "new.log"
    write_log(log, 60, 77, {5: "unseen", 15: "swap", 25: "unseen", 35: "swap"})
    batch = tmp_path / "batch.jsonl"
    summary = detect(replace(cfg, ckpt=model["model_dir"], inputs=[str(log)], out=str(batch)))
    assert summary["vectors_path"] == str(vectors_path(batch))
    rows = [json.loads(x) for x in vectors_path(batch).read_text().splitlines()]
    alerts = fb.load_alerts(batch)
    # first the model's centre (its normal validation sessions' mean, kept in its calibration), then each alert's
    centre, rows = rows[0], rows[1:]
    assert centre["centre_of"] == model["run_id"] and centre["alert_id"] == ""
    assert np.allclose(centre["vector"], load_model(model["model_dir"]).calibration["embedding_centre"]["vector"])
    assert len(alerts) >= 4 and sorted(r["alert_id"] for r in rows) == sorted(a["alert_id"] for a in alerts)
    assert "_vector" not in batch.read_text()  # the alerts a SIEM reads carry no vectors
    loaded = load_model(model["model_dir"])
    emb = tmp_path / "emb.parquet"
    embed(replace(with_model_data(replace(cfg, inputs=[str(log)], out=str(emb)), Path(loaded.folder))), loaded,
          torch_embed_fn(loaded.encoder))
    meta, vectors = read_embeddings(emb)
    assert embeddings_model(meta) == model["run_id"] == alerts[0]["model"]["run_id"]
    row = {sid: i for i, sid in enumerate(meta.column("session_id").to_pylist())}
    for r in rows:  # detection's vector is embed's, for the same session
        assert float(np.dot(r["vector"], vectors[row[r["session_id"]]])) > 0.9999
    # a stream over the same log: its alerts have vectors too, grouped without any embeddings file
    stream = tmp_path / "stream.jsonl"
    detect(compose("detect", [f"paths.root={cfg.paths.root}", f"ckpt={model['model_dir']}", f"inputs=[{log}]",
                              f"out={stream}", "follow=true", "follow_exit_s=1", "detect.stream_idle_close_s=1"]))
    streamed = fb.load_alerts(stream)
    lines = vectors_path(stream).read_text().splitlines()
    assert len(streamed) >= 4 and len(lines) == len(streamed) + 1 and json.loads(lines[0]) == centre
    alone = Triage(stream, tmp_path / "fb.jsonl")  # no embeddings file: around the model's own centre
    assert alone.grouped and len(alone.groups) < len(streamed)
    assert "centred on the model's normal sessions' mean" in alone.index_page()
    member = next(m for members in alone.groups.values() if len(members) > 1 for m in members)
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "feedback", "--alerts", str(stream), "--alert-id",
                           member, "--verdict", "benign", "--group", "--table", str(tmp_path / "cli.jsonl")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # the same groups from a shell
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(json.loads(proc.stdout)["alerts"]) == sorted(alone.groups[alone.leader[member]])
    # a model calibrated before it kept a centre wrote none: no groups, and the page says what they need
    vectors_path(stream).write_text("".join(x + "\n" for x in lines[1:]))
    older = Triage(stream, tmp_path / "fb.jsonl")
    assert not older.grouped and len(older.groups) == len(streamed)
    assert "alert groups need a centre" in older.index_page()
    vectors_path(stream).write_text("".join(x + "\n" for x in lines))
    # an embeddings file of past sessions only: the stream's alerts are found by their own vectors
    past = tmp_path / "past.log"
    write_log(past, 40, 5, {})
    emb_past = tmp_path / "past.parquet"
    embed(replace(with_model_data(replace(cfg, inputs=[str(past)], out=str(emb_past)), Path(loaded.folder))), loaded,
          torch_embed_fn(loaded.encoder))
    page = Triage(stream, tmp_path / "fb.jsonl", emb_past)
    top = page.alerts[0]
    assert top["session_id"] not in read_embeddings(emb_past)[0].column("session_id").to_pylist()
    assert len(page.similar(top)) == 10  # similar past sessions
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "similar", "--embeddings", str(emb_past), "--alerts",
                           str(stream), "--alert-id", top["alert_id"], "--top", "3"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # the same from a shell
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [n["session_id"] for n in json.loads(proc.stdout)] == [n["session_id"] for n in page.similar(top, 3)]
    assert page.grouped and len(page.groups) < len(streamed)  # the log repeats its anomalies
    off = Triage(stream, tmp_path / "fb.jsonl", emb_past, group_cosine=0)
    assert len(off.groups) == len(streamed) and not off.grouped
    # an embeddings file of another model: its vectors are not comparable with the alerts' (no similar
    # sessions by the alert's vector, groups only by the file's own rows, here none)
    other = tmp_path / "other.parquet"
    import pyarrow.parquet as pq

    t = pq.read_table(emb_past)
    pq.write_table(t.replace_schema_metadata({b"loglm.model_run_id": b"another-run"}), other)
    foreign = Triage(stream, tmp_path / "fb.jsonl", other)
    assert foreign.similar(top) == [] and len(foreign.groups) == len(streamed)


def test_a_split_of_data_never_prepared_names_the_data_the_model_was_trained_on(deployed, tmp_path):
    """`pipelines.embed ckpt=M split=train` (or detect) without data=: the command's default data is not the
    model's. Before, pyarrow's "Failed to open local file .../events.parquet" was all it said."""
    from loglm.detect.detector import run as detect

    cfg, model, _ = deployed
    other = replace(cfg, ckpt=model["model_dir"], inputs=[], split="test", out=str(tmp_path / "a.jsonl"),
                    data=replace(cfg.data, name="hdfs_sample"))
    with pytest.raises(ValueError, match=rf"split=test of data 'hdfs_sample' is not prepared .* this model was "
                                         rf"trained on data '{cfg.data.name}': add data={cfg.data.name}"):
        detect(other)


def test_event_vectors_torch_and_engine_agree_and_kinds_fit_on_events_label_alerts(deployed, tmp_path):
    """``embed_events=true`` (``loglm embed --events``): one vector per event beside the session file, the same
    from torch and the ONNX engine; a kinds file fitted on event vectors (examples by ``event_idx``) labels
    each alert by its events' votes."""
    import pyarrow.parquet as pq

    from loglm.analyst.embed import read_embeddings
    from loglm.detect.detector import run as detect

    cfg, model, bundle = deployed
    log = tmp_path / "new.log"
    kinds = write_log(log, 60, 33, {i: ("swap" if i % 2 else "unseen") for i in range(10, 60, 5)})
    torch_out, onnx_out = tmp_path / "torch.parquet", tmp_path / "onnx.parquet"
    proc = subprocess.run([sys.executable, "-m", "pipelines.embed", f"paths.root={cfg.paths.root}",
                           f"ckpt={model['model_dir']}", f"inputs=[{log}]", f"out={torch_out}", "embed_events=true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "loglm.cli", "embed", "--bundle", bundle["bundle"], "--events",
                           "--out", str(onnx_out), str(log)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["event_embeddings_path"] == str(tmp_path / "onnx.events.parquet")
    order = [("session_id", "ascending"), ("chunk", "ascending"), ("position", "ascending")]
    t = pq.read_table(tmp_path / "torch.events.parquet").sort_by(order)
    o = pq.read_table(tmp_path / "onnx.events.parquet").sort_by(order)
    sessions, _ = read_embeddings(torch_out)
    assert t.num_rows == o.num_rows == sum(sessions.column("n_events").to_pylist())
    assert t.drop(["embedding"]).equals(o.drop(["embedding"]))
    tv = t.column("embedding").combine_chunks().values.to_numpy().reshape(t.num_rows, -1)
    ov = o.column("embedding").combine_chunks().values.to_numpy().reshape(o.num_rows, -1)
    assert tv.shape[1] == 2 * model_dim(model) and float((tv * ov).sum(1).min()) > 0.999
    # every event of two sessions per kind as examples, by event id; detection labels alerts by their events
    first = {}
    for sid, kind in kinds.items():
        first.setdefault(kind, []).append(sid)
    name = {"swap": "SSH-Patator", "unseen": "crash"}
    chosen = {s: name[k] for k, v in first.items() for s in v[:2]}
    examples = tmp_path / "examples.csv"
    examples.write_text("event_idx,kind\n" + "".join(
        f"{e},{chosen[s]}\n" for s, e in zip(t.column("session_id").to_pylist(), t.column("event_idx").to_pylist())
        if s in chosen))
    kinds_file = tmp_path / "kinds.json"
    fit = [sys.executable, "-m", "loglm.cli", "kinds", "fit", "--embeddings", str(tmp_path / "torch.events.parquet"),
           "--min-confidence", "0.0", "--method", "logreg", "--out", str(kinds_file)]
    proc = subprocess.run(fit + ["--examples", str(examples)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(kinds_file.read_text())["unit"] == "event"
    bad = tmp_path / "by_session.csv"
    bad.write_text("session_id,kind\n" + "".join(f"{s},{k}\n" for s, k in chosen.items()))
    proc = subprocess.run(fit + ["--examples", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs the columns event_idx,kind" in proc.stderr
    out = tmp_path / "alerts.jsonl"
    detect(replace(cfg, ckpt=model["model_dir"], inputs=[str(log)], out=str(out),
                   detect=replace(cfg.detect, kinds=str(kinds_file))))
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    labelled = [(a["kind"], kinds[a["session_id"]]) for a in alerts if a["session_id"] in kinds]
    assert len(labelled) == len(kinds) and all(k["events"] >= 1 for k, _ in labelled)
    assert np.mean([k["name"] == name[want] for k, want in labelled]) > 0.8, labelled


def model_dim(model) -> int:
    from loglm.model.store import load_model

    return load_model(model["model_dir"]).encoder.cfg.d_model
