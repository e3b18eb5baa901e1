"""Direct task calls on the lean path (daskflow.engine.direct): the same runs, states and rows, fewer records.

A plain task called in a flow body takes the lean path on the sequential and
thread-pool runners. These tests check, by counts and by what the run store
holds, that such a call keeps everything a run had on the general path (its
states, its row and its one final state row, its logs and prints, its runtime
context and parameters, its failure and traceback, a returned state) while it
queues one history item per call instead of three; and that a task with
anything more (a hook, retries) or a call in a ``transaction()`` still takes the
general path. The writer's ``busy_hold`` is checked last: a flush is never held,
and a burst that stops growing is written without one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from daskflow import flow, get_run_logger, task
from daskflow.engine import history as history_module
from daskflow.runs import add_state_listener, remove_state_listener
from daskflow.runstore import FlowRunRecord, RunStoreWriter
from daskflow.runstore.store import RunStore
from daskflow.states import Completed, Failed, State
from daskflow.task_runners import SequentialTaskRunner, ThreadPoolTaskRunner
from daskflow.transactions import transaction

LOCAL_RUNNERS = {"sequential": SequentialTaskRunner, "thread_pool": ThreadPoolTaskRunner}


@task
def inc(x: int) -> int:
    return x + 1


def _received() -> int:
    recorder = history_module.recorder()
    assert recorder is not None, "history is on in these tests"
    return recorder.writer.received


@pytest.mark.parametrize("runner", sorted(LOCAL_RUNNERS))
def test_a_direct_call_queues_one_history_item_and_leaves_one_row_and_one_state_row(runner: str, history: Any) -> None:
    @flow(name=f"lean-{runner}", task_runner=LOCAL_RUNNERS[runner]())
    def calls(n: int) -> int:
        return sum(inc(i) for i in range(n))

    calls(0)  # the flow run's own items: the same for both sizes
    before = _received()
    assert calls(0) == 0
    empty = _received() - before
    before = _received()
    assert calls(40) == sum(range(1, 41))
    # Its final state alone while the recorder is the only state listener; Running too when another
    # listens (an in-process Dask worker, which an earlier test in this process may have started,
    # leaves its forwarder registered): never the submission record the general path adds.
    per_call = 1 if history_module.end_sink() is not None else 2
    assert _received() - before - empty == 40 * per_call, f"expected {per_call} queue item(s) per direct call"

    store = history()
    newest = store.list_flow_runs(flow_name=f"lean-{runner}")[0]
    runs = store.task_runs(newest.id)
    assert [run.name for run in runs] == [f"inc-{i}" for i in range(40)]
    for run in runs:
        assert (run.state_name, run.run_count, run.cache_hit) == ("Completed", 1, False), run
        assert run.start_time is not None and run.end_time is not None and run.start_time <= run.end_time, run
        assert [state.name for state in store.states(run.id)] == ["Completed"], run


def test_the_lean_and_the_general_path_leave_the_same_rows(history: Any) -> None:
    seen: list[str] = []

    @task(on_completion=[lambda task, run, state: seen.append(run.name)])  # a hook: the general path
    def hooked(x: int) -> int:
        return x + 1

    @flow(name="both-paths", task_runner=SequentialTaskRunner())
    def both() -> tuple[int, int]:
        return inc(1), hooked(1)

    assert both() == (2, 2) and seen == ["hooked-0"]
    store = history()
    (summary,) = store.list_flow_runs(flow_name="both-paths")
    rows = {run.task_name: run for run in store.task_runs(summary.id)}
    shape = {
        name: (run.state_name, run.run_count, [s.name for s in store.states(run.id)], run.start_time is not None)
        for name, run in rows.items()
    }
    assert shape["inc"] == shape["hooked"] == ("Completed", 1, ["Completed"], True), shape


def test_a_lean_run_keeps_its_logs_prints_parameters_and_runtime_context(history: Any) -> None:
    from daskflow import runtime

    facts: dict[str, Any] = {}

    @task(log_prints=True)
    def chatty(x: int, label: str = "item") -> str:
        get_run_logger().info("working on %s %d", label, x)
        print(f"printed {x}")
        facts.update(
            task_run_name=runtime.task_run.name,
            parameters=dict(runtime.task_run.parameters),
            flow_run_name=runtime.flow_run.name,
        )
        return f"{label}-{x}"

    @flow(name="chatty", task_runner=SequentialTaskRunner())
    def talk() -> str:
        return chatty(7)

    assert talk() == "item-7"
    assert facts["task_run_name"] == "chatty-0" and facts["parameters"] == {"x": 7, "label": "item"}, facts
    store = history()
    (summary,) = store.list_flow_runs(flow_name="chatty")
    assert facts["flow_run_name"] == summary.name
    (run,) = store.task_runs(summary.id)
    messages = [log.message for log in store.logs(summary.id) if log.task_run_id == run.id]
    assert "working on item 7" in messages and "printed 7" in messages, messages


def test_a_lean_run_that_raises_fails_with_its_traceback_and_a_returned_state_ends_it(history: Any) -> None:
    @task
    def broken(x: int) -> int:
        raise ValueError(f"bad input {x}")

    @task
    def says(kind: str) -> State:
        return Completed(data="said") if kind == "ok" else Failed(message="refused by the task")

    @flow(name="endings", task_runner=SequentialTaskRunner())
    def endings() -> list[str]:
        out = [says("ok")]
        assert says("no", return_state=True).is_failed()
        state = broken(3, return_state=True)
        assert state.is_failed() and isinstance(state.exception, ValueError)
        try:
            broken(4)
        except ValueError as exc:
            out.append(str(exc))
        return out

    assert endings() == ["said", "bad input 4"]
    store = history()
    (summary,) = store.list_flow_runs(flow_name="endings")
    rows = {run.name: run for run in store.task_runs(summary.id)}
    assert {name: run.state_name for name, run in rows.items()} == {
        "says-0": "Completed",
        "says-1": "Failed",
        "broken-0": "Failed",
        "broken-1": "Failed",
    }
    assert rows["says-1"].state_message == "refused by the task"
    traceback = rows["broken-1"].traceback or ""
    assert "ValueError: bad input 4" in traceback and "raise ValueError" in traceback, traceback
    assert [state.name for state in store.states(rows["broken-0"].id)] == ["Failed"]


def test_a_state_listener_sees_every_state_of_a_lean_run(daskflow_home: Path) -> None:
    seen: list[tuple[str, str]] = []

    def listener(run: Any, state: State) -> None:
        if getattr(run, "task_name", None) == "inc":
            seen.append((run.name, state.name))

    @flow(task_runner=SequentialTaskRunner())
    def one() -> int:
        return inc(1)

    add_state_listener(listener)
    try:
        assert one() == 2
    finally:
        remove_state_listener(listener)
    assert seen == [("inc-0", "Running"), ("inc-0", "Completed")], seen


def test_calls_that_need_more_take_the_general_path(history: Any) -> None:
    attempts: list[int] = []

    @task(retries=1)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return x

    @flow(name="general", task_runner=SequentialTaskRunner())
    def general() -> int:
        with transaction(key="block") as txn:
            value = inc(1)
            tracked = [run.name for _, run in txn.runs]
        assert tracked == ["inc-0"], tracked  # a block tracks the direct calls made inside it
        return value + flaky(5)

    assert general() == 7
    store = history()
    (summary,) = store.list_flow_runs(flow_name="general")
    rows = {run.name: run for run in store.task_runs(summary.id)}
    assert rows["flaky-0"].run_count == 2 and rows["flaky-0"].state_name == "Completed"
    names = [state.name for state in store.states(rows["flaky-0"].id)]
    assert "Failed" not in names and names[-1] == "Completed" and "AwaitingRetry" in names, names


# -- the writer's busy hold ----------------------------------------------------------------------


def _flow_record(run_id: str) -> FlowRunRecord:
    return FlowRunRecord(
        id=run_id, name=run_id, flow_name="burst", state_type="COMPLETED", state_name="Completed", updated=time.time()
    )


def test_a_held_writer_still_flushes_at_once(tmp_path: Path) -> None:
    with RunStore(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        writer = RunStoreWriter(store, interval=0.01, busy_hold=600)  # held for ten minutes at most
        for i in range(500):
            writer.put(_flow_record(f"r{i}"))
        assert writer.flush(timeout=30), "a flush waited for the busy hold"
        assert writer.written == 500 and len(store.list_flow_runs(limit=1000)) == 500
        assert writer.close(timeout=30)


def test_a_burst_that_stops_growing_is_written_without_a_flush(tmp_path: Path) -> None:
    with RunStore(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        writer = RunStoreWriter(store, interval=0.01, busy_hold=600)
        for i in range(500):
            writer.put(_flow_record(f"r{i}"))
        deadline = time.monotonic() + 30
        while writer.written < 500 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a count with a bound: the writer has no event for "written"
        assert writer.written == 500, f"{writer.written} of 500 written: a quiet queue was held"
        assert writer.close(timeout=30)
