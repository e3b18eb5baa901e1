# The two commands a newcomer types: `make demo` and `make test`.
# Both create .venv with the interpreter found as $(PYTHON) and install daskflow into it.
#
#   make test         lint (ruff, import layers), mypy --strict, the whole suite: what CI runs
#   make test-fast    the inner loop: the suite without slow-marked tests and notebooks
#   make test-oldest  the Dask contract tests on the oldest dask/distributed pyproject.toml allows
#   make bench        every benchmark suite, --quick, with Prefect 3 and one chart (.venv-bench)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist processes for the suite, one per core of CI: most tests wait on Dask worker
# processes, servers and files, which the other process fills; four on two cores starve the
# tests that count on a lease being renewed in time. Each process has its own session cluster,
# PostgreSQL server and moto server, and gets whole files (--dist loadfile), which run in their
# order. `make pytest PYTEST_WORKERS=0` runs the suite in one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadfile)

# The oldest dask and distributed that pyproject.toml allows, in a venv of their own: their
# `>=` floors become `==` pins. Only what the Dask contract tests need is installed there.
OLDEST_VENV ?= .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
OLDEST_PINS = $(shell $(PYTHON) -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(" ".join(re.sub(r"\s*>=\s*", "==", d) for d in deps if re.match(r"(dask|distributed)\s*>=", d)))')
OLDEST_TESTS = $(wildcard tests/test_task_runners_dask.py tests/test_concurrency.py tests/test_compat.py)

.PHONY: demo test test-fast test-oldest lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/orders_etl.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy src/daskflow

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_XDIST)

test: lint typecheck pytest

test-fast: $(STAMP)
	$(BIN)/pytest $(PYTEST_XDIST) -m "not slow" --ignore=tests/test_notebooks.py

$(OLDEST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e . $(OLDEST_PINS) pytest pytest-timeout
	touch $(OLDEST_STAMP)

# In one process: the files are few, and the limit tests' 200 ms leases want the CPU to themselves.
# pytest's exit status 5 (no test collected) is a no-op here, not a failure: it happens when a
# selection such as PYTEST_ADDOPTS="-k ..." leaves none of the Dask contract tests. The files
# themselves must exist: without them pytest would run the whole suite instead.
test-oldest: $(OLDEST_STAMP)
	@test -n "$(OLDEST_TESTS)" || { echo "test-oldest: none of the Dask contract test files exist"; exit 1; }
	$(OLDEST_VENV)/bin/python -c 'import dask, distributed; print(f"oldest allowed: dask {dask.__version__}, distributed {distributed.__version__}")'
	$(OLDEST_VENV)/bin/pytest -p no:xdist $(OLDEST_TESTS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "test-oldest: no Dask contract test selected; nothing to check"; exit 0; fi; \
	exit $$status

# Benchmarks in a venv of their own with the bench extra (Prefect 3 + prefect-dask, matplotlib):
# Prefect pins its own fastapi and friends, which must not move under the test venv. W1 runs
# Prefect at N=1,000 side by side with raw Dask and daskflow; the driver draws one chart.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_CHART ?= docs/benchmarks.png

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/run_all.py --quick --chart $(BENCH_CHART)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(BENCH_VENV) .mypy_cache .pytest_cache .ruff_cache
