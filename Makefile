# Rigmesh: every target does its own set-up, so a fresh clone needs only `make test` / `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NODE_STAMP := contracts/node_modules/.installed
FORGE := contracts/node_modules/.bin/forge

.PHONY: all setup system-deps test lint forge pytest demo bench vectors spec artifacts clean crash-matrix

all: test

setup: $(PY_STAMP) $(NODE_STAMP)

# fastecdsa (pulled in by libp2p) and cbrrr build from source: gcc, libgmp headers. npm runs the
# contract toolchain. The confined job runner uses bubblewrap (the sandbox), slirp4netns (its
# optional outbound network) and mkfs.ext4 (per-job disk); its tests run wherever they are found.
# Installed only when missing, so developer machines are left alone.
system-deps:
	@missing=""; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	dpkg -s libgmp-dev >/dev/null 2>&1 || missing="$$missing libgmp-dev"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v slirp4netns >/dev/null || missing="$$missing slirp4netns"; \
	command -v mkfs.ext4 >/dev/null || missing="$$missing e2fsprogs"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(PY_STAMP): pyproject.toml | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(NODE_STAMP): contracts/package.json contracts/package-lock.json | system-deps
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(PY_STAMP)
	$(VENV)/bin/ruff check node tests simulations

forge: $(NODE_STAMP)
	cd contracts && ./node_modules/.bin/forge test

pytest: setup
	$(PY) -m pytest -q

test: setup lint forge pytest

# Every fault point of the crash matrix (SIGKILL, restart, books checked), both roles: 2-5 min.
crash-matrix: setup
	$(PY) -m pytest -q -m 'matrix or not matrix' tests/node/test_crash.py

demo: setup
	$(VENV)/bin/rigmesh demo

bench: setup
	@for f in tests/bench/bench_*.py; do \
	  echo; echo "=== $$f"; $(PY) $$f || exit 1; \
	done

# Rebuild node/rigmesh/escrow/artifacts/*.json after editing contracts/src (the suite checks that
# the committed artifacts equal a fresh compile).
artifacts: $(NODE_STAMP)
	cd contracts && node tools/build-artifacts.js

# Regenerate spec/vectors from the fixed test keys (the suite fails if they drift from the code).
vectors: $(PY_STAMP)
	$(PY) spec/vectors/generate.py

# Re-render spec/rental.md's generated sections (tables, diagrams, codes, timers) and the vectors.
spec: vectors
	$(PY) spec/render.py

clean:
	rm -rf $(VENV) contracts/node_modules contracts/out contracts/cache .pytest_cache
