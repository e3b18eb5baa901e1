"""Writing run history off the hot path: an in-memory queue, one writer thread, and a spool on disk.

The engine calls :meth:`RunStoreWriter.put` on every state change and log
record, so ``put`` does as little as can be done: append the record to a
``deque`` (atomic under the GIL, no lock taken) and, when a batch is ready,
wake the writer. Everything that costs (importing SQLAlchemy, opening and
migrating the database, encoding rows, waiting for locks) happens on the
writer's daemon thread, which writes what is queued in one transaction every
``interval`` seconds, or at once when ``batch_size`` records are waiting.
With ``busy_hold`` set, a writer that wakes on its interval to find the queue
grown by a hundred records or more since its last look (the process busy
making records) waits
for a quiet interval instead, up to ``busy_hold`` seconds: the drain then takes
its turn at the GIL once the burst is over, not in the middle of it.

**Nothing is lost to an outage.** A batch that cannot be written because the
database is away (an ``OperationalError``: stopped, unreachable, locked beyond
the busy timeout) is appended to a spool file on local disk (:mod:`.spool`),
and so is every later batch, in order, while the outage lasts: the flow never
waits for the database, and memory does not grow with the outage. The writer
tries the database again with a backoff (``daskflow.runstore.retry.first``,
doubling up to ``retry.max``), and at once on every ``flush``; once it answers,
the spool is replayed in order, a transaction per ``max_batch`` records, and
removed. Writes are idempotent (see :meth:`~.store.RunStore.write`), so a
replay cut short and started again keeps every record once. A spool left by a
process that died is adopted and replayed by the next writer of the same
store, before its own records. Records are dropped only past the spool's bound
(``daskflow.runstore.spool.max_bytes``, 256 MiB), when the disk refuses them,
when the database refuses a record itself (it is left out alone: a failed
batch is split until the refused record is found), when the schema is newer
than this code, or past ``max_queue`` records waiting in memory; each loss is
counted (:attr:`RunStoreWriter.dropped`) and the first of a run of losses is
one :class:`RunStoreWarning` — through ``warnings`` and the
``daskflow.runstore`` logger — naming the URL (password masked) and why.
An outage itself is one WARNING log line, and its end one INFO line.

``flush`` puts a marker in the queue and waits for the writer to reach it, so
it returns once everything put before it was written — or, while the database
does not answer, kept in the spool — or given up; the end of a flow calls it.
``close`` flushes and stops the thread; an ``atexit`` hook closes the writers
still open when the interpreter exits.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daskflow import settings
from daskflow.runstore.errors import RunStoreUnavailableError, RunStoreWarning
from daskflow.runstore.records import Record
from daskflow.runstore.spool import SpoolFile, adopt_orphans, encode_frame
from daskflow.runstore.spool import spool_folder as default_spool_folder
from daskflow.runstore.urls import mask_password, resolve_url

if TYPE_CHECKING:
    from daskflow.runstore.store import RunStore

__all__ = ["RunStoreWriter"]

_log = logging.getLogger("daskflow.runstore")
_open_writers: weakref.WeakSet[RunStoreWriter] = weakref.WeakSet()
# Records queued in one interval that make the queue "busy" (busy_hold): a trickle is written at once.
_BUSY_GROWTH = 100


def _describe(exc: BaseException) -> str:
    """The error that explains a failed write, in one line: the driver's, when there is one."""
    root = exc.__cause__ if exc.__cause__ is not None else exc
    root = getattr(root, "orig", None) or root
    lines = str(root).strip().splitlines()
    text = f"{type(root).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:300] + "..."


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"


def _database_away(exc: BaseException) -> bool:
    """Whether ``exc`` says the database did not answer (worth waiting for), not that it refused the data."""
    if isinstance(exc, (RunStoreUnavailableError, ConnectionError, TimeoutError)):
        return True
    import sqlalchemy as sa  # loaded by then: only a store that was opened (or tried) raises

    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError))


def _seconds(key: str, default: float) -> float:
    import dask.utils

    value = settings.get(key, default)
    return float(dask.utils.parse_timedelta(value, default="s") or 0.0)


class RunStoreWriter:
    """Writes run records to a run store in batches, on its own thread; see the module docstring.

    ``store`` is an open :class:`~daskflow.runstore.store.RunStore` (the caller
    closes it), or a URL / None (``daskflow.runstore.url`` or the home's SQLite
    file), which the writer's thread opens, and closes with the writer.

    The writer writes every ``interval`` seconds, or as soon as ``batch_size``
    records wait; one transaction takes at most ``max_batch`` records, so a
    long backlog does not hold SQLite's write lock for long. Past ``max_queue``
    waiting records, ``put`` drops. ``busy_hold`` (seconds, 0: never) lets an
    interval's drain wait while the queue keeps growing (see the module
    docstring); ``batch_size``, ``flush`` and ``close`` write at once still. ``busy_timeout`` (seconds) is how long a
    write waits for another SQLite writer; it applies to a store opened here.

    ``convert``, when given, turns each batch of what was put into records, on
    the writer's thread: the caller may then put anything cheaper to make than
    a record — say ``(run, state)`` pairs — and build one snapshot per run per
    batch instead of one per state change. Its records are taken ``max_batch`` at
    a time, each chunk written before the next is built, so ``convert`` may yield
    them lazily. A ``convert`` that raises loses what it had not yet yielded of its
    batch, like a failed write.

    ``spool_folder`` (default: per store under ``daskflow.runstore.spool.folder``),
    ``spool_max_bytes`` (``daskflow.runstore.spool.max_bytes``) and
    ``retry_first``/``retry_max`` (seconds, ``daskflow.runstore.retry.*``) set
    how an outage is bridged.
    """

    def __init__(
        self,
        store: RunStore | str | None = None,
        *,
        interval: float = 0.2,
        batch_size: int = 1000,
        max_batch: int = 5_000,
        max_queue: int = 200_000,
        busy_hold: float = 0.0,
        busy_timeout: float | None = None,
        convert: Callable[[list[Any]], Iterable[Record]] | None = None,
        spool_folder: str | Path | None = None,
        spool_max_bytes: int | None = None,
        retry_first: float | None = None,
        retry_max: float | None = None,
    ) -> None:
        import dask.utils

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
        self._busy_hold = busy_hold
        self._held_since: float | None = None  # time.monotonic() of the first interval a busy queue waited
        self._seen = 0  # the queue's length when the writer last looked (busy_hold)
        self._flushes = 0  # flush() calls so far: a flush is never held back
        self._flushes_seen = 0
        self._busy_timeout = busy_timeout
        self._convert = convert
        self.spool_folder = Path(spool_folder) if spool_folder is not None else default_spool_folder(self.url)
        if spool_max_bytes is None:
            spool_max_bytes = int(dask.utils.parse_bytes(settings.get("runstore.spool.max_bytes", "256 MiB")))
        self._spool_max_bytes = spool_max_bytes
        self._retry_first = retry_first if retry_first is not None else _seconds("runstore.retry.first", 0.5)
        self._retry_max = max(retry_max if retry_max is not None else _seconds("runstore.retry.max", 5.0), 0.0)
        self._queue: deque[Any] = deque()  # records (or what convert takes) and flush markers
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the counts that put() changes: only on its overflow path
        self._overflowed = 0
        self._closed = False
        self._written = 0
        self._received = 0
        self._dropped = 0
        self._transactions = 0
        self._cpu_seconds = 0.0  # the writer thread's CPU time in its drains: its share of the GIL
        self._spooled = 0
        self._replayed = 0
        self._loss_since: float | None = None  # a run of losses: warned once, counted until a write succeeds
        self._loss_count = 0
        self._outage_since: float | None = None  # the database away: records go to the spool meanwhile
        self._spool: SpoolFile | None = None  # this writer's own spool, appended to while the outage lasts
        self._backlog: list[SpoolFile] = []  # spools to replay, oldest first (adopted orphans, then our own)
        self._retry_at = 0.0  # time.monotonic() of the next attempt to reach the database
        self._retry_wait = self._retry_first
        self._thread = threading.Thread(target=self._run, name="daskflow-runstore-writer", daemon=True)
        self._thread.start()
        _open_writers.add(self)

    def __repr__(self) -> str:
        counts = f"queued={len(self._queue)}, written={self._written}, spooled={self._spooled}, dropped={self.dropped}"
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
        self._received += 1
        if queued + 1 >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every record put before this call is written, spooled or given up; False on timeout.

        A flush also tries the database at once when records wait in a spool: it
        returns once they are written, or once that attempt failed (they stay spooled).
        """
        if not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        with self._lock:
            self._flushes += 1
        self._queue.append(done)  # markers skip the max_queue bound: a flush is never dropped
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush, stop the writer thread and close the store it opened; False if that took too long.

        Records still spooled (the database away) stay in their file, which the
        next writer of this store replays.
        """
        if self._closed:
            return not self._thread.is_alive()
        flushed = self.flush(timeout)
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        _open_writers.discard(self)
        return flushed and not self._thread.is_alive()

    @property
    def received(self) -> int:
        """Items queued by ``put`` so far (what the caller put, before ``convert``; exact when one thread puts)."""
        return self._received

    @property
    def written(self) -> int:
        """Records written so far, replayed ones included (with ``convert``: the records it built)."""
        return self._written

    @property
    def dropped(self) -> int:
        """Records given up so far: refused or past the spool's bound, and records refused by a full queue."""
        return self._dropped + self._overflowed

    @property
    def transactions(self) -> int:
        """Batches committed so far."""
        return self._transactions

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the writer's thread spent draining (building rows, writing): time it held the GIL."""
        return self._cpu_seconds

    @property
    def spooled(self) -> int:
        """Records appended to a spool file so far (the database away when they were to be written)."""
        return self._spooled

    @property
    def replayed(self) -> int:
        """Records written from spool files so far, this writer's own and adopted ones."""
        return self._replayed

    @property
    def backlog(self) -> list[Path]:
        """The spool files waiting to be replayed, oldest first."""
        return [spool.path for spool in self._backlog]

    # -- the writer's thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            # Adopt what a dead writer of this store left, and open the store at once: a spool
            # is replayed by the next writer even if that writer has nothing to write yet.
            self._adopt()
            self._catch_up(force=True, quiet=True)
            while True:
                self._wake.wait(self._timeout())
                self._wake.clear()
                if self._busy():
                    continue
                started = time.thread_time()
                self._drain()
                self._cpu_seconds += time.thread_time() - started
                if self._closed and not self._queue:
                    return
        finally:
            for spool in self._backlog:
                spool.close()  # the lock goes; the file stays for the next writer
            self._backlog.clear()
            self._spool = None
            if self._owns_store and self._store is not None:
                self._store.close()

    def _busy(self) -> bool:
        """Whether to leave the queue for another interval: it grew fast since the last look, and may wait more."""
        queued = len(self._queue)
        if (
            self._busy_hold <= 0
            or self._closed
            or self._flushes != self._flushes_seen
            or queued >= self._batch_size
            or self._backlog
            or queued - self._seen < _BUSY_GROWTH
        ):
            self._held_since = None
            self._seen = 0
            self._flushes_seen = self._flushes
            return False
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        elif now - self._held_since >= self._busy_hold:
            self._held_since = None
            self._seen = 0
            return False
        self._seen = queued
        return True

    def _timeout(self) -> float:
        if not self._backlog:
            return self._interval
        return min(self._interval, max(self._retry_at - time.monotonic(), 0.01))

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
            # A convert that holds rows back (the run history's) is asked again while it holds any.
            if batch or getattr(self._convert, "holding", False):
                self._keep(batch)
            with self._lock:
                overflowed, self._overflowed = self._overflowed, 0
            if overflowed and not self._closed:
                self._lose(overflowed, f"the queue was full ({self._max_queue} records waiting)")
            self._catch_up(force=bool(markers))
            for marker in markers:
                marker.set()
            if len(batch) < self._max_batch:
                return

    def _keep(self, batch: list[Any]) -> None:
        """Write a batch, or spool it while the database is away (and behind a spool, to keep the order).

        What ``convert`` makes of the batch is taken ``max_batch`` records at a time, each
        chunk written (or spooled) before the next is built: a batch that releases many
        rows at once (the run history's held rows of a large map) never holds them all in
        memory, nor SQLite's write lock for all of them.
        """
        if self._convert is None:
            self._keep_records(batch)
            return
        try:
            records = iter(self._convert(batch))
        except Exception as exc:  # whatever the caller's convert does, the runs go on
            self._lose(len(batch), _describe(exc))
            return
        kept = 0
        while True:
            try:
                chunk = list(itertools.islice(records, self._max_batch))
            except Exception as exc:  # the chunks already built are kept; the rest of the batch is lost
                self._lose(max(len(batch) - kept, 1), _describe(exc))
                return
            if not chunk:
                return
            kept += len(chunk)
            self._keep_records(chunk)

    def _keep_records(self, records: list[Record]) -> None:
        if not records:
            return
        if self._spool is not None:
            self._to_spool(records)
            return
        try:
            store = self._open_store()
        except Exception as exc:
            if _database_away(exc):
                self._outage(exc)
                self._to_spool(records)
            else:  # a newer schema, a bad URL: nothing to wait for
                self._lose(len(records), _describe(exc))
            return
        pending = self._write_some(store, records)
        if pending:
            self._to_spool(pending)
        else:
            self._recovered()

    def _write_some(self, store: RunStore, records: list[Record]) -> list[Record]:
        """Write ``records``; return those left unwritten because the database went away.

        A batch the database refuses for what it holds (not for being away) is
        split in halves until the refused record is found, and only that one is lost.
        """
        if not records:
            return []
        try:
            store.write(records)
        except Exception as exc:
            if _database_away(exc):
                self._outage(exc)
                return records
            if len(records) == 1:
                self._lose(1, _describe(exc))
                return []
            middle = len(records) // 2
            left = self._write_some(store, records[:middle])
            return left + records[middle:] if left else self._write_some(store, records[middle:])
        self._written += len(records)
        self._transactions += 1
        return []

    def _open_store(self) -> RunStore:
        if self._store is None:
            self._store = self._open()
            self._adopt()
        return self._store

    def _open(self) -> RunStore:
        # Imported here, on the writer's thread: SQLAlchemy and Alembic take a tenth of a
        # second to import, which neither `import daskflow` nor a flow's first put should pay.
        from daskflow.runstore.store import DEFAULT_BUSY_TIMEOUT, RunStore

        busy = DEFAULT_BUSY_TIMEOUT if self._busy_timeout is None else self._busy_timeout
        return RunStore(self.url, busy_timeout=busy)

    # -- the spool --------------------------------------------------------------------------

    def _adopt(self) -> None:
        """Queue the orphaned spool files of this store for replay, ahead of this writer's own."""
        mine = {spool.path for spool in self._backlog}
        try:
            orphans = adopt_orphans(self.spool_folder, skip=lambda path: path in mine)
        except OSError as exc:
            _log.warning("The spool folder %s could not be read (%s); spool files there wait.", self.spool_folder, exc)
            return
        if orphans:
            _log.info(
                "Found %d spool file(s) of the run store at %s left by a process that stopped (%d bytes); "
                "replaying them: %s", len(orphans), self.display_url, sum(o.size for o in orphans),
                ", ".join(o.path.name for o in orphans),
            )  # fmt: skip
            own = [spool for spool in self._backlog if spool is self._spool]
            self._backlog = [s for s in self._backlog if s is not self._spool] + orphans + own

    def _to_spool(self, records: list[Record]) -> None:
        """Append ``records`` to this writer's spool, dropping those past its bound."""
        frames: list[bytes] = []
        unspoolable = 0
        for record in records:
            try:
                frames.append(encode_frame(record))
            except (TypeError, ValueError):
                unspoolable += 1
        if unspoolable:
            self._lose(unspoolable, "records that cannot be spooled")
        try:
            if self._spool is None:
                self._spool = SpoolFile.create(self.spool_folder, self.url)
                self._backlog.append(self._spool)
            spool = self._spool
            room = self._spool_max_bytes - spool.size
            keep = 0
            size = 0
            for frame in frames:
                if size + len(frame) > room:
                    break
                size += len(frame)
                keep += 1
            if keep:
                spool.append(b"".join(frames[:keep]))
                self._spooled += keep
        except OSError as exc:
            self._lose(len(frames), f"the spool at {self.spool_folder} could not be written: {exc}")
            return
        if keep < len(frames):
            self._lose(
                len(frames) - keep,
                f"the spool file {spool.path} reached its bound of {self._spool_max_bytes} bytes "
                "(daskflow.runstore.spool.max_bytes)",
            )

    def _catch_up(self, *, force: bool, quiet: bool = False) -> None:
        """Replay the spooled records, oldest first, if the retry time has come (or ``force``)."""
        if not self._backlog and not quiet:
            return
        if not force and time.monotonic() < self._retry_at:
            return
        try:
            store = self._open_store()
        except Exception as exc:
            if not quiet and _database_away(exc):
                self._outage(exc)
            self._backoff()
            return
        while self._backlog:
            spool = self._backlog[0]
            try:
                chunk = spool.read(self._max_batch)
            except OSError as exc:
                _log.warning("The spool file %s could not be read (%s); it is left for later.", spool.path, exc)
                self._backlog.pop(0).close()
                continue
            if chunk.damaged:
                self._dropped += chunk.damaged
            pending = self._write_some(store, chunk.records)
            if pending:
                self._backoff()
                return
            self._replayed += len(chunk.records)
            spool.offset = chunk.offset
            if chunk.at_end:
                self._backlog.pop(0)
                spool.remove()
                if spool is self._spool:
                    self._spool = None
            self._keep_arrivals()
        self._recovered()

    def _keep_arrivals(self) -> None:
        """During a long replay, keep what was put meanwhile (behind the spool), so the queue stays short.

        Only up to the first flush marker: the marker waits for the replay, as flush promises.
        """
        queue = self._queue
        if len(queue) < self._batch_size:
            return
        batch: list[Any] = []
        while queue and len(batch) < self._max_batch and not isinstance(queue[0], threading.Event):
            batch.append(queue.popleft())
        if batch:
            self._keep(batch)

    def _backoff(self) -> None:
        self._retry_at = time.monotonic() + self._retry_wait
        self._retry_wait = min(self._retry_wait * 2, self._retry_max)

    def _outage(self, exc: BaseException) -> None:
        if self._outage_since is not None:
            return
        self._outage_since = time.time()
        self._retry_wait = self._retry_first
        self._backoff()
        _log.warning(
            "The run store at %s does not answer (%s). Runs go on; their history is kept in a spool file under "
            "%s and written to the database once it answers again.", self.display_url, _describe(exc),
            self.spool_folder,
        )  # fmt: skip

    def _recovered(self) -> None:
        self._retry_wait = self._retry_first
        if self._outage_since is not None:
            _log.info(
                "The run store at %s answers again after %.1f s; %s replayed from the spool so far.",
                self.display_url, time.time() - self._outage_since, _records(self._replayed),
            )  # fmt: skip
            self._outage_since = None
        if self._loss_since is not None:
            _log.info(
                "The run store at %s is written again; %s from the last %.1f s were not kept.",
                self.display_url, _records(self._loss_count), time.time() - self._loss_since,
            )  # fmt: skip
            self._loss_since = None

    def _lose(self, count: int, reason: str) -> None:
        self._dropped += count
        if self._loss_since is not None:
            self._loss_count += count
            return
        self._loss_since = time.time()
        self._loss_count = count
        since = datetime.fromtimestamp(self._loss_since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        message = (
            f"Run history was not kept: the run store at {self.display_url} could not be written "
            f"({reason}); {_records(count)} dropped. Runs go on; daskflow keeps trying and keeps "
            f"history again once the database answers (since {since}; "
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
