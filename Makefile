# Two commands do everything on a fresh machine:
#   make train   installs hfmtl into .venv and runs the main job (configs/glue.yaml)
#   make test    installs hfmtl with its test extras into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Nothing here may reach the Hugging Face Hub: models and data are read from ../shared.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install train test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: this CPU wheel lies on local disk; an unpinned torch (or one pulled in by
# transformers/accelerate) would download a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/train.py --config configs/glue.yaml $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

lint: install
	$(BIN)/ruff check hfmtl recipes tests benchmarks
	$(BIN)/ruff format --check hfmtl recipes tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
