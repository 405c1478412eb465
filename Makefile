# geo3d — two-command quick start: `make demo`, `make test`.
# Both bootstrap .venv on first use (torch pinned first, then the package and its extras).

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= all
PYTEST_ARGS ?=
BIN        := $(VENV)/bin
SHELL      := /bin/bash
.SHELLFLAGS := -o pipefail -c
# Some machines' pip.conf lists local index folders that do not exist; pip then warns once
# per package. Those lines say nothing about this project, so the bootstrap hides them.
PIP_QUIET  := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
STAMP      := $(VENV)/.geo3d-bootstrap

.PHONY: help bootstrap demo test test-slow test-all bench lint clean

help:
	@echo "make demo       bootstrap .venv (first run) and run the main job on synthetic data"
	@echo "make test       bootstrap .venv (first run) and run the default test suite"
	@echo "make test-slow  run only the tests marked slow"
	@echo "make test-all   run every test, slow ones included"
	@echo "make bench      run the benchmarks (results in benchmarks/results/)"
	@echo "make lint       ruff check"
	@echo "variables: TORCH_SPEC='$(TORCH_SPEC)' EXTRAS='$(EXTRAS)' PYTHON='$(PYTHON)'"

bootstrap: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# libusb-1.0 is needed by open3d; install it when we are root and it is missing.
	@if ! ldconfig -p 2>/dev/null | grep 'libusb-1.0' >/dev/null; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "[bootstrap] installing libusb-1.0 (needed by open3d) with apt"; \
	    (apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1)) || \
	    echo "[bootstrap] could not install libusb-1.0: open3d tests will be skipped"; \
	  else \
	    echo "[bootstrap] libusb-1.0 missing and not root: open3d tests will be skipped"; \
	  fi; \
	fi
	@echo "[bootstrap] installing $(TORCH_SPEC) into $(VENV)"
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(PIP_QUIET)
	@$(BIN)/python -c "import torch" || { echo "[bootstrap] torch failed to install"; exit 1; }
	@echo "[bootstrap] installing geo3d[$(EXTRAS)] (editable)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]" $(PIP_QUIET)
	@$(BIN)/python -c "import geo3d, geo3d.datasets, geo3d.apps" || { echo "[bootstrap] geo3d failed to install"; exit 1; }
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geo3d demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "slow or not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/rotations.py

lint: $(STAMP)
	$(BIN)/ruff check geo3d datasets apps tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
