"""How a flow run's Dask runner ends: the last layer of :class:`~.dask.DaskTaskRunner`.

Before a flow run ends, every run it submitted has ended and been reported:
:meth:`DaskEnding.shutdown` waits for the Dask tasks, then for the final states
their workers sent (:meth:`DaskEnding.await_reports`, bounded, flushing the
workers when one is missing). :meth:`DaskEnding.drain_writes` also waits for
the cache entries written behind the values on the workers that wrote any,
again after a worker died with writes in flight. A flow that was cancelled, or
whose body raised, does not wait: :meth:`DaskEnding._release` cancels what is
still going and releases every Dask task the runner made.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from types import TracebackType

import distributed
from distributed import Client

from daskflow.engine import TaskRunEngine
from daskflow.results import write_behind
from daskflow.results.write_behind import WriteReport
from daskflow.states import Cancelled, Crashed
from daskflow.task_runners.dask_futures import DaskFuture
from daskflow.task_runners.dask_protocol import Batch
from daskflow.task_runners.dask_recovery import DaskRecovering
from daskflow.task_runners.dask_worker import EVENT_TOPIC, drain_writes, flush_events, interrupt_runs

__all__ = ["DaskEnding"]

_log = logging.getLogger("daskflow.dask")
_EVENT_WAIT_SECONDS = 5.0
# Dask tasks cancelled per call when a flow releases what it made (see DaskEnding._release).
_CANCEL_SLICE = 200
_REPORT_WAIT_SECONDS = 0.1  # how long the final states of a flow run's last runs may take to arrive
_DRAIN_ROUNDS = 5  # at most, in a flow run's drain: one more after each worker death it finds


class DaskEnding(DaskRecovering):
    """Waiting for, draining and releasing a flow run's runs."""

    def shutdown(self) -> None:
        try:
            if not self._cancelled:
                self._wait_all()
                self.await_reports(self._futures)
        finally:
            if self._report is not None and self.client is not None:
                self._report.finish(self.client)  # before the client closes (perfhist)
            if self.client is not None:
                self._end_recomputes()
                for future in self._futures:
                    self._router.forget(future.task_run.id)
            self._futures = []
            self._made = ()
            self._shared_objects = {}
            self._flow_infos = {}
            self._definitions = {}
            if self._owns_client and self.client is not None:
                try:
                    self.client.close()
                    if self.cluster is not None:
                        self.cluster.close()
                except Exception as exc:
                    # Not over the flow's own outcome (an interrupt, its error): seen on a loaded
                    # machine, a nanny's worker slower to exit than distributed's close timeout.
                    _log.warning("could not close the Dask cluster the flow run started: %s: %s",
                                 type(exc).__name__, exc)  # fmt: skip
            self.client = None
            self.cluster = None
            super().shutdown()

    def _wait_all(self) -> None:
        """Wait for every run: one wait for all, then recovery only where something erred; then for
        the values Dask is computing again (:meth:`_wait_recomputes`)."""
        while True:
            pending = [f for f in self._futures if f._settled is None and f.dask_future.status != "finished"]
            if not pending:
                break
            self.wait_watched(pending)
            self.recover_erred()
        self._wait_recomputes()

    def await_reports(self, futures: Sequence[DaskFuture]) -> None:
        """Settle the runs whose Dask tasks finished: wait (bounded) for their reported final states.

        A worker sends a run's final state, after everything the run logged, ahead of
        its Dask task's end, so it is here already when Dask says the task finished. If
        it is not (a malformed or dropped event), every worker is asked to flush and
        its sync marker waited for (bounded); a run still without its report then ends
        ``Crashed``, saying so: nothing else settles a run that ended on a worker.
        """

        def unreported() -> list[DaskFuture]:
            return [f for f in futures if f._settled is None and f.dask_future.status == "finished"]

        if not unreported() or self.client is None:
            return
        router = self._router
        deadline = time.monotonic() + _REPORT_WAIT_SECONDS
        with router.changed:
            while unreported():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                router.changed.wait(remaining)
            else:
                return
        self._flush_workers()
        for future in unreported():
            run = future.task_run
            message = (
                f"task run {run.name!r} finished on the Dask cluster, but the final state its worker reported "
                "never reached this client (see the log for refused or malformed daskflow events)"
            )
            engine = TaskRunEngine(future.call)
            engine.logger.error("%s", message)
            engine.finish(Crashed(message))
            future.settle(run.state)

    def drain_writes(self, flow_run_id: str) -> WriteReport:
        """Wait for every run, then for the cache entries they write behind their values on the workers
        that wrote any (and in this process, whose own workers share its writer).

        A worker whose writes failed flushed the runs' warnings before answering; they are waited for
        here, so that they are in the history before the flow run ends.
        """
        report = WriteReport()
        client = self.client
        if client is not None and not self._cancelled:
            # Again while a worker died with writes in flight (Dask then computes its values again,
            # and the recomputes write theirs elsewhere), or a recompute started meanwhile.
            for _ in range(_DRAIN_ROUNDS):
                recomputes = self._router.recomputes
                part, lost = self._drain_workers(client, flow_run_id)
                report += part
                if lost:
                    self._await_removal(client, lost)
                    self._sync_scheduler_stream(client)
                elif recomputes == self._router.recomputes:
                    break
        return report + super().drain_writes(flow_run_id)

    def _await_removal(self, client: Client, workers: set[str]) -> None:
        """Wait (bounded) until the scheduler has removed ``workers``, which died: the values it then
        computes again are known to it, and it has told this client (their futures turn ``lost``)."""
        deadline = time.monotonic() + self._lost_timeout
        while workers & set(client.nthreads()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the scheduler is another process; its handling of a death is what is waited for

    def _sync_scheduler_stream(self, client: Client) -> None:
        """Wait (bounded) until what the scheduler sent this client so far has arrived: a marker
        published now comes behind it on the same stream (the notices of values lost included)."""
        router = self._router
        token = uuid.uuid4().hex
        client.log_event(EVENT_TOPIC, Batch.marker(token, os.getpid()).encode())
        deadline = time.monotonic() + _EVENT_WAIT_SECONDS
        with router.changed:
            while not router.synced.get(token):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                router.changed.wait(remaining)
            router.synced.pop(token, None)

    def _drain_workers(self, client: Client, flow_run_id: str) -> tuple[WriteReport, set[str]]:
        """One round of :meth:`drain_writes`: wait for every run, then drain the workers they wrote on.

        Also returns the workers that ran such runs and did not answer: they died, and their
        writes in flight with them (an entry is absent, never partial).
        """
        report = WriteReport()
        self._wait_all()
        self.await_reports(self._futures)
        # A run that completed with a key wrote (or queued) its entry where it ran, or hit one in flight there.
        workers = sorted(
            {
                run.worker
                for run in (f.task_run for f in self._futures)
                if run.worker and run.cache_key and run.state.is_completed()
            }
        )
        intended = set(workers)
        if workers:  # only the live ones: the writes of a dead worker died with it (never in part)
            # Every live worker (scheduler_info() lists only the first 5 in some distributed versions).
            workers = sorted(intended & set(client.nthreads()))
        answered: set[str] = set()
        if workers:
            timeout = write_behind.drain_timeout()
            replies = client.run(drain_writes, flow_run_id, timeout, workers=workers, on_error="ignore")
            for worker, reply in replies.items():
                if isinstance(reply, WriteReport):
                    answered.add(worker)
                    report += reply
            if report.failed:
                self._flush_workers()
        return report, intended - answered

    def _flush_workers(self) -> None:
        """Ask every worker to send what it buffered, and wait (bounded) until it has arrived."""
        assert self.client is not None
        router = self._router
        token = uuid.uuid4().hex
        # A worker that died meanwhile has nothing to send: its runs' states are taken below.
        replies = self.client.run(flush_events, token, on_error="ignore")
        expected = sum(1 for sent in replies.values() if sent)
        deadline = time.monotonic() + _EVENT_WAIT_SECONDS
        with router.changed:
            while router.synced.get(token, 0) < expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _log.warning("some run events did not arrive within %g s; records may lag", _EVENT_WAIT_SECONDS)
                    break
                router.changed.wait(remaining)
            router.synced.pop(token, None)

    def cancel_all(self) -> None:
        self._release("the flow run was cancelled")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt) and not self._cancelled:
            # The body raised (a run's error it let through, its timeout, a test's): nothing will ask
            # for the runs still going, and waiting for them would hold the exception without bound.
            # What this flow holds on the cluster goes now, not when the last reference to it does.
            self._release(f"the flow run's body raised {exc_type.__name__} before this run ended")
        super().__exit__(exc_type, exc, tb)

    def _release(self, reason: str) -> None:
        """Cancel every run not yet finished (Cancelled with ``reason``) and release every Dask
        task this runner made (runs, shared definitions, map items), so none outlives the flow."""
        self._cancelled = True
        client = self.client  # once the futures are cancelled, the flow may shut this runner down
        futures = self._futures
        unfinished = [f for f in futures if f._settled is None and not f.task_run.state.is_final()]
        if client is not None and futures:
            flow_run_id = futures[0].task_run.flow_run_id
            try:
                # Told first: a run of this flow must not take a slot that the cancel frees.
                client.run(interrupt_runs, flow_run_id, [f.dask_future.key for f in unfinished], wait=False)
            except Exception:  # the cluster is going away: so are its threads
                _log.debug("could not interrupt the cancelled runs on the workers", exc_info=True)
        if client is not None:
            made = [*(f.dask_future for f in futures), *self._made]
            made += [shared for _, shared, _ in self._shared_objects.values() if isinstance(shared, distributed.Future)]
            try:
                # In slices: distributed's cancel visits every key of a call once per key of it
                # (10,000 keys held the scheduler's event loop for 6 s, 100,000 for ten minutes).
                for start in range(0, len(made), _CANCEL_SLICE):
                    client.cancel(made[start : start + _CANCEL_SLICE], force=True)
            except Exception:  # the client is closing: its futures go with it
                _log.debug("could not cancel the flow run's Dask tasks", exc_info=True)
        for future in futures:
            if not future.task_run.state.is_final():
                future.task_run.set_state(Cancelled(reason))
            future.settle(future.task_run.state)
