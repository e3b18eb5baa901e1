"""Event rows: what ``emit_event`` recorded, and the runs' state changes read back as events.

The storage half of :mod:`daskflow.events`. An emitted event is one row of
``events`` (resource, payload and related resources as JSON text), written in
its own transaction when it is emitted. State changes are not written twice:
:func:`list_events` reads them from the ``states`` table and names them as
Prefect does (``prefect.flow-run.Completed`` becomes
``daskflow.flow-run.Completed``, resource ``daskflow.flow-run.<id>``), with
the related resources Prefect gives them (the flow, deployment, work pool and
tags of the run; a task run's flow run) taken from the same query's join.

Deployment triggers that count events keep their state in ``trigger_states``
(one JSON document per deployment and trigger), read and written under a lock
with :func:`locked_trigger_state`: the row lock on PostgreSQL, the file's
write lock on SQLite, so two services never count from the same state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.store import RunStore

__all__ = [
    "EventRow",
    "TriggerStateRow",
    "list_events",
    "locked_trigger_state",
    "read_trigger_state",
    "write_event",
]


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event: when, what, about which resource, with what payload and related resources."""

    id: str
    occurred: datetime
    event: str
    resource: dict[str, Any]
    payload: dict[str, Any] = field(default_factory=dict)
    related: list[dict[str, Any]] = field(default_factory=list)
    flow_run_id: str | None = None
    task_run_id: str | None = None


def write_event(store: RunStore, row: EventRow) -> None:
    """Store one emitted event."""
    values = {
        "id": row.id,
        "occurred": row.occurred,
        "event": row.event,
        "resource_id": _resource_id(row.resource),
        "resource": json.dumps(row.resource, separators=(",", ":")),
        "payload": json.dumps(row.payload, separators=(",", ":"), default=str) if row.payload else None,
        "related": json.dumps(row.related, separators=(",", ":")) if row.related else None,
        "flow_run_id": row.flow_run_id,
        "task_run_id": row.task_run_id,
    }
    with store.database_errors(), store._write_engine.begin() as connection:
        connection.execute(schema.events.insert().values(**values))


def _resource_id(resource: dict[str, Any]) -> str:
    return str(resource.get("daskflow.resource.id") or resource.get("prefect.resource.id") or "")


def list_events(
    store: RunStore,
    *,
    prefix: str | None = None,
    resource_id: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    states: bool = True,
) -> list[EventRow]:
    """Events, newest first: the emitted ones and (with ``states``) the runs' state changes.

    ``prefix`` keeps events whose name starts with it (``daskflow.flow-run.``);
    ``resource_id`` those about one resource.
    """
    ev = schema.events
    query = sa.select(ev).order_by(ev.c.occurred.desc(), ev.c.id).limit(limit)
    if prefix is not None:
        query = query.where(ev.c.event.startswith(prefix, autoescape=True))
    if resource_id is not None:
        query = query.where(ev.c.resource_id == resource_id)
    if since is not None:
        query = query.where(ev.c.occurred >= since)
    found: list[EventRow] = []
    with store.database_errors(), store.engine.connect() as connection:
        for row in connection.execute(query):
            m = row._mapping
            found.append(
                EventRow(
                    id=m["id"],
                    occurred=m["occurred"],
                    event=m["event"],
                    resource=json.loads(m["resource"]),
                    payload=json.loads(m["payload"]) if m["payload"] else {},
                    related=json.loads(m["related"]) if m["related"] else [],
                    flow_run_id=m["flow_run_id"],
                    task_run_id=m["task_run_id"],
                )
            )
        if states:
            found.extend(_state_events(connection, prefix, resource_id, since, limit))
    found.sort(key=lambda e: (e.occurred, e.id), reverse=True)
    return found[:limit]


def _state_events(
    connection: sa.Connection, prefix: str | None, resource_id: str | None, since: datetime | None, limit: int
) -> list[EventRow]:
    # One query: each state joined to its run (a flow run, or a task run and its flow run) and to the
    # deployment the flow run ran for, whose columns become the event's related resources.
    st, fr, tr, dp = schema.states, schema.flow_runs, schema.task_runs, schema.deployments
    parent = fr.alias("parent")
    run_flow = sa.and_(st.c.run_kind == "flow", fr.c.id == st.c.run_id)
    run_task = sa.and_(st.c.run_kind == "task", tr.c.id == st.c.run_id)
    deployment_id = sa.func.coalesce(fr.c.deployment_id, parent.c.deployment_id)
    query = (
        sa.select(
            st,
            sa.func.coalesce(fr.c.name, tr.c.name).label("run_name"),
            sa.func.coalesce(fr.c.flow_name, parent.c.flow_name).label("flow_name"),
            sa.func.coalesce(fr.c.tags, tr.c.tags).label("tags"),
            tr.c.flow_run_id.label("task_flow_run_id"),
            parent.c.name.label("task_flow_run_name"),
            deployment_id.label("deployment_id"),
            sa.func.coalesce(fr.c.deployment_name, parent.c.deployment_name).label("deployment_name"),
            dp.c.work_pool.label("work_pool"),
        )
        .select_from(
            st.outerjoin(fr, run_flow)
            .outerjoin(tr, run_task)
            .outerjoin(parent, parent.c.id == tr.c.flow_run_id)
            .outerjoin(dp, dp.c.id == deployment_id)
        )
        .order_by(st.c.timestamp.desc(), st.c.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(st.c.timestamp >= since)
    if resource_id is not None:
        kind, _, run_id = resource_id.rpartition(".")
        if kind not in ("daskflow.flow-run", "daskflow.task-run", "prefect.flow-run", "prefect.task-run"):
            return []
        query = query.where(st.c.run_id == run_id, st.c.run_kind == kind.split(".")[1].split("-")[0])
    events = []
    for row in connection.execute(query):
        m = row._mapping
        kind = f"daskflow.{m['run_kind']}-run"
        name = f"{kind}.{m['name']}"
        if prefix is not None and not _canonical(name).startswith(_canonical(prefix)):
            continue
        run_id = m["run_id"]
        resource = {
            "daskflow.resource.id": f"{kind}.{run_id}",
            "daskflow.resource.name": m["run_name"] or run_id,
            "daskflow.state-name": m["name"],
            "daskflow.state-type": m["type"],
        }
        events.append(
            EventRow(
                id=f"state-{m['id']}",
                occurred=m["timestamp"],
                event=name,
                resource=resource,
                payload={"message": m["message"]} if m["message"] else {},
                related=_related(m),
                flow_run_id=run_id if m["run_kind"] == "flow" else m["task_flow_run_id"],
                task_run_id=run_id if m["run_kind"] == "task" else None,
            )
        )
    return events


def _resource(kind: str, key: str, role: str, name: str | None = None) -> dict[str, Any]:
    found = {"daskflow.resource.id": f"daskflow.{kind}.{key}", "daskflow.resource.role": role}
    if name:
        found["daskflow.resource.name"] = name
    return found


def _related(m: sa.RowMapping) -> list[dict[str, Any]]:
    """A state event's related resources, named as Prefect names them (``prefect.`` becomes ``daskflow.``).

    A flow run's: its flow (by name: daskflow has no flow ids), its deployment and that deployment's work
    pool when it ran for one, and its tags. A task run's: its flow run, its flow, and its tags.
    """
    related = []
    if m["task_flow_run_id"] is not None:
        related.append(_resource("flow-run", m["task_flow_run_id"], "flow-run", m["task_flow_run_name"]))
    if m["flow_name"]:
        related.append(_resource("flow", m["flow_name"], "flow", m["flow_name"]))
    if m["deployment_id"] and m["run_kind"] == "flow":
        related.append(_resource("deployment", m["deployment_id"], "deployment", m["deployment_name"]))
        pool = _work_pool_name(m["work_pool"])
        if pool:
            related.append(_resource("work-pool", pool, "work-pool", pool))
    for tag in json.loads(m["tags"]) if m["tags"] else ():
        related.append(_resource("tag", tag, "tag"))
    return related


def _work_pool_name(text: str | None) -> str | None:
    try:
        pool = json.loads(text) if text else None
    except ValueError:
        return None
    return str(pool["name"]) if isinstance(pool, dict) and pool.get("name") else None


def _canonical(text: str) -> str:
    return "daskflow." + text[len("prefect.") :] if text.startswith("prefect.") else text


@dataclass(slots=True)
class TriggerStateRow:
    """One trigger's stored state (a JSON object), read under the lock; what the holder leaves in it is saved."""

    state: dict[str, Any]
    connection: sa.Connection

    def existing_flow_runs(self, ids: list[str]) -> set[str]:
        """Those of ``ids`` that are flow runs in the store (a firing queued already)."""
        if not ids:
            return set()
        fr = schema.flow_runs
        return set(self.connection.execute(sa.select(fr.c.id).where(fr.c.id.in_(ids))).scalars())


def read_trigger_state(store: RunStore, deployment_id: str, trigger_key: str) -> dict[str, Any] | None:
    """The stored state of one (deployment, trigger), read without the lock (to see whether to take it)."""
    ts = schema.trigger_states
    query = sa.select(ts.c.state).where(ts.c.deployment_id == deployment_id, ts.c.trigger_key == trigger_key)
    with store.database_errors(), store.engine.connect() as connection:
        found = connection.execute(query).scalar()
    return json.loads(found) if found else None


@contextmanager
def locked_trigger_state(store: RunStore, deployment_id: str, trigger_key: str) -> Iterator[TriggerStateRow]:
    """Hold the state of one (deployment, trigger) locked; it is written back when the block ends without error.

    Of two services on PostgreSQL that find no row yet, one inserts it and the other's insert fails with
    an ``IntegrityError`` (its counting is rolled back; it counts again at its next poll).
    """
    ts = schema.trigger_states
    key = (ts.c.deployment_id == deployment_id, ts.c.trigger_key == trigger_key)
    with store.database_errors(), store._write_engine.begin() as connection:
        found = connection.execute(sa.select(ts.c.state).where(*key).with_for_update()).scalar()
        row = TriggerStateRow(json.loads(found) if found else {}, connection)
        yield row
        values = {"state": json.dumps(row.state, separators=(",", ":"), default=str), "updated": datetime.now(UTC)}
        if found is None:
            connection.execute(ts.insert().values(deployment_id=deployment_id, trigger_key=trigger_key, **values))
        else:
            connection.execute(ts.update().where(*key).values(**values))
