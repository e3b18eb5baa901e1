"""What the engine writes to the run store: small records of plain data.

A record is built on the hot path (in the thread that changed a run's state)
and converted to rows later, on the writer's thread, so building one costs a
dataclass and nothing else: times are the engine's epoch seconds (``float``;
an aware ``datetime`` works too), parameters the run's own mapping, encoded to
JSON only when written. The records are not frozen because a frozen dataclass
takes three times as long to build (about 1.7 us against 0.6 us for a task run
snapshot); once put, a record belongs to the writer and is not changed.

* :class:`FlowRunRecord` and :class:`TaskRunRecord` are *snapshots*: the whole
  row of one run as it is now. The store keeps, per run id, the snapshot with
  the latest ``updated`` time, so writing one twice changes nothing and an old
  snapshot arriving late does not undo a newer one.
* :class:`StateRecord`, :class:`LogEntry` and :class:`ArtifactRecord` are
  appended: every state a run passed through, every log record, every artifact.
  Each carries an id of its own, given when the record is built (``uid``;
  an artifact's ``id``), and the store inserts a record whose id it already
  holds as nothing: a batch written twice — retried after a commit whose
  answer was lost, or replayed from the spool (:mod:`.spool`) — is kept once.

Run ids link the records; they are not foreign keys in the database, so a batch
lost in an outage never makes a later batch of the same run fail.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal, Union

__all__ = [
    "ArtifactRecord",
    "FlowRunRecord",
    "LogEntry",
    "Record",
    "RunKind",
    "StateRecord",
    "TaskRunRecord",
    "Timestamp",
    "encode_parameters",
    "log_entry_from_record",
    "new_record_id",
]

# Epoch seconds (time.time()) or a datetime; naive datetimes are local time, as in Python.
Timestamp = Union[float, datetime]
RunKind = Literal["flow", "task"]


def _fresh_prefix() -> None:
    global _prefix, _counter
    _prefix = uuid.uuid4().hex[:16] + "-"
    _counter = itertools.count()


_prefix = ""
_counter: Iterator[int] = itertools.count()
_fresh_prefix()
os.register_at_fork(after_in_child=_fresh_prefix)  # a forked child must not repeat its parent's ids


def new_record_id() -> str:
    """A record id unique across processes: 64 random bits per process, then a counter.

    About a tenth of a uuid4's cost: states and log records are many, and their
    ids are made on the writer's thread, which shares the GIL with the flow.
    """
    return f"{_prefix}{next(_counter):x}"


@dataclass(slots=True, kw_only=True)
class FlowRunRecord:
    """A snapshot of one flow run."""

    id: str
    name: str
    flow_name: str
    state_type: str  # a StateType value: "RUNNING", "COMPLETED", ...
    state_name: str  # "Running", "Completed", "Cached", ...
    state_message: str | None = None
    parameters: Mapping[str, Any] | None = None
    parent_flow_run_id: str | None = None
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    run_count: int = 0
    traceback: str | None = None  # the failure's formatted traceback
    updated: Timestamp = field(default_factory=time.time)  # when this snapshot was taken
    created: Timestamp | None = None  # when the run was created; None: the first snapshot's time
    entrypoint: str | None = None  # where the flow imports from ("module:flow", "/path/file.py:flow")
    dashboard_link: str | None = None  # the Dask dashboard of the cluster the run used, if any
    tags: tuple[str, ...] = ()
    scheduled_start_time: Timestamp | None = None
    deployment_id: str | None = None
    deployment_name: str | None = None


@dataclass(slots=True, kw_only=True)
class TaskRunRecord:
    """A snapshot of one task run: a call, a ``.submit`` or one item of a ``.map``."""

    id: str
    flow_run_id: str | None
    name: str
    task_name: str
    state_type: str
    state_name: str
    state_message: str | None = None
    map_index: int | None = None
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    run_count: int = 0  # attempts; retries = run_count - 1
    cache_key: str | None = None
    cache_hit: bool = False
    worker: str | None = None
    slot_wait: float = 0.0  # seconds spent waiting for concurrency slots and rate limits
    traceback: str | None = None
    upstream_ids: tuple[str, ...] = ()  # the task runs whose results this one took
    updated: Timestamp = field(default_factory=time.time)
    created: Timestamp | None = None
    tags: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class StateRecord:
    """One state a run entered."""

    run_id: str
    run_kind: RunKind
    type: str
    name: str
    message: str | None = None
    timestamp: Timestamp = field(default_factory=time.time)
    uid: str = field(default_factory=new_record_id)  # the store keeps one row per uid


@dataclass(slots=True, kw_only=True)
class LogEntry:
    """One log record of a run (see :func:`log_entry_from_record`)."""

    flow_run_id: str | None
    task_run_id: str | None = None
    logger: str = ""
    level: int = logging.INFO
    message: str = ""
    created: Timestamp = field(default_factory=time.time)
    exception: str | None = None  # the formatted exception, when the record had one
    uid: str = field(default_factory=new_record_id)  # the store keeps one row per uid


@dataclass(slots=True, kw_only=True)
class ArtifactRecord:
    """One artifact: a markdown text, a table (as JSON) or a link, kept against its run."""

    type: str  # "markdown" | "table" | "link"
    data: str
    key: str | None = None  # artifacts sharing a key are versions of one thing
    description: str | None = None
    flow_run_id: str | None = None
    task_run_id: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: Timestamp = field(default_factory=time.time)


Record = Union[FlowRunRecord, TaskRunRecord, StateRecord, LogEntry, ArtifactRecord]

_FORMATTER = logging.Formatter()


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    text = repr(value)
    return text if len(text) <= 1000 else text[:1000] + "..."


def encode_parameters(parameters: Mapping[str, Any] | None) -> str | None:
    """A run's parameters as the JSON text the store keeps (what JSON cannot hold, as its repr)."""
    if parameters is None:
        return None
    try:
        return json.dumps(dict(parameters), default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError):  # non-str keys, cycles: keep what can be read
        return json.dumps({str(k): _json_default(v) for k, v in parameters.items()}, separators=(",", ":"))


def log_entry_from_record(
    record: logging.LogRecord, *, flow_run_id: str | None = None, task_run_id: str | None = None
) -> LogEntry:
    """A :class:`LogEntry` from a logging record, e.g. in a handler on the run loggers.

    The run ids default to the ``flow_run_id`` and ``task_run_id`` attributes that
    daskflow's run loggers stamp on their records.
    """
    exception = None
    if record.exc_info:
        exception = record.exc_text or _FORMATTER.formatException(record.exc_info)
    return LogEntry(
        flow_run_id=flow_run_id if flow_run_id is not None else getattr(record, "flow_run_id", None),
        task_run_id=task_run_id if task_run_id is not None else getattr(record, "task_run_id", None),
        logger=record.name,
        level=record.levelno,
        message=record.getMessage(),
        created=record.created,
        exception=exception,
    )
