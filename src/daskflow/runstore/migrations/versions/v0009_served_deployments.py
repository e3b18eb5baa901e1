"""Deployments registered by ``flow.serve`` / ``serve()`` name the process serving them and until when
(a lease it renews), so that only that process fires their schedules and ``deployment ls`` can tell a
served deployment from one whose serving process stopped.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("served_by", sa.String(), nullable=True))
        batch.add_column(sa.Column("served_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("served_until")
        batch.drop_column("served_by")
