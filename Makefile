# The two commands a newcomer needs: `make run` and `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: run test fuzz chaos lint format install migrate seed preheat services-run test-services bench bench-checkout bench-payments bench-reconcile bench-flash bench-all clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) manage.py migrate_all

seed: migrate
	$(PY) manage.py seed_demo

## Set up, seed the demo shop and serve it on http://127.0.0.1:8000 (embedded default profile,
## or the services profile when its variables are set), with the sandbox acquirer (card
## payments) and the periodic jobs (expiry sweep, payment recovery) beside it.
run: seed
	@echo "Serving the shop on http://127.0.0.1:$(PORT)/  (admin: http://127.0.0.1:$(PORT)/admin/)"
	WEB_PORT=$(PORT) PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/honcho -f Procfile.dev start

## The whole test suite, on whatever profile the environment selects.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

## Schema fuzzing alone (tests/security/test_schema_fuzz.py) with a larger budget, against the
## local services (FUZZ_ENV, default .env.services). See docs/security-testing.md.
FUZZ_ENV ?= ./.env.services
fuzz: install
	set -a && . $(FUZZ_ENV) && set +a && \
	  SCHEMA_FUZZ_MAX_EXAMPLES=$${SCHEMA_FUZZ_MAX_EXAMPLES:-200} \
	  SCHEMA_FUZZ_TIME_BUDGET=$${SCHEMA_FUZZ_TIME_BUDGET:-1800} \
	  $(PY) -m pytest tests/security/test_schema_fuzz.py --timeout=3600 $(PYTEST_ARGS)

# `check --deploy` runs under the production settings, which refuse to start without these:
# throwaway values (a fresh random key, hosts and URLs nothing connects to), never secrets.
DEPLOY_CHECK_ENV = DJANGO_SETTINGS_MODULE=config.settings.production DEBUG=false \
	SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(60))')" \
	ALLOWED_HOSTS=shop.example.com \
	DATABASE_URL=postgres://lint@127.0.0.1:5432/shop_lint \
	ORDER_SHARD_URLS=postgres://lint@127.0.0.1:5432/shop_lint_0,postgres://lint@127.0.0.1:5432/shop_lint_1 \
	REDIS_URL=redis://127.0.0.1:6379/0 CELERY_BROKER_URL=amqp://lint@127.0.0.1:5672//

## Style, migrations, then security: bandit (medium and high findings; config in
## pyproject.toml), pip-audit (known vulnerabilities of the pinned packages: fails on one
## found, says so and goes on when no vulnerability service answers) and Django's deployment
## checks under the production settings. bandit may warn "nosec encountered ... but no failed
## test" for a suppressed multi-line string: harmless.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/bandit -c pyproject.toml -ll -q -r apps shop config bench
	$(PY) .ci/pip_audit.py
	$(DEPLOY_CHECK_ENV) $(PY) manage.py check --deploy --fail-level WARNING

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Only the fault experiments (tests/chaos, docs/chaos.md): each starts a whole shop on its own
## databases, Redis and RabbitMQ node, breaks something and checks what held. Needs the services
## profile (its PostgreSQL server) and the server binaries (redis-server, rabbitmq-server,
## /usr/lib/postgresql/*/bin).
chaos: install
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

## The same against local PostgreSQL, Redis and RabbitMQ (variables from .env.services).
test-services:
	set -a && . ./.env.services && set +a && $(MAKE) test

## Every process of the services profile (Procfile) under honcho.
## Web and worker processes share their Prometheus samples through PROMETHEUS_MULTIPROC_DIR,
## emptied here before they start.
services-run: install
	set -a && . ./.env.services && set +a && \
	  export PROMETHEUS_MULTIPROC_DIR="$(abspath var/prometheus)" && \
	  rm -rf "$$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$$PROMETHEUS_MULTIPROC_DIR" && \
	  $(PY) manage.py migrate_all && $(PY) manage.py seed_demo && \
	  PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/honcho start

bench: install
	$(PY) bench/catalog_read.py

bench-checkout: install
	$(PY) bench/checkout.py

bench-payments: install
	$(PY) bench/payments.py

bench-reconcile: install
	$(PY) bench/reconcile.py

bench-flash: install
	$(PY) bench/flash_sale.py

## Every scenario above but reconcile, then one summary table (rate, p50/p99, errors, ratio to
## the baseline, target, met?), also written to bench/results/summary-<UTC time>.md and .json.
## BENCH_ARGS passes options to bench/all.py, e.g. BENCH_ARGS="--seconds 8 --only checkout"
## or BENCH_ARGS="--profile docs/perf --tag after" (py-spy flame graphs). See docs/benchmarks.md.
bench-all: install
	$(PY) bench/all.py $(BENCH_ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache
