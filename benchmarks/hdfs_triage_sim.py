"""hdfs_loglead with the analyst loop: the model's alerts on the first half of the test period get verdicts
(malicious where the block is labelled anomalous, benign otherwise: an analyst triaging every alert), one
tuning round (``pipelines.tune`` with those verdicts, vocabulary grown) follows, and both models detect on the
second half, which neither saw.

Why: most of ``hdfs_loglead``'s false positives are normal blocks re-replicated with templates the training
span never showed; no model trained on the first 60 % of blocks can tell that re-replication is normal here.
The analyst's verdicts are what can, and this measures whether one round of them does.

    python -m benchmarks.hdfs_triage_sim [--root DIR] [--seed 42] [--tune-epochs N] [--tune-top-k K] [override ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np


def write_half(data_dir: Path, sessions: list[dict], path: Path) -> int:
    """The raw lines of ``sessions`` (prepared test blocks), in input order, into ``path``."""
    from loglm.shards import event_columns

    ids = sorted(j for s in sessions for j in s["event_idx"])
    raw = event_columns(data_dir, ids, ["raw"])["raw"]
    path.write_text("\n".join(raw) + "\n")
    return len(ids)


def simulated_triage(alerts_path: Path, table: Path) -> dict:
    """An analyst who triages every alert of ``alerts_path`` and is always right: malicious where the alert's
    label says anomalous, benign otherwise, into a fresh feedback table.  Returns the verdict counts."""
    from loglm.analyst import feedback as fb

    table.unlink(missing_ok=True)
    for al in fb.load_alerts(alerts_path):
        fb.record(table, al, "malicious" if al.get("label") == 1 else "benign", note="simulated triage")
    verdicts = fb.read(table).values()
    return {v: sum(r["verdict"] == v for r in verdicts) for v in ("malicious", "benign")}


def confusion(scores_path: Path, threshold: float) -> dict:
    """Per block, from the scores Parquet a detection wrote (its label from the block list)."""
    import pyarrow.parquet as pq

    t = pq.read_table(scores_path, columns=["score", "label"])
    s, y = t.column("score").to_numpy(), np.array(t.column("label").to_pylist())
    alert = s > threshold
    tp, fp = int((alert & (y == 1)).sum()), int((alert & (y == 0)).sum())
    fn, tn = int((~alert & (y == 1)).sum()), int((~alert & (y == 0)).sum())
    return {"blocks": int(len(y)), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "recall": tp / max(tp + fn, 1),
            "fpr": fp / max(fp + tn, 1), "f1": 2 * tp / max(2 * tp + fp + fn, 1), "threshold": threshold}


def main(argv: list[str] | None = None) -> dict:
    from loglm.analyst.tune import run as tune
    from loglm.config import compose
    from loglm.detect.detector import run as detect
    from loglm.ingest.prepare import prepared_dir
    from loglm.ingest.prepare import run as prepare
    from loglm.shards import read_sessions
    from loglm.training.pretrain import run as pretrain

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="runs folder (default: a new temporary one)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tune-epochs", type=int, default=None, help="tune.max_epochs (default: the config's)")
    p.add_argument("--tune-top-k", type=int, default=None,
                   help="detect.top_k of the tuned candidate's calibration (default: the source model's)")
    p.add_argument("--replay", action="store_true", help="tune on the model's normal training blocks beside the "
                   "first half (docs/analyst.md \"A day of verdicts\")")
    p.add_argument("overrides", nargs="*", help="more config overrides of every step (e.g. detect.top_k=9)")
    a = p.parse_args(argv)
    root = Path(a.root or tempfile.mkdtemp(prefix="loglm-hdfs-triage-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cfg = compose("evaluate", ["dataset=hdfs_loglead", f"paths.root={root}", "trainer.progress_bar=false",
                               "suite.enabled=false", f"trainer.seed={a.seed}", *a.overrides])
    prepare(cfg)
    model = pretrain(cfg)
    data_dir = prepared_dir(cfg.paths.root, cfg.data.name)
    test = read_sessions(data_dir, "test")
    blocks: dict[str, dict] = {}
    for sid, start, label, idx in zip(*(test.column(c).to_pylist() for c in ("session_id", "start_ts", "label",
                                                                                 "event_idx"))):
        b = blocks.setdefault(sid, {"id": sid, "start": start, "label": label, "event_idx": []})
        b["start"] = min(b["start"], start)
        b["event_idx"].extend(idx)
    ordered = sorted(blocks.values(), key=lambda b: (b["start"], b["id"]))
    half = len(ordered) // 2
    parts = {"first": ordered[:half], "second": ordered[half:]}
    files = {}
    for name, part in parts.items():
        log, ids = root / f"test_{name}_half.log", root / f"test_{name}_half.anomalous.txt"
        write_half(data_dir, part, log)
        ids.write_text("".join(f"{b['id']}\n" for b in part if b["label"] == 1))
        files[name] = (log, ids)

    def detect_on(name: str, ckpt: str, tag: str) -> tuple[dict, Path]:
        log, ids = files[name]
        out = root / f"alerts_{tag}_{name}.jsonl"
        run = replace(cfg, ckpt=ckpt, inputs=[str(log)], out=str(out),
                      data=replace(cfg.data, anomalous_ids=str(ids)), detect=replace(cfg.detect, data_from="command"))
        summary = detect(run)
        return confusion(Path(summary["scores_path"]), summary["threshold"]), out

    before, _ = detect_on("second", model["model_dir"], "source")
    # the analysts' view: the source model's alerts on the first half, each given the verdict its label says
    _, alerts_path = detect_on("first", model["model_dir"], "source")
    table = root / "feedback.jsonl"
    verdicts = simulated_triage(alerts_path, table)
    inputs = [str(files["first"][0])]
    if a.replay:  # what the model was trained on: its training split's normal blocks, in input order
        train = read_sessions(data_dir, "train")
        normal = [{"event_idx": idx} for idx, label in zip(train.column("event_idx").to_pylist(),
                                                            train.column("label").to_pylist()) if label == 0]
        write_half(data_dir, normal, root / "train_normal.log")
        inputs.insert(0, str(root / "train_normal.log"))
    tuned = tune(replace(cfg, ckpt=model["model_dir"], inputs=inputs,
                         detect=replace(cfg.detect, top_k=a.tune_top_k or cfg.detect.top_k),
                         tune=replace(cfg.tune, export=False, feedback=str(table),
                                      max_epochs=a.tune_epochs or cfg.tune.max_epochs)))
    after, _ = detect_on("second", tuned["model_dir"], "tuned")
    out = {"seed": a.seed, "root": str(root), "replay": a.replay,
           "tune_epochs": a.tune_epochs or cfg.tune.max_epochs,
           "blocks": {k: {"blocks": len(v), "anomalous": sum(b["label"] == 1 for b in v)} for k, v in parts.items()},
           "verdicts": verdicts,
           "tune": {"vocab_growth": tuned["vocab_growth"], "sessions_by_split": tuned["sessions_by_split"],
                    "calibration_warning": tuned["calibration_warning"], "unvetted_alerting": tuned["unvetted_alerting"]},
           "second_half": {"source model": before, "tuned with verdicts": after}}
    print("| second half of the test period | blocks | TP | FP | FN | recall | test FPR | F1 | threshold |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in out["second_half"].items():
        print(f"| {name} | {m['blocks']} | {m['tp']} | {m['fp']} | {m['fn']} | {m['recall']:.3f} | {m['fpr']:.4f} | "
              f"{m['f1']:.3f} | {m['threshold']:.4g} |")
    print(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
