# sspo_jax developer entry points, each creating .venv on first use:
#   make run    the default job: SSPO on the shipped tiny model and the built-in arithmetic task (CPU)
#   make test   the whole test suite
#   make bench  every benchmark, side by side with PyTorch (JSON and a summary in benchmarks/results/,
#               the README table regenerated); run it on a quiet machine
#   make bench-peers  the same GRPO job on sspo_jax, TRL and Tunix (peer venvs built in .peers/ on first use;
#               benchmarks/results/peers.json, the README table regenerated); run it on a quiet machine
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.sspo-installed
EXTRAS ?= dev,torch-ref,data,real
PYTEST_ARGS ?=
RUN_CONFIG ?= configs/tiny_sspo.yaml
RUN_DIR ?= runs/tiny_sspo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install run test test-fast bench bench-peers clean-venv

install: $(STAMP)

# The stamp depends on pyproject.toml: the venv is reused until the dependencies change.
# torch is installed first and alone so that pip takes the CPU build pinned here instead of
# resolving an unpinned torch (which pulls several GB of CUDA packages).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# A fresh run directory each time; resume an interrupted run with
#   .venv/bin/sspo-jax train --config $(RUN_CONFIG) --run-dir <that directory>
run: $(STAMP)
	$(VENV)/bin/sspo-jax train --config $(RUN_CONFIG) --run-dir $(RUN_DIR)

# --nbmake also executes the notebooks (pyproject's testpaths: tests and notebooks); a path in
# PYTEST_ARGS (e.g. PYTEST_ARGS="tests/algorithms -x") runs only that subset.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --nbmake $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --nbmake -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py --readme

bench-peers: $(STAMP)
	$(PY) benchmarks/bench_peers.py --presets grpo,sspo --readme

clean-venv:
	rm -rf $(VENV)
