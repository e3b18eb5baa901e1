"""Records as the rows :meth:`RunStore.write <daskflow.runstore.store.RunStore.write>` hands the database.

The run history writes a task run row and a state row or two for every task run,
on a thread that shares the GIL with the flow, so a row is built once, as the
tuple of parameters the driver takes, in the order of its table's ``*_COLUMNS``
here (the order the store's ``INSERT`` names them): no dict per row, no
SQLAlchemy type processing per value. The portable path (databases without
``ON CONFLICT``) zips the same tuples with their columns into dicts.

Times go through a ``to_stored`` function: SQLite's text form
(:func:`~daskflow.runstore.schema.sqlite_text`) on SQLite, an aware ``datetime``
elsewhere. :func:`remembering` wraps it for one batch, so that a time met twice is
converted once: a run's ``end_time`` is its final state's timestamp, and a run's
``created`` is its first snapshot's ``updated``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from daskflow.runstore.records import (
    ArtifactRecord,
    FlowRunRecord,
    LogEntry,
    StateRecord,
    TaskRunRecord,
    Timestamp,
    encode_parameters,
)

__all__ = [
    "ARTIFACT_COLUMNS",
    "FLOW_RUN_COLUMNS",
    "LOG_COLUMNS",
    "STATE_COLUMNS",
    "TASK_RUN_COLUMNS",
    "ToStored",
    "artifact_row",
    "decode_tags",
    "encode_tags",
    "flow_run_row",
    "log_row",
    "remembering",
    "state_row",
    "task_run_row",
]

ToStored = Callable[[Timestamp], Any]  # a record's time as the database takes it

# json.dumps(strings, separators=(",", ":")), the same text, in one C call per string.
_quoted = json.encoder.encode_basestring_ascii


def _json_strings(strings: Iterable[str]) -> str:
    return f"[{','.join(map(_quoted, strings))}]"


FLOW_RUN_COLUMNS = (
    "id", "name", "flow_name", "parent_flow_run_id", "parameters", "state_type", "state_name",
    "state_message", "start_time", "end_time", "run_count", "traceback", "created", "updated",
    "entrypoint", "dashboard_link", "tags", "scheduled_start_time", "deployment_id", "deployment_name",
)  # fmt: skip
TASK_RUN_COLUMNS = (
    "id", "flow_run_id", "name", "task_name", "map_index", "state_type", "state_name", "state_message",
    "start_time", "end_time", "run_count", "cache_key", "cache_hit", "worker", "slot_wait", "traceback",
    "created", "updated", "upstream_ids", "tags",
)  # fmt: skip
STATE_COLUMNS = ("run_id", "run_kind", "type", "name", "message", "timestamp", "uid")
LOG_COLUMNS = ("flow_run_id", "task_run_id", "logger", "level", "message", "created", "exception", "uid")
ARTIFACT_COLUMNS = ("id", "key", "type", "description", "data", "flow_run_id", "task_run_id", "created")


def remembering(to_stored: ToStored) -> ToStored:
    """``to_stored``, converting each distinct time once (for one batch: the memory lasts as long as it)."""
    seen: dict[Timestamp, Any] = {}

    def stored(value: Timestamp) -> Any:
        text = seen.get(value)
        if text is None:
            text = seen[value] = to_stored(value)
        return text

    return stored


def encode_tags(tags: tuple[str, ...]) -> str | None:
    """Tags as the store keeps them: a sorted JSON list (``runs ls --tag`` matches its text)."""
    return _json_strings(sorted(tags)) if tags else None


def decode_tags(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text else ()


def flow_run_row(record: FlowRunRecord, first_seen: Timestamp, ts: ToStored) -> tuple[Any, ...]:
    """A flow run snapshot in :data:`FLOW_RUN_COLUMNS` order; ``first_seen``: its created time if it has none."""
    return (
        record.id,
        record.name,
        record.flow_name,
        record.parent_flow_run_id,
        encode_parameters(record.parameters),
        record.state_type,
        record.state_name,
        record.state_message,
        None if record.start_time is None else ts(record.start_time),
        None if record.end_time is None else ts(record.end_time),
        record.run_count,
        record.traceback,
        ts(record.created if record.created is not None else first_seen),
        ts(record.updated),
        record.entrypoint,
        record.dashboard_link,
        encode_tags(record.tags),
        None if record.scheduled_start_time is None else ts(record.scheduled_start_time),
        record.deployment_id,
        record.deployment_name,
    )


def task_run_row(record: TaskRunRecord, first_seen: Timestamp, ts: ToStored) -> tuple[Any, ...]:
    """A task run snapshot in :data:`TASK_RUN_COLUMNS` order; ``first_seen`` as for :func:`flow_run_row`."""
    start, end, upstream, tags = record.start_time, record.end_time, record.upstream_ids, record.tags
    return (
        record.id,
        record.flow_run_id,
        record.name,
        record.task_name,
        record.map_index,
        record.state_type,
        record.state_name,
        record.state_message,
        None if start is None else ts(start),
        None if end is None else ts(end),
        record.run_count,
        record.cache_key,
        bool(record.cache_hit),
        record.worker,
        float(record.slot_wait),
        record.traceback,
        ts(record.created if record.created is not None else first_seen),
        ts(record.updated),
        _json_strings(upstream) if upstream else None,
        _json_strings(sorted(tags)) if tags else None,
    )


def state_row(record: StateRecord, ts: ToStored) -> tuple[Any, ...]:
    """A state record in :data:`STATE_COLUMNS` order."""
    return (record.run_id, record.run_kind, record.type, record.name, record.message, ts(record.timestamp), record.uid)


def log_row(record: LogEntry, ts: ToStored) -> tuple[Any, ...]:
    """A log record in :data:`LOG_COLUMNS` order."""
    return (
        record.flow_run_id,
        record.task_run_id,
        record.logger,
        record.level,
        record.message,
        ts(record.created),
        record.exception,
        record.uid,
    )


def artifact_row(record: ArtifactRecord, ts: ToStored) -> tuple[Any, ...]:
    """An artifact in :data:`ARTIFACT_COLUMNS` order."""
    return (
        record.id,
        record.key,
        record.type,
        record.description,
        record.data,
        record.flow_run_id,
        record.task_run_id,
        ts(record.created),
    )
