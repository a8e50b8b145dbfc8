# clinic-api: `make run` to serve, `make test` to test. `make help` lists every target.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg | cksum | cut -d' ' -f1)
export APP_ENV ?= development

.DEFAULT_GOAL := help
.PHONY: help install run serve migrate rollback test fuzz lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg setup.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv and install the pinned dependencies

run: $(STAMP) ## Start the API on 127.0.0.1:8000 (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/clinic-api run

serve: $(STAMP) ## Serve the API only (no migration, no demo data): gunicorn with WEB_CONCURRENCY workers
	$(BIN)/clinic-api serve

migrate: $(STAMP) ## Apply pending migrations to DATABASE_URL (or the embedded database)
	$(BIN)/clinic-api migrate

rollback: $(STAMP) ## Roll back the newest migration
	$(BIN)/clinic-api rollback

test: $(STAMP) ## Run the whole test suite (embedded PostgreSQL unless TEST_DATABASE_URL/DATABASE_URL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

fuzz: $(STAMP) ## schemathesis over the whole spec with fresh random data, 300 examples per operation
	CONTRACT_EXAMPLES=$${CONTRACT_EXAMPLES:-300} CONTRACT_RANDOM=true $(BIN)/python -m pytest tests/test_contract.py $(PYTEST_ARGS)

lint: $(STAMP) ## Lint the Python code (ruff.toml), validate the OpenAPI spec and lint it with Spectral (needs npm)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests/test_spec_lint.py

clean: ## Remove the virtualenv, caches and the local data folder (embedded database included)
	rm -rf $(VENV) .local .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# wrk from Debian's package when missing (CI runs as root); if that fails, bench/run.py falls back to
# its Python load generator and says so in its output.
BENCH_WRK = command -v wrk >/dev/null 2>&1 || { echo "wrk not found: installing Debian's wrk package"; \
	{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } >/dev/null 2>&1 \
	|| echo "wrk could not be installed: falling back to the Python load generator (bench/loadgen.py)"; }

.PHONY: bench bench-smoke
bench: $(STAMP) ## Benchmark the API beside a FastAPI peer, a Starlette floor and a Flask baseline (1M patients; bench/README.md)
	@$(BENCH_WRK)
	$(BIN)/python bench/run.py

bench-smoke: $(STAMP) ## The same benchmark at 10,000 patients, 2 rounds of 1 s per scenario (2-3 minutes)
	@$(BENCH_WRK)
	BENCH_PATIENTS=10000 BENCH_DURATION=1 BENCH_ROUNDS=2 BENCH_LATENCY_DURATION=1 BENCH_SQL_SAMPLES=20 \
	  BENCH_WEBHOOK_SAMPLES=10 \
	  $(BIN)/python bench/run.py
