"""The `make demo` job: ingest -> pretrain -> calibrate -> detect -> evaluate, on the data the repo ships,
then distill -> export a bundle -> detect with the torch-free CPU engine.

The data is 8,050 complete HDFS blocks of raw lines (data/hdfs_loglead, protocol hdfs_loglead): the path a
user takes (raw lines -> templates -> block sessions -> alerts) on sessions whose whole lifecycle is there,
so the first table is a measured figure: the test FPR beside the target it was calibrated for.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path


def _stage(cfg, title: str) -> dict:
    from rich.console import Console

    from loglm.detect.detector import run as detect
    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    console = Console()
    console.rule(f"[bold]{title}: prepare")
    prep = prepare(cfg)
    lines = prep["lines"]
    console.print(f"{lines['read']} records read, {lines['accepted']} accepted, {lines['rejected']} rejected; "
                  f"{prep['sessions']} sessions {prep['sessions_by_split']}; {prep['templates_mined']} templates; "
                  f"shards in {prep['path']}")
    console.rule(f"[bold]{title}: pretrain")
    pre = pretrain(cfg)
    console.print(f"MLflow run {pre['run_id']}: best val/loss {pre['best_val_loss']:.4f} at epoch {pre['best_epoch']}, "
                  f"{pre['train_seconds']:.0f} s; threshold {pre['calibration']['threshold']:.4g} for target FPR "
                  f"{pre['calibration']['target_fpr']} on {pre['calibration']['n_val_sessions']} validation sessions")
    run_cfg = replace(cfg, ckpt=pre["model_dir"])
    console.rule(f"[bold]{title}: detect + evaluate (test split)")
    det = detect(run_cfg)
    ev = evaluate(run_cfg)
    return {"prepare": prep, "pretrain": pre, "detect": det, "evaluate": ev}


def _deploy(cfg, pre: dict) -> dict:
    """Distill the raw-log teacher, export the student as a bundle, detect with the torch-free engine."""
    from rich.console import Console

    from loglm.engine.detect import run as engine_detect
    from loglm.export.writer import run as export
    from loglm.training.distill import run as distill

    console = Console()
    console.rule("[bold]Deploy: distill -> export bundle -> CPU engine")
    dist = distill(replace(cfg, teacher=pre["run_id"]))
    console.print(f"student run {dist['run_id']}: {dist['student_parameters']:,} parameters "
                  f"(teacher {dist['teacher_parameters']:,}), teacher agreement "
                  f"{dist['metrics'].get('val/teacher_agreement', float('nan')):.3f}")
    exp = export(replace(cfg, ckpt=dist["model_dir"]))
    console.print(f"bundle {exp['bundle']} ({exp['preferred_variant']}), ONNX parity max |diff| "
                  f"{exp['parity']['fp32']['max_abs_surprisal_diff']:.1e}; registered "
                  f"{exp['registry']['name']} v{exp['registry']['version']} @{exp['registry']['alias']}")
    det = engine_detect(exp["bundle"], list(cfg.data.inputs))
    console.print(f"`loglm detect --bundle {exp['bundle']} {' '.join(cfg.data.inputs)}`: {det['lines']['read']} lines, "
                  f"{det['sessions_scored']} sessions, {det['alerts']} alerts -> {det['alerts_path']}")
    from loglm.analyst.embed import run as embed
    from loglm.engine.detect import bundle_config
    from loglm.engine.runtime import Bundle

    bundle = Bundle(Path(exp["bundle"]))
    ecfg = bundle_config(bundle, list(cfg.data.inputs), str(Path(exp["bundle"]) / "embeddings" / "inputs.parquet"))
    ecfg.data = replace(ecfg.data, anomalous_ids=cfg.data.anomalous_ids)  # the demo's labels, to show beside neighbours
    emb = embed(ecfg, bundle, bundle.embed, bundle.workers)
    console.print(f"`loglm embed --bundle ...`: {emb['sessions']} session vectors (d = {emb['dim']}) -> "
                  f"{emb['embeddings_path']}")
    return {"distill_run_id": dist["run_id"], "bundle": exp["bundle"], "engine": det,
            "embeddings": emb["embeddings_path"]}


def show_alert(path: str) -> None:
    from rich.console import Console

    console = Console()
    with open(path) as fh:
        first = fh.readline()
    if not first:
        console.print("no alerts")
        return
    a = json.loads(first)
    console.print(f"[bold]Top alert[/bold] {a['alert_id']} ({a['severity']}): {a['title']}\n"
                  f"  score {a['score']:.4f} > threshold {a['threshold']:.4f}; {a['n_events']} events "
                  f"{a['start_time']} .. {a['end_time']}; entities {a['entities']}")
    if "label" in a:  # the dataset's own label (never shown to the model): is the top alert right?
        console.print("  dataset label: " + ("anomalous (a true positive)" if a["label"] else
                      "normal: a false positive. A verdict 'benign' on the triage page (for its whole group) "
                      "and `python -m pipelines.tune` teach the model this pattern"))
    for e in a["surprising_events"]:
        exp = ", ".join(f"{x['template']} ({x['p']:.2f})" for x in e["expected"][:2])
        rank = "unseen" if e["rank"] is None else f"{e['rank']:>3}"  # an event type training never saw
        console.print(f"  #{e['position']:>3} surprisal {e['surprisal']:6.2f} rank {rank}  "
                      f"{e['template']}\n        line {e['line']}: {e['raw']}\n        expected: {exp}")


def show_context(alerts_path: str, embeddings: str) -> None:
    """The top alert's most similar sessions (with their labels) and its ATT&CK context; how to triage."""
    from rich.console import Console

    from loglm.analyst.embed import read_embeddings
    from loglm.analyst.search import label_name, similar_sessions

    console = Console()
    with open(alerts_path) as fh:
        first = fh.readline()
    if not first:
        return
    a = json.loads(first)
    meta, vecs = read_embeddings(embeddings)
    try:
        near = similar_sessions(meta, vecs, a["session_id"], 5)
    except ValueError:
        near = []
    console.print("  most similar sessions: " + "; ".join(
        f"{n['session_id']} ({n['similarity']:.3f}, {label_name(n['label'])})" for n in near))
    attacks = a.get("attacks") or []
    console.print("  ATT&CK context: " + ("; ".join(f"{t['id']} {t['name']} ({t['source']})" for t in attacks)
                                         or "none (no kind given and no technique close to its evidence)"))
    from loglm.analyst.feedback import load_alerts
    from loglm.analyst.groups import GROUP_MIN_COSINE, group_alerts_file

    alerts = load_alerts(alerts_path)
    groups = len(set(group_alerts_file(alerts, alerts_path, meta, vecs).values()))
    console.print(f"  alert groups: {len(alerts)} alerts in {groups} groups (sessions' centred vectors within cosine "
                  f"{GROUP_MIN_COSINE} of the group's top alert: one verdict each on the triage page)")
    console.print(f"  triage: loglm triage --alerts {alerts_path} --embeddings {embeddings}")


def run(cfg) -> dict:
    from rich.console import Console

    from loglm.config import load_group
    from loglm.detect.metrics import f1_ceiling_of

    results = {"raw": _stage(cfg, f"{cfg.data.name} ({cfg.data.format} records)")}
    results["raw"]["bundle"] = _deploy(cfg, results["raw"]["pretrain"])
    if cfg.demo.blocks_data:
        blocks_cfg = replace(cfg, data=load_group("data", cfg.demo.blocks_data),
                             trainer=replace(cfg.trainer, max_epochs=cfg.demo.blocks_epochs),
                             logger=replace(cfg.logger, run_name="hdfs-blocks-demo"))
        results["blocks"] = _stage(blocks_cfg, f"HDFS block lifetimes ({cfg.demo.blocks_data})")
    console = Console()
    console.rule("[bold]Summary")
    for name, r in results.items():
        m = r["evaluate"]["metrics"]["all"]
        cal = r["pretrain"]["calibration"]
        hi = cal["promise"]["fpr_interval_90"][1]
        console.print(f"[bold]{name}[/bold] (test split, {m['n']} sessions never seen in training or calibration): "
                      f"F1 {m['f1']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}  AUROC {m['auroc']:.3f}  "
                      f"PR-AUC {m['pr_auc']:.3f}\n"
                      f"  test FPR {m['fpr']:.4f} for a target of {cal['target_fpr']} (threshold from "
                      f"{cal['n_val_sessions']} validation normal sessions; promised at most {hi:.4f} at 95 %)\n"
                      f"  at that FPR no detector exceeds F1 "
                      f"{f1_ceiling_of(m, cal['target_fpr']):.3f} on this split "
                      f"({m['tp'] + m['fn']} anomalous, {m['fp'] + m['tn']} normal sessions: the F1 ceiling)\n"
                      f"  alerts: {r['detect']['alerts_path']} ({r['detect']['alerts']} alerts)\n"
                      f"  MLflow runs: pretrain {r['pretrain']['run_id']}, evaluation {r['evaluate']['run_id']} "
                      f"({r['pretrain']['tracking_uri']}; `make ui` to browse)")
    b = results["raw"]["bundle"]
    console.print(f"[bold]bundle[/bold]: {b['bundle']}  (student run {b['distill_run_id']}; engine alerts "
                  f"{b['engine']['alerts_path']})")
    show_alert(results["raw"]["detect"]["alerts_path"])
    show_context(results["raw"]["detect"]["alerts_path"], b["embeddings"])
    return {name: {"pretrain_run_id": r["pretrain"]["run_id"], "eval_run_id": r["evaluate"]["run_id"],
                   "alerts_path": r["detect"]["alerts_path"], "metrics": r["evaluate"]["metrics"]}
            for name, r in results.items()}
