"""Initial run store: flow runs, task runs, states, logs and artifacts.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "flow_runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("flow_name", sa.String(), nullable=False),
        sa.Column("parent_flow_run_id", sa.String(), nullable=True),
        sa.Column("parameters", sa.Text(), nullable=True),
        sa.Column("state_type", sa.String(), nullable=False),
        sa.Column("state_name", sa.String(), nullable=False),
        sa.Column("state_message", sa.Text(), nullable=True),
        _time("start_time", True),
        _time("end_time", True),
        sa.Column("run_count", sa.Integer(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=True),
        _time("created", False),
        _time("updated", False),
    )
    op.create_index("ix_flow_runs_flow_name", "flow_runs", ["flow_name"])
    op.create_index("ix_flow_runs_state_type", "flow_runs", ["state_type"])
    op.create_index("ix_flow_runs_parent", "flow_runs", ["parent_flow_run_id"])
    op.create_index("ix_flow_runs_created", "flow_runs", ["created"])
    op.create_index("ix_flow_runs_started", "flow_runs", [sa.text("coalesce(start_time, created)")])

    op.create_table(
        "task_runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("task_name", sa.String(), nullable=False),
        sa.Column("map_index", sa.Integer(), nullable=True),
        sa.Column("state_type", sa.String(), nullable=False),
        sa.Column("state_name", sa.String(), nullable=False),
        sa.Column("state_message", sa.Text(), nullable=True),
        _time("start_time", True),
        _time("end_time", True),
        sa.Column("run_count", sa.Integer(), nullable=False),
        sa.Column("cache_key", sa.Text(), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("slot_wait", sa.Float(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=True),
        _time("created", False),
        _time("updated", False),
    )
    op.create_index("ix_task_runs_flow_run", "task_runs", ["flow_run_id", "cache_hit"])

    op.create_table(
        "states",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("run_kind", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        _time("timestamp", False),
    )
    op.create_index("ix_states_run", "states", ["run_id", "timestamp"])

    op.create_table(
        "logs",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("task_run_id", sa.String(), nullable=True),
        sa.Column("logger", sa.String(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _time("created", False),
        sa.Column("exception", sa.Text(), nullable=True),
    )
    op.create_index("ix_logs_flow_run", "logs", ["flow_run_id", "created"])

    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("key", sa.String(), nullable=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("task_run_id", sa.String(), nullable=True),
        _time("created", False),
    )
    op.create_index("ix_artifacts_key", "artifacts", ["key", "created"])
    op.create_index("ix_artifacts_flow_run", "artifacts", ["flow_run_id"])
    op.create_index("ix_artifacts_task_run", "artifacts", ["task_run_id"])
    op.create_index("ix_artifacts_created", "artifacts", ["created"])


def downgrade() -> None:
    for table in ("artifacts", "logs", "states", "task_runs", "flow_runs"):
        op.drop_table(table)
