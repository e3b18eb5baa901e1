"""States and futures as Prefect 3 documents them (issue 16, item 10 and the silent differences of
item 14): a returned State is the run's final state, a run collection alone decides a flow's state,
Prefect's state constructors and helpers, and the future aliases. Contract tests on every runner."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pydantic
import pytest

from daskflow import flow, task
from daskflow.futures import (
    DaskflowFuture,
    DaskflowFutureList,
    PrefectFuture,
    PrefectFutureList,
    resolve_futures_to_results,
    resolve_futures_to_states,
)
from daskflow.states import (
    AwaitingConcurrencySlot,
    Cancelling,
    Completed,
    Failed,
    Late,
    Paused,
    Running,
    State,
    StateType,
    Suspended,
    get_state_exception,
    raise_state_exception,
)
from daskflow.task_runners import SequentialTaskRunner


@task
def _skips(x: int) -> Any:
    if x < 0:
        return Failed(message=f"negative input {x}")
    return Completed(data=x * 10, message="computed")


@task
def _ten() -> int:
    return 10


def test_a_task_returning_a_state_ends_in_it_on_every_runner(task_runner: Any) -> None:
    @flow(task_runner=task_runner)
    def pipeline() -> tuple[Any, Any]:
        good, bad = _skips.submit(2), _skips.submit(-1)
        good.wait()
        bad.wait()
        return (good.state.name, good.state.message, good.result()), (bad.state.is_failed(), bad.state.message)

    assert pipeline() == (("Completed", "computed", 20), (True, "negative input -1"))


def test_a_flow_returning_a_state_keeps_its_name_and_message(task_runner: Any) -> None:
    @flow(task_runner=task_runner)
    def maybe(skip: bool) -> Any:
        if skip:
            return Completed(name="Skipped", message="nothing new upstream")
        return _ten()

    state = maybe(True, return_state=True)
    assert (state.type, state.name, state.message, state.result()) == (
        StateType.COMPLETED,
        "Skipped",
        "nothing new upstream",
        None,
    )
    assert state.flow_run.state.name == "Skipped"
    assert maybe(False) == 10


def test_a_flow_returning_a_runs_future_or_state_ends_as_that_run(task_runner: Any) -> None:
    @flow(task_runner=task_runner)
    def returns_future(x: int) -> Any:
        return _skips.submit(x)

    @flow(task_runner=task_runner)
    def returns_state(x: int) -> Any:
        return _skips(x, return_state=True)

    for make in (returns_future, returns_state):
        good = make(3, return_state=True)
        assert (good.is_completed(), good.message, good.result()) == (True, "computed", 30)
        bad = make(-2, return_state=True)
        assert bad.is_failed() and bad.message == "negative input -2"
        with pytest.raises(Exception, match="negative input -2"):
            make(-2)


def test_a_failed_state_beside_other_values_is_part_of_a_completed_return(task_runner: Any) -> None:
    @flow(task_runner=task_runner)
    def mixed() -> Any:
        return "bar", _skips(-5, return_state=True)

    value = mixed()
    assert value[0] == "bar"
    assert isinstance(value[1], State) and value[1].is_failed() and value[1].message == "negative input -5"

    @flow(task_runner=task_runner)
    def only_runs() -> Any:
        return [_skips.submit(1), _skips.submit(-1)]

    state = only_runs(return_state=True)
    assert state.is_failed() and state.message.startswith("1/2 states failed")


def test_a_flow_returning_a_state_that_is_not_final_fails_clearly() -> None:
    @flow
    def odd() -> State:
        return Running()

    state = odd(return_state=True)
    assert state.is_failed() and "returned the state Running, which is not final" in state.message


def test_prints_in_a_completion_hook_are_logged_with_log_prints(caplog: pytest.LogCaptureFixture) -> None:
    def announce(flow_: Any, run: Any, state: Any) -> None:
        print(f"done: {run.name} {state.name}")

    @flow(log_prints=True, on_completion=[announce], task_runner=SequentialTaskRunner())
    def noisy() -> int:
        return 1

    with caplog.at_level(logging.INFO, logger="daskflow.flow_runs"):
        state = noisy(return_state=True)
    messages = [r.getMessage() for r in caplog.records if r.name == "daskflow.flow_runs"]
    assert f"done: {state.flow_run.name} Completed" in messages, messages


def test_prefects_state_constructors_and_helpers() -> None:
    assert (Paused().type, Paused().name, Paused().is_paused()) == (StateType.PAUSED, "Paused", True)
    assert (Suspended().type, Suspended().name) == (StateType.PAUSED, "Suspended")
    assert (Late().type, Late().name) == (StateType.SCHEDULED, "Late")
    assert AwaitingConcurrencySlot().name == "AwaitingConcurrencySlot" and AwaitingConcurrencySlot().is_scheduled()
    assert Cancelling().is_cancelling() and not Cancelling().is_final()
    failed = Failed(exception=ValueError("bad row"))
    assert isinstance(get_state_exception(failed), ValueError)
    with pytest.raises(ValueError, match="bad row"):
        raise_state_exception(failed)
    raise_state_exception(Completed(1))  # nothing to raise
    alias = State[int]
    assert alias.__origin__ is State and alias.__args__ == (int,)


def test_future_aliases_and_resolvers(task_runner: Any) -> None:
    assert PrefectFuture is DaskflowFuture and PrefectFutureList is DaskflowFutureList

    @flow(task_runner=task_runner)
    def pipeline() -> tuple[Any, Any]:
        futures = {"a": _skips.submit(1), "b": [_skips.submit(2)]}
        states = resolve_futures_to_states(futures)
        results = resolve_futures_to_results(futures)
        return (states["a"].message, states["b"][0].is_completed()), results

    assert pipeline() == (("computed", True), {"a": 10, "b": [20]})


@dataclasses.dataclass(frozen=True)
class _Batch:
    rows: Any
    label: str = "batch"


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    rows: Any
    label: str = "model"


@task
def _rows(n: int) -> list[int]:
    return list(range(n))


@task
def _count(batch: Any) -> tuple[str, int]:
    return batch.label, len(batch.rows)


def test_futures_inside_dataclasses_and_pydantic_models_are_resolved_on_every_runner(task_runner: Any) -> None:
    @flow(task_runner=task_runner)
    def pipeline() -> list[tuple[str, int]]:
        rows = _rows.submit(4)
        # Prefect walks dataclasses and pydantic models for futures: the task waits and gets the value.
        return [_count(_Batch(rows=rows)), _count(_Model(rows=rows)), _count(_Batch(rows=[rows, rows], label="two"))]

    assert pipeline() == [("batch", 4), ("model", 4), ("two", 2)]
