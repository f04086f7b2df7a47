"""Daily recalibration on cic_flowprep: the Monday model's threshold set again from Tuesday's unlabelled flows,
then judged on Wednesday, which neither training nor either threshold saw.

    python -m benchmarks.cic_rolling [--seed 42] [--root DIR] [--ckpt MODEL_DIR] [--peers deeplog,pca,flow_pca]

What a deployment does each morning (`pipelines.calibrate ckpt=<model> inputs=[yesterday's flows]`): the
weights stay, the threshold follows the traffic.  Steps (protocol cic_flowprep, `dataset=cic_flowprep`):
prepare and pretrain on Monday as the protocol does (or take ``--ckpt``, a model of that protocol whose
prepared data is under ``--root``); evaluate with Monday's threshold; write Tuesday's flows without any label
column (the recalibration cannot read labels it is not given); recalibrate on them; evaluate again.  The
figure that counts is Wednesday's: test FPR per UTC day comes from the suite's "by period" metric, recall
from Wednesday's attack classes.  Tuesday's figures after recalibration are in-sample (its flows set the
threshold) and printed only as such.  ``--peers``: the suite's baselines, each fitted and thresholded on
Monday as the suite does, then given the same recalibration on Tuesday's scores (:func:`peer`).  Needs
../shared/data/cic2017_flowprep.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from loglm.config import PROJECT_ROOT, compose

DATA = PROJECT_ROOT.parent / "shared" / "data" / "cic2017_flowprep" / "cic2017_mon_wed.parquet"
LABEL_COLUMNS = ("label", "attack", "attack_type_inferred", "timestamp_original")


def day_flows(day: str, out: Path, source: Path = DATA, labels: bool = False) -> dict[str, int]:
    """``source``'s flows of one UTC-naive calendar day (``YYYY-MM-DD``) written to ``out`` without any label
    column (with them when ``labels``: what a simulated analyst reads, never a model); returns the day's attack
    classes and counts (read here, never given to the recalibration)."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(source)
    start = dt.datetime.fromisoformat(day)
    lo, hi = (pa.scalar(x, type=t.schema.field("timestamp").type) for x in (start, start + dt.timedelta(days=1)))
    day_t = t.filter(pc.and_(pc.greater_equal(t["timestamp"], lo), pc.less(t["timestamp"], hi)))
    pq.write_table(day_t if labels else day_t.drop_columns([c for c in LABEL_COLUMNS if c in day_t.column_names]), out)
    counts = pc.value_counts(day_t["attack_type_inferred"]).to_pylist()
    return dict(sorted((c["values"], c["counts"]) for c in counts))


def day_figures(ev: dict, day: str, classes: dict[str, int], normal_labels=("BENIGN",)) -> dict:
    """One day's test FPR, recall and F1 from an evaluation: false positives from its per-day FPR, detected
    attacks from the recall of that day's attack classes (``classes``: the day's labels and counts)."""
    by_day = ev["metrics"]["fpr_by_period"][day]
    attacks = {c: n for c, n in classes.items() if c not in normal_labels}
    tp = sum(ev["recall_by_class"][c]["detected"] for c in attacks)
    n = sum(ev["recall_by_class"][c]["n"] for c in attacks)
    fp = by_day["fp"]
    out = {"fpr": by_day["fpr"], "fp": fp, "normal": by_day["normal"], "recall": tp / n if n else float("nan"),
           "f1": 2 * tp / (2 * tp + fp + (n - tp)) if n else float("nan"),
           "recall_by_class": {c: ev["recall_by_class"][c]["recall"] for c in attacks}}
    alerts = ev["metrics"].get("alerts", {}).get("fpr_by_period", {}).get(day)
    if alerts:  # what an analyst is sent that day: host-windows alerted at the alert threshold
        out["alerts"] = alerts
    return out


def peer(name: str, cfg, calibrate_on: str, judge_on: str) -> dict:
    """A baseline of the suite given the same daily recalibration: fitted and thresholded on Monday as the suite
    does (a window baseline on its own vocabulary, ``suite.baseline_tokenizer``; a flow-feature one on each
    flow's fields), then its threshold set again for the target FPR from its scores of ``calibrate_on``'s flows
    without their labels: over every flow, and for a window baseline also over the flows whose window holds no
    event type its vocabulary never saw (LogLM's rule); judged on ``judge_on``.  Rows: name -> figures on the
    judged day."""
    from loglm.detect.thresholds import threshold_for_fpr
    from loglm.evaluation import item_times
    from loglm.evaluation_suite import baseline_data, baseline_items, baselines, flow_baseline_items
    from loglm.ingest.prepare import prepared_dir
    from loglm.vocab import Vocabulary

    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    model = baselines([name], Vocabulary.load(data_dir / "vocab.json").size, cfg)[name]
    if model.unit == "window":
        b_cfg, b_dir, _ = baseline_data(cfg, data_dir)
        model = baselines([name], Vocabulary.load(b_dir / "vocab.json").size, b_cfg)[name]
        got = baseline_items(model, b_cfg, b_dir)
    else:
        b_dir = data_dir
        got = {**flow_baseline_items(model, cfg, data_dir), "unseen": None}
    y, s, unseen = got["labels"], got["scores"], got["unseen"]
    day = np.datetime_as_string(np.floor(item_times(got["ids"], None, b_dir, "event")).astype("datetime64[s]"),
                                unit="D")
    cal, judged = day == calibrate_on, (day == judge_on) & (y >= 0)
    target = cfg.detect.target_fpr
    thresholds = {f"{name}, Monday threshold": got["threshold"],
                  f"{name}, recalibrated on every flow": threshold_for_fpr(s[cal], target)}
    if unseen is not None:
        thresholds[f"{name}, recalibrated without unseen-event windows"] = threshold_for_fpr(s[cal & ~unseen], target)
    out = {}
    for row, thr in thresholds.items():
        pred, yy = s[judged] > thr, y[judged]
        tp, fp, fn = int((pred & (yy == 1)).sum()), int((pred & (yy == 0)).sum()), int((~pred & (yy == 1)).sum())
        normal = int((yy == 0).sum())
        out[row] = {"threshold": float(thr), "fpr": fp / normal, "fp": fp, "normal": normal,
                    "recall": tp / max(1, tp + fn), "f1": 2 * tp / max(1, 2 * tp + fp + fn)}
    return out


def triage(cfg, model_dir: str, root: Path, source: Path, day: str) -> tuple[Path, dict]:
    """The model's alerts on ``day``'s flows, each given the verdict its flows' labels say by an analyst who is
    always right (``benchmarks.hdfs_triage_sim.simulated_triage``: malicious where the session holds an attack
    flow), into ``feedback_<day>.jsonl``: (the table, the verdict counts)."""
    from benchmarks.hdfs_triage_sim import simulated_triage
    from loglm.detect.detector import run as detect

    table = root / f"feedback_{day}.jsonl"
    labelled = root / f"flows_{day}_labelled.parquet"  # the analyst's view only: detection shows the labels
    day_flows(day, labelled, source, labels=True)
    alerts = root / f"alerts_{day}.jsonl"
    detect(replace(cfg, ckpt=model_dir, inputs=[str(labelled)], out=str(alerts),
                   detect=replace(cfg.detect, data_from="command")))
    return table, simulated_triage(alerts, table)


def tuned(cfg, model_dir: str, root: Path, source: Path, day: str, verdicts: bool, replay: str | None = None
          ) -> tuple[dict, dict]:
    """The analyst's loop on ``day``: the model detects on the day's flows, an analyst who is always right gives
    every alert the verdict its flows' labels say (``benchmarks.hdfs_triage_sim.simulated_triage``: malicious
    where the session holds an attack flow), and one ``pipelines.tune`` round continues pretraining on the day's
    unlabelled flows with those verdicts (malicious sessions kept out, benign ones trained on; vocabulary grown;
    threshold from 30 % of the day's sessions).  ``verdicts=False``: the same round with no verdicts, every
    session of the day taken as normal.  ``replay``: a day whose flows (the model's training day) are tuned on
    beside the new day's, unlabelled, so the round does not forget what the model knew.  Returns (the tuned
    model's evaluation, the tuning summary)."""
    from loglm.analyst.tune import run as tune
    from loglm.evaluation import run as evaluate

    table, counts = triage(cfg, model_dir, root, source, day) if verdicts else (None, {})
    inputs = [root / f"flows_{day}_unlabelled.parquet"]
    if replay:
        inputs.insert(0, root / f"flows_{replay}_unlabelled.parquet")
        day_flows(replay, inputs[0], source)
    out = tune(replace(cfg, ckpt=model_dir, inputs=[str(p) for p in inputs],
                       tune=replace(cfg.tune, export=False, feedback=str(table) if verdicts else None)))
    out["verdicts"] = counts
    return evaluate(replace(cfg, ckpt=out["model_dir"])), out


def main(argv: list[str] | None = None) -> dict:
    from loglm.detect.recalibrate import run as recalibrate
    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="runs folder (default: a new temporary one)")
    p.add_argument("--ckpt", help="a cic_flowprep model folder to start from (its data prepared under --root)")
    p.add_argument("--seed", type=int, default=42, help="trainer.seed of the training run")
    p.add_argument("--calibrate-on", default="2017-07-04", help="the day whose unlabelled flows set the threshold")
    p.add_argument("--judge-on", default="2017-07-05", help="the day the recalibrated threshold is judged on")
    p.add_argument("--data", help="the flows (cic2017_flowprep's columns; default: the protocol's own input)")
    p.add_argument("--peers", default="deeplog", help="comma-separated baselines of the suite given the same "
                   "recalibration (deeplog, pca, flow_pca, kitnet, ...: as the suite runs them); empty: none")
    p.add_argument("--tune", default="", help="comma-separated: verdicts (the Monday model's alerts on the "
                   "calibration day get an always-right analyst's verdicts, then one pipelines.tune round on that "
                   "day's flows), replay (the same with the training day's flows tuned on beside them), blind "
                   "(the calibration day's flows, no verdicts); each a row judged on --judge-on")
    p.add_argument("--train-day", default="2017-07-03", help="the model's training day (--tune replay)")
    p.add_argument("--recalibrate-with-verdicts", action="store_true", help="also recalibrate with an always-right "
                   "analyst's verdicts on the calibration day's alerts (detect.recalibration_feedback)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every step (e.g. model=tiny)")
    a = p.parse_args(argv)
    source = Path(a.data) if a.data else DATA
    if not source.exists():
        raise SystemExit(f"needs {source} (../shared/data beside the repository)")
    root = Path(a.root or tempfile.mkdtemp(prefix="loglm-cic-rolling-")).resolve()
    cfg = compose("evaluate", ["dataset=cic_flowprep", f"paths.root={root}", "trainer.progress_bar=false",
                               "suite.enabled=false", f"trainer.seed={a.seed}",
                               *([f"data.inputs=[{source}]"] if a.data else []), *a.overrides])
    if a.ckpt:
        model_dir = a.ckpt
    else:
        prepare(cfg)
        model_dir = pretrain(cfg)["model_dir"]
    before = evaluate(replace(cfg, ckpt=model_dir))
    day = root / f"flows_{a.calibrate_on}_unlabelled.parquet"
    day_classes = day_flows(a.calibrate_on, day, source)
    judge_classes = day_flows(a.judge_on, root / f"flows_{a.judge_on}_unlabelled.parquet", source)
    rec = recalibrate(replace(cfg, ckpt=model_dir, inputs=[str(day)]))  # a new folder beside the model, each run
    after = evaluate(replace(cfg, ckpt=rec["model_dir"]))
    normal = tuple(cfg.data.normal_labels)
    rows = {"Monday threshold": day_figures(before, a.judge_on, judge_classes, normal),
            f"recalibrated on {a.calibrate_on}'s unlabelled flows": day_figures(after, a.judge_on, judge_classes, normal)}
    rows["Monday threshold"]["threshold"] = before["metrics"]["all"]["threshold"]
    rows[f"recalibrated on {a.calibrate_on}'s unlabelled flows"]["threshold"] = rec["threshold"]
    if a.recalibrate_with_verdicts:  # the same recalibration, the day's alerts judged first
        table, counts = triage(cfg, model_dir, root, source, a.calibrate_on)
        rv = recalibrate(replace(cfg, ckpt=model_dir, inputs=[str(day)],
                                 detect=replace(cfg.detect, recalibration_feedback=str(table))))
        name = f"recalibrated on {a.calibrate_on}'s unlabelled flows with verdicts on every alert"
        rows[name] = {**day_figures(evaluate(replace(cfg, ckpt=rv["model_dir"])), a.judge_on, judge_classes, normal),
                      "threshold": rv["threshold"], "feedback": rv["feedback"], "verdicts": counts}
    tuning = {}
    for mode in (x.strip() for x in a.tune.split(",") if x.strip()):
        names = {"verdicts": f"tuned on {a.calibrate_on}'s flows with verdicts on every alert",
                 "replay": f"tuned on {a.train_day}'s and {a.calibrate_on}'s flows with verdicts on every alert",
                 "blind": f"tuned on {a.calibrate_on}'s flows, no verdicts"}
        if mode not in names:
            raise SystemExit(f"--tune takes {', '.join(names)}, got {mode!r}")
        ev, summary = tuned(cfg, model_dir, root, source, a.calibrate_on, mode != "blind",
                            a.train_day if mode == "replay" else None)
        name = names[mode]
        rows[name] = {**day_figures(ev, a.judge_on, judge_classes, normal), "threshold": summary["threshold"]["after"]}
        tuning[mode] = {k: summary.get(k) for k in ("model_dir", "verdicts", "sessions_by_split", "vocab_growth",
                                                    "unvetted_alerting", "threshold", "calibration_warning")}
    rows = {f"LogLM, {k}": v for k, v in rows.items()}
    for name in (x.strip() for x in a.peers.split(",") if x.strip()):
        rows.update(peer(name, cfg, a.calibrate_on, a.judge_on))
    print(f"\n| {a.judge_on} (not seen by training or the Monday threshold; the recalibrations read "
          f"{a.calibrate_on} only) | threshold | test FPR (target {cfg.detect.target_fpr}) | false positives | "
          "recall | F1 | false alerts per host-window (FPR) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        al = r.get("alerts")  # LogLM's: the host-windows its detection sends at its alert threshold
        alerts = f"{al['fp']} / {al['normal']} ({al['fpr']:.4f})" if al else "—"
        print(f"| {name} | {r['threshold']:.3f} | {r['fpr']:.4f} | {r['fp']} / {r['normal']} | {r['recall']:.3f} | "
              f"{r['f1']:.4f} | {alerts} |")
    in_sample = after["metrics"]["fpr_by_period"].get(a.calibrate_on, {})
    print(f"\n{a.calibrate_on} after recalibration is in-sample (its flows set the threshold): FPR "
          f"{in_sample.get('fpr', float('nan')):.4f}; its classes, not given to the recalibration: {day_classes}")
    out = {"seed": a.seed, "root": str(root), "model_dir": model_dir, "recalibrated_model_dir": rec["model_dir"],
           "source_threshold": before["metrics"]["all"]["threshold"], "recalibrated_threshold": rec["threshold"],
           "unseen_share": rec.get("unseen_share"), "calibrate_on": a.calibrate_on, "judge_on": a.judge_on,
           "calibration_day_classes": day_classes, "judged": rows, "tuning": tuning}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
