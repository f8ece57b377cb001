# Entry points. Everything installs itself on first use into .venv (Python 3.11 + PyPI only).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
INSTALLED := $(VENV)/.installed

export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export GX_ANALYTICS_ENABLED := false
# Bytecode caches keep every Python process here from compiling Airflow, pandas and GX from source (seconds each:
# test collection, every sandbox and Airflow subprocess). Where PYTHONDONTWRITEBYTECODE is set, nothing is cached
# and pytest rewrites every test module's asserts anew on each run; the caches are git-ignored.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help install browser demo run approve audit ui stack check test test-crash bench lint format lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(INSTALLED): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.txt -r requirements-dev.txt
	@touch $@

install: $(INSTALLED)  ## create .venv with every pinned dependency (runtime and development locks)

demo: $(INSTALLED)  ## run the monthly sync for a month against the local sandboxes (MONTH=2026-10)
	$(BIN)/python scripts/demo.py $(if $(MONTH),--month "$(MONTH)")

run: $(INSTALLED)  ## run a month for real against the connections in the environment (MONTH=YYYY-MM [DRY_RUN=1])
	@test -n "$(MONTH)" || { echo "usage: make run MONTH=YYYY-MM [DRY_RUN=1]"; exit 64; }
	$(BIN)/python scripts/run.py --month $(MONTH) $(if $(filter 1 true yes,$(DRY_RUN)),--dry-run)

approve: $(INSTALLED)  ## answer a month's approval (MONTH=YYYY-MM [INCLUDE_FLAGGED=1] [REJECT=1] [BY=user])
	@test -n "$(MONTH)" || { echo "usage: make approve MONTH=YYYY-MM [INCLUDE_FLAGGED=1] [REJECT=1] [BY=user]"; exit 64; }
	$(BIN)/python scripts/approve.py --month $(MONTH) $(if $(filter 1 true yes,$(INCLUDE_FLAGGED)),--include-flagged) \
		$(if $(filter 1 true yes,$(REJECT)),--reject) $(if $(BY),--by "$(BY)")

audit: $(INSTALLED)  ## the leakage audit of a posted month against the connections in the environment (MONTH=YYYY-MM); last line: the CSV
	@test -n "$(MONTH)" || { echo "usage: make audit MONTH=YYYY-MM"; exit 64; }
	@$(BIN)/python scripts/audit.py --month "$(MONTH)"

ui: $(INSTALLED)  ## a local Airflow on the demo's data, the next month waiting for review ([PORT=8080] [MONTH=YYYY-MM])
	$(BIN)/python scripts/ui.py $(if $(PORT),--port $(PORT)) $(if $(MONTH),--month "$(MONTH)")

stack: $(INSTALLED)  ## the Celery deployment on this machine, no Docker (PostgreSQL + Redis here, or STACK_POSTGRES_URL / STACK_REDIS_URL)
	$(BIN)/python scripts/stack.py

# The browser tests and the README screenshot drive Debian's Chromium through Playwright (never `playwright install`).
browser:  ## Debian's chromium for the browser tests (apt-get, as root; only when missing)
	@command -v chromium >/dev/null || { echo "installing Debian's chromium (browser tests)"; \
		$(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium'; }

check: lint  ## lint, then the fast lane: the `unit` tests (in the test process alone: no sandbox, Airflow, PostgreSQL, browser)
	$(BIN)/python -m pytest -m unit -q $(PYTEST_ARGS)

test: $(INSTALLED) browser  ## run the whole test suite (sandboxes, PostgreSQL, real Airflow, a real browser)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-crash: $(INSTALLED)  ## the whole crash matrix: loads SIGKILLed at 1-50 % and at each ledger step, run again; one CRASH {json} line each
	set -o pipefail; $(BIN)/python -m pytest tests/include/crash_matrix.py -q -s $(PYTEST_ARGS) | grep --line-buffered -E '^CRASH |^(FAILED|ERROR) |^[0-9]+ (passed|failed)'

bench: $(INSTALLED)  ## run every benchmark; one BENCH {json} line each
	@set -e; for script in bench/bench_*.py; do $(BIN)/python $$script; done

lint: $(INSTALLED)  ## ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

lock: $(INSTALLED)  ## recompile requirements.txt (runtime) and requirements-dev.txt (tests, tooling) from their .in
	$(BIN)/uv pip compile --quiet --python-version 3.11 requirements.in -o requirements.txt
	$(BIN)/uv pip compile --quiet --python-version 3.11 requirements-dev.in -o requirements-dev.txt

clean:  ## remove the demo's state (warehouse, Airflow home, sandbox state)
	rm -rf var .airflow
