"""Cancelling a running flow run: through the run store (``daskflow runs cancel``) and in process.

The flows under test run long tasks that wait for a file that never appears
(bounded by a timeout, so a broken cancel fails the test instead of hanging
it); the test cancels them with the real CLI command against the ``history``
fixture's store, as a user would from another terminal, and checks what the
run store and the run's own states say, and that the concurrency slot its
task held is free for the next flow.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import dask.config
import pytest
from click.testing import CliRunner

from daskflow import flow, task, unmapped
from daskflow.cli.runs import runs
from daskflow.context import get_run_context
from daskflow.engine import cancellation
from daskflow.engine.cancellation import cancel_flow_run, flow_runs_in_flight
from daskflow.engine.history import stop_recording
from daskflow.runs import FlowRun
from daskflow.runstore.cancellation import cancel_requested, pending_cancel_requests, request_cancel
from daskflow.task_runners import DaskTaskRunner, ThreadPoolTaskRunner

LIMIT = "cancel-test-db"
TASK_TIMEOUT = 60.0  # a task that was not cancelled ends by itself, failing the test, not hanging it


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    # Polls: what is waited for happens in another process (a Dask worker), which offers no event here.
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def _run_in_thread(fn: Any) -> Future[Any]:
    done: Future[Any] = Future()

    def target() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=target, daemon=True).start()
    return done


def _make_tasks() -> tuple[Any, Any]:
    """The test's tasks, made in a function: Dask ships them by value, as it does closures."""

    @task(tags={LIMIT})
    def wait_for_file(folder: str, i: int) -> int:
        """Tell the test which flow run this is, then wait for a file nobody writes."""
        ctx = get_run_context()
        marker = Path(folder) / f"started-{i}"
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(str(getattr(ctx, "flow_run_id", "")))
        tmp.replace(marker)
        deadline = time.monotonic() + TASK_TIMEOUT
        while not (Path(folder) / "never").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("not cancelled within the task's timeout")
            time.sleep(0.02)
        return i

    @task(tags={LIMIT})
    def quick(i: int) -> int:
        return i * 10

    return wait_for_file, quick


wait_for_file, quick = _make_tasks()


def _cli(*args: str) -> Any:
    return CliRunner().invoke(runs, list(args), catch_exceptions=False)


@pytest.mark.timeout(120)
def test_runs_cancel_stops_a_dask_flow_and_frees_its_slot(history: Any, dask_client: Any, tmp_path: Path) -> None:
    @flow(task_runner=DaskTaskRunner(client=dask_client), concurrency_limit={LIMIT: 1})
    def long_pipeline(folder: str) -> list[int]:
        # Three runs under a limit of 1: one holds the slot, two wait for it (seceded on their workers).
        return wait_for_file.map(unmapped(folder), [0, 1, 2]).result()

    @flow(task_runner=DaskTaskRunner(client=dask_client), concurrency_limit={LIMIT: 1})
    def next_pipeline() -> list[int]:
        return quick.map(range(3)).result()

    running = _run_in_thread(lambda: long_pipeline(str(tmp_path), return_state=True))
    markers = [tmp_path / f"started-{i}" for i in range(3)]
    _wait_for(lambda: any(m.exists() for m in markers) or running.done(), 60, "the first task to start")
    assert not running.done(), running.result()
    flow_run_id = next(m for m in markers if m.exists()).read_text()
    store = history()  # flushes: the run is in the store before the CLI looks for it
    result = _cli("cancel", flow_run_id[:8], "--reason", "testing", "--url", store.url)

    assert result.exit_code == 0, result.output
    assert "Asked flow run" in result.output and flow_run_id in result.output
    state = running.result(timeout=20)
    assert state.is_cancelled(), state
    # Interrupted, not run to its end: a task left running would end Failed (its TimeoutError).
    assert "testing" in (state.message or "")
    task_states = [t.state for t in state.flow_run.task_runs]
    assert task_states and all(s.is_cancelled() for s in task_states), task_states
    assert sum(m.exists() for m in markers) == 1, "only the slot's holder ever started its function"

    # The slot the cancelled task held is free, and the two that waited for it gave up: a flow
    # on the same limit of 1 runs at once.
    assert next_pipeline(return_state=True).result() == [0, 10, 20]
    assert sum(m.exists() for m in markers) == 1, "a waiting run of the cancelled flow took the slot and ran"

    detail = history().flow_run(flow_run_id)
    assert detail.state_type == "CANCELLED", detail
    assert detail.task_runs and all(t.state_type == "CANCELLED" for t in detail.task_runs), detail.task_runs
    assert flow_run_id not in flow_runs_in_flight()


def test_runs_cancel_wait_prints_the_final_state(history: Any, tmp_path: Path) -> None:
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline(folder: str) -> int:
        return wait_for_file.submit(folder, 0).result()

    running = _run_in_thread(lambda: pipeline(str(tmp_path), return_state=True))
    marker = tmp_path / "started-0"
    _wait_for(lambda: marker.exists() or running.done(), 30, "the task to start")
    store = history()

    result = _cli("cancel", marker.read_text(), "--wait", "--timeout", "20", "--url", store.url)

    assert result.exit_code == 0, result.output
    assert "ended Cancelled" in result.output, result.output
    assert running.result(timeout=10).is_cancelled()
    assert cancel_requested(store, marker.read_text())


def test_cancelling_a_finished_run_is_a_clear_error(history: Any) -> None:
    @flow
    def done_already() -> int:
        return 1

    state = done_already(return_state=True)
    store = history()

    result = CliRunner().invoke(runs, ["cancel", state.flow_run.id, "--url", store.url])

    assert result.exit_code == 2, result.output
    assert "already ended Completed" in result.output and "nothing to cancel" in result.output
    assert not cancel_requested(store, state.flow_run.id)
    unknown = CliRunner().invoke(runs, ["cancel", "no-such-run", "--url", store.url])
    assert unknown.exit_code == 2 and "no flow run with id 'no-such-run'" in unknown.output


def test_requests_are_idempotent_and_read_in_one_query(history: Any) -> None:
    @flow
    def anything() -> None:
        return None

    anything()
    store = history()
    first = request_cancel(store, "run-a", "first")
    again = request_cancel(store, "run-a", None)
    assert again.requested_at == first.requested_at and again.reason == "first"
    assert request_cancel(store, "run-a", "second").reason == "second"
    request_cancel(store, "run-b")
    found = pending_cancel_requests(store, ["run-a", "run-b", "run-c"])
    assert sorted(found) == ["run-a", "run-b"] and found["run-a"].reason == "second"
    assert pending_cancel_requests(store, []) == {}


def test_the_watcher_keeps_nothing_of_a_finished_flow_run_alive(history: Any) -> None:
    """The watcher polls the run store for the runs in flight, then waits for the next run. Nothing
    of the last run it polled for may stay bound while it waits: a run's entry holds its engine, and
    so the flow run and every task run it made (a notebook idle after a map of 100,000 items)."""
    seen: dict[str, Any] = {}

    @task
    def one(x: int) -> int:
        return x

    @flow(task_runner=ThreadPoolTaskRunner())
    def polled_for() -> None:
        run_id = seen["id"] = get_run_context().flow_run.id  # type: ignore[union-attr]
        url = cancellation._entries[run_id].url
        deadline = time.monotonic() + 30
        while url not in cancellation._watcher()._stores:  # the watcher has polled for this run
            assert time.monotonic() < deadline, "the watcher did not poll the run store within 30 s"
            time.sleep(0.01)
        one.map(range(10)).wait()

    polled_for()
    stop_recording()  # the history writer's thread, its queue and its last batch hold nothing of the run
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, FlowRun) and o.id == seen["id"]]
    holders = [type(r).__name__ for r in gc.get_referrers(*alive) if r is not alive] if alive else []
    assert not alive, f"the finished flow run is still referenced, by: {holders}"


def test_cancel_flow_run_in_process_cancels_the_subflow_too(tmp_path: Path) -> None:
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def child(folder: str) -> int:
        return wait_for_file.submit(folder, 0).result()

    @flow
    def parent(folder: str) -> int:
        return child(folder) + 1

    running = _run_in_thread(lambda: parent(str(tmp_path), return_state=True))
    marker = tmp_path / "started-0"
    _wait_for(lambda: marker.exists() or running.done(), 30, "the task to start")
    parent_ids = [i for i in flow_runs_in_flight() if i != marker.read_text()]
    assert len(parent_ids) == 1, flow_runs_in_flight()

    assert cancel_flow_run(parent_ids[0], "stop")
    state = running.result(timeout=20)
    assert state.is_cancelled(), state
    assert not cancel_flow_run(parent_ids[0])  # no longer in flight


class _Polled(logging.Handler):
    """Sets an event when the cancel watcher reports that it could not read the store."""

    def __init__(self, url_part: str) -> None:
        super().__init__(logging.WARNING)
        self.url_part = url_part
        self.failed = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "cannot read cancel requests" in message and self.url_part in message:
            self.messages.append(message)
            self.failed.set()


def test_an_unreachable_store_does_not_fail_a_running_flow(tmp_path: Path) -> None:
    # A path under a file: SQLite cannot create the database, so every poll fails.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    url = f"sqlite:///{blocker / 'runs.db'}"
    polled = _Polled(str(blocker))
    watcher_log = logging.getLogger("daskflow.cancellation")
    watcher_log.addHandler(polled)

    @task
    def add(x: int) -> int:
        return x + 1

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline() -> int:
        first = add.submit(1).result()
        # The flow goes on while the watcher's poll of the store fails: wait for that failure.
        assert polled.failed.wait(30), "the cancel watcher never reported its failed poll of the store"
        return add(first)

    try:
        with (
            dask.config.set({"daskflow.runstore.enabled": True, "daskflow.runstore.url": url}),
            warnings.catch_warnings(record=True),
        ):
            warnings.simplefilter("always")
            assert pipeline() == 3
            stop_recording()  # its writer's last try at the store warns here, not in a later test
    finally:
        watcher_log.removeHandler(polled)
    assert len(polled.messages) == 1, f"one warning per outage, got {len(polled.messages)}: {polled.messages}"
    assert "runs cancel" in polled.messages[0], polled.messages[0]


def _make_shielded_task() -> Any:
    @task
    def wait_in_a_shield(folder: str) -> str:
        """Inside context.shielded (as while taking a slot), wait until the flow run is cancelled."""
        from daskflow.context import run_cancelled, shielded

        ctx = get_run_context()
        with shielded():
            (Path(folder) / "in-shield").write_text(str(getattr(ctx, "flow_run_id", "")))
            deadline = time.monotonic() + TASK_TIMEOUT
            while not run_cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
            (Path(folder) / "left-shield").write_text("cancelled" if run_cancelled() else "timed out")
        return "done"

    return wait_in_a_shield


wait_in_a_shield = _make_shielded_task()


@pytest.mark.timeout(120)
def test_a_cancel_never_interrupts_a_thread_talking_to_the_scheduler_about_a_slot(
    dask_client: Any, tmp_path: Path
) -> None:
    # An exception raised into a thread between "the scheduler granted a lease" and "the lease is
    # recorded" leaks the slot for good (its worker refreshes it for ever); context.shielded marks
    # those moments, and the cancel leaves such a thread to see the run's cancel event instead.
    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline(folder: str) -> str:
        return wait_in_a_shield.submit(folder).result()

    running = _run_in_thread(lambda: pipeline(str(tmp_path), return_state=True))
    marker = tmp_path / "in-shield"
    _wait_for(lambda: marker.exists() or running.done(), 60, "the task to enter its shield")
    assert not running.done(), running.result()
    assert cancel_flow_run(marker.read_text(), "testing the shield")
    state = running.result(timeout=60)
    assert state.is_cancelled(), state
    left = tmp_path / "left-shield"
    _wait_for(left.exists, 30, "the task to leave its shield")
    assert left.read_text() == "cancelled", "the task's shielded wait was interrupted or never saw the cancel"
