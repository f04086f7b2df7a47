"""Recalibration in a new environment: a trained model's threshold set again from the new place's own recent
traffic, without labels (assumed mostly normal), for ``detect.target_fpr``.

With ``detect.unknown_alarm`` (the default) and ``detect.recalibration_unseen=alert``, the quantile is taken over
the windows without an event type the model never saw: those with one alert whatever the threshold, and
unlabelled traffic cannot tell a new normal service from an attack.  Closed windows shorter than every
training window (``detect.short_alarm``) alert whatever the threshold too, and are set aside the same way.  Ranking them with the rest lets frequent
scans (58 % of a Zeek capture's early flows) lift the threshold above the attacks.  ``calibration.json`` records
their share (``unseen_share``) and warns when it exceeds the target: the FPR promise covers the other windows.

Weights and vocabulary are unchanged; the result is a **new** model folder (``<model>-recal-<time>`` beside
the model, or ``out=``) holding a copy of them, the new ``calibration.json`` (what it was recalibrated on, the
previous threshold) and its own manifest.  The original folder is never touched, so rolling back is using
the old folder.  Labels in the inputs (a Zeek ``label`` column) are not used: recalibration is for places
where nobody has labelled anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from loglm.artifacts import atomic_write_json
from loglm.config import trained_data_config

POPULATION = "unlabelled recent traffic of the new environment (assumed normal; input labels not used)"
COPIED = ("model.safetensors", "model.json", "vocab.json", "config.yaml")


def unseen_sessions(session_ids: list[str], tokens: list[np.ndarray]) -> set[str]:
    """Sessions with at least one window holding an event type the model never saw ([UNK])."""
    from loglm.vocab import UNK

    return {sid for sid, t in zip(session_ids, tokens) if (np.asarray(t) == UNK).any()}


def feedback_verdicts(path: str | None) -> tuple[set[str], set[str]]:
    """(benign, malicious) sessions of a feedback table (``loglm.analyst.feedback.sessions_by_verdict``);
    empty without one, an error when the named table does not exist."""
    if not path:
        return set(), set()
    from loglm.analyst import feedback as fb

    if not Path(path).is_file():
        raise FileNotFoundError(f"detect.recalibration_feedback={path}: no such feedback table")
    return fb.sessions_by_verdict(path)


def new_folder(model_dir: Path, out: str | None) -> Path:
    """Where a recalibration writes: ``out``, or ``<model>-recal-<time>`` beside the model; never an existing
    folder."""
    out_dir = (Path(out) if out else
               model_dir.parent / f"{model_dir.name}-recal-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out_dir.exists():
        raise ValueError(f"out={out_dir} exists: recalibration writes a new model folder and never replaces one")
    return out_dir


@contextlib.contextmanager
def writing(out: Path):
    """A new folder at ``out``: filled in a work folder beside it (``artifacts.work_folder``, which also clears
    those of killed runs) and renamed in only when complete; removed if anything fails."""
    from loglm.artifacts import swap_in, work_folder

    tmp = work_folder(out, "recal")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run(cfg) -> dict:
    """``python -m pipelines.calibrate ckpt=... inputs=[...]``: a trained model folder recalibrated (torch)."""
    from loglm import tracking
    from loglm.detect.detector import detect_config_of, model_dir_for
    from loglm.detect.torch_scoring import score_windows
    from loglm.model.store import CALIBRATION, finalize, load_model

    if not cfg.inputs:
        raise ValueError("give the new environment's recent traffic: inputs=[file or directory, ...]")
    model_dir = model_dir_for(cfg)
    out = new_folder(model_dir, cfg.out)
    loaded = load_model(model_dir, device=cfg.detect.device)
    dcfg = detect_config_of(loaded, cfg.detect)  # the model's scoring settings, this run's target FPR
    run_cfg = dataclasses.replace(cfg, data=trained_data_config(model_dir, cfg.data, labels=False))
    cal, stats = recalibration(run_cfg, loaded, lambda *w: score_windows(loaded.encoder, *w), dcfg, out)
    warning = cal["warning"]

    with writing(out) as tmp:
        for name in COPIED:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
        atomic_write_json(tmp / CALIBRATION, cal)
        finalize(tmp, tmp / "vocab.json", {"recalibrated_from": str(model_dir), "run_id": loaded.meta.get("run_id")})

    client = tracking.client(cfg)
    exp = tracking.ensure_experiment(cfg, "loglm-calibrate")
    rid = client.create_run(exp, run_name=f"recalibrate-{model_dir.name[:8]}", tags=tracking.run_tags(cfg, {
        "parent_run_id": loaded.meta.get("run_id"), "model_dir": str(out), "recalibrated_from": str(model_dir)})
    ).info.run_id
    client.log_param(rid, "target_fpr", dcfg.target_fpr)
    client.log_param(rid, "inputs", ",".join(str(p) for p in cfg.inputs)[:500])
    for k, v in {"calib/threshold": cal["threshold"], "calib/previous_threshold": cal["previous"]["threshold"],
                 "calib/n_val_normal": cal["n_val_sessions"], "calib/expected_fpr": cal["promise"]["expected_fpr"],
                 "calib/fpr_hi_90": cal["promise"]["fpr_interval_90"][1]}.items():
        client.log_metric(rid, k, float(v))
    client.set_terminated(rid)
    return {"model_dir": str(out), "run_id": rid, **stats, "warning": warning}


def run_bundle(bundle_dir: str, inputs: list[str], out: str | None = None, target_fpr: float | None = None,
               threads: int = 0, verify_key: str | None = None, signing_key: str | None = None,
               variant: str | None = None, feedback: str | None = None) -> dict:
    """``loglm calibrate --bundle DIR INPUT...``: an exported bundle recalibrated on CPU, torch-free (the ONNX
    model scores the recent traffic exactly as ``loglm detect --bundle`` would, with ``variant``: the bundle's
    preferred one by default, the one detection uses).  Writes a new bundle beside it
    (``<bundle>-recal-<time>``, or ``out``): the same model files, the new calibration.json (also in bundle.json
    and the model card), a new manifest; signed with ``signing_key`` when given (the old signature cannot cover
    the new manifest, so without a key the new bundle is unsigned).  ``feedback``: a verdicts table, read as
    ``detect.recalibration_feedback`` is."""
    import json

    from loglm.artifacts import write_manifest
    from loglm.detect.detector import detect_config_of
    from loglm.engine.detect import bundle_config
    from loglm.engine.runtime import Bundle
    from loglm.export.writer import model_card

    if not inputs:
        raise ValueError("give the recent traffic to recalibrate on: loglm calibrate --bundle DIR INPUT...")
    bundle = Bundle(Path(bundle_dir), variant=variant, threads=threads, verify_key=verify_key)
    out_dir = new_folder(bundle.folder, out)
    run_cfg = bundle_config(bundle, inputs, str(out_dir / "recalibration.jsonl"))
    if target_fpr is not None:
        run_cfg.detect.target_fpr = float(target_fpr)
    if feedback:  # analysts' verdicts on this traffic's alerts (detect.recalibration_feedback)
        run_cfg.detect.recalibration_feedback = feedback
    dcfg = detect_config_of(bundle, run_cfg.detect)
    cal, stats = recalibration(run_cfg, bundle, bundle.scorer(), dcfg, out_dir)
    cal["recalibrated_on"]["variant"] = bundle.variant  # the ONNX variant that scored it (detection's default)
    manifest = json.loads((bundle.folder / "MANIFEST.json").read_text())  # verified when the bundle loaded
    with writing(out_dir) as tmp:
        for name in manifest["files"]:
            if name in ("calibration.json", "bundle.json", "model_card.md"):
                continue
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.folder / name, tmp / name)
        info = {**bundle.info, "calibration": cal, "recalibrated_from": str(bundle.folder)}
        atomic_write_json(tmp / "calibration.json", cal)
        atomic_write_json(tmp / "bundle.json", info)
        (tmp / "model_card.md").write_text(model_card(info))
        write_manifest(tmp, {"bundle": info.get("name", out_dir.name), "recalibrated_from": str(bundle.folder)})
        if signing_key:
            from loglm.signing import sign_folder

            sign_folder(tmp, signing_key)
    return {"bundle": str(out_dir), **stats, "warning": cal["warning"], "signed": bool(signing_key),
            "variant": bundle.variant}


def recalibration(cfg, loaded, scorer, dcfg, out: Path) -> tuple[dict, dict]:
    """The new calibration of ``loaded`` (a model folder or a bundle: anything with .calibration, .meta,
    .folder and a vocabulary) from ``cfg.inputs``, scored by ``scorer(toks, gaps, closed, dcfg)``; and the
    figures a summary reports.  ``out``: where detection's work folder for the inputs may go."""
    from loglm.detect.calibration_record import calibration_of, validation_size
    from loglm.detect.detector import DetectionInput
    from loglm.detect.score_core import event_alarm_scores, own_event_scores, session_max
    from loglm.detect.thresholds import check_validation_size
    from loglm.vocab import UNK
    from loglm.windows import windows_of

    model_dir = Path(loaded.folder)
    # the recent traffic is read out of core and scored a piece at a time (as batch detection does); a
    # session lies in one piece, so what is kept per session is all that crosses pieces
    per_session: dict[str, float] = {}
    shorter: set[str] = set()  # closed windows shorter than every training window: alert whatever the threshold
    unseen: set[str] = set()
    per_event: dict[str, tuple[float, float]] = {}
    counts: dict[str, list[int]] = {}  # per session: known and unseen events
    weights: dict[str, int] = {}
    per_event_alarm = cfg.data.eval_unit == "event" and dcfg.alarm_unit == "event" and dcfg.unknown_alarm
    # with event_score=own each known event is its own item: per row, (session, its known events' scores, short)
    own_rows: list[tuple[str, np.ndarray, bool]] = []
    own = per_event_alarm and own_event_scores(dcfg)
    with DetectionInput(cfg, loaded, out) as source:
        for table, _ in source.tables():
            windows = windows_of(table)
            ws = scorer(*windows, dcfg)
            sids = table.column("session_id").to_pylist()
            per_session.update(session_max(sids, ws.score))
            shorter |= {s for s, short in zip(sids, ws.shorter) if short}
            if per_event_alarm:
                per_event.update(event_alarm_scores(dcfg, sids, ws))
                for r, (sid, t) in enumerate(zip(sids, windows[0])):
                    t = np.asarray(t)
                    u = int((t == UNK).sum())
                    c = counts.setdefault(sid, [0, 0])
                    c[0], c[1] = c[0] + len(t) - u, c[1] + u
                    if own:
                        own_rows.append((sid, ws.event_own[r][:len(t)][t != UNK].astype(np.float32),
                                         bool(ws.shorter[r])))
            else:
                unseen |= unseen_sessions(sids, windows[0])
                for sid, idx in zip(sids, table.column("event_idx").to_pylist()):
                    weights[sid] = weights.get(sid, 0) + (len(idx) if cfg.data.eval_unit == "event" else 1)
        account = source.account
    if not per_session:
        raise ValueError(f"no session in {list(cfg.inputs)} (lines: {account}): nothing to calibrate on")
    # item groups (session, score, items, alert whatever the threshold): per session its events (per-event
    # unit) or 1; with alarm_unit=event an unseen event alarms alone, its window's other events keep the score
    # of the window's known events
    groups: list[tuple[str, float, int, bool]] = []
    if own:  # each known event with its own score (a group of one score per event), the unseen as below
        groups += [(sid, v, len(v), short) for sid, v, short in own_rows]
        groups += [(sid, per_event[sid][1], n_unseen, True) for sid, (_, n_unseen) in counts.items()]
    elif per_event_alarm:
        for sid, (n_known, n_unseen) in counts.items():
            groups += [(sid, per_event[sid][0], n_known, sid in shorter), (sid, per_event[sid][1], n_unseen, True)]
    else:
        unseen |= shorter
        groups = [(sid, per_session[sid], w, sid in unseen) for sid, w in weights.items()]
    groups = [g for g in groups if g[2]]
    benign, malicious = feedback_verdicts(cfg.detect.recalibration_feedback)
    verdicts = bool(benign or malicious)
    left_out = {sid for sid, _, _, _ in groups if sid in malicious}
    groups = [g for g in groups if g[0] not in malicious]  # what an analyst said is an attack is not normal traffic
    if not groups:
        raise ValueError(f"every session of {list(cfg.inputs)} has a malicious verdict "
                         f"({cfg.detect.recalibration_feedback}): nothing normal to calibrate on")
    n_items = sum(g[2] for g in groups)
    unseen_items = sum(g[2] for g in groups if g[3])
    alarmed = {g[0] for g in groups if g[3]}  # sessions with an unseen event (the alert unit sets them aside too)
    population = POPULATION.replace("traffic", "traffic, per event") if cfg.data.eval_unit == "event" else POPULATION
    alert_unseen = dcfg.unknown_alarm and dcfg.recalibration_unseen == "alert" and 0 < unseen_items < n_items
    ranked_benign = 0
    if alert_unseen:  # the threshold governs the windows without an unseen event; those with one alert anyway
        ranked_benign = sum(g[2] for g in groups if g[3] and g[0] in benign)
        groups = [g for g in groups if not g[3] or g[0] in benign]
        population += "; windows without an event type the model never saw (those alert whatever the threshold)"
        if ranked_benign:
            population += ", and those in sessions an analyst judged benign"
    if verdicts:
        population += "; sessions with a malicious verdict left out"
    # a group's score: one for all its items, or (event_score=own) one per item
    items = (np.concatenate([np.broadcast_to(np.asarray(g[1], np.float64), (g[2],)) for g in groups]) if groups
             else np.zeros(0))
    weights = {}
    for sid, _, n, _ in groups:
        weights[sid] = weights.get(sid, 0) + n
    if cfg.data.eval_unit == "event":
        effective, what = validation_size(weights, len(items))
    else:
        effective, what = len(items), None
    warning = check_validation_size(effective, dcfg.target_fpr, dcfg.small_validation, what)
    unseen_share = unseen_items / max(1, n_items)
    aside = unseen_items - ranked_benign  # those judged benign are ranked, inside the promise
    if alert_unseen and aside / max(1, n_items) > dcfg.target_fpr:
        where = ("is an event type the model never saw" if per_event_alarm else
                 "is in windows holding an event type the model never saw")
        judged = " and no analyst judged benign" if verdicts else ""
        note = (f"{aside / max(1, n_items):.1%} of the recent traffic ({aside} of {n_items} items) {where}{judged} (or in windows "
                "closed shorter than every training window); they alert "
                "whatever the threshold, so the FPR promise covers "
                "the other windows only. If they are this environment's normal traffic, tune the model on it "
                "(pipelines.tune) instead")
        warning = f"{warning}; {note}" if warning else note
    elif dcfg.unknown_alarm and unseen_items == n_items:
        note = ("every window of the recent traffic holds an event type the model never saw: the threshold ranks "
                "them among themselves; the model does not know this environment, tune it (pipelines.tune)")
        warning = f"{warning}; {note}" if warning else note
    cal = calibration_of(items, dcfg, population, warning, n_effective=effective,
                         extra={"session_pause_s": loaded.calibration.get("session_pause_s"),  # training's
                                **({"embedding_centre": loaded.calibration["embedding_centre"]}
                                   if "embedding_centre" in loaded.calibration else {})})  # the model's own vectors
    if cfg.data.eval_unit == "event":  # items are events, alerts are sessions: the alert unit's own threshold
        from loglm.detect.calibration_record import alert_calibration

        set_aside = alarmed - benign if alert_unseen else set()
        kept = [v for sid, v in per_session.items() if sid not in malicious and sid not in set_aside]
        cal.update(alert_calibration(np.array(kept), cal["threshold"], dcfg,
                                     "recent sessions" + (" without an unseen event" if set_aside else "")
                                     + ("; malicious verdicts left out" if verdicts else "")))
    cal["recalibration_unseen"] = dcfg.recalibration_unseen if dcfg.unknown_alarm else "rank"
    cal["unseen_share"] = unseen_share
    if verdicts:
        cal["feedback"] = {"path": str(Path(cfg.detect.recalibration_feedback).resolve()),
                           "malicious_sessions_left_out": len(left_out), "benign_unseen_items_ranked": int(ranked_benign)}
        known = [np.max(g[1]) for g in groups if not g[3]]
        if ranked_benign and known and cal["threshold"] >= max(known):
            note = (f"the {ranked_benign} unseen events analysts judged benign set the threshold "
                    f"({cal['threshold']:.4g}) above every item without an unseen event: only unseen events can "
                    "alert now, an attack in known forms would not. They are this environment's normal traffic: "
                    "tune the model on it (pipelines.tune) so they become known, and recalibrate")
            cal["warning"] = f"{cal['warning']}; {note}" if cal["warning"] else note
    if alert_unseen:
        cal["threshold_rule"] += " of windows without an unseen event (windows with one always alert)"
    cal["recalibrated_on"] = {"inputs": [str(Path(p).resolve()) for p in cfg.inputs], "lines": account,
                              "sessions": len(per_session), "items": int(n_items), "calibration_items": int(len(items)),
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cal["previous"] = {"model_dir": str(model_dir), "threshold": loaded.calibration["threshold"],
                       "target_fpr": loaded.calibration["target_fpr"],
                       "n_val_sessions": loaded.calibration.get("n_val_sessions")}

    stats = {"threshold": cal["threshold"], "previous_threshold": cal["previous"]["threshold"],
             "sessions": len(per_session), "items": int(n_items), "calibration_items": int(len(items)),
             "unseen_share": unseen_share, "promise": cal["promise"], "threshold_rule": cal["threshold_rule"],
             "lines": account, **({"feedback": cal["feedback"]} if "feedback" in cal else {})}
    return cal, stats
