# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is on disk here; pinning it first stops pip from pulling CUDA builds.
TORCH  := torch==2.13.0

.PHONY: install install-dev demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,text,ray]"

demo: install
	$(BIN)/hybridrl demo --out runs/demo --overwrite

# Every tier: unit, contract, learning (`slow`) and command-line (`subprocess`) tests, then the linter.
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --timeout 600

# The development tier: unit and contract tests only (under a minute).
test-fast: install-dev
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not subprocess"

lint: install-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
