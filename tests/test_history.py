"""Run history from the engine: what a flow run leaves in the run store, on every runner.

The store is read back through its own API after :func:`daskflow.engine.history.flush`
(the ``history`` fixture), so each test checks what a later ``daskflow runs show``
would find: the runs, their states and timings, retries, cache hits, workers, the
failure's traceback and the logs, including those logged on Dask workers.
"""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path
from typing import Any

import dask.config
import pytest

from daskflow import flow, get_run_logger, task
from daskflow.cache_policies import INPUTS
from daskflow.runstore import RunStoreWarning
from daskflow.task_runners import DaskTaskRunner


def test_a_flow_run_and_its_task_runs_are_kept(task_runner: Any, history: Any, tmp_path: Path) -> None:
    attempts: dict[int, int] = {}
    fail_first = not isinstance(task_runner, DaskTaskRunner)  # on Dask the count would live on a worker

    @task(retries=1, cache_policy=INPUTS, result_storage=(tmp_path / "results").as_uri())
    def work(i: int) -> int:
        get_run_logger().info("working on %d", i)
        return i * 2

    @task(retries=2)
    def flaky() -> str:
        attempts[0] = attempts.get(0, 0) + 1
        if attempts[0] == 1 and fail_first:
            raise RuntimeError("first attempt fails")
        return "ok"

    @flow(name="kept", task_runner=task_runner, log_prints=True)
    def pipeline(n: int) -> int:
        print("starting")
        flaky()
        return sum(work.map(range(n)).result())

    assert pipeline(3) == 6
    assert pipeline(3) == 6  # the second run's work runs are cache hits
    store = history()
    newest, older = store.list_flow_runs(flow_name="kept")
    assert (newest.state_name, newest.task_runs, newest.cache_hits) == ("Completed", 4, 3), newest
    assert (older.task_runs, older.cache_hits) == (4, 0), older
    detail = store.flow_run(older.id)
    assert detail.parameters == {"n": 3} and detail.state_name == "Completed"
    runs = {run.name: run for run in store.task_runs(older.id)}
    assert set(runs) == {"flaky-0", "work-0", "work-1", "work-2"}, set(runs)
    assert all(run.end_time is not None and run.start_time is not None for run in runs.values())
    if fail_first:
        assert runs["flaky-0"].run_count == 2, runs["flaky-0"]
    messages = [log.message for log in store.logs(older.id)]
    assert "starting" in messages and "working on 1" in messages, messages
    states = [state.name for state in store.states(older.id)]
    assert states[0] == "Running" and states[-1] == "Completed", states


def test_a_failure_keeps_its_traceback_and_the_worker_is_known(dask_client: Any, history: Any) -> None:
    @task
    def broken() -> None:
        raise ValueError("the input was empty")

    @flow(name="failing", task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> None:
        broken()

    with pytest.raises(ValueError):
        pipeline()
    store = history()
    [summary] = store.list_flow_runs(flow_name="failing")
    assert summary.state_name == "Failed"
    [run] = store.task_runs(summary.id)
    assert run.state_name == "Failed" and run.worker and run.worker.startswith("tcp://127.0.0.1:"), run
    assert run.traceback and "ValueError: the input was empty" in run.traceback, run.traceback
    detail = store.flow_run(summary.id)
    assert detail.traceback and "the input was empty" in detail.traceback


def test_in_process_workers_are_not_recorded_twice(dask_inprocess_client: Any, history: Any) -> None:
    @task
    def one(i: int) -> int:
        get_run_logger().info("item %d", i)
        return i

    @flow(name="in-process", task_runner=DaskTaskRunner(client=dask_inprocess_client))
    def pipeline() -> int:
        return sum(one.map(range(4)).result())

    assert pipeline() == 6
    store = history()
    [summary] = store.list_flow_runs(flow_name="in-process")
    runs = store.task_runs(summary.id)
    assert len(runs) == 4
    for run in runs:
        names = [state.name for state in store.states(run.id)]
        assert names.count("Completed") == 1, names
    logs = [log.message for log in store.logs(summary.id) if log.message.startswith("item ")]
    assert sorted(logs) == ["item 0", "item 1", "item 2", "item 3"], logs


@pytest.mark.slow  # its time is the lock it waits out (the writer's busy timeout, then the spool)
def test_a_locked_database_never_fails_a_flow(history: Any, daskflow_home: Path) -> None:
    @task
    def one() -> int:
        return 1

    @flow(name="locked")
    def pipeline() -> int:
        return one()

    assert pipeline() == 1
    history()  # the database exists, the first run is in it
    blocker = sqlite3.connect(daskflow_home / "runs.db", timeout=1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with dask.config.set({"daskflow.runstore.enabled": True}), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert pipeline() == 1  # the run goes on
            from daskflow.engine.history import flush

            flush(60)
    finally:
        blocker.rollback()
        blocker.close()
    texts = [str(w.message) for w in caught if issubclass(w.category, RunStoreWarning)]
    assert not texts, f"nothing was to be lost (the history waits in the spool): {texts}"
    assert pipeline() == 1
    runs = history().list_flow_runs(flow_name="locked")  # the one during the lock was spooled, then replayed
    assert len(runs) == 3 and {run.state_name for run in runs} == {"Completed"}, runs
    assert all(run.task_runs == 1 for run in runs), runs
    assert not list((daskflow_home / "spool").rglob("*.spool")), "the spool is removed once replayed"


def test_task_runs_keep_the_runs_they_took_results_from(task_runner: Any, history: Any) -> None:
    @task
    def load() -> list[int]:
        return [1, 2, 3]

    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def total(values: list[int], rows: list[int]) -> int:
        return sum(values) + len(rows)

    @flow(name="graph", task_runner=task_runner)
    def pipeline() -> int:
        rows = load.submit()
        doubled = double.map(rows)
        return total.submit(doubled, rows).result()

    assert pipeline() == 15
    store = history()
    (summary,) = store.list_flow_runs(flow_name="graph")
    runs = store.task_runs(summary.id)
    names = {run.id: run.name for run in runs}
    edges = {run.name: sorted(names.get(u, u) for u in run.upstream_ids) for run in runs}
    assert edges["load-0"] == [], edges
    assert all(edges[f"double-{i}"] == ["load-0"] for i in range(3)), edges
    assert edges["total-0"] == ["double-0", "double-1", "double-2", "load-0"], edges


def test_values_returned_by_direct_calls_link_their_runs(task_runner: Any, history: Any) -> None:
    @task
    def extract() -> dict[str, list[int]]:
        return {"rows": [1, 2, 3]}

    @task
    def count(data: dict[str, list[int]]) -> int:
        return len(data["rows"])

    @task
    def label(n: int, tag: str) -> str:
        return f"{tag}:{n}"

    @flow(name="direct", task_runner=task_runner)
    def pipeline() -> str:
        data = extract()
        n = count(data)
        return label(n, "rows")  # an int: equal ints are shared objects, so it names no run

    assert pipeline() == "rows:3"
    (summary,) = history().list_flow_runs(flow_name="direct")
    runs = history().task_runs(summary.id)
    names = {run.id: run.name for run in runs}
    edges = {run.name: [names[u] for u in run.upstream_ids] for run in runs}
    assert edges == {"extract-0": [], "count-0": ["extract-0"], "label-0": []}, edges


# -- rows per map item (issue 14 goal 3: history free at scale) ----------------------------------


def test_a_map_item_that_ended_before_its_submission_was_drained_costs_one_task_run_row() -> None:
    from daskflow.engine.history import _Submitted, to_records
    from daskflow.runs import TaskRun
    from daskflow.runstore import StateRecord, TaskRunRecord
    from daskflow.states import Completed, Running

    ended = [TaskRun(id=f"ended-{i}", name=f"inc-{i}", task_name="inc", flow_run_id="f", map_index=i) for i in range(3)]
    waiting = TaskRun(id="waiting", name="inc-3", task_name="inc", flow_run_id="f", map_index=3)
    for run in ended:
        run.set_state(Running())
        run.set_state(Completed())
    # Drained alone (its runs' states come in a later batch): a row for the waiting run only.
    first = list(to_records([_Submitted((*ended, waiting))]))
    assert [(type(r).__name__, r.id) for r in first] == [("TaskRunRecord", "waiting")]
    # The batch of the final states: one state row each (as the Dask runner sends a run that
    # ended within one event batch: its final state only) and one snapshot each.
    later = list(to_records([(run, run.state) for run in ended]))
    assert sorted(r.run_id for r in later if isinstance(r, StateRecord)) == [r.id for r in ended]
    assert sorted(r.id for r in later if isinstance(r, TaskRunRecord)) == [r.id for r in ended]
    assert all(r.state_type == "COMPLETED" and r.start_time is not None for r in later if isinstance(r, TaskRunRecord))
    # Submission and end in one batch: the same two rows, still one snapshot.
    both = list(to_records([_Submitted((waiting,)), (waiting, Running())]))
    assert [type(r).__name__ for r in both] == ["StateRecord", "TaskRunRecord"]


def test_an_item_that_has_ended_when_its_running_state_is_drained_costs_its_final_rows_only() -> None:
    from daskflow.engine.history import to_records
    from daskflow.runs import TaskRun
    from daskflow.runstore import StateRecord, TaskRunRecord
    from daskflow.states import AwaitingRetry, Completed, Running

    def rows(batch: list[Any]) -> list[tuple[str, str, str]]:
        kinds = {StateRecord: "state", TaskRunRecord: "run"}
        return sorted(
            (
                kinds[type(r)],
                r.run_id if isinstance(r, StateRecord) else r.id,
                r.type if isinstance(r, StateRecord) else r.state_type,
            )
            for r in to_records(batch)
            if type(r) in kinds
        )

    def item(i: int) -> TaskRun:
        return TaskRun(id=f"run-{i}", name=f"inc-{i}", task_name="inc", flow_run_id="f", map_index=i)

    # Running reached the client in an event batch of its own, Completed in the next one: when the
    # writer drains the Running, the run has ended, so the Running batch writes nothing of it...
    ended, running = item(0), item(1)
    ended.set_state(Running())
    first_running = (ended, ended.state)
    ended.set_state(Completed())
    running.set_state(Running())
    assert rows([first_running, (running, running.state)]) == [
        ("run", "run-1", "RUNNING"),
        ("state", "run-1", "RUNNING"),
    ]
    # ...and the next batch writes its row and its final state.
    assert rows([(ended, ended.state)]) == [("run", "run-0", "COMPLETED"), ("state", "run-0", "COMPLETED")]
    # Running and Completed in one batch: the final state only, and the row keeps the start.
    both = item(2)
    both.set_state(Running())
    started = (both, both.state)
    both.set_state(Completed())
    assert rows([started, (both, both.state)]) == [("run", "run-2", "COMPLETED"), ("state", "run-2", "COMPLETED")]
    assert [r.start_time for r in to_records([started, (both, both.state)]) if isinstance(r, TaskRunRecord)] == [
        both.start_time
    ]
    # A retry is part of the run's story: every state of the batch is kept.
    retried = item(3)
    pairs = []
    for state in (Running(), AwaitingRetry(), Running(), Completed()):
        retried.set_state(state)
        pairs.append((retried, state))
    assert [t for kind, _, t in rows(pairs) if kind == "state"] == sorted(
        ["RUNNING", "SCHEDULED", "RUNNING", "COMPLETED"]
    )


def test_a_submitted_runs_row_waits_for_its_first_state_or_its_hold_or_a_flush() -> None:
    from daskflow.engine.history import _RELEASE, RowBuilder, _Submitted
    from daskflow.runs import TaskRun
    from daskflow.runstore import TaskRunRecord
    from daskflow.states import Completed, Running

    runs = [TaskRun(id=f"run-{i}", name=f"inc-{i}", task_name="inc", flow_run_id="f", map_index=i) for i in range(4)]
    rows = RowBuilder(hold=600.0)
    assert list(rows([_Submitted(tuple(runs))])) == [] and rows.holding
    runs[0].set_state(Running())
    runs[0].set_state(Completed())
    runs[1].set_state(Running())
    # The states' batch writes their runs; nothing held is due yet.
    written = list(rows([(runs[0], runs[0].state), (runs[1], runs[1].state)]))
    assert sorted(r.id for r in written if isinstance(r, TaskRunRecord)) == ["run-0", "run-1"]
    assert list(rows([])) == [] and rows.holding
    # A flush (or the end of recording) writes what is still Pending, once.
    released = list(rows([_RELEASE]))
    assert sorted(r.id for r in released if isinstance(r, TaskRunRecord)) == ["run-2", "run-3"]
    assert not rows.holding and list(rows([_RELEASE])) == []
    # With no hold, a pending run's row goes with its submission's batch.
    assert [r.id for r in RowBuilder(hold=0.0)([_Submitted((runs[2],))])] == ["run-2"]


def test_the_rows_a_map_leaves_per_item(dask_client: Any, history: Any, daskflow_home: Path) -> None:
    """M1's row count, at a size a test can afford: one task run row and one Completed row per item."""
    n = 200

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @flow(name="m1-rows", task_runner=DaskTaskRunner(client=dask_client))
    def fanout(n: int) -> int:
        return total(inc.map(range(n)))

    from daskflow.engine import history as engine_history

    with dask.config.set({"daskflow.runstore.pending_hold": "600s"}):  # no submission row is due before the end
        assert fanout(n) == n * (n + 1) // 2
    store = history()
    recorder = engine_history._recorder
    assert recorder is not None
    # Records written: per item one state and one task run row (it was three: a row at submission,
    # the state, the row again); the slack is the flow run's rows and a Running state that reached
    # the client in an event batch of its own.
    assert recorder.writer.written <= 2 * (n + 1) + 12, recorder.writer.written
    [summary] = store.list_flow_runs(flow_name="m1-rows")
    runs = store.task_runs(summary.id)
    assert len(runs) == n + 1 and {r.state_name for r in runs} == {"Completed"}
    db = sqlite3.connect(daskflow_home / "runs.db")
    try:
        per_item = db.execute(
            "SELECT s.run_id, COUNT(*) FROM states s JOIN task_runs t ON t.id = s.run_id "
            "WHERE t.flow_run_id = ? AND s.type = 'COMPLETED' GROUP BY s.run_id",
            (summary.id,),
        ).fetchall()
        duplicates = db.execute(
            "SELECT COUNT(*) - COUNT(DISTINCT uid) FROM states s JOIN task_runs t ON t.id = s.run_id "
            "WHERE t.flow_run_id = ?",
            (summary.id,),
        ).fetchone()[0]
    finally:
        db.close()
    assert len(per_item) == n + 1 and {count for _, count in per_item} == {1}, per_item[:5]
    assert duplicates == 0


def test_a_submission_whose_runs_keep_starting_is_held_on_and_one_that_waits_is_written() -> None:
    """A large map working through its items writes no Pending rows when its hold ends: its runs
    bring their own rows; a submission none of whose runs started during a hold is written then."""
    from daskflow.engine.history import RowBuilder, _Submitted
    from daskflow.runs import TaskRun
    from daskflow.runstore import TaskRunRecord
    from daskflow.states import Running

    now = [0.0]
    rows = RowBuilder(hold=30.0, clock=lambda: now[0])
    runs = [TaskRun(id=f"run-{i}", name=f"inc-{i}", task_name="inc", flow_run_id="f", map_index=i) for i in range(4)]
    assert list(rows([_Submitted(tuple(runs))])) == []
    runs[0].set_state(Running())
    now[0] = 31.0  # the hold ends: one run started meanwhile, so the submission is held on
    assert list(rows([])) == [] and rows.holding
    now[0] = 62.0  # a whole hold with no run starting: the three still Pending are written, once
    written = list(rows([]))
    assert sorted(r.id for r in written if isinstance(r, TaskRunRecord)) == ["run-1", "run-2", "run-3"]
    assert {r.state_type for r in written if isinstance(r, TaskRunRecord)} == {"PENDING"}
    assert not rows.holding and list(rows([])) == []
    # Every run started before the hold ended: nothing of the submission is written by the hold.
    others = [
        TaskRun(id=f"other-{i}", name=f"inc-{i}", task_name="inc", flow_run_id="f", map_index=i) for i in range(2)
    ]
    assert list(rows([_Submitted(tuple(others))])) == []
    for run in others:
        run.set_state(Running())
    now[0] = 100.0
    assert list(rows([])) == [] and not rows.holding


def test_a_large_release_is_written_max_batch_records_at_a_time(tmp_path: Path) -> None:
    """Held rows released at once (a flush) are built and written in transactions of max_batch
    records, never all in one list: the writer's memory does not grow with the map."""
    from daskflow.engine.history import _RELEASE, RowBuilder, _Submitted
    from daskflow.runs import TaskRun
    from daskflow.runstore import RunStoreWriter
    from daskflow.runstore.store import RunStore

    n, max_batch = 1_000, 100
    runs = tuple(
        TaskRun(id=f"big-{i}", name=f"inc-{i}", task_name="inc", flow_run_id="f", map_index=i) for i in range(n)
    )
    with RunStore(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        writer = RunStoreWriter(store, convert=RowBuilder(hold=600.0), interval=30, batch_size=10, max_batch=max_batch)
        writer.put(_Submitted(runs))
        assert writer.flush(timeout=30) and writer.written == 0  # held: nothing due yet
        writer.put(_RELEASE)
        assert writer.close(timeout=60)
        assert writer.written == n and writer.transactions == n // max_batch, (writer.written, writer.transactions)
        assert len(store.task_runs("f")) == n


def test_a_submission_whose_runs_have_all_ended_is_not_held() -> None:
    """A looked-up map's hits end Cached before their submission reaches the writer: nothing of it is
    held (its runs' rows come from their own states), so the runs are not kept alive for the hold."""
    from daskflow.engine.history import RowBuilder, _Submitted
    from daskflow.runs import TaskRun
    from daskflow.states import Cached

    runs = [TaskRun(id=f"hit-{i}", name=f"inc-{i}", task_name="inc", flow_run_id="f", map_index=i) for i in range(3)]
    waiting = TaskRun(id="waiting", name="inc-3", task_name="inc", flow_run_id="f", map_index=3)
    for run in runs:
        run.set_state(Cached(run.id))
    rows = RowBuilder(hold=600.0)
    assert list(rows([_Submitted(tuple(runs))])) == [] and not rows.holding, "ended runs held"
    # A submission with one run still waiting holds that run only.
    assert list(rows([_Submitted((waiting,))])) == [] and rows.holding
