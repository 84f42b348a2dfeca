# airv — the two commands that matter on a fresh machine:
#   make submit-local   set up, build a local /kaggle stand-in, run the kernel entry, score it
#   make test           set up, lint, type-check, run the whole test suite (real vLLM on CPU),
#                       and beside it the Hugging Face part again under the Kaggle kernel's releases
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.airv-installed
LINT_PATHS := $(wildcard src tests submission bench wheels)
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1
# The venvs are installed without byte-compiling (pip's --no-compile: it would compile about
# 22,000 files, 30 s on one core); Python compiles what is imported, about a tenth of them, on
# first import and caches it in the venv, which a PYTHONDONTWRITEBYTECODE set outside forbids.
export PYTHONDONTWRITEBYTECODE :=

# make submit-local options:
#   TASKS=20                how many tasks (default: the 20 smallest ARC-AGI-1 evaluation tasks)
#   MODEL=auto              demo (models/airv-demo), tiny (random test model), or a model directory
#   CHALLENGES= SOLUTIONS=  your own Kaggle-format challenge (and solution) file instead
#   TIME_BUDGET=15m         the run's wall-time budget, model loading included
#   RUN_ARGS=               more `airv run` options, e.g. RUN_ARGS="--vote cell --engine hf"
#   TTT=1 / TTT=0           test-time fine-tuning on / off (default: the model's recipe; the
#                           demo model's, airv-demo, fine-tunes per task)
LOCAL_ROOT ?= local/kaggle
TASKS ?= 20
MODEL ?= auto
TIME_BUDGET ?= 15m
CHALLENGES ?=
SOLUTIONS ?=
RUN_ARGS ?=
TTT ?=

# make wheels options (see wheels/README.md):
#   WHEEL_SET=kaggle   airv + the pinned CUDA vLLM and all it needs, for Kaggle's Python
#   WHEEL_SET=core     airv + its pure-Python dependencies, for this machine's Python
WHEEL_SET ?= kaggle
WHEELS_DIR ?= wheels/wheelhouse
KAGGLE_PYTHON ?= 3.12
# torch 2.8.0's nvidia-* wheels carry only manylinux_2_27, which pip does not infer from 2_28.
KAGGLE_PLATFORMS ?= manylinux1_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 linux_x86_64
WHEEL_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

# make kernel / make push: kaggle-config.json (copy kaggle-config.example.json) -> build/kernel
KAGGLE_CONFIG ?= kaggle-config.json

.PHONY: venv test quick lint typecheck unit submit-local wheels kernel push bench clean browser vllm-api-check \
	kaggle-pins

venv: $(STAMP)

# The venv (vllm-cpu, torch and the rest) takes about 3.6 GB, and pip needs room to unpack
# beside it: a full disk fails the install half way with pip's "No space left on device".
VENV_NEEDS_GB ?= 6

$(STAMP): pyproject.toml requirements-dev.txt
	@free=$$(df -P -BG . | awk 'NR==2 {sub("G", "", $$4); print $$4}'); \
	if [ "$$free" -lt $(VENV_NEEDS_GB) ]; then \
		echo "make venv: $${free} GB free on the disk of $(CURDIR); the venv needs about $(VENV_NEEDS_GB) GB (VENV_NEEDS_GB). Free some space (old clones' .venv folders) and run it again." >&2; \
		exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-compile -r requirements-dev.txt
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match its torch and
	# break transformers' imports; nothing on vLLM's text path needs them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(PIP) install -q --no-compile --no-deps -e .
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PYTEST) -m "not engine"

# The report test opens report.html in headless Chromium (Debian's package; needs root).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# The suite runs on TEST_WORKERS processes (pytest-xdist; 0: in this process alone). Most of
# its time is engine start-ups and runs that wait on a deadline, so two workers keep this
# machine's 2 cores busy; --dist loadfile keeps each file's shared fixtures in one worker, and
# --no-loadscope-reorder hands the files out in the suite's own order, longest first
# (tests/conftest.py), not xdist's (most tests first).
TEST_WORKERS ?= 2
PYTEST := $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The Kaggle pins' tests (kaggle-pins, below) run beside the main suite on one worker of their
# own, their output held until the suite ends: the suite leaves about a fifth of this 2-core
# machine idle (tests waiting on deadlines and process starts), and the pins fill it.
PINS_LOG := .pytest-kaggle-pins.log
# On a fresh machine the venv and Debian's chromium install side by side (-j2): pip and apt
# wait mostly on the network and the disk (chromium's install alone: 20 s of a fresh clone's
# 8.8-minute `make test`).
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target venv browser
	@$(MAKE) --no-print-directory lint typecheck
	@$(MAKE) --no-print-directory kaggle-pins TEST_WORKERS=1 > $(PINS_LOG) 2>&1 & pins=$$!; \
	$(PYTEST) --durations=25; main=$$?; \
	wait $$pins; status=$$?; echo "make kaggle-pins (run beside the suite):"; cat $(PINS_LOG); \
	exit $$((main || status))

# A faster local loop: lint, types and the suite without the tests marked slow (CI runs all).
quick: lint typecheck
	$(PYTEST) -m "not slow"

# The Kaggle kernel runs transformers 4.57.1 (tokenizers 0.22, huggingface-hub 0.36), the dev
# venv transformers 5. kaggle-pins installs wheels/requirements-kaggle-pins.txt (--no-deps) into
# PINS_DIR and reruns, with that folder first on PYTHONPATH, the tests where airv meets
# transformers: tokenizer loading and prompt formats, the TTT trainer (peft) and the transformers
# engine (generate, beam, DFS, adapters), `airv plan` and `airv eval`. torch, peft, accelerate
# and the rest come from the venv; nothing here starts vLLM (its pins are vllm-api-check's).
# The path is absolute so that test subprocesses started in other folders see it too.
PINS_DIR ?= .venv-kaggle-pins
PINS_STAMP := $(PINS_DIR)/.airv-installed
PINS_PATH = $(abspath $(PINS_DIR))$${PYTHONPATH:+:$$PYTHONPATH}
KAGGLE_PINS_TESTS := tests/test_prompts.py tests/test_prompt_format.py tests/test_presets.py \
	tests/test_tokenizers.py tests/test_adapt.py \
	tests/test_engines.py::test_sampling_n_returns_n_completions[hf] \
	tests/test_engines.py::test_beam_search_hf \
	tests/test_engines.py::test_each_request_is_decoded_as_it_says[hf] \
	tests/test_dfs.py::test_a_view_whose_search_finds_nothing_is_not_asked_again \
	tests/test_pipeline.py::test_a_run_with_per_task_ttt_serves_each_task_its_adapter \
	tests/test_plan.py::test_plan_with_the_tiny_model \
	tests/test_evaluate.py::test_cli_eval_with_a_model_end_to_end

$(PINS_STAMP): wheels/requirements-kaggle-pins.txt $(STAMP)
	rm -rf $(PINS_DIR)
	$(PIP) install -q --no-compile --no-deps --target $(PINS_DIR) -r wheels/requirements-kaggle-pins.txt
	touch $(PINS_STAMP)

# The stage's process supervision (deadline, kills, start failures, orphans) is airv's own code
# whatever transformers release runs inside: the full suite covers it, the pins skip it.
KAGGLE_PINS_SKIP := deadline_ends_training or killed_training_process or cannot_start or \
	die_with_their_parent

kaggle-pins: $(PINS_STAMP)
	PYTHONPATH=$(PINS_PATH) $(PY) wheels/check_kaggle_pins.py wheels/requirements-kaggle-pins.txt $(PINS_DIR)
	PYTHONPATH=$(PINS_PATH) $(PYTEST) $(KAGGLE_PINS_TESTS) -k "not ($(KAGGLE_PINS_SKIP))"

submit-local: $(STAMP)
	$(PY) -m airv.kaggle.local --root $(LOCAL_ROOT) --tasks $(TASKS) --model $(MODEL) \
		$(if $(CHALLENGES),--challenges $(CHALLENGES)) $(if $(SOLUTIONS),--solutions $(SOLUTIONS))
	$(PY) submission/airv_kernel.py --root $(LOCAL_ROOT) --full -- --time-budget $(TIME_BUDGET) \
		$(if $(filter 1,$(TTT)),--ttt per-task)$(if $(filter 0,$(TTT)),--ttt off) $(RUN_ARGS)
	$(VENV)/bin/airv validate $(LOCAL_ROOT)/working/submission.json \
		--challenges $(LOCAL_ROOT)/input/competitions/arc-prize/arc-agi_test_challenges.json
	@if [ -f $(LOCAL_ROOT)/solutions/arc-agi_test_solutions.json ]; then \
		$(VENV)/bin/airv score $(LOCAL_ROOT)/working/submission.json \
			--solutions $(LOCAL_ROOT)/solutions/arc-agi_test_solutions.json \
			--out $(LOCAL_ROOT)/working/score.json && \
		$(VENV)/bin/airv eval --predictions $(LOCAL_ROOT)/working/predictions.jsonl \
			--solutions $(LOCAL_ROOT)/solutions/arc-agi_test_solutions.json \
			--challenges $(LOCAL_ROOT)/input/competitions/arc-prize/arc-agi_test_challenges.json; \
	fi
	sol=$(LOCAL_ROOT)/solutions/arc-agi_test_solutions.json; \
		$(VENV)/bin/airv report $(LOCAL_ROOT)/working $$([ -f $$sol ] && echo --solutions $$sol)

wheels:
	rm -rf $(WHEELS_DIR) && mkdir -p $(WHEELS_DIR)
	$(WHEEL_PY) -m pip wheel -q --no-deps -w $(WHEELS_DIR) .
ifeq ($(WHEEL_SET),core)
	$(WHEEL_PY) -m pip download -q --only-binary=:all: -d $(WHEELS_DIR) -r wheels/requirements-core.txt
else
	$(WHEEL_PY) -m pip download -q --only-binary=:all: -d $(WHEELS_DIR) \
		--python-version $(KAGGLE_PYTHON) $(addprefix --platform ,$(KAGGLE_PLATFORMS)) \
		-r wheels/requirements-kaggle.txt -r wheels/requirements-core.txt
endif
	cp wheels/dataset-metadata.json $(WHEELS_DIR)/
	@echo "wheelhouse: $(WHEELS_DIR) ($$(ls $(WHEELS_DIR)/*.whl | wc -l) wheels)"

kernel: $(STAMP)
	$(PY) -m airv.kaggle.kernel --config $(KAGGLE_CONFIG) --out build/kernel

push: kernel
	kaggle kernels push -p build/kernel

# The demo model (models/airv-demo): a tiny Qwen2 trained on synthetic ARC-style tasks on CPU,
# fixed seed and step count, ~80 minutes on 2 idle cores. See models/airv-demo/README.md.
DEMO_STEPS ?= 18000
demo-model: $(STAMP)
	rm -rf models/airv-demo.new
	$(PY) -m airv.demo.train --out models/airv-demo.new --steps $(DEMO_STEPS) --seed 0 --checkpoint-minutes 10
	cp models/airv-demo/README.md models/airv-demo.new/ 2>/dev/null || true
	rm -rf models/airv-demo && mv models/airv-demo.new models/airv-demo

# Every vLLM name airv's engine calls, checked in the installed vLLM (vllm-cpu, what CI runs)
# and in the Kaggle pin's CUDA wheel (downloaded once, read with ast, never imported).
VLLM_PIN ?= $(shell sed -n 's/^vllm==//p' wheels/requirements-kaggle.txt)
vllm-api-check: $(STAMP)
	$(PY) wheels/check_vllm_api.py
	$(PY) wheels/check_vllm_api.py --version $(VLLM_PIN)

bench: $(STAMP)
	$(PY) -m bench.run_bench --out bench/results.md
	$(PY) -m bench.plan_check --out bench/plan-check.md
	$(PY) -m bench.fidelity --out bench/fidelity.md
	$(PY) -m bench.schedule --out bench/schedule.md
	$(PY) -m bench.schedule_replay --out bench/schedule-replay.md

clean:
	rm -rf $(VENV) $(PINS_DIR) $(PINS_LOG) build dist .pytest_cache .mypy_cache .ruff_cache
