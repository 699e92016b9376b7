# Each target sets itself up: a .venv with the project and its dev tools, then migrations.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/trt migrate
	$(BIN)/trt run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy --strict engine

test: lint
	$(BIN)/trt flows check
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench.engine_bench
