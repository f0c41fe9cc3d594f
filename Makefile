# Trace Lite: `make demo` runs the demo on the embedded default, `make test` runs the tests.
# Both set everything up themselves (venv, pip, npm for anvil).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml package.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	npm ci --no-audit --no-fund --silent || npm install --no-audit --no-fund --silent
	touch $(STAMP)

setup: $(STAMP)

# `make demo DEMO_ARGS=` keeps the stack up (UI, Query Service) until Ctrl-C.
DEMO_ARGS ?= --exit

demo: setup
	$(BIN)/trace-lite demo $(DEMO_ARGS)

# Two pytest-xdist workers, whole files per worker (module fixtures are built once); each
# worker has its own embedded Postgres, chains and ports. `make test PYTEST_WORKERS=0`: serial.
PYTEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: setup
	$(BIN)/ruff check trace_core trace_dagster trace_lite tests benchmarks
	$(BIN)/ruff format --check trace_core trace_dagster trace_lite tests benchmarks
	$(BIN)/mypy trace_core trace_dagster trace_lite

clean:
	rm -rf $(VENV) node_modules .trace
