"""Evaluation suite: one protocol of EVAL_PROTOCOLS.md, LogLM and the baselines on the same split.

``python -m pipelines.evaluate dataset=hdfs`` (or ``bgl``, ``zeek_ctu``): prepares the protocol's data if
needed, pretrains LogLM unless ``ckpt=`` names a model, then evaluates LogLM, a DeepLog-style LSTM, PCA and
IsolationForest on event counts.  Every model is trained on the training split's normal sessions only and
thresholded on the validation split's normal sessions at ``detect.target_fpr``; metrics on all and on
unique test items.  One MLflow parent run (``loglm-eval``) with a child run per model; the table goes to
``reports/eval_<protocol>__<dataset>-<data sha256[:8]>.md`` and ``.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from loglm.config import TrainerConfig
from loglm.evaluation import (
    METRIC_KEYS,
    event_items,
    event_scores,
    item_metrics,
    pair_window_calibration,
    session_scores,
    session_starts,
)

# published or re-run references on the same protocol (EVAL_PROTOCOLS.md)
REFERENCES = {
    "hdfs_keys": [("LogBERT (reference run, test-tuned threshold, short sessions dropped; F1 counting them as missed)",
                   {"precision": 0.992, "recall": 0.794, "f1": 0.667})],
}


def _split(data_dir: Path, name: str):
    from loglm.shards import read_sessions
    from loglm.windows import windows_of

    table = read_sessions(data_dir, name)
    toks, _, closed = windows_of(table)
    return table, toks, closed


def baselines(names: list[str], vocab_size: int, cfg) -> dict:
    """Every baseline of ``suite.baselines``, built from ``conf/baseline/<name>.yaml``
    (:mod:`loglm.baselines.detectors`) with this run's facts: LogLM's epoch budget and patience, seed,
    vocabulary, unseen-event surprisal and local networks."""
    from loglm.baselines.detectors import build

    runtime = {"vocab_size": vocab_size, "seed": cfg.trainer.seed, "epochs": cfg.trainer.max_epochs,
               "patience": cfg.trainer.patience, "unk_surprisal": cfg.detect.unk_surprisal,
               "local_networks": tuple(cfg.data.local_networks)}
    return {name: build(name, runtime, cfg.suite.baseline_epochs) for name in names}


def baseline_data(cfg, data_dir: Path):
    """(config, prepared folder, its manifest summary) of the window baselines' own vocabulary (``suite.baseline_tokenizer``): the
    suite's inputs prepared again under ``<data.name>.baselines`` with those tokenizer settings (again only
    when they or the inputs changed: :func:`loglm.ingest.prepare.stale_reason`).  Sessions, splits and items
    do not depend on the vocabulary; a folder whose test split differs from LogLM's is refused, since the
    models would no longer be scored on the same items."""
    from loglm.artifacts import verify_manifest
    from loglm.ingest.prepare import prepared_dir, stale_reason
    from loglm.ingest.prepare import run as prepare

    b_cfg = replace(cfg, tokenizer=replace(cfg.tokenizer, **cfg.suite.baseline_tokenizer),
                    data=replace(cfg.data, name=f"{cfg.data.name}.baselines"))
    b_dir = prepared_dir(cfg.paths.root, b_cfg.data.name)
    stale = stale_reason(b_dir, b_cfg) if (b_dir / "MANIFEST.json").is_file() else "not prepared yet"
    if stale:
        print(f"loglm: preparing {b_cfg.data.name} for the window baselines: {stale}", flush=True)
        prepare(b_cfg)
    ours, theirs = (verify_manifest(d)["summary"] for d in (data_dir, b_dir))
    for key in ("lines", "events", "sessions", "sessions_by_split", "labels_by_split"):
        if ours.get(key) != theirs.get(key):
            raise ValueError(f"suite.baseline_tokenizer={dict(cfg.suite.baseline_tokenizer)}: {b_dir} holds "
                             f"{key} {theirs.get(key)} where LogLM's data {data_dir} holds {ours.get(key)}; the "
                             "baselines would not be scored on LogLM's items (a tokenizer setting that changes "
                             "sessions or splits cannot be a baseline's own)")
    return b_cfg, b_dir, theirs


def run_baseline(model, cfg, data_dir: Path) -> tuple[dict, float, float, dict]:
    """(metrics, threshold, seconds, recall by class) of one baseline (a ``Detector``) on the prepared split:
    fitted on the training split's normal windows (validation normal windows for early stopping), thresholded
    on LogLM's validation items, scored on the test items LogLM scores."""
    if model.unit == "flow":
        return run_flow_baseline(model, cfg, data_dir)
    t0 = time.perf_counter()
    got = baseline_items(model, cfg, data_dir)
    metrics, by_class = item_metrics(got["ids"], got["labels"], got["scores"], got["keys"], got["threshold"], data_dir,
                                     cfg.data, got["starts"], got["pair_window"])
    return metrics, got["threshold"], time.perf_counter() - t0, by_class


def baseline_items(model, cfg, data_dir: Path) -> dict:
    """A window baseline fitted and thresholded as :func:`run_baseline` does, and its scored test items:
    threshold, ids, labels, scores, unique-item keys, session starts, and per item whether its session holds an
    event type the baseline's vocabulary never saw (``unseen``: what a recalibration on unlabelled traffic sets
    aside, as LogLM's does)."""
    from loglm.baselines.detectors import Windows
    from loglm.detect.score_core import session_max
    from loglm.detect.thresholds import normal_validation_mask, threshold_above_quiet
    from loglm.vocab import UNK
    from loglm.windows import windows_of

    train, tr_toks, tr_closed = _split(data_dir, "train")
    train_normal = np.asarray(train.column("label").to_numpy()) != 1
    val, v_toks, v_closed = _split(data_dir, "val")
    keep, _ = normal_validation_mask(val.column("label").to_numpy())  # the rule LogLM's calibration uses
    model.fit(Windows([t for t, k in zip(tr_toks, train_normal) if k], [c for c, k in zip(tr_closed, train_normal) if k]),
              Windows([t for t, k in zip(v_toks, keep) if k], [c for c, k in zip(v_closed, keep) if k]))
    del train, tr_toks, tr_closed, val, v_toks, v_closed  # not held while the test split is scored

    def scores_of(toks, closed):
        return model.score(Windows(toks, closed))

    # the floor LogLM's miss ratio has (loglm.detect.calibrate.threshold_of), for a baseline whose score has one
    threshold, _ = threshold_above_quiet(validation_scores(scores_of, data_dir, cfg.data), cfg.detect.target_fpr,
                                         getattr(model, "quiet_top", None))
    pair_window = None
    if cfg.data.eval_unit == "event" and cfg.data.eval_pair_window_s > 0:  # the pair-window unit's own threshold

        def val_piece(piece):
            toks, _, closed = windows_of(piece)
            ids, _, scores, _ = session_scores(piece, scores_of(toks, closed))
            return event_scores(piece, ids, scores, data_dir, cfg.data)

        vi, vy, vs, _ = test_items(data_dir, replace(cfg, split="val"), val_piece)
        pair_window = pair_window_calibration(vi, vy, vs, data_dir, cfg.data, cfg.detect.target_fpr,
                                              cfg.detect.small_validation, getattr(model, "quiet_top", None))
    starts: dict[str, float] = {}
    unseen: list[np.ndarray] = []

    def score_piece(piece):
        toks, _, closed = windows_of(piece)
        ids, labels, scores, seqs = session_scores(piece, scores_of(toks, closed))
        has_unk = session_max(piece.column("session_id").to_pylist(), np.array([float((t == UNK).any()) for t in toks]))
        starts.update(session_starts(piece))
        if cfg.data.eval_unit == "event":
            unseen.append(event_items(piece, dict.fromkeys(ids), has_unk)[1])
            return event_scores(piece, ids, scores, data_dir, cfg.data)
        unseen.append(np.array([has_unk[i] for i in ids]))
        return ids, labels, scores, seqs

    ids, labels, scores, seqs = test_items(data_dir, cfg, score_piece)
    return {"threshold": threshold, "ids": ids, "labels": labels, "scores": scores, "keys": seqs, "starts": starts,
            "pair_window": pair_window, "unseen": np.concatenate(unseen).astype(bool) if unseen else np.zeros(0, bool)}


def test_items(data_dir: Path, cfg, score_piece) -> tuple[list, np.ndarray, np.ndarray, list]:
    """(ids, labels, scores, unique-item keys) of the test split's items, scored a piece of sessions at a time
    (:func:`loglm.shards.split_pieces`, as LogLM's own evaluation scores it): ``score_piece(table)`` gives one
    piece's items.  A baseline is trained on its training split in memory, as its library trains; the test split
    is never held whole."""
    from loglm.shards import PIECE_ROWS, split_pieces

    ids, labels, scores, keys = [], [], [], []
    for piece in split_pieces(data_dir, cfg.split, min(cfg.data.shard_rows, PIECE_ROWS)):
        i, y, s, k = score_piece(piece)
        ids.extend(i)
        labels.append(np.asarray(y, np.int64))
        scores.append(np.asarray(s, np.float64))
        keys.extend(k)
    if not ids:
        return [], np.zeros(0, np.int64), np.zeros(0), []
    return ids, np.concatenate(labels), np.concatenate(scores), keys


def validation_scores(scores_of, data_dir: Path, data) -> np.ndarray:
    """A window model's calibration items, chosen as LogLM's calibration chooses them
    (``loglm.detect.calibrate.validation_items``): its validation-normal sessions, or with
    ``data.eval_unit=event`` one item per labelled-normal event carrying its session's highest window score.
    One rule for every model: before, the baselines took one item per session while LogLM took one per flow."""
    from loglm.detect.calibrate import validation_items
    from loglm.detect.score_core import session_max
    from loglm.windows import windows_of

    val, _, weights, _, _ = validation_items(data_dir, data)
    toks, _, closed = windows_of(val)
    per_session = session_max(val.column("session_id").to_pylist(), scores_of(toks, closed))
    if weights is None:
        return np.array(list(per_session.values()))
    return np.repeat(np.array([per_session[s] for s in weights]), np.array(list(weights.values())))


def run_flow_baseline(model, cfg, data_dir: Path) -> tuple[dict, float, float, dict]:
    """A flow-feature baseline (loglm.baselines.flow_features): every flow scored on its own fields; trained
    on the training sessions' flows, thresholded on the validation split's normal flows, per flow on test."""
    t0 = time.perf_counter()
    got = flow_baseline_items(model, cfg, data_dir)
    metrics, by_class = item_metrics(got["ids"], got["labels"], got["scores"], got["keys"], got["threshold"], data_dir,
                                     cfg.data, pair_window=got["pair_window"])
    return metrics, got["threshold"], time.perf_counter() - t0, by_class


def flow_baseline_items(model, cfg, data_dir: Path) -> dict:
    """A flow-feature baseline fitted and thresholded as :func:`run_flow_baseline` does, and its scored test
    flows: threshold, ids, labels, scores, unique-item keys."""
    from loglm.baselines.flow_features import read_flow_columns, read_flows
    from loglm.detect.thresholds import threshold_for_fpr
    from loglm.ingest.sessions import event_label
    from loglm.shards import read_sessions

    if cfg.data.eval_unit != "event":
        raise ValueError("flow-feature baselines score flows: they need data.eval_unit=event on flow data")
    normal, unknown = set(cfg.data.normal_labels), set(cfg.data.unknown_labels)

    def flows_and_labels(ids: list[int]) -> tuple[list[dict], list[int]]:
        """Each event's fields and label in one read of the events table."""
        flows, cols = read_flow_columns(data_dir, ids, ("label",))
        return flows, [event_label(lab, normal, unknown) for lab in cols["label"]]

    def events_of(split: str, normal_sessions_only: bool = False) -> list[int]:
        """Event ids in input order: a model fitted on them does not depend on how sessions lie in shards."""
        t = read_sessions(data_dir, split)
        return sorted(j for lab, idx in zip(t.column("label").to_pylist(), t.column("event_idx").to_pylist())
                      if not (normal_sessions_only and lab == 1) for j in idx)

    model.fit(read_flows(data_dir, events_of("train", normal_sessions_only=True)))
    val_ids = events_of("val")
    val_flows, val_labels = flows_and_labels(val_ids)
    val_scores = model.score(val_flows) if val_ids else np.zeros(0)
    del val_flows
    threshold = threshold_for_fpr(val_scores[np.asarray(val_labels) == 0], cfg.detect.target_fpr)
    pair_window = pair_window_calibration(val_ids, np.asarray(val_labels), val_scores, data_dir, cfg.data,
                                          cfg.detect.target_fpr, cfg.detect.small_validation)

    def score_piece(piece):
        ids = sorted(j for idx in piece.column("event_idx").to_pylist() for j in idx)
        flows, labels = flows_and_labels(ids)
        return ids, labels, model.score(flows) if ids else np.zeros(0), model.keys(flows)

    ids, labels, scores, keys = test_items(data_dir, cfg, score_piece)
    return {"threshold": threshold, "ids": ids, "labels": labels, "scores": scores, "keys": keys,
            "pair_window": pair_window}


DEFAULT_SEED = TrainerConfig.seed  # its reports keep the plain name


def report_stem(protocol: str, dataset: str, data_sha256: str, seed: int = DEFAULT_SEED) -> str:
    """Reports are named by protocol, dataset and the prepared data's hash: the same protocol run on other
    inputs (another capture, another day) never overwrites this one's report; a run with another
    ``trainer.seed`` (seeds 42 / 1 / 2 of one protocol) gets ``-seed<S>`` and does not overwrite it either."""
    return f"eval_{protocol}__{dataset}-{data_sha256[:8]}" + ("" if seed == DEFAULT_SEED else f"-seed{seed}")


def f1_ceiling_note(m: dict, target_fpr: float, unit: str) -> tuple[str, float] | None:
    """What the target FPR allows on this test split: the best F1 of a detector that catches every anomaly
    and whose test FPR equals the target (an F1 goal above it asks for a lower target, not a better model)."""
    from loglm.detect.metrics import f1_ceiling_of

    n_anom, n_normal = m["tp"] + m["fn"], m["fp"] + m["tn"]
    if not n_anom or not n_normal:
        return None
    top = f1_ceiling_of(m, target_fpr)
    return (f"F1 ceiling at the target: with {n_anom:,} anomalous and {n_normal:,} normal test {unit}s, a detector "
            f"whose test FPR equals the target {target_fpr} makes about {target_fpr * n_normal:,.0f} false positives "
            f"and reaches at most F1 {top:.3f}, even catching every anomaly.", top)


def markdown(protocol: str, rows: dict[str, dict], notes: list[str], target_fpr: float) -> str:
    """The suite's table; "FPR / target" is the test FPR over the target it was calibrated for (<= 2 holds)."""
    lines = [f"# Evaluation: `{protocol}`", "", *notes, "",
             "| model | items | precision | recall | F1 | FPR | FPR / target | AUROC | PR-AUC | TP | FP | TN | FN | threshold |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, r in rows.items():
        for part in ("all", "unique", "pair_window", "alerts"):
            if part not in r["metrics"]:
                continue
            m = r["metrics"][part]
            extra = f" (F1 at HDFS prevalence {m['f1_reweighted']:.3f})" if "f1_reweighted" in m else ""
            ratio = m["fpr"] / target_fpr
            lines.append(f"| {model} | {part}{extra} | " + " | ".join(f"{m[k]:.4f}" for k in METRIC_KEYS[:1])
                         + " | " + " | ".join(f"{m[k]:.4f}" for k in ("recall", "f1", "fpr"))
                         + f" | {ratio:.2f}{'' if ratio <= 2 else ' (over 2x)'} | "
                         + " | ".join(f"{m[k]:.4f}" for k in ("auroc", "pr_auc"))
                         + f" | {m['tp']} | {m['fp']} | {m['tn']} | {m['fn']} | {m.get('threshold', r['threshold']):.4g} |")
    for name, ref in REFERENCES.get(protocol, []):
        lines.append(f"| {name} | all | {ref['precision']:.3f} | {ref['recall']:.3f} | {ref['f1']:.3f} | | | | | | | | | |")
    own = {m: r["metrics"]["pair_window"] for m, r in rows.items()
           if r["metrics"].get("pair_window", {}).get("threshold_unit") == "pair_window"}
    if own:
        lines += ["", "Pair-window thresholds: each model's pair-windows alert at a threshold of its own, the conformal "
                  "quantile of the validation split's normal pair-windows (each its highest flow score) for the same "
                  "target, as every unit is calibrated; a threshold set per flow alerts on a pair-window whenever any of "
                  "its flows passes it. At the per-flow threshold the same pair-windows gave:", "",
                  "| model | pair-window threshold | validation pair-windows | expected FPR (90% interval) | test FPR | "
                  "F1 | at the per-flow threshold: FPR | F1 |", "|---|---|---|---|---|---|---|---|"]
        for model, pw in own.items():
            lo, hi = pw["fpr_interval_90"]
            lines.append(f"| {model} | {pw['threshold']:.4g} | {pw['n_val_pair_windows']} | {pw['expected_fpr']:.4f} "
                         f"({lo:.4f}-{hi:.4f}) | {pw['fpr']:.4f} | {pw['f1']:.4f} | {pw['fpr_at_flow_threshold']:.4f} | "
                         f"{pw['f1_at_flow_threshold']:.4f} |")
        warned = {m: pw["calibration_warning"] for m, pw in own.items() if pw.get("calibration_warning")}
        lines += [f"- **{m}**: {w}" for m, w in warned.items()]
    over = {m: r["metrics"]["pair_window"] for m, r in rows.items()
            if r["metrics"].get("pair_window", {}).get("threshold_unit") == "flow"
            and r["metrics"]["pair_window"]["fpr"] > 2 * target_fpr}
    if over:
        lines += ["", "Pair-window FPR over twice the target: every threshold was set per flow, and a pair-window "
                  "alerts when any of its flows does. The FPR its normal flows would give if each alerted on its own "
                  "at the per-flow FPR (1 - (1 - p)^m per window, averaged) beside the one measured; alerting per "
                  "pair-window at the target would take a threshold set on validation pair-windows:", "",
                  "| model | normal flows per normal pair-window | per-flow FPR | pair-window FPR if flows alerted "
                  "independently | measured |", "|---|---|---|---|---|"]
        for model, pw in over.items():
            lines.append(f"| {model} | {pw['normal_flows_per_item']:.2f} | {pw['flow_fpr']:.4f} | "
                         f"{pw['fpr_if_flows_independent']:.4f} | {pw['fpr']:.4f} |")
    beside = {m: r["metrics"]["all"]["fp_beside_attack"] for m, r in rows.items() if "fp_beside_attack" in r["metrics"]["all"]}
    if beside:
        lines += ["", "False positives beside attacks: normal-labelled flows above the threshold between two hosts that "
                  "exchange attack flows in the same window (on CIC-IDS2017 mostly the attacks' reverse-direction flows, "
                  "which the dataset labels benign). They stay counted in FP and FPR above; the FPR without them:", "",
                  "| model | FP | beside attacks | FPR without them |", "|---|---|---|---|"]
        for model, n in beside.items():
            m = rows[model]["metrics"]["all"]
            fp, tn = m["fp"] - n, m["tn"]
            lines.append(f"| {model} | {m['fp']} | {n} | {fp / max(1, fp + tn):.4f} |")
    periods = sorted({p for r in rows.values() for p in r["metrics"].get("fpr_by_period", {})})
    if len(periods) > 1:
        lines += ["", f"Test FPR by period (does the threshold, set for {target_fpr} on validation, hold over the test "
                  "period? per UTC day, or per quarter of the test items in time order; false positives / normal items):",
                  "", "| model | " + " | ".join(periods) + " |", "|---" * (len(periods) + 1) + "|"]
        for model, r in rows.items():
            by = r["metrics"].get("fpr_by_period", {})
            lines.append(f"| {model} | " + " | ".join(
                f"{by[p]['fpr']:.4f} ({by[p]['fp']}/{by[p]['normal']})" if p in by else "" for p in periods) + " |")
    classes = sorted({c for r in rows.values() for c in r.get("recall_by_class", {})})
    if classes:
        lines += ["", "Recall per anomalous class (items in the test split):", "",
                  "| model | " + " | ".join(f"{c} ({next(r['recall_by_class'][c]['n'] for r in rows.values() if c in r.get('recall_by_class', {}))})" for c in classes) + " |",
                  "|---" * (len(classes) + 1) + "|"]
        for model, r in rows.items():
            rc = r.get("recall_by_class", {})
            lines.append(f"| {model} | " + " | ".join(f"{rc[c]['recall']:.3f}" if c in rc else "" for c in classes) + " |")
    return "\n".join(lines) + "\n"


def run(cfg) -> dict:

    from loglm import tracking
    from loglm.artifacts import atomic_write_json, verify_manifest
    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import prepared_dir, stale_reason
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain
    from loglm.vocab import Vocabulary

    protocol = cfg.suite.protocol or cfg.data.name
    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    stale = stale_reason(data_dir, cfg) if (data_dir / "MANIFEST.json").is_file() else "not prepared yet"
    if stale:  # never evaluate on a prepared folder made from other inputs or settings
        print(f"loglm: preparing {cfg.data.name}: {stale}", flush=True)
        prepare(cfg)
    summary = verify_manifest(data_dir)["summary"]
    from loglm.model.store import load_model, resolve_model_dir

    ckpt = str(resolve_model_dir(cfg.ckpt, cfg.paths.root)) if cfg.ckpt else pretrain(cfg)["model_dir"]
    calibration = load_model(ckpt, verify=False).calibration  # read once: the threshold, its target, its caveat
    calibrated_for = calibration.get("target_fpr")
    if calibrated_for is not None and abs(float(calibrated_for) - cfg.detect.target_fpr) > 1e-12:
        # LogLM keeps its model's threshold: the baselines would be thresholded for another FPR
        raise ValueError(f"ckpt={cfg.ckpt}: the model is calibrated for target FPR {calibrated_for}, the suite asks "
                         f"detect.target_fpr={cfg.detect.target_fpr}; every model must be thresholded for the same "
                         f"target: pass detect.target_fpr={calibrated_for}, or recalibrate the model for the new target "
                         "(python -m pipelines.calibrate ckpt=... detect.target_fpr=...)")
    exp = tracking.ensure_experiment(cfg, "loglm-eval")
    client = tracking.client(cfg)
    parent = client.create_run(exp, run_name=f"suite-{protocol}", tags=tracking.run_tags(cfg, {
        "protocol": protocol, "data_sha256": summary["data_sha256"], "split": cfg.split,
        "baselines": ",".join(cfg.suite.baselines)})).info.run_id
    with tracking.run_outcome(client, parent):
        for k, v in {"protocol": protocol, "target_fpr": cfg.detect.target_fpr, "split": cfg.split, "dataset": cfg.data.name,
                     "eval_unit": cfg.data.eval_unit, "baselines": ",".join(cfg.suite.baselines), "model_dir": ckpt}.items():
            client.log_param(parent, k, str(v)[:500])
        tracking.log_dataset_input(client, parent, data_dir, summary, "evaluation")
        rows: dict[str, dict] = {}
        ours = evaluate(replace(cfg, ckpt=ckpt), parent_run_id=parent)

        rows["LogLM"] = {"metrics": ours["metrics"], "threshold": float(calibration["threshold"]),
                         "calibration_warning": calibration.get("warning"),
                         "run_id": ours["run_id"], "recall_by_class": ours["recall_by_class"]}
        vocab_size = Vocabulary.load(data_dir / "vocab.json").size
        built = baselines(list(cfg.suite.baselines), vocab_size, cfg)
        window_cfg, window_dir, window_summary = cfg, data_dir, summary
        own = replace(cfg.tokenizer, **cfg.suite.baseline_tokenizer)
        if own != cfg.tokenizer and any(m.unit == "window" for m in built.values()):  # else LogLM's folder
            window_cfg, window_dir, window_summary = baseline_data(cfg, data_dir)
            size = Vocabulary.load(window_dir / "vocab.json").size
            built.update(baselines([n for n, m in built.items() if m.unit == "window"], size, window_cfg))
        for name, model in built.items():
            b_cfg, b_dir, b_summary = ((window_cfg, window_dir, window_summary) if model.unit == "window"
                                       else (cfg, data_dir, summary))
            metrics, threshold, seconds, by_class = run_baseline(model, b_cfg, b_dir)
            child = client.create_run(exp, run_name=name, tags=tracking.run_tags(cfg, {
                "mlflow.parentRunId": parent, "model": name, "protocol": protocol,
                "data_sha256": b_summary["data_sha256"]}))
            cid = child.info.run_id
            for k, v in {"threshold": threshold, "target_fpr": cfg.detect.target_fpr, "model": name, "split": cfg.split,
                         "eval_unit": cfg.data.eval_unit, "dataset": cfg.data.name,
                         "epochs": getattr(model, "epochs_run", None) or "-"}.items():
                client.log_param(cid, k, str(v))
            tracking.log_dataset_input(client, cid, b_dir, b_summary, "evaluation")
            if b_dir != data_dir:
                client.log_param(cid, "tokenizer", json.dumps(cfg.suite.baseline_tokenizer, sort_keys=True))
            for part, m in metrics.items():
                for k, v in m.items():
                    if isinstance(v, int | float) and np.isfinite(v):
                        client.log_metric(cid, f"eval/{k}" if part == "all" else f"eval_{part}/{k}", float(v))
            client.log_metric(cid, "eval/threshold", threshold)
            client.log_metric(cid, "perf/seconds", seconds)
            client.set_terminated(cid)
            rows[name] = {"metrics": metrics, "threshold": threshold, "run_id": cid, "recall_by_class": by_class,
                          "data": {"name": b_dir.name, "data_sha256": b_summary["data_sha256"]}}
        for name, r in rows.items():  # the parent shows every model's headline numbers side by side
            for k in ("f1", "auroc", "precision", "recall", "fpr"):
                client.log_metric(parent, f"{name}/{k}", float(r["metrics"]["all"][k]))
        notes = [f"Protocol `{protocol}` (EVAL_PROTOCOLS.md), data `{cfg.data.name}` (sha256 {summary['data_sha256'][:16]}), "
                 f"test split `{cfg.split}`, metrics per {cfg.data.eval_unit}; every model trained on normal training "
                 f"sessions only, threshold from the validation split's normal {'events (flows), each carrying its window score' if cfg.data.eval_unit == 'event' else 'sessions'} "
                 f"at target FPR {cfg.detect.target_fpr}, one rule for every model.",
                 f"LogLM model `{ckpt}`" + ("." if cfg.ckpt else f", trained up to {cfg.trainer.max_epochs} epochs "
                                            f"with early stopping (patience {cfg.trainer.patience})."),
                 f"MLflow parent run `{parent}` (experiment loglm-eval), one child run per model."]
        from loglm.baselines.detectors import describe

        for name, model in built.items():  # each baseline as its conf/baseline file describes it
            ran = getattr(model, "epochs_run", None)
            notes.append(f"`{name}` ({model.unit}s): {describe(name)}" + (f" Epochs run: {ran}." if ran else ""))
        if window_dir != data_dir:
            settings = ", ".join(f"`tokenizer.{k}={v}`" for k, v in sorted(cfg.suite.baseline_tokenizer.items()))
            notes.append(f"The window baselines read their own vocabulary ({settings}, `suite.baseline_tokenizer`: "
                         f"their best on this protocol), prepared from the same inputs into `{window_dir.name}` "
                         f"(sha256 {window_summary['data_sha256'][:16]}): the same sessions "
                         "and test items, every event read as that tokenizer reads it; LogLM reads its own.")
        if cfg.data.eval_pair_window_s > 0:
            notes.append(f"`pair_window` rows: per source-destination pair per {cfg.data.eval_pair_window_s:g}-second window "
                         "(the window's highest flow score, anomalous if any flow is), each model at its own pair-window "
                         "threshold from the validation split's normal pair-windows (table below); a model whose "
                         "threshold came from other traffic (a transfer, a recalibration) at its per-flow threshold.")
        al = rows["LogLM"]["metrics"].get("alerts")
        if al:
            notes.append(f"`alerts` row (LogLM): the sessions (`data.session.by={cfg.data.session.by}`) its detection raises an alert for "
                         f"(a session scores its highest flow), at its alert threshold ({al['threshold']:.4g}) set on "
                         f"the validation split's normal sessions; at the per-flow threshold the same sessions gave "
                         f"FPR {al['fpr_at_item_threshold']:.4f} and F1 {al['f1_at_item_threshold']:.4f}.")
        promise = calibration.get("promise") or {}
        if calibration.get("warning"):  # the threshold's own caveat, where every reader of the table sees it
            notes.append(f"**Calibration warning** (every model's threshold comes from this validation set): "
                         f"{calibration['warning']}.")
        if promise:
            lo, hi = promise["fpr_interval_90"]
            notes.append(f"LogLM's threshold promises an expected test FPR of {promise['expected_fpr']:.4f} (90% "
                         f"interval {lo:.4f}-{hi:.4f}) from {promise['n_normal']} independent validation items.")
        ceiling = f1_ceiling_note(rows["LogLM"]["metrics"]["all"], cfg.detect.target_fpr, cfg.data.eval_unit)
        if ceiling:
            notes.append(ceiling[0])
            client.log_metric(parent, "f1_ceiling_at_target", ceiling[1])
        if cfg.data.label_field or "label" in cfg.data.fields:
            notes.append("Attack classes come from the data's label column"
                         + (f" `{cfg.data.fields['label']}`" if "label" in cfg.data.fields else "") + ".")
        text = markdown(protocol, rows, notes, cfg.detect.target_fpr)
        reports = Path(cfg.suite.reports_dir or Path(cfg.paths.root).resolve().parent / "reports")
        reports.mkdir(parents=True, exist_ok=True)
        stem = report_stem(protocol, cfg.data.name, summary["data_sha256"], cfg.trainer.seed)
        (reports / f"{stem}.md").write_text(text)
        atomic_write_json(reports / f"{stem}.json", {"protocol": protocol, "parent_run_id": parent,
                                                     "target_fpr": cfg.detect.target_fpr, "model_dir": ckpt,
                                                     "models": rows})
        client.log_text(parent, text, f"{stem}.md")
    print(text)
    return {"parent_run_id": parent, "protocol": protocol, "models": rows, "markdown": str(reports / f"{stem}.md"),
            "target_fpr": cfg.detect.target_fpr, "model_dir": ckpt}
