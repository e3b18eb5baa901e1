"""Flow runs keep the import path of their flow (to retry a run no deployment started) and the Dask
dashboard of their cluster (the server links to it); task runs
are indexed by flow run and state name (the server counts a run's task runs by state on every page).

Revision ID: 0007
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("entrypoint", sa.Text(), nullable=True))
        batch.add_column(sa.Column("dashboard_link", sa.Text(), nullable=True))
    op.create_index("ix_task_runs_flow_run_state", "task_runs", ["flow_run_id", "state_name"])


def downgrade() -> None:
    op.drop_index("ix_task_runs_flow_run_state", table_name="task_runs")
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("dashboard_link")
        batch.drop_column("entrypoint")
