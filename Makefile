# qsweep developer commands. `make test` sets up everything on a fresh clone, then tests.
#
#   make setup   create .venv: torch (CPU wheel by default) first, then qsweep with test extras
#   make test    setup + ruff + the whole pytest suite (what CI runs)
#
# GPU machines: make setup TORCH_SPEC=torch  (takes your platform's CUDA build)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.qsweep-installed

.PHONY: setup test lint
setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest
