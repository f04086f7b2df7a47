#!/usr/bin/env bash
# GPU smoke (< 5 minutes on one H200): the `base` model in bf16 under DeepSpeed ZeRO-2.
#  1. the real pipeline: prepare the shipped HDFS block sessions, pretrain 1 epoch with
#     trainer=gpu strategy=deepspeed_stage2 on Ray Train (1 GPU worker), calibrate, write the model;
#  2. a throughput probe: tokens/s and MFU of full-length (258-event) training steps.
# Usage: bash benchmarks/gpu_smoke.sh   (from the repo root, after `make setup`)
set -euo pipefail
PY=${PY:-.venv/bin/python}
ROOT=${LOGLM_RUNS:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)"
$PY -m pipelines.prepare data=hdfs_blocks_sample paths.root="$ROOT" > "$ROOT/prepare.json"
time $PY -m pipelines.pretrain data=hdfs_blocks_sample model=base trainer=gpu trainer.max_epochs=1 \
  trainer.progress_bar=false launcher=ray ray.num_workers=1 ray.use_gpu=true strategy=deepspeed_stage2 \
  paths.root="$ROOT" > "$ROOT/pretrain.json"
$PY - "$ROOT/pretrain.json" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read()
r = json.loads(text[text.index("{\n"):])
print("pipeline smoke:", {k: r[k] for k in ("run_id", "epochs", "global_step", "train_seconds")},
      "events/s", r["metrics"].get("perf/events_per_s"), "val/loss", r["metrics"].get("val/loss"))
PYEOF
$PY -m benchmarks.gpu_throughput --model base --zero 2 --dtype bf16 --batch 128 --seq 256 --steps 60
$PY -m benchmarks.gpu_throughput --model base --zero 0 --dtype bf16 --batch 128 --seq 256 --steps 60
