"""Cache writes behind the value: one bounded background writer per process.

A cached task's value is wanted downstream at once; its cache entry is wanted
only by a later run. So the engine hands the value on as soon as it exists and
gives the entry's write to this process's :class:`WriteBehind` (the client's
for the sequential and thread-pool runners, each Dask worker's own on Dask).
The entry's data version is chosen before the write is queued
(:func:`~daskflow.results.entries.new_version`), so runs downstream key their
inputs by it at once, exactly as if the entry had landed.

What the writer keeps, all under one lock:

* **the queue**: at most ``max_pending`` writes queued or in progress. A
  write offered past that is refused (:meth:`WriteBehind.submit` returns
  False) and the run writes its entry itself, in its own thread, as it did
  before write-behind: memory held by values waiting to be written stays
  bounded, and a flow that makes values faster than storage takes them slows
  to storage's pace instead of growing a queue.
* **the values in flight**, by ``(storage URL, key)``: a lookup in this
  process of a key whose write has not landed finds the value
  (:meth:`WriteBehind.pending`), so identical runs in one process still
  compute once. Other processes see a miss or the whole entry, never part
  of one: the entry is published atomically (see :mod:`.entries`).
* **a ledger per owner** (the flow run that made the writes): how many are
  still in flight, how many landed, which failed. :meth:`WriteBehind.drain`
  waits, bounded, until the owner's writes are all done and returns a
  :class:`WriteReport`; the flow engine drains before its run may end, so a
  flow reported ``Completed`` has its entries in storage.

A write is a callable returning True when its entry landed. It must not
raise: it says why it failed in its run's log itself (the engine passes
:func:`daskflow.engine.caching.write_entry`); whatever escapes anyway is a
failure too. The threads of a ``concurrent.futures`` pool are joined when the
interpreter exits, so a process that ends normally finishes its writes; a
killed one leaves at most a temp file, which ``ResultStore.prune`` removes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dask.utils import parse_timedelta

from daskflow import settings

__all__ = ["WriteBehind", "WriteReport", "drain", "drain_timeout", "enabled", "pending", "writer"]

_log = logging.getLogger("daskflow.results")
_LEDGERS_KEPT = 1024  # owners whose drain never came (a run that ended elsewhere): the oldest are forgotten


@dataclass(frozen=True)
class WriteReport:
    """What became of one owner's writes in one process (or, summed with ``+``, in several).

    ``landed``: entries written. ``failed``: a description of each write that
    failed (its run and key; the reason is in the run's log). ``unfinished``:
    writes still in flight when the drain's time ran out (they land later, or
    never; no partial entry is ever visible).
    """

    landed: int = 0
    failed: tuple[str, ...] = ()
    unfinished: int = 0

    def __add__(self, other: WriteReport) -> WriteReport:
        return WriteReport(self.landed + other.landed, self.failed + other.failed, self.unfinished + other.unfinished)

    @property
    def total(self) -> int:
        return self.landed + len(self.failed) + self.unfinished


@dataclass
class _Ledger:
    in_flight: int = 0
    landed: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class _Job:
    owners: list[str]  # the flow run that made the write, and those that took its value in flight
    slot: tuple[str, str]
    value: Any
    version: str
    write: Callable[[], bool]
    what: str


class WriteBehind:
    """A bounded background writer (see the module docstring)."""

    def __init__(self, max_pending: int = 16, threads: int = 1) -> None:
        if max_pending < 1 or threads < 1:
            raise ValueError(f"WriteBehind needs max_pending >= 1 and threads >= 1, got {max_pending}, {threads}")
        self.max_pending = max_pending
        self.threads = threads
        self._changed = threading.Condition(threading.Lock())
        self._queued = 0
        self._values: dict[tuple[str, str], _Job] = {}
        self._ledgers: collections.OrderedDict[str, _Ledger] = collections.OrderedDict()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(
        self, owner: str, slot: tuple[str, str], value: Any, version: str, write: Callable[[], bool], what: str
    ) -> bool:
        """Queue ``write`` (of ``value``, as ``version``, under ``slot``) for ``owner``; False if the queue is full.

        ``what`` names the write in a failure's report (the task run and its key).
        """
        job = _Job([owner], slot, value, version, write, what)
        with self._changed:
            if self._queued >= self.max_pending:
                return False
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="daskflow-write")
            self._queued += 1
            self._values[slot] = job
            self._ledger(owner).in_flight += 1
            pool = self._pool
        try:
            pool.submit(self._run, job)
        except RuntimeError:  # the interpreter is shutting down: no new threads; the caller writes itself
            self._done(job, landed=None)
            return False
        return True

    def pending(self, slot: tuple[str, str], owner: str | None = None) -> tuple[Any, str] | None:
        """``(value, version)`` of the write under ``slot`` not landed yet in this process, or None.

        ``owner`` (a flow run taking the value) then waits for that write too
        when it drains, as if it had made it: a run it reports as a hit has its
        entry in storage when it ends.
        """
        with self._changed:
            job = self._values.get(slot)
            if job is None:
                return None
            if owner is not None and owner not in job.owners:
                job.owners.append(owner)
                self._ledger(owner).in_flight += 1
            return job.value, job.version

    def _ledger(self, owner: str) -> _Ledger:
        ledger = self._ledgers.get(owner)
        if ledger is None:
            ledger = self._ledgers[owner] = _Ledger()
            while len(self._ledgers) > _LEDGERS_KEPT:
                self._ledgers.popitem(last=False)
        return ledger

    def drain(self, owner: str, timeout: float | None = None) -> WriteReport:
        """Wait until every write of ``owner`` landed or failed (at most ``timeout`` seconds); what became of them.

        The owner is forgotten once all its writes are done, so a second drain
        reports nothing new.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            ledger = self._ledgers.get(owner)
            if ledger is None:
                return WriteReport()
            while ledger.in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
            report = WriteReport(ledger.landed, tuple(ledger.failed), ledger.in_flight)
            if ledger.in_flight:  # still going: later writes are reported by a later drain
                ledger.landed, ledger.failed = 0, []
            else:
                self._ledgers.pop(owner, None)
        return report

    @property
    def queued(self) -> int:
        """Writes queued or in progress now."""
        return self._queued

    def _run(self, job: _Job) -> None:
        landed: bool | None = False
        try:
            landed = bool(job.write())
        except BaseException:  # the write should say why itself; anything else is a failure too
            _log.exception("a cache write behind the value failed: %s", job.what)
        finally:
            self._done(job, landed)

    def _done(self, job: _Job, landed: bool | None) -> None:
        """Account for ``job``: landed (True), failed (False), or never started (None)."""
        with self._changed:
            self._queued -= 1
            if self._values.get(job.slot) is job:
                del self._values[job.slot]
            for owner in job.owners:
                ledger = self._ledgers.get(owner)
                if ledger is None:
                    continue
                ledger.in_flight -= 1
                if landed:
                    ledger.landed += 1
                elif landed is not None:
                    ledger.failed.append(job.what)
            self._changed.notify_all()


_writer: WriteBehind | None = None
_writer_lock = threading.Lock()


def enabled() -> bool:
    """Whether cache entries are written behind the value (dask.config ``daskflow.results.write_behind.enabled``)."""
    return bool(settings.get("results.write_behind.enabled", True))


def writer() -> WriteBehind:
    """This process's writer, made on first use from dask.config ``daskflow.results.write_behind``."""
    global _writer
    if _writer is None:
        with _writer_lock:
            if _writer is None:
                _writer = WriteBehind(
                    int(settings.get("results.write_behind.max_pending", 16)),
                    int(settings.get("results.write_behind.threads", 1)),
                )
    return _writer


def pending(slot: tuple[str, str], owner: str | None = None) -> tuple[Any, str] | None:
    """``(value, version)`` of a write under ``slot`` not landed yet in this process (see :meth:`WriteBehind.pending`)."""
    return None if _writer is None else _writer.pending(slot, owner)


def drain(owner: str, timeout: float | None = None) -> WriteReport:
    """Drain this process's writes of ``owner`` (see :meth:`WriteBehind.drain`); ``timeout`` defaults to
    dask.config ``daskflow.results.write_behind.drain_timeout``. Nothing to wait for if no write was made here."""
    if _writer is None:
        return WriteReport()
    if timeout is None:
        timeout = drain_timeout()
    return _writer.drain(owner, timeout)


def drain_timeout() -> float:
    """Seconds a flow run waits for its cache writes at its end (``daskflow.results.write_behind.drain_timeout``)."""
    return float(parse_timedelta(settings.get("results.write_behind.drain_timeout", "300s")))
