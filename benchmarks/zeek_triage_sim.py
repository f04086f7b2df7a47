"""008 -> 010 with the analyst loop: the source model's alerts on 010's early traffic get verdicts (malicious where
the flow label says so, benign otherwise: an analyst triaging every alert), then one tuning round with them.

    python -m benchmarks.zeek_transfer 008 010 --tune --root /tmp/zt   # first: the model and the early flows
    python -m benchmarks.zeek_triage_sim /tmp/zt [--replay]

--replay: the source capture's training flows (its earliest 60 %, Malicious lines left out as its training
sessions were) are tuned on beside 010's early flows, so the round does not forget 008 (docs/analyst.md
"A day of verdicts").
"""
import json
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.hdfs_triage_sim import simulated_triage
from benchmarks.zeek_transfer import CAPTURES, early_part
from loglm.analyst import feedback as fb
from loglm.analyst.tune import run as tune
from loglm.config import PROJECT_ROOT, compose
from loglm.detect.detector import run as detect
from loglm.evaluation import run as evaluate
from loglm.model.store import load_model

root = Path(sys.argv[1])
replay = "--replay" in sys.argv[2:]
data = PROJECT_ROOT.parent / "shared" / "data" / "zeek_ctu_conn"
src_model = next(p for p in (root / "models").iterdir() if p.is_dir() and load_model(p).meta.get("dataset") == "zeek_008" and "recal" not in p.name)
base = ["dataset=zeek_ctu", f"paths.root={root}", "trainer.progress_bar=false", "suite.enabled=false",
        "data.split.method=chronological_events"]  # as benchmarks.zeek_transfer prepared the root
dst = compose("evaluate", base + ["data.name=zeek_010", f"data.inputs=[{data / '010_ctu-normal-42_day2_conn.log.labeled'}]"])
early = root / "010_early.log"
out = root / "early_alerts.jsonl"
# the analysts' view: alerts of the source model on the early traffic, labels read from the zeek label column
detect(replace(dst, ckpt=str(src_model), inputs=[str(early)], out=str(out), detect=replace(dst.detect, data_from="command")))
table = root / "feedback.jsonl"
v = simulated_triage(out, table)
print("verdicts", v["malicious"], "malicious,", v["benign"], "benign, of", len(fb.load_alerts(out)), "alerts")
inputs = [str(early)]
if replay:  # what the source model was trained on: 008's first 60 % (chronological 60/10/30), normal lines
    kept = early_part(data / CAPTURES["008"], root / "008_trained.log", 0.6, drop=("Malicious",))
    inputs.insert(0, str(root / "008_trained.log"))
    print("replay:", sum(kept.values()), "normal flows of 008's training period", kept)
tuned = tune(replace(dst, ckpt=str(src_model), inputs=inputs, tune=replace(dst.tune, export=False, feedback=str(table))))
m = evaluate(replace(dst, ckpt=tuned["model_dir"]))["metrics"]["all"]
print(f"| transfer, tuned on early flows with analyst verdicts{' and 008 replayed' if replay else ''} | {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['fpr']:.4f} | {m['auroc']:.4f} | {m['n']} |")
print(json.dumps(tuned["sessions_by_split"]), tuned["feedback"])
