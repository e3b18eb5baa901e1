"""How the engine chooses a lock for a task run: the isolation of its policy or its transaction.

A task's cache policy configured ``SERIALIZABLE`` with a lock manager locks
through that manager; inside ``transaction(isolation_level=SERIALIZABLE)`` a
task without its own setting is serializable too, through its policy's
manager if it has one, else through the engine's single-flight lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from daskflow.context import IsolationLevel, get_transaction
from daskflow.exceptions import ConfigurationError
from daskflow.locking.protocol import LockManager

__all__ = ["engine_isolation", "isolation_of", "policy_lock", "transaction_isolation"]


def isolation_of(value: IsolationLevel | str | None, where: str) -> IsolationLevel | None:
    """``value`` as an :class:`IsolationLevel` ("SERIALIZABLE", "READ_COMMITTED" or the member)."""
    if value is None or isinstance(value, IsolationLevel):
        return value
    try:
        return IsolationLevel(str(value).upper())
    except ValueError:
        raise ConfigurationError(
            f"{where}: isolation_level={value!r}; use IsolationLevel.SERIALIZABLE (or 'SERIALIZABLE') or "
            "IsolationLevel.READ_COMMITTED."
        ) from None


def transaction_isolation(policy: Any) -> IsolationLevel | None:
    """The isolation a task run under ``policy`` has: the policy's own, else the enclosing transaction's."""
    own = getattr(policy, "isolation_level", None)
    if own is not None:
        return isolation_of(own, "cache policy")
    enclosing = get_transaction()
    return None if enclosing is None else isolation_of(enclosing.isolation_level, "transaction")


@contextmanager
def _holding(manager: LockManager, key: str, holder: str) -> Iterator[None]:
    manager.acquire_lock(key, holder)
    try:
        yield
    finally:
        try:
            manager.release_lock(key, holder)
        except ValueError:
            pass  # its hold_timeout passed and another run took it: nothing of ours to release


def policy_lock(policy: Any, key: str, holder: str) -> AbstractContextManager[None] | None:
    """The lock of the policy's manager on ``key`` when the run is serializable; None otherwise."""
    manager = getattr(policy, "lock_manager", None)
    if manager is None or transaction_isolation(policy) is not IsolationLevel.SERIALIZABLE:
        return None
    return _holding(manager, key, holder)


def engine_isolation(cache_isolation: str | None, policy: Any) -> str | None:
    """The task's ``cache_isolation``, made ``"serializable"`` by a SERIALIZABLE policy or transaction."""
    if cache_isolation is None and transaction_isolation(policy) is IsolationLevel.SERIALIZABLE:
        return "serializable"
    return cache_isolation
