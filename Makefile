# Each target sets itself up: a .venv with the project and its dev tools, then migrations.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Bytecode is cached (in __pycache__, which git ignores) even where the machine sets
# PYTHONDONTWRITEBYTECODE: without it every test worker and every started `trt` compiled
# all our modules again, and pytest rewrote every test module (about 5 s of CPU per
# test worker on a 2-core machine). Not PYTHONPYCACHEPREFIX: that would also ignore the
# bytecode pip compiled for the installed packages and compile them all again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test lint bench bench-ledger bench-service bench-soak faults

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
	$(BIN)/mypy --strict engine flows storage pricing kie trt

# The suite runs in parallel (pytest-xdist): every test has a database of its own, the
# fault cases stay on one worker (tests/conftest.py, loadscope). More workers than cores: many tests wait
# on sockets and timers, not the CPU.
# Workers are forked from one warm interpreter (tests/zygote.py), which imports aiogram once.
TEST_WORKERS ?= 4

test: lint
	$(BIN)/trt flows check
	$(BIN)/trt pricing check
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope

bench: $(STAMP)
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.ledger_bench
	$(BIN)/python -m bench.flows_check_bench

# Needs PostgreSQL (TEST_DATABASE_URL, default postgres@127.0.0.1:5432/test) and pgbench;
# see `python -m bench.ledger_bench --help` for --quick and --no-postgres.
bench-ledger: $(STAMP)
	$(BIN)/python -m bench.ledger_bench

# Issue 14: one update over the whole webhook path, `trt serve` (memory, SQLite, PostgreSQL)
# against a plain aiogram webhook bot, as processes over real HTTP; needs PostgreSQL
# (TEST_DATABASE_URL) for its last row. Several minutes; `python -m bench.service_bench
# --help` for --quick, --only, --rounds and --profile.
bench-service: $(STAMP)
	$(BIN)/python -m bench.service_bench

# Issue 14: `trt serve`'s memory under a steady load of new and returning users: RSS
# sampled every 10 s, peak, after warm-up, at the end, and the growth per 10 minutes over
# the second half. SOAK_STORE: sqlite (default), memory or postgresql (TEST_DATABASE_URL);
# SOAK_MINUTES (default 10). `python -m bench.soak --help` for the knobs.
SOAK_STORE ?= sqlite
SOAK_MINUTES ?= 10
bench-soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --store $(SOAK_STORE)

# The fault campaign (issue 11): every effect point x fault through a real `trt serve`
# (kill -9, database dropped or refusing, Telegram 5xx/cut/timeout/429, KIE cut/timeout)
# on SQLite and on PostgreSQL (TEST_DATABASE_URL, default postgres@127.0.0.1:5432/test).
# Not a timed test: about 40 minutes. `python -m tests.faults --help` for --quick,
# --db, --seed, --only; `make test` runs a fast subset (tests/test_faults.py).
faults: $(STAMP)
	$(BIN)/python -m tests.faults --db both
