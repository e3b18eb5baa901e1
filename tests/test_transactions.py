"""Transactions (Prefect's ``transaction()``): the task runs of a block commit together (on_commit
hooks at the block's end) or roll back together (cache entries removed, on_rollback hooks), on
every runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.transactions import IsolationLevel, Transaction, TransactionState, get_transaction, transaction


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
