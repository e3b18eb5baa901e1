"""Caching around a task run: the key, the lookup before it runs, the write after it succeeds.

A task caches when its author asked for it: a ``cache_policy``, a
``cache_key_fn`` or ``persist_result=True`` (as in Prefect 3, where the default
policy only takes effect with result persistence). Its key comes from the
policy once the inputs are resolved; an argument that cannot be hashed fails
the run with the policy's message, never a random key. The entry lives in the
task's ``result_storage`` (or dask.config ``daskflow.results.storage``), where
the run executes: on Dask, the worker reads and writes it itself.

Identical runs in flight at once compute once (single flight): after a miss
the run takes a lock named by its key (:func:`key_lock`), looks again, and
either finds the entry the holder wrote or computes and writes it itself.

A hit on a large entry (over ``daskflow.results.defer_above`` bytes) reads only
its footer: the run ends ``Cached`` with a reference to the entry (a
:class:`~daskflow.results.deferred.StoredValue`), read when a downstream run
or the caller needs the value. A smaller one is read at once, as a reference
would save nothing. Either way the value carries the entry's data version, and
a run downstream keys its input by that version instead of by content (see
:class:`~daskflow.states.DeferredData`); a fresh result carries the version of
the entry just written.

Inside a flow run the entry is written behind the value (:func:`write_entry_behind`,
:mod:`daskflow.results.write_behind`): the run completes, and its value goes
downstream, while this process's writer stores it; the flow run drains its
writes before it ends. A lookup in the same process meanwhile finds the value
in flight; one elsewhere finds no entry or the whole entry, never part of one.

Storage trouble never fails a run and never loses a value: a corrupt entry is a
miss (with a warning in the run's log) and a failed write is a warning. Only a
successful run writes; a failed one never does. The stored key carries the
task's identity (its name, and a hash of the exact name), and a read checks
the name the entry was written by: two tasks called with equal inputs never
share an entry.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from daskflow import settings
from daskflow.concurrency import LOCAL
from daskflow.exceptions import ResultError
from daskflow.logging import RunLoggerAdapter
from daskflow.results import ResultStore, open_store, write_behind
from daskflow.results.deferred import StoredValue
from daskflow.results.entries import load_libraries, new_version
from daskflow.states import DeferredData, KnownValue

__all__ = [
    "caching_enabled",
    "key_lock",
    "read_entry",
    "result_store",
    "storage_key",
    "write_behind_enabled",
    "write_entry",
    "write_entry_behind",
]

write_behind_enabled = write_behind.enabled

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_stores: dict[tuple[Any, ...], ResultStore] = {}
_stores_lock = threading.Lock()


def caching_enabled(options: Any) -> bool:
    """True when the task's author asked for caching or result persistence."""
    if options.cache_policy is not None or options.cache_key_fn is not None:
        return True
    persist = options.persist_result
    if persist is None:
        persist = settings.get("results.persist")
    return bool(persist)


def storage_key(task_name: str, key: str) -> str:
    """The entry's name in storage: the task's identity and the policy's key, file-name safe.

    ``<name>-<identity>-<key>``: the name made file-name safe and cut to 40
    characters, for people listing the storage; a hash of the exact name, so
    that names the first part makes equal (``"load table a"`` and
    ``"load_table_a"``, or two long names with one beginning) never share an
    entry; and the key (hashed when it is long or not file-name safe).
    """
    body = key if len(key) <= 80 and not _UNSAFE.search(key) else hashlib.sha256(key.encode()).hexdigest()
    return _task_part(task_name) + body


@functools.lru_cache(maxsize=1024)
def _task_part(task_name: str) -> str:
    """``<name>-<identity>-`` of :func:`storage_key`: the same for every run of a task (a map asks 10,000 times)."""
    prefix = _UNSAFE.sub("_", task_name).lstrip(".")[:40] or "task"
    identity = hashlib.sha256(task_name.encode()).hexdigest()[:16]
    return f"{prefix}-{identity}-"


def result_store(result_storage: Any) -> ResultStore:
    """The store for a ``result_storage`` setting (see :func:`daskflow.results.open_store`),
    opened once per process and setting."""
    if isinstance(result_storage, ResultStore):
        return result_storage
    url = getattr(result_storage, "url", result_storage)
    options = getattr(result_storage, "storage_options", None)
    # The default store lives under the home folder: a process whose DASKFLOW_HOME changed
    # (a notebook, each test) gets the new home's store, not the first one it opened.
    home = os.environ.get(settings.HOME_ENV_VAR) if url is None else None  # not home(): it makes the folder
    cache_key = (repr(url), repr(sorted((options or {}).items())), settings.get("results.storage"), home)
    store = _stores.get(cache_key)
    if store is None:
        with _stores_lock:
            store = _stores.get(cache_key)
            if store is None:
                store = _stores[cache_key] = open_store(result_storage)
    return store


def key_lock(isolation: str | None, key: str, coordination: Any) -> AbstractContextManager[None] | None:
    """The lock that makes identical runs of ``key`` compute once, per the task's ``cache_isolation``.

    ``None`` (the default) is a lock of this process, which costs nothing across
    a network; ``"serializable"`` is the cluster's lock where the run has a
    cluster (on Dask) and this process's otherwise; ``"none"`` is no lock at all.
    """
    if isolation == "none":
        return None
    if isolation == "serializable" and coordination is not None:
        lock: AbstractContextManager[None] = coordination.lock(key)
        return lock
    return LOCAL.lock(key)


@contextmanager
def _warnings_to(logger: RunLoggerAdapter) -> Iterator[None]:
    # Warnings raised on a Dask worker would stay in its stderr: route them to the run's log.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.warning("%s", warning.message)


def read_entry(
    store: ResultStore, key: str, task_name: str, logger: RunLoggerAdapter, owner: str | None = None
) -> DeferredData | None:
    """The stored value for ``key`` with its version, or None on a miss (absent, expired,
    unusable, or written by another task).

    Entries larger than ``daskflow.results.defer_above`` bytes stay in storage
    (footer read only); smaller ones are read now. The entry's footer names
    the task that wrote it: an entry of another task (an older layout of
    names, a hand-copied file) is a miss with a warning, never its value.
    A write of ``key`` still in flight in this process is a hit on its value;
    flow run ``owner`` then waits for that write at its end too.
    """
    in_flight = write_behind.pending((store.url, key), owner)
    if in_flight is not None:  # this process is writing it: the value is here, whole
        value, version = in_flight
        return KnownValue(value, version)
    with _warnings_to(logger):
        try:
            found = store.lookup(key, defer_above=int(settings.get("results.defer_above")))
        except Exception as exc:  # a storage we cannot even ask is a miss, not a failed run
            logger.warning("cache lookup of %s failed (%s: %s); running the task", key, type(exc).__name__, exc)
            return None
    if found is None:
        return None
    info, value = found
    if info.task_name != task_name:
        logger.warning(
            "cache entry %s was written by task %r, not by this task %r: treated as a miss, and "
            "this run's result replaces it",
            key,
            info.task_name,
            task_name,
        )
        return None
    if value is store.NOT_READ:
        return StoredValue(store, key, info.version, info.length)
    return KnownValue(value, info.version)


def write_entry(
    store: ResultStore,
    key: str,
    value: Any,
    options: Any,
    logger: RunLoggerAdapter,
    version: str | None = None,
    background: bool = False,
    finished: datetime | None = None,
) -> str | None:
    """Store a successful run's value; its entry's version, or None (with a warning) if it was not stored.

    ``background``: called by the writer's thread, where the storage's
    complaint goes straight to the run's log (catching warnings is not
    thread-safe, and would mix this write's with a running task's).
    ``finished``: when the value was made (default: now), from which
    ``cache_expiration`` counts, however long the write waited.
    """
    expiration = None
    if options.cache_expiration is not None:
        expiration = (finished or datetime.now(UTC)) + options.cache_expiration
    serializer = options.result_serializer or settings.get("results.serializer")
    report = (lambda text: logger.warning("%s", text)) if background else None
    with nullcontext() if background else _warnings_to(logger):
        try:
            info = store.write(
                key,
                value,
                task_name=options.name,
                expiration=expiration,
                serializer=serializer,
                version=version,
                report=report,
            )
            return None if info is None else info.version
        except ResultError as exc:
            logger.warning("the result was not cached: %s", exc)
        except Exception as exc:
            logger.warning("the result was not cached (%s: %s)", type(exc).__name__, exc)
    return None


def write_entry_behind(
    store: ResultStore, key: str, value: Any, options: Any, logger: RunLoggerAdapter, owner: str, run_name: str
) -> str | None:
    """Queue the entry's write on this process's writer, for flow run ``owner`` to drain.

    Returns the version the entry will have (the value may go downstream now,
    keyed by it), or None when the writer is full: then the caller writes it
    itself (:func:`write_entry`). A write that fails later says why in the
    run's log, and the flow run's drain counts it.
    """
    # Imported here, in the run's thread, as the write would have: the writer's thread importing
    # pandas and pyarrow beside a task thread that hashes a DataFrame gives one of them half a module.
    load_libraries()
    version = new_version()
    finished = datetime.now(UTC)

    def write() -> bool:
        return write_entry(store, key, value, options, logger, version, background=True, finished=finished) is not None

    what = f"task run {run_name!r}, key {key!r}"
    if write_behind.writer().submit(owner, (store.url, key), value, version, write, what):
        return version
    return None
