"""Versioned schema migrations of the run store, run programmatically with Alembic.

Opening a store calls :func:`upgrade_to_head`. It first reads the schema
version (``runstore_version`` table) without locking; when the database is
already at this code's head, that is all. Otherwise it takes a lock, reads the
version again (another process may have just migrated) and applies the missing
scripts from ``versions/`` in the same transaction, so a process that loses the
race finds the work done, and a failed migration leaves the database as it was:

* SQLite: ``BEGIN IMMEDIATE`` holds the file's write lock; SQLite's DDL is
  transactional, and the loser waits up to the busy timeout.
* PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key, released at commit.

A database whose version this code does not know was migrated by a newer
daskflow; that is a :class:`~daskflow.runstore.errors.RunStoreVersionError`
naming both versions, never a silent downgrade or a half-understood schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from daskflow._version import __version__
from daskflow.runstore.errors import RunStoreVersionError
from daskflow.runstore.schema import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["HEAD", "MIGRATIONS_DIR", "current_revision", "head_revision", "upgrade_to_head"]

MIGRATIONS_DIR = Path(__file__).resolve().parent
# The newest script's revision. A database already there is opened without importing
# Alembic (11 MB and 0.2 s); tests/test_runstore.py checks this is Alembic's head.
HEAD = "0009"
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
    from alembic import command
    from alembic.script import ScriptDirectory

    config = _config()
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    _check_known(script, current, head, display_url)
    with engine.connect() as connection:
        connection.execution_options(sqlite_begin="IMMEDIATE")
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
            current = current_revision(connection)
            _check_known(script, current, head, display_url)
            if current != head:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
    return head


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
