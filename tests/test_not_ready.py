"""Downstream of a failed run: Prefect's ``NotReady``, and daskflow's final state in the history.

Prefect leaves a run whose input's run failed ``Pending`` named ``NotReady``;
code written for it checks ``state.is_pending()``. daskflow ends that run in a
final state (type ``CANCELLED``, named ``NotReady``) so the history keeps its
promise that every run ends final, and it reads as Prefect's to such code.
"""

from __future__ import annotations

from typing import Any

import pytest

from daskflow import allow_failure, flow, task
from daskflow.exceptions import UpstreamFailedError
from daskflow.states import State, StateType


@task
def broken(x: int) -> int:
    raise ValueError(f"bad input {x}")


def test_a_run_downstream_of_a_failure_is_not_ready_on_every_runner(task_runner: Any, executions: Any) -> None:
    @task
    def downstream(value: Any) -> str:
        executions.record("downstream")
        return f"got {type(value).__name__}"

    seen: dict[str, State] = {}

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        failed = broken.submit(1)
        blocked = downstream.submit(failed)
        blocked.wait()
        seen["blocked"] = blocked.state
        seen["further"] = downstream.submit(blocked, return_state=True)  # type: ignore[assignment]
        seen["allowed"] = downstream.submit(allow_failure(failed), return_state=True)  # type: ignore[assignment]

    state = pipeline(return_state=True)
    assert state.is_completed(), "runs that are not returned do not decide the flow's state, as in Prefect"
    for key in ("blocked", "further"):
        not_ready = seen[key]
        assert not_ready.is_pending() and not_ready.name == "NotReady", (key, not_ready)
        assert not (not_ready.is_failed() or not_ready.is_cancelled() or not_ready.is_completed()), not_ready
        assert not_ready.is_final() and not_ready.type is StateType.CANCELLED, "ended, for the history"
        with pytest.raises(UpstreamFailedError, match="allow_failure"):
            not_ready.result()
    assert "argument 'value' comes from a run that ended Failed" in (seen["blocked"].message or ""), seen["blocked"]
    assert "ended NotReady" in (seen["further"].message or ""), seen["further"]
    assert seen["allowed"].result() == "got ValueError"
    assert executions.count("downstream") == 1, "only the allow_failure run may execute"


def test_the_history_records_a_not_ready_run_final_with_its_reason(task_runner: Any, history: Any) -> None:
    @task
    def store_it(value: int) -> int:
        return value

    @flow(name="not-ready-history", task_runner=task_runner)
    def pipeline() -> list[Any]:
        return [store_it.submit(broken.submit(i)) for i in range(2)]  # returned: they decide the flow's state

    state = pipeline(return_state=True)
    assert state.is_failed(), "a returned run that did not complete fails the flow"
    store = history()
    detail = store.flow_run(state.flow_run.id)
    assert len(detail.task_runs) == 4, detail.task_runs
    stored = [run for run in detail.task_runs if run.task_name == "store_it"]
    assert len(stored) == 2, detail.task_runs
    for row in stored:
        assert (row.state_type, row.state_name) == ("CANCELLED", "NotReady"), row
        assert "comes from a run that ended Failed" in (row.state_message or ""), row
    assert all(run.state_type in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for run in detail.task_runs)


def test_a_direct_call_downstream_of_a_failure_raises_and_fails_the_flow(task_runner: Any) -> None:
    @task
    def add_one(x: int) -> int:
        return x + 1

    @flow(task_runner=task_runner)
    def pipeline() -> int:
        return add_one(broken.submit(2))

    state = pipeline(return_state=True)
    assert state.is_failed() and isinstance(state.exception, UpstreamFailedError), state
    [not_ready] = [run for run in state.flow_run.task_runs if run.task_name == "add_one"]
    assert not_ready.state.is_pending() and not_ready.state.name == "NotReady", not_ready.state
