"""Alembic's entry point for the run store: migrate over the connection the store hands in.

:func:`daskflow.runstore.migrations.upgrade_to_head` opens the transaction and
takes the lock; this script only runs the migrations inside them, so users need
no ``alembic.ini`` and nothing here reads a file or the environment.
"""

from __future__ import annotations

from alembic import context

from daskflow.runstore.schema import VERSION_TABLE, metadata

__all__: list[str] = []

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
