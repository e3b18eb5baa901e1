"""What the Dask runner does when a run's Dask task fails: the third layer of :class:`~.dask.DaskTaskRunner`.

The engine decides, the runner reports. A Dask task that erred is looked at
once, by the thread that waited for it (:meth:`DaskRecovering.recover`): a
broken upstream is recovered first, code the cluster lacks is shipped, a
worker death under the run is one attempt, started again at once as a new Dask
task that carries the crash's cause so that the worker's engine judges it by
the task's policy. A run that reported ``Completed`` and whose value died with
its worker is computed again by Dask's own retry of the same key
(:meth:`DaskRecovering.rerun_lost`). A wait never hangs on a task the scheduler
lost or no worker can take: :meth:`DaskRecovering.wait_watched` asks the
scheduler in steps, and ends such a run ``Crashed`` after
``daskflow.dask.lost_timeout``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from distributed import KilledWorker

from daskflow.concurrency.distributed_compat import (
    NO_WORKER,
    died_waiting,
    graph_deserialization_failed,
    killed_worker_address,
    killed_worker_deaths,
    killed_worker_task,
    stuck_keys,
)
from daskflow.engine import TaskRunEngine
from daskflow.states import Cancelled, Crashed, Failed, NotReady, State
from daskflow.task_runners.dask_events import forget_crashes
from daskflow.task_runners.dask_futures import DaskFuture
from daskflow.task_runners.dask_shipping import code_missing_message, ship_missing
from daskflow.task_runners.dask_submit import DaskSubmitting

__all__ = ["DaskRecovering"]

_log = logging.getLogger("daskflow.dask")
_LOST_CHECKS = 4  # how many times per daskflow.dask.lost_timeout a wait asks the scheduler what it lost


class DaskRecovering(DaskSubmitting):
    """Recovery of failed and lost runs (state set by :meth:`.dask.DaskTaskRunner.__init__`)."""

    _cancelled: bool
    _recovery_lock: threading.Lock
    _recovering: dict[int, threading.Event]  # id(future) -> set when the thread recovering it is done
    _unknown_since: dict[Any, float]  # Dask key -> when the scheduler was first found not to know it
    _resubmits: int

    def recover(self, future: DaskFuture) -> bool:
        """Handle an erred Dask future. True if it was resubmitted, False if it is settled.

        Never blocks for long: a crashed run is started again at once and its
        worker's engine judges the crash (and waits the retry delay there), so
        runs that crashed together wait their delays together. One thread
        recovers a future; others that find it erred meanwhile wait for that.
        """
        with self._recovery_lock:
            if future._settled is not None or future.dask_future.status not in ("error", "cancelled"):
                return future._settled is None
            claim = self._recovering.get(id(future))
            mine = claim is None
            if claim is None:
                claim = self._recovering[id(future)] = threading.Event()
        if not mine:
            claim.wait()
            return future._settled is None
        try:
            return self._recover(future)
        finally:
            with self._recovery_lock:
                del self._recovering[id(future)]
            claim.set()

    def rerun_lost(self, future: DaskFuture) -> bool:
        """Have Dask compute again the value of a run whose worker reported it ``Completed`` and then
        died before Dask took the value (the report goes first, from the task's thread; the
        scheduler then counts the task as killed with its worker, and it errs).

        True if the value is being computed again (by this call, by another thread's, or by Dask
        itself): fetch it again. False if that does not apply (cancelled, the runner shut down,
        the value fetched already, the run not ``Completed``).

        Dask recomputes the erred key from its own graph (``client.retry``), which still holds
        the run's arguments: the client let its own copy go when the end was reported, so a new
        submission of ``future.call`` would run the task without them. The recompute is the same
        Dask task, so its events are the run's: the event router records it as one more attempt
        (:mod:`.dask_events`, ``AwaitingRecompute`` then ``Retrying`` then its end), and the value
        fetched is that attempt's. It is not a crash of the attempt that reported its end (that
        one ended; its value was lost, as when a worker holding a value dies), so the scheduler's
        count of the deaths under the task is not handed to the recompute.
        """
        client = self.client
        with self._recovery_lock:  # one thread asks for the recompute; the others find it under way
            settled = future._settled
            if (
                self._cancelled
                or client is None
                or settled is None
                or future._fetched
                or not settled.is_completed()
                or future.task_run.id not in self._router.settled  # its re-run could not be recorded
            ):
                return False
            status = future.dask_future.status
            if status != "error":
                return status in ("pending", "lost", "finished")
            key = future.dask_future.key
            client.run_on_scheduler(forget_crashes, key=key)
            client.retry([future.dask_future])
        _log.info("the Dask worker holding the value of task run %r died before Dask took it; "
                  "Dask computes it again (key %r)", future.task_run.name, key)  # fmt: skip
        return True

    def _recover(self, future: DaskFuture) -> bool:
        run = future.task_run
        engine = TaskRunEngine(future.call)
        if self._cancelled or future.dask_future.status == "cancelled":
            engine.finish(Cancelled("the Dask task was cancelled"))
            future.settle(run.state)
            return False
        broken = [up for up in future.upstreams if up.dask_future.status in ("error", "cancelled")]
        if broken:
            keys = [up.dask_future.key for up in broken]
            for up in broken:
                self.recover(up)
            # (``state`` of an upstream that completed and whose task then broke: its value computed
            # again by Dask, see rerun_lost; Crashed if it could not be.)
            failed = [up for up in broken if up._settled is not None and not up.state.is_completed()]
            if failed:
                engine.finish(
                    NotReady(f"upstream task run {failed[0].task_run.name!r} ended {failed[0].state.name}"),
                    hooks=False,
                )
                future.settle(run.state)
                return False
            if all(up.dask_future.key == key and up.dask_future.status != "error" for up, key in zip(broken, keys)):
                # Each was computed again under its own key (Dask's retry), which brings the erred Dask
                # tasks that depend on it back too: this run's own, with its arguments. Resubmitting
                # would run it twice; its client future turns pending when the scheduler's notice comes.
                if self._await_retried(future):
                    return True
            self._resubmit(future)  # on the upstreams' new Dask tasks: not an attempt of this run
            return True
        exc = future.dask_future.exception()
        if isinstance(exc, ModuleNotFoundError) and ship_missing(exc.name):
            self._resubmit(future)  # the module goes by value now: not a retry of the task
            return True
        if isinstance(exc, ModuleNotFoundError) or (exc is not None and graph_deserialization_failed(exc)):
            engine.finish(Failed(code_missing_message(future.call.task, exc), exc))
            future.settle(run.state)
            return False
        if isinstance(exc, KilledWorker) and killed_worker_task(exc) != future.dask_future.key:
            # What it depends on (the definition a submission ships once, an item of a list) was
            # lost with its workers: not an attempt of this run. Started again on fresh dependencies.
            self._resubmit(future)
            return True
        if isinstance(exc, KilledWorker) and self._died_waiting(future):
            # Its worker died while it waited for a slot, a lock or a retry's delay: not an attempt.
            self._resubmit(future)
            return True
        if isinstance(exc, KilledWorker):
            where = killed_worker_address(exc)
            message = f"the Dask worker running task run {run.name!r} died{f' ({where})' if where else ''}; the run crashed with it"
            deaths = killed_worker_deaths(exc)
        else:
            message = f"Dask could not run task run {run.name!r}: {type(exc).__name__}: {exc}"
            deaths = 1
        # Each death is one attempt; the engine judges the crash by the task's policy.
        future.attempts += deaths
        run.run_count = max(run.run_count, future.attempts)
        if future.attempts > future.call.task.options.retries:
            # No retry is left whatever the policy says: the engine ends the run here rather
            # than on a worker (which also ends a fault that strikes before the engine runs).
            engine.handle_crash(message)
            future.settle(run.state)
            return False
        self._resubmit(future, crash=message)  # its worker's engine judges the crash first
        return True

    def _await_retried(self, future: DaskFuture) -> bool:
        """Wait (bounded) for the scheduler's notice that it runs the erred Dask task of ``future``
        again (it sends it when it retries the task's erred dependency); False if none came."""
        deadline = time.monotonic() + self._lost_timeout
        while future.dask_future.status == "error":
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)  # the notice is a message on the client's stream; distributed offers no wait for it
        return True

    def _died_waiting(self, future: DaskFuture) -> bool:
        client = self.client
        if client is None:
            return False
        try:
            return bool(client.run_on_scheduler(died_waiting, key=future.dask_future.key))
        except Exception:  # cannot ask: count the death, as Dask does
            return False

    def recover_erred(self) -> None:
        """Recover every run whose Dask task erred, without waiting for any.

        Called when one erred run is found: the runs that crashed with it (one worker
        death takes all its runs) start again together, not each when it is waited for.
        """
        for future in list(self._futures):
            if future._settled is None and future.dask_future.status in ("error", "cancelled"):
                self.recover(future)

    def _resubmit(self, future: DaskFuture, crash: str | None = None) -> None:
        """Start the run again as a new Dask task, after ``future.attempts`` attempts (the last
        of which crashed, with ``crash`` as its cause, if given)."""
        run = future.task_run
        self._resubmits += 1
        key = f"{run.task_name}-{run.id.replace('-', '')}-r{self._resubmits}"
        self._submit_group([future.call], keys=[key], resume=[(future.attempts, crash)], into=[future])

    def wait_watched(self, futures: Sequence[DaskFuture], timeout: float | None = None) -> None:
        """Wait for runs' Dask tasks; a run whose task the scheduler lost meanwhile ends ``Crashed``.

        A task the scheduler does not know (its graph never arrived or could not be
        used, or the scheduler lost it) would leave its future pending forever. So
        the wait is cut in steps, and after each the scheduler is asked which of the
        pending tasks it knows; a task unknown for ``daskflow.dask.lost_timeout``
        ends its run with a message naming it. Raises ``TimeoutError`` after ``timeout``.
        """
        bound = self._lost_timeout
        step = max(bound / _LOST_CHECKS, 0.05)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pending = [f for f in futures if f._settled is None]
            if not pending:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{len(pending)} runs unfinished after {timeout} s")
            try:
                self.wait_dask(
                    [f.dask_future for f in pending], timeout=step if remaining is None else min(step, remaining)
                )
                return
            except TimeoutError:
                self._end_lost([f for f in pending if f.dask_future.status == "pending"], bound)

    def _end_lost(self, pending: list[DaskFuture], bound: float) -> None:
        """End the runs whose Dask tasks could not make progress for ``bound`` seconds.

        Stuck is what the scheduler says (:func:`~daskflow.concurrency.distributed_compat.stuck_keys`):
        it does not know the task, or no worker can run it (none at all, or none it may go to).
        """
        client = self.client
        if client is None or not pending:
            return
        try:
            stuck = dict(client.run_on_scheduler(stuck_keys, keys=[f.dask_future.key for f in pending]))
        except Exception:  # the scheduler does not answer: the connection's own timeouts apply
            _log.debug("could not ask the scheduler which tasks it knows", exc_info=True)
            return
        now = time.monotonic()
        since = self._unknown_since
        for future in pending:
            key = future.dask_future.key
            why = stuck.get(key)
            if why is None:
                since.pop(key, None)
                continue
            first = since.setdefault(key, now)
            if now - first < bound:
                continue
            del since[key]
            run = future.task_run
            if why == NO_WORKER:
                message = (
                    f"task run {run.name!r} could not run: no Dask worker could take its task {key!r} for "
                    f"{now - first:.3g} s (the cluster has no running worker, e.g. every nanny gave up "
                    "restarting its worker, or none has the resources or restrictions the task asks for). "
                    "Check the workers' logs; the bound is dask.config daskflow.dask.lost_timeout."
                )
            else:
                message = (
                    f"task run {run.name!r} never started: the Dask scheduler has not known its task {key!r} for "
                    f"{now - first:.3g} s (the graph did not reach the scheduler or could not be used there, or "
                    "the scheduler lost it, e.g. in a restart). See the scheduler's log; the bound is dask.config "
                    "daskflow.dask.lost_timeout."
                )
            engine = TaskRunEngine(future.call)
            engine.logger.error("%s", message)
            engine.finish(Crashed(message))
            future.settle(run.state)
            client.cancel([future.dask_future])

    def _wait_recomputes(self) -> None:
        """Wait (bounded by ``daskflow.dask.lost_timeout``) until the runs Dask computes again have ended.

        A run that reported its end and whose value was lost with its worker is
        computed again by Dask while this flow holds its future: a new attempt of
        the run, which the event router records (:mod:`.dask_events`). The flow
        run must not end in the middle of it: the history would keep it
        ``Running``, and a body it ran after the flow let go would be recorded
        nowhere. The client learns of the loss (the future turns ``lost``) ahead
        of the recompute's first event, and of its end after its last.
        """
        # "lost": Dask computes it again by itself; "pending": a recompute asked for (rerun_lost).
        lost = [
            f.dask_future
            for f in self._futures
            if f._settled is not None and f.dask_future.status in ("lost", "pending")
        ]
        if not lost:
            return
        try:
            self.wait_dask(lost, timeout=self._lost_timeout)
        except TimeoutError:
            _log.warning(
                "%d values lost with their Dask workers were not computed again within %g s "
                "(dask.config daskflow.dask.lost_timeout)", len(lost), self._lost_timeout,
            )  # fmt: skip

    def _end_recomputes(self) -> None:
        """Give a final state to the runs whose recompute had not ended when the runner shut down."""
        router = self._router
        for future in self._futures:
            run = future.task_run
            settled = future._settled
            if run.id in router.recomputing and settled is not None and not run.state.is_final():
                run.set_state(
                    State(
                        settled.type,
                        settled.name,
                        "the flow run ended while Dask computed this run again; its first outcome stands",
                    )
                )
