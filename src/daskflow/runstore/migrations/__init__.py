"""Versioned schema migrations of the run store, run programmatically with Alembic.

Opening a store calls :func:`upgrade_to_head`. It first reads the schema
version (``runstore_version`` table) without locking; when the database is
already at this code's head, that is all. Otherwise it takes a lock and reads
the version again (another process may have just done the work). An empty
database is then created at head at once, from the definitions in
:mod:`daskflow.runstore.schema` (``metadata.create_all`` and the version row),
without Alembic: a tenth of the CPU of running every script on a new file, and
Alembic's 11 MB never loaded. An older database gets the missing scripts from
``versions/`` (:func:`run_migrations`). Either happens in the lock's
transaction, so a process that loses the race finds the work done, and a
failure leaves the database as it was. tests/test_runstore.py checks that both
ways make the same schema, on SQLite and PostgreSQL:

* SQLite: ``BEGIN IMMEDIATE`` holds the file's write lock; SQLite's DDL is
  transactional, and the loser waits up to the busy timeout.
* PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key, released at commit.

A database whose version this code does not know was migrated by a newer
daskflow; that is a :class:`~daskflow.runstore.errors.RunStoreVersionError`
naming both versions, never a silent downgrade or a half-understood schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from daskflow._version import __version__
from daskflow.runstore.errors import RunStoreVersionError
from daskflow.runstore.schema import VERSION_TABLE, metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["HEAD", "MIGRATIONS_DIR", "current_revision", "head_revision", "run_migrations", "upgrade_to_head"]

MIGRATIONS_DIR = Path(__file__).resolve().parent
# The newest script's revision. A database already there is opened without importing
# Alembic (11 MB and 0.2 s); tests/test_runstore.py checks this is Alembic's head.
HEAD = "0010"
_PG_LOCK_KEY = 0x6461736B666C6F77  # "daskflow" in ASCII: one advisory lock for every run store migration


def _config() -> Config:
    from alembic.config import Config  # Alembic only when there is something to migrate

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The schema version this daskflow writes, as Alembic finds it in ``versions/``."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, f"no migration scripts in {MIGRATIONS_DIR / 'versions'}"
    return head


def current_revision(connection: sa.Connection) -> str | None:
    """The schema version of the database behind ``connection``; None for an empty database."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if len(rows) == 1 else None if not rows else ",".join(sorted(rows))


def upgrade_to_head(engine: sa.Engine, *, display_url: str) -> str:
    """Bring the database to this code's schema version and return it; see the module docstring."""
    with engine.connect() as connection:
        current = current_revision(connection)
        connection.rollback()
    if current == HEAD:
        return HEAD
    if current is None:
        with _locked(engine) as connection:
            current = current_revision(connection)
            if current is None and not _holds_tables(connection):
                _create_at_head(connection)
                return HEAD
        if current == HEAD:  # another process or thread made it while this one waited for the lock
            return HEAD
    return run_migrations(engine, display_url=display_url)


def run_migrations(engine: sa.Engine, *, display_url: str) -> str:
    """Apply the scripts from ``versions/`` that the database lacks, under the lock, and return head.

    :func:`upgrade_to_head` leaves only older databases to this (and tables that
    predate the version table); on an empty one it gives the schema the
    scripts build from the first, as a test does.
    """
    from alembic import command
    from alembic.script import ScriptDirectory

    config = _config()
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    with engine.connect() as connection:
        current = current_revision(connection)
        connection.rollback()
    _check_known(script, current, head, display_url)
    with _locked(engine) as connection:
        current = current_revision(connection)
        _check_known(script, current, head, display_url)
        if current != head:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    return head


@contextmanager
def _locked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that holds the migration lock (see the module docstring)."""
    with engine.connect() as connection:
        connection.execution_options(sqlite_begin="IMMEDIATE")
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
            yield connection


def _holds_tables(connection: sa.Connection) -> bool:
    """Whether any of the store's tables exists (a database from before the version table)."""
    return not metadata.tables.keys().isdisjoint(sa.inspect(connection).get_table_names())


def _version_table() -> sa.Table:
    """The schema version's table, as Alembic makes it: one 32-character column, its primary key."""
    return sa.Table(
        VERSION_TABLE,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )


def _create_at_head(connection: sa.Connection) -> None:
    """The schema's tables and indexes, and the version row saying head, in the caller's transaction."""
    metadata.create_all(connection, checkfirst=False)  # the caller found none of them, under the lock
    table = _version_table()
    table.create(connection)
    connection.execute(table.insert().values(version_num=HEAD))


def _check_known(script: ScriptDirectory, current: str | None, head: str, display_url: str) -> None:
    if current is None:
        return
    try:
        known = script.get_revision(current) is not None
    except Exception:  # alembic raises CommandError or ResolutionError for an unknown revision
        known = False
    if not known:
        raise RunStoreVersionError(
            f"The run store at {display_url} has schema version {current}, newer than daskflow "
            f"{__version__} knows (its newest is {head}): a newer daskflow wrote it.\nFixes:\n"
            "  1. upgrade daskflow where this runs (pip install -U daskflow), or\n"
            "  2. point daskflow at another database: dask.config.set({'daskflow.runstore.url': ...}) "
            "or DASK_DASKFLOW__RUNSTORE__URL=..."
        )
