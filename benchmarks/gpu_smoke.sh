#!/usr/bin/env bash
# GPU smoke (about 6.5 minutes on one H200): the `base` model in bf16, plain and under DeepSpeed ZeRO-2.
#  0. the tests marked gpu (tests/test_model.py: both modules' bf16 training and validation steps, and scoring and
#     embedding on the GPU against the CPU);
#  1. a throughput probe: tokens/s and MFU of full-length (258-event) training steps;
#  2. the real pipeline, local: prepare the shipped HDFS block sessions, pretrain 1 epoch with
#     trainer=gpu strategy=deepspeed_stage2 (one process), calibrate, write the model and its MLflow run;
#  2b. the same locally with strategy=ddp (bf16-mixed autocast, the unpadded path), 2 epochs, MFU every 4 steps;
#  3. the same pipeline on Ray Train (1 GPU worker on a private local Ray), where Ray is installed;
#  4. distillation of stage 2's model into the CPU student, on the GPU (trainer=gpu strategy=deepspeed_stage2);
#  5. scoring on the GPU: stage 2's model evaluates the test split with detect.device=cpu and cuda, same decisions.
# After stages 2-4 the run's MLflow record is read back (status, metrics, params, the logged model, the MFU history)
# unless logger=none.
# Each stage runs on if an earlier one failed; the last lines say which passed.
# Usage: bash benchmarks/gpu_smoke.sh   (from the repo root, after `make setup`; PY=python3 elsewhere)
set -uo pipefail
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
ROOT=${LOGLM_RUNS:-$(mktemp -d)}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-240}
PROBES=${PROBES:-1}                 # PROBES=0 skips stage 1
PIPELINE_ARGS=${PIPELINE_ARGS:-}    # more overrides for stages 2-3, e.g. logger=none
declare -A RESULT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, deepspeed, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__, 'lightning', lightning.__version__)"

summary() {  # the pretrain JSON's run, steps and throughput
  $PY - "$1" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read()
r = json.loads(text[text.index("{\n"):])
m = r.get("metrics", {})
print("pipeline:", {k: r.get(k) for k in ("run_id", "epochs", "global_step", "train_seconds")},
      {k: m.get(k) for k in ("perf/events_per_s", "train/device/mfu", "train/device/flops_per_sec", "val/loss")},
      "threshold", r.get("calibration", {}).get("threshold"))
PYEOF
}

tracked() {  # what the job's MLflow run holds, read back from its store
  $PY - "$1" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read()
r = json.loads(text[text.index("{\n"):])
if not r.get("tracking_uri"):
    print("mlflow: no tracking (logger=none)"); sys.exit(0)
import mlflow
c = mlflow.MlflowClient(r["tracking_uri"])
run = c.get_run(r["run_id"])
model = c.get_logged_model(run.data.tags["logged_model_id"])
print("mlflow:", run.info.status, len(run.data.metrics), "metrics,", len(run.data.params), "params; logged model",
      model.name, model.status)
assert run.info.status == "FINISHED" and str(model.status).endswith("READY"), (run.info.status, model.status)
mfu = [round(m.value, 4) for m in c.get_metric_history(r["run_id"], "train/device/mfu")]
print("mlflow: train/device/mfu every log_every_n_steps:", mfu or "none logged (an epoch shorter than the window)")
PYEOF
}

echo "== 0. GPU unit tests (pytest -m gpu: both modules' bf16 steps on the device, tests/test_model.py)"
if $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_model.py; then RESULT[gpu_tests]=ok; else RESULT[gpu_tests]=failed; fi

echo "== 1. throughput probe (base, bf16, 258 events a session; ZeRO 0/2 at batch 128, ZeRO 0 at 512)"
for probe in "0 128" "2 128" "0 512"; do
  [ "$PROBES" = 1 ] || break
  set -- $probe
  if timeout "$STAGE_TIMEOUT" $PY -m benchmarks.gpu_throughput --model base --zero $1 --dtype bf16 --batch $2 \
      --seq 256 --steps 60; then RESULT[probe_zero$1_batch$2]=ok; else RESULT[probe_zero$1_batch$2]="failed ($?)"; fi
done

echo "== 2. pipeline, local: trainer=gpu strategy=deepspeed_stage2"
$PY -m pipelines.prepare data=hdfs_blocks_sample paths.root="$ROOT" > "$ROOT/prepare.json" || RESULT[prepare]=failed
if ( time timeout "$STAGE_TIMEOUT" $PY -m pipelines.pretrain data=hdfs_blocks_sample model=base trainer=gpu \
      trainer.max_epochs=1 trainer.progress_bar=false strategy=deepspeed_stage2 paths.root="$ROOT" $PIPELINE_ARGS \
      > "$ROOT/pretrain_local.json" ) && summary "$ROOT/pretrain_local.json" \
    && tracked "$ROOT/pretrain_local.json"; then
  RESULT[pipeline_local_deepspeed]=ok
else RESULT[pipeline_local_deepspeed]=failed; fi

echo "== 2b. pipeline, local: trainer=gpu strategy=ddp (bf16-mixed autocast), 2 epochs, MFU logged every 4 steps"
if ( time timeout "$STAGE_TIMEOUT" $PY -m pipelines.pretrain data=hdfs_blocks_sample model=base trainer=gpu \
      trainer.max_epochs=2 trainer.log_every_n_steps=4 trainer.progress_bar=false strategy=ddp paths.root="$ROOT" \
      $PIPELINE_ARGS > "$ROOT/pretrain_ddp.json" ) && summary "$ROOT/pretrain_ddp.json" \
    && tracked "$ROOT/pretrain_ddp.json"; then
  RESULT[pipeline_local_ddp]=ok
else RESULT[pipeline_local_ddp]=failed; fi

echo "== 3. pipeline, Ray Train: launcher=ray ray.num_workers=1 ray.use_gpu=true strategy=deepspeed_stage2"
if $PY -c "import ray" 2>/dev/null; then
  if ( time timeout "$STAGE_TIMEOUT" $PY -m pipelines.pretrain data=hdfs_blocks_sample model=base trainer=gpu \
        trainer.max_epochs=1 trainer.progress_bar=false launcher=ray ray.num_workers=1 ray.use_gpu=true \
        strategy=deepspeed_stage2 paths.root="$ROOT" $PIPELINE_ARGS > "$ROOT/pretrain_ray.json" ) && summary "$ROOT/pretrain_ray.json" \
        && tracked "$ROOT/pretrain_ray.json"
  then RESULT[pipeline_ray_deepspeed]=ok; else RESULT[pipeline_ray_deepspeed]=failed; fi
else RESULT[pipeline_ray_deepspeed]="skipped (ray not installed)"; fi

echo "== 4. distillation on the GPU: the student from stage 2's model, trainer=gpu strategy=deepspeed_stage2"
teacher=$($PY -c "import json,sys; t=open(sys.argv[1]).read(); print(json.loads(t[t.index('{\n'):])['run_id'])" \
  "$ROOT/pretrain_local.json" 2>/dev/null)
if [ -z "$teacher" ]; then RESULT[distill_deepspeed]="skipped (no model from stage 2)"
elif ( time timeout "$STAGE_TIMEOUT" $PY -m pipelines.distill teacher="$teacher" trainer=gpu distill.max_epochs=1 \
      trainer.progress_bar=false strategy=deepspeed_stage2 paths.root="$ROOT" $PIPELINE_ARGS \
      > "$ROOT/distill.json" ) && summary "$ROOT/distill.json" && tracked "$ROOT/distill.json"
then RESULT[distill_deepspeed]=ok; else RESULT[distill_deepspeed]=failed; fi

echo "== 5. scoring on the GPU: stage 2's model evaluated on the test split with detect.device=cpu and =cuda"
if [ -z "$teacher" ]; then RESULT[scoring_cuda]="skipped (no model from stage 2)"
else
  for dev in cpu cuda; do
    ( time timeout "$STAGE_TIMEOUT" $PY -m pipelines.evaluate ckpt="$ROOT/models/$teacher" data=hdfs_blocks_sample \
        paths.root="$ROOT" logger=none detect.device=$dev detect.batch_size=256 detect.max_batch_tokens=65536 \
        > "$ROOT/eval_$dev.json" ) 2>&1 | grep -E "^real|scored|error"
  done
  if $PY - "$ROOT/eval_cpu.json" "$ROOT/eval_cuda.json" <<'PYEOF'
import json, sys
def metrics(path):
    t = open(path).read()
    return json.loads(t[t.index("{\n"):])["metrics"]["all"]
cpu, gpu = metrics(sys.argv[1]), metrics(sys.argv[2])
keys = ("tp", "fp", "tn", "fn", "f1", "auroc", "threshold")
print("cpu ", {k: cpu[k] for k in keys}); print("cuda", {k: gpu[k] for k in keys})
assert all(cpu[k] == gpu[k] for k in ("tp", "fp", "tn", "fn")), "the GPU made other decisions than the CPU"
assert abs(cpu["auroc"] - gpu["auroc"]) < 1e-3
PYEOF
  then RESULT[scoring_cuda]=ok; else RESULT[scoring_cuda]=failed; fi
fi

echo "== summary"
for k in "${!RESULT[@]}"; do echo "$k: ${RESULT[$k]}"; done | sort
