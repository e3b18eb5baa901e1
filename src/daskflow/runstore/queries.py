"""Read-only queries that a live view needs and ``runs ls`` does not: pages, counts, and what changed.

The server (:mod:`daskflow.server`) reads the run store through these, never
through raw SQL of its own, so every query stays beside the schema it relies
on. Each answers one question in one or two indexed queries, whatever the
size of the history:

* :func:`flow_run_page` — a page of flow runs, newest first (``offset``/``limit``,
  one row more than asked to tell whether there is a next page), with the task
  runs of each counted by state name;
* :func:`task_state_counts`, :func:`task_run_page` — one flow run's task runs,
  counted and paged, filtered by state and name;
* :func:`logs_after` — a flow run's log records after a given record id (a tail);
* :func:`changes_after` — every state entered and log line written after given
  row ids, with the flow run each belongs to: what the event stream sends.
  States and logs are append-only tables with increasing ids, so "what is new"
  is a primary-key range scan, however many runs the store holds.

Errors are the store's: a database that cannot be used raises
:class:`~daskflow.runstore.errors.RunStoreUnavailableError`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.history import FlowRunDetail, FlowRunSummary, LogInfo, StateInfo, TaskRunInfo
from daskflow.runstore.store import RunStore

__all__ = [
    "Changes",
    "FlowRunPage",
    "changes_after",
    "flow_run_entrypoint",
    "flow_run_header",
    "flow_run_page",
    "latest_ids",
    "logs_after",
    "running_task_counts",
    "started_by",
    "task_run",
    "task_run_page",
    "task_runs_for_drawing",
    "task_runs_by_id",
    "task_state_counts",
]

_IN_CHUNK = 500  # ids per IN (...) list: far below every backend's bound-parameter limit


@dataclass(frozen=True, slots=True)
class FlowRunPage:
    """One page of flow runs, and the task runs of each counted by state name."""

    runs: list[FlowRunSummary]
    counts: dict[str, dict[str, int]]  # flow run id -> state name -> task runs
    has_more: bool


@dataclass(frozen=True, slots=True)
class Changes:
    """What was written after a point: states (with their flow run) and log lines, oldest first."""

    states: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    last_state_id: int = 0
    last_log_id: int = 0


def _columns(table: sa.Table, kind: type) -> list[sa.Column[Any]]:
    """The columns of ``table`` that the dataclass ``kind`` has fields for (a later column is not read)."""
    wanted = {f.name for f in dataclasses.fields(kind)}
    return [c for c in table.c if c.name in wanted]


def _state_filter(column_type: Any, column_name: Any, wanted: Sequence[str]) -> Any:
    # As `runs ls`: a state type ("completed") or a state name ("Cached"), any case.
    return sa.or_(
        column_type.in_([s.upper() for s in wanted]), sa.func.lower(column_name).in_([s.lower() for s in wanted])
    )


def flow_run_page(
    store: RunStore,
    *,
    flow_name: str | None = None,
    states: Sequence[str] = (),
    deployment_ids: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> FlowRunPage:
    """Flow runs newest first, ``since <= start < until``.

    ``deployment_ids``: only the runs these deployments started: the runs that
    record their deployment (schema 0006: queued, in flight or ended) and those
    their claims name (runs recorded before 0006).
    """
    fr = schema.flow_runs
    query = sa.select(
        fr.c.id, fr.c.name, fr.c.flow_name, fr.c.state_type, fr.c.state_name,
        fr.c.start_time, fr.c.end_time, fr.c.created, fr.c.parent_flow_run_id,
    ).order_by(schema.started.desc(), fr.c.id.desc())  # fmt: skip
    if flow_name:
        query = query.where(fr.c.flow_name == flow_name)
    if states:
        query = query.where(_state_filter(fr.c.state_type, fr.c.state_name, states))
    if since is not None:
        query = query.where(schema.started >= since)
    if until is not None:
        query = query.where(schema.started < until)
    if deployment_ids is not None:
        dr = schema.deployment_runs
        claimed = sa.select(dr.c.flow_run_id).where(
            dr.c.deployment_id.in_(list(deployment_ids)), dr.c.flow_run_id.is_not(None)
        )
        query = query.where(sa.or_(fr.c.deployment_id.in_(list(deployment_ids)), fr.c.id.in_(claimed)))
    query = query.limit(limit + 1).offset(offset)
    with store.database_errors(), store.engine.connect() as connection:
        rows = connection.execute(query).all()
        ids = [row.id for row in rows[:limit]]
        counts = _counts_by_state(connection, ids)
    summaries = []
    for row in rows[:limit]:
        by_state = counts.get(row.id, {})
        hits = by_state.get("Cached", 0)
        summaries.append(FlowRunSummary(**row._asdict(), task_runs=sum(by_state.values()), cache_hits=hits))
    return FlowRunPage(summaries, counts, has_more=len(rows) > limit)


def _counts_by_state(connection: sa.Connection, ids: list[str]) -> dict[str, dict[str, int]]:
    tr = schema.task_runs
    counts: dict[str, dict[str, int]] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        query = sa.select(tr.c.flow_run_id, tr.c.state_name, sa.func.count()).where(tr.c.flow_run_id.in_(chunk))
        for run_id, state_name, n in connection.execute(query.group_by(tr.c.flow_run_id, tr.c.state_name)):
            counts.setdefault(run_id, {})[state_name] = int(n)
    return counts


def task_state_counts(store: RunStore, flow_run_id: str) -> dict[str, int]:
    """How many task runs of one flow run are in each state (by state name)."""
    with store.database_errors(), store.engine.connect() as connection:
        return _counts_by_state(connection, [flow_run_id]).get(flow_run_id, {})


def flow_run_header(store: RunStore, flow_run_id: str) -> FlowRunDetail | None:
    """One flow run and its states, without its task runs (``task_runs`` is empty: page them instead)."""
    fr, st = schema.flow_runs, schema.states
    with store.database_errors(), store.engine.connect() as connection:
        row = connection.execute(sa.select(*_columns(fr, FlowRunDetail)).where(fr.c.id == flow_run_id)).first()
        if row is None:
            return None
        query = sa.select(st.c.run_id, st.c.run_kind, st.c.type, st.c.name, st.c.message, st.c.timestamp)
        states = [
            StateInfo(**r._asdict())
            for r in connection.execute(query.where(st.c.run_id == flow_run_id).order_by(st.c.timestamp, st.c.id))
        ]
    values = row._asdict()
    try:
        parameters = json.loads(values["parameters"]) if values["parameters"] else {}
    except ValueError:
        parameters = {"<unreadable>": values["parameters"]}
    values["parameters"] = parameters if isinstance(parameters, dict) else {"<value>": parameters}
    return FlowRunDetail(**values, states=tuple(states), task_runs=())


def flow_run_entrypoint(store: RunStore, flow_run_id: str) -> str | None:
    """The import path recorded for a flow run's flow, if it had one."""
    fr = schema.flow_runs
    with store.database_errors(), store.engine.connect() as connection:
        value = connection.execute(sa.select(fr.c.entrypoint).where(fr.c.id == flow_run_id)).scalar()
    return None if value is None else str(value)


def task_runs_by_id(store: RunStore, ids: Sequence[str]) -> list[TaskRunInfo]:
    """The task runs with these ids (those that exist), in creation order."""
    tr = schema.task_runs
    found: list[TaskRunInfo] = []
    columns = _columns(tr, TaskRunInfo)
    with store.database_errors(), store.engine.connect() as connection:
        for start in range(0, len(ids), _IN_CHUNK):
            query = sa.select(*columns).where(tr.c.id.in_(list(ids[start : start + _IN_CHUNK])))
            for row in connection.execute(query):
                values = row._asdict()
                values["upstream_ids"] = tuple(json.loads(values["upstream_ids"])) if values["upstream_ids"] else ()
                found.append(TaskRunInfo(**values))
    return sorted(found, key=lambda run: (run.created, run.map_index or 0, run.id))


def _utc(value: Any) -> datetime | None:
    # What a raw time column holds: SQLite's text (naive UTC, see schema.UTCDateTime) or a datetime.
    if value is None:
        return None
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def task_runs_for_drawing(store: RunStore, flow_run_id: str) -> list[TaskRunInfo]:
    """All task runs of a flow run, for the graph and timeline: the same as ``RunStore.task_runs``,
    read without SQLAlchemy's per-value type processing (a 100,000-task-run run in about a second,
    not ten). Messages and tracebacks are left out: a drawing shows neither.
    """
    tr = schema.task_runs
    raw = [sa.type_coerce(tr.c[name], sa.String) for name in ("start_time", "end_time", "created")]
    query = sa.select(
        tr.c.id, tr.c.name, tr.c.task_name, tr.c.map_index, tr.c.state_type, tr.c.state_name, *raw,
        tr.c.run_count, tr.c.cache_key, tr.c.cache_hit, tr.c.worker, tr.c.slot_wait, tr.c.upstream_ids,
    ).where(tr.c.flow_run_id == flow_run_id).order_by(tr.c.created, tr.c.map_index, tr.c.id)  # fmt: skip
    runs = []
    with store.database_errors(), store.engine.connect() as connection:
        for row in connection.execute(query).tuples():
            (run_id, name, task_name, map_index, state_type, state_name, start, end, created,
             run_count, cache_key, cache_hit, worker, slot_wait, upstream) = row  # fmt: skip
            runs.append(
                TaskRunInfo(
                    id=run_id,
                    flow_run_id=flow_run_id,
                    name=name,
                    task_name=task_name,
                    map_index=map_index,
                    state_type=state_type,
                    state_name=state_name,
                    state_message=None,
                    start_time=_utc(start),
                    end_time=_utc(end),
                    run_count=run_count,
                    cache_key=cache_key,
                    cache_hit=bool(cache_hit),
                    worker=worker,
                    slot_wait=slot_wait,
                    traceback=None,
                    created=_utc(created) or datetime.now(UTC),
                    upstream_ids=tuple(json.loads(upstream)) if upstream else (),
                )  # fmt: skip
            )
    return runs


def task_run(store: RunStore, task_run_id: str) -> TaskRunInfo | None:
    """One task run by its id; None if there is none."""
    found = task_runs_by_id(store, [task_run_id])
    return found[0] if found else None


def task_run_page(
    store: RunStore,
    flow_run_id: str,
    *,
    states: Sequence[str] = (),
    name: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[TaskRunInfo], bool]:
    """A page of one flow run's task runs in creation order, and whether more follow.

    ``name`` matches a task run name or a task name, or a part of either.
    """
    tr = schema.task_runs
    query = sa.select(*_columns(tr, TaskRunInfo)).where(tr.c.flow_run_id == flow_run_id)
    if states:
        query = query.where(_state_filter(tr.c.state_type, tr.c.state_name, states))
    if name:
        pattern = f"%{name}%"
        query = query.where(sa.or_(tr.c.name.like(pattern, escape="\\"), tr.c.task_name.like(pattern, escape="\\")))
    query = query.order_by(tr.c.created, tr.c.map_index, tr.c.id).limit(limit + 1).offset(offset)
    with store.database_errors(), store.engine.connect() as connection:
        rows = connection.execute(query).all()
    runs = []
    for row in rows[:limit]:
        values = row._asdict()
        values["upstream_ids"] = tuple(json.loads(values["upstream_ids"])) if values["upstream_ids"] else ()
        runs.append(TaskRunInfo(**values))
    return runs, len(rows) > limit


def logs_after(
    store: RunStore,
    flow_run_id: str,
    *,
    after: int = 0,
    min_level: int | None = None,
    task_run_id: str | None = None,
    limit: int = 500,
) -> list[LogInfo]:
    """A flow run's log records with ids above ``after``, oldest first (at most ``limit``)."""
    lg = schema.logs
    query = sa.select(*_columns(lg, LogInfo)).where(lg.c.flow_run_id == flow_run_id, lg.c.id > after)
    if min_level is not None:
        query = query.where(lg.c.level >= min_level)
    if task_run_id is not None:
        query = query.where(lg.c.task_run_id == task_run_id)
    query = query.order_by(lg.c.id).limit(limit)
    with store.database_errors(), store.engine.connect() as connection:
        return [LogInfo(**row._asdict()) for row in connection.execute(query)]


def latest_ids(store: RunStore) -> tuple[int, int]:
    """The highest state id and log id written so far: where an event stream starts."""
    st, lg = schema.states, schema.logs
    with store.database_errors(), store.engine.connect() as connection:
        state_id = connection.execute(sa.select(sa.func.max(st.c.id))).scalar()
        log_id = connection.execute(sa.select(sa.func.max(lg.c.id))).scalar()
    return int(state_id or 0), int(log_id or 0)


def changes_after(store: RunStore, state_id: int, log_id: int, *, limit: int = 2000) -> Changes:
    """States and log lines written after the given ids (at most ``limit`` of each), with their flow run.

    A task run's state carries its flow run's id, read from the task run's row,
    which the writer stores in the same transaction as the state.
    """
    st, lg, tr = schema.states, schema.logs, schema.task_runs
    states_query = sa.select(st).where(st.c.id > state_id).order_by(st.c.id).limit(limit)
    logs_query = sa.select(lg).where(lg.c.id > log_id).order_by(lg.c.id).limit(limit)
    with store.database_errors(), store.engine.connect() as connection:
        state_rows = connection.execute(states_query).all()
        log_rows = connection.execute(logs_query).all()
        task_ids = list({row.run_id for row in state_rows if row.run_kind == "task"})
        parents: dict[str, str | None] = {}
        for start in range(0, len(task_ids), _IN_CHUNK):
            chunk = task_ids[start : start + _IN_CHUNK]
            parents.update(connection.execute(sa.select(tr.c.id, tr.c.flow_run_id).where(tr.c.id.in_(chunk))).all())
    states = [
        {
            "id": row.id,
            "run_id": row.run_id,
            "run_kind": row.run_kind,
            "flow_run_id": row.run_id if row.run_kind == "flow" else parents.get(row.run_id),
            "type": row.type,
            "name": row.name,
            "message": row.message,
            "timestamp": row.timestamp.isoformat(),
        }
        for row in state_rows
    ]
    logs = [
        {
            "id": row.id,
            "flow_run_id": row.flow_run_id,
            "task_run_id": row.task_run_id,
            "level": row.level,
            "logger": row.logger,
            "message": row.message,
            "created": row.created.isoformat(),
            "exception": row.exception,
        }
        for row in log_rows
    ]
    return Changes(
        states=states,
        logs=logs,
        last_state_id=state_rows[-1].id if state_rows else state_id,
        last_log_id=log_rows[-1].id if log_rows else log_id,
    )


def started_by(store: RunStore, flow_run_id: str) -> str:
    """Who or what started a flow run: the deployment claim that names it, else a direct call."""
    dr, dp = schema.deployment_runs, schema.deployments
    query = sa.select(dp.c.name, dr.c.kind, dr.c.claimed_by).join(dp, dp.c.id == dr.c.deployment_id)
    with store.database_errors(), store.engine.connect() as connection:
        row = connection.execute(query.where(dr.c.flow_run_id == flow_run_id)).first()
    if row is None:
        return "a direct call of the flow"
    return f"deployment {row.name} ({row.kind}, by {row.claimed_by})"


def running_task_counts(store: RunStore, task_names: Sequence[str]) -> dict[str, int]:
    """How many task runs of each of these tasks are running now (by the store's latest snapshots)."""
    if not task_names:
        return {}
    tr = schema.task_runs
    query = sa.select(tr.c.task_name, sa.func.count()).where(
        tr.c.state_type == "RUNNING", tr.c.task_name.in_(list(task_names))
    )
    with store.database_errors(), store.engine.connect() as connection:
        return {name: int(n) for name, n in connection.execute(query.group_by(tr.c.task_name))}
