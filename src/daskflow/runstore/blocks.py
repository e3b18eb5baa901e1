"""Block rows: named configuration, one row per (kind, name), read and written as JSON text.

This is the storage half of :mod:`daskflow.blocks`: it knows tables and rows,
not pydantic models or keys. The ``data`` it is given is already final JSON
text — the blocks layer encrypts secret fields before it gets here — so a row
can be listed and shown without the secret key.

Writing is one transaction. Without ``overwrite`` an existing row is left
alone and :func:`write_block` answers False (the caller says why in its own
words); with it the row keeps its id and ``created`` time and takes the new
data and ``updated`` time. Two writers racing for a new name meet the unique
key on (kind, name): the loser's insert fails and is answered like an existing
row. Errors of the database follow the store:
:class:`~daskflow.runstore.errors.RunStoreUnavailableError`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.store import RunStore

__all__ = ["BlockRow", "delete_block", "list_blocks", "read_block", "write_block"]


@dataclass(frozen=True, slots=True)
class BlockRow:
    """One stored block: its kind and name, its JSON ``data`` (secrets encrypted), and when (UTC)."""

    kind: str
    name: str
    data: str
    created: datetime
    updated: datetime


def _row(row: sa.Row[tuple[object, ...]]) -> BlockRow:
    m = row._mapping
    return BlockRow(str(m["kind"]), str(m["name"]), str(m["data"]), m["created"], m["updated"])


def write_block(store: RunStore, kind: str, name: str, data: str, *, overwrite: bool = False) -> bool:
    """Store ``data`` as block ``kind``/``name``; False, and nothing written, if it exists and not ``overwrite``."""
    table = schema.blocks
    now = datetime.now(UTC)
    where = (table.c.kind == kind) & (table.c.name == name)
    # IMMEDIATE on SQLite: read-then-write in one transaction without a lock upgrade that could fail.
    engine = store.engine.execution_options(sqlite_begin="IMMEDIATE")
    try:
        with store.database_errors(), engine.begin() as connection:
            found = connection.execute(sa.select(table.c.id).where(where)).first()
            if found is not None:
                if not overwrite:
                    return False
                connection.execute(table.update().where(where).values(data=data, updated=now))
                return True
            connection.execute(
                table.insert().values(id=uuid.uuid4().hex, kind=kind, name=name, data=data, created=now, updated=now)
            )
            return True
    except sa.exc.IntegrityError:
        # Another writer inserted the same (kind, name) between our read and our insert.
        if not overwrite:
            return False
        return write_block(store, kind, name, data, overwrite=True)


def read_block(store: RunStore, kind: str, name: str) -> BlockRow | None:
    """The block ``kind``/``name``, or None."""
    table = schema.blocks
    query = sa.select(table).where((table.c.kind == kind) & (table.c.name == name))
    with store.database_errors(), store.engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else _row(row)


def list_blocks(store: RunStore, kind: str | None = None, name: str | None = None) -> list[BlockRow]:
    """The stored blocks, of ``kind`` and named ``name`` when given, ordered by kind then name."""
    table = schema.blocks
    query = sa.select(table).order_by(table.c.kind, table.c.name)
    if kind is not None:
        query = query.where(table.c.kind == kind)
    if name is not None:
        query = query.where(table.c.name == name)
    with store.database_errors(), store.engine.connect() as connection:
        return [_row(row) for row in connection.execute(query)]


def delete_block(store: RunStore, kind: str, name: str) -> bool:
    """Delete block ``kind``/``name``; False if there was none."""
    table = schema.blocks
    with store.database_errors(), store._write_engine.begin() as connection:
        result = connection.execute(table.delete().where((table.c.kind == kind) & (table.c.name == name)))
    return bool(result.rowcount)
