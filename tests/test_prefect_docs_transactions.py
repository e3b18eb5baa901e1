"""Prefect 3's documented examples for transactions (``prefect.transactions``), as our own tests.

The docs' "write your first transaction" groups a task that writes a file with
a task that checks it; when the check fails, the writer's ``on_rollback`` hook
removes the file although the writer itself completed. Further examples share
values through ``txn.set``/``get_transaction().get``, commit hooks that run only
when the block succeeds, and a keyed transaction that a second run finds
committed. Same behaviours here, with daskflow imported instead of prefect, on
every runner where the runner could matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daskflow import flow, task
from daskflow.transactions import IsolationLevel, get_transaction, transaction


def _pipeline(task_runner: Any, side_effect: Path, calls: list[str]) -> Any:
    @task
    def write_file(contents: str) -> None:
        side_effect.write_text(contents)

    @write_file.on_rollback
    def delete_file(txn: Any) -> None:
        calls.append("rollback")
        side_effect.unlink()

    @write_file.on_commit
    def note_commit(txn: Any) -> None:
        calls.append("commit")

    @task
    def quality_test() -> None:
        if len(side_effect.read_text().splitlines()) < 2:
            raise ValueError("Not enough data!")

    @flow(task_runner=task_runner)
    def pipeline(contents: str) -> None:
        with transaction():
            write_file(contents)
            quality_test()

    return pipeline


def test_a_failed_check_rolls_back_the_completed_writer(task_runner: Any, tmp_path: Path) -> None:
    side_effect = tmp_path / "side-effect.txt"
    calls: list[str] = []
    pipeline = _pipeline(task_runner, side_effect, calls)

    state = pipeline("hello world", return_state=True)
    assert state.is_failed() and "Not enough data" in str(state.message), state
    assert not side_effect.exists(), "the writer's on_rollback hook removed its file"
    assert calls == ["rollback"], "on_rollback ran (not on_failure: the writer completed), no commit"
    writer = next(run for run in state.flow_run.task_runs if run.task_name == "write_file")
    assert writer.state.is_completed(), "rolling back does not change the writer's state"

    # Enough lines: the check passes, the block commits and the file stays.
    calls.clear()
    assert pipeline("first line\nsecond line", return_state=True).is_completed()
    assert side_effect.read_text() == "first line\nsecond line" and calls == ["commit"]


def test_values_set_on_the_transaction_reach_hooks_and_tasks(task_runner: Any, tmp_path: Path) -> None:
    removed: list[str] = []

    @task
    def write(path: str) -> str:
        Path(path).write_text("data")
        return path

    @write.on_rollback
    def undo(txn: Any) -> None:
        removed.append(txn.get("filename"))
        Path(txn.get("filename")).unlink()

    @task
    def check() -> None:
        raise ValueError("the data is bad")

    @flow(task_runner=task_runner)
    def guarded(path: str) -> None:
        with transaction() as txn:
            txn.set("filename", path)
            write(path)
            check()

    target = tmp_path / "out.txt"
    assert guarded(str(target), return_state=True).is_failed()
    assert removed == [str(target)] and not target.exists()


def test_a_task_reads_a_value_of_its_transaction(task_runner: Any) -> None:
    """``get_transaction()`` in a task of the block gives the block's transaction and its values
    (on Dask, a snapshot of the block sent with the call and entered on the worker)."""

    @task
    def read_shared() -> Any:
        txn = get_transaction()
        return None if txn is None else (txn.get("run_date"), txn.key, txn.is_active(), txn.isolation_level)

    @flow(task_runner=task_runner)
    def dated() -> Any:
        with transaction(isolation_level="SERIALIZABLE") as txn:
            txn.set("run_date", "2024-05-01")
            first = read_shared()
            txn.set("run_date", "2024-05-02")  # set between two submits: the second run sees it
            return first, read_shared.submit().result()

    first, second = dated()
    assert first == ("2024-05-01", None, True, IsolationLevel.SERIALIZABLE), first
    assert second[0] == "2024-05-02", second


def test_a_task_outside_a_block_has_no_transaction(task_runner: Any) -> None:
    @task
    def outside() -> Any:
        return get_transaction()

    @flow(task_runner=task_runner)
    def plain() -> Any:
        with transaction():
            pass
        return outside()

    assert plain() is None


def test_a_value_a_task_sets_reaches_the_hooks_in_its_process(task_runner: Any) -> None:
    """A value set in the task: in the flow's process (sequential, thread pool) the block's hooks see
    it; on a Dask worker it stays there, with a warning (README: Coming from Prefect)."""
    seen: list[Any] = []

    @task
    def produce() -> str:
        txn = get_transaction()
        assert txn is not None
        txn.set("made", "table-7")
        return str(txn.get("made"))

    @produce.on_commit
    def note(txn: Any) -> None:
        seen.append(txn.get("made"))

    @flow(task_runner=task_runner)
    def made() -> str:
        with transaction():
            return produce()

    assert made() == "table-7", "the task reads what it set"
    on_worker = task_runner.__class__.__name__ == "DaskTaskRunner"
    assert seen == [None if on_worker else "table-7"], seen


def test_a_keyed_transaction_that_committed_is_committed_the_next_time(tmp_path: Path) -> None:
    runs: list[str] = []

    @task
    def download() -> str:
        runs.append("download")
        return "rows"

    @flow
    def pipeline() -> str:
        with transaction(key="download-and-write-data") as txn:
            if txn.is_committed():
                return "already done"
            download()
        return "done"

    assert pipeline() == "done"
    assert pipeline() == "already done"
    assert runs == ["download"]


def test_serializable_keyed_transactions_write_once_across_threads(tmp_path: Path) -> None:
    import threading

    from daskflow.locking.memory import MemoryLockManager
    from daskflow.results import ResultStore
    from daskflow.transactions import IsolationLevel

    target = tmp_path / "race.txt"
    writes: list[str] = []
    store = ResultStore(lock_manager=MemoryLockManager())

    def write_once(contents: str) -> None:
        with transaction(key="race-condition", isolation_level=IsolationLevel.SERIALIZABLE, store=store) as txn:
            if txn.is_committed():
                return
            target.write_text(contents)
            writes.append(contents)
            txn.stage(contents)

    threads = [threading.Thread(target=write_once, args=(f"writer {i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(writes) == 1 and target.read_text() == writes[0], writes
