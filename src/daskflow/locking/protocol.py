"""What a lock manager is (Prefect's ``prefect.locking.protocol``), and what the managers share.

:class:`LockManager` is the protocol every manager follows (checked at run
time, so a user's own manager needs no base class); :class:`AsyncLockMethods`
gives a blocking manager Prefect's ``a``-prefixed async forms; the timeout
helpers keep the managers' argument checks and waits the same.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from daskflow.exceptions import ConfigurationError

__all__ = ["AsyncLockMethods", "Held", "LockManager", "check_timeout", "deadline_after", "remaining_of"]


@runtime_checkable
class LockManager(Protocol):
    """Locks on cache record keys (Prefect's ``prefect.locking.protocol.LockManager``)."""

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """Take ``key`` for ``holder``; wait up to ``acquire_timeout`` seconds (None: for ever, 0: not at all).

        True once held (also when ``holder`` held it already); False when the time ran out.
        """
        ...

    def release_lock(self, key: str, holder: str) -> None:
        """Let ``key`` go; a ``ValueError`` if ``holder`` does not hold it."""
        ...

    def is_locked(self, key: str) -> bool: ...

    def is_lock_holder(self, key: str, holder: str) -> bool: ...

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is free (not taking it); False if ``timeout`` seconds passed first."""
        ...


class AsyncLockMethods:
    """The ``a``-prefixed forms Prefect also offers: the blocking ones, on a thread."""

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)  # type: ignore[attr-defined]

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)  # type: ignore[attr-defined]


def check_timeout(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise ConfigurationError(f"{name}={value!r} must be a number of seconds >= 0, or None (no limit).")


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining_of(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@dataclass
class Held:
    holder: str
    expires: float | None  # time.time() when the lock is free again; None: held until released
