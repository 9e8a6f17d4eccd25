# Two entry points for a fresh machine: `make demo` and `make test`. Both are idempotent: the venv is
# (re)installed only when pyproject.toml or constraints.txt changed since the last install.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

# What pip cannot install (Debian packages; scripts/system-deps.sh installs them on Debian as root, else says what to
# run). Checked on every call (cheap: a few file tests), so a fresh machine needs nothing but these two commands.
DEMO_DEB := dataset-fashion-mnist
TEST_DEB := dataset-fashion-mnist python3-h5py hdf5-tools

.PHONY: quickstart demo test test-all bench clean-venv system-deps-demo system-deps-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -c constraints.txt -e '.[test,flower]'
	touch $(STAMP)

system-deps-demo:
	@bash scripts/system-deps.sh $(DEMO_DEB)

system-deps-test:
	@bash scripts/system-deps.sh $(TEST_DEB)

# About a minute on 2 cores: FedAvg, count-aware FedAvg and FedDF on real Fashion-MNIST (README, Quickstart).
quickstart: $(STAMP) system-deps-demo
	bash scripts/quickstart.sh

demo: $(STAMP) system-deps-demo
	bash scripts/demo.sh

# CI: everything but the tests marked slow (the real-process failure scenarios, the GPU script's CPU smoke run); they
# run in `make test-all` (README, "Tests").
test: $(STAMP) system-deps-test
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Everything, the slow tests included.
test-all: $(STAMP) system-deps-test
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
