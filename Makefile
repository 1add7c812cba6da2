# sipwall — the two commands a newcomer needs: `make test` and `make demo`.
# Both do their own set-up on a fresh Debian machine (run as root): system packages,
# the virtual environment, the project. Everything else here is a step of those two.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sipwall-installed
PYTEST_ARGS ?=

.PHONY: test demo setup system venv compiled lint typecheck unit proto proto-check bench clean

# The whole suite runs on the compiled hot path (what `sipwall` runs), then the unit tests
# once more with those modules interpreted (sipwall/compiled.py); exit code 5 (no test
# selected by PYTEST_ARGS) is not a failure of the second pass.
test: setup lint typecheck compiled
	$(PY) -m pytest $(PYTEST_ARGS)
	SIPWALL_INTERPRETED=1 $(PY) -m pytest tests/unit $(PYTEST_ARGS) || [ $$? -eq 5 ]

demo: setup compiled
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

# The SIP/SDP parsers and the proxy and media cores, compiled with mypyc when a source
# is newer than its extension (sipwall/compiled.py has the list).
compiled: venv
	$(PY) -m sipwall.compiled build

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
	test ! -x $(PY) || $(PY) -m sipwall.compiled clean
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .hypothesis
