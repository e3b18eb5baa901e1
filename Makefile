# The two commands a newcomer types: `make demo` and `make test`.
# Both create .venv with the interpreter found as $(PYTHON) and install daskflow into it.
#
#   make test         lint (ruff, import layers), then mypy --strict beside every test not marked slow
#   make test-slow    the tests marked slow (fault injection that waits out its fault); CI runs it too
#   make test-fast    the inner loop: the suite without slow-marked tests and notebooks, no lint
#   make test-oldest  the Dask contract tests on the oldest dask/distributed pyproject.toml allows
#   make bench        every benchmark suite, --quick, with Prefect 3 and one chart (.venv-bench)
#
# Why the slow tests are a step of their own (issue 14, goal 7: `make test` from a fresh clone in
# under 4 minutes on 2 cores, and no test dropped from CI). A test is marked slow when its time is
# the fault it injects and waits out, not the code under test: a database away for 30 s, worker,
# service or writer processes killed and their death detected, SIGINT/SIGTERM to a process tree, a
# store of 100,000 runs. They are a few dozen tests but about a third of the suite's time, and the
# inner loop of a change gains nothing from waiting them out every time. CI runs both steps, bounded
# each (.ci/run: `make test`, then `make test-slow`), so marking a test slow moves it between two CI
# steps and never out of CI; run `make test test-slow` to have all of it locally.
#
# Where make test's time goes, and why it is arranged so: installing (the venv and its packages; with
# uv about 6 s of CPU, bytecode not compiled: see venv_install) comes first; ruff and lint-imports take
# a second or two and run next, so a lint error fails at once; mypy (26 s of one core from a cold cache,
# 55 s before pyproject.toml skipped the packages daskflow never imports; most of it reading the
# third-party packages' types, which a fresh clone has no cache of) then runs at low
# priority *beside* pytest, taking the CPU pytest leaves idle while its tests wait on Dask workers,
# servers and subprocesses, instead of adding its time in front of the suite. In pytest, each xdist
# process collects the whole suite (5 s of CPU once bytecode is written, 16 s the first time), and
# every process a test starts pays `import daskflow` (0.64 s of CPU) or more.
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
PYTEST_XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)
# The tests `make pytest` selects: everything not marked slow (see above); `make pytest
# PYTEST_MARKS=` selects all of them.
PYTEST_MARKS ?= not slow

# The oldest dask and distributed that pyproject.toml allows, in a venv of their own: their
# `>=` floors become `==` pins. Only what the Dask contract tests need is installed there.
OLDEST_VENV ?= .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
OLDEST_PINS = $(shell $(PYTHON) -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(" ".join(re.sub(r"\s*>=\s*", "==", d) for d in deps if re.match(r"(dask|distributed)\s*>=", d)))')
OLDEST_TESTS = $(wildcard tests/test_task_runners_dask.py tests/test_concurrency.py tests/test_compat.py)

.PHONY: demo test test-slow test-fast test-oldest lint typecheck pytest bench clean

# How a venv gets its packages. uv, installed into the venv from the index, installs the test extra
# (about 160 packages) in about 6 s of CPU from its cache, where pip took about 80 s (pip 26; the
# venv's bundled pip 23.2 took a third more): on 2 cores that was the largest fixed cost of a fresh
# clone's make test. Where uv cannot be installed or fails (an index it cannot reach: uv reads no
# pip.conf), pip does the install, upgraded first. `make test INSTALLER=pip` skips uv.
# Bytecode is written when a module is first imported, not compiled at install: make's recipes run
# without PYTHONDONTWRITEBYTECODE (unexported below), which CI machines and this one set. With it set,
# nothing wrote bytecode, so every process a test starts compiled dask, distributed and pandas again
# (import daskflow: 2.3 s of CPU instead of 0.9 s; the suite's pytest 372 s instead of 239 s), and
# pytest rewrote and compiled every test module again in each xdist process. Compiling all of the
# venv at install (uv --compile-bytecode) cured the first but cost 38 s of CPU (44 s against 6 s for
# the whole install) for some 1.2 GB of packages of which a test run imports a fraction; written on
# first import, the bytecode costs only what is used (a cold collection 16 s of CPU, a warm one 5 s),
# and the tests' rewritten modules are kept for the next run. The files go where compileall put them
# (.venv and the clone's __pycache__ folders, which git ignores).
# $(call venv_install,VENV,PIP ARGUMENTS)
INSTALLER ?= uv
unexport PYTHONDONTWRITEBYTECODE
define venv_install
	$(PYTHON) -m venv $(1)
	if [ "$(INSTALLER)" = uv ] && $(1)/bin/python -m pip install --quiet uv \
	  && $(1)/bin/uv pip install --quiet --python $(1)/bin/python $(2); then :; else \
	  [ "$(INSTALLER)" = uv ] && echo "uv could not install the packages: pip installs them instead"; \
	  $(1)/bin/python -m pip install --quiet --upgrade pip && $(1)/bin/python -m pip install --quiet --no-compile $(2); \
	fi
endef

$(STAMP): pyproject.toml
	$(call venv_install,$(VENV),-e '.[test]')
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/orders_etl.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# At idle priority (SCHED_IDLE, where chrt can set it; else nice 19): beside pytest (make test) it
# takes only the CPU the tests leave idle. At nice 10 it still took about a tenth of a busy core
# from the tests, and the suite is CPU-bound on 2 cores: mypy's 25 s of CPU fit in the idle time of
# the suite's 3.5 minutes.
LOW_PRIORITY := $(shell chrt --idle 0 true 2>/dev/null && echo chrt --idle 0 || echo nice -n 19)
typecheck: $(STAMP)
	$(LOW_PRIORITY) $(BIN)/mypy src/daskflow

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_XDIST) $(if $(PYTEST_MARKS),-m "$(PYTEST_MARKS)")

# Lint first (it fails in a second), then mypy and the suite at once; make fails if either does,
# after both have ended. Their output is not synchronised (make -O would hold pytest's progress,
# and a hung test's stack dump, until pytest ends: lost if CI's timeout stops it); mypy prints
# only its result, at its end.
test: lint
	$(MAKE) --no-print-directory -j2 typecheck pytest

test-slow: $(STAMP)
	$(BIN)/pytest $(PYTEST_XDIST) -m slow

test-fast: $(STAMP)
	$(BIN)/pytest $(PYTEST_XDIST) -m "not slow" --ignore=tests/test_notebooks.py

$(OLDEST_STAMP): pyproject.toml
	$(call venv_install,$(OLDEST_VENV),-e . $(OLDEST_PINS) pytest pytest-timeout)
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
# Every suite runs, each --quick (M1 at N=5,000, the others at N=1,000 or less): the whole
# run took 21 min 45 s on 2 cores at load 17-28 (W1 with Prefect's 1,000 tasks about 11 min of it).
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
