"""Prefect 3's documented examples for pausing a flow run for input, as our own tests (issue 16).

The docs pause an ``async`` flow with ``await pause_flow_run(wait_for_input=Model)``
where ``Model`` derives from ``prefect.input.RunInput``, pre-fill a model with
``with_initial_data``, validate the input with pydantic validators (a refused
input keeps the run waiting), wait for a plain type, and resume a run with
``resume_flow_run(id, run_input=...)``. Same behaviours here, with daskflow
imported instead of prefect; the run waits in its own thread and the test
resumes it as another process would, through the run store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from daskflow import flow, pause_flow_run, resume_flow_run, runtime
from daskflow.flow_runs import PauseError
from daskflow.input import RunInput
from daskflow.runstore import RunStore
from daskflow.runstore import pausing as rows


class UserName(RunInput):
    name: str


class Shirt(RunInput):
    size: str
    colour: str = "blue"

    @pydantic.field_validator("size")
    @classmethod
    def known_size(cls, value: str) -> str:
        if value not in ("S", "M", "L"):
            raise ValueError("size must be S, M or L")
        return value


def _start(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``call`` (a flow call giving its state) in a thread; returns it and where its state lands."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["state"] = call()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _paused_id(ids: list[str], timeout: float = 30) -> str:
    """The run's id once its pause is in the store (another thread writes it: polled, bounded)."""
    tick = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if ids:
            with RunStore() as store:
                if rows.read_paused(store, ids[0]) is not None:
                    return ids[0]
        tick.wait(0.05)
    raise AssertionError(f"the flow run did not pause within {timeout} s")


def _finish(thread: threading.Thread, outcome: dict[str, Any]) -> Any:
    thread.join(60)
    assert not thread.is_alive(), "the resumed flow run did not finish within 60 s"
    return outcome["state"]


def test_an_async_flow_awaits_its_pause_for_a_run_input(history: Any) -> None:
    ids: list[str] = []

    @flow(log_prints=True)
    async def greet_user() -> str:
        ids.append(runtime.flow_run.id)
        user = await pause_flow_run(wait_for_input=UserName, timeout=60)
        print(f"Hello, {user.name}!")
        return f"Hello, {user.name}!"

    thread, outcome = _start(lambda: asyncio.run(greet_user(return_state=True)))
    resume_flow_run(_paused_id(ids), run_input={"name": "ada"})
    state = _finish(thread, outcome)
    assert state.is_completed() and state.result() == "Hello, ada!", state


def test_initial_data_fills_what_the_resumer_leaves_out(history: Any) -> None:
    ids: list[str] = []
    Prefilled = UserName.with_initial_data(description="Who is there?", name="anonymous")
    assert Prefilled.description == "Who is there?" and Prefilled().name == "anonymous"

    @flow
    def greet() -> str:
        ids.append(runtime.flow_run.id)
        user = pause_flow_run(wait_for_input=Prefilled, timeout=60)
        return f"Hello, {user.name}!"

    thread, outcome = _start(lambda: greet(return_state=True))
    resume_flow_run(_paused_id(ids), run_input={})
    assert _finish(thread, outcome).result() == "Hello, anonymous!"
    with pytest.raises(ValueError, match="nickname is not a field"):
        UserName.with_initial_data(nickname="x")


def test_a_validator_refuses_an_input_and_the_run_keeps_waiting(history: Any) -> None:
    ids: list[str] = []

    @flow
    def order() -> tuple[str, str]:
        ids.append(runtime.flow_run.id)
        shirt = pause_flow_run(wait_for_input=Shirt, timeout=60)
        return shirt.size, shirt.colour

    thread, outcome = _start(lambda: order(return_state=True))
    run_id = _paused_id(ids)
    with pytest.raises(PauseError, match="size must be S, M or L"):
        resume_flow_run(run_id, run_input={"size": "XXL"})
    with pytest.raises(PauseError, match="Extra inputs are not permitted"):
        resume_flow_run(run_id, run_input={"size": "M", "sleeves": "long"})
    resume_flow_run(run_id, run_input=Shirt(size="M", colour="red"))
    assert _finish(thread, outcome).result() == ("M", "red")


def test_a_plain_type_is_waited_for_as_its_value(history: Any) -> None:
    ids: list[str] = []

    @flow
    def count() -> int:
        ids.append(runtime.flow_run.id)
        return int(pause_flow_run(wait_for_input=int, timeout=60)) * 2

    thread, outcome = _start(lambda: count(return_state=True))
    run_id = _paused_id(ids)
    with pytest.raises(PauseError, match="valid integer"):
        resume_flow_run(run_id, run_input={"value": "many"})
    resume_flow_run(run_id, run_input={"value": 21})
    assert _finish(thread, outcome).result() == 42


def test_a_pause_without_input_continues_when_resumed(history: Any) -> None:
    ids: list[str] = []

    @flow
    def approve() -> list[str]:
        ids.append(runtime.flow_run.id)
        got = pause_flow_run(timeout=60)
        return ["resumed", repr(got)]

    thread, outcome = _start(lambda: approve(return_state=True))
    resume_flow_run(_paused_id(ids))
    state = _finish(thread, outcome)
    assert state.result() == ["resumed", "None"]
    names = [s.name for s in state.flow_run.state_history]
    assert names[-3:] == ["Paused", "Running", "Completed"], names
