"""Export bundles and the torch-free ONNX engine, on a tiny model trained on controlled raw logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT, compose
from synthetic import make_log, synthetic_run_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from loglm.export.writer import run as export
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    root = tmp_path_factory.mktemp("export")
    cfg = compose("export", synthetic_run_overrides(root, 200, seed=5) + [
        "data.split.train_frac=0.7", "data.split.val_frac=0.3", "trainer.max_epochs=8", "trainer.batch_size=32",
        "trainer.lr=0.003", "detect.top_k=1"])
    prepare(cfg)
    model = pretrain(cfg)
    result = export(replace(cfg, ckpt=model["run_id"]))
    return cfg, model, result


def test_bundle_is_complete_parity_checked_and_registered(exported):
    import mlflow

    from loglm import tracking

    cfg, model, result = exported
    bundle = result["bundle"]
    names = {p.name for p in __import__("pathlib").Path(bundle).iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.safetensors", "vocab.json", "calibration.json", "bundle.json",
            "model_card.md", "config.yaml", "MANIFEST.json"} <= names
    assert result["parity"]["fp32"]["ok"] and result["parity"]["fp32"]["max_abs_surprisal_diff"] < 1e-3
    assert result["parity"]["windows"] > 10
    card = open(f"{bundle}/model_card.md").read()
    assert model["run_id"] in card and "parity" in card
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg), registry_uri=tracking.tracking_uri(cfg))
    mv = client.get_model_version_by_alias(cfg.export.registry_name, "candidate")
    assert str(mv.version) == result["registry"]["version"] and mv.run_id == result["registry"]["export_run_id"]


def test_engine_detects_from_raw_logs_without_torch(exported, tmp_path):
    cfg, _, result = exported
    lines, kinds = make_log(40, seed=77, anomalies={5: "unseen", 15: "swap"})
    log = tmp_path / "live.log"
    log.write_text("\n".join(lines) + "\nnot a log line\n")
    out = tmp_path / "alerts.jsonl"
    def engine(*flags: str) -> tuple[dict, str]:
        code = f"""
import json, sys
from loglm.cli import main
rc = main(["detect", "--bundle", {result['bundle']!r}, "--out", {str(out)!r}, *{list(flags)!r}, {str(log)!r}])
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'lightning', 'ray', 'mlflow', 'hydra', 'deepspeed',
                                                        'matplotlib', 'sklearn', 'scipy'}})
print(json.dumps({{"rc": rc, "heavy": heavy}}))
"""
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout

    # the HTML report needs matplotlib to draw; nothing else heavy, and nothing at all without a report
    # (pandas is left out of the check: pyarrow imports it, when installed, to build any table)
    last, _ = engine()
    assert last == {"rc": 0, "heavy": ["matplotlib"]} and out.with_suffix(".html").is_file()
    out.with_suffix(".html").unlink()
    last, proc_stdout = engine("--no-report")
    assert last == {"rc": 0, "heavy": []} and not out.with_suffix(".html").exists()
    summary = json.loads(proc_stdout[: proc_stdout.rindex("\n{")])
    assert summary["lines"]["read"] == len(lines) + 1 and summary["lines"]["rejected"] == 1
    alerted = {json.loads(x)["entity"]["value"] for x in out.read_text().splitlines()}
    assert set(kinds) <= alerted


def test_engine_and_torch_detection_agree(exported, tmp_path):
    from loglm.detect.detector import run as torch_detect
    from loglm.engine.detect import run as onnx_detect

    cfg, model, result = exported
    lines, _ = make_log(30, seed=8, anomalies={3: "swap"})
    log = tmp_path / "x.log"
    log.write_text("\n".join(lines) + "\n")
    a = torch_detect(replace(cfg, ckpt=model["run_id"], inputs=[str(log)], out=str(tmp_path / "t.jsonl")))
    b = onnx_detect(result["bundle"], [str(log)], str(tmp_path / "o.jsonl"), variant="fp32")
    ta = {json.loads(x)["session_id"] for x in open(a["alerts_path"])}
    tb = {json.loads(x)["session_id"] for x in open(b["alerts_path"])}
    assert ta == tb and a["events_scored"] == b["events_scored"]


@pytest.mark.parametrize("damage", ["tamper", "truncate", "remove"])
def test_damaged_bundle_is_refused_naming_the_file(exported, tmp_path, damage):
    from loglm.cli import main

    _, _, result = exported
    copy = tmp_path / "bundle"
    shutil.copytree(result["bundle"], copy)
    target = copy / "model.onnx"
    if damage == "tamper":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.unlink()
    from loglm.engine.runtime import Bundle

    with pytest.raises(ValueError, match="model.onnx"):
        Bundle(copy)
    assert main(["detect", "--bundle", str(copy), str(copy / "vocab.json")]) == 2


def test_failed_parity_writes_no_bundle(exported, tmp_path, monkeypatch):
    import loglm.export.writer as eb

    cfg, model, _ = exported
    out = tmp_path / "refused"
    monkeypatch.setattr(eb, "check_parity", lambda a, b, atol: {"max_abs_surprisal_diff": 1.0, "max_abs_score_diff": 1.0,
                                                               "atol": atol, "ok": False})
    with pytest.raises(eb.ParityError, match="bundle not written"):
        eb.run(replace(cfg, ckpt=model["run_id"], export=replace(cfg.export, out=str(out))))
    assert not out.exists() and not list(tmp_path.glob(".refused*"))



def test_export_refuses_event_vectors_that_differ_from_torch(exported, tmp_path, monkeypatch):
    """The ONNX ``event_vectors`` output (per-event vectors, few-shot kinds) is checked against torch's like
    the session vectors: a graph whose event vectors disagree is not written."""
    import loglm.analyst.embed as emb
    import loglm.export.writer as eb

    cfg, model, _ = exported
    real = emb.torch_event_embed_fn
    monkeypatch.setattr(emb, "torch_event_embed_fn", lambda enc: (lambda t, g, p: -real(enc)(t, g, p)))
    out = tmp_path / "refused"
    with pytest.raises(eb.ParityError, match="event vectors differ from torch's .* bundle not written"):
        eb.run(replace(cfg, ckpt=model["run_id"], export=replace(cfg.export, out=str(out))))
    assert not out.exists()

def test_one_pass_student_bundle_matches_torch(exported, tmp_path):
    """A distilled student with a replaced-event head exports both outputs; engine and torch agree."""
    from loglm.detect.detector import run as torch_detect
    from loglm.engine.detect import run as onnx_detect
    from loglm.export.writer import run as export
    from loglm.training.distill import run as distill

    cfg, model, _ = exported
    student = distill(replace(cfg, teacher=model["run_id"],
                              distill=replace(cfg.distill, d_model=16, n_layers=1, d_ff=32, max_epochs=3)))
    result = export(replace(cfg, ckpt=student["model_dir"], export=replace(cfg.export, out=str(tmp_path / "b"))))
    assert result["parity"]["fp32"]["ok"]
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["detect"]["scorer"] == "rtd"
    lines, _ = make_log(25, seed=12, anomalies={4: "unseen"})
    log = tmp_path / "y.log"
    log.write_text("\n".join(lines) + "\n")
    a = torch_detect(replace(cfg, ckpt=student["model_dir"], inputs=[str(log)], out=str(tmp_path / "t.jsonl")))
    b = onnx_detect(str(tmp_path / "b"), [str(log)], str(tmp_path / "o.jsonl"), variant="fp32")
    ta = {json.loads(x)["session_id"] for x in open(a["alerts_path"])}
    tb = {json.loads(x)["session_id"] for x in open(b["alerts_path"])}
    assert ta == tb


@pytest.mark.parametrize("rtd_head,facets", [(False, 0), (True, 7)])  # the MLM head plain, the RTD head with flow facets
def test_fused_attention_graph_matches_torch_and_the_portable_graph(tmp_path, rtd_head, facets):
    """Attention exports as one com.microsoft.MultiHeadAttention op per layer; the graph computes the same
    outputs as torch and as the standard-ops export (padding included), flow facets too."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from loglm.export.onnx import ScoringGraph, export_onnx, output_names
    from loglm.model.encoder import EncoderConfig, LogEncoder

    torch.manual_seed(0)
    enc = LogEncoder(EncoderConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0,
                                   max_len=64, rtd_head=rtd_head, n_facets=facets)).eval()
    rng = np.random.default_rng(0)
    tok = rng.integers(5, 30, size=(7, 19))
    pad = np.arange(19)[None] < rng.integers(3, 20, size=7)[:, None]
    tok[~pad] = 0
    tok[0, 1] = 1  # a [MASK] position: its facets are hidden in the graph as in torch
    gaps = rng.integers(0, 8, size=tok.shape)
    if facets:
        gaps = np.concatenate([gaps[..., None], rng.integers(0, facets, size=(*tok.shape, 10))], -1)
    feed = {"tokens": tok, "gaps": gaps, "pad_mask": pad}
    with torch.inference_mode():
        ref = ScoringGraph(enc, 3)(*(torch.from_numpy(v) for v in feed.values()))
    ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    for fused in (True, False):
        path = tmp_path / f"m{fused}.onnx"
        export_onnx(enc, path, expected=3, fused_attention=fused, facet_slots=10 if facets else 0)
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ("MultiHeadAttention" in ops) == fused
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(output_names(enc), feed)
        for r, g in zip(ref, got):
            per_position = r.shape[:2] == pad.shape  # window_vector is one row per window
            if r.dtype.kind == "f":
                np.testing.assert_allclose(g[pad] if per_position else g, r[pad] if per_position else r, atol=1e-4)
            else:
                assert (g[pad] == r[pad]).mean() > 0.99  # top-k indices (ties may order differently)


def test_rtd_outputs_from_full_logits_match_the_graph_top_k():
    import numpy as np
    import torch

    from loglm.detect.score_core import rtd_outputs_from_logits

    logits = np.random.default_rng(1).normal(size=(3, 5, 100)).astype(np.float32)
    _, top, top_logp = rtd_outputs_from_logits(logits, np.zeros((3, 5), np.float32), 4)
    ref_logp, ref_top = torch.topk(torch.log_softmax(torch.from_numpy(logits), -1), 4, dim=-1)
    assert (top == ref_top.numpy()).all()
    np.testing.assert_allclose(top_logp, ref_logp.numpy(), atol=1e-5)


def test_export_into_a_users_folder_is_refused_and_the_folder_kept(exported, tmp_path):
    from loglm.export.writer import run as export

    cfg, model, _ = exported
    v = tmp_path / "v"
    v.mkdir()
    (v / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        export(replace(cfg, ckpt=model["run_id"], export=replace(cfg.export, out=str(v))))
    assert (v / "notes.txt").read_text() == "x" and [p.name for p in v.iterdir()] == ["notes.txt"]


def test_detection_where_every_line_is_rejected_fails_with_the_reasons(exported, tmp_path, capsys):
    """A wrong format or wrong settings reject everything: that is an error naming the reasons, not 0 alerts."""
    from loglm.cli import main

    _, _, result = exported
    log = tmp_path / "eve.json"
    log.write_text('{"event_type": "alert"}\n{"event_type": "dns"}\nnot json either\n')
    assert main(["detect", "--bundle", result["bundle"], "--out", str(tmp_path / "a.jsonl"), str(log)]) == 2
    err = capsys.readouterr().err
    assert "all 3 lines were rejected with data.format='hdfs'" in err and f"{log}:1:" in err


def test_int8_is_preferred_only_when_its_own_parity_check_passes():
    from loglm.export.writer import preferred_variant

    fp32 = {"ok": True, "decision_agreement": 1.0}
    assert preferred_variant({"fp32": fp32}) == "fp32"
    assert preferred_variant({"fp32": fp32, "int8": {"ok": True, "decision_agreement": 0.9995}}) == "int8"
    # the eve.json bundle: decisions agreed but int8's surprisals were outside its tolerance -> fp32
    assert preferred_variant({"fp32": fp32, "int8": {"ok": False, "decision_agreement": 1.0}}) == "fp32"
    assert preferred_variant({"fp32": fp32, "int8": {"ok": True, "decision_agreement": 0.99}}) == "fp32"


@pytest.mark.parametrize("rewrite", ["nan_threshold", "outside_onnx", "other_vocab", "manifest_escape"])
def test_a_bundle_whose_manifest_was_rewritten_is_refused(exported, tmp_path, rewrite):
    """MANIFEST.json proves integrity only: whoever rewrites a file *and* the manifest passes it.  So the
    contents are checked too: a finite threshold, a model file inside the bundle, a vocabulary of the
    model's size, manifest entries inside the folder."""
    from loglm.artifacts import write_manifest
    from loglm.engine.runtime import Bundle

    _, _, result = exported
    copy = tmp_path / "bundle"
    shutil.copytree(result["bundle"], copy)
    (tmp_path / "evil.onnx").write_bytes((copy / "model.onnx").read_bytes())
    if rewrite == "nan_threshold":
        cal = json.loads((copy / "calibration.json").read_text())
        (copy / "calibration.json").write_text(json.dumps({**cal, "threshold": float("nan")}))
        match = "not a finite number"
    elif rewrite == "outside_onnx":
        info = json.loads((copy / "bundle.json").read_text())
        info["variants"]["fp32"]["file"] = "../evil.onnx"
        info["preferred_variant"] = "fp32"
        (copy / "bundle.json").write_text(json.dumps(info))
        match = "never reads files outside itself"
    elif rewrite == "other_vocab":
        vocab = json.loads((copy / "vocab.json").read_text())
        vocab["template_ids"] = vocab["template_ids"] + list(range(10**6, 10**6 + 50))
        (copy / "vocab.json").write_text(json.dumps(vocab))
        match = "does not belong to this model"
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    write_manifest(copy, {k: v for k, v in manifest.items() if k not in ("files", "format", "created")})
    if rewrite == "manifest_escape":
        manifest = json.loads((copy / "MANIFEST.json").read_text())
        manifest["files"]["../evil.onnx"] = manifest["files"]["model.onnx"]
        (copy / "MANIFEST.json").write_text(json.dumps(manifest))
        match = "points outside the folder"
    with pytest.raises(ValueError, match=match):
        Bundle(copy)


def test_signed_bundle_is_verified_and_an_altered_or_unsigned_one_refused(exported, tmp_path, monkeypatch):
    """export.signing_key signs the manifest (Ed25519); with a verify key (--verify-key or
    $LOGLM_BUNDLE_VERIFY_KEY) detection refuses an unsigned bundle, one signed by another key, and one whose
    files and manifest were rewritten together (which the manifest alone cannot catch)."""
    from loglm.artifacts import write_manifest
    from loglm.cli import main
    from loglm.engine.runtime import Bundle
    from loglm.export.writer import run as export
    from loglm.signing import generate_keypair

    cfg, model, result = exported
    private, public = generate_keypair(tmp_path / "keys")
    other_private, other_public = generate_keypair(tmp_path / "other")
    signed = tmp_path / "signed"
    export(replace(cfg, ckpt=model["run_id"], export=replace(cfg.export, out=str(signed), signing_key=str(private))))
    assert (signed / "MANIFEST.sig").is_file()
    assert Bundle(signed, verify_key=str(public)).signature["algorithm"] == "ed25519"
    with pytest.raises(ValueError, match="not by the verify key"):
        Bundle(signed, verify_key=str(other_public))
    with pytest.raises(ValueError, match="unsigned"):
        Bundle(Path(result["bundle"]), verify_key=str(public))
    forged = tmp_path / "forged"
    shutil.copytree(signed, forged)
    cal = json.loads((forged / "calibration.json").read_text())
    (forged / "calibration.json").write_text(json.dumps({**cal, "threshold": cal["threshold"] * 100}))
    write_manifest(forged, {"bundle": "forged"})  # a consistent manifest: integrity alone would pass
    Bundle(forged)  # (without a verify key it loads: integrity only)
    with pytest.raises(ValueError, match="does not match MANIFEST.json"):
        Bundle(forged, verify_key=str(public))
    monkeypatch.setenv("LOGLM_BUNDLE_VERIFY_KEY", str(public))
    assert main(["detect", "--bundle", str(forged), str(forged / "vocab.json")]) == 2
    # re-exporting over a signed bundle replaces it (its signature is not a foreign file)
    export(replace(cfg, ckpt=model["run_id"], export=replace(cfg.export, out=str(signed), signing_key=str(other_private))))
    assert Bundle(signed, verify_key=str(other_public))


def test_keygen_and_help_exit_cleanly(tmp_path, capsys):
    from loglm.cli import main

    assert main(["--help"]) == 0 and "loglm keygen" in capsys.readouterr().out
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "signing_key.pem").stat().st_mode & 0o077 == 0  # the private key is private
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 2  # never overwritten


def test_a_bundle_is_recalibrated_torch_free_into_a_new_bundle(exported, tmp_path):
    """`loglm calibrate --bundle B INPUT...`: the threshold set again from recent unlabelled traffic with the
    ONNX model (no torch), the same threshold the model folder's recalibration gives (fp32 parity), into a new
    bundle that verifies, detects at the new threshold and says what it was recalibrated from; the original is
    untouched, an existing folder refused, and the new bundle signed only with a signing key."""
    from loglm.cli import main
    from loglm.detect.recalibrate import run as recalibrate
    from loglm.detect.recalibrate import run_bundle
    from loglm.engine.runtime import Bundle
    from loglm.signing import generate_keypair

    cfg, model, result = exported
    bundle = Path(result["bundle"])
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    lines, kinds = make_log(150, seed=7, anomalies={i: "swap" for i in range(0, 150, 10)})
    log = tmp_path / "site_b.log"
    log.write_text("\n".join(lines) + "\n")
    new = tmp_path / "recal"
    code = f"""
import json, sys
from loglm.cli import main
rc = main(["calibrate", "--bundle", {str(bundle)!r}, "--out", {str(new)!r}, "--target-fpr", "0.05",
           "--variant", "fp32", {str(log)!r}])
print(json.dumps({{"rc": rc, "heavy": sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'lightning', 'ray',
                                                                                    'mlflow', 'hydra', 'deepspeed'}})}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "heavy": []}  # torch-free
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before
    b = Bundle(new)  # manifest verified
    cal = b.calibration
    assert cal["target_fpr"] == 0.05 and cal["n_val_sessions"] == 150 and cal["recalibrated_on"]["variant"] == "fp32"
    assert cal["previous"]["threshold"] == json.loads((bundle / "calibration.json").read_text())["threshold"]
    assert b.info["calibration"] == cal and b.info["recalibrated_from"] == str(bundle)
    assert f"{cal['threshold']:.6g}" in (new / "model_card.md").read_text()
    torch_side = recalibrate(replace(cfg, ckpt=model["run_id"], inputs=[str(log)], out=str(tmp_path / "m"),
                                     detect=replace(cfg.detect, target_fpr=0.05)))
    assert cal["threshold"] == pytest.approx(torch_side["threshold"], rel=1e-3, abs=1e-4)
    out = tmp_path / "alerts.jsonl"
    assert main(["detect", "--bundle", str(new), "--variant", "fp32", "--out", str(out), "--no-report", str(log)]) == 0
    assert 0 < len(out.read_text().splitlines()) <= 6  # floor(0.05 * 151) - 1 sessions may pass the threshold
    with pytest.raises(ValueError, match="never replaces"):
        run_bundle(str(bundle), [str(log)], str(new))
    private, public = generate_keypair(tmp_path / "keys")
    with pytest.raises(ValueError, match="unsigned"):
        Bundle(new, verify_key=str(public))
    signed = run_bundle(str(bundle), [str(log)], str(tmp_path / "signed"), signing_key=str(private))
    assert signed["signed"] and Bundle(Path(signed["bundle"]), verify_key=str(public)).signature
    # analysts' verdicts (`--feedback`): the sessions marked malicious are left out of the traffic, torch-free too
    from loglm.analyst import feedback as fb

    table = tmp_path / "feedback.jsonl"
    for sid in kinds:
        fb.record(table, {"alert_id": f"a-{sid}", "session_id": sid}, "malicious")
    assert main(["calibrate", "--bundle", str(bundle), "--out", str(tmp_path / "judged"), "--target-fpr", "0.05",
                 "--variant", "fp32", "--feedback", str(table), str(log)]) == 0
    judged = Bundle(tmp_path / "judged").calibration
    assert judged["feedback"]["malicious_sessions_left_out"] == len(kinds) == 15
    assert judged["n_val_sessions"] == 150 - 15 and "malicious verdict left out" in judged["val_population"]


def test_the_shipped_systemd_unit_runs_follows_and_resumes(exported, tmp_path):
    """cluster/loglm-detect@.service's ExecStart, with this machine's paths and an idle exit: it streams a log
    into alerts, findings and CEF lines, and run again (a restart) it reads only what the log gained."""
    import shlex

    _, _, result = exported
    unit = (ROOT / "cluster" / "loglm-detect@.service").read_text()
    exec_start = next(x.split("=", 1)[1] for x in unit.splitlines() if x.startswith("ExecStart="))
    log = tmp_path / "log" / "auth.log"
    log.parent.mkdir()
    lines, _ = make_log(30, seed=9, anomalies={7: "unseen"})
    log.write_text("\n".join(lines) + "\n")
    cmd = (exec_start.replace("%i", "auth").replace("/opt/loglm/.venv/bin/loglm", f"{sys.executable} -m loglm.cli")
           .replace("/var/lib/loglm/bundle", result["bundle"]).replace("/var/lib/loglm", str(tmp_path))
           .replace("/var/log", str(tmp_path / "log")))
    argv = shlex.split(cmd)
    argv[-1:-1] = ["--follow-exit-s", "1"]

    def run() -> dict:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout[proc.stdout.index("{"):])

    first = run()
    alerts = tmp_path / "alerts" / "auth.jsonl"
    assert first["lines"]["read"] == len(lines) and first["alerts"] >= 1 and first["resumed"] is None
    assert len(alerts.with_suffix(".cef").read_text().splitlines()) == first["alerts"]
    assert alerts.with_suffix(".ocsf.jsonl").is_file() and alerts.with_suffix(".follow.json").is_file()
    again = run()
    assert again["lines"]["read"] == 0 and again["resumed"]["line"] == len(lines)
    assert len(alerts.read_text().splitlines()) == first["alerts"]  # kept, not emptied
