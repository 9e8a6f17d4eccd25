# Two entry points for a fresh machine: `make demo` and `make test`. Both are idempotent: the venv is
# (re)installed only when pyproject.toml or constraints.txt changed since the last install.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-all bench clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -c constraints.txt -e '.[test,flower]'
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything, the slow tests included (CI runs `make test`, which already includes them; see README).
test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
