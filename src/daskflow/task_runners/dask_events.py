"""The client side of the Dask runner's event stream: worker events applied to run records.

Workers send their runs' state changes, log records and artifacts in batches
on the ``daskflow`` topic (see :mod:`.dask_worker`). One :class:`EventRouter`
per client applies them here: a state to the run record of this process (so
``future.state``, the console and the run history look as on the local
runners), a record re-emitted through this process's loggers, an artifact
published for the run history. A run's final state from its latest attempt
settles the run's future: it is the one way a run's end on a worker reaches the
client (its worker sends it ahead of the Dask task's end, so it is here when
Dask says the task finished). It also says that everything the run reported
has arrived, and lets the client drop what it kept to resubmit the run.

A run that reported its end is not forgotten until its flow run's runner shuts
down: Dask computes a value again when the worker holding it dies while the
client still holds its future (a dependent wants it, or nobody fetched it), and
that recompute runs the task again on another worker (a cache hit if its entry
had landed, the body otherwise). So does the client itself, through Dask's
retry of the same task, when the worker died before Dask took the value
(``DaskTaskRunner.rerun_lost``): never a new submission, whose arguments the
client no longer holds. The history must show it, as it shows a
retry: the recompute's first event opens a new attempt of the run (``run_count``
+ 1, an ``AwaitingRecompute`` state whose message, :data:`RECOMPUTED`, says
why) and its states follow, its end included. The run's future keeps the state it settled on first: whoever
read it read a true outcome, and the value it hands out (fetched from Dask's
result) is the same task's on the same inputs.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, Protocol

from distributed import Client

from daskflow.artifacts import publish_artifact
from daskflow.concurrency.distributed_compat import CRASHES_ANNOTATION, install_crash_counter
from daskflow.exceptions import ConfigurationError
from daskflow.runs import TaskRun
from daskflow.states import FINAL_TYPE_NAMES, RemoteValue, State, StateType
from daskflow.task_runners.dask_protocol import ArtifactEvent, Batch, LogEvent, StateEvent
from daskflow.task_runners.dask_worker import EVENT_TOPIC, applying_reports, mark_client_process

__all__ = ["RECOMPUTED", "RELEASED_PARAMETERS", "EventRouter", "forget_crashes", "router_for"]

_log = logging.getLogger("daskflow.dask")
# The parameters of a call that ended on the cluster, once the client has let them go.
RELEASED_PARAMETERS: dict[str, Any] = {}
# The message of the Running state that opens the attempt of a run Dask computes again.
RECOMPUTED = "computed again by Dask: the worker holding its value ({worker}) was lost"


class EventRouter:
    """Applies the ``daskflow`` events of one client to this process's run records."""

    def __init__(self, client: Client) -> None:
        self.runs: dict[str, InFlight] = {}  # run id -> the client's future of the run, while in flight
        # Run id -> the future of a run whose worker reported its end, until its runner shuts down:
        # Dask may compute it again (see the module docstring).
        self.settled: dict[str, InFlight] = {}
        # Run id -> what to add to the attempt numbers of the recompute Dask is running of it.
        self.recomputing: dict[str, int] = {}
        self.recomputes = 0  # recomputes started on this client (a drain looks again when it grew)
        self.changed = threading.Condition()
        self.synced: dict[str, int] = {}
        self.interim: set[str] = set()  # runs whose last state is a crash they went on from
        # Modules already checked on this client's workers (see DaskTaskRunner._ship_code).
        # A worker that joins later and lacks one is handled when a task fails on it.
        self.checked_modules: set[str] = set()
        self.ship_lock = threading.Lock()
        self._refused: set[str | None] = set()  # workers whose events were refused (said once each)
        client.subscribe_topic(EVENT_TOPIC, self.handle)
        install_crash_counter(client)  # once per client: worker deaths the scheduler retries count as attempts

    def handle(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        try:
            batch = Batch.decode(message)
        except ConfigurationError as exc:  # another version, or a bug: said once per worker, never misread
            if message.get("worker") not in self._refused:
                self._refused.add(message.get("worker"))
                _log.error("refused daskflow events from %s: %s", message.get("worker"), exc)
            return
        # A worker thread of this very process already logged its records here.
        local = batch.pid == os.getpid()
        with applying_reports():
            self._apply(batch, local)
        with self.changed:
            if batch.sync is not None:
                self.synced[batch.sync] = self.synced.get(batch.sync, 0) + 1
            self.changed.notify_all()

    def _apply(self, batch: Batch, local: bool) -> None:
        # Interned: each batch decodes its own copy of the address (~70 bytes), which every run it
        # ends keeps (run.worker); a map of 100,000 items then shares one string per worker.
        worker = None if batch.worker is None else sys.intern(batch.worker)
        for item in batch.events:
            try:
                if isinstance(item, StateEvent):
                    self._apply_state(item, worker)
                elif local:
                    continue
                elif isinstance(item, ArtifactEvent):  # kept by the run history, not logged
                    publish_artifact(item.record())
                else:
                    _emit_record(item)
            except Exception:  # one bad event must not stop the stream
                _log.exception("could not apply a daskflow event from %s", batch.worker)

    def _apply_state(self, event: StateEvent, worker: str | None) -> None:
        future = self.runs.get(event.run_id)
        if future is None:
            settled = self.settled.get(event.run_id)
            if settled is not None:
                self._apply_recompute(settled, event, worker)
            return
        run = future.task_run  # not future.call: that would rebuild a map item's call for each event
        if event.type in _FINAL_TYPES:  # facts that ride with the end: a folded start time, the cache key
            if run.start_time is None:
                run.start_time = event.start
            run.cache_key = event.cache_key or run.cache_key
        run.run_count = max(run.run_count, event.attempt)
        run.worker = run.worker or worker
        # Else the client ended it first (from the result it fetched), unless that was a crash it went on from.
        if not run.state.is_final() or event.run_id in self.interim:
            run.worker = worker
            run.set_state(event.state())
            if event.interim:
                self.interim.add(event.run_id)
            else:
                self.interim.discard(event.run_id)
        if event.final and event.attempt >= run.run_count:  # the latest attempt's end, not a stale one
            # The one way a run's end on a worker reaches the client: its future settles here, and
            # lets go of the run's arguments (see DaskFuture.settle_reported).
            future.settle_reported(
                run.state, None if event.version is None else RemoteValue(event.version, event.length)
            )
            del self.runs[event.run_id]
            self.settled[run.id] = future  # keyed by the run's own id string: one more per run is not free
            self.recomputing.pop(event.run_id, None)

    def _apply_recompute(self, future: InFlight, event: StateEvent, worker: str | None) -> None:
        """A state of a run that already reported its end: Dask is computing its lost value again.

        The recompute's worker numbers its attempts from the run's spec, as the
        first time; here they continue the run's own count, so the history shows
        one more attempt per recompute (and the retries within it, if any). It
        reads as a retry does: ``AwaitingRecompute`` (a scheduled state, with
        :data:`RECOMPUTED` saying why), ``Retrying`` when the body starts again
        (a hit does not start it), then the end the worker reported.
        """
        run = future.task_run
        run_id = event.run_id
        offset = self.recomputing.get(run_id)
        if offset is None:  # its first event (a hit's only one, or a Running folded into the end)
            offset = self.recomputing[run_id] = run.run_count + 1 - event.attempt
            self.recomputes += 1
            lost = run.worker or "unknown"
            start = event.start if event.start is not None else event.timestamp
            run.set_state(
                State(StateType.SCHEDULED, "AwaitingRecompute", RECOMPUTED.format(worker=lost), timestamp=start)
            )
            if event.start is not None:  # the body ran again: its Running rode on its end
                run.run_count = max(run.run_count, event.attempt + offset)
                run.set_state(State(StateType.RUNNING, "Retrying", f"attempt {run.run_count}", timestamp=start))
        run.run_count = max(run.run_count, event.attempt + offset)
        run.worker = worker
        if event.running:
            run.set_state(State(StateType.RUNNING, "Retrying", f"attempt {run.run_count}", timestamp=event.timestamp))
        else:
            run.set_state(event.state())
        if event.final:
            del self.recomputing[run_id]
            run.cache_key = event.cache_key or run.cache_key

    def forget(self, run_id: str) -> None:
        """The run's runner shut down: its events, if any still come, are no one's."""
        self.runs.pop(run_id, None)
        self.settled.pop(run_id, None)
        self.recomputing.pop(run_id, None)


class InFlight(Protocol):
    """What the router needs of a run in flight (a :class:`~daskflow.task_runners.dask_futures.DaskFuture`)."""

    task_run: TaskRun

    def settle_reported(self, state: State, value: RemoteValue | None = None) -> None:
        """The run's final state came from its worker (its value or error stays on the cluster); done
        on the cluster, which keeps its own graph for recomputing a lost value, the run lets go of
        what the client kept to resubmit it (dead weight in a map of 100,000 items). ``value``: the
        data version (and length) of a versioned value, as the worker reported it."""


_FINAL_TYPES = FINAL_TYPE_NAMES


def forget_crashes(dask_scheduler: Any, key: Any) -> None:
    """On the scheduler: the erred task ``key`` is about to be computed again for a value it lost
    after its run ended; its worker must not take the deaths counted under it for crashes of the run
    (they would be judged as attempts by the task's policy: see ``dask_worker.run_on_worker``)."""
    ts = dask_scheduler.tasks.get(key)
    annotations = getattr(ts, "annotations", None)
    if annotations and CRASHES_ANNOTATION in annotations:
        # A new dict: annotations may be shared by every task of one graph.
        ts.annotations = {name: value for name, value in annotations.items() if name != CRASHES_ANNOTATION}


def _emit_record(event: LogEvent) -> None:
    logger = logging.getLogger(event.logger)
    if logger.isEnabledFor(event.level):
        logger.handle(event.record())


_routers: dict[int, tuple[Client, EventRouter]] = {}
_routers_lock = threading.Lock()


def router_for(client: Client) -> EventRouter:
    mark_client_process()
    with _routers_lock:
        for key, (known, _) in list(_routers.items()):
            if known.status in ("closed", "closing"):  # forget closed clients (their ids get reused)
                del _routers[key]
        entry = _routers.get(id(client))
        if entry is None or entry[0] is not client:
            entry = _routers[id(client)] = (client, EventRouter(client))
        return entry[1]
