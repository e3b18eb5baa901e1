"""Transactions (Prefect's ``prefect.transactions``): task runs whose results commit together.

::

    from daskflow.transactions import transaction

    @flow
    def load_day(day: str):
        with transaction():
            rows = extract(day)        # results cached as usual...
            write_table(rows)          # ...but if this fails, extract's entry is removed again
            validate(day)              # and the on_rollback hooks of extract and write_table run

Every task run started inside the block (called, submitted or mapped, on any
runner) belongs to it. When the block ends, it waits for those runs to
finish, then:

* **commits** if the block raised nothing and every run completed: each
  completed run's ``on_commit`` hooks are called with the transaction, in the
  order the runs started (outside a block they are called as each run
  completes: a lone run commits at once);
* **rolls back** otherwise: in reverse order, each run that completed (and was
  not a cache hit, whose entry an earlier commit made) has its cache entry
  removed and its ``on_rollback`` hooks called with the transaction. The
  block's exception, if any, propagates; runs that failed without raising in
  the block (an unobserved future) roll it back with a warning.

A difference from Prefect, where a run's result is *staged* and written only
at commit: daskflow writes a cache entry when its run completes (on a Dask
worker, where the value is) and removes it on rollback. So until the block
ends, another flow may read an entry that is then rolled back; give the tasks
``cache_isolation="serializable"`` if identical runs elsewhere must wait for
each other (README: Coming from Prefect). ``isolation_level`` and
``commit_mode`` are accepted and kept on the transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from daskflow.context import (
    CommitMode,
    IsolationLevel,
    Transaction,
    TransactionState,
    get_transaction,
    use_transaction,
)
from daskflow.engine.caching import result_store
from daskflow.engine.hooks import call_hooks
from daskflow.runs import StateListener, TaskRun, add_state_listener, remove_state_listener

__all__ = ["CommitMode", "IsolationLevel", "Transaction", "TransactionState", "get_transaction", "transaction"]

_log = logging.getLogger("daskflow.transactions")


@contextmanager
def transaction(
    key: str | None = None,
    *,
    isolation_level: IsolationLevel | None = None,
    commit_mode: CommitMode | None = None,
    **prefect_options: Any,
) -> Iterator[Transaction]:
    """A block whose task runs commit together, or roll back together when it fails (see the module docstring)."""
    txn = Transaction(key, state=TransactionState.ACTIVE, isolation_level=isolation_level, commit_mode=commit_mode)
    with use_transaction(txn):
        try:
            yield txn
        except BaseException:
            _settle(txn)
            _rollback(txn)
            raise
    _settle(txn)
    failed = [run for _, run in txn.runs if not run.state.is_completed()]
    if failed:
        _log.warning(
            "transaction %s: %d of its task runs did not complete (%s); rolling back",
            key or "",
            len(failed),
            ", ".join(f"{run.name}: {run.state.name}" for run in failed[:5]),
        )
        _rollback(txn)
        return
    txn.state = TransactionState.COMMITTED
    for task, run in txn.runs:
        if not run.state.is_cached() and task.options.on_commit:
            call_hooks(task.options.on_commit, (txn,), _log)


def _settle(txn: Transaction) -> None:
    """Wait until every run of the block is final (a submitted run may still be going)."""
    pending = {run.id for _, run in txn.runs if not run.state.is_final()}
    if not pending:
        return
    done = threading.Condition()

    def on_state(run: Any, state: Any) -> None:
        if run.id in pending and state.is_final():
            with done:
                pending.discard(run.id)
                done.notify_all()

    listener: StateListener = on_state
    add_state_listener(listener)
    try:
        with done:
            # Looked at again under the lock: a run may have ended before the listener was added.
            pending.intersection_update(run.id for _, run in txn.runs if not run.state.is_final())
            while pending:
                done.wait()
    finally:
        remove_state_listener(listener)


def _rollback(txn: Transaction) -> None:
    txn.state = TransactionState.ROLLED_BACK
    for task, run in reversed(txn.runs):
        if not run.state.is_completed() or run.state.is_cached():
            continue
        _remove_entry(task, run)
        if task.options.on_rollback:
            call_hooks(task.options.on_rollback, (txn,), _log)


def _remove_entry(task: Any, run: TaskRun) -> None:
    if run.cache_key is None:
        return
    try:
        result_store(task.options.result_storage).delete(run.cache_key)
    except Exception:  # a rollback goes on: the other runs' hooks must still run
        _log.exception("transaction rollback: the cache entry %s of %s could not be removed", run.cache_key, run.name)
