# `make demo` on a fresh machine: creates .venv, installs cloudckpt, runs the demo job.
# `make test` on a fresh machine: creates .venv, installs cloudckpt with its dev extras,
# installs Azurite from npm into the project, starts the emulators, runs pytest, stops them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

CHECKOV_VENV := .venv-checkov

.PHONY: demo test install lint typecheck clean infra-check bench

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

test: install $(CHECKOV_VENV)/bin/checkov
	$(BIN)/python -m cloudckpt.testing.emulators run -- $(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory infra-check

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .emulators
