# The two commands of the README:
#   make start   dashboard + worker on the embedded default (SQLite, demo data, offline Lite0)
#   make test    the whole test suite (what .ci/run runs)
# Each installs what it needs on first use (a virtualenv in .venv) and is quick after.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8501

.PHONY: start test install install-dev chromium

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

start: $(VENV)/.runtime data/animals
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false

# The browser tests drive Debian's chromium; never a browser downloaded by a test tool.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(VENV)/.dev chromium
	$(PY) -m pytest tests -q --durations=10
