"""Everything the Dask runner's client and workers say to each other: typed, versioned messages.

The runner's state
------------------
The client holds, per flow run, one :class:`~daskflow.task_runners.dask_futures.DaskFuture`
per task run it submitted: the run's record (a ``TaskRun``, the same object
the flow and the run history see), the ``TaskCall`` it can start again, and
the Dask future of the run's current attempt (a new one after a crash). The
client's :class:`~daskflow.task_runners.dask_events.EventRouter` maps run ids
to those runs while they are in flight, and after they reported their end
until the flow run ends (Dask may compute a lost value again: a new attempt). A worker holds nothing between tasks
but a buffer of events not yet sent and, per flow run, the event that tells
its runs they were cancelled.

The wire
--------
Client -> worker: each Dask task daskflow submits is
``run_on_worker(definition, spec, upstream)``. ``definition`` is a
:class:`Definition` (the task object and the flow's facts), shared by every task of a submission (inline, or as one
task of its own when that is cheaper: one dependency per Dask task), ``upstream``
is the list of upstream states Dask resolved on the cluster, and ``spec`` is a
:class:`RunSpec`:

========== ===================================================================
field      meaning
========== ===================================================================
run_id     the task run's id (the client's record has the same id)
name       the run's name, e.g. ``extract-3``
map_index  its index in its ``.map``, or None
upstreams  ids of the task runs it takes values from (for the record)
parameters its arguments, with ``UpstreamRef``/``ItemRef`` where an upstream
           run's state (or an item of its value) goes: index into ``upstream``
wait_for   the same for ``wait_for``
attempts   attempts the run made before this Dask task
crash      why the last of those attempts ended with its process (a worker
           died under it), or None: the worker's engine judges it first
key        the run's cache key when the client computed it and found no
           entry (its inputs were known there), or None: the worker's engine
           then computes it; hashing the inputs once is the point
========== ===================================================================

Worker -> client: each worker process sends its events in batches on the
``daskflow`` topic of Dask's pub-sub (``Worker.log_event``), as one
:class:`Batch`: ``{"v": VERSION, "pid": ..., "b": [...], "sync": ...}``, to
which the scheduler adds ``"worker"``. Each item of ``"b"`` is one event,
encoded as a list headed by its kind:

================= ==== ========================================================
class             kind what
================= ==== ========================================================
:class:`StateEvent` s  a run's new state (its start, a retry's wait, its end);
                       a short attempt's ``Running`` rides on its end as
                       ``start``
:class:`LogEvent`   l  a record a run logged, for the client's loggers
:class:`ArtifactEvent` a an artifact a run created, for the run history
================= ==== ========================================================

``"sync"`` (:meth:`Batch.sync`) is a marker: once the client has it, it has
everything that worker sent before (the stream of one worker is in order).
Pub-sub messages must be msgpack-serialisable, hence lists of plain values;
each class's encoder and decoder are side by side, and the field order is
the class's. A :class:`RunSpec` pickles as a flat tuple headed by
:data:`VERSION` the same way. A message of another version is refused with
an error naming both versions, never misread.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from daskflow.exceptions import ConfigurationError
from daskflow.runstore import ArtifactRecord
from daskflow.states import FINAL_TYPE_NAMES, State, StateType

__all__ = [
    "VERSION",
    "ArtifactEvent",
    "Batch",
    "Definition",
    "Event",
    "LogEvent",
    "RunSpec",
    "StateEvent",
    "decode_event",
]

VERSION = 5  # 5: a completed run's StateEvent carries its value's data version and length


def _version_error(what: str, version: Any, where: str) -> ConfigurationError:
    return ConfigurationError(
        f"a daskflow {what} of protocol version {version} reached {where} that speaks version {VERSION}: "
        "the client and the Dask workers run different daskflow versions; install the same version on both"
    )


class Definition:
    """The task object and the flow's facts, one value for every Dask task of a submission.

    An object, never a tuple: older Dask (2024.8, the oldest pyproject.toml allows, with its
    tuple-task graphs) reads a tuple in a task's arguments whose first item is callable,
    such as ``(task, flow_info)``, as a task to call, and would run ``task(flow_info)``
    in place of handing the pair on.
    """

    __slots__ = ("task", "flow_info")

    def __init__(self, task: Any, flow_info: dict[str, Any]) -> None:
        self.task = task
        self.flow_info = flow_info

    def __reduce__(self) -> tuple[Any, ...]:
        return (Definition, (self.task, self.flow_info))


class RunSpec:
    """One task run as the client sends it to a worker (see the module docstring)."""

    __slots__ = ("run_id", "name", "map_index", "upstreams", "parameters", "wait_for", "attempts", "crash", "key")

    def __init__(
        self,
        run_id: str,
        name: str,
        map_index: int | None,
        upstreams: tuple[str, ...],
        parameters: dict[str, Any],
        wait_for: tuple[Any, ...],
        attempts: int,
        crash: str | None,
        key: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.name = name
        self.map_index = map_index
        self.upstreams = upstreams
        self.parameters = parameters
        self.wait_for = wait_for
        self.attempts = attempts
        self.crash = crash
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_decode_spec, (VERSION, self.run_id, self.name, self.map_index, self.upstreams, self.parameters,
                               self.wait_for, self.attempts, self.crash, self.key))  # fmt: skip


def _decode_spec(version: int, *fields: Any) -> RunSpec:
    if version != VERSION:
        raise _version_error("task spec", version, "a worker")
    return RunSpec(*fields)


# -- worker -> client ----------------------------------------------------------------------


class _Encoded:
    """Encoding shared by the events: ``[KIND, *fields in declaration order]``."""

    __slots__ = ()
    KIND: ClassVar[str]
    # The field names and a getter of their values, taken once per class (below the classes):
    # every run's states go through here on its worker and on the client.
    _NAMES: ClassVar[tuple[str, ...]]
    _VALUES: ClassVar[Callable[[Any], tuple[Any, ...]]]

    def encode(self) -> list[Any]:
        return [self.KIND, *type(self)._VALUES(self)]

    @classmethod
    def decode(cls, item: list[Any]) -> Self:
        if item[0] != cls.KIND or len(item) != len(cls._NAMES) + 1:
            raise ConfigurationError(
                f"malformed daskflow {cls.__name__}: expected [{cls.KIND!r}, {', '.join(cls._NAMES)}], "
                f"got {item!r:.200}"
            )
        return cls(*item[1:])


_FINAL_TYPES = FINAL_TYPE_NAMES


@dataclass(frozen=True, slots=True)
class StateEvent(_Encoded):
    """A task run entered a state. Without its value: a value leaves its worker only when asked for."""

    KIND: ClassVar[str] = "s"
    run_id: str
    attempt: int  # the run's run_count when it entered the state: events of a stale attempt are told apart
    type: str  # a StateType value
    name: str
    message: str | None
    timestamp: float
    traceback: str | None
    start: float | None = None  # the attempt's start, when its Running event was folded into this one
    cache_key: str | None = None
    interim: bool = False  # a crash judged before a retry: final-looking, but the run went on
    # A completed run's versioned value (a cached task's): its data version, and its length when a
    # list or tuple. The value stays on the worker; these let the client key runs over it.
    version: str | None = None
    length: int | None = None

    @classmethod
    def of(cls, run_id: str, attempt: int, state: State, cache_key: str | None = None) -> StateEvent:
        deferred = state.deferred if cache_key is not None and state.is_completed() else None
        version, length = (None, None) if deferred is None else (deferred.version, deferred.length)
        return cls(run_id, attempt, state.type.value, state.name, state.message, state.epoch, state.traceback,
                   cache_key=cache_key, version=version, length=length)  # fmt: skip

    def with_start(self, start: float) -> StateEvent:
        """This event with ``start`` (a folded ``Running`` event's time); ``dataclasses.replace`` costs more."""
        return StateEvent(self.run_id, self.attempt, self.type, self.name, self.message, self.timestamp,
                          self.traceback, start, self.cache_key, self.interim, self.version,
                          self.length)  # fmt: skip

    @property
    def running(self) -> bool:
        return self.type == StateType.RUNNING.value

    @property
    def final(self) -> bool:
        """Whether this is the end of the run (not a crash it went on from)."""
        return self.type in _FINAL_TYPES and not self.interim

    def state(self) -> State:
        # Interned: a map's 100,000 states then share a handful of name strings.
        return State(
            StateType(self.type), sys.intern(self.name), self.message, timestamp=self.timestamp,
            traceback_text=self.traceback,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class LogEvent(_Encoded):
    """A log record of a run, to be emitted again through the client's loggers."""

    KIND: ClassVar[str] = "l"
    run_id: str
    logger: str
    level: int
    message: str
    created: float
    exc_text: str | None
    run_name: str | None
    task_name: str | None
    flow_run_id: str | None
    flow_run_name: str | None
    flow_name: str | None

    @classmethod
    def of(cls, run_id: str, record: logging.LogRecord, exc_text: str | None) -> LogEvent:
        return cls(
            run_id, record.name, record.levelno, record.getMessage(), record.created, exc_text,
            getattr(record, "task_run_name", None), getattr(record, "task_name", None),
            getattr(record, "flow_run_id", None), getattr(record, "flow_run_name", None),
            getattr(record, "flow_name", None),
        )  # fmt: skip

    def record(self) -> logging.LogRecord:
        return logging.makeLogRecord(
            {
                "name": self.logger,
                "levelno": self.level,
                "levelname": logging.getLevelName(self.level),
                "msg": self.message,
                "created": self.created,
                "msecs": (self.created % 1) * 1000,
                "exc_text": self.exc_text,
                "task_run_id": self.run_id,
                "task_run_name": self.run_name,
                "task_name": self.task_name,
                "flow_run_id": self.flow_run_id,
                "flow_run_name": self.flow_run_name,
                "flow_name": self.flow_name,
                "run_label": f"Task run {self.run_name!r}",
            }
        )


@dataclass(frozen=True, slots=True)
class ArtifactEvent(_Encoded):
    """An artifact a run created, for the client's run history."""

    KIND: ClassVar[str] = "a"
    id: str
    type: str
    data: str
    key: str | None
    description: str | None
    flow_run_id: str | None
    task_run_id: str | None
    created: float

    @classmethod
    def of(cls, artifact: ArtifactRecord) -> ArtifactEvent:
        created = artifact.created  # a number on the wire (msgpack has no datetime)
        return cls(artifact.id, artifact.type, artifact.data, artifact.key, artifact.description,
                   artifact.flow_run_id, artifact.task_run_id,
                   created if isinstance(created, (int, float)) else created.timestamp())  # fmt: skip

    def record(self) -> ArtifactRecord:
        return ArtifactRecord(
            id=self.id, type=self.type, data=self.data, key=self.key, description=self.description,
            flow_run_id=self.flow_run_id, task_run_id=self.task_run_id, created=self.created,
        )  # fmt: skip


Event = StateEvent | LogEvent | ArtifactEvent
_KINDS: dict[str, type[StateEvent] | type[LogEvent] | type[ArtifactEvent]] = {
    cls.KIND: cls for cls in (StateEvent, LogEvent, ArtifactEvent)
}
for _cls in _KINDS.values():
    _cls._NAMES = tuple(f.name for f in dataclasses.fields(_cls))
    # attrgetter of one name gives the value, not a 1-tuple: every event class has several fields.
    _cls._VALUES = operator.attrgetter(*_cls._NAMES)


def decode_event(item: list[Any]) -> Event:
    """One event of a batch, by its kind."""
    cls = _KINDS.get(item[0]) if item else None
    if cls is None:
        raise ConfigurationError(f"unknown daskflow event kind {item[:1]!r}: expected one of {sorted(_KINDS)}")
    return cls.decode(item)


@dataclass(frozen=True, slots=True)
class Batch:
    """What one worker process sends at once: its events in order, or a sync marker."""

    events: tuple[Event, ...]
    pid: int | None = None  # the worker process's: a worker thread in the client's process logged here already
    sync: str | None = None  # the token of a flush the client asked for (see the module docstring)
    worker: str | None = None  # added by the scheduler

    def encode(self) -> dict[str, Any]:
        message: dict[str, Any] = {"v": VERSION, "pid": self.pid, "b": [event.encode() for event in self.events]}
        if self.sync is not None:
            message["sync"] = self.sync
        return message

    @classmethod
    def decode(cls, message: dict[str, Any]) -> Batch:
        version = message.get("v")
        if version != VERSION:
            raise _version_error("event batch", version, "a client")
        return cls(
            tuple(decode_event(item) for item in message.get("b", ())),
            message.get("pid"),
            message.get("sync"),
            message.get("worker"),
        )

    @classmethod
    def marker(cls, token: str, pid: int) -> Batch:
        """The sync marker with ``token``."""
        return cls((), pid, token)
