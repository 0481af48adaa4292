# Every target sets itself up: a fresh clone needs only Python 3.11 and the package registries. Each tool rule is
# correct whether its tool is already there, absent, or left half-installed by an interrupted run: what a rule
# downloads lands in a scratch place (`*.partial`) and is moved into place only once it is complete and runs, and
# a tool that is there but does not run is installed again (tests/deploy/test_makefile.py runs every tool rule on
# a fresh copy of this file, with fake tools on PATH).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ragbus-installed
LOCK := requirements.lock
EXPORT_LOCK := requirements-export.lock
DEV_LOCK := requirements-dev.lock
TOOLS := .tools
UV_VERSION := 0.13.8
# A pinned uv of its own (a uv on PATH may resolve differently): the version is in the path, so a new pin
# installs anew.
UV := $(TOOLS)/uv-$(UV_VERSION)/bin/uv
# promtool (alert rules and scrape config checks): the one on PATH when it runs, else Debian's prometheus package
# unpacked here (no service is installed or started).
PROMTOOL := $(TOOLS)/prometheus/usr/bin/promtool
# Where the CPU-only torch wheel comes from. On the project's machines pip's own find-links has it; elsewhere
# pass the PyTorch CPU index: `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
TORCH_FIND_LINKS ?= $(PIP_FIND_LINKS)

.PHONY: install venv promtool specs tools kcat demo test test-slow test-all lint schemas dashboard lock bench image clean

# Installs exactly requirements-dev.lock (hash-checked: every extra, torch included, and the test tools), then
# ragbus itself (editable). The image's runtime installs requirements.lock (the same versions without torch and
# the test tools), its build stage requirements-export.lock (the core and torch, to export the ONNX model):
# deploy/lock.py.
$(STAMP): pyproject.toml $(LOCK) $(EXPORT_LOCK) $(DEV_LOCK)
	$(PYTHON) deploy/lock.py check
	$(MAKE) --no-print-directory venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
		"$$($(PYTHON) deploy/lock.py torch)"
	$(PY) -m pip install -q --no-deps --require-hashes -r $(DEV_LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	# the ONNX embedding model, exported once from the packaged weights into .ragbus/models
	$(VENV)/bin/ragbus embedder export
	touch $(STAMP)

install: $(STAMP)

# A venv whose pip runs, made by Python 3.11 (what the lockfiles are resolved for); one that an interrupted
# `python -m venv` left without a working pip, or whose interpreter is gone, is made again.
venv:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
		echo "make: $(PYTHON) is not Python 3.11, which the lockfiles are resolved for: pass PYTHON=python3.11" >&2; \
		exit 1; }
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }

promtool:
	@promtool --version >/dev/null 2>&1 || $(PROMTOOL) --version >/dev/null 2>&1 || { \
		rm -rf $(TOOLS)/prometheus && $(MAKE) --no-print-directory $(PROMTOOL); }

$(PROMTOOL):
	rm -rf $(TOOLS)/deb $(TOOLS)/prometheus.partial
	mkdir -p $(TOOLS)/deb
	cd $(TOOLS)/deb && { apt-get download prometheus 2>/dev/null || \
		{ $(SUDO) apt-get update -q && apt-get download prometheus; }; }
	dpkg-deb -x $(TOOLS)/deb/prometheus_*.deb $(TOOLS)/prometheus.partial
	$(TOOLS)/prometheus.partial/usr/bin/promtool --version >/dev/null
	rm -rf $(TOOLS)/prometheus $(TOOLS)/deb && mv $(TOOLS)/prometheus.partial $(TOOLS)/prometheus

# What the contract tests need beyond Python (tests/unit/test_contract.py, tests/integration/test_guides.py):
# the official AsyncAPI JSON Schemas from npm (not vendored), and kcat from Debian for the guides'
# command-line examples.
ASYNCAPI_SPECS := 6.11.1
SPECS_PACKAGE := node_modules/@asyncapi/specs
SPECS := $(TOOLS)/npm/$(SPECS_PACKAGE)/schemas/3.0.0.json
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Installed again unless the pinned version is there and its schema parses (an interrupted install can leave
# either half of that).
specs:
	@$(PYTHON) -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["version"] != sys.argv[3] \
		or not json.load(open(sys.argv[2])))' $(TOOLS)/npm/$(SPECS_PACKAGE)/package.json $(SPECS) $(ASYNCAPI_SPECS) 2>/dev/null || { \
		command -v npm >/dev/null || { echo "make: npm (Node.js) installs the AsyncAPI schemas: install npm" >&2; \
			exit 1; }; \
		rm -rf $(TOOLS)/npm $(TOOLS)/npm.partial && \
		npm install --prefix $(TOOLS)/npm.partial --no-audit --no-fund --silent @asyncapi/specs@$(ASYNCAPI_SPECS) && \
		test -f $(TOOLS)/npm.partial/$(SPECS_PACKAGE)/schemas/3.0.0.json && mv $(TOOLS)/npm.partial $(TOOLS)/npm; }

# Debian's kcat, installed (again) unless it runs: a package left half-installed is reinstalled.
kcat:
	@kcat -V >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --reinstall kcat; }

# The real tools the tests check artefacts with: promtool (tests/deploy), the AsyncAPI schemas and kcat
# (the contract and the guides); hadolint, kubernetes-validate and check-jsonschema come with the test extra.
tools: install promtool specs kcat

demo: install
	$(VENV)/bin/ragbus demo

test: tools
	$(PY) -m pytest

test-slow: tools
	$(PY) -m pytest -m slow

test-all: tools
	$(PY) -m pytest -m 'not llm'

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

schemas: install
	$(PY) -m schemas.generate

dashboard: install
	$(PY) deploy/grafana/dashboard.py

$(UV):
	rm -rf $(TOOLS)/uv.partial
	$(PYTHON) -m pip install -q --no-deps --target $(TOOLS)/uv.partial uv==$(UV_VERSION)
	$(TOOLS)/uv.partial/bin/uv --version >/dev/null
	rm -rf $(TOOLS)/uv-$(UV_VERSION) && mv $(TOOLS)/uv.partial $(TOOLS)/uv-$(UV_VERSION)

# Re-resolve every lockfile after a change to pyproject.toml's dependencies (pins already in the locks are kept
# where they still fit; `make lock UPGRADE=1` moves everything to the newest allowed versions). The runtime and
# export locks are resolved within the dev lock, so all three hold the same versions; which extras each holds
# (and that the runtime lock leaves out deploy/runtime-excludes.txt) is `deploy/lock.py args`.
LOCK_FLAGS = --python-version 3.11 --python-platform x86_64-manylinux_2_28 --constraint deploy/constraints.txt \
	--generate-hashes --no-emit-package torch $(foreach d,$(TORCH_FIND_LINKS),--find-links $(d)) \
	$(if $(TORCH_INDEX),--index $(TORCH_INDEX) --index-strategy unsafe-best-match) \
	--custom-compile-command "make lock" --quiet
lock: $(UV)
	$(UV) pip compile pyproject.toml $$($(PYTHON) deploy/lock.py args $(DEV_LOCK)) $(LOCK_FLAGS) \
		$(if $(UPGRADE),--upgrade) -o $(DEV_LOCK)
	$(UV) pip compile pyproject.toml $$($(PYTHON) deploy/lock.py args $(LOCK)) $(LOCK_FLAGS) \
		--constraint $(DEV_LOCK) -o $(LOCK)
	$(UV) pip compile pyproject.toml $$($(PYTHON) deploy/lock.py args $(EXPORT_LOCK)) $(LOCK_FLAGS) \
		--constraint $(DEV_LOCK) -o $(EXPORT_LOCK)
	$(PYTHON) deploy/lock.py stamp
	$(PYTHON) deploy/lock.py check

bench: install
	$(PY) bench/ingest.py ../shared/data/pydocs-faq-dev/pages.jsonl --limit 40

# Needs a container engine (there is none on the project's own machines: CI lints the Dockerfile and runs
# its entry command instead, tests/deploy/test_image.py).
image:
	docker build --build-arg REVISION=$$(git rev-parse --short HEAD) -t ragbus:$$(git describe --always --dirty) .

clean:
	rm -rf $(VENV) $(TOOLS) .ragbus .pytest_cache .ruff_cache .mypy_cache
