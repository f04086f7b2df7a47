"""Cross-day transfer on zeek_ctu: train on one capture, detect on the other, with and without recalibration.

    python -m benchmarks.zeek_transfer 008 010 [--root DIR]

With --tune, also one round of `pipelines.tune` on those early flows (continued pretraining from the source
model's weights + a new threshold; no analyst verdicts) and its evaluation.

Steps (protocol zeek_ctu settings, `dataset=zeek_ctu`): prepare and pretrain on the source capture alone
(chronological 60/10/30, threshold from its validation Benign flows); evaluate on its own test split; prepare
the destination capture and evaluate the source model on its test split (a transfer evaluation: the model's
own vocabulary); then recalibrate the model on the destination's earliest 70 % of flows (everything before
its test split, labels not used) with `pipelines.calibrate` and evaluate again.  Per flow, Background
excluded.  Needs ../shared/data/zeek_ctu_conn.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from loglm.config import PROJECT_ROOT, compose

CAPTURES = {"008": "008_ctu-normal-40_day1_conn.log.labeled", "010": "010_ctu-normal-42_day2_conn.log.labeled"}


def early_part(capture: Path, out: Path, share: float = 0.7) -> dict:
    """The capture's header and its earliest ``share`` of flows by ts (what precedes the test split)."""
    lines = capture.read_text().splitlines()
    head = [x for x in lines if x.startswith("#") and not x.startswith("#close")]
    rows = sorted((x for x in lines if not x.startswith("#")), key=lambda x: float(x.split("\t")[0]))
    kept = rows[: int(share * len(rows))]
    out.write_text("\n".join(head + kept) + "\n")
    labels: dict[str, int] = {}
    for x in kept:
        label = x.split("\t")[21] if x.count("\t") >= 21 else "?"
        labels[label] = labels.get(label, 0) + 1
    return labels


def main(argv: list[str] | None = None) -> dict:
    from loglm.detect.recalibrate import run as recalibrate
    from loglm.evaluation import run as evaluate
    from loglm.ingest.prepare import run as prepare
    from loglm.training.pretrain import run as pretrain

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", choices=sorted(CAPTURES))
    p.add_argument("destination", choices=sorted(CAPTURES))
    p.add_argument("--root", help="runs folder (default: a new temporary one)")
    p.add_argument("--tune", action="store_true", help="also tune the model on the early flows (pipelines.tune)")
    a = p.parse_args(argv)
    data = PROJECT_ROOT.parent / "shared" / "data" / "zeek_ctu_conn"
    root = Path(a.root or tempfile.mkdtemp(prefix="loglm-zeek-transfer-")).resolve()
    base = ["dataset=zeek_ctu", f"paths.root={root}", "trainer.progress_bar=false", "suite.enabled=false"]
    src = compose("evaluate", base + [f"data.name=zeek_{a.source}", f"data.inputs=[{data / CAPTURES[a.source]}]"])
    dst = compose("evaluate", base + [f"data.name=zeek_{a.destination}",
                                      f"data.inputs=[{data / CAPTURES[a.destination]}]"])
    prepare(src)
    model = pretrain(src)
    rows = {"same capture": evaluate(replace(src, ckpt=model["model_dir"]))}
    prepare(dst)
    rows["transfer, source threshold"] = evaluate(replace(dst, ckpt=model["model_dir"]))
    early = root / f"{a.destination}_early.log"
    labels = early_part(data / CAPTURES[a.destination], early)
    rec = recalibrate(replace(dst, ckpt=model["model_dir"], inputs=[str(early)], out=str(root / "recalibrated")))
    rows["transfer, recalibrated on unlabelled early flows"] = evaluate(replace(dst, ckpt=rec["model_dir"]))
    if a.tune:  # one tuning round (pipelines.tune) on the same unlabelled early flows, no verdicts
        from loglm.analyst.tune import run as tune

        tuned = tune(replace(dst, ckpt=model["model_dir"], inputs=[str(early)],
                             tune=replace(dst.tune, export=False)))
        rows["transfer, tuned on unlabelled early flows (pipelines.tune)"] = evaluate(replace(dst, ckpt=tuned["model_dir"]))
    out = {"source": a.source, "destination": a.destination, "root": str(root),
           "recalibration_traffic_labels": labels, "recalibrated_threshold": rec["threshold"],
           "source_threshold": model["calibration"]["threshold"], "results": {}}
    print(f"\n| {a.source} -> {a.destination} | F1 | precision | recall | test FPR (target 0.01) | AUROC | flows |")
    print("|---|---|---|---|---|---|---|")
    for name, ev in rows.items():
        m = ev["metrics"]["all"]
        out["results"][name] = {k: m[k] for k in ("f1", "precision", "recall", "fpr", "auroc", "n", "threshold")}
        print(f"| {name} | {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['fpr']:.4f} | "
              f"{m['auroc']:.4f} | {m['n']} |")
    print(f"\nrecalibration traffic labels (not used): {labels}")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
