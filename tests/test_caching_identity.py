"""Whose entry is it: a cache entry belongs to exactly one task, and a script shares its
entries with its import.

Two defects of issue 15 are pinned here, each on every runner: names that meet once made
file-name safe (``"load table a"`` and ``"load_table_a"``) used to share one entry, so one
task returned the other's value as ``Cached``; and a task run as ``python etl.py``
(module ``__main__``) and the same task imported (``from etl import ...``) keyed its code
differently, so a notebook recomputed what the script had cached.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.engine.caching import storage_key
from daskflow.results import ResultStore
from daskflow.states import State

_seen: list[State] = []


def _states_of(pipeline: Any) -> list[State]:
    """The task states a flow run saw (a flow's return value gives values, not states)."""
    _seen.clear()
    pipeline()
    return list(_seen)


def test_names_equal_once_made_file_safe_have_their_own_entries(
    task_runner: Any, tmp_path: Path, executions: Any
) -> None:
    storage = ResultStore((tmp_path / "results").as_uri())
    long_name = "extract the orders table from the warehouse, region "

    def make(name: str) -> Any:
        @task(name=name, cache_policy=INPUTS, result_storage=storage)
        def load(x: int) -> str:
            executions.record(f"{name}|{x}")
            return f"{name}:{x}"

        return load

    names = ["load table a", "load_table_a", "load/table.a", long_name + "north", long_name + "south"]
    tasks = [make(name) for name in names]

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        _seen.extend(t(1, return_state=True) for t in tasks)

    cold = _states_of(pipeline)
    warm = _states_of(pipeline)
    assert [s.result() for s in cold] == [f"{n}:1" for n in names], [s.result() for s in cold]
    assert [s.name for s in cold] == ["Completed"] * 5, "a task returned another task's entry: " + str(
        [(n, s.name, s.result()) for n, s in zip(names, cold, strict=True)]
    )
    assert [s.result() for s in warm] == [f"{n}:1" for n in names]
    assert [s.name for s in warm] == ["Cached"] * 5, [s.name for s in warm]
    assert sorted(executions.keys()) == sorted(f"{n}|1" for n in names), f"executions: {executions.keys()}"
    assert len({e.key for e in storage.entries()}) == 5, [e.key for e in storage.entries()]


def test_storage_keys_keep_a_readable_prefix_and_differ_by_the_exact_name() -> None:
    first, second = storage_key("load table a", "k"), storage_key("load_table_a", "k")
    assert first.startswith("load_table_a-") and second.startswith("load_table_a-")
    assert first != second
    assert storage_key("load_table_a", "k") == second, "a storage key must be the same every time"


def test_an_entry_written_by_another_task_is_a_miss_with_a_warning(
    task_runner: Any, tmp_path: Path, executions: Any, caplog: pytest.LogCaptureFixture
) -> None:
    storage = ResultStore((tmp_path / "results").as_uri())

    @task(name="orders", cache_policy=INPUTS, result_storage=storage)
    def orders(x: int) -> str:
        executions.record(f"orders|{x}")
        return f"orders:{x}"

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        _seen.append(orders(1, return_state=True))

    _states_of(pipeline)
    [entry] = storage.entries()
    # An entry under this task's name that another task wrote (a copied file, an older layout):
    storage.write(entry.key, "customers:1", task_name="customers")
    with caplog.at_level(logging.WARNING, logger="daskflow"):
        [state] = _states_of(pipeline)
    assert (state.name, state.result()) == ("Completed", "orders:1"), (state.name, state.result())
    assert executions.keys() == ["orders|1", "orders|1"], executions.keys()
    if task_runner.__class__.__name__ != "DaskTaskRunner":  # on Dask the warning is in the worker's run log
        assert "written by task 'customers'" in caplog.text, caplog.text
    [again] = _states_of(pipeline)
    assert (again.name, again.result()) == ("Cached", "orders:1"), "the recomputed value replaces the foreign entry"


_ETL = """
import sys
from pathlib import Path

from daskflow import flow, task
from daskflow.cache_policies import INPUTS, TASK_SOURCE
from daskflow.results import ResultStore
from daskflow.task_runners import DaskTaskRunner, SequentialTaskRunner

STORAGE = ResultStore(Path(__file__).with_name("results").as_uri())


@task(cache_policy=INPUTS + TASK_SOURCE, result_storage=STORAGE)
def clean(x):
    print("EXECUTED", x)
    return x * 10


def runner():
    return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "dashboard_address": None}) \\
        if sys.argv[-1] == "dask" else SequentialTaskRunner()


@flow
def etl(n):
    return clean.map(range(n)).result()


def run(n):
    state = etl.with_options(task_runner=runner())(n, return_state=True)
    print("VALUE", state.result())
    print("STATES", sorted({run.state.name for run in state.flow_run.task_runs}))


if __name__ == "__main__":
    run(3)
"""


@pytest.mark.parametrize("runner", ["sequential", "dask"])
def test_a_script_and_its_import_share_entries(tmp_path: Path, runner: str) -> None:
    (tmp_path / "etl.py").write_text(_ETL)
    env = {**os.environ, "DASKFLOW_HOME": str(tmp_path / "home"), "DASK_DASKFLOW__LOGGING__CONSOLE": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))

    def python(*args: str, seed: str) -> str:
        done = subprocess.run(
            [sys.executable, *args, runner],
            cwd=tmp_path,
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    as_script = python(str(tmp_path / "etl.py"), seed="1")
    imported = python("-c", "import etl; etl.run(3)", seed="2")
    as_module = python("-m", "etl", seed="3")
    for out in (as_script, imported, as_module):
        assert "VALUE [0, 10, 20]" in out, out
    runs = [out.count("EXECUTED") for out in (as_script, imported, as_module)]
    assert runs == [3, 0, 0], f"executions as a script, imported, and with -m: {runs}\n{imported}"
    assert "STATES ['Cached']" in imported and "STATES ['Cached']" in as_module, imported + as_module


def test_the_module_part_of_a_task_source_key_is_the_modules_last_name(tmp_path: Path) -> None:
    package = tmp_path / "pipelines"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "etl.py").write_text(_ETL)
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from daskflow.cache_policies import task_source_key
        import etl
        from pipelines import etl as packaged
        print(task_source_key(etl.clean.fn) == task_source_key(packaged.clean.fn))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(package), os.environ.get("PYTHONPATH")]))},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "True", done.stderr[-2000:]
