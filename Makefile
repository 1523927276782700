# `make demo` on a fresh machine: creates .venv, installs cloudckpt, runs the demo job.
# `make test` on a fresh machine: creates .venv, installs cloudckpt with its dev extras,
# installs Azurite from npm into the project (and headless Chromium from apt where it can),
# starts the emulators, runs pytest, stops them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

CHECKOV_VENV := .venv-checkov

.PHONY: demo test install lint typecheck clean infra-check bench browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,all]'
	touch $@

node_modules/.bin/azurite-blob:
	npm install --no-audit --no-fund --silent azurite@3.35.0

install: $(VENV)/.installed node_modules/.bin/azurite-blob

demo: $(VENV)/.installed
	$(BIN)/cloudckpt demo $(DEMO_ARGS)

# checkov lives in its own venv: its pins must not steer the botocore/aiobotocore stack.
$(CHECKOV_VENV)/bin/checkov:
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --disable-pip-version-check checkov==3.3.30

infra-check: $(CHECKOV_VENV)/bin/checkov
	CHECKOV=$(CHECKOV_VENV)/bin/checkov bash infra/check.sh

# headless Chromium from Debian's packages, for the HTML report's rendering tests (they skip
# with a reason where it cannot be installed: no apt-get, or not root)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    >/dev/null; } || echo "chromium not installed: the report's browser tests will skip"

test: install browser $(CHECKOV_VENV)/bin/checkov
	$(BIN)/python -m cloudckpt.testing.emulators run -- $(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory infra-check

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .emulators
