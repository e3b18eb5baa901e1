"""The worker side of the Dask runner: running a task call, and reporting back.

Each Dask task that daskflow submits calls :func:`run_on_worker`, which
rebuilds the task run from a compact spec, substitutes the upstream states
that Dask resolved on the cluster for the references in the arguments, and
runs the call through the same engine as every other runner. The engine's
state changes and the run loggers' records are not sent one by one: they go
into a per-process buffer that a daemon thread flushes every few milliseconds
as one ``log_event`` on the ``daskflow`` topic (Dask's batched pub-sub), and
the client applies them to its run records and re-emits the records through
its own loggers. A run's final state is sent last, ahead of the Dask task's
end on the worker's stream to the scheduler, so that it reaches the client
first: the client settles the run on it (the one path for a final state, see
:mod:`.dask`). Once a worker has run a daskflow task, its event loop sends
those ends as it takes each task's end (a worker plugin, :class:`_EndSender`),
rather than each task's thread waking the loop to send its own. Final states travel without their values: a value leaves its
worker only when someone asks for it, and a short attempt's ``Running`` event
is folded into its final state's (:func:`fold_running`). Artifacts created in
a task take the same road (an artifact event), so they too reach the client's
run history ahead of the run's final state.

What goes on the wire is the typed, versioned messages of :mod:`.dask_protocol`
(a :class:`~.dask_protocol.Batch` of state, log and artifact events).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed import get_worker, rejoin, secede
from distributed.diagnostics.plugin import WorkerPlugin

from daskflow import secrets_mask
from daskflow.concurrency.cluster import cluster_coordination
from daskflow.concurrency.distributed_compat import active_task_threads, current_task_crashes, mark_waiting
from daskflow.context import set_wait_hook, set_worker_thread, shielded_threads, use_transaction
from daskflow.engine import UNCHANGED, TaskCall, interrupt_thread, run_task_sync, transform
from daskflow.engine.prefetch import LOCAL_REACH, find_cached
from daskflow.exceptions import CancelledRunError
from daskflow.logging import ARTIFACT_LOGGER, set_console_enabled
from daskflow.results import write_behind
from daskflow.results.write_behind import WriteReport
from daskflow.runs import TaskRun, add_state_listener
from daskflow.runstore import ArtifactRecord
from daskflow.states import State, item_state
from daskflow.task_runners.dask_protocol import ArtifactEvent, Batch, Definition, Event, LogEvent, RunSpec, StateEvent

__all__ = [
    "EVENT_TOPIC",
    "drain_writes",
    "applying_reports",
    "ItemRef",
    "UpstreamRef",
    "look_up_on_worker",
    "mark_client_process",
    "run_on_worker",
    "state_length",
    "state_value",
]

EVENT_TOPIC = "daskflow"
_FLUSH_INTERVAL = 0.02  # the longest an event waits in the buffer
_MIN_GAP = 0.005  # the shortest time between two flushes of one worker process
_FLUSH_SIZE = 512
_ENDS_PLUGIN = "daskflow-run-ends"  # the name of each worker's _EndSender


class UpstreamRef:
    """Stands for the state of upstream number ``index`` in the Dask task's dependencies."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (UpstreamRef, (self.index,))


class ItemRef:
    """Stands for item ``item`` of the list value of upstream number ``index``."""

    __slots__ = ("index", "item")

    def __init__(self, index: int, item: int) -> None:
        self.index = index
        self.item = item

    def __reduce__(self) -> tuple[Any, ...]:
        return (ItemRef, (self.index, self.item))


def substitute(value: Any, upstream: list[State]) -> Any:
    """``value`` with every reference replaced by its upstream state (or a state of an item of its value)."""

    def visit(leaf: Any, allowed: bool) -> Any:
        if isinstance(leaf, UpstreamRef):
            return upstream[leaf.index]
        if isinstance(leaf, ItemRef):
            # A versioned list gives a versioned item, not read yet; the engine resolves it.
            return item_state(upstream[leaf.index], leaf.item)
        return UNCHANGED

    return transform(value, visit, unwrap=False)[0]


def fold_running(batch: list[Event]) -> list[Event]:
    """The batch without the ``Running`` events of attempts whose final state is in it too.

    A short task starts and ends between two flushes: its ``Running`` event would
    cost the client a message item and a state record for nothing anyone could
    have watched. Its timestamp is kept: it rides on the final state's event as
    the run's start time.
    """
    final_at: dict[tuple[str, int], int] = {}
    for position, event in enumerate(batch):
        if isinstance(event, StateEvent) and event.final:
            final_at[(event.run_id, event.attempt)] = position
    if not final_at:
        return batch
    folded = list(batch)
    dropped: set[int] = set()
    for position, event in enumerate(batch):
        if isinstance(event, StateEvent) and event.running:
            end = final_at.get((event.run_id, event.attempt))
            if end is not None and end > position:
                end_event = folded[end]
                assert isinstance(end_event, StateEvent)
                folded[end] = end_event.with_start(event.timestamp)
                dropped.add(position)
    return [event for position, event in enumerate(folded) if position not in dropped]


def state_length(state: State) -> int | None:
    """The length of a completed run's value when its items can be taken by position, else None.

    A stored list's length comes from its entry, without reading it. None for a
    run that did not complete, and for values whose items are not ``value[i]``
    (a set, a dict, a DataFrame): those are iterated whole where the map is made.
    """
    if not state.is_completed():
        return None
    deferred = state.deferred
    if deferred is not None and deferred.length is not None:
        return deferred.length
    data = state.data
    if data is None:
        return 0
    by_position = isinstance(data, (list, tuple, range, str, bytes)) or (
        type(data).__name__ == "ndarray" and type(data).__module__ == "numpy"
    )
    return len(data) if by_position else None


def state_value(state: State) -> Any:
    """A completed run's value, read here (where its storage is) if the hit left it there."""
    return state.data


class _Forwarder(logging.Handler):
    """Buffers this worker process's state changes and run log records for the client.

    A flusher thread sends the buffer as one event: at most :data:`_FLUSH_INTERVAL`
    after its first item, and never more often than every :data:`_MIN_GAP`, so a
    busy worker sends few large batches. The final state of the run this thread
    executes is held back until the run is over, then sent with the buffer by the
    task's thread itself (:meth:`end_run`): whatever the run logged, hooks
    included, is ahead of it in the stream, and it is ahead of the Dask task's end.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.buffer: list[Event] = []
        self.ready = threading.Condition(threading.Lock())
        self.sending = threading.Lock()
        self.urgent = False
        self.idle = False  # the flusher waits for a first item (not out an interval)
        self.worker: Any = None
        self.current = threading.local()
        self.senders: dict[str, _EndSender] = {}  # worker address -> its _EndSender

    def on_state(self, run: Any, state: State) -> None:
        # Only runs a worker executes (made by _call_of, with the worker's address): with workers in
        # the client's process (processes=False), the client's own runs (a hit found where a map is
        # submitted, a local runner's run) change state here too, and are no worker's to report.
        if isinstance(run, TaskRun) and run.worker is not None and not getattr(_applying, "reports", False):
            final = state.is_final()
            event = StateEvent.of(run.id, run.run_count, state, run.cache_key if final else None)
            current = self.current
            mine = getattr(current, "run_id", None) == run.id
            held: StateEvent | None = getattr(current, "final", None)
            if held is not None and not final and mine:
                # The run went on from a final-looking state (a crash judged before a retry): it
                # goes now, marked so that the client does not take it for the run's end.
                current.final = None
                self._add(dataclasses.replace(held, interim=True))
            if final and mine:
                current.final = event
                return
            self._add(event)

    def begin_run(self, run_id: str) -> None:
        self.current.run_id = run_id
        self.current.final = None

    def end_run(self, worker: Any, sender: _EndSender | None = None) -> None:
        """Send the run's final state, and all before it, ahead of the Dask task's end.

        Both go to the scheduler on the worker's one ordered stream, and it forwards both to the
        client on one ordered stream, so a client that sees the Dask task finished has the run's
        final state already: the final state reaches the client by this one path (see :mod:`.dask`).
        With the worker's :class:`_EndSender` in place, the task's thread hands them to it, and the
        worker's event loop sends them as it takes the task's end (no wake of the loop of its own,
        and the ends of several threads that finished meanwhile go as one event). Until then,
        ``Worker.log_event`` from the task's thread queues the send on the worker's event loop, where
        the task's completion is handled only after the task returns.
        """
        current = self.current
        final, current.final, current.run_id = current.final, None, None
        if final is None:
            return
        if sender is None or sender.worker is not worker:
            self._add(final)
            self.flush_now(worker)
            return
        # Under the lock of the flusher's sends: a batch it took before this one is queued on the
        # worker's event loop before the task's end is, so it is sent first.
        with self.sending:
            with self.ready:
                self.buffer.append(final)
                batch, self.buffer = self.buffer, []
                self.urgent = False
            sender.hold(batch)

    def emit(self, record: logging.LogRecord) -> None:
        artifact = getattr(record, "artifact", None)
        if isinstance(artifact, ArtifactRecord):  # from the artifacts logger: the record is the data
            self._add(ArtifactEvent.of(artifact))
            return
        run_id = getattr(record, "task_run_id", None)
        if run_id is None:
            return
        exc_text = record.exc_text  # formatted already (and cleaned, e.g. of secrets) by a filter, if any
        if record.exc_info and not exc_text:
            exc_text = (
                self.formatter.formatException(record.exc_info)
                if self.formatter
                else logging.Formatter().formatException(record.exc_info)
            )
        self._add(LogEvent.of(run_id, record, exc_text))

    def _add(self, item: Event, urgent: bool = False) -> None:
        with self.ready:
            self.buffer.append(item)
            if urgent:
                self.urgent = True
            # The flusher is woken for the first item (it then waits out the interval) and for a
            # full or urgent buffer, not for each item: a run's end takes the buffer with it, so
            # "first" would come back with every short run's start, a thread switch each.
            if urgent or (self.idle and len(self.buffer) == 1) or len(self.buffer) >= _FLUSH_SIZE:
                self.ready.notify()

    def flush_now(self, worker: Any = None) -> None:
        """Send the buffer through ``worker`` (the one whose task ends), else the latest to run a task.

        Workers in the client's process (``processes=False``) share this process's buffer, and may
        belong to clusters that are closed by now: a run's end goes through its own worker.
        """
        worker = worker or self.worker
        # Taken and queued under one lock: two threads flushing at once keep the batches in order.
        with self.sending:
            with self.ready:
                batch, self.buffer = self.buffer, []
                self.urgent = False
            if batch and worker is not None:
                worker.log_event(EVENT_TOPIC, Batch(tuple(fold_running(batch)), os.getpid()).encode())

    def _gather(self) -> None:
        """Wait until there is something to send and it is time to send it."""
        with self.ready:
            while not self.buffer:
                self.idle = True
                self.ready.wait()
            self.idle = False
            deadline = time.monotonic() + _FLUSH_INTERVAL
            while not self.urgent and len(self.buffer) < _FLUSH_SIZE:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.ready.wait(remaining)

    def run(self) -> None:
        last = 0.0
        while True:
            self._gather()
            gap = _MIN_GAP - (time.monotonic() - last)
            if gap > 0:
                time.sleep(gap)  # busy: let the next items join this batch
            try:
                self.flush_now()
            except Exception:  # the worker is closing; nothing left to tell
                return
            last = time.monotonic()


class _EndSender(WorkerPlugin):
    """Sends the ends of the runs of one worker from its event loop, as Dask takes the tasks' ends.

    A worker plugin: Dask calls :meth:`transition` on the worker's event loop for
    each change of a task's state, and a task's end (``executing`` -> ``memory`` or
    ``error``) is handled there before the worker tells the scheduler the task
    finished, on the same stream. What the task threads handed over meanwhile
    (:meth:`hold`) goes out then, as one event: it is ahead of the Dask task's end,
    as the client needs (see :meth:`_Forwarder.end_run`), without the wake of the
    event loop per task that ``Worker.log_event`` from a task's thread costs.
    """

    name = _ENDS_PLUGIN

    def __init__(self, owner: Any) -> None:
        self.owner = owner  # the worker it is made for; self.worker once Dask set it up there
        self.worker: Any = None
        self.pending: list[Event] = []
        self.lock = threading.Lock()

    def setup(self, worker: Any) -> None:
        self.worker = worker if worker is self.owner else None

    def teardown(self, worker: Any) -> None:
        self.send()
        self.worker = None

    def hold(self, events: list[Event]) -> None:
        with self.lock:
            self.pending.extend(events)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if self.pending:  # a plain read: the loop sees what a task thread handed over before its end
            self.send()

    def send(self) -> None:
        """On the worker's event loop: send what the task threads handed over, in order."""
        with self.lock:
            batch, self.pending = self.pending, []
        worker = self.owner
        if batch:
            worker.log_event(EVENT_TOPIC, Batch(tuple(fold_running(batch)), os.getpid()).encode())


def _end_sender(forwarder: _Forwarder, worker: Any) -> _EndSender:
    """The worker's :class:`_EndSender`, registered with it (on its event loop) when first asked for."""
    sender = forwarder.senders.get(worker.address)
    if sender is None or sender.owner is not worker:
        sender = forwarder.senders[worker.address] = _EndSender(worker)
        # Until the loop has run this, sender.worker is None and the task threads send their ends themselves.
        worker.loop.add_callback(worker.plugin_add, sender, _ENDS_PLUGIN)
    return sender


_forwarder: _Forwarder | None = None
_forwarder_lock = threading.Lock()
_client_here = False


def mark_client_process() -> None:
    """Called by the client side: this process runs flows, so its console stays on even if
    Dask workers run in it too (a ``LocalCluster(processes=False)``, as in notebooks)."""
    global _client_here
    _client_here = True


# Set on the thread of a client's event router while it applies what workers reported (see
# applying_reports): those states are the client's copies, and a worker thread of this very
# process (processes=False) must not forward them back as if its runs had changed again.
_applying = threading.local()


@contextmanager
def applying_reports() -> Iterator[None]:
    """Mark the states set inside as the client's copies of reported ones: the forwarder skips them."""
    _applying.reports = True
    try:
        yield
    finally:
        _applying.reports = False


def _install_forwarder() -> _Forwarder:
    global _forwarder
    if _forwarder is None:
        with _forwarder_lock:
            if _forwarder is None:
                forwarder = _Forwarder()
                forwarder.worker = get_worker()
                forwarder.addFilter(secrets_mask.FILTER)  # secrets loaded here leave as *** (see daskflow.secrets_mask)
                add_state_listener(forwarder.on_state)
                logging.getLogger("daskflow").addHandler(forwarder)
                logging.getLogger(ARTIFACT_LOGGER).addHandler(forwarder)  # it does not propagate to "daskflow"
                if not _client_here:
                    # The client prints these records; the worker's stderr need not. A worker
                    # thread in the client's own process (processes=False) leaves it on.
                    set_console_enabled(False)
                threading.Thread(target=forwarder.run, name="daskflow-events", daemon=True).start()
                _forwarder = forwarder
    return _forwarder


def flush_events(token: str, dask_worker: Any = None) -> bool:
    """Send what this worker process has buffered, then a ``sync`` marker with ``token``.

    Events from one worker reach the client in order, so once the marker has
    arrived, so has everything this worker reported before it.
    """
    forwarder = _forwarder
    worker = dask_worker or (forwarder.worker if forwarder is not None else None)  # Client.run hands it in
    if forwarder is None or worker is None:
        return False
    sender = forwarder.senders.get(worker.address)
    if sender is not None and sender.worker is worker:  # on its event loop (Client.run): ends held, first
        sender.send()
    forwarder.flush_now(worker)
    worker.log_event(EVENT_TOPIC, Batch.marker(token, os.getpid()).encode())
    return True


# The threads of this worker that wait inside a run (for a slot, a lock): a cancel does not
# raise in them (see interrupt_runs), it sets the event they watch.
_waiting_threads: set[int] = set()


@contextmanager
def _seceded() -> Iterator[None]:
    """A long wait inside a task: give the worker's thread back meanwhile (secede, then rejoin)."""
    ident = threading.get_ident()
    _waiting_threads.add(ident)
    # The scheduler learns that this task waits (for a slot, a lock, a retry's delay) rather
    # than runs an attempt: a worker death meanwhile is then not counted as an attempt.
    mark_waiting(True)
    secede()
    try:
        yield
    finally:
        rejoin()
        mark_waiting(False)
        _waiting_threads.discard(ident)


# Per flow run, the event its task runs on this worker watch: set when the flow run is cancelled.
# The most recent flow runs only: an event outlives its runs so that a run starting after the
# cancel still sees it, but not forever.
_cancel_events: collections.OrderedDict[str, threading.Event] = collections.OrderedDict()
_cancel_events_lock = threading.Lock()
_CANCEL_EVENTS_KEPT = 1024


def _cancel_event(flow_run_id: str | None) -> threading.Event | None:
    if flow_run_id is None:
        return None
    event = _cancel_events.get(flow_run_id)
    if event is None:
        with _cancel_events_lock:
            event = _cancel_events.get(flow_run_id)
            if event is None:
                event = _cancel_events[flow_run_id] = threading.Event()
                if len(_cancel_events) > _CANCEL_EVENTS_KEPT:
                    _cancel_events.popitem(last=False)
    return event


async def interrupt_runs(flow_run_id: str | None, keys: list[str], dask_worker: Any = None) -> int:
    """On a worker: stop the runs of a cancelled flow run; returns how many threads were interrupted.

    Dask's cancel forgets a running task but cannot stop its thread, which would keep
    its concurrency slots until its function returns. So the flow run's event is set
    here (a run waiting for a slot or a retry sees it within a moment and ends
    Cancelled; one that starts later ends at once), and CancelledRunError is raised
    in the threads running its keys' code. A run waiting outside the thread pool
    (seceded) is not interrupted there: an exception inside the scheduler
    conversation of a slot request could leave the slot taken; it watches the event. A coroutine, so the
    client can send it without waiting for an answer (``Client.run(..., wait=False)``
    takes only coroutines), on the worker's event loop.
    """
    event = _cancel_event(flow_run_id)
    if event is not None:
        event.set()
    # Client.run hands the worker in: there is no task context to ask.
    # Not the threads waiting (seceded) or talking to the scheduler about a slot: see context.shielded.
    threads = active_task_threads(dask_worker, keys, _waiting_threads | shielded_threads())
    return sum(interrupt_thread(thread, CancelledRunError) for thread in threads)


async def drain_writes(flow_run_id: str, timeout: float, dask_worker: Any = None) -> WriteReport:
    """On a worker: wait (bounded) until the cache entries flow run ``flow_run_id`` is writing in this
    process have landed or failed (see :mod:`daskflow.results.write_behind`); what became of them.

    A coroutine, run by ``Client.run`` on the worker's event loop, which it leaves free meanwhile.
    The run logs of failed writes are flushed to the client before the answer goes back.
    """
    report = await asyncio.to_thread(write_behind.drain, flow_run_id, timeout)
    forwarder = _forwarder
    if report.failed and forwarder is not None:
        forwarder.flush_now(dask_worker)
    return report


def _call_of(
    definition: Definition, spec: RunSpec, upstream: list[State], run_count: int, crash: str | None, worker: str
) -> TaskCall:
    """The call a spec stands for, with its references replaced by the states of ``upstream``."""
    task, flow_info = definition.task, definition.flow_info
    run = TaskRun(
        id=spec.run_id,
        name=spec.name,
        task_name=task.name,
        flow_run_id=flow_info.get("flow_run_id"),
        map_index=spec.map_index,
        tags=flow_info.get("run_tags") or task.options.tags,
        upstream_ids=spec.upstreams,
        run_count=run_count,
        worker=worker,
    )
    parameters, wait_for = spec.parameters, spec.wait_for
    return TaskCall(
        task,
        run,
        substitute(parameters, upstream) if upstream else parameters,
        tuple(substitute(list(wait_for), upstream)) if wait_for else (),
        **flow_info,
        coordination=cluster_coordination(),
        cancel_event=_cancel_event(flow_info.get("flow_run_id")),
        crash=crash,
        known_key=spec.key,
    )


def look_up_on_worker(
    definition: Definition, specs: list[RunSpec], upstream: list[State]
) -> list[tuple[State | None, str | None, str | None]]:
    """Look the runs of ``specs`` up here, where their inputs are, all at once; run none of them.

    For each run: its ``Cached`` state if its entry was found (not ended: the client ends it,
    recorded as a hit found there), the policy's key (a miss's run then need not hash its inputs
    again), and the entry's name. One Dask task for many runs, next to their upstream values:
    the runs whose key needs a value only the cluster holds (an upstream that does not cache).
    """
    address = get_worker().address
    calls = [_call_of(definition, spec, upstream, spec.attempts, None, address) for spec in specs]
    found = find_cached(calls, LOCAL_REACH, anywhere=True)
    return [(hit, call.known_key, call.task_run.cache_key) for call, hit in zip(calls, found)]


def run_on_worker(definition: Definition, spec: RunSpec, upstream: list[State]) -> State:
    """Run one task call on this worker; returns its final state (with its value).

    ``definition`` is the task object and the flow's facts, shared by every task of a submission.
    """
    forwarder = _install_forwarder()
    worker = get_worker()
    forwarder.worker = worker  # the latest: see _Forwarder.flush_now
    sender = _end_sender(forwarder, worker)
    run_id, name = spec.run_id, spec.name
    run_count, crash = spec.attempts, spec.crash
    deaths = current_task_crashes()
    if deaths:  # the scheduler ran this Dask task again after its worker died: each death was an attempt
        run_count += deaths
        crash = (
            f"the Dask worker running task run {name!r} died; the run crashed with it "
            f"(Dask started the task again: worker death {deaths} under this Dask task)"
        )
    call = _call_of(definition, spec, upstream, run_count, crash, worker.address)
    forwarder.begin_run(run_id)
    set_wait_hook(_seceded)
    set_worker_thread(True)
    try:
        if call.transaction is None:
            return run_task_sync(call)
        with use_transaction(call.transaction):  # get_transaction() in the task: the block's snapshot
            return run_task_sync(call)
    finally:
        set_worker_thread(False)
        set_wait_hook(None)
        forwarder.end_run(worker, sender)
