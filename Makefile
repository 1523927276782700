# `make demo` on a fresh machine: creates .venv, installs cloudckpt, runs the demo job.
# `make test` on a fresh machine: creates .venv, installs cloudckpt with its dev extras,
# installs Azurite from npm into the project, starts the emulators, runs pytest, stops them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test install lint typecheck clean

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

test: install
	$(BIN)/python -m cloudckpt.testing.emulators run -- $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) node_modules .emulators
