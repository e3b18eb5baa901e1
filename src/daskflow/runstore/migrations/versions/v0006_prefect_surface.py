"""Tags on runs, a flow run's scheduled time and deployment, variables, events and paused runs (issue 16).

Revision ID: 0006
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("tags", sa.Text(), nullable=True))
        batch.add_column(sa.Column("scheduled_start_time", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deployment_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("deployment_name", sa.String(), nullable=True))
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(sa.Column("tags", sa.Text(), nullable=True))
    op.create_table(
        "variables",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False, unique=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("occurred", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("related", sa.Text(), nullable=True),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("task_run_id", sa.String(), nullable=True),
        sa.Index("ix_events_occurred", "occurred"),
        sa.Index("ix_events_event", "event"),
    )
    op.create_table(
        "paused_runs",
        sa.Column("flow_run_id", sa.String(), primary_key=True),
        sa.Column("schema", sa.Text(), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("input", sa.Text(), nullable=True),
        sa.Column("input_error", sa.Text(), nullable=True),
        sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("paused_runs")
    op.drop_table("events")
    op.drop_table("variables")
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_column("tags")
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("deployment_name")
        batch.drop_column("deployment_id")
        batch.drop_column("scheduled_start_time")
        batch.drop_column("tags")
