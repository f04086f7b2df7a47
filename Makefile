# LogLM — `make demo` sets up on first use and runs the whole job; `make test` runs the tests.
PY ?= python3
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup browser demo test test-fast bench screenshot ui lint clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; torch is pinned first so no CUDA build is ever resolved.
$(STAMP): pyproject.toml
	@echo "LogLM setup: creating $(VENV) and installing torch (CPU), lightning, ray, mlflow, onnxruntime, deepspeed (first run only: a few minutes, ~2.2 GB)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	@echo "LogLM setup: [1/2] torch 2.13.0 (CPU build)"
	$(BIN)/python -m pip install -q "torch==2.13.0"
	@echo "LogLM setup: [2/2] loglm and its dependencies"
	set -o pipefail; $(BIN)/python -m pip install -e ".[dev,deepspeed]" | { grep --line-buffered -E "^(Collecting|Successfully)" || true; }
	touch $(STAMP)

# Headless Chromium for the browser tests of the triage page (apt; sudo when not root). Skipped when present.
# Falls back to Playwright's own Chromium download when apt cannot be used.
browser: setup
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "LogLM setup: installing Chromium (apt) for the triage page's browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; } \
	  || { echo "LogLM setup: apt failed; trying Playwright's Chromium"; $(BIN)/python -m playwright install chromium; }; }

demo: setup
	$(BIN)/python -m pipelines.demo $(ARGS)

# Two pytest workers (TEST_JOBS=0 runs in one process); a module's tests, and all Ray tests, share a worker.
TEST_JOBS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder --durations=15

test: setup browser
	$(PYTEST) $(ARGS)

test-fast: setup
	$(PYTEST) -m "not slow and not gpu" $(ARGS)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)

# docs/triage.png from the newest demo bundle's alerts (run `make demo` first)
screenshot: browser
	$(BIN)/python -m benchmarks.triage_screenshot $(ARGS)

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port $${PORT:-5000}

lint: setup
	$(BIN)/ruff check loglm pipelines tests benchmarks

clean:
	rm -rf runs outputs .pytest_cache reports/*.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
