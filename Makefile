# Every target sets itself up: a fresh clone needs only Python 3.11 and the package registries.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ragbus-installed

.PHONY: install test-tools kcat demo test test-slow test-all lint schemas bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is a local CPU wheel here; other specs pull GBs of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# What the contract tests need beyond Python (tests/unit/test_contract.py, tests/integration/test_guides.py):
# the official AsyncAPI JSON Schemas from npm (not vendored), and kcat from Debian for the guides'
# command-line examples.
ASYNCAPI_SPECS := 6.11.1
SPECS := $(VENV)/npm/node_modules/@asyncapi/specs/schemas/3.0.0.json
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(SPECS): | $(STAMP)
	npm install --prefix $(VENV)/npm --no-audit --no-fund --silent @asyncapi/specs@$(ASYNCAPI_SPECS)
	test -f $(SPECS)

kcat:
	@command -v kcat >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq kcat; }

test-tools: $(SPECS) kcat

demo: install
	$(VENV)/bin/ragbus demo

test: install test-tools
	$(PY) -m pytest

test-slow: install test-tools
	$(PY) -m pytest -m slow

test-all: install test-tools
	$(PY) -m pytest -m 'not llm'

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

schemas: install
	$(PY) -m schemas.generate

bench: install
	$(PY) bench/ingest.py ../shared/data/pydocs-faq-dev/pages.jsonl --limit 40

clean:
	rm -rf $(VENV) .ragbus .pytest_cache .ruff_cache .mypy_cache
