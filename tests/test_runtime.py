"""``daskflow.runtime`` (Prefect's ``prefect.runtime``): facts about the current run, read as module
attributes, the same on every runner (Dask workers included), and None/empty outside a run."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daskflow import flow, runtime, task
from daskflow.context import tags
from daskflow.runtime import deployment
from daskflow.runtime import flow_run as flow_run_facts


def test_outside_a_run_the_facts_are_empty_as_in_prefect() -> None:
    assert runtime.flow_run.id is None and runtime.flow_run.name is None and runtime.flow_run.flow_name is None
    assert runtime.flow_run.parameters == {} and runtime.flow_run.tags == [] and runtime.flow_run.run_count == 0
    assert runtime.flow_run.parent_flow_run_id is None
    assert runtime.task_run.id is None and runtime.task_run.name is None and runtime.task_run.task_name is None
    assert runtime.task_run.parameters == {} and runtime.task_run.tags == [] and runtime.task_run.run_count == 0
    assert deployment.id is None and deployment.name is None and deployment.parameters == {}
    assert deployment.flow_run_id is None
    # Prefect answers "now" for the scheduled start outside a run.
    scheduled = runtime.flow_run.scheduled_start_time
    assert scheduled.tzinfo is not None and abs(datetime.now(UTC) - scheduled) < timedelta(minutes=1)
    with pytest.raises(AttributeError, match=r"has no attribute 'nmae'.*name"):
        runtime.flow_run.nmae  # noqa: B018


@task(tags=["db"])
def _facts(x: int) -> dict[str, Any]:
    return {
        "task_run.id": runtime.task_run.id,
        "task_run.name": runtime.task_run.name,
        "task_run.task_name": runtime.task_run.task_name,
        "task_run.parameters": runtime.task_run.parameters,
        "task_run.tags": runtime.task_run.tags,
        "task_run.run_count": runtime.task_run.run_count,
        "flow_run.id": runtime.flow_run.id,
        "flow_run.name": runtime.flow_run.name,
        "flow_run.flow_name": runtime.flow_run.flow_name,
        "flow_run.parameters": runtime.flow_run.parameters,
        "flow_run.tags": runtime.flow_run.tags,
        "flow_run.run_count": runtime.flow_run.run_count,
        "flow_run.scheduled_start_time": runtime.flow_run.scheduled_start_time,
        "deployment.id": deployment.id,
    }


def test_a_task_sees_its_run_and_its_flow_run_on_every_runner(task_runner: Any) -> None:
    @flow(task_runner=task_runner, name="facts-flow")
    def facts_flow(n: int) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        submitted = _facts.submit(n)
        body = {"name": flow_run_facts.name, "tags": flow_run_facts.tags, "count": flow_run_facts.run_count}
        return submitted.result(), body, submitted.task_run_id

    with tags("nightly"):
        state = facts_flow(7, return_state=True)
    seen, body, task_run_id = state.result()
    run = state.flow_run
    assert seen["task_run.id"] == task_run_id
    assert seen["task_run.name"] == "_facts-0" and seen["task_run.task_name"] == "_facts"
    assert seen["task_run.parameters"] == {"x": 7}
    assert seen["task_run.tags"] == ["db", "nightly"], "the task's own tags and those of tags(...)"
    assert seen["task_run.run_count"] == 1
    assert (seen["flow_run.id"], seen["flow_run.name"], seen["flow_run.flow_name"]) == (run.id, run.name, "facts-flow")
    assert seen["flow_run.parameters"] == {"n": 7}
    assert seen["flow_run.tags"] == ["nightly"] and seen["flow_run.run_count"] == 1
    assert seen["flow_run.scheduled_start_time"] == run.scheduled_start_time
    assert seen["deployment.id"] is None
    assert body == {"name": run.name, "tags": ["nightly"], "count": 1}


def test_run_counts_follow_retries() -> None:
    counts: list[int] = []

    @task(retries=2)
    def flaky() -> int:
        counts.append(runtime.task_run.run_count)
        if len(counts) < 3:
            raise RuntimeError("not yet")
        return runtime.task_run.run_count

    attempts: list[int] = []

    @flow(retries=1)
    def retried() -> int:
        attempts.append(runtime.flow_run.run_count)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return flaky()

    assert retried() == 3
    assert counts == [1, 2, 3] and attempts == [1, 2]


def test_a_subflow_knows_its_parent() -> None:
    @flow
    def child() -> tuple[str | None, str | None]:
        return runtime.flow_run.parent_flow_run_id, runtime.flow_run.root_flow_run_id

    @flow
    def parent() -> tuple[str | None, tuple[str | None, str | None]]:
        return runtime.flow_run.id, child()

    parent_id, (seen_parent, seen_root) = parent()
    assert parent_id is not None and seen_parent == parent_id and seen_root == parent_id


def test_environment_variables_override_a_fact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASKFLOW__RUNTIME__FLOW_RUN__NAME", "from-env")
    monkeypatch.setenv("DASKFLOW__RUNTIME__TASK_RUN__RUN_COUNT", "4")
    monkeypatch.setenv("DASKFLOW__RUNTIME__FLOW_RUN__PARAMETERS", '{"day": "2024-05-01"}')
    assert runtime.flow_run.name == "from-env"
    assert runtime.task_run.run_count == 4
    assert runtime.flow_run.parameters == {"day": "2024-05-01"}
    monkeypatch.setenv("DASKFLOW__RUNTIME__TASK_RUN__RUN_COUNT", "four")
    with pytest.raises(ValueError, match=r"DASKFLOW__RUNTIME__TASK_RUN__RUN_COUNT='four'.*whole number"):
        runtime.task_run.run_count  # noqa: B018


class _Clock:
    """Time that jumps to whatever is waited for."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def wait_until(self, moment: datetime, stop: threading.Event) -> bool:
        if not stop.is_set() and moment > self.current:
            self.current = moment
        return stop.is_set()


def test_a_served_run_knows_when_it_was_due_and_its_deployment(history: Any) -> None:
    @flow
    def hourly(region: str) -> dict[str, Any]:
        return {
            "scheduled": runtime.flow_run.scheduled_start_time,
            "deployment": deployment.name,
            "parameters": deployment.parameters,
            "flow_run_id": deployment.flow_run_id,
            "id": runtime.flow_run.id,
        }

    start = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
    states = hourly.serve(
        "hourly-eu",
        interval=3600,
        anchor_date=start,
        parameters={"region": "eu"},
        limit=2,
        clock=_Clock(start - timedelta(seconds=1)),
    )
    seen = [state.result() for state in states]
    assert [s["scheduled"] for s in seen] == [start, start + timedelta(hours=1)]
    assert all(s["deployment"] == "hourly-eu" and s["parameters"] == {"region": "eu"} for s in seen)
    assert all(s["flow_run_id"] == s["id"] for s in seen)
    detail = history().flow_run(seen[0]["id"])
    assert detail.scheduled_start_time == start and detail.deployment_name == "hourly-eu"
