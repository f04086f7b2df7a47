"""Cross-day transfer on zeek_ctu: train on one capture, detect on the other, with and without recalibration.

    python -m benchmarks.zeek_transfer 008 010 [--root DIR]

With --tune, also one round of `pipelines.tune` on those early flows (continued pretraining from the source
model's weights + a new threshold; no analyst verdicts) and its evaluation.  With --adapt 5,20,0, adaptation
from a few labelled normal samples: `pipelines.tune` on the destination's first k normal windows before its
test split (0: all of them), once with the model's vocabulary fixed and once grown (`tune.grow_vocab`).

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


def early_part(capture: Path, out: Path, share: float = 0.7, drop: tuple[str, ...] = ()) -> dict:
    """The capture's header and its earliest ``share`` of flows by ts (what precedes the test split), less the
    flows whose label is in ``drop``; returns the written flows' label counts."""
    lines = capture.read_text().splitlines()
    head = [x for x in lines if x.startswith("#") and not x.startswith("#close")]
    rows = sorted((x for x in lines if not x.startswith("#")), key=lambda x: float(x.split("\t")[0]))

    def label(x: str) -> str:
        return x.split("\t")[21] if x.count("\t") >= 21 else "?"

    kept = [x for x in rows[: int(share * len(rows))] if label(x) not in drop]
    out.write_text("\n".join(head + kept) + "\n")
    labels: dict[str, int] = {}
    for x in kept:
        labels[label(x)] = labels.get(label(x), 0) + 1
    return labels


def print_rows(title: str, rows: dict, extra: dict[str, dict] | None = None) -> dict:
    """The evaluations as a markdown table (per flow); ``extra``: row name -> {column: value}."""
    cols = sorted({c for v in (extra or {}).values() for c in v})
    print(f"\n| {title} | F1 | precision | recall | test FPR (target 0.01) | AUROC | flows |"
          + "".join(f" {c} |" for c in cols))
    print("|---" * (7 + len(cols)) + "|")
    results = {}
    for name, ev in rows.items():
        m = ev["metrics"]["all"]
        results[name] = {k: m[k] for k in ("f1", "precision", "recall", "fpr", "auroc", "n", "threshold")}
        print(f"| {name} | {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['fpr']:.4f} | "
              f"{m['auroc']:.4f} | {m['n']} |" + "".join(f" {(extra or {}).get(name, {}).get(c, '—')} |" for c in cols))
    return results


def normal_windows(capture: Path, out: Path, k: int, share: float = 0.7, window_s: float = 300.0) -> dict:
    """A few labelled normal samples of the destination: its first ``k`` windows (source host, 5 minutes, as
    the sessions are cut) before its test split that hold Benign flows and no Malicious one, written with
    their Benign flows (``k`` = 0: every such window).  What an analyst would hand over as "this is normal
    here"."""
    lines = capture.read_text().splitlines()
    head = [x for x in lines if x.startswith("#") and not x.startswith("#close")]
    rows = sorted((x for x in lines if not x.startswith("#")), key=lambda x: float(x.split("\t")[0]))
    rows = rows[: int(share * len(rows))]
    windows: dict[tuple[str, int], list[str]] = {}
    for x in rows:
        f = x.split("\t")
        windows.setdefault((f[2], int(float(f[0]) // window_s)), []).append(x)
    label = lambda x: x.split("\t")[21] if x.count("\t") >= 21 else "?"  # noqa: E731
    normal = [w for w in windows.values()
              if any(label(x) == "Benign" for x in w) and not any(label(x) == "Malicious" for x in w)]
    normal.sort(key=lambda w: float(w[0].split("\t")[0]))
    kept = normal[:k] if k else normal
    flows = sorted((x for w in kept for x in w if label(x) == "Benign"), key=lambda x: float(x.split("\t")[0]))
    out.write_text("\n".join(head + flows) + "\n")
    return {"windows": len(kept), "flows": len(flows), "hosts": len({w[0].split("\t")[2] for w in kept}),
            "normal_windows_available": len(normal)}


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
    p.add_argument("--adapt", default="", help="comma-separated k: tune on the destination's first k labelled "
                   "normal windows (0 = all before its test split), with and without vocabulary growth")
    p.add_argument("--adapt-epochs", type=int, default=20, help="tune.max_epochs of the --adapt runs")
    p.add_argument("--skip-recalibration", action="store_true")
    p.add_argument("--seed", type=int, default=42, help="trainer.seed of every training run")
    a = p.parse_args(argv)
    data = PROJECT_ROOT.parent / "shared" / "data" / "zeek_ctu_conn"
    root = Path(a.root or tempfile.mkdtemp(prefix="loglm-zeek-transfer-")).resolve()
    # one capture each: split by flow count in time order (the adaptation samples below cut the capture the
    # same way), as these figures were measured; the protocol's own run splits each capture by clock time
    base = ["dataset=zeek_ctu", f"paths.root={root}", "trainer.progress_bar=false", "suite.enabled=false",
            f"trainer.seed={a.seed}", "data.split.method=chronological_events"]
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
    rec = None
    if not a.skip_recalibration:
        rec = recalibrate(replace(dst, ckpt=model["model_dir"], inputs=[str(early)], out=str(root / "recalibrated")))
        rows["transfer, recalibrated on unlabelled early flows"] = evaluate(replace(dst, ckpt=rec["model_dir"]))
    adapted = {}
    for k in (int(x) for x in a.adapt.split(",") if x.strip()):
        from loglm.analyst.tune import run as tune

        sample = root / f"{a.destination}_normal_{k or 'all'}.log"
        took = normal_windows(data / CAPTURES[a.destination], sample, k)
        for grow in (False, True):
            tuned = tune(replace(dst, ckpt=model["model_dir"], inputs=[str(sample)],
                                 tune=replace(dst.tune, export=False, grow_vocab=grow, max_epochs=a.adapt_epochs)))
            name = (f"adapted on {took['windows']} normal windows ({took['flows']} flows), "
                    f"{'vocabulary grown' if grow else 'vocabulary fixed'}")
            rows[name] = evaluate(replace(dst, ckpt=tuned["model_dir"]))
            cal = json.loads((Path(tuned["model_dir"]) / "calibration.json").read_text())
            adapted[name] = {"sample": took, "vocab_growth": tuned["vocab_growth"], "threshold": tuned["threshold"],
                             "sessions_by_split": tuned["sessions_by_split"],
                             "validation_items": cal["n_val_sessions"], "calibration_warning": cal.get("warning")}
    if a.tune:  # one tuning round (pipelines.tune) on the same unlabelled early flows, no verdicts
        from loglm.analyst.tune import run as tune

        tuned = tune(replace(dst, ckpt=model["model_dir"], inputs=[str(early)],
                             tune=replace(dst.tune, export=False)))
        rows["transfer, tuned on unlabelled early flows (pipelines.tune)"] = evaluate(replace(dst, ckpt=tuned["model_dir"]))
    out = {"source": a.source, "destination": a.destination, "root": str(root),
           "recalibration_traffic_labels": labels, "recalibrated_threshold": rec and rec["threshold"],
           "adapted": adapted,
           "source_threshold": model["calibration"]["threshold"], "results": {}}
    out["results"] = print_rows(f"{a.source} -> {a.destination}", rows)
    for name, info in adapted.items():
        growth = info["vocab_growth"] or {}
        print(f"{name}: {info['validation_items']} validation flows"
              f"{' (too few for the target: calibration warned)' if info['calibration_warning'] else ''}, "
              f"{growth.get('new_tokens', 0)} new tokens")
    print(f"\nrecalibration traffic labels (not used): {labels}")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
