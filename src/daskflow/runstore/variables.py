"""Variable rows: one row per name, the value as JSON text (the storage half of :mod:`daskflow.variables`).

Writing is one transaction. Without ``overwrite`` an existing name is left
alone and :func:`write_variable` answers False; with it the row keeps its id
and ``created`` time and takes the new value, tags and ``updated`` time. Two
writers racing for a new name meet the unique key on ``name``: the loser's
insert fails and is answered like an existing row. Errors of the database
follow the store (:class:`~daskflow.runstore.errors.RunStoreUnavailableError`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.store import RunStore

__all__ = ["VariableRow", "delete_variable", "list_variables", "read_variable", "write_variable"]


@dataclass(frozen=True, slots=True)
class VariableRow:
    """One stored variable: its name, its value as JSON text, its tags and when (UTC)."""

    name: str
    value: str
    tags: tuple[str, ...]
    created: datetime
    updated: datetime


def _row(row: sa.Row[tuple[object, ...]]) -> VariableRow:
    m = row._mapping
    tags = tuple(json.loads(str(m["tags"]))) if m["tags"] else ()
    return VariableRow(str(m["name"]), str(m["value"]), tags, m["created"], m["updated"])


def write_variable(
    store: RunStore, name: str, value: str, tags: Sequence[str] = (), *, overwrite: bool = False
) -> bool:
    """Store JSON ``value`` as variable ``name``; False, and nothing written, if it exists and not ``overwrite``."""
    table = schema.variables
    now = datetime.now(UTC)
    encoded_tags = json.dumps(sorted(tags), separators=(",", ":")) if tags else None
    engine = store.engine.execution_options(sqlite_begin="IMMEDIATE")  # read-then-write without a lock upgrade
    try:
        with store.database_errors(), engine.begin() as connection:
            found = connection.execute(sa.select(table.c.id).where(table.c.name == name)).first()
            if found is not None:
                if not overwrite:
                    return False
                connection.execute(
                    table.update().where(table.c.name == name).values(value=value, tags=encoded_tags, updated=now)
                )
                return True
            connection.execute(
                table.insert().values(
                    id=uuid.uuid4().hex, name=name, value=value, tags=encoded_tags, created=now, updated=now
                )
            )
            return True
    except sa.exc.IntegrityError:
        # Another writer inserted the same name between our read and our insert.
        if not overwrite:
            return False
        return write_variable(store, name, value, tags, overwrite=True)


def read_variable(store: RunStore, name: str) -> VariableRow | None:
    """The variable ``name``, or None."""
    table = schema.variables
    with store.database_errors(), store.engine.connect() as connection:
        row = connection.execute(sa.select(table).where(table.c.name == name)).first()
    return None if row is None else _row(row)


def list_variables(store: RunStore, limit: int | None = None) -> list[VariableRow]:
    """The stored variables, by name."""
    table = schema.variables
    query = sa.select(table).order_by(table.c.name)
    if limit is not None:
        query = query.limit(limit)
    with store.database_errors(), store.engine.connect() as connection:
        return [_row(row) for row in connection.execute(query)]


def delete_variable(store: RunStore, name: str) -> bool:
    """Delete variable ``name``; False if there was none."""
    table = schema.variables
    with store.database_errors(), store._write_engine.begin() as connection:
        result = connection.execute(table.delete().where(table.c.name == name))
    return bool(result.rowcount)
