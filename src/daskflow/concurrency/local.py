"""Named limits, rate limits and locks within one process.

What the local runners use, and what a Dask worker falls back on for runs
that do not need the whole cluster (single flight per process). A limit is a
counting semaphore per (name, size): acquiring ``occupy`` slots takes them all
at once or waits, so two runs that each hold part of what they need can never
block each other. A rate limit of ``r`` starts per second is a token bucket of
``max(1, int(r))`` tokens, each coming back ``tokens / r`` seconds after it was
taken (so at most ``r`` starts in any second). Waits go through
:func:`daskflow.context.waiting`, so the thread pool runner lends the waiting
thread's place to other runs.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from daskflow.concurrency.limits import Limit
from daskflow.context import CANCEL_POLL_SECONDS, run_cancelled, waiting
from daskflow.exceptions import CancelledRunError

__all__ = ["LOCAL", "LocalCoordination", "bucket_shape"]


def bucket_shape(per_second: float) -> tuple[int, float]:
    """``(tokens, seconds until a taken token returns)`` of a bucket allowing ``per_second`` starts."""
    tokens = max(1, int(per_second))
    return tokens, tokens / per_second


class _Slots:
    """A counting semaphore that hands out several slots at once, or none."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self.ready = threading.Condition(threading.Lock())

    def acquire(self, occupy: int) -> None:
        with self.ready:
            if self.free >= occupy:
                self.free -= occupy
                return
        with waiting(), self.ready:
            while self.free < occupy:
                if not self.ready.wait(CANCEL_POLL_SECONDS) and run_cancelled():
                    raise CancelledRunError("the flow run was cancelled while this run waited for a concurrency slot")
            self.free -= occupy

    def release(self, occupy: int) -> None:
        with self.ready:
            self.free = min(self.size, self.free + occupy)
            self.ready.notify_all()


class _Bucket:
    """A token bucket: the times the tokens were taken, oldest first."""

    def __init__(self, per_second: float) -> None:
        self.tokens, self.period = bucket_shape(per_second)
        self.taken: collections.deque[float] = collections.deque()
        self.lock = threading.Lock()

    def take(self, occupy: int) -> None:
        for _ in range(occupy):
            while True:
                with self.lock:
                    now = time.monotonic()
                    while self.taken and now - self.taken[0] >= self.period:
                        self.taken.popleft()
                    if len(self.taken) < self.tokens:
                        self.taken.append(now)
                        break
                    pause = self.taken[0] + self.period - now
                with waiting():
                    time.sleep(pause)


class _KeyLocks:
    """Locks by key that exist only while someone holds or waits for them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            if not lock.acquire(blocking=False):
                with waiting():
                    lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class LocalCoordination:
    """Limits, rate limits and locks shared by every thread of this process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[tuple[str, int], _Slots] = {}
        self._buckets: dict[tuple[str, float], _Bucket] = {}
        self._locks = _KeyLocks()

    def acquire(self, limits: Sequence[Limit], occupy: int = 1) -> Callable[[], str | None]:
        """Take ``occupy`` slots of every limit (in the given order); returns the release
        (which has nothing to warn about here: local slots cannot time out)."""
        taken: list[_Slots] = []
        try:
            for limit in limits:
                slots = self._slots_of(limit)
                slots.acquire(occupy)
                taken.append(slots)
        except BaseException:
            for slots in reversed(taken):
                slots.release(occupy)
            raise

        def release() -> str | None:
            for slots in reversed(taken):
                slots.release(occupy)
            return None

        return release

    def take_tokens(self, name: str, per_second: float, occupy: int = 1) -> None:
        """Wait until ``occupy`` starts are allowed under the rate limit ``name``."""
        key = (name, float(per_second))
        with self._guard:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(per_second)
        bucket.take(occupy)

    def lock(self, key: str) -> AbstractContextManager[None]:
        """A lock named ``key``: identical runs in flight here compute once."""
        return self._locks.hold(key)

    def _slots_of(self, limit: Limit) -> _Slots:
        key = (limit.name, limit.size)
        slots = self._slots.get(key)
        if slots is None:
            with self._guard:
                slots = self._slots.setdefault(key, _Slots(limit.size))
        return slots


LOCAL = LocalCoordination()
