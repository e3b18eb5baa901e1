"""Event rows: what ``emit_event`` recorded, and the runs' state changes read back as events.

The storage half of :mod:`daskflow.events`. An emitted event is one row of
``events`` (resource, payload and related resources as JSON text), written in
its own transaction when it is emitted. State changes are not written twice:
:func:`list_events` reads them from the ``states`` table and names them as
Prefect does (``prefect.flow-run.Completed`` becomes
``daskflow.flow-run.Completed``, resource ``daskflow.flow-run.<id>``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.store import RunStore

__all__ = ["EventRow", "list_events", "write_event"]


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
    st = schema.states
    query = sa.select(st).order_by(st.c.timestamp.desc(), st.c.id.desc()).limit(limit)
    if since is not None:
        query = query.where(st.c.timestamp >= since)
    if resource_id is not None:
        kind, _, run_id = resource_id.rpartition(".")
        if kind not in ("daskflow.flow-run", "daskflow.task-run"):
            return []
        query = query.where(st.c.run_id == run_id, st.c.run_kind == kind.split(".")[1].split("-")[0])
    events = []
    for row in connection.execute(query):
        m = row._mapping
        kind = f"daskflow.{m['run_kind']}-run"
        name = f"{kind}.{m['name']}"
        if prefix is not None and not name.startswith(prefix):
            continue
        run_id = m["run_id"]
        events.append(
            EventRow(
                id=f"state-{m['id']}",
                occurred=m["timestamp"],
                event=name,
                resource={"daskflow.resource.id": f"{kind}.{run_id}", "daskflow.state-type": m["type"]},
                payload={"message": m["message"]} if m["message"] else {},
                flow_run_id=run_id if m["run_kind"] == "flow" else None,
                task_run_id=run_id if m["run_kind"] == "task" else None,
            )
        )
    return events
