# qsweep developer commands. Each sets up what it needs on a fresh clone first.
#
#   make demo    setup + the offline demo sweep (sweeps/demo.yaml): prints the paper-style tables
#   make test    setup + ruff + the whole pytest suite (what CI runs)
#   make test-quick  setup + ruff + the suite without the end-to-end modules marked slow
#   make setup   create .venv: torch (CPU wheel by default) first, then qsweep with test extras
#
# GPU machines: make setup TORCH_SPEC=torch  (takes your platform's CUDA build)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.qsweep-installed

.PHONY: setup test test-quick lint demo browser
setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# The MLflow UI test drives Debian's Chromium through chromedriver; install them when missing
# (as root with apt-get; otherwise that one test is skipped and says why).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium and chromium-driver for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "note: no chromium/chromedriver (apt-get install chromium chromium-driver); the UI test will skip"; fi

lint: setup
	$(BIN)/ruff check .

test: setup lint browser
	$(BIN)/python -m pytest

test-quick: setup lint
	$(BIN)/python -m pytest -m "not slow"

demo: setup
	$(BIN)/qsweep run demo
