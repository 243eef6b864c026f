# `make run` trains the default config; `make test` runs the test suite.
# Both create .venv with everything needed on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/shakespeare_char.py
WORKDIR ?= runs/shakespeare_char

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

.PHONY: install run test test-all bench
install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/python -m experiments.run --config=$(CONFIG) --workdir=$(WORKDIR)

# Two workers (pytest-xdist), whole files per worker so module fixtures are built once:
# compilation is mostly single-threaded, so this fills both cores of a 2-core machine.
PYTEST_WORKERS ?= 2
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m ""

bench: $(BIN)/.installed
	$(BIN)/python -m experiments.bench_train
