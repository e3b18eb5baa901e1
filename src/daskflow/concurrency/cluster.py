"""Named limits, rate limits and locks across a Dask cluster, on ``distributed``'s primitives.

One :class:`ClusterCoordination` lives in each worker process and holds its
``distributed.Semaphore`` objects (a semaphore keeps a periodic lease refresh
going, so they are made once per name and reused). A limit ``db`` of size 10
is the semaphore ``daskflow-limit-db-10``: every flow on the cluster that
names ``db`` with that size shares it, and a flow that changes the size gets a
semaphore of its own instead of distributed's "Inconsistent max leases". A
slot is a lease: released when its holder ends however it ends, and by the
scheduler when its worker dies and stops refreshing it
(``distributed.scheduler.locks.lease-timeout``, checked every
``lease-validation-interval``) — or at once when the scheduler removes that
worker: a lease's id names the worker that took it, and daskflow's scheduler
plugin releases a removed worker's leases (:mod:`.distributed_compat`). A worker keeps a slot its run finished with
for a few milliseconds for its next run (tiny tasks then make no round trip),
unless its runs had to wait for that limit lately (others may be waiting too).
A holder that kept a slot longer than the lease
timeout asks the scheduler whether its lease survived and warns if it did not
(the limit may then have been overbooked).

A rate limit of ``r`` per second is a semaphore of ``max(1, int(r))`` leases,
each released ``tokens / r`` seconds after it was taken, by a timer thread of
the worker: a token bucket that all workers share. Locks for single-flight
caching are spread over a fixed set of names (``daskflow-cache-<stripe>``) so
that the scheduler's table of locks stays bounded however many keys pass.
Every wait goes through :func:`daskflow.context.waiting`: the worker secedes
from its thread pool while it waits.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from distributed import Lock, Semaphore, get_client, get_worker

from daskflow.concurrency.distributed_compat import acquire_owned, lease_ids, leases_alive, release_lease_soon
from daskflow.concurrency.limits import Limit
from daskflow.concurrency.local import bucket_shape
from daskflow.context import CANCEL_POLL_SECONDS, run_cancelled, shielded, waiting
from daskflow.exceptions import CancelledRunError

__all__ = ["ClusterCoordination", "cluster_coordination"]

_log = logging.getLogger("daskflow.concurrency")
_LOCK_STRIPES = 4096
# How long a worker keeps a slot it no longer needs for its next run, before giving it back;
# and for how long after one of its runs had to wait for a slot it does not (others may wait).
_WARM_SECONDS = 0.01
_CONTENDED_SECONDS = 1.0


class _Releases:
    """A timer thread that releases rate-limit leases when their time comes."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], Any]]] = []
        self._ready = threading.Condition()
        self._count = 0
        self._thread: threading.Thread | None = None

    def at(self, moment: float, release: Callable[[], Any]) -> None:
        with self._ready:
            self._count += 1
            heapq.heappush(self._due, (moment, self._count, release))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="daskflow-rate-releases", daemon=True)
                self._thread.start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._ready.wait(None if not self._due else self._due[0][0] - time.monotonic())
                _, _, release = heapq.heappop(self._due)
            try:
                release()
            except Exception:  # the scheduler is gone; its leases went with it
                _log.debug("a rate-limit lease could not be released", exc_info=True)


class ClusterCoordination:
    """Limits, rate limits and locks shared by every worker of the cluster."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._semaphores: dict[str, Semaphore] = {}
        self._locks: dict[str, Lock] = {}
        self._releases = _Releases()
        # Per semaphore: when each slot this worker just finished with goes back to the scheduler.
        self._warm: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._waited: dict[str, float] = {}  # per semaphore: when a run here last had to wait

    # -- limits --------------------------------------------------------------------------

    def acquire(self, limits: Sequence[Limit], occupy: int = 1) -> Callable[[], str | None]:
        """Take ``occupy`` slots of every limit (in the given order); returns the release,
        which returns a warning to log if a slot's lease timed out while held."""
        held: list[tuple[Limit, Semaphore]] = []
        with shielded():  # a cancel must not land between a lease granted and `held` (see context.shielded)
            try:
                for limit in limits:
                    semaphore = self._semaphore(f"daskflow-limit-{limit.name}-{limit.size}", limit.size)
                    self._take(limit, semaphore, occupy)
                    held.append((limit, semaphore))
            except BaseException:
                self._give_back(held, occupy, time.monotonic())
                raise
        started = time.monotonic()
        return lambda: self._give_back(held, occupy, started)

    def _take(self, limit: Limit, semaphore: Semaphore, occupy: int) -> None:
        if occupy == 1:
            with self._guard:
                warm = self._warm[semaphore.name]
                if warm:  # a slot this worker just finished with: no round trip to the scheduler
                    warm.popleft()
                    return
            if not _acquire(semaphore):
                self._waited[semaphore.name] = time.monotonic()
            return
        # One gatherer at a time: two runs each holding part of what they need
        # could otherwise wait for each other forever.
        with self.lock(f"gather-{limit.name}-{limit.size}"):
            for _ in range(occupy):
                _acquire(semaphore)

    def _give_back(self, held: list[tuple[Limit, Semaphore]], occupy: int, since: float) -> str | None:
        with shielded():  # a lease taken off this process's list is always sent back
            return self._give_back_shielded(held, occupy, since)

    def _give_back_shielded(self, held: list[tuple[Limit, Semaphore]], occupy: int, since: float) -> str | None:
        # A lease can only have timed out if it was held longer than the timeout.
        long_held = time.monotonic() - since > _lease_timeout()
        warning = None
        for limit, semaphore in reversed(held):
            # The leases this process holds on the semaphore (all alike to the scheduler).
            if long_held and not _leases_alive(semaphore.name, lease_ids(semaphore)):
                warning = (
                    f"limit {limit.name!r} was overbooked: a slot timed out while this run held it (its lease "
                    f"was not refreshed within distributed.scheduler.locks.lease-timeout={_lease_timeout():g}s) "
                    "and another run took it. Raise the lease timeout, or release the GIL in long computations."
                )
            if occupy == 1:
                self._keep_warm(semaphore)
            else:
                for _ in range(occupy):
                    _release_soon(semaphore)
        return warning

    def _keep_warm(self, semaphore: Semaphore) -> None:
        """Keep a finished run's slot for this worker's next run, for :data:`_WARM_SECONDS`.

        Tiny tasks under a limit would otherwise pay two round trips to the scheduler
        each; a warm slot costs none. It still counts as taken while it waits, so a
        limit is at worst under-used for that moment, never overbooked.
        """
        now = time.monotonic()
        if now - self._waited.get(semaphore.name, -_CONTENDED_SECONDS) < _CONTENDED_SECONDS:
            _release_soon(semaphore)  # the limit is contended: the scheduler hands it on at once
            return
        due = now + _WARM_SECONDS
        with self._guard:
            self._warm[semaphore.name].append(due)
        self._releases.at(due, lambda: self._cool(semaphore))

    def _cool(self, semaphore: Semaphore) -> None:
        """Give back the warm slots whose time is up (some may have been reused meanwhile)."""
        now = time.monotonic()
        expired = 0
        with self._guard:
            warm = self._warm[semaphore.name]
            while warm and warm[0] <= now:
                warm.popleft()
                expired += 1
        for _ in range(expired):
            _release_soon(semaphore)

    # -- rate limits -----------------------------------------------------------------------

    def take_tokens(self, name: str, per_second: float, occupy: int = 1) -> None:
        """Wait until ``occupy`` starts are allowed under the rate limit ``name``, cluster-wide."""
        tokens, period = bucket_shape(per_second)
        semaphore = self._semaphore(f"daskflow-rate-{name}-{per_second:g}", tokens)
        with shielded():
            for _ in range(occupy):
                _acquire(semaphore)
                self._releases.at(time.monotonic() + period, semaphore.release)

    # -- locks -------------------------------------------------------------------------------

    @contextmanager
    def _hold(self, lock: Lock) -> Iterator[None]:
        # Shielded while the lock is taken and given back, not while it is held: the run's own
        # code, which a cancel interrupts, runs in between.
        shield = shielded()
        shield.__enter__()
        try:
            _acquire(lock)
        except BaseException:
            shield.__exit__(None, None, None)
            raise
        try:
            shield.__exit__(None, None, None)
            yield
        finally:
            with shielded():
                lock.release()

    def lock(self, key: str) -> AbstractContextManager[None]:
        """A cluster-wide lock for ``key`` (one of a fixed set of stripes: a shared stripe only costs
        concurrency, never correctness)."""
        stripe = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % _LOCK_STRIPES
        name = f"daskflow-cache-{stripe}"
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = Lock(name)
        return self._hold(lock)

    def _semaphore(self, name: str, size: int) -> Semaphore:
        with self._guard:
            semaphore = self._semaphores.get(name)
            if semaphore is None:
                semaphore = self._semaphores[name] = Semaphore(max_leases=size, name=name)
        return semaphore


def _release_soon(semaphore: Semaphore) -> None:
    """Give a lease back without waiting for the scheduler's answer.

    ``Semaphore.release`` blocks the task's thread for a round trip to the
    scheduler; the run is over, so the release is sent from the worker's event
    loop instead (the same message, the same retries). Until it arrives the slot
    counts as taken: a limit can only be under-used for that moment, never overbooked.
    """
    release_lease_soon(semaphore)


def _owner() -> str | None:
    """This worker's address: the leases it takes are named after it, so that the scheduler
    gives them back at once when it removes this worker (see distributed_compat.WorkerDeaths)."""
    try:
        return str(get_worker().address)
    except ValueError:  # not on a worker
        return None


def _acquire(semaphore: Semaphore) -> bool:
    """Acquire at once if free (True); otherwise wait outside the worker's thread pool (False)."""
    owner = _owner()
    if acquire_owned(semaphore, 0, owner):
        return True
    with waiting():
        # In steps, so a run of a cancelled flow stops waiting (a timed-out request leaves no lease).
        while not acquire_owned(semaphore, CANCEL_POLL_SECONDS, owner):
            if run_cancelled():
                raise CancelledRunError("the flow run was cancelled while this run waited for a concurrency slot")
    return False


def _lease_timeout() -> float:
    value = dask.config.get("distributed.scheduler.locks.lease-timeout")
    return float("inf") if value == "inf" else float(parse_timedelta(value, default="s"))


def _leases_alive(name: str, leases: list[str]) -> bool:
    """False if the scheduler lost one of ``leases`` or now counts more leases than slots."""

    try:
        return bool(get_client().run_on_scheduler(leases_alive, name=name, leases=leases))
    except Exception:  # cannot ask: say nothing rather than cry wolf
        return True


_coordination: ClusterCoordination | None = None
_coordination_lock = threading.Lock()


def cluster_coordination() -> ClusterCoordination:
    """This worker process's coordination (made on first use)."""
    global _coordination
    if _coordination is None:
        with _coordination_lock:
            if _coordination is None:
                _coordination = ClusterCoordination()
    return _coordination
