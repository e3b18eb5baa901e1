"""Retries: one judgement for task runs and flow runs, whatever ended the attempt."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from daskflow import flow, task
from daskflow.engine.cancellation import cancel_flow_run
from daskflow.runs import add_state_listener, remove_state_listener


def _names(history: list[Any]) -> list[str]:
    return [state.name for state in history]


def test_a_flows_crash_like_failure_is_retried_under_its_policy(executions: Any) -> None:
    @flow(retries=2, retry_delay_seconds=[0, 0.01])
    def exits_twice() -> int:
        executions.record("body")
        if executions.count("body") < 3:
            raise SystemExit(3)  # not an Exception: a crash of the run, judged like a task's
        return executions.count("body")

    state = exits_twice(return_state=True)
    assert state.result() == 3, state
    names = _names(state.flow_run.state_history)
    assert names == [
        "Pending",
        "Running",
        "Crashed",
        "AwaitingRetry",
        "Retrying",
        "Crashed",
        "AwaitingRetry",
        "Retrying",
        "Completed",
    ], names
    waits = [s.message for s in state.flow_run.state_history if s.name == "AwaitingRetry"]
    # The second retry waits the list's second delay: the same delay rule as tasks.
    assert waits[0].startswith("retry 1 of 2 in 0 s after a crash: SystemExit raised inside the flow"), waits
    assert waits[1].startswith("retry 2 of 2 in 0.01 s"), waits


def test_a_flows_crash_without_retries_left_ends_crashed_and_calls_on_crashed(executions: Any) -> None:
    seen: list[str] = []

    @flow(retries=1, on_crashed=[lambda flow_, run, state: seen.append(state.name)])
    def always_exits() -> None:
        executions.record("body")
        raise SystemExit(1)

    state = always_exits(return_state=True)
    assert state.is_crashed() and "SystemExit" in (state.message or ""), state
    assert executions.count("body") == 2, "retries=1 must give exactly 2 attempts"
    assert seen == ["Crashed"], seen


def test_a_task_and_a_flow_log_their_retries_in_the_same_words(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"task": 0, "flow": 0}

    @task(retries=1)
    def flaky_task() -> None:
        calls["task"] += 1
        if calls["task"] == 1:
            raise ValueError("task boom")

    @flow(retries=1)
    def flaky_flow() -> None:
        calls["flow"] += 1
        flaky_task()
        if calls["flow"] == 1:
            raise ValueError("flow boom")

    with caplog.at_level("WARNING"):
        assert flaky_flow(return_state=True).is_completed()
    retries = [r.getMessage() for r in caplog.records if "retry 1 of 1" in r.getMessage()]
    assert any(m.startswith("Attempt 1 failed with ValueError: task boom; retry 1 of 1 in 0 s") for m in retries), (
        retries
    )
    assert any(m.startswith("Attempt 1 failed with ValueError: flow boom; retry 1 of 1 in 0 s") for m in retries), (
        retries
    )


def test_a_cancel_while_a_flow_waits_to_retry_ends_it_cancelled(executions: Any) -> None:
    waiting = threading.Event()
    run_ids: list[str] = []

    def on_state(run: Any, state: Any) -> None:
        if state.name == "AwaitingRetry" and hasattr(run, "flow_name"):
            run_ids.append(run.id)
            waiting.set()

    @flow(retries=1, retry_delay_seconds=3600)
    def fails_once() -> None:
        executions.record("body")
        raise RuntimeError("first attempt fails")

    outcome: dict[str, Any] = {}
    # A daemon: were the cancel lost (the bug this test catches), the hour-long wait must not hold pytest.
    thread = threading.Thread(target=lambda: outcome.setdefault("state", fails_once(return_state=True)), daemon=True)
    add_state_listener(on_state)
    try:
        thread.start()
        assert waiting.wait(30), "the flow never started waiting to retry"
        assert cancel_flow_run(run_ids[0], "stop it"), "the run waiting to retry was not cancellable"
        thread.join(30)
    finally:
        remove_state_listener(on_state)
    assert not thread.is_alive(), "the flow went on waiting out its hour-long retry delay after a cancel"
    state = outcome["state"]
    assert state.is_cancelled() and state.message == "stop it", state
    assert executions.count("body") == 1, "a cancelled retry must not run the body again"


def test_async_flow_retries_go_through_the_same_judgement(executions: Any) -> None:
    import asyncio

    @flow(retries=1)
    async def exits_once() -> str:
        executions.record("body")
        if executions.count("body") == 1:
            raise SystemExit(2)
        return "done"

    state = asyncio.run(exits_once(return_state=True))
    assert state.result() == "done"
    assert "Crashed" in _names(state.flow_run.state_history)
