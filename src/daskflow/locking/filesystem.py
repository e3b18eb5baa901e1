"""Locks as files (Prefect's ``prefect.locking.filesystem``): for processes sharing a folder.

A lock is ``<dir>/<key>.lock``, created with ``O_CREAT | O_EXCL`` so that of
two processes creating it exactly one succeeds, holding its holder and when it
expires (``hold_timeout``); a waiter that finds it expired removes it, so a
holder that died (a killed Dask worker) does not block its key for ever.
Another process cannot notify a waiter, so waiters look again, less often the
longer it takes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from daskflow.locking.protocol import AsyncLockMethods, Held, check_timeout, deadline_after, remaining_of

__all__ = ["FileSystemLockManager"]

_POLL_FIRST = 0.005  # seconds between looks at a held lock file, doubling up to _POLL_MOST
_POLL_MOST = 0.2
_UNREADABLE_STALE = 10.0  # seconds a lock file may stay empty before it counts as its dead writer's
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,150}")


class FileSystemLockManager(AsyncLockMethods):
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

    def _read(self, path: Path) -> Held | None:
        """The lock in ``path``; None if there is none, or it expired (and was removed here)."""
        try:
            data = json.loads(path.read_text())
            held = Held(str(data["holder"]), data.get("expires"))
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
                return Held("", None)
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
        check_timeout("acquire_timeout", acquire_timeout)
        check_timeout("hold_timeout", hold_timeout)
        path = self._path(key)
        deadline = deadline_after(acquire_timeout)
        pause = _POLL_FIRST
        while True:
            if self._try_create(path, holder, hold_timeout):
                return True
            held = self._read(path)
            if held is not None and held.holder == holder:
                return True
            if held is None:
                continue  # released or expired just now: try to create it again at once
            remaining = remaining_of(deadline)
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
        check_timeout("timeout", timeout)
        path = self._path(key)
        deadline = deadline_after(timeout)
        pause = _POLL_FIRST
        while self._read(path) is not None:
            remaining = remaining_of(deadline)
            if remaining == 0:
                return False
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, _POLL_MOST)
        return True
