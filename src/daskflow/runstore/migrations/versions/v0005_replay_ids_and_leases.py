"""Record ids on states and logs (a replayed batch is kept once); claim leases; concurrent deployments.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Rows written before 0005 have no uid (NULL): unique indexes let any number of NULLs through.
    for table in ("states", "logs"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("uid", sa.String(), nullable=True))
        op.create_index(f"ux_{table}_uid", table, ["uid"], unique=True)
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("allow_concurrent_runs", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("deployment_runs") as batch:
        # A claim made before 0005 has no lease: services take it for expired (its service is gone or old).
        batch.add_column(sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("host", sa.String(), nullable=True))
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
    op.create_index("ix_deployment_runs_open", "deployment_runs", ["deployment_id", "state_type"])


def downgrade() -> None:
    op.drop_index("ix_deployment_runs_open", table_name="deployment_runs")
    with op.batch_alter_table("deployment_runs") as batch:
        batch.drop_column("pid")
        batch.drop_column("host")
        batch.drop_column("lease_expires")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("allow_concurrent_runs")
    for table in ("states", "logs"):
        op.drop_index(f"ux_{table}_uid", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("uid")
