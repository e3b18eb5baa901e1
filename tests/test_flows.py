"""Flows: parameters, final states, retries, timeouts, hooks, subflows, async, interrupts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from daskflow import Flow, flow, task
from daskflow.context import get_flow_run_context
from daskflow.exceptions import ConfigurationError, ParameterValidationError, RunTimeoutError
from daskflow.states import State
from daskflow.task_runners import SequentialTaskRunner


def test_flow_keeps_name_docstring_and_signature() -> None:
    @flow
    def daily_order_etl(execution_date: str = "2024-01-15") -> str:
        """Load one day of orders."""
        return execution_date

    assert isinstance(daily_order_etl, Flow)
    assert daily_order_etl.name == "daily-order-etl"
    assert daily_order_etl.__doc__ == "Load one day of orders."
    assert daily_order_etl.__name__ == "daily_order_etl"
    assert daily_order_etl() == "2024-01-15"
    assert daily_order_etl.with_options(name="renamed").name == "renamed"


def test_parameters_are_coerced_to_their_type_hints() -> None:
    @flow
    def typed(n: int, day: date, ratio: float = 0.5) -> tuple[int, date, float]:
        return n, day, ratio

    assert typed("3", "2024-01-15") == (3, date(2024, 1, 15), 0.5)


def test_a_bad_parameter_is_refused_before_any_task_runs(executions: Any) -> None:
    @task
    def side_effect() -> None:
        executions.record("ran")

    @flow(name="etl")
    def typed(n: int, day: date) -> None:
        side_effect()

    with pytest.raises(ParameterValidationError) as info:
        typed("three", "2024-01-15")
    message = str(info.value)
    assert "flow 'etl'" in message and "'n'" in message and "'three'" in message and "int" in message, message
    assert isinstance(info.value, ValueError)
    assert executions.count("ran") == 0
    state = typed("three", "2024-01-15", return_state=True)
    assert state.is_failed() and "'n'" in (state.message or "")


def test_a_default_is_not_validated_against_the_hint() -> None:
    # The seed's daily_order_etl(execution_date: str = None) must run with no argument.
    @flow
    def etl(execution_date: str = None) -> str:  # type: ignore[assignment]
        return execution_date or "today"

    assert etl() == "today"
    assert etl("2024-01-15") == "2024-01-15"
    with pytest.raises(ParameterValidationError, match="'execution_date'"):
        etl(["2024-01-15"])  # a value given is still checked


def test_validation_can_be_turned_off() -> None:
    @flow(validate_parameters=False)
    def untyped(n: int) -> Any:
        return n

    assert untyped("three") == "three"


def test_a_call_that_does_not_fit_the_signature_names_the_flow() -> None:
    @flow(name="etl")
    def one_arg(a: int) -> int:
        return a

    with pytest.raises(TypeError, match=r"flow 'etl': too many positional arguments; the signature is one_arg\(a"):
        one_arg(1, 2)  # type: ignore[call-arg]


def test_flow_retries_rerun_the_body(executions: Any) -> None:
    @flow(retries=2, retry_delay_seconds=0)
    def flaky() -> int:
        executions.record("body")
        if executions.count("body") < 3:
            raise ConnectionError("warehouse unavailable")
        return executions.count("body")

    state = flaky(return_state=True)
    assert state.result() == 3
    assert executions.count("body") == 3


def test_flow_timeout_marks_the_run_timed_out_on_time() -> None:
    @flow(timeout_seconds=0.2)
    def slow() -> None:
        for _ in range(100):
            time.sleep(0.05)

    started = time.monotonic()
    state = slow(return_state=True)
    elapsed = time.monotonic() - started
    assert state.is_failed() and state.name == "TimedOut", state
    assert isinstance(state.exception, RunTimeoutError)
    assert elapsed < 2.0, f"the flow ended {elapsed:.2f} s after start with timeout_seconds=0.2"


def test_async_flow_timeout() -> None:
    @flow(timeout_seconds=0.1)
    async def slow() -> None:
        await asyncio.sleep(5)

    state = asyncio.run(slow(return_state=True))
    assert state.name == "TimedOut", state


def test_hooks_are_called_with_flow_run_and_state() -> None:
    calls: list[tuple[str, str, str]] = []

    def record(kind: str) -> Any:
        return lambda flow_obj, run, state: calls.append((kind, flow_obj.name, state.name))

    @flow(name="ok", on_completion=[record("completion")], on_failure=[record("failure")])
    def ok() -> int:
        return 1

    @flow(name="bad", on_completion=record("completion"), on_failure=[record("failure")])
    def bad() -> None:
        raise ValueError("no")

    @bad.on_failure
    def second_hook(flow_obj: Any, run: Any, state: State) -> None:
        calls.append(("decorated", flow_obj.name, state.name))

    ok()
    bad(return_state=True)
    assert calls == [("completion", "ok", "Completed"), ("failure", "bad", "Failed"), ("decorated", "bad", "Failed")]


def test_a_raising_hook_does_not_change_the_state() -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("hook bug")

    @flow(on_completion=[broken])
    def ok() -> int:
        return 7

    assert ok() == 7


def test_subflows_are_child_runs() -> None:
    seen: dict[str, Any] = {}

    @flow
    def child(x: int) -> int:
        ctx = get_flow_run_context()
        assert ctx is not None
        seen["child"] = ctx.flow_run
        return x * 2

    @flow
    def parent() -> int:
        ctx = get_flow_run_context()
        assert ctx is not None
        seen["parent"] = ctx.flow_run
        return child(21)

    assert parent() == 42
    assert seen["child"].parent_flow_run_id == seen["parent"].id
    assert seen["child"].id != seen["parent"].id


def test_flow_run_name_template() -> None:
    seen: dict[str, str] = {}

    @flow(flow_run_name="etl-{day}")
    def etl(day: str) -> None:
        ctx = get_flow_run_context()
        assert ctx is not None
        seen["name"] = ctx.flow_run.name

    etl("2024-01-15")
    assert seen["name"] == "etl-2024-01-15"


def test_run_name_template_errors_are_reported_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match=r"flow 'etl': flow_run_name='etl-\{dya\}' refers to \{dya\}"):

        @flow(name="etl", flow_run_name="etl-{dya}")
        def etl(day: str) -> None: ...


def test_unknown_flow_option_suggests_the_right_one() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option 'retry'.*did you mean 'retries'"):

        @flow(retry=3)
        def etl() -> None: ...


def test_default_task_runner_comes_from_config() -> None:
    import dask.config

    @flow
    def which() -> str:
        ctx = get_flow_run_context()
        assert ctx is not None
        return type(ctx.task_runner).__name__

    assert which() == "ThreadPoolTaskRunner"
    with dask.config.set({"daskflow.task_runner": "sequential"}):
        assert which() == "SequentialTaskRunner"
    with dask.config.set({"daskflow.task_runner": "nonsense"}):
        with pytest.raises(ConfigurationError, match="daskflow.task_runner is 'nonsense'"):
            which()


def test_an_empty_flow_call_starts_no_thread_and_never_waits() -> None:
    # What makes a flow call cost a second elsewhere is a heartbeat thread and waits on it:
    # count them (the timing itself is W6's, in benchmarks/w6_sequential.py).
    @flow(task_runner=SequentialTaskRunner())
    def empty() -> None:
        return None

    empty()  # the first call sets up what is set up once per process
    seen: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and arg is time.sleep:
            seen.append("time.sleep")
        elif event == "call" and frame.f_code.co_filename == threading.__file__:
            if frame.f_code.co_name in ("start", "wait", "join"):
                seen.append(f"threading {frame.f_code.co_qualname}")

    threads_before = set(threading.enumerate())
    sys.setprofile(profile)
    try:
        states = [empty(return_state=True) for _ in range(20)]
    finally:
        sys.setprofile(None)
    assert all(state.is_completed() for state in states)
    assert not seen, f"an empty flow call started threads or waited: {seen}"
    assert set(threading.enumerate()) <= threads_before, "an empty flow call left threads running"


def test_async_flow_with_return_state() -> None:
    @flow
    async def hello(name: str) -> str:
        return f"hi {name}"

    state = asyncio.run(hello("ada", return_state=True))
    assert state.is_completed() and state.result() == "hi ada"


def test_keyboard_interrupt_in_the_flow_thread_cancels_the_run() -> None:
    @task
    def interrupt() -> None:
        raise KeyboardInterrupt

    states: list[State] = []

    @flow(task_runner=SequentialTaskRunner(), on_cancellation=[lambda f, r, s: states.append(s)])
    def pipeline() -> None:
        interrupt()

    with pytest.raises(KeyboardInterrupt):
        pipeline()
    assert len(states) == 1 and states[0].is_cancelled()


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from daskflow import flow, task
    from daskflow.runs import add_state_listener
    from daskflow.task_runners import ThreadPoolTaskRunner

    marker = Path(sys.argv[1])
    runs = {}
    add_state_listener(lambda run, state: runs.__setitem__(run.id, run))

    @task
    def busy(i: int) -> int:
        marker.touch()
        for _ in range(600):  # a Python-level loop: interruptible at every bytecode
            time.sleep(0.01)
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline() -> list[int]:
        return busy.map(range(6)).result()

    try:
        pipeline()
    except KeyboardInterrupt:
        print(json.dumps({r.name: r.state.name for r in runs.values()}))
    """
)


@pytest.mark.slow
def test_sigint_cancels_the_flow_and_leaves_nothing_running(tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(_SIGINT_SCRIPT)
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DASK_DASKFLOW__LOGGING__CONSOLE": "false"},
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the flow never started its tasks"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # a failed assertion must not leave the flow running
            proc.kill()
            proc.communicate()
    states = json.loads(out.strip().splitlines()[-1])
    flow_states = [s for name, s in states.items() if not name.startswith("busy-")]
    task_states = {name: s for name, s in states.items() if name.startswith("busy-")}
    assert flow_states == ["Cancelled"], states
    assert len(task_states) == 6, states
    assert set(task_states.values()) <= {"Cancelled"}, f"runs left in non-final or other states: {task_states}"
