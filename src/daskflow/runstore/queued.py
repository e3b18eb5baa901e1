"""Queued deployment runs: a flow run written ``Scheduled`` for "now", for a scheduling service to start.

Whoever asks for a deployment run without running it (the server's **Run**
button, ``POST /api/deployments/{name}/runs``) writes the flow run first, with
the id it will keep, in the ``Scheduled`` state, with its deployment and the
parameters to run with: :func:`queue_flow_run`. It is the flow run the user
sees at once in the runs list and on its page; no table of its own is needed.
A scheduling service finds such runs at its polls (:func:`queued_runs`: a
flow run ``Scheduled``, of a deployment, that never started) and
takes one with :func:`take_queued`, a conditional update that moves it to
``Pending``: of several services looking at once, exactly one update matches,
so the run starts once. A run queued from inside a flow run (Prefect's
``run_deployment(..., as_subflow=True)``) carries that run as its
``parent_flow_run_id`` from the start. The flow engine then writes the same id over the row
(its snapshots win on ``updated``), and the deployment's claim
(:mod:`daskflow.runstore.deployments`) leases the run in flight as any other.

A taken run that could not start (its flow no longer imports, say) is ended
``Failed`` with the reason (:func:`fail_queued`), so the id given out never
stays ``Scheduled`` without an explanation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.records import new_record_id

if TYPE_CHECKING:
    from daskflow.runstore.store import RunStore

__all__ = ["QUEUED_NAME", "QueuedRun", "fail_queued", "queue_flow_run", "queued_runs", "take_queued"]

QUEUED_NAME = "Scheduled"
_TAKEN_NAME = "Pending"


@dataclass(frozen=True, slots=True)
class QueuedRun:
    """A flow run queued for a deployment: its id, deployment, parameters and when it was queued."""

    flow_run_id: str
    deployment_id: str
    deployment_name: str | None
    parameters: dict[str, Any]
    queued_at: datetime
    parent_flow_run_id: str | None = None  # queued as a subflow of this flow run


def _writing(store: RunStore) -> sa.Engine:
    return store.engine.execution_options(sqlite_begin="IMMEDIATE")


def _state_row(flow_run_id: str, type_: str, name: str, message: str, now: datetime) -> dict[str, Any]:
    return {
        "run_id": flow_run_id, "run_kind": "flow", "type": type_, "name": name, "message": message,
        "timestamp": now, "uid": new_record_id(),
    }  # fmt: skip


def queue_flow_run(
    store: RunStore,
    flow_run_id: str,
    *,
    deployment_id: str,
    deployment_name: str,
    flow_name: str,
    parameters: Mapping[str, Any],
    tags: Sequence[str] = (),
    entrypoint: str | None = None,
    message: str | None = None,
    parent_flow_run_id: str | None = None,
) -> datetime:
    """Write ``flow_run_id`` as a ``Scheduled`` run of the deployment, due now; return the time it was queued."""
    now = datetime.now(UTC)
    message = message or "queued: a scheduling service (daskflow serve) starts it within its poll interval"
    row = {
        "id": flow_run_id, "name": flow_run_id[:8], "flow_name": flow_name, "parent_flow_run_id": parent_flow_run_id,
        "parameters": json.dumps(dict(parameters), default=str), "state_type": "SCHEDULED",
        "state_name": QUEUED_NAME, "state_message": message, "run_count": 0, "created": now, "updated": now,
        "entrypoint": entrypoint, "tags": json.dumps(sorted(tags), separators=(",", ":")) if tags else None,
        "scheduled_start_time": now, "deployment_id": deployment_id, "deployment_name": deployment_name,
    }  # fmt: skip
    with store.database_errors(), _writing(store).begin() as connection:
        connection.execute(schema.flow_runs.insert().values(row))
        connection.execute(
            schema.states.insert().values(_state_row(flow_run_id, "SCHEDULED", QUEUED_NAME, message, now))
        )
    return now


def _waiting() -> tuple[sa.ColumnElement[bool], ...]:
    fr = schema.flow_runs
    return (
        fr.c.state_type == "SCHEDULED",
        fr.c.state_name == QUEUED_NAME,
        # Only a queued run has a deployment without having started (a deployment run's subflows
        # record none): one queued as a subflow, with a parent, is waiting too.
        fr.c.deployment_id.is_not(None),
        fr.c.start_time.is_(None),
        fr.c.run_count == 0,
    )


def queued_runs(store: RunStore, limit: int = 100) -> list[QueuedRun]:
    """The queued runs that no service has taken yet, oldest first."""
    fr = schema.flow_runs
    query = (
        sa.select(
            fr.c.id, fr.c.deployment_id, fr.c.deployment_name, fr.c.parameters, fr.c.created, fr.c.parent_flow_run_id
        )
        .where(*_waiting())
        .order_by(fr.c.created)
        .limit(limit)
    )
    with store.database_errors(), store.engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        QueuedRun(
            row.id,
            row.deployment_id,
            row.deployment_name,
            json.loads(row.parameters or "{}"),
            row.created,
            row.parent_flow_run_id,
        )
        for row in rows
    ]


def take_queued(store: RunStore, flow_run_id: str, taker: str) -> bool:
    """Take a queued run to start it; False if another service took it first (or it is no longer queued)."""
    fr = schema.flow_runs
    now = datetime.now(UTC)
    message = f"taken by {taker}"
    with store.database_errors(), _writing(store).begin() as connection:
        taken = connection.execute(
            fr.update()
            .where(fr.c.id == flow_run_id, *_waiting())
            .values(state_type="PENDING", state_name=_TAKEN_NAME, state_message=message, updated=now)
        ).rowcount
        if taken == 1:
            connection.execute(
                schema.states.insert().values(_state_row(flow_run_id, "PENDING", _TAKEN_NAME, message, now))
            )
    return taken == 1


def fail_queued(store: RunStore, flow_run_id: str, message: str) -> None:
    """End a taken run that could not start ``Failed``, saying why (unless its flow run has moved on)."""
    fr = schema.flow_runs
    now = datetime.now(UTC)
    with store.database_errors(), _writing(store).begin() as connection:
        done = connection.execute(
            fr.update()
            .where(fr.c.id == flow_run_id, fr.c.start_time.is_(None), fr.c.state_type.in_(("SCHEDULED", "PENDING")))
            .values(state_type="FAILED", state_name="Failed", state_message=message, end_time=now, updated=now)
        ).rowcount
        if done:
            connection.execute(schema.states.insert().values(_state_row(flow_run_id, "FAILED", "Failed", message, now)))
