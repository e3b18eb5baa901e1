"""Paused-run rows: the meeting point of a paused flow run and whoever resumes it (see :mod:`daskflow.pausing`).

One row per paused flow run. The run writes it when it pauses and then reads
it every half second; ``resume_flow_run`` writes the ``input`` (JSON); the run
validates it against its model and either takes it (sets ``resumed_at``) or
refuses it (sets ``input_error`` and clears ``input``), which the resumer
reads back. Each step is one short transaction; no lock is held across them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.store import RunStore

__all__ = ["PausedRow", "mark_paused", "read_paused", "refuse_input", "resolve_paused", "set_input", "take_input"]


@dataclass(frozen=True, slots=True)
class PausedRow:
    flow_run_id: str
    schema: str | None
    paused_at: datetime
    expires_at: datetime | None
    input: str | None
    input_error: str | None
    resumed_at: datetime | None


def mark_paused(store: RunStore, flow_run_id: str, input_schema: str | None, expires_at: datetime | None) -> None:
    """Record that ``flow_run_id`` waits to be resumed (a pause of the same run again starts afresh)."""
    table = schema.paused_runs
    with store.database_errors(), store._write_engine.begin() as connection:
        connection.execute(table.delete().where(table.c.flow_run_id == flow_run_id))
        connection.execute(
            table.insert().values(
                flow_run_id=flow_run_id, schema=input_schema, paused_at=datetime.now(UTC), expires_at=expires_at
            )
        )


def read_paused(store: RunStore, flow_run_id: str) -> PausedRow | None:
    table = schema.paused_runs
    with store.database_errors(), store.engine.connect() as connection:
        row = connection.execute(sa.select(table).where(table.c.flow_run_id == flow_run_id)).first()
    return None if row is None else PausedRow(**row._mapping)


def resolve_paused(store: RunStore, id_or_prefix: str) -> str | None:
    """The id of the one waiting paused run whose id is or starts with ``id_or_prefix`` (None if none or several).

    Read here rather than from the flow runs: a run that just paused may not be in the history's batch yet.
    """
    table = schema.paused_runs
    query = (
        sa.select(table.c.flow_run_id)
        .where(table.c.flow_run_id.startswith(id_or_prefix, autoescape=True), table.c.resumed_at.is_(None))
        .limit(2)
    )
    with store.database_errors(), store.engine.connect() as connection:
        found = [row[0] for row in connection.execute(query)]
    return found[0] if len(found) == 1 else None


def set_input(store: RunStore, flow_run_id: str, text: str) -> bool:
    """Give a paused run its input; False if it is not waiting (not paused, or resumed already)."""
    table = schema.paused_runs
    waiting = (table.c.flow_run_id == flow_run_id) & table.c.resumed_at.is_(None)
    with store.database_errors(), store._write_engine.begin() as connection:
        done = connection.execute(table.update().where(waiting).values(input=text, input_error=None))
    return bool(done.rowcount)


def take_input(store: RunStore, flow_run_id: str) -> None:
    """The run took its input: it is resumed."""
    table = schema.paused_runs
    with store.database_errors(), store._write_engine.begin() as connection:
        connection.execute(
            table.update().where(table.c.flow_run_id == flow_run_id).values(resumed_at=datetime.now(UTC))
        )


def refuse_input(store: RunStore, flow_run_id: str, error: str) -> None:
    """The run refused its input (it did not fit the model): say why, and wait for another."""
    table = schema.paused_runs
    with store.database_errors(), store._write_engine.begin() as connection:
        connection.execute(
            table.update().where(table.c.flow_run_id == flow_run_id).values(input=None, input_error=error)
        )
