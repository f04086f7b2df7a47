#!/usr/bin/env bash
# Wheels for running benchmarks/gpu_smoke.sh on a GPU machine that has Python 3.12 with torch, Lightning,
# numpy, pandas, pyarrow and scikit-learn but no package index (this workplace's H200 machines): the packages
# it lacks, as cp312 manylinux wheels in .whl/ (git-ignored), and Ray 2.60 as a zip slimmed to fit a 64 MiB
# transfer (no Java jars, no dashboard UI, no RLlib/Serve/LLM: a private head with the dashboard off needs none).
# Versions are the ones .venv holds. Usage, from the repo root after `make setup`:
#   bash benchmarks/gpu_wheels.sh            # then, on the GPU machine, from the repo root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   python3 -c "import zipfile; zipfile.ZipFile('.whl/ray-slim.zip').extractall('/tmp/site')"
#   find /tmp/site/ray/core -type f -exec chmod +x {} +
#   mkdir -p /tmp/site/bin; printf '#!/usr/bin/env python3\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n' >/tmp/site/bin/ray; chmod +x /tmp/site/bin/ray
#   export MLFLOW_ALLOW_FILE_STORE=true LOGLM_RUNS=/tmp/gpu; mkdir -p /tmp/gpu
#   PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PY=python3 \
#     PIPELINE_ARGS=logger.tracking_uri=file:///tmp/gpu/mlruns bash benchmarks/gpu_smoke.sh
# (MLflow's file store: its SQL store needs cryptography and SQLAlchemy, which do not fit beside Ray. MLflow 3
#  refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true.)
set -euo pipefail
VENV=${VENV:-.venv}
OUT=.whl
mkdir -p "$OUT" .git/info
grep -qx "/$OUT/" .git/info/exclude 2>/dev/null || echo "/$OUT/" >> .git/info/exclude
PKGS=(hydra-core omegaconf hjson pydantic pydantic_core annotated-types typing-inspection mlflow-skinny mlflow-tracing
      databricks-sdk opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
      cachetools sqlparse fastapi starlette google-auth pyasn1 importlib_metadata python-dotenv gitpython gitdb smmap
      uvicorn annotated-doc jsonschema referencing rpds-py jsonschema-specifications tensorboardX aiohttp-cors colorful
      opencensus opencensus-context google-api-core proto-plus googleapis-common-protos smart-open)
FROZEN=$("$VENV/bin/pip" freeze)
pins=()
for p in "${PKGS[@]}"; do
  pat="^$(echo "$p" | sed 's/[-_]/[-_]/g')=="
  pin=$(echo "$FROZEN" | grep -i "$pat" | head -1 || true)
  [ -n "$pin" ] || { echo "not in $VENV: $p" >&2; exit 1; }
  pins+=("$pin")
done
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d "$OUT" "${pins[@]}"
# deepspeed and antlr4 publish source only: pure-Python wheels built here (DeepSpeed builds its ops on first use)
"$VENV/bin/pip" wheel -q --no-deps -w "$OUT" \
  "$(echo "$FROZEN" | grep -i '^deepspeed==')" "$(echo "$FROZEN" | grep -i '^antlr4-python3-runtime==')"
ray_pin=$(echo "$FROZEN" | grep -i '^ray==')
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d "$tmp" "$ray_pin"
python3 - "$tmp"/ray-*.whl "$OUT/ray-slim.zip" <<'PYEOF'
import sys, zipfile
drop = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/", "ray/llm/")
with zipfile.ZipFile(sys.argv[1]) as src, zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
    for info in src.infolist():
        if not info.filename.startswith(drop):
            dst.writestr(info, src.read(info.filename))
PYEOF
rm -rf "$tmp"
du -sh "$OUT"
