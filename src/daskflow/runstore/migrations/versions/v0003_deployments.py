"""Deployments, the scheduled times claimed for them, and requests to cancel a running flow run.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def _time(name: str, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False, unique=True),
        sa.Column("flow_name", sa.String(), nullable=False),
        sa.Column("entrypoint", sa.Text(), nullable=False),
        sa.Column("schedule", sa.Text(), nullable=True),
        sa.Column("parameters", sa.Text(), nullable=True),
        sa.Column("tags", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("work_pool", sa.Text(), nullable=True),
        sa.Column("catchup", sa.String(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        _time("created", False),
        _time("updated", False),
    )
    op.create_table(
        "deployment_runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("deployment_id", sa.String(), nullable=False),
        _time("scheduled_time", False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("state_type", sa.String(), nullable=True),
        sa.Column("claimed_by", sa.String(), nullable=False),
        _time("claimed_at", False),
        sa.UniqueConstraint("deployment_id", "scheduled_time", name="uq_deployment_runs_time"),
    )
    op.create_table(
        "cancel_requests",
        sa.Column("flow_run_id", sa.String(), primary_key=True),
        _time("requested_at", False),
        sa.Column("reason", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    for table in ("cancel_requests", "deployment_runs", "deployments"):
        op.drop_table(table)
