# The two commands of the README:
#   make start   dashboard + worker on the embedded default (SQLite, demo data, offline Lite0);
#                Ctrl-C stops both (a training run stops at its next batch, resumes on the next start)
#   make stop    stop a worker left running (started by a dashboard, or in another terminal)
#   make test    the lint and type checks, then the whole test suite (what .ci/run runs)
# Each installs what it needs on first use (a virtualenv in .venv) and is quick after.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8501

.PHONY: start stop test lint install install-dev chromium postgresql

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	# animal-mnist declares tensorflow, which it does not need for its data files.
	$(PY) -m pip install --quiet --no-deps animal-mnist==0.4
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

data/animals:
	$(PY) -m tl_core demo-data data

# The service (tl_core/executors/supervisor.py): the worker first, then the dashboard; the worker is
# restarted if it dies, and runs a previous worker left running resume from their checkpoints.
start: $(VENV)/.runtime data/animals
	$(PY) -m tl_core serve --host $(HOST) --port $(PORT)

stop: $(VENV)/.runtime
	$(PY) -m tl_core worker --stop

# The browser tests drive Debian's chromium; never a browser downloaded by a test tool.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The tests run the store on a throwaway PostgreSQL server too (tests/postgres.py): Debian's server.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
		echo "installing Debian's postgresql for the store's tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# Two test processes (pytest-xdist): many tests wait on other processes (workers, runs, a browser,
# PostgreSQL), so the other process runs tests meanwhile. Tests that must not run at once share an
# xdist_group (loadgroup keeps a group in one process); the slow ones start first (tests/conftest.py).
# Settings and markers: pyproject.toml.
test: lint chromium postgresql
	$(PY) -m pytest tests -q --durations=10 -n 2 --dist loadgroup

# ruff (lint, then format: `$(VENV)/bin/ruff format .` fixes it) and mypy on tl_core; pyproject.toml.
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
