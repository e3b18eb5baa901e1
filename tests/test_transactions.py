"""Transactions (Prefect's ``transaction()``): the task runs of a block commit together (on_commit
hooks at the block's end) or roll back together (cache entries removed, on_rollback hooks), on
every runner."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.exceptions import ResultWarning
from daskflow.results import ResultStore
from daskflow.transactions import (
    IsolationLevel,
    KeyedTransaction,
    Transaction,
    TransactionState,
    get_transaction,
    transaction,
)


def _tasks(executions: Any, storage: str) -> tuple[Any, Any]:
    @task(cache_policy=INPUTS, result_storage=storage)
    def extract(day: str) -> list[int]:
        executions.record(f"extract-{day}")
        return [1, 2, 3]

    @extract.on_commit
    def extract_committed(txn: Transaction) -> None:
        executions.record(f"commit-extract-{txn.state.value}-{txn.get('who')}")

    @extract.on_rollback
    def extract_rolled_back(txn: Transaction) -> None:
        executions.record(f"rollback-extract-{txn.state.value}")

    @task
    def write(rows: list[int], fail: bool) -> int:
        if fail:
            raise RuntimeError("the warehouse refused the rows")
        return len(rows)

    @write.on_commit
    def write_committed(txn: Transaction) -> None:
        executions.record("commit-write")

    return extract, write


def test_a_block_commits_its_runs_together_on_every_runner(task_runner: Any, executions: Any, tmp_path: Path) -> None:
    extract, write = _tasks(executions, str(tmp_path))

    @flow(task_runner=task_runner)
    def load(day: str) -> int:
        with transaction(key=f"load-{day}", isolation_level=IsolationLevel.READ_COMMITTED) as txn:
            txn.set("who", "nightly")
            assert get_transaction() is txn
            rows = extract.submit(day)
            written = write(rows, False)
            # Nothing has committed while the block runs.
            assert not [k for k in executions.keys() if k.startswith("commit")]
        assert txn.state is TransactionState.COMMITTED
        return written

    assert load("mon") == 3
    assert [k for k in executions.keys() if k.startswith("commit")] == [
        "commit-extract-COMMITTED-nightly",
        "commit-write",
    ]


def test_a_failing_block_rolls_back_entries_and_calls_rollback_hooks(
    task_runner: Any, executions: Any, tmp_path: Path
) -> None:
    extract, write = _tasks(executions, str(tmp_path))

    @flow(task_runner=task_runner)
    def load(day: str, fail: bool) -> int:
        with transaction():
            rows = extract(day)
            return write(rows, fail)

    with pytest.raises(RuntimeError, match="refused the rows"):
        load("tue", True)
    assert executions.count("rollback-extract-ROLLED_BACK") == 1
    assert not [k for k in executions.keys() if k.startswith("commit")]
    assert load("tue", False) == 3
    # The rolled-back entry was removed: the second load computed extract again.
    assert executions.count("extract-tue") == 2, executions.keys()


def test_an_unobserved_failure_rolls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture, executions: Any, tmp_path: Path
) -> None:
    extract, write = _tasks(executions, str(tmp_path))

    @flow
    def load() -> None:
        with transaction():
            extract("wed")
            write.submit([1], True)  # its failure is never looked at in the block

    with caplog.at_level(logging.WARNING, logger="daskflow.transactions"):
        load(return_state=True)
    assert executions.count("rollback-extract-ROLLED_BACK") == 1
    assert any("did not complete" in r.getMessage() and "rolling back" in r.getMessage() for r in caplog.records)


# -- keyed blocks: a record per key in a result store ---------------------------------------------


def test_a_keyed_block_writes_its_staged_value_and_the_next_block_starts_committed(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri())
    key = "report 2024/05"  # not a file name: the record is stored under its digest
    with transaction(key=key, store=store) as first:
        assert first.is_active() and not first.is_committed()
        first.stage({"rows": 3})
    assert first.is_committed()

    with transaction(key=key, store=store) as second:
        assert second.is_committed(), "a block whose key committed before starts committed"
        assert isinstance(second, KeyedTransaction) and second.read() == {"rows": 3}

    with transaction(key=key, store=store, overwrite=True) as third:
        assert third.is_active(), "overwrite=True ignores the record"
        third.stage("again")
    assert third.read() == "again"


def test_a_failed_keyed_block_writes_no_record(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri())
    with pytest.raises(ValueError, match="bad day"):
        with transaction(key="day-1", store=store) as txn:
            txn.stage("partial")
            raise ValueError("bad day")
    assert txn.is_rolled_back() and not store.exists("day-1")
    with transaction(key="day-1", store=store) as retry:
        assert not retry.is_committed()
    with transaction(key="day-2", store=store, write_on_commit=False):
        pass
    assert not store.exists("day-2"), "write_on_commit=False commits without a record"


def test_a_corrupt_record_is_not_committed_and_is_rewritten(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri())
    with transaction(key="nightly", store=store):
        pass
    record = Path(store.path("nightly").removeprefix("file://"))
    record.write_bytes(record.read_bytes()[:100])  # a writer cut short (or a disk that lost the tail)

    with pytest.warns(ResultWarning, match="nightly"):
        with transaction(key="nightly", store=store) as txn:
            assert not txn.is_committed(), "an unreadable record is not a commit, and no crash"
    assert txn.is_committed() and store.head("nightly") is not None, "the block's commit wrote a good record"


def test_serializable_keyed_blocks_without_a_lock_manager_run_once_per_process(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri())
    inside = threading.Barrier(2, timeout=30)
    ran: list[int] = []

    def block(number: int) -> None:
        inside.wait()  # both threads start their block together
        with transaction(key="once", store=store, isolation_level="SERIALIZABLE") as txn:
            if not txn.is_committed():
                ran.append(number)

    threads = [threading.Thread(target=block, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(ran) == 1, f"{len(ran)} blocks did the work; the second should have waited and found the record"


def test_bad_transaction_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="non-empty str"):
        with transaction(key=""):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="isolation_level='sometimes'"):
        with transaction(key="k", isolation_level="sometimes"):
            pass
    with pytest.raises(ValueError, match="not a lock manager"):
        ResultStore(tmp_path.as_uri(), lock_manager=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no lock manager"):
        ResultStore(tmp_path.as_uri()).acquire_lock("k")


def test_a_call_in_a_block_travels_with_a_snapshot_of_it() -> None:
    """A task call pickled to another process carries a copy of its block (key, state, isolation,
    values), never the live block (its lock and runs); a task run started from that copy is not
    the block's to commit."""
    import cloudpickle

    from daskflow.context import use_transaction
    from daskflow.engine.calls import TransactionSnapshot, make_calls

    @task
    def step(x: int) -> int:
        return x

    # The block's own object, entered without the block: its runs are made, not run.
    txn = Transaction(state=TransactionState.ACTIVE, isolation_level=IsolationLevel.SERIALIZABLE)
    txn.set("table", "orders")
    with use_transaction(txn):
        (call,) = make_calls(step, [{"x": 1}])
    assert call.transaction is txn and call.in_transaction and txn.runs == [(step, call.task_run)]
    txn.state = TransactionState.COMMITTED

    copy = cloudpickle.loads(cloudpickle.dumps(call))  # as Dask sends it
    travelled = copy.transaction
    assert isinstance(travelled, TransactionSnapshot), travelled
    assert travelled.get("table") == "orders" and travelled.isolation_level is IsolationLevel.SERIALIZABLE
    assert travelled.state is TransactionState.COMMITTED, "the block had committed when the call was pickled"
    assert travelled.mirrors(txn) and not travelled.mirrors(Transaction("other"))

    # A task started from a task in another process: it gets the copy, and commits on its own.
    with use_transaction(travelled):
        (nested,) = make_calls(step, [{"x": 2}])
    assert nested.transaction is travelled and not nested.in_transaction
    assert travelled.runs == []


def test_a_value_set_on_a_snapshot_is_said_to_stay_there(caplog: pytest.LogCaptureFixture) -> None:
    from daskflow.engine.calls import TransactionSnapshot

    copy = TransactionSnapshot.of(Transaction("load", state=TransactionState.ACTIVE))
    with caplog.at_level(logging.WARNING, logger="daskflow.transactions"):
        copy.set("a", 1)
        copy.set("b", 2)
    assert copy.get("a") == 1 and copy.get("b") == 2
    from daskflow.exceptions import MissingContextError

    with pytest.raises(MissingContextError, match="stage\\(\\) was called in a task running in another process"):
        copy.stage("rows")
    warnings = [r.getMessage() for r in caplog.records if "stays in that process" in r.getMessage()]
    assert len(warnings) == 1 and "'a'" in warnings[0], warnings


def test_a_serializable_block_makes_its_runs_on_dask_workers_serializable(tmp_path: Path, dask_client: Any) -> None:
    """The block's isolation level travels with its snapshot: a run on a worker takes the policy's lock."""
    from daskflow.cache_policies import INPUTS as inputs
    from daskflow.locking import FileSystemLockManager
    from daskflow.task_runners import DaskTaskRunner

    locks = tmp_path / "locks"

    # Its own storage: the session cluster's workers share one default home across tests.
    @task(cache_policy=inputs.configure(lock_manager=FileSystemLockManager(locks)), result_storage=str(tmp_path))
    def look(x: int) -> int:
        return len(list(locks.glob("*.lock")))  # lock files held while this runs, on the worker

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def run(level: str | None, x: int) -> int:
        with transaction(isolation_level=level):
            return look(x)

    held = [run(None, 1), run("READ_COMMITTED", 2), run("SERIALIZABLE", 3)]
    assert held == [0, 0, 1], f"lock files seen by each run on its worker: {held}"
    assert list(locks.glob("*.lock")) == [], "a lock was left behind"
