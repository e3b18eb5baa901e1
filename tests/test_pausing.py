"""Pausing a flow run for input (Prefect's ``pause_flow_run``/``resume_flow_run``) and
``daskflow runs resume``: the run waits in the Paused state, validates the input against its model,
refuses a bad one with the reason, and gives up after its timeout."""

from __future__ import annotations

import threading
from typing import Any

import pydantic
import pytest
from click.testing import CliRunner

from daskflow import flow, pause_flow_run, resume_flow_run, runtime, suspend_flow_run, task
from daskflow.cli import main
from daskflow.flow_runs import PausedRunTimeoutError, PauseError
from daskflow.runstore import RunStore
from daskflow.runstore import pausing as rows


class Approval(pydantic.BaseModel):
    approved: bool
    reviewer: str


def _start_paused(flow_fn: Any) -> tuple[threading.Thread, dict[str, Any], threading.Event]:
    """Run ``flow_fn`` in a thread; returns it, its outcome and an event set once its run is paused."""
    outcome: dict[str, Any] = {}
    paused = threading.Event()

    def run() -> None:
        outcome["state"] = flow_fn(return_state=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome, paused


def _wait_until_paused(ids: list[str], timeout: float = 30) -> str:
    """The paused run's id, once its pause is in the store (polled with a bound: another thread writes it)."""
    got = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if ids:
            with RunStore() as store:
                if rows.read_paused(store, ids[0]) is not None:
                    return ids[0]
        got.wait(0.05)
    raise AssertionError(f"the flow run did not pause within {timeout} s")


def test_a_paused_run_takes_a_valid_input_and_refuses_a_bad_one(history: Any) -> None:
    ids: list[str] = []

    @flow
    def publish() -> tuple[bool, str]:
        ids.append(runtime.flow_run.id)
        answer = pause_flow_run(wait_for_input=Approval, timeout=60)
        assert answer is not None
        return answer.approved, answer.reviewer

    thread, outcome, _ = _start_paused(publish)
    run_id = _wait_until_paused(ids)
    with pytest.raises(PauseError, match=r"(?s)refused the input .*approved.*Input should be a valid boolean"):
        resume_flow_run(run_id, {"approved": "maybe", "reviewer": "ana"})
    resume_flow_run(run_id, {"approved": True, "reviewer": "ana"})
    thread.join(30)
    state = outcome["state"]
    assert state.is_completed() and state.result() == (True, "ana")
    names = [s.name for s in state.flow_run.state_history]
    assert names[-3:] == ["Paused", "Running", "Completed"], names
    with pytest.raises(PauseError, match="is not paused"):
        resume_flow_run(run_id, {"approved": True, "reviewer": "ana"})


def test_the_resume_command_validates_through_the_run(history: Any) -> None:
    ids: list[str] = []

    @flow
    def gated() -> str:
        ids.append(runtime.flow_run.id)
        answer = suspend_flow_run(wait_for_input=Approval, timeout=60)
        assert answer is not None
        return answer.reviewer

    thread, outcome, _ = _start_paused(gated)
    run_id = _wait_until_paused(ids)
    cli = CliRunner()
    bad = cli.invoke(main, ["runs", "resume", run_id[:8], "--input", '{"approved": true}'])
    assert bad.exit_code == 2 and "reviewer" in bad.output and "Field required" in bad.output, bad.output
    not_json = cli.invoke(main, ["runs", "resume", run_id, "--input", "{approved"])
    assert not_json.exit_code == 2 and "--input is not JSON" in not_json.output
    good = cli.invoke(main, ["runs", "resume", run_id, "--input", '{"approved": false, "reviewer": "bo"}'])
    assert good.exit_code == 0, good.output
    thread.join(30)
    assert outcome["state"].result() == "bo"
    assert "Suspended" in [s.name for s in outcome["state"].flow_run.state_history]


def test_an_unresumed_pause_times_out_and_pausing_has_clear_limits(history: Any) -> None:
    @flow
    def waits() -> None:
        pause_flow_run(timeout=0.3)

    state = waits(return_state=True)
    assert state.is_failed() and isinstance(state.result(raise_on_failure=False), PausedRunTimeoutError)
    assert "nobody resumed it" in state.message

    @task
    def inside() -> None:
        pause_flow_run(timeout=1)

    @flow
    def from_task() -> None:
        inside()

    with pytest.raises(PauseError, match="inside a task"):
        from_task()
    with pytest.raises(PauseError, match="outside any flow run"):
        pause_flow_run(timeout=1)
