"""Transactions as a task's ``on_commit`` hooks see them (Prefect's ``prefect.transactions`` names).

In Prefect 3 every task run happens in a transaction: its result is staged,
then committed when the run completes, and the task's ``on_commit`` hooks are
called with that transaction. daskflow commits a task run's result the moment
it completes (the cache entry is written before the state is final), so the
transaction an ``on_commit`` hook receives is already committed: its ``key``
is the run's cache key (None when the task does not cache), ``get``/``set``
hold values the hook may share, and ``value`` is the committed result. A cache
hit commits nothing, so its hooks do not run, as in Prefect.

Not here yet: ``transaction()`` grouping several task runs so that their
entries commit together and ``on_rollback`` hooks run when the block fails
(issue 16, item 5); until then ``on_rollback`` hooks are accepted and never
called, because a lone task run has nothing to roll back once it failed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import Any

__all__ = [
    "CommitMode",
    "IsolationLevel",
    "Transaction",
    "TransactionState",
    "call_hooks",
    "commit_of",
    "get_transaction",
]


class IsolationLevel(enum.Enum):
    """How concurrent runs of one key see each other (``cache_isolation`` on tasks: None / "serializable")."""

    READ_COMMITTED = "READ_COMMITTED"
    SERIALIZABLE = "SERIALIZABLE"


class CommitMode(enum.Enum):
    EAGER = "EAGER"
    LAZY = "LAZY"
    OFF = "OFF"


class TransactionState(enum.Enum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    STAGED = "STAGED"
    COMMITTED = "COMMITTED"
    ROLLED_BACK = "ROLLED_BACK"


class Transaction:
    """One unit of committed work: its key, its value, and values hooks share with ``get``/``set``."""

    def __init__(
        self,
        key: str | None = None,
        *,
        value: Any = None,
        state: TransactionState = TransactionState.PENDING,
        isolation_level: IsolationLevel | None = None,
        commit_mode: CommitMode | None = None,
    ) -> None:
        self.key = key
        self.value = value
        self.state = state
        self.isolation_level = isolation_level
        self.commit_mode = commit_mode
        self._values: dict[str, Any] = {}

    def get(self, name: str, default: Any = None) -> Any:
        """A value set on this transaction with :meth:`set`; ``default`` if there is none."""
        return self._values.get(name, default)

    def set(self, name: str, value: Any) -> None:
        self._values[name] = value

    def is_committed(self) -> bool:
        return self.state is TransactionState.COMMITTED

    def is_rolled_back(self) -> bool:
        return self.state is TransactionState.ROLLED_BACK

    def is_staged(self) -> bool:
        return self.state is TransactionState.STAGED

    def is_active(self) -> bool:
        return self.state is TransactionState.ACTIVE

    def __repr__(self) -> str:
        return f"Transaction(key={self.key!r}, state={self.state.value})"


_current: ContextVar[Transaction | None] = ContextVar("daskflow_transaction", default=None)


def get_transaction() -> Transaction | None:
    """The transaction this code runs in; None outside one (daskflow has no enclosing ones yet)."""
    return _current.get()


def commit_of(run: Any, state: Any) -> Transaction:
    """The committed transaction of a task run that just completed: what its ``on_commit`` hooks get."""
    value = state.result(raise_on_failure=False) if hasattr(state, "result") else None
    return Transaction(getattr(run, "cache_key", None), value=value, state=TransactionState.COMMITTED)


def call_hooks(hooks: Sequence[Any] | Iterable[Any], args: tuple[Any, ...], logger: Any) -> None:
    """Call each hook with ``args``; a hook that raises is logged and never changes the run."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            logger.exception("hook %s raised; the run's state is unchanged", getattr(hook, "__name__", hook))
