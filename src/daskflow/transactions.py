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
each other (README: Coming from Prefect). ``commit_mode`` is accepted and
kept on the transaction.

**A keyed block** (``transaction(key="daily-load")``) is idempotent across
runs and processes, as in Prefect: its key names a *record* in a result store
(``store=``, else the default result storage). If the record exists when the
block starts, the block starts COMMITTED (``txn.is_committed()``), so the code
can skip work done before; a block that commits writes the record (the value
given to ``txn.stage(value)``, else None) atomically through the store, unless
``write_on_commit=False``. ``overwrite=True`` ignores an existing record. A
record that cannot be read (truncated, foreign) is a warning and "not
committed", never an error. With ``isolation_level=SERIALIZABLE`` the block
holds the key's lock from its start to its end, taken through the store's
``lock_manager`` (``ResultStore(lock_manager=MemoryLockManager())``), or, when
the store has none, a lock of this process: of two blocks with one key, the
second waits and then finds the first one's record.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from daskflow.concurrency import LOCAL
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
from daskflow.exceptions import ResultError
from daskflow.locking import isolation_of
from daskflow.results import ResultStore, validate_key
from daskflow.results.storage import default_storage_url
from daskflow.runs import StateListener, TaskRun, add_state_listener, remove_state_listener

__all__ = [
    "CommitMode",
    "IsolationLevel",
    "KeyedTransaction",
    "Transaction",
    "TransactionState",
    "get_transaction",
    "transaction",
]

_log = logging.getLogger("daskflow.transactions")
_RECORD_TASK_NAME = "transaction"  # the writer named in a record's footer


class KeyedTransaction(Transaction):
    """The transaction of a ``transaction()`` block: a :class:`Transaction` with a record store.

    ``store`` keeps the block's record (under :attr:`record_key`) when it has a
    key; :meth:`stage` sets the value the commit writes, :meth:`read` gives a
    committed record's value.
    """

    def __init__(self, key: str | None, *, store: ResultStore | None, **options: Any) -> None:
        super().__init__(key, **options)
        self.store = store
        self._staged: Any = None

    @property
    def record_key(self) -> str | None:
        """The key's name in the store: the key itself when it can name a file, else its digest."""
        if self.key is None:
            return None
        try:
            return validate_key(self.key)
        except ResultError:
            return "txn-" + hashlib.sha256(self.key.encode()).hexdigest()

    def stage(self, value: Any) -> None:
        """The value the block's record holds once it commits (Prefect's ``txn.stage``)."""
        self._staged = value

    def read(self) -> Any:
        """The committed record's value; None when there is none (or it cannot be read)."""
        if self.store is None or self.record_key is None:
            return None
        found = self.store.read(self.record_key)
        return None if found is None else found.value


def _check_key(key: Any) -> str | None:
    if key is not None and (not isinstance(key, str) or not key):
        raise TypeError(
            f"transaction(key={key!r}): a key names the block's record, so it must be a non-empty str "
            "(or None for a block without a record). Fix: pass a string such as 'load-2024-05-01'."
        )
    return key


@contextmanager
def transaction(
    key: str | None = None,
    *,
    store: ResultStore | str | None = None,
    isolation_level: IsolationLevel | str | None = None,
    commit_mode: CommitMode | None = None,
    overwrite: bool = False,
    write_on_commit: bool = True,
    **prefect_options: Any,
) -> Iterator[Transaction]:
    """A block whose task runs commit together, or roll back together when it fails (see the module docstring).

    ``key`` names the block's record in ``store`` (a :class:`ResultStore` or a
    storage URL; default: the result storage), making the block start
    COMMITTED when an earlier one with that key committed.
    """
    key = _check_key(key)
    level = isolation_of(isolation_level, f"transaction(key={key!r})")
    # Resolved by URL, so a change of daskflow home or storage setting opens the store it names now.
    records = None if key is None else result_store(default_storage_url() if store is None else store)
    txn = KeyedTransaction(
        key, store=records, state=TransactionState.ACTIVE, isolation_level=level, commit_mode=commit_mode
    )
    with ExitStack() as held:
        if level is IsolationLevel.SERIALIZABLE and txn.record_key is not None:
            held.enter_context(_record_lock(txn))
        if not overwrite and _committed_before(txn):
            txn.state = TransactionState.COMMITTED
            # A finished block: nothing of it commits or rolls back again, as in Prefect.
            with use_transaction(txn):
                yield txn
            _settle(txn)
            return
        with use_transaction(txn):
            try:
                yield txn
            except BaseException:
                _settle(txn)
                _rollback(txn)
                raise
        _settle(txn)
        _commit(txn, write_on_commit)


def _record_lock(txn: KeyedTransaction) -> AbstractContextManager[None]:
    """The key's lock for a SERIALIZABLE block: the store's lock manager, else this process's lock."""
    assert txn.store is not None and txn.record_key is not None
    if getattr(txn.store, "lock_manager", None) is None:
        return LOCAL.lock(f"transaction-{txn.record_key}")
    return _held(txn.store, txn.record_key, f"{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex}")


@contextmanager
def _held(store: ResultStore, key: str, holder: str) -> Iterator[None]:
    store.acquire_lock(key, holder=holder)
    try:
        yield
    finally:
        try:
            store.release_lock(key, holder=holder)
        except ValueError:
            pass  # its hold_timeout passed and another block took it: nothing of ours to release


def _committed_before(txn: KeyedTransaction) -> bool:
    if txn.store is None or txn.record_key is None:
        return False
    try:
        return txn.store.head(txn.record_key) is not None  # a corrupt record warns and is None
    except Exception as exc:  # a storage we cannot ask: run the block, as for a cache miss
        _log.warning("transaction %s: its record could not be looked up (%s: %s)", txn.key, type(exc).__name__, exc)
        return False


def _commit(txn: KeyedTransaction, write_on_commit: bool) -> None:
    failed = [run for _, run in txn.runs if not run.state.is_completed()]
    if failed:
        _log.warning(
            "transaction %s: %d of its task runs did not complete (%s); rolling back",
            txn.key or "",
            len(failed),
            ", ".join(f"{run.name}: {run.state.name}" for run in failed[:5]),
        )
        _rollback(txn)
        return
    txn.state = TransactionState.COMMITTED
    for task, run in txn.runs:
        if not run.state.is_cached() and task.options.on_commit:
            call_hooks(task.options.on_commit, (txn,), _log)
    if write_on_commit and txn.store is not None and txn.record_key is not None:
        txn.value = txn._staged
        _write_record(txn.store, txn.record_key, txn)


def _write_record(store: ResultStore, key: str, txn: KeyedTransaction) -> None:
    """Write the committed block's record; a value Parquet cannot hold goes as a signed pickle."""
    try:
        try:
            info = store.write(key, txn.value, task_name=_RECORD_TASK_NAME)
        except ResultError:
            info = store.write(key, txn.value, task_name=_RECORD_TASK_NAME, serializer="pickle")
    except Exception as exc:
        _log.warning(
            "transaction %s committed, but its record was not written (%s: %s)", txn.key, type(exc).__name__, exc
        )
        return
    if info is None:  # the store warned why; the next block with this key runs again
        _log.warning("transaction %s committed, but its record was not written", txn.key)


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
