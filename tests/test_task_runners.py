"""The runner contract: every task runner gives the same values, states, retries and failures.

Each test runs over every runner in ``conftest.RUNNER_FACTORIES`` (the
``task_runner`` fixture). Tasks are defined inside the tests on purpose: they
must travel by value to wherever a runner executes them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from daskflow import allow_failure, as_completed, flow, task, unmapped, wait
from daskflow.exceptions import UpstreamFailedError
from daskflow.futures import DaskflowFuture
from daskflow.states import State, StateType
from daskflow.task_runners import ConcurrentTaskRunner, SequentialTaskRunner, ThreadPoolTaskRunner

_flow_runs: list[Any] = []


def _last_task_runs(state: State) -> list[Any]:
    """The task runs of the flow run that ended in ``state``."""
    for run in reversed(_flow_runs):
        if run.state is state:
            return list(run.task_runs)
    raise AssertionError("no flow run ended in that state")


@pytest.fixture(autouse=True)
def _watch_flow_runs(flow_runs: list[Any]) -> None:
    global _flow_runs
    _flow_runs = flow_runs  # the conftest fixture's list of the flow runs this test ends


def test_submit_map_and_reduce_give_the_same_values(task_runner: Any) -> None:
    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(xs: list[int]) -> int:
        return sum(xs)

    @flow(task_runner=task_runner)
    def pipeline(n: int) -> tuple[int, int, int]:
        one = inc.submit(1)
        many = inc.map(range(n))
        return one.result(), total(many), total.submit(many).result()

    assert pipeline(50) == (2, sum(range(1, 51)), sum(range(1, 51)))


def test_map_with_unmapped_and_several_iterables(task_runner: Any) -> None:
    @task
    def combine(a: int, b: str, sep: str, extra: list[int]) -> str:
        return f"{a}{sep}{b}{sep}{len(extra)}"

    @flow(task_runner=task_runner)
    def pipeline() -> list[str]:
        return combine.map([1, 2, 3], ("x", "y", "z"), sep="-", extra=unmapped([7, 8])).result()

    assert pipeline() == ["1-x-2", "2-y-2", "3-z-2"]


def test_map_over_a_future_whose_value_is_a_list(task_runner: Any) -> None:
    @task
    def discover() -> list[str]:
        return ["a", "b", "c"]

    @task
    def upper(name: str) -> str:
        return name.upper()

    @flow(task_runner=task_runner)
    def pipeline() -> list[str]:
        names = discover.submit()
        return upper.map(names).result()

    assert pipeline() == ["A", "B", "C"]


def test_futures_nested_in_containers_are_resolved(task_runner: Any) -> None:
    @task
    def value(x: int) -> int:
        return x

    @task
    def describe(payload: dict[str, Any]) -> tuple[int, int, int]:
        return payload["a"], payload["nested"][0], payload["nested"][1]["b"]

    @flow(task_runner=task_runner)
    def pipeline() -> tuple[int, int, int]:
        a, b, c = value.submit(1), value.submit(2), value.submit(3)
        return describe({"a": a, "nested": [b, {"b": c}]})

    assert pipeline() == (1, 2, 3)


def test_states_of_completed_and_failed_runs(task_runner: Any) -> None:
    @task
    def ok() -> int:
        return 1

    @task
    def bad() -> int:
        raise ValueError("bad input in row 7")

    seen: dict[str, State] = {}

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        seen["ok"] = ok.submit(return_state=True)  # type: ignore[assignment]
        seen["bad"] = bad.submit(return_state=True)  # type: ignore[assignment]

    pipeline()
    ok_state, bad_state = seen["ok"], seen["bad"]
    assert ok_state.is_completed() and ok_state.result() == 1
    assert bad_state.is_failed() and bad_state.type is StateType.FAILED
    assert "bad input in row 7" in (bad_state.message or "")
    with pytest.raises(ValueError, match="row 7"):
        bad_state.result()
    assert isinstance(bad_state.result(raise_on_failure=False), ValueError)


def test_a_direct_call_raises_the_task_error_and_fails_the_flow(task_runner: Any) -> None:
    @task
    def bad() -> None:
        raise KeyError("missing column")

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        bad()

    with pytest.raises(KeyError, match="missing column"):
        pipeline()
    state = pipeline(return_state=True)
    assert state.is_failed(), state


def test_retries_run_the_task_again(task_runner: Any, executions: Any) -> None:
    @task(retries=2, retry_delay_seconds=0)
    def flaky(i: int) -> int:
        executions.record(f"flaky-{i}")
        if executions.count(f"flaky-{i}") < 3:
            raise ConnectionError("transient")
        return i

    @flow(task_runner=task_runner)
    def pipeline() -> list[int]:
        states = flaky.map(range(4), return_state=True)
        assert all(isinstance(s, State) and s.is_completed() for s in states), states
        return [s.result() for s in states]  # type: ignore[attr-defined]

    assert pipeline() == [0, 1, 2, 3]
    counts = {i: executions.count(f"flaky-{i}") for i in range(4)}
    assert counts == {0: 3, 1: 3, 2: 3, 3: 3}, f"executions per item: {counts}"


def test_retries_exhausted_end_failed_with_the_last_error(task_runner: Any, executions: Any) -> None:
    @task(retries=1)
    def always_bad() -> None:
        executions.record("bad")
        raise RuntimeError(f"attempt {executions.count('bad')}")

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        always_bad.submit()

    flow_state = pipeline(return_state=True)
    assert flow_state.is_completed(), "an unreturned failure does not fail the flow"
    [run] = [r for r in _last_task_runs(flow_state)]
    state = run.state
    assert state.is_failed()
    assert run.run_count == 2 and run.retries == 1
    assert "attempt 2" in (state.message or ""), state.message
    assert executions.count("bad") == 2, f"ran {executions.count('bad')} times, expected 2"


def test_downstream_of_a_failure_does_not_run_unless_allowed(task_runner: Any, executions: Any) -> None:
    @task
    def bad() -> int:
        raise ValueError("upstream broke")

    @task
    def downstream(x: Any) -> str:
        executions.record("downstream")
        return f"got {type(x).__name__}"

    seen: dict[str, State] = {}

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        failed = bad.submit()
        seen["blocked"] = downstream.submit(failed, return_state=True)  # type: ignore[assignment]
        seen["allowed"] = downstream.submit(allow_failure(failed), return_state=True)  # type: ignore[assignment]

    pipeline()
    blocked, allowed = seen["blocked"], seen["allowed"]
    assert blocked.is_pending() and blocked.name == "NotReady"  # as in Prefect (and final: see test_not_ready.py)
    assert isinstance(blocked.exception, UpstreamFailedError)
    assert "allow_failure" in (blocked.message or "")
    assert allowed.result() == "got ValueError"
    assert executions.count("downstream") == 1


def test_wait_for_orders_runs_without_passing_data(task_runner: Any, executions: Any) -> None:
    @task
    def first() -> None:
        time.sleep(0.05)
        executions.record("first")

    @task
    def second() -> None:
        executions.record("second")

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        f = first.submit()
        second.submit(wait_for=[f]).wait()

    pipeline()
    assert executions.keys() == ["first", "second"]


def test_flow_returning_failed_futures_fails_but_unreturned_failures_do_not(task_runner: Any) -> None:
    @task
    def bad() -> None:
        raise ValueError("x")

    @task
    def good() -> int:
        return 3

    @flow(task_runner=task_runner)
    def returns_failure() -> Any:
        return [good.submit(), bad.submit()]

    @flow(task_runner=task_runner)
    def ignores_failure() -> int:
        bad.submit()
        return good.submit().result()

    state = returns_failure(return_state=True)
    assert state.is_failed()
    assert state.message.startswith("1/2 states failed"), state.message
    assert ignores_failure() == 3


def test_every_task_run_is_final_when_the_flow_returns(task_runner: Any) -> None:
    @task
    def slow(i: int) -> int:
        time.sleep(0.01)
        return i

    captured = {}

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        slow.map(range(8))  # never waited for in the body
        from daskflow.context import get_flow_run_context

        ctx = get_flow_run_context()
        assert ctx is not None
        captured["run"] = ctx.flow_run

    pipeline()
    runs = captured["run"].task_runs
    assert len(runs) == 8
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]


def test_async_tasks_in_sync_and_async_flows(task_runner: Any) -> None:
    @task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @flow(task_runner=task_runner)
    def sync_flow() -> tuple[int, list[int]]:
        return double(2), double.map([1, 2]).result()

    @flow(task_runner=task_runner)
    async def async_flow() -> tuple[int, int]:
        direct = await double(3)
        return direct, double.submit(4).result()

    assert sync_flow() == (4, [2, 4])
    assert asyncio.run(async_flow()) == (6, 8)


def test_wait_and_as_completed(task_runner: Any) -> None:
    @task
    def pause(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @flow(task_runner=task_runner)
    def pipeline() -> tuple[int, int, list[float]]:
        futures = pause.map([0.03, 0.01, 0.02])
        done, not_done = wait(futures)
        ordered = [f.result() for f in as_completed(futures)]
        return len(done), len(not_done), ordered

    done, not_done, ordered = pipeline()
    assert (done, not_done) == (3, 0)
    assert sorted(ordered) == [0.01, 0.02, 0.03]


def test_timeouts_apply_where_the_task_runs(task_runner: Any) -> None:
    @task(timeout_seconds=0.3)
    def stuck() -> None:
        for _ in range(300):
            time.sleep(0.01)

    seen: dict[str, State] = {}

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        seen["state"] = stuck.submit(return_state=True)  # type: ignore[assignment]

    started = time.monotonic()
    pipeline()
    elapsed = time.monotonic() - started
    assert seen["state"].name == "TimedOut", seen["state"]
    assert elapsed < 2.5, f"timeout_seconds=0.3 but the flow took {elapsed:.2f} s"


def test_logs_and_prints_reach_the_client(task_runner: Any, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from daskflow import get_run_logger

    @task(log_prints=True)
    def chatty(i: int) -> int:
        get_run_logger().warning("item %d logged", i)
        print(f"item {i} printed")
        return i

    @flow(task_runner=task_runner)
    def pipeline() -> list[int]:
        return chatty.map(range(3)).result()

    with caplog.at_level(logging.INFO, logger="daskflow"):
        assert pipeline() == [0, 1, 2]
    messages = {r.getMessage() for r in caplog.records}
    for i in range(3):
        assert f"item {i} logged" in messages and f"item {i} printed" in messages, sorted(messages)
    record = next(r for r in caplog.records if r.getMessage() == "item 1 logged")
    assert record.task_name == "chatty" and record.levelname == "WARNING"  # type: ignore[attr-defined]


def test_task_run_names_follow_the_template(task_runner: Any) -> None:
    @task(task_run_name="load-{table}")
    def load(table: str) -> str:
        from daskflow.context import get_task_run_context

        ctx = get_task_run_context()
        assert ctx is not None
        return ctx.task_run.name

    @flow(task_runner=task_runner)
    def pipeline() -> list[str]:
        return load.map(["orders", "customers"]).result()

    assert pipeline() == ["load-orders", "load-customers"]


def test_futures_are_daskflow_futures_with_ids(task_runner: Any) -> None:
    @task
    def one() -> int:
        return 1

    @flow(task_runner=task_runner)
    def pipeline() -> DaskflowFuture[int]:
        future = one.submit()
        future.wait()
        return future

    # The flow resolves returned futures into their values.
    assert pipeline() == 1


def test_concurrent_runners_run_tasks_at_the_same_time() -> None:
    barrier = threading.Barrier(3, timeout=5)

    @task
    def meet(i: int) -> int:
        barrier.wait()  # only passes if three runs are in flight at once
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
    def pipeline() -> list[int]:
        return meet.map(range(3)).result()

    assert pipeline() == [0, 1, 2]
    assert ConcurrentTaskRunner is ThreadPoolTaskRunner


def test_sequential_runner_runs_in_submission_order(executions: Any) -> None:
    @task
    def step(i: int) -> None:
        executions.record(f"step-{i}")

    @flow(task_runner=SequentialTaskRunner())
    def pipeline() -> None:
        step.map(range(5))

    pipeline()
    assert executions.keys() == [f"step-{i}" for i in range(5)]


def test_waiting_for_upstreams_does_not_hold_threads() -> None:
    # One thread only: a downstream queued before its upstream finishes must not block it.
    @task
    def up(i: int) -> int:
        time.sleep(0.01)
        return i

    @task
    def down(x: int) -> int:
        return x * 10

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def pipeline() -> list[int]:
        ups = up.map(range(5))
        return down.map(ups).result()

    assert pipeline() == [0, 10, 20, 30, 40]
