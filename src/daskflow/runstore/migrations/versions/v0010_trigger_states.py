"""Deployment triggers that count events (threshold, within, after, for_each, proactive) keep what they
have counted in ``trigger_states``, one row per (deployment, trigger), so it survives a service restart.

Revision ID: 0010
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "trigger_states",
        sa.Column("deployment_id", sa.String(), primary_key=True),
        sa.Column("trigger_key", sa.String(), primary_key=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trigger_states")
