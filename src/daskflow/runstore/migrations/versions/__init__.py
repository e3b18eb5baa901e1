"""The run store's migration scripts, one per schema version, applied in order by Alembic.

Each script is frozen once released: a schema change is a new script whose
``down_revision`` is the previous one, with the matching change to
:mod:`daskflow.runstore.schema` (a test compares the two). Revisions are
numbered ``0001``, ``0002``, ... so a "newer than this daskflow" message reads
plainly. SQLite alters tables only through ``op.batch_alter_table``.
"""
