# Two commands do everything on a fresh machine:
#   make train   installs hfmtl into .venv and runs the main job (configs/glue.yaml)
#   make test    installs hfmtl with its test extras into .venv and runs the test suite
# Both install the exact versions the suite last passed on (constraints.txt). The drift check:
#   make test-latest   the newest releases pyproject.toml allows, in .venv-latest, then the suite
#   make lock          make test-latest, then write what it installed into constraints.txt
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LATEST := .venv-latest
LOCK := constraints.txt
# Nothing here may reach the Hugging Face Hub: models and data are read from ../shared.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install train test test-all test-latest lock lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, from the lock: its CPU wheel lies on local disk; an unpinned torch (or one pulled in by
# transformers/accelerate) would download a multi-GB CUDA build.
INSTALL_TORCH = $(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet -c $(LOCK) torch

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(INSTALL_TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

# The suite's DeepSpeed launches need the `deepspeed` extra; the main job does not get it: Accelerate
# imports an installed DeepSpeed in every run (and DeepSpeed logs a warning about its accelerator).
# One pip call with both extras (a fresh machine, so CI, resolves and builds hfmtl once, not twice).
$(VENV)/.installed-deepspeed: pyproject.toml $(LOCK) | $(BIN)/python
	$(INSTALL_TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[dev,deepspeed]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

train: install
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/train.py --config configs/glue.yaml $(ARGS)

# HFMTL_LOCKED: tests/test_install.py then checks that the installed versions are the locked ones.
# `make test` (and CI) leave out the DeepSpeed launches (marker `engines`, the slowest tests) to keep
# the suite near 15 minutes on 2 cores; the DDP and FSDP2 launches always run. `make test-all` runs
# everything. --durations: the log names the slowest tests.
TEST_MARKERS ?= not engines
test: $(VENV)/.installed-deepspeed
	HFMTL_LOCKED=1 $(BIN)/python -m pytest -q --durations=15 -m "$(TEST_MARKERS)" $(ARGS)

test-all:
	$(MAKE) test TEST_MARKERS=

# torch stays at the locked CPU build (the newest torch is a multi-GB CUDA download); everything
# else is the newest release pyproject.toml allows, installed into a new venv each time.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet -c $(LOCK) torch
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev,deepspeed]"
	$(LATEST)/bin/pip list --format=freeze | grep -iE "^(transformers|accelerate|peft|datasets|huggingface.hub|evaluate|torch)=="
	$(LATEST)/bin/python -m pytest -q $(ARGS)

lock: test-latest
	{ echo "# The versions tests last passed on (make lock on $$(date +%F), Python $$($(LATEST)/bin/python -c 'import platform; print(platform.python_version())')): pip -c constraints.txt"; \
	  $(LATEST)/bin/pip freeze --exclude-editable | grep -v "^hfmtl" | sed 's/+cpu$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	@echo "constraints.txt moved to what $(LATEST) tested; commit it with the README's version line."

lint: install
	$(BIN)/ruff check hfmtl recipes tests benchmarks
	$(BIN)/ruff format --check hfmtl recipes tests benchmarks

clean:
	rm -rf $(VENV) $(LATEST) outputs .pytest_cache
