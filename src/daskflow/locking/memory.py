"""Locks in this process's memory (Prefect's ``prefect.locking.memory``): for threads of one process.

One instance per process, as in Prefect: every ``MemoryLockManager()`` is the
same object, so two cache policies or result stores configured with it share
their locks; pickled to a Dask worker it becomes that process's own manager.
A waiter sleeps on a condition and is woken by a release, or at the moment the
holder's ``hold_timeout`` runs out.
"""

from __future__ import annotations

import threading
import time

from daskflow.locking.protocol import AsyncLockMethods, Held, check_timeout, deadline_after, remaining_of

__all__ = ["MemoryLockManager"]


class MemoryLockManager(AsyncLockMethods):
    """Locks in this process's memory: for threads of one process (one instance per process)."""

    _instance: MemoryLockManager | None = None
    _instance_lock = threading.Lock()

    def __new__(cls) -> MemoryLockManager:
        # One per process, as Prefect's: two policies configured with MemoryLockManager() share locks.
        with cls._instance_lock:
            if cls._instance is None:
                made = super().__new__(cls)
                made._locks = {}
                made._changed = threading.Condition()
                cls._instance = made
            return cls._instance

    _locks: dict[str, Held]
    _changed: threading.Condition

    def __reduce__(self) -> tuple[type[MemoryLockManager], tuple[()]]:
        return (MemoryLockManager, ())  # on a Dask worker: that process's own manager

    def __repr__(self) -> str:
        return "MemoryLockManager()"

    def _current(self, key: str) -> Held | None:
        held = self._locks.get(key)
        if held is not None and held.expires is not None and held.expires <= time.time():
            del self._locks[key]  # its hold_timeout passed: free again
            return None
        return held

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        check_timeout("acquire_timeout", acquire_timeout)
        check_timeout("hold_timeout", hold_timeout)
        deadline = deadline_after(acquire_timeout)
        with self._changed:
            while True:
                held = self._current(key)
                if held is None or held.holder == holder:
                    expires = None if hold_timeout is None else time.time() + hold_timeout
                    self._locks[key] = Held(holder, expires)
                    return True
                if not self._wait_for_change(held, deadline):
                    return False

    def release_lock(self, key: str, holder: str) -> None:
        with self._changed:
            held = self._current(key)
            if held is None or held.holder != holder:
                raise ValueError(
                    f"lock {key!r} is not held by {holder!r} (held by {held.holder if held else 'nobody'}); "
                    "only the holder that acquired a lock can release it."
                )
            del self._locks[key]
            self._changed.notify_all()

    def is_locked(self, key: str) -> bool:
        with self._changed:
            return self._current(key) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._changed:
            held = self._current(key)
            return held is not None and held.holder == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        check_timeout("timeout", timeout)
        deadline = deadline_after(timeout)
        with self._changed:
            while (held := self._current(key)) is not None:
                if not self._wait_for_change(held, deadline):
                    return False
            return True

    def _wait_for_change(self, held: Held, deadline: float | None) -> bool:
        """Wait (the condition's lock held) for a release, or for ``held`` to expire; False once
        ``deadline`` passed. Woken by a release; a hold_timeout's expiry by waking at it."""
        remaining = remaining_of(deadline)
        if remaining == 0:
            return False
        until_expiry = None if held.expires is None else max(0.0, held.expires - time.time())
        waits = [w for w in (remaining, until_expiry) if w is not None]
        self._changed.wait(min(waits) if waits else None)
        return True
