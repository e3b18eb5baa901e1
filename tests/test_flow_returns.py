"""What a flow's return value becomes: a returned generator is consumed inside the run, as Prefect documents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from daskflow import flow, task


def test_a_returned_generator_is_consumed_into_a_list_inside_the_run(task_runner: Any, executions: Any) -> None:
    @task
    def double(x: int) -> int:
        executions.record(f"double-{x}")
        return 2 * x

    def doubles(n: int) -> Iterator[int]:
        for i in range(n):
            yield double(i)  # tasks called while the generator is consumed belong to the run
        executions.record("generator consumed")

    @flow(task_runner=task_runner)
    def returns_generator(n: int) -> Iterator[int]:
        return doubles(n)

    state = returns_generator(3, return_state=True)
    assert state.is_completed(), state
    assert state.result() == [0, 2, 4]
    assert executions.keys()[-1] == "generator consumed"
    run = state.flow_run
    assert sorted(r.state.name for r in run.task_runs) == ["Completed"] * 3, run.task_runs
    assert returns_generator(2) == [0, 2]


def test_a_generator_that_raises_while_consumed_fails_the_flow_and_is_retried(executions: Any) -> None:
    def numbers() -> Iterator[int]:
        executions.record("consumed")
        yield 1
        if executions.count("consumed") == 1:
            raise ValueError("the source broke mid-stream")
        yield 2

    @flow(retries=1)
    def streams() -> Iterator[int]:
        return numbers()

    state = streams(return_state=True)
    assert state.result() == [1, 2]
    assert [s.name for s in state.flow_run.state_history].count("AwaitingRetry") == 1


def test_a_returned_generator_is_consumed_within_the_flows_timeout() -> None:
    import threading

    stop = threading.Event()

    def endless() -> Iterator[int]:
        while not stop.is_set():
            stop.wait(0.01)
            yield 1

    @flow(timeout_seconds=0.5)
    def never_ends() -> Iterator[int]:
        return endless()

    try:
        state = never_ends(return_state=True)
    finally:
        stop.set()
    assert state.is_failed() and state.name == "TimedOut", state


def test_an_async_flow_returning_an_async_generator_gives_the_list() -> None:
    async def letters() -> AsyncIterator[str]:
        for letter in "abc":
            await asyncio.sleep(0)
            yield letter

    @flow
    async def returns_async_generator() -> AsyncIterator[str]:
        return letters()

    assert asyncio.run(returns_async_generator()) == ["a", "b", "c"]
