# Two entry points on a fresh machine: `make up` (run rewardhub) and `make test` (run the suite).
# Both create the virtualenv they need in .venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: up test lint typecheck bench mutation install install-dev system-deps clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU wheel from the machine's wheelhouse.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,train,rec]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml tests/integration/framework-requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,train,rec,dev]'
	# veRL's and OpenRLHF's own reward code for the adapter tests, without their (GPU) dependencies,
	# in a folder of its own so their top-level `tests` packages cannot shadow ours.
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/frameworks -r tests/integration/framework-requirements.txt
	# checkov scans the rendered Helm chart (tests/unit/deploy/test_helm_scan.py); a venv of its own,
	# as its pins conflict with the dev tools'.
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet 'checkov==3.3.30'
	touch $@ $(VENV)/.installed

# KaTeX and Chart.js for the web UI come from npm (webui/package-lock.json), never from the repo.
webui/node_modules/.package-lock.json: webui/package-lock.json
	npm ci --prefix webui --no-audit --no-fund --loglevel=error

install: $(VENV)/.installed webui/node_modules/.package-lock.json
install-dev: $(VENV)/.installed-dev webui/node_modules/.package-lock.json

# `make up PORT=8080 HOST=0.0.0.0` to serve elsewhere.
PORT ?= 8000
HOST ?= 127.0.0.1
up: install system-deps
	@echo "the rewardhub command is $(BIN)/rewardhub: '. $(BIN)/activate' puts it on PATH"
	$(BIN)/rewardhub up --host $(HOST) --port $(PORT)

# The sandbox isolates each run with Debian's bubblewrap and runs Debian's toolchains (the sandbox
# Python with numpy and sympy, g++, nodejs); browser tests drive Debian's Chromium through
# Playwright (no browser is ever downloaded); the compose tests validate docker-compose.yml with
# Debian's docker-compose.
SYSTEM_PACKAGES := /usr/bin/bwrap:bubblewrap /usr/lib/python3/dist-packages/numpy:python3-numpy \
	/usr/lib/python3/dist-packages/sympy:python3-sympy /usr/bin/g++:g++ /usr/bin/node:nodejs \
	/usr/bin/chromium:chromium /usr/bin/docker-compose:docker-compose \
	/usr/share/doc/libseccomp2/copyright:libseccomp2
system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  test -e "$${entry%%:*}" || missing="$$missing $${entry##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "install Debian's$$missing (sudo apt-get install$$missing) for the sandbox, browser and compose tests"; fi; fi

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: install-dev
	$(BIN)/mypy rewardhub services trainer migrations webui

test: install-dev system-deps lint typecheck
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The README's grader reference table, regenerated from rewardhub/reward_specs.py.
readme: install-dev
	$(BIN)/python -m tests.unit.test_readme

bench: install-dev
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Mutation testing of the modules that decide rewards ([tool.mutmut] in pyproject.toml): writes the
# per-module score table to build/mutation-report.md and fails while a mutant survives that
# docs/mutation_equivalents.md does not list. Not part of `make test` (tens of minutes on 2 cores, see
# the README; results are cached in build/mutation/, so a rerun re-tests only what changed).
# `make mutation MUTANTS='services.verifier.graders.numeric.*'` runs one module.
MUTANTS ?=
mutation: install-dev
	$(BIN)/python scripts/mutation_report.py $(MUTANTS)

# The lock files the images install from (requirements/*.lock: every package pinned with its
# sha256, for the images' CPython 3.11 on Linux x86_64), re-resolved from pyproject.toml by uv.
# Needs PyPI; torch's CPU build comes from download.pytorch.org, or from a folder holding its wheel:
# `make lock TORCH_FIND_LINKS=/opt/wheels`. `make lock LOCKS=server` regenerates one.
LOCKS ?=
TORCH_FIND_LINKS ?=
lock: | $(BIN)/python
	$(BIN)/pip install --quiet 'uv>=0.9'
	UV=$(BIN)/uv TORCH_FIND_LINKS=$(TORCH_FIND_LINKS) $(BIN)/python requirements/lock.py $(LOCKS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
