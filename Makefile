# sipwall — the two commands a newcomer needs: `make test` and `make demo`.
# Both do their own set-up on a fresh Debian machine (run as root): system packages,
# the virtual environment, the project. Everything else here is a step of those two.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sipwall-installed
PYTEST_ARGS ?=

.PHONY: test demo setup system venv lint typecheck unit proto proto-check bench clean

test: setup lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/sipwall lab demo

setup: system venv

system:
	scripts/ensure-system-packages

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "$(PYTHON) lacks venv/ensurepip: install python3-venv"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,latch]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# Regenerate the FCP code from proto/ (committed; tests check it is up to date).
proto: venv
	$(PY) -m fcp.codegen --write

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
