# piccolo-agent: `make run` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit integration deps venv clean bench

deps:
	@.ci/install-system

$(STAMP): pyproject.toml | deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the virtual environment in $(VENV) (pip's log: $(VENV)/pip.log)"
	@$(PY) -m pip install -q --upgrade pip >$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@$(PY) -m pip install -q -e '.[systemd,dev]' >>$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@touch $(STAMP)

venv: deps $(STAMP)

# Starts a throwaway etcd and mosquitto on loopback under .run/, then the agent in the foreground
# with config/agent.yaml and config/manifests/. Ctrl-C stops everything it started.
run: venv
	@$(PY) -m tests.support.devrun --config config/agent.yaml --run-dir .run

lint: venv
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/ruff format --check agent tests bench

typecheck: venv
	$(VENV)/bin/mypy

test: venv lint typecheck
	$(VENV)/bin/pytest -q

# The tests without the `integration` marker (pyproject.toml): no etcd, broker, journald or Podman.
unit: venv
	$(VENV)/bin/pytest -q -m "not integration"

# The tests that start real services; under CI=true a missing one fails them instead of skipping.
integration: venv
	$(VENV)/bin/pytest -q -m integration

bench: venv
	$(PY) bench/startup.py

clean:
	rm -rf .run .mypy_cache .ruff_cache .pytest_cache
