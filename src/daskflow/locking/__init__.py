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

``daskflow.locking.memory``, ``daskflow.locking.filesystem`` and
``daskflow.locking.protocol`` are Prefect's module paths; every name is also
importable from ``daskflow.locking`` itself.
"""

from __future__ import annotations

from daskflow.locking.filesystem import FileSystemLockManager
from daskflow.locking.isolation import engine_isolation, isolation_of, policy_lock, transaction_isolation
from daskflow.locking.memory import MemoryLockManager
from daskflow.locking.protocol import LockManager

__all__ = [
    "FileSystemLockManager",
    "LockManager",
    "MemoryLockManager",
    "engine_isolation",
    "isolation_of",
    "policy_lock",
    "transaction_isolation",
]
