"""Run history from the engine: every flow run and task run, its states and logs, to the run store.

A :class:`HistoryRecorder` listens to the run records of this process (a state
listener) and to the run loggers (a logging handler), and hands what it sees to
a :class:`~daskflow.runstore.RunStoreWriter` as cheap ``(run, state)`` pairs and
log records; the writer's thread turns each batch into state rows, log rows
and one snapshot per run (:func:`to_records`), so the hot path pays a queue
append per state change and nothing else.

The recorder lives in the process that runs flows — the client, on Dask — and
starts with the first flow run when dask.config ``daskflow.runstore.enabled``
is true (the default), writing to ``daskflow.runstore.url`` (an SQLite file in
the daskflow home by default). Worker processes record nothing themselves:
their states and logs reach the client through the Dask runner's events and
are recorded there. A worker *thread* of this very process (a LocalCluster with
``processes=False``) keeps its own copies of the runs it executes; those are
skipped, as the client's copies get the same states. A flow run does not wait
for its history: the writer writes within a fraction of a second (a few
seconds while the process keeps it busy), and at the latest when the
interpreter exits; :func:`flush` waits for it (the CLI and tests reading the
store from this process call it).

Artifacts (:mod:`daskflow.artifacts`) arrive as records on the non-propagating
``daskflow.artifacts`` logger, where a handler installed with this module queues
them for the same writer, like log records; an artifact created outside any run
starts the recorder if history is on, and is dropped when it is off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dask.utils import parse_timedelta

from daskflow import secrets_mask, settings
from daskflow.context import on_worker_thread
from daskflow.logging import ARTIFACT_LOGGER
from daskflow.runs import FlowRun, TaskRun, add_state_listener, remove_state_listener
from daskflow.runs import _listeners as _state_listeners  # the live list (changed in place, never replaced)
from daskflow.runstore import (
    ArtifactRecord,
    FlowRunRecord,
    Record,
    RunStoreWriter,
    StateRecord,
    TaskRunRecord,
    log_entry_from_record,
    resolve_url,
)
from daskflow.states import FINAL_TYPES, State, StateType

__all__ = [
    "HistoryRecorder",
    "RowBuilder",
    "end_sink",
    "flush",
    "record_submitted",
    "recorder",
    "stop_recording",
    "to_records",
]

_FLUSH_SECONDS = 10.0
_WRITE_INTERVAL = 0.5  # seconds between the writer's drains (its default is 0.2)
_WRITE_BATCH = 50_000  # queued items that wake the writer before its interval (default 1,000)
_BUSY_HOLD = 5.0  # seconds the writer may wait while the queue keeps growing (see RunStoreWriter)
_PENDING_HOLD = "30s"  # dask.config daskflow.runstore.pending_hold when unset: see RowBuilder


class HistoryRecorder(logging.Handler):
    """Feeds this process's run states and run log records to a run store writer."""

    def __init__(self, url: str) -> None:
        super().__init__(level=logging.NOTSET)
        self.addFilter(secrets_mask.FILTER)  # loaded secrets are stored as *** (see daskflow.secrets_mask)
        self.url = url
        hold = float(parse_timedelta(settings.get("runstore.pending_hold", _PENDING_HOLD)))
        self.rows = RowBuilder(hold)
        # Bigger batches and fewer wakeups than the writer's defaults: while a flow is busy every
        # drain is a transaction and a turn at the GIL the flow's threads wait for. The writer
        # also waits (up to _BUSY_HOLD) while the queue keeps growing, so that a burst of runs
        # (direct task calls, a map's events) is written after it rather than during it: a run's
        # rows are half a second late when the process is quiet, at most about 5.5 s while it is
        # busy, and at once on flush().
        self.writer = RunStoreWriter(
            url, convert=self.rows, interval=_WRITE_INTERVAL, batch_size=_WRITE_BATCH, busy_hold=_BUSY_HOLD
        )
        self.listener = self.on_state  # one bound method, registered and recognised (end_sink)

    def on_state(self, run: Any, state: State) -> None:
        if not on_worker_thread():
            self.writer.put((run, state))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None) is None and getattr(record, "task_run_id", None) is None:
            return  # not a run's record
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(exc_info)  # now: the traceback may not last
        self.writer.put(record)

    def start(self) -> None:
        add_state_listener(self.listener)
        logging.getLogger("daskflow").addHandler(self)

    def write_all(self, timeout: float) -> bool:
        self.writer.put(_RELEASE)  # the rows held back are due now: whoever flushes reads the store next
        return self.writer.flush(timeout)

    def stop(self) -> None:
        remove_state_listener(self.listener)
        logging.getLogger("daskflow").removeHandler(self)
        self.writer.put(_RELEASE)
        self.writer.close(_FLUSH_SECONDS)


_recorder: HistoryRecorder | None = None
_recorder_lock = threading.Lock()


class _ArtifactSink(logging.Handler):
    """Queues the artifacts published in this process for the run store (see daskflow.artifacts)."""

    def emit(self, record: logging.LogRecord) -> None:
        artifact = getattr(record, "artifact", None)
        if not isinstance(artifact, ArtifactRecord):
            return
        if artifact.flow_run_id is None and artifact.task_run_id is None and not on_worker_thread():
            current = recorder()  # outside any run, the artifact alone starts (or stops) recording
        else:
            # A run's artifact is kept like its logs: by the recorder its flow run started in
            # this process. A Dask worker process has none (and must not start one): the
            # worker's forwarder sends the artifact to the client, which records it there.
            current = _recorder
        if current is not None:
            current.writer.put(artifact)


logging.getLogger(ARTIFACT_LOGGER).addHandler(_ArtifactSink())


def recorder() -> HistoryRecorder | None:
    """This process's recorder for the configured run store (None when history is off).

    A change of ``daskflow.runstore.url`` (or of the daskflow home) between flow
    runs closes the old recorder and opens one on the new database; turning
    ``daskflow.runstore.enabled`` off stops it.
    """
    global _recorder
    if not settings.get("runstore.enabled", True):
        if _recorder is not None:  # turned off since it started: stop listening
            stop_recording()
        return None
    url = resolve_url(None)
    current = _recorder
    if current is not None and current.url == url:
        return current
    with _recorder_lock:
        if _recorder is not None and _recorder.url != url:
            _recorder.stop()
            _recorder = None
        if _recorder is None:
            _recorder = HistoryRecorder(url)
            _recorder.start()
        return _recorder


class _Submitted:
    """Task runs just submitted: each gets its row (a snapshot, no state record) before it starts."""

    __slots__ = ("runs",)

    def __init__(self, runs: tuple[TaskRun, ...]) -> None:
        self.runs = runs


def record_submitted(runs: Iterable[TaskRun]) -> None:
    """Keep task runs in the history from their submission (one queue item for a whole map).

    A run that never starts (its flow run failed or was cancelled first) then still
    has its row, which the flow engine ends with a final state. Only the recorder a
    flow run started in this process records; worker threads of this process do not.
    """
    current = _recorder
    if current is not None and not on_worker_thread():
        current.writer.put(_Submitted(tuple(runs)))


def end_sink() -> Callable[[Any], None] | None:
    """Where a run that starts and ends within one call may put its end alone; None: tell every listener.

    When this process's only state listener is the recorder (or there is none),
    the recorder writes such a run's row and final state row from its final state
    alone (see :class:`RowBuilder`): the lean path of a direct task call
    (daskflow.engine.direct) then keeps ``Running`` on the run record and hands the
    recorder's queue its ``(run, final state)`` itself. Returns that queue's ``put``
    (a no-op with no recorder), or None when another listener must see every state.
    """
    listeners = _state_listeners
    if not listeners:
        return _nowhere
    current = _recorder
    if current is not None and len(listeners) == 1 and listeners[0] is current.listener and not on_worker_thread():
        return current.writer.put
    return None


def _nowhere(item: Any) -> None:
    """The end sink when nothing listens to states."""


def flush(timeout: float = _FLUSH_SECONDS) -> bool:
    """Wait until everything recorded so far in this process is written; False on timeout."""
    current = _recorder
    return True if current is None else current.write_all(timeout)


def stop_recording() -> None:
    """Write what is pending and stop recording in this process."""
    global _recorder
    with _recorder_lock:
        if _recorder is not None:
            _recorder.stop()
            _recorder = None


class _Release:
    """Put by flush and stop: every row held back is written with this batch."""

    __slots__ = ()


_RELEASE = _Release()


class RowBuilder:
    """Turns the recorder's batches into rows, on the writer's thread: one snapshot per run per batch.

    Rows are built here from the runs as they are now, never on the hot path. A
    submitted run's first row is held back (``hold`` seconds, dask.config
    ``daskflow.runstore.pending_hold``, 30 s by default): a run that leaves
    ``Pending`` meanwhile gets its row from its own states, queued after its
    submission (the queue keeps order), so a map item costs one task run row and
    its state rows, where it used to cost a row at submission and the same row
    again when it ended. When a submission's hold ends, the runs still ``Pending``
    are written then if none of them started during the hold (they wait for a
    worker or a slot: the history shows them waiting); while some did (a large map
    working through its items), the submission is held for another ``hold``, as
    its runs will bring their own rows soon. :func:`flush` and the end of
    recording write every held row at once. While rows are held the writer calls
    this with empty batches (``holding``), so a held row is late by at most one
    writer interval. Held rows are built one at a time as the writer takes them,
    which it does ``max_batch`` at a time: never all of a large map's at once.
    """

    def __init__(self, hold: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold = hold
        self._clock = clock  # seconds, for the holds (a test passes its own)
        # (when the hold ends, the runs, how many of them were Pending when it began), oldest first
        self._held: deque[tuple[float, tuple[TaskRun, ...], int]] = deque()

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def __call__(self, batch: list[Any]) -> Iterator[Record]:
        runs: dict[str, FlowRun | TaskRun] = {}
        states: list[tuple[FlowRun | TaskRun, State]] = []
        release = False
        for item in batch:
            if isinstance(item, tuple):
                runs[item[0].id] = item[0]
                states.append(item)
            elif isinstance(item, _Submitted):
                # Only the runs still Pending are held: one that started or ended already (a cache hit
                # of a looked-up map) has its row from its own states, and is not kept alive here.
                waiting = tuple(run for run in item.runs if run.state.type is StateType.PENDING)
                if waiting:
                    self._held.append((self._clock() + self.hold, waiting, len(waiting)))
            elif isinstance(item, _Release):
                release = True
            elif isinstance(item, logging.LogRecord):
                yield log_entry_from_record(item)
            else:
                yield item
        ended, passing = _on_their_way(states, runs)
        for run, state in states:
            if run.id in passing or (run.id in ended and state is not run.state):
                continue
            yield StateRecord(
                run_id=run.id,
                run_kind="task" if isinstance(run, TaskRun) else "flow",
                type=_TYPE_NAMES[state.type],
                name=state.name,
                message=state.message,
                timestamp=state.epoch,
            )
        for run_id, run in runs.items():
            if run_id not in passing:
                yield _snapshot(run)
        now = self._clock()
        held = self._held
        again: list[tuple[float, tuple[TaskRun, ...], int]] = []
        while held and (release or held[0][0] <= now):
            _, submitted, pending_before = held.popleft()
            # A run that left Pending has its row from its states (this batch or a later one).
            pending = [run for run in submitted if run.state.type is StateType.PENDING and run.id not in runs]
            if pending and not release and self.hold > 0 and len(pending) < pending_before:
                again.append((now + self.hold, tuple(pending), len(pending)))  # still starting: held on
                continue
            for run in pending:
                yield _snapshot(run)  # one at a time, as the writer takes them
        held.extend(again)


_ON_THE_WAY = frozenset((StateType.PENDING, StateType.RUNNING))
# A state type's stored name by dict lookup: Enum.value is a Python-level descriptor, read twice per row.
_TYPE_NAMES = {member: member.value for member in StateType}


def _on_their_way(
    states: list[tuple[FlowRun | TaskRun, State]], runs: dict[str, FlowRun | TaskRun]
) -> tuple[set[str], set[str]]:
    """The task runs of a batch whose Pending and Running rows are superseded before they are written.

    Returns ``(ended, passing)``. ``ended``: runs whose final state is in this batch
    and whose other states here are Pending or Running; only the final one gets a
    state row (the start stays in the run's row, ``start_time``). ``passing``: runs
    whose states here are all Pending or Running but which have ended since (the
    Dask runner's events reported the end in a later event batch): their final state
    is queued behind this batch (the queue keeps order) and brings their row and
    their final state row, so nothing of theirs is written now. Either way a map item
    whose end is known when its batch is drained costs its task run row and one
    state row. A run with any other state here (a retry's, a pause) keeps them all:
    they are its story, not its way there.
    """
    ended: set[str] = set()
    kept: set[str] = set()
    for run, state in states:
        if isinstance(run, TaskRun) and state.type not in _ON_THE_WAY:
            if state.type in FINAL_TYPES and state is run.state:
                ended.add(run.id)
            else:
                kept.add(run.id)
    ended -= kept
    passing = {
        run_id
        for run_id, run in runs.items()
        if isinstance(run, TaskRun) and run_id not in kept and run_id not in ended and run.state.type in FINAL_TYPES
    }
    return ended, passing


def to_records(batch: list[Any]) -> Iterable[Record]:
    """A batch as rows, holding nothing back (:class:`RowBuilder` with no hold)."""
    return RowBuilder(0.0)(batch)


def _snapshot(run: FlowRun | TaskRun) -> FlowRunRecord | TaskRunRecord:
    state = run.state
    traceback = state.traceback if state.is_failed() or state.is_crashed() else None
    if isinstance(run, TaskRun):
        return TaskRunRecord(
            id=run.id,
            flow_run_id=run.flow_run_id,
            name=run.name,
            task_name=run.task_name,
            state_type=_TYPE_NAMES[state.type],
            state_name=state.name,
            state_message=state.message,
            map_index=run.map_index,
            start_time=run.start_time,
            end_time=run.end_time,
            run_count=run.run_count,
            cache_key=run.cache_key,
            cache_hit=state.is_cached(),
            worker=run.worker,
            slot_wait=run.slot_wait,
            traceback=traceback,
            upstream_ids=run.upstream_ids,
            tags=tuple(run.tags),
        )
    return FlowRunRecord(
        id=run.id,
        name=run.name,
        flow_name=run.flow_name,
        state_type=_TYPE_NAMES[state.type],
        state_name=state.name,
        state_message=state.message,
        parameters=run.parameters,
        parent_flow_run_id=run.parent_flow_run_id,
        start_time=run.start_time,
        end_time=run.end_time,
        run_count=run.run_count,
        traceback=traceback,
        entrypoint=run.entrypoint,
        dashboard_link=run.dashboard_link,
        tags=tuple(run.tags),
        scheduled_start_time=run.scheduled_start_time,
        deployment_id=run.deployment.id if run.deployment is not None else None,
        deployment_name=run.deployment.name if run.deployment is not None else None,
    )
