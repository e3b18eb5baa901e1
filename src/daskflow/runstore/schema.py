"""The run store's tables, as SQLAlchemy Core metadata: what the store's queries are written against.

An empty database is made from these definitions at once
(``metadata.create_all``, stamped at the newest version); an older one is
brought here by the versioned migrations in :mod:`daskflow.runstore.migrations`
(``versions/``). Tests check that both ways give the same schema and that it
matches these definitions, so a change here needs a new migration script beside it.

Six tables of history: ``flow_runs`` and ``task_runs`` hold one row per run (the
latest snapshot), ``states`` every state a run entered, ``logs`` its log records,
``artifacts`` what it published, and ``runstore_version`` (Alembic's) the
schema version. Three of control (0003): ``deployments`` (a flow by import path,
its schedule, parameters and work pool), ``deployment_runs`` (one row per
scheduled time a service or a backfill claimed: the unique key on deployment
and time is the claim, so two services never fire one time twice) and
``cancel_requests`` (``daskflow runs cancel`` asks; the running flow reads it).
One of configuration (0004): ``blocks``, named settings of a kind (a secret, a
storage, a connection) as JSON whose secret fields are encrypted
(:mod:`daskflow.blocks`); kind and name are unique together. Schema 0005 gives
``states`` and ``logs`` rows the record's own id (``uid``, unique), so a batch
written twice is kept once; gives ``deployment_runs`` a lease (``lease_expires``,
``host``, ``pid``) that its service renews while the run is in flight; and lets a
deployment allow concurrent runs (``allow_concurrent_runs``). Run ids link them without foreign keys: history is written
best-effort, and a batch lost in an outage must not make later batches fail.
Indexes follow the reading API: ``runs ls`` filters flow runs by flow, state
and start time and orders them newest first; ``runs show`` and ``runs logs``
look task runs, states and logs up by their flow run.

Times are stored in UTC. :class:`UTCDateTime` makes them aware ``datetime``
objects on every backend (SQLite keeps no zone of its own).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect

__all__ = [
    "VERSION_TABLE",
    "UTCDateTime",
    "artifacts",
    "blocks",
    "cancel_requests",
    "deployment_runs",
    "deployments",
    "events",
    "flow_runs",
    "logs",
    "metadata",
    "paused_runs",
    "sqlite_text",
    "started",
    "states",
    "task_runs",
    "trigger_states",
    "variables",
]

VERSION_TABLE = "runstore_version"


# The text of whole seconds already formatted, by epoch second: the run history writes four
# or five times per task run, nearly all within the same few seconds, and building a datetime
# and formatting it was the largest part of the writer's time (and of its share of the GIL).
_SECONDS_TEXT: dict[int, str] = {}
_SECONDS_KEPT = 4096  # about an hour of distinct seconds; then the cache starts again


def sqlite_text(value: float | datetime) -> str:
    """A time as SQLite keeps it: naive UTC text in SQLAlchemy's format, ``2024-05-01 12:00:00.000000``."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]  # without the "+00:00"
    # Rounded as datetime.fromtimestamp rounds (half to even, on the fraction's microseconds).
    whole = math.floor(value)
    micros = round((value - whole) * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    prefix = _SECONDS_TEXT.get(whole)
    if prefix is None:
        if len(_SECONDS_TEXT) >= _SECONDS_KEPT:
            _SECONDS_TEXT.clear()
        prefix = _SECONDS_TEXT[whole] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%d %H:%M:%S.")
    return f"{prefix}{micros:06d}"


class _SQLiteText(sqlite.DATETIME):
    """SQLite's DATETIME, whose text :class:`UTCDateTime` writes and reads itself."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A datetime stored in UTC and read back as an aware UTC datetime.

    SQLite has no datetime type: there the value is text in SQLAlchemy's own format
    (``2024-05-01 12:00:00.000000``, naive UTC, so text order is time order),
    written and parsed here in one C call each instead of SQLAlchemy's two Python
    steps: the writer converts a few timestamps per record, and that adds up.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return _SQLiteText()  # type: ignore[no-untyped-call]  # SQLAlchemy's DATETIME.__init__ is untyped
        return dialect.type_descriptor(self.impl)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return sqlite_text(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT on PostgreSQL; INTEGER on SQLite, where only "INTEGER PRIMARY KEY" is the autoincrementing rowid.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

flow_runs = sa.Table(
    "flow_runs",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("flow_name", sa.String(), nullable=False),
    sa.Column("parent_flow_run_id", sa.String(), nullable=True),
    sa.Column("parameters", sa.Text(), nullable=True),  # JSON
    sa.Column("state_type", sa.String(), nullable=False),
    sa.Column("state_name", sa.String(), nullable=False),
    sa.Column("state_message", sa.Text(), nullable=True),
    sa.Column("start_time", UTCDateTime(), nullable=True),
    sa.Column("end_time", UTCDateTime(), nullable=True),
    sa.Column("run_count", sa.Integer(), nullable=False),
    sa.Column("traceback", sa.Text(), nullable=True),
    sa.Column("created", UTCDateTime(), nullable=False),
    sa.Column("updated", UTCDateTime(), nullable=False),
    sa.Column("entrypoint", sa.Text(), nullable=True),  # the flow's import path, "module:flow" (0007)
    sa.Column("dashboard_link", sa.Text(), nullable=True),  # the Dask dashboard of the run's cluster (0007)
    sa.Column("tags", sa.Text(), nullable=True),  # JSON list, sorted (0006)
    sa.Column("scheduled_start_time", UTCDateTime(), nullable=True),  # when it was due (0006)
    sa.Column("deployment_id", sa.String(), nullable=True),  # the deployment it ran for (0006)
    sa.Column("deployment_name", sa.String(), nullable=True),
    sa.Index("ix_flow_runs_flow_name", "flow_name"),
    sa.Index("ix_flow_runs_state_type", "state_type"),
    sa.Index("ix_flow_runs_parent", "parent_flow_run_id"),
    sa.Index("ix_flow_runs_created", "created"),
)

# When a flow run started, or was created if it never started: what `runs ls` sorts and filters by.
started = sa.func.coalesce(flow_runs.c.start_time, flow_runs.c.created)
sa.Index("ix_flow_runs_started", started)

task_runs = sa.Table(
    "task_runs",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("flow_run_id", sa.String(), nullable=True),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("task_name", sa.String(), nullable=False),
    sa.Column("map_index", sa.Integer(), nullable=True),
    sa.Column("state_type", sa.String(), nullable=False),
    sa.Column("state_name", sa.String(), nullable=False),
    sa.Column("state_message", sa.Text(), nullable=True),
    sa.Column("start_time", UTCDateTime(), nullable=True),
    sa.Column("end_time", UTCDateTime(), nullable=True),
    sa.Column("run_count", sa.Integer(), nullable=False),
    sa.Column("cache_key", sa.Text(), nullable=True),
    sa.Column("cache_hit", sa.Boolean(), nullable=False),
    sa.Column("worker", sa.Text(), nullable=True),
    sa.Column("slot_wait", sa.Float(), nullable=False),
    sa.Column("traceback", sa.Text(), nullable=True),
    sa.Column("created", UTCDateTime(), nullable=False),
    sa.Column("updated", UTCDateTime(), nullable=False),
    sa.Column("upstream_ids", sa.Text(), nullable=True),  # JSON list of task run ids (0002)
    sa.Column("tags", sa.Text(), nullable=True),  # JSON list, sorted (0006)
    # (flow_run_id, cache_hit) answers the task and cache-hit counts of `runs ls` from the index alone.
    sa.Index("ix_task_runs_flow_run", "flow_run_id", "cache_hit"),
    # (flow_run_id, state_name) counts one run's task runs by state from the index alone (the server, 0007).
    sa.Index("ix_task_runs_flow_run_state", "flow_run_id", "state_name"),
)

states = sa.Table(
    "states",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(), nullable=False),
    sa.Column("run_kind", sa.String(), nullable=False),
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("message", sa.Text(), nullable=True),
    sa.Column("timestamp", UTCDateTime(), nullable=False),
    sa.Column("uid", sa.String(), nullable=True),  # the record's own id (0005): a replay inserts nothing
    sa.Index("ix_states_run", "run_id", "timestamp"),
    sa.Index("ux_states_uid", "uid", unique=True),
)

logs = sa.Table(
    "logs",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("flow_run_id", sa.String(), nullable=True),
    sa.Column("task_run_id", sa.String(), nullable=True),
    sa.Column("logger", sa.String(), nullable=False),
    sa.Column("level", sa.Integer(), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("created", UTCDateTime(), nullable=False),
    sa.Column("exception", sa.Text(), nullable=True),
    sa.Column("uid", sa.String(), nullable=True),  # the record's own id (0005): a replay inserts nothing
    sa.Index("ix_logs_flow_run", "flow_run_id", "created"),
    sa.Index("ux_logs_uid", "uid", unique=True),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("key", sa.String(), nullable=True),
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("flow_run_id", sa.String(), nullable=True),
    sa.Column("task_run_id", sa.String(), nullable=True),
    sa.Column("created", UTCDateTime(), nullable=False),
    sa.Index("ix_artifacts_key", "key", "created"),
    sa.Index("ix_artifacts_flow_run", "flow_run_id"),
    sa.Index("ix_artifacts_task_run", "task_run_id"),
    sa.Index("ix_artifacts_created", "created"),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("name", sa.String(), nullable=False, unique=True),
    sa.Column("flow_name", sa.String(), nullable=False),
    sa.Column("entrypoint", sa.Text(), nullable=False),  # "package.module:flow" or "path/to/file.py:flow"
    sa.Column("schedule", sa.Text(), nullable=True),  # JSON: Schedule.to_dict(); None: runs only on request
    sa.Column("parameters", sa.Text(), nullable=True),  # JSON, may hold {{ scheduled_time }} templates
    sa.Column("tags", sa.Text(), nullable=True),  # JSON list
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("work_pool", sa.Text(), nullable=True),  # JSON: where runs execute (a Dask cluster)
    sa.Column("catchup", sa.String(), nullable=False),  # what a service does with times missed while down
    sa.Column("paused", sa.Boolean(), nullable=False),
    sa.Column("created", UTCDateTime(), nullable=False),
    sa.Column("updated", UTCDateTime(), nullable=False),
    # (0005) whether runs of this deployment may overlap; off: one run in flight at a time, across services
    sa.Column("allow_concurrent_runs", sa.Boolean(), nullable=False, server_default=sa.false()),
    # (0008) event triggers: a JSON list of DeploymentEventTrigger fields; a service fires one run per match
    sa.Column("triggers", sa.Text(), nullable=True),
    # (0009) registered by flow.serve/serve(): the serving process ("host:pid"), kept after it stops, and
    # until when it serves (renewed while it runs; None once stopped). Only that process fires its schedule.
    sa.Column("served_by", sa.String(), nullable=True),
    sa.Column("served_until", UTCDateTime(), nullable=True),
)

deployment_runs = sa.Table(
    "deployment_runs",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("deployment_id", sa.String(), nullable=False),
    sa.Column("scheduled_time", UTCDateTime(), nullable=False),
    sa.Column("kind", sa.String(), nullable=False),  # "scheduled" | "backfill" | "manual"
    sa.Column("flow_run_id", sa.String(), nullable=True),  # set once the flow run starts
    sa.Column("state_type", sa.String(), nullable=True),  # the flow run's final state type, once known
    sa.Column("claimed_by", sa.String(), nullable=False),  # the service (host, pid, start) that fired it
    sa.Column("claimed_at", UTCDateTime(), nullable=False),
    # (0005) the claim's lease: renewed by its service while the run is in flight; past it, the run
    # is taken for crashed. The claimant's host and pid name the dead service in that message.
    sa.Column("lease_expires", UTCDateTime(), nullable=True),
    sa.Column("host", sa.String(), nullable=True),
    sa.Column("pid", sa.Integer(), nullable=True),
    sa.UniqueConstraint("deployment_id", "scheduled_time", name="uq_deployment_runs_time"),
    sa.Index("ix_deployment_runs_open", "deployment_id", "state_type"),
)

cancel_requests = sa.Table(
    "cancel_requests",
    metadata,
    sa.Column("flow_run_id", sa.String(), primary_key=True),
    sa.Column("requested_at", UTCDateTime(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
)

blocks = sa.Table(
    "blocks",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("kind", sa.String(), nullable=False),  # "secret", "json", "remote-storage", ...
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),  # JSON; secret fields hold Fernet tokens, never values
    sa.Column("created", UTCDateTime(), nullable=False),
    sa.Column("updated", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("kind", "name", name="uq_blocks_kind_name"),
)

# Variables (0006): named JSON values that flows read and write (daskflow.variables).
variables = sa.Table(
    "variables",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("name", sa.String(), nullable=False, unique=True),
    sa.Column("value", sa.Text(), nullable=False),  # JSON
    sa.Column("tags", sa.Text(), nullable=True),  # JSON list
    sa.Column("created", UTCDateTime(), nullable=False),
    sa.Column("updated", UTCDateTime(), nullable=False),
)

# Events (0006): what emit_event() recorded (daskflow.events); state changes are read from `states`.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("occurred", UTCDateTime(), nullable=False),
    sa.Column("event", sa.String(), nullable=False),
    sa.Column("resource_id", sa.String(), nullable=False),
    sa.Column("resource", sa.Text(), nullable=False),  # JSON object of labels
    sa.Column("payload", sa.Text(), nullable=True),  # JSON
    sa.Column("related", sa.Text(), nullable=True),  # JSON list of resources
    sa.Column("flow_run_id", sa.String(), nullable=True),
    sa.Column("task_run_id", sa.String(), nullable=True),
    sa.Index("ix_events_occurred", "occurred"),
    sa.Index("ix_events_event", "event"),
)

# Paused flow runs (0006): pause_flow_run() waits for a row's input; resume_flow_run() gives it.
paused_runs = sa.Table(
    "paused_runs",
    metadata,
    sa.Column("flow_run_id", sa.String(), primary_key=True),
    sa.Column("schema", sa.Text(), nullable=True),  # the input model's JSON schema, to show
    sa.Column("paused_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("input", sa.Text(), nullable=True),  # JSON given by resume, until the run takes or refuses it
    sa.Column("input_error", sa.Text(), nullable=True),  # why the run refused the last input
    sa.Column("resumed_at", UTCDateTime(), nullable=True),
)

# Deployment triggers' state (0010): what a trigger that counts events (threshold, within, after,
# for_each, proactive) has counted so far, one row per (deployment, trigger); a service locks the row
# while it counts, so services over one store count each event once and survive a restart.
trigger_states = sa.Table(
    "trigger_states",
    metadata,
    sa.Column("deployment_id", sa.String(), primary_key=True),
    sa.Column("trigger_key", sa.String(), primary_key=True),  # sha256 of the trigger's definition
    sa.Column("state", sa.Text(), nullable=False),  # JSON: buckets, counted event ids, pending firings
    sa.Column("updated", UTCDateTime(), nullable=False),
)
