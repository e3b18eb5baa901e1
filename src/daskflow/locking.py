"""Lock managers for cache records (Prefect's ``prefect.locking``): who may compute a key right now.

Two identical task runs (same cache key) started at once would both miss the
cache and both compute. A *serializable* run takes the key's lock before it
looks the cache up and holds it until its entry is written, so the second run
waits, then finds the first one's entry: one computation, one write. Who
keeps the locks is a :class:`LockManager`, given to a cache policy with
``policy.configure(isolation_level="SERIALIZABLE", lock_manager=...)``:

* :class:`MemoryLockManager` — a dict of this process (one instance per
  process, as Prefect's): threads of one process, e.g. the thread-pool runner;
* :class:`FileSystemLockManager` — a lock file per key in a directory
  (``<dir>/<key>.lock``, created with ``O_CREAT | O_EXCL``, so that of two
  processes creating it exactly one succeeds): processes of one machine, or
  Dask workers sharing a file system.

A lock names its *holder* (a run id here) and may carry ``hold_timeout``: a
lock older than that is free again, so a holder that died (a killed worker)
does not block its key forever; the lock file says when it expires, and a
waiter that finds it expired removes it. Only the holder may release a lock.

How the engine chooses (:func:`policy_lock`, :func:`transaction_isolation`):
a task's cache policy configured ``SERIALIZABLE`` with a lock manager locks
through that manager; inside ``transaction(isolation_level=SERIALIZABLE)``
a task without its own setting is serializable too, through its policy's
manager if it has one, else through the engine's own single-flight lock on
the cluster (as ``cache_isolation="serializable"``). A manager with no
``SERIALIZABLE`` anywhere is kept but not used, as in Prefect.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from daskflow.context import IsolationLevel, get_transaction
from daskflow.exceptions import ConfigurationError

__all__ = [
    "FileSystemLockManager",
    "LockManager",
    "MemoryLockManager",
    "engine_isolation",
    "isolation_of",
    "policy_lock",
    "transaction_isolation",
]

_POLL_FIRST = 0.005  # seconds between looks at a held lock file, doubling up to _POLL_MOST
_POLL_MOST = 0.2
_UNREADABLE_STALE = 10.0  # seconds a lock file may stay empty before it counts as its dead writer's
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,150}")


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


class _AsyncMethods:
    """The ``a``-prefixed forms Prefect also offers: the blocking ones, on a thread."""

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)  # type: ignore[attr-defined]

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)  # type: ignore[attr-defined]


def _check_timeout(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise ConfigurationError(f"{name}={value!r} must be a number of seconds >= 0, or None (no limit).")


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@dataclass
class _Held:
    holder: str
    expires: float | None  # time.time() when the lock is free again; None: held until released


class MemoryLockManager(_AsyncMethods):
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

    _locks: dict[str, _Held]
    _changed: threading.Condition

    def __reduce__(self) -> tuple[type[MemoryLockManager], tuple[()]]:
        return (MemoryLockManager, ())  # on a Dask worker: that process's own manager

    def __repr__(self) -> str:
        return "MemoryLockManager()"

    def _current(self, key: str) -> _Held | None:
        held = self._locks.get(key)
        if held is not None and held.expires is not None and held.expires <= time.time():
            del self._locks[key]  # its hold_timeout passed: free again
            return None
        return held

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        _check_timeout("acquire_timeout", acquire_timeout)
        _check_timeout("hold_timeout", hold_timeout)
        deadline = _deadline(acquire_timeout)
        with self._changed:
            while True:
                held = self._current(key)
                if held is None or held.holder == holder:
                    expires = None if hold_timeout is None else time.time() + hold_timeout
                    self._locks[key] = _Held(holder, expires)
                    return True
                remaining = _remaining(deadline)
                if remaining == 0:
                    return False
                # Woken by a release; the expiry of a hold_timeout is noticed by waking at it.
                until_expiry = None if held.expires is None else max(0.0, held.expires - time.time())
                waits = [w for w in (remaining, until_expiry) if w is not None]
                self._changed.wait(min(waits) if waits else None)

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
        _check_timeout("timeout", timeout)
        deadline = _deadline(timeout)
        with self._changed:
            while (held := self._current(key)) is not None:
                remaining = _remaining(deadline)
                if remaining == 0:
                    return False
                until_expiry = None if held.expires is None else max(0.0, held.expires - time.time())
                waits = [w for w in (remaining, until_expiry) if w is not None]
                self._changed.wait(min(waits) if waits else None)
            return True


class FileSystemLockManager(_AsyncMethods):
    """Locks as files in ``lock_files_directory``: for processes (and Dask workers) sharing that folder."""

    def __init__(self, lock_files_directory: str | os.PathLike[str]) -> None:
        self.lock_files_directory = Path(lock_files_directory).expanduser()

    def __repr__(self) -> str:
        return f"FileSystemLockManager({str(self.lock_files_directory)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileSystemLockManager) and other.lock_files_directory == self.lock_files_directory

    def __hash__(self) -> int:
        return hash(self.lock_files_directory)

    def _path(self, key: str) -> Path:
        # Keys are cache keys (safe names) as a rule; anything else, or a long one, by its digest.
        name = key if _SAFE_KEY.fullmatch(key) else hashlib.sha256(key.encode()).hexdigest()
        return self.lock_files_directory / f"{name}.lock"

    def _read(self, path: Path) -> _Held | None:
        """The lock in ``path``; None if there is none, or it expired (and was removed here)."""
        try:
            data = json.loads(path.read_text())
            held = _Held(str(data["holder"]), data.get("expires"))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # Being written this instant (created empty, then filled): taken, by whom is not known yet;
            # unreadable for long, its writer died between creating and filling it: free it.
            try:
                stale = time.time() - path.stat().st_mtime > _UNREADABLE_STALE
            except FileNotFoundError:
                return None
            if not stale:
                return _Held("", None)
            path.unlink(missing_ok=True)
            return None
        if held.expires is not None and held.expires <= time.time():
            try:
                path.unlink()  # the holder outlived its hold_timeout (or died): the key is free
            except FileNotFoundError:
                pass
            return None
        return held

    def _try_create(self, path: Path, holder: str, hold_timeout: float | None) -> bool:
        self.lock_files_directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        expires = None if hold_timeout is None else time.time() + hold_timeout
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps({"holder": holder, "expires": expires, "pid": os.getpid()}))
        return True

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        _check_timeout("acquire_timeout", acquire_timeout)
        _check_timeout("hold_timeout", hold_timeout)
        path = self._path(key)
        deadline = _deadline(acquire_timeout)
        pause = _POLL_FIRST
        while True:
            if self._try_create(path, holder, hold_timeout):
                return True
            held = self._read(path)
            if held is not None and held.holder == holder:
                return True
            if held is None:
                continue  # released or expired just now: try to create it again at once
            remaining = _remaining(deadline)
            if remaining == 0:
                return False
            # Another process holds it and cannot notify us: look again, less often the longer it takes.
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, _POLL_MOST)

    def release_lock(self, key: str, holder: str) -> None:
        path = self._path(key)
        held = self._read(path)
        if held is None or held.holder != holder:
            raise ValueError(
                f"lock {key!r} is not held by {holder!r} (held by {held.holder if held else 'nobody'}); "
                "only the holder that acquired a lock can release it."
            )
        path.unlink(missing_ok=True)

    def is_locked(self, key: str) -> bool:
        return self._read(self._path(key)) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self._read(self._path(key))
        return held is not None and held.holder == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        _check_timeout("timeout", timeout)
        path = self._path(key)
        deadline = _deadline(timeout)
        pause = _POLL_FIRST
        while self._read(path) is not None:
            remaining = _remaining(deadline)
            if remaining == 0:
                return False
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, _POLL_MOST)
        return True


# -- how the engine uses them ---------------------------------------------------------------------


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
