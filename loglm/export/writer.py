"""The bundle writer (export job): model directory -> self-contained, parity-checked, registered detection bundle.

The bundle holds model.onnx (+ model.int8.onnx), model.safetensors, vocab.json, calibration.json,
bundle.json (ingest and scoring settings), config.yaml, model_card.md and MANIFEST.json (sha256 of every
file).  It is written to a temporary folder and renamed into place only after ONNX-vs-torch parity on real
windows passes, so a failed or interrupted export never leaves a bundle that looks valid.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from loglm.artifacts import atomic_write_bytes, atomic_write_json, write_manifest
from loglm.detect.findings import product_version

BUNDLE_FILES = ("model.safetensors", "model.json", "vocab.json", "calibration.json", "config.yaml")


class ParityError(RuntimeError):
    pass


def parity_windows(data_dir: Path, limit: int):
    """Real windows from the prepared validation and test splits (``limit`` drawn, read a shard at a time)."""
    from loglm.shards import sample_sessions
    from loglm.windows import windows_of

    return windows_of(sample_sessions(data_dir, ("val", "test"), limit))


def preferred_variant(parity: dict) -> str:
    """int8 (the faster model) only when its own parity check passed (surprisals within
    ``export.int8_parity_atol``) and it keeps at least 99.9% of the alert decisions; otherwise fp32."""
    int8 = parity.get("int8")
    if int8 is not None and int8["ok"] and int8["decision_agreement"] >= 0.999:
        return "int8"
    return "fp32"


def check_parity(torch_scores, onnx_scores, atol: float) -> dict:
    diff = max((float(np.abs(a - b).max()) if len(a) else 0.0)
               for a, b in zip(torch_scores.surprisal, onnx_scores.surprisal))
    score_diff = float(np.abs(torch_scores.score - onnx_scores.score).max())
    return {"max_abs_surprisal_diff": diff, "max_abs_score_diff": score_diff, "atol": atol, "ok": diff <= atol}


def model_card(info: dict) -> str:
    cal, par = info["calibration"], info["parity"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in info.get("metrics", {}).items())
    int8 = ""
    if "int8" in par:
        int8 = (f"; int8 max |Δ| = {par['int8']['max_abs_surprisal_diff']:.3g}, alert decisions agree on "
                f"{par['int8']['decision_agreement']:.4f} of windows")
    alert = ""
    if "alert_threshold" in cal:  # items are events (flows), alerts sessions: the alert unit's own threshold
        alert = (f"\n- alert threshold: {cal['alert_threshold']:.6g} per session (the unit an alert is) on "
                 f"{cal['alert_n_val_sessions']} normal sessions, for the same target")
    return f"""# LogLM detection bundle `{info['name']}`

- model run: `{info['run_id']}`; teacher run: `{info.get('teacher_run_id') or '-'}`
- dataset: `{info['dataset']}`, data sha256 `{info.get('data_sha256')}`
- encoder: {info['encoder']}
- parameters: {info['parameters']:,}
- preferred variant: `{info['preferred_variant']}` ({', '.join(info['variants'])})
- threshold: {cal['threshold']:.6g} for target FPR {cal['target_fpr']} on {cal['n_val_sessions']} validation normal sessions
  (score `{cal['score']}`, top-k {cal['top_k']}, {cal['n_views']} masked views per window){alert}
- export parity on {par['windows']} real windows: fp32 max |Δ surprisal| = {par['fp32']['max_abs_surprisal_diff']:.2e}
  (tolerance {par['fp32']['atol']}){int8}
- exported {info['exported_at']} by loglm {info['loglm_version']}

## Metrics of the model run

| metric | value |
|---|---|
{rows}

Run it: `loglm detect --bundle <this folder> /path/to/logs` (needs only onnxruntime, numpy, pyarrow and loglm's ingest).
"""


def run(cfg) -> dict:

    from loglm.detect.detector import detect_config_of, model_dir_for
    from loglm.detect.torch_scoring import score_windows
    from loglm.engine.runtime import BUNDLE_FORMAT, Bundle
    from loglm.export.onnx import export_onnx, quantize_int8
    from loglm.ingest.flows import FACET_FIELDS
    from loglm.ingest.prepare import prepared_dir
    from loglm.model.store import load_model

    model_dir = model_dir_for(cfg)
    loaded = load_model(model_dir)
    run_id = loaded.meta.get("run_id") or model_dir.name
    dcfg = detect_config_of(loaded, cfg.detect)
    dataset = loaded.meta.get("dataset", cfg.data.name)
    out = Path(cfg.export.out).resolve() if cfg.export.out else Path(cfg.paths.root).resolve() / "bundles" / run_id
    check_replaceable(out)  # before any work: a folder that is not ours is refused, never emptied
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in BUNDLE_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
        export_onnx(loaded.encoder, tmp / "model.onnx", expected=dcfg.expected_per_event,
                    fused_attention=cfg.export.fused_attention,
                    facet_slots=len(FACET_FIELDS) if loaded.vocab.n_facets else 0)
        variants = {"fp32": {"file": "model.onnx"}}
        if cfg.export.quantize:
            quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx")
            variants["int8"] = {"file": "model.int8.onnx"}

        from loglm.ingest.builders import BUILDERS

        data_cfg = load_data_config(model_dir, cfg)
        info = {"format": BUNDLE_FORMAT, "name": f"{dataset}-{run_id[:8]}", "run_id": run_id,
                "teacher_run_id": loaded.meta.get("teacher_run_id"), "dataset": dataset,
                "data_sha256": loaded.meta.get("data_sha256"), "encoder": loaded.encoder.cfg.to_dict(),
                "parameters": loaded.encoder.num_parameters(), "variants": variants, "preferred_variant": "fp32",
                "data": data_cfg, "detect": dataclasses.asdict(dcfg), "calibration": loaded.calibration,
                "raw_log_ingest": data_cfg["format"] not in BUILDERS,
                "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loglm_version": product_version()}
        atomic_write_json(tmp / "bundle.json", info)  # the parity check below opens the bundle unverified

        # parity on real windows: torch vs each ONNX variant, through the same scoring code
        toks, gaps, closed = parity_windows(prepared_dir(cfg.paths.root, dataset), cfg.export.parity_windows)
        ref = score_windows(loaded.encoder, toks, gaps, closed, dcfg)
        thr = float(loaded.calibration["threshold"])
        parity = {"windows": len(toks)}
        from loglm.analyst.embed import embed_events, embed_windows, torch_embed_fn, torch_event_embed_fn

        ref_vec = embed_windows(torch_embed_fn(loaded.encoder), toks, gaps, closed)
        ref_ev = embed_events(torch_event_embed_fn(loaded.encoder), toks, gaps, closed)
        for variant in variants:
            b = Bundle(tmp, variant=variant, verify=False)
            got = b.scorer()(toks, gaps, closed, dcfg)
            atol = cfg.export.int8_parity_atol if variant == "int8" else cfg.export.parity_atol
            parity[variant] = check_parity(ref, got, atol)
            parity[variant]["decision_agreement"] = float(((ref.score > thr) == (got.score > thr)).mean())
            # session vectors (loglm embed): cosine of each window's ONNX vector with torch's
            cos = (embed_windows(b.embed, toks, gaps, closed) * ref_vec).sum(1) if len(toks) else np.ones(1)
            # and each event's vector (ONNX event_vectors, LogEncoder.event_embedding: unit pieces scaled by
            # 1/sqrt(pieces), so an event whose facets are none is shorter than 1: cosine, not the dot product)
            ev = embed_events(b.embed_events, toks, gaps, closed)
            ev_cos = [float(_cosines(a, r).min()) for a, r in zip(ev, ref_ev) if len(r)] or [1.0]
            parity[variant]["min_embedding_cosine"] = float(cos.min())
            parity[variant]["min_event_vector_cosine"] = min(ev_cos)
        for key, what in (("min_embedding_cosine", "session vectors"), ("min_event_vector_cosine", "event vectors")):
            if parity["fp32"][key] < 0.999:
                raise ParityError(f"ONNX export of {model_dir}: {what} differ from torch's (lowest cosine "
                                  f"{parity['fp32'][key]:.4f} < 0.999); bundle not written")
        if not parity["fp32"]["ok"]:
            raise ParityError(f"ONNX export of {model_dir} differs from torch by "
                              f"{parity['fp32']['max_abs_surprisal_diff']:.3g} > export.parity_atol="
                              f"{cfg.export.parity_atol}; bundle not written")
        info["preferred_variant"] = preferred_variant(parity)
        info["parity"] = parity
        info["metrics"] = _run_metrics(cfg, run_id)
        atomic_write_json(tmp / "bundle.json", info)
        atomic_write_bytes(tmp / "model_card.md", model_card(info).encode())
        write_manifest(tmp, {"bundle": info["name"]})
        if cfg.export.signing_key:  # authenticity: Ed25519 over the manifest (loglm/signing.py)
            from loglm.signing import sign_folder

            sign_folder(tmp, cfg.export.signing_key)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from loglm import tracking

    registry = register(cfg, out, info) if tracking.enabled(cfg) else None  # logger=none: no registry
    return {"bundle": str(out), "preferred_variant": info["preferred_variant"], "parity": parity,
            "registry": registry}


def foreign_files(folder: Path) -> list[str]:
    """Files in ``folder`` that are not part of a LogLM bundle's manifest (all of them if it is no bundle)."""
    import json

    from loglm.artifacts import MANIFEST
    from loglm.engine.runtime import BUNDLE_FORMAT

    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    try:
        listed = set(json.loads((folder / MANIFEST).read_text())["files"])
        is_bundle = json.loads((folder / "bundle.json").read_text()).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return present
    if not is_bundle:
        return present
    from loglm.signing import SIGNATURE

    return [p for p in present if p not in (MANIFEST, SIGNATURE) and p not in listed]


def check_replaceable(out: Path) -> None:
    """Export writes into a new or empty folder, or replaces a bundle LogLM wrote there whose files are all
    its own; anything else (a user's folder, a bundle with alerts or notes added) is refused, naming files."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"export.out={out} exists and is not a folder LogLM wrote; refusing to replace it")
    extra = foreign_files(out)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ValueError(f"export.out={out} holds files that are not part of a LogLM bundle ({shown}); "
                         "refusing to replace it: choose another export.out, or move those files away")


def replace_folder(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``; an existing bundle there (checked again) is moved aside and removed only after."""
    from loglm.artifacts import swap_in

    if out.exists():
        check_replaceable(out)
    swap_in(new, out)


def load_data_config(model_dir: Path, cfg) -> dict:
    """The ingest settings the model was trained with (from its resolved config.yaml)."""
    from omegaconf import OmegaConf

    path = model_dir / "config.yaml"
    data = OmegaConf.to_container(OmegaConf.load(path).data) if path.is_file() else dataclasses.asdict(cfg.data)
    data.pop("anomalous_ids", None)
    data["inputs"] = []
    return data


def _run_metrics(cfg, run_id: str) -> dict:
    import mlflow

    from loglm import tracking

    if not tracking.enabled(cfg):
        return {}
    try:
        run = mlflow.MlflowClient(tracking.tracking_uri(cfg)).get_run(run_id)
    except Exception:  # the model may come from another tracking store
        return {}
    keep = ("val/loss", "val/masked_acc", "val/top_k_acc", "val/teacher_agreement", "eval/f1", "eval/auroc",
            "calib/threshold")
    return {k: round(v, 6) for k, v in run.data.metrics.items() if k in keep}


def calibration_tags(cal: dict) -> dict[str, str]:
    """What ``loglm model list`` shows of a version's threshold: its target, and its warning when the
    validation split was too small for the target (``loglm model promote`` refuses such a version)."""
    tags = {"target_fpr": str(cal.get("target_fpr")), "n_val_effective": str(cal.get("n_val_effective"))}
    if cal.get("warning"):
        tags["calibration_warning"] = str(cal["warning"])[:4000]
    return tags


def register(cfg, bundle_dir: Path, info: dict) -> dict:
    """Log the bundle to an export run and register it as a new model version with an alias."""
    import mlflow

    from loglm import tracking

    uri = tracking.tracking_uri(cfg)
    exp = tracking.ensure_experiment(cfg, "loglm-export")
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    run = client.create_run(exp, run_name=f"export-{info['name']}",
                            tags=tracking.run_tags(cfg, {"model_run_id": info["run_id"],
                                                         "teacher_run_id": info.get("teacher_run_id"),
                                                         "parent_run_id": info["run_id"]}))
    rid = run.info.run_id
    par = info["parity"]
    client.log_metric(rid, "export/fp32_max_abs_diff", par["fp32"]["max_abs_surprisal_diff"])
    if "int8" in par:
        client.log_metric(rid, "export/int8_max_abs_diff", par["int8"]["max_abs_surprisal_diff"])
        client.log_metric(rid, "export/int8_decision_agreement", par["int8"]["decision_agreement"])
    client.log_artifacts(rid, str(bundle_dir), "bundle")
    client.set_terminated(rid)
    name = cfg.export.registry_name
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description="LogLM detection bundles (ONNX + vocabulary + calibration)")
    source = f"{client.get_run(rid).info.artifact_uri}/bundle"
    mv = client.create_model_version(name, source=source, run_id=rid,
                                     tags={"dataset": info["dataset"], "variant": info["preferred_variant"],
                                           **calibration_tags(info["calibration"])},
                                     description=f"bundle {info['name']} of model run {info['run_id']}")
    client.set_registered_model_alias(name, cfg.export.alias, mv.version)
    return {"name": name, "version": str(mv.version), "alias": cfg.export.alias, "export_run_id": rid,
            "source": source}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays; a pair of zero rows counts as equal (1.0)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na < 1e-12) & (nb < 1e-12)
    return np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-12))
