"""Every private ``distributed`` detail daskflow relies on, in one place.

``distributed`` has no public API for a few things an orchestrator needs: a
semaphore lease released without waiting for the scheduler's answer, the
scheduler's table of leases, the threads a worker runs its tasks in, how many
times a worker died under a task, and the text of a few of its error messages.
Each is reached only through a function here, so an upgrade that moves one
breaks one small module, and ``tests/test_compat.py`` pins each of them against
the installed version (CI runs it against the oldest and the newest
``distributed`` that ``pyproject.toml`` allows).

:class:`WorkerDeaths`, a scheduler plugin, does two things when a worker dies:

- It counts the death as an attempt of the daskflow tasks it was running.
  When the scheduler takes such a task back (``processing -> released``) it
  has already raised the task's ``suspicious`` count; the plugin copies that
  count into the task's annotations, which travel with the task to the next
  worker (:func:`current_task_crashes` reads them there). So the worker's
  engine knows that its attempt follows one that crashed, even when the
  scheduler re-ran the task by itself under
  ``distributed.scheduler.allowed-failures``.
- It gives back at once the concurrency slots (semaphore leases) the dead
  worker held, instead of after ``distributed.scheduler.locks.lease-timeout``.
  A lease does not say who holds it, so daskflow takes its leases with ids
  that start with the worker's address (:func:`acquire_owned`).
  A dead worker's request for a slot can still be waiting on the scheduler
  when the worker is removed (the scheduler's ``semaphore_acquire`` handler
  waits there for a free slot and does not notice that its caller is gone);
  it then takes the very slot that the removal freed, for a worker that will
  never run or refresh it. So the plugin remembers the removed workers and,
  every :data:`SWEEP_SECONDS`, releases any lease one of them took since.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from distributed import Semaphore
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_comm import retry_operation
from tornado.ioloop import PeriodicCallback

__all__ = [
    "CRASHES_ANNOTATION",
    "MARK_ANNOTATION",
    "NO_WORKER",
    "SWEEP_SECONDS",
    "WorkerDeaths",
    "acquire_owned",
    "active_task_threads",
    "WAITING_TOPIC",
    "current_task_crashes",
    "died_waiting",
    "mark_waiting",
    "graph_deserialization_failed",
    "install_crash_counter",
    "killed_worker_address",
    "killed_worker_deaths",
    "killed_worker_task",
    "lease_ids",
    "leases_alive",
    "pickling_failed",
    "release_lease_soon",
    "stuck_keys",
    "UNKNOWN",
    "unknown_keys",
]

_log = logging.getLogger("daskflow.dask")

MARK_ANNOTATION = "daskflow"  # set on every task daskflow submits
CRASHES_ANNOTATION = "daskflow-crashes"  # how many workers died running this Dask task so far
_PLUGIN_NAME = "daskflow-worker-deaths"
WAITING_TOPIC = "daskflow-waiting"  # a task tells the scheduler that it waits (not runs) from now, or no longer
_OWNED_PREFIX = "daskflow-"  # the semaphores (limits, rate limits, locks) whose leases say their owner
_OWNER_SEP = "#"
# How often the scheduler looks for slots granted to removed workers, and how long it remembers one.
SWEEP_SECONDS = 0.25
_REMOVED_MEMORY_SECONDS = 600.0


class WorkerDeaths(SchedulerPlugin):
    """On the scheduler: count worker deaths as attempts, and free dead workers' slots at once."""

    idempotent = True  # one per scheduler, however many clients register it

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.waiting: set[Any] = set()  # daskflow tasks that wait (seceded) rather than run an attempt
        self.died_waiting: set[Any] = set()  # erred tasks whose last worker died while they waited
        self.removed: dict[str, float] = {}  # removed worker address -> when (a late grant to it is a leak)

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != WAITING_TOPIC:
            return
        key, waiting = msg
        if waiting:
            self.waiting.add(key)
        else:
            self.waiting.discard(key)

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        # The scheduler stops its periodic callbacks when it closes.
        sweep = PeriodicCallback(self._sweep, SWEEP_SECONDS * 1000)
        scheduler.periodic_callbacks["daskflow-removed-leases"] = sweep
        sweep.start()

    def sweep_removed(self) -> int:
        """Release the leases granted to removed workers after their removal; how many."""
        if self.scheduler is None or not self.removed:
            return 0
        now = time.monotonic()
        for worker in [w for w, when in self.removed.items() if now - when > _REMOVED_MEMORY_SECONDS]:
            del self.removed[worker]
        released = sum(release_leases_of(self.scheduler, worker) for worker in list(self.removed))
        if released:
            _log.info("released %d concurrency slot(s) granted to removed workers after their removal", released)
        return released

    def _sweep(self) -> None:
        self.sweep_removed()

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.removed.pop(worker, None)  # back under the same address: its leases are its own again

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start != "processing" or finish not in ("released", "waiting", "erred") or self.scheduler is None:
            return
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        if key in self.waiting:
            # It waited (for a slot, a lock, a retry's delay): no attempt was running, so the
            # death is not one; Dask's own count (allowed-failures) is given back too.
            self.waiting.discard(key)
            if finish == "erred":
                self.died_waiting.add(key)
            elif ts.suspicious:
                ts.suspicious -= 1
                ts.prefix.suspicious -= 1
            return
        self.died_waiting.discard(key)
        if not ts.suspicious:
            return
        annotations = ts.annotations or {}
        if MARK_ANNOTATION in annotations and annotations.get(CRASHES_ANNOTATION) != ts.suspicious:
            # A new dict: annotations may be shared by every task of one graph.
            ts.annotations = {**annotations, CRASHES_ANNOTATION: ts.suspicious}

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.removed[worker] = time.monotonic()
        released = release_leases_of(scheduler, worker)
        if released:
            _log.info("released %d concurrency slot(s) held by the removed worker %s", released, worker)


def release_leases_of(scheduler: Any, worker: str) -> int:
    """On the scheduler: release every daskflow lease taken by ``worker``; how many there were."""
    extension = scheduler.extensions.get("semaphores")
    if extension is None:
        return 0
    prefix = worker + _OWNER_SEP
    released = 0
    for name in [name for name in extension.leases if str(name).startswith(_OWNED_PREFIX)]:
        for lease_id in [lease for lease in extension.leases[name] if str(lease).startswith(prefix)]:
            extension._release_value(name=name, lease_id=lease_id)  # wakes the waiters, as a release does
            released += 1
    return released


def install_crash_counter(client: Any) -> bool:
    """Register :class:`WorkerDeaths` on the client's scheduler (once); False if it cannot be."""
    try:
        client.register_plugin(WorkerDeaths(), name=_PLUGIN_NAME)
        return True
    except Exception:  # e.g. a scheduler without daskflow: deaths are then counted only when Dask gives up
        _log.warning(
            "could not register daskflow's scheduler plugin; a worker death that the scheduler retries by "
            "itself (distributed.scheduler.allowed-failures) will not count as an attempt, and a dead "
            "worker's concurrency slots come back only after distributed.scheduler.locks.lease-timeout",
            exc_info=True,
        )
        return False


def mark_waiting(waiting: bool) -> None:
    """On a worker, inside a daskflow task: tell the scheduler's plugin that the task waits, or runs again."""
    from distributed import get_worker

    try:
        worker = get_worker()
        worker.log_event(WAITING_TOPIC, [worker.get_current_task(), waiting])
    except Exception:  # not in a task on a worker, or the worker is closing: nothing to tell
        pass


def died_waiting(dask_scheduler: Any, key: Any) -> bool:
    """On the scheduler: whether the erred task ``key``'s worker died while it waited (not an attempt)."""
    plugin = dask_scheduler.plugins.get(_PLUGIN_NAME)
    return bool(plugin is not None and key in getattr(plugin, "died_waiting", ()))


def current_task_crashes() -> int:
    """On a worker, inside a task: how many workers died running this Dask task before."""
    from distributed import get_worker

    try:
        worker = get_worker()
        ts = worker.state.tasks.get(worker.get_current_task())
    except ValueError:  # not in a task on a worker
        return 0
    annotations = getattr(ts, "annotations", None) or {}
    return int(annotations.get(CRASHES_ANNOTATION, 0))


def killed_worker_deaths(exc: BaseException) -> int:
    """How many workers died running the task before Dask gave up with this ``KilledWorker``."""
    allowed = getattr(exc, "allowed_failures", None)
    return int(allowed) + 1 if isinstance(allowed, int) else 1


def killed_worker_task(exc: BaseException) -> Any:
    """The key of the task whose workers died (a run's own, or one it depends on)."""
    return getattr(exc, "task", None)


def killed_worker_address(exc: BaseException) -> str | None:
    last = getattr(exc, "last_worker", None)
    return getattr(last, "address", None)


# -- semaphores ----------------------------------------------------------------------------


async def _acquire_owned(semaphore: Semaphore, timeout: float | None, owner: str) -> bool:
    await semaphore
    # What Semaphore._acquire does, with a lease id that names its owner. A unique id per
    # request keeps the retried request idempotent on the scheduler.
    lease_id = f"{owner}{_OWNER_SEP}{uuid.uuid4().hex}"
    result = await retry_operation(
        semaphore.scheduler.semaphore_acquire,
        name=semaphore.name,
        timeout=timeout,
        lease_id=lease_id,
        operation=f"semaphore acquire: id={semaphore.id}, lease_id={lease_id}, name={semaphore.name}",
    )
    if result:
        semaphore._leases.append(lease_id)
    return bool(result)


def acquire_owned(semaphore: Semaphore, timeout: float | None, owner: str | None) -> bool:
    """``semaphore.acquire(timeout)``, the lease named after ``owner`` (a worker's address) if given."""
    if owner is None:
        return bool(semaphore.acquire(timeout=timeout))
    semaphore._verify_running()
    return bool(semaphore.sync(_acquire_owned, semaphore, timeout, owner))


def lease_ids(semaphore: Semaphore) -> list[str]:
    """The ids of the leases this process holds on ``semaphore``."""
    return list(semaphore._leases)


def release_lease_soon(semaphore: Semaphore) -> None:
    """Give one lease back from the worker's event loop, without waiting for the answer.

    What ``Semaphore.release`` does, minus the round trip that would block the
    task's thread: until the message arrives the slot counts as taken, so a
    limit can only be under-used for that moment, never overbooked.
    """
    lease_id = semaphore._leases.popleft()
    semaphore.loop.add_callback(semaphore._release, lease_id)


def leases_alive(dask_scheduler: Any, name: str, leases: Iterable[str]) -> bool:
    """On the scheduler: whether every lease is still known and the semaphore is not overbooked."""
    extension = dask_scheduler.extensions["semaphores"]
    known = extension.leases.get(name, {})
    # A timed-out lease that its holder refreshes later comes back: then there are
    # more leases than slots, which is the overbooking itself.
    return all(lease in known for lease in leases) and len(known) <= extension.max_leases.get(name, len(known))


def unknown_keys(dask_scheduler: Any, keys: list[Any]) -> list[Any]:
    """On the scheduler: those of ``keys`` it has no task for (never received, or forgotten)."""
    tasks = dask_scheduler.tasks
    return [key for key in keys if key not in tasks]


UNKNOWN = "unknown"
NO_WORKER = "no-worker"


def stuck_keys(dask_scheduler: Any, keys: list[Any]) -> list[tuple[Any, str]]:
    """On the scheduler: those of ``keys`` that cannot make progress, each with why.

    :data:`UNKNOWN`: it has no task for the key (never received, or forgotten).
    :data:`NO_WORKER`: no worker can run it: the task waits in ``no-worker``, or the
    cluster has no running worker at all (every nanny gave up, an adaptive cluster at
    zero), so that nothing it waits for can run either. Either would leave the
    client's future pending forever; the client ends the run after a bound.
    """
    tasks = dask_scheduler.tasks
    # ``running`` is the set of workers that take tasks (not paused, not closing).
    idle_cluster = not getattr(dask_scheduler, "running", dask_scheduler.workers)
    stuck: list[tuple[Any, str]] = []
    for key in keys:
        ts = tasks.get(key)
        if ts is None:
            stuck.append((key, UNKNOWN))
        elif ts.state == "no-worker" or (idle_cluster and ts.state in ("waiting", "queued", "released")):
            stuck.append((key, NO_WORKER))
    return stuck


def active_task_threads(worker: Any, keys: Iterable[Any], exclude: set[int]) -> list[int]:
    """On a worker: the ids of the threads running tasks with these keys (not those in ``exclude``)."""
    wanted = set(keys)
    with worker.active_threads_lock:
        return [t for t, key in worker.active_threads.items() if key in wanted and t not in exclude]


# -- messages ------------------------------------------------------------------------------


def pickling_failed(exc: BaseException) -> bool:
    """Whether ``client.map``/``submit`` raised because an argument could not be pickled."""
    return isinstance(exc, TypeError) and "serialize" in str(exc)


def graph_deserialization_failed(exc: BaseException) -> bool:
    """Whether a task erred because the scheduler or a worker could not unpickle its graph."""
    return "deserializ" in str(exc)
