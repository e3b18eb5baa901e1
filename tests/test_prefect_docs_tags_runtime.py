"""Prefect 3's documented examples for ``tags`` and ``prefect.runtime``, as our own tests (issue 16).

Each test is the behaviour a page of Prefect's docs shows (tagging runs with a
context manager, reading the run's name and parameters from the runtime
module, naming runs with a function that reads the runtime), written with
daskflow imported where a Prefect user would import ``prefect``. The code and
wording are ours; where a runner could change the answer, the test runs on all
three.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from click.testing import CliRunner

from daskflow import flow, runtime, tags, task
from daskflow.cli import main
from daskflow.context import tags as context_tags
from daskflow.runtime import deployment, flow_run, task_run


def test_tags_context_manager_tags_the_flow_and_the_tasks_started_inside(task_runner: Any, history: Any) -> None:
    """The docs tag a task call inside a flow with ``with tags(...)`` and a whole flow call from outside."""

    @task(tags=["warehouse"])
    def load(n: int) -> list[str]:
        return sorted(runtime.task_run.tags)

    @flow(task_runner=task_runner)
    def nightly() -> tuple[list[str], list[str], list[str]]:
        plain = load(1)
        with tags("backfill"):
            tagged = load.submit(2).result()
        return plain, tagged, sorted(runtime.flow_run.tags)

    with tags("local", "dev"):
        state = nightly(return_state=True)
    plain, tagged, of_flow = state.result()
    assert of_flow == ["dev", "local"]
    assert plain == ["dev", "local", "warehouse"], "a task inherits the tags around its flow call"
    assert tagged == ["backfill", "dev", "local", "warehouse"], "and those of a tags() block in the flow"
    # Outside the block nothing is tagged any more.
    assert nightly(return_state=True).result()[2] == []

    store = history()
    [found] = store.list_flow_runs(tag=["dev"])
    assert found.id == state.flow_run.id
    task_tags = sorted(sorted(run.tags) for run in store.task_runs(state.flow_run.id))
    assert task_tags == [["backfill", "dev", "local", "warehouse"], ["dev", "local", "warehouse"]], task_tags
    listed = CliRunner().invoke(main, ["runs", "ls", "--tag", "local", "--json"])
    assert listed.exit_code == 0, listed.output
    assert state.flow_run.id in listed.output and listed.output.count('"id"') == 1, listed.output


def test_tags_is_also_importable_from_context_and_nests() -> None:
    """``from prefect.context import tags`` is the same manager; nested blocks add up and yield the current set."""
    assert context_tags is tags

    @flow
    def tagged() -> list[str]:
        return sorted(runtime.flow_run.tags)

    with tags("a") as outer:
        with tags("b") as inner:
            assert set(outer) == {"a"} and set(inner) == {"a", "b"}
            assert tagged() == ["a", "b"]
        assert tagged() == ["a"]


def test_tags_from_a_block_are_concurrency_limit_tags(task_runner: Any, executions: Any) -> None:
    """Prefect's tag-based limits: a tag given by ``tags(...)`` counts toward a limit on that tag."""

    @task
    def query(i: int) -> int:
        started = time.time()
        time.sleep(0.05)  # work that overlaps without a limit
        executions.record(f"query-{i}", start=started)
        return i

    @flow(concurrency_limit={"database": 1}, task_runner=task_runner)
    def many() -> list[int]:
        with tags("database"):
            futures = query.map(range(6))
        return list(futures.result())

    assert many() == list(range(6))
    peak = executions.peak_concurrency()
    assert peak == 1, f"peak concurrency {peak} over 6 runs tagged 'database' under a limit of 1"


def test_runtime_flow_run_name_in_the_flow_body_and_none_outside() -> None:
    """The docs' first runtime example: a flow returns a string built from ``flow_run.name``."""

    @flow
    def greeting(name: str) -> str:
        return f"{name} runs as {flow_run.name}"

    state = greeting("ada", return_state=True)
    assert state.result() == f"ada runs as {state.flow_run.name}"
    assert state.flow_run.name  # a generated name, never empty
    # Outside a run the attributes are None (or empty), never an error.
    assert flow_run.name is None and flow_run.id is None and task_run.name is None
    assert deployment.name is None and deployment.id is None


def test_runtime_in_flows_and_tasks_on_every_runner(task_runner: Any) -> None:
    """The docs' second runtime example: a flow and its task print their names, the flow's parameters
    and the deployment (None when not run from one)."""

    @task
    def inner(y: int) -> dict[str, Any]:
        return {
            "task_run.name": task_run.name,
            "task_name": task_run.task_name,
            "task parameters": task_run.parameters,
            "flow parameters": flow_run.parameters,
            "flow_name": flow_run.flow_name,
        }

    @flow(task_runner=task_runner)
    def outer(x: int) -> dict[str, Any]:
        seen = inner(2)
        seen["flow_run.name"] = flow_run.name
        seen["deployment"] = deployment.name
        return seen

    state = outer(1, return_state=True)
    seen = state.result()
    assert seen["flow_run.name"] == state.flow_run.name and seen["deployment"] is None
    assert seen["flow_name"] == "outer" and seen["flow parameters"] == {"x": 1}
    assert seen["task_name"] == "inner" and seen["task parameters"] == {"y": 2}
    assert seen["task_run.name"].startswith("inner"), seen["task_run.name"]


def test_run_names_from_functions_that_read_the_runtime(task_runner: Any) -> None:
    """The docs name flow and task runs with functions that read ``runtime``'s names and parameters."""

    def name_the_flow_run() -> str:
        params = runtime.flow_run.parameters
        return f"{runtime.flow_run.flow_name}-with-{params['name']}-and-{params['limit']}"

    def name_the_task_run() -> str:
        return f"{runtime.task_run.task_name}-on-{runtime.task_run.parameters['day']}"

    @task(task_run_name=name_the_task_run)
    def fetch(day: str) -> str:
        return str(runtime.task_run.name)

    @flow(flow_run_name=name_the_flow_run, task_runner=task_runner)
    def report(name: str, limit: int = 100) -> tuple[str, str]:
        return str(runtime.flow_run.name), fetch("monday")

    assert report("marvin") == ("report-with-marvin-and-100", "fetch-on-monday")


def test_the_environment_mocks_runtime_values_as_the_docs_show(monkeypatch: Any) -> None:
    """The docs mock ``task_run.fake_key`` through the environment, and existing keys cast to their type."""
    monkeypatch.setenv("DASKFLOW__RUNTIME__TASK_RUN__FAKE_KEY", "foo")
    assert task_run.fake_key == "foo"
    # Prefect's own variable names work too, so a suite written for Prefect keeps its mocks.
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__RUN_COUNT", "3")
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__NAME", "mocked-run")
    assert flow_run.run_count == 3 and flow_run.name == "mocked-run"
    monkeypatch.setenv("DASKFLOW__RUNTIME__FLOW_RUN__NAME", "ours-first")
    assert flow_run.name == "ours-first"
    monkeypatch.delenv("DASKFLOW__RUNTIME__TASK_RUN__FAKE_KEY")
    with pytest.raises(AttributeError, match="has no attribute 'fake_key'"):
        task_run.fake_key  # noqa: B018
