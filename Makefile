# Each target sets itself up: a .venv with the project and its dev tools, then migrations.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench bench-ledger

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
	$(BIN)/trt pricing check
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.ledger_bench

# Needs PostgreSQL (TEST_DATABASE_URL, default postgres@127.0.0.1:5432/test) and pgbench;
# see `python -m bench.ledger_bench --help` for --quick and --no-postgres.
bench-ledger: $(STAMP)
	$(BIN)/python -m bench.ledger_bench
