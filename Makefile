# One-line entry points; the README's two commands are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo test test-suite test-lean test-lowest test-slow lint bench bench-peers prometheus wrk

# The library with the reference service, openinference and the test tools (`test` extra).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/chatter-otel demo

# Debian's Prometheus (2.42) evaluates the dashboards' queries in the tests.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || test -x /usr/bin/prometheus || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

lint: install
	$(VENV)/bin/ruff check chatter_otel tests benchmarks
	$(VENV)/bin/ruff format --check chatter_otel tests benchmarks
	$(VENV)/bin/mypy

# What CI runs (.ci/run): lint (ruff, mypy over the library, tests and benchmarks), the whole
# suite on the newest versions, the lean install, and the fast suite again on the lowest
# supported versions (constraints/lowest.txt, Chatter's Python).
test: lint test-suite test-lean test-lowest

# The whole suite, the slow fault-injection tests included.
test-suite: install prometheus
	$(VENV)/bin/pytest

# `pip install .` alone brings none of the service's stack and imports none of it.
test-lean:
	scripts/ci-lean-install.sh

# The library's tests on the lowest versions pyproject.toml allows.
test-lowest: prometheus
	scripts/ci-lowest-versions.sh

test-slow: install prometheus
	$(VENV)/bin/pytest -m slow

# The HTTP part's saturated throughput uses wrk when it is there, its Python generator if not.
wrk:
	@command -v wrk >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
	  echo "wrk not installed: the HTTP benchmark uses its Python generator"

bench: install wrk
	$(PY) -m benchmarks

# chatter-otel beside OpenLIT, OpenLLMetry and openinference on the same LangGraph turn; each
# peer runs from its own venv under .venv-peers/ (built on first use), offline.
bench-peers: install
	$(PY) -m benchmarks._peer_venvs
	$(PY) -m benchmarks --only peers
