"""Writing run history off the hot path: an in-memory queue and one writer thread.

The engine calls :meth:`RunStoreWriter.put` on every state change and log
record, so ``put`` does as little as can be done: append the record to a
``deque`` (atomic under the GIL, no lock taken) and, when a batch is ready,
wake the writer. Everything that costs (importing SQLAlchemy, opening and
migrating the database, encoding rows, waiting for locks) happens on the
writer's daemon thread, which writes what is queued in one transaction every
``interval`` seconds, or at once when ``batch_size`` records are waiting.

``flush`` puts a marker in the queue and waits for the writer to reach it, so
it returns once everything put before it was written (or given up); the end of
a flow calls it. ``close`` flushes and stops the thread; an ``atexit`` hook
closes the writers still open when the interpreter exits.

The database failing never fails a run: a batch that cannot be written (the
file locked beyond the busy timeout, the server unreachable, a newer schema)
is dropped, and the first loss of an *outage* emits one :class:`RunStoreWarning`
— through ``warnings`` and the ``daskflow.runstore`` logger — naming the URL
(password masked) and the error. The writer keeps trying with the next batch;
the first success ends the outage and logs how many records were lost. If the
database stays away, memory stays bounded: past ``max_queue`` waiting records,
``put`` drops and counts instead of queueing.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import warnings
import weakref
from collections import deque
from datetime import UTC, datetime
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from daskflow.runstore.errors import RunStoreWarning
from daskflow.runstore.records import Record
from daskflow.runstore.urls import mask_password, resolve_url

if TYPE_CHECKING:
    from daskflow.runstore.store import RunStore

__all__ = ["RunStoreWriter"]

_log = logging.getLogger("daskflow.runstore")
_open_writers: weakref.WeakSet[RunStoreWriter] = weakref.WeakSet()


def _describe(exc: BaseException) -> str:
    """The error that explains a failed write, in one line: the driver's, when there is one."""
    root = exc.__cause__ if exc.__cause__ is not None else exc
    root = getattr(root, "orig", None) or root
    lines = str(root).strip().splitlines()
    text = f"{type(root).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:300] + "..."


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"


class RunStoreWriter:
    """Writes run records to a run store in batches, on its own thread; see the module docstring.

    ``store`` is an open :class:`~daskflow.runstore.store.RunStore` (the caller
    closes it), or a URL / None (``daskflow.runstore.url`` or the home's SQLite
    file), which the writer's thread opens, and closes with the writer.

    The writer writes every ``interval`` seconds, or as soon as ``batch_size``
    records wait; one transaction takes at most ``max_batch`` records, so a
    long backlog does not hold SQLite's write lock for long. Past ``max_queue``
    waiting records, ``put`` drops. ``busy_timeout`` (seconds) is how long a
    write waits for another SQLite writer; it applies to a store opened here.

    ``convert``, when given, turns each batch of what was put into records, on
    the writer's thread: the caller may then put anything cheaper to make than
    a record — say ``(run, state)`` pairs — and build one snapshot per run per
    batch instead of one per state change. A ``convert`` that raises loses its
    batch like a failed write.
    """

    def __init__(
        self,
        store: RunStore | str | None = None,
        *,
        interval: float = 0.2,
        batch_size: int = 1000,
        max_batch: int = 5_000,
        max_queue: int = 200_000,
        busy_timeout: float | None = None,
        convert: Callable[[list[Any]], Iterable[Record]] | None = None,
    ) -> None:
        if isinstance(store, str) or store is None:
            self.url = resolve_url(store)
            self._store: RunStore | None = None
            self._owns_store = True
        else:
            self.url = store.url
            self._store = store
            self._owns_store = False
        self.display_url = mask_password(self.url)
        self._interval = interval
        self._batch_size = batch_size
        self._max_batch = max(max_batch, batch_size)
        self._max_queue = max_queue
        self._busy_timeout = busy_timeout
        self._convert = convert
        self._queue: deque[Any] = deque()  # records (or what convert takes) and flush markers
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the counts that put() changes: only on its overflow path
        self._overflowed = 0
        self._closed = False
        self._written = 0
        self._dropped = 0
        self._transactions = 0
        self._outage_since: float | None = None
        self._outage_lost = 0
        self._thread = threading.Thread(target=self._run, name="daskflow-runstore-writer", daemon=True)
        self._thread.start()
        _open_writers.add(self)

    def __repr__(self) -> str:
        counts = f"queued={len(self._queue)}, written={self._written}, dropped={self.dropped}"
        return f"RunStoreWriter({self.display_url!r}, {counts})"

    # -- the caller's side ------------------------------------------------------------------

    def put(self, record: Record | Any) -> None:
        """Queue ``record`` for writing; never blocks on the database and never raises."""
        queue = self._queue
        queued = len(queue)
        if queued >= self._max_queue or self._closed:
            with self._lock:
                self._overflowed += 1
            return
        queue.append(record)
        if queued + 1 >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every record put before this call is written or given up; False on timeout."""
        if not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        self._queue.append(done)  # markers skip the max_queue bound: a flush is never dropped
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush, stop the writer thread and close the store it opened; False if that took too long."""
        if self._closed:
            return not self._thread.is_alive()
        flushed = self.flush(timeout)
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        _open_writers.discard(self)
        return flushed and not self._thread.is_alive()

    @property
    def written(self) -> int:
        """Records (or items, with ``convert``) written so far."""
        return self._written

    @property
    def dropped(self) -> int:
        """Records given up so far: batches that failed, and records refused by a full queue."""
        return self._dropped + self._overflowed

    @property
    def transactions(self) -> int:
        """Batches committed so far."""
        return self._transactions

    # -- the writer's thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                self._drain()
                if self._closed and not self._queue:
                    return
        finally:
            if self._owns_store and self._store is not None:
                self._store.close()

    def _drain(self) -> None:
        queue = self._queue
        while True:
            batch: list[Any] = []
            markers: list[threading.Event] = []
            while queue and len(batch) < self._max_batch:
                item = queue.popleft()
                if isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
            with self._lock:
                overflowed, self._overflowed = self._overflowed, 0
            if overflowed and not self._closed:
                self._lose(overflowed, f"the queue was full ({self._max_queue} records waiting)")
            for marker in markers:
                marker.set()
            if len(batch) < self._max_batch:
                return

    def _write(self, batch: list[Any]) -> None:
        try:
            records = batch if self._convert is None else self._convert(batch)
            if self._store is None:
                self._store = self._open()
            self._store.write(records)
        except Exception as exc:  # whatever the database does, the runs go on
            self._lose(len(batch), _describe(exc))
            return
        self._written += len(batch)
        self._transactions += 1
        if self._outage_since is not None:
            _log.info(
                "The run store at %s is written again; %s from the last %.1f s were not kept.",
                self.display_url, _records(self._outage_lost), time.time() - self._outage_since,
            )  # fmt: skip
            self._outage_since = None

    def _open(self) -> RunStore:
        # Imported here, on the writer's thread: SQLAlchemy and Alembic take a tenth of a
        # second to import, which neither `import daskflow` nor a flow's first put should pay.
        from daskflow.runstore.store import DEFAULT_BUSY_TIMEOUT, RunStore

        busy = DEFAULT_BUSY_TIMEOUT if self._busy_timeout is None else self._busy_timeout
        return RunStore(self.url, busy_timeout=busy)

    def _lose(self, count: int, reason: str) -> None:
        self._dropped += count
        if self._outage_since is not None:
            self._outage_lost += count
            return
        self._outage_since = time.time()
        self._outage_lost = count
        since = datetime.fromtimestamp(self._outage_since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        message = (
            f"Run history was not kept: the run store at {self.display_url} could not be written "
            f"({reason}); {_records(count)} dropped. Runs go on; daskflow keeps trying and keeps "
            f"history again once the database answers (outage since {since}; "
            f"{_records(self.dropped)} dropped by this writer so far)."
        )
        _log.warning(message)
        try:
            warnings.warn(message, RunStoreWarning, stacklevel=1)
        except Exception:  # warnings turned into errors (-W error) must not kill the writer
            pass


@atexit.register
def _close_open_writers() -> None:
    for writer in list(_open_writers):
        writer.close(timeout=3.0)
