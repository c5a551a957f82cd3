# sspo_jax developer entry points. `make test` runs the whole test suite and `make bench` the
# benchmarks; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.sspo-installed
EXTRAS ?= dev,torch-ref,data
PYTEST_ARGS ?=

.PHONY: install test test-fast bench clean-venv

install: $(STAMP)

# The stamp depends on pyproject.toml: the venv is reused until the dependencies change.
# torch is installed first and alone so that pip takes the CPU build pinned here instead of
# resolving an unpinned torch (which pulls several GB of CUDA packages).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_losses.py

clean-venv:
	rm -rf $(VENV)
