"""The Concurrency page's data: each configured limit, its size, and the task runs holding and waiting now.

A task run is under a limit when the limit's name is its task's name or one of
its tags (:func:`daskflow.concurrency.limits_for_task`; task runs record their
tags, schema 0006). The slots themselves live in the processes and clusters
that run the flows, out of the server's reach, so "now" is read from the run
store's latest snapshots, as every other page is:

* **holding** — a task run under the limit in the ``Running`` state: it
  acquired its slots before it entered it;
* **waiting** — a task run under the limit recorded ``Pending`` in a flow run
  that is running: it waits for a slot, or for its inputs or a worker first.
  Task runs are in the store from their submission only where the flow engine
  records submitted runs (``engine.history.record_submitted``, on main since
  this session); before, a run that waits for a slot shows once it starts.

Task runs of flow runs that ended (a process that died leaves its task runs
``Running`` forever) are left out. One query over the task runs that are
running or pending, bounded, matched against the limits here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.store import RunStore
from daskflow.states import FINAL_TYPE_NAMES

__all__ = ["MAX_LISTED", "limit_rows"]

MAX_LISTED = 2000  # task runs read at most per look: a page of limits, not a census
_FINAL = tuple(sorted(FINAL_TYPE_NAMES))


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def limit_rows(store: RunStore, sizes: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per limit (by name): ``name``, ``size``, ``holders`` and ``waiters`` (task runs, oldest first)."""
    rows: dict[str, dict[str, Any]] = {
        name: {"name": name, "size": size, "holders": [], "waiters": []} for name, size in sorted(sizes.items())
    }
    if not rows:
        return []
    tr, fr = schema.task_runs, schema.flow_runs
    query = (
        sa.select(
            tr.c.id, tr.c.name, tr.c.task_name, tr.c.tags, tr.c.state_type, tr.c.flow_run_id, tr.c.start_time,
            tr.c.created, tr.c.worker, fr.c.state_type.label("flow_state"),
        )
        .join(fr, fr.c.id == tr.c.flow_run_id)
        .where(tr.c.state_type.in_(("RUNNING", "PENDING")), fr.c.state_type.not_in(_FINAL))
        .order_by(tr.c.created)
        .limit(MAX_LISTED)
    )  # fmt: skip
    with store.database_errors(), store.engine.connect() as connection:
        found = connection.execute(query).all()
    for run in found:
        tags = json.loads(run.tags) if run.tags else []
        entry = {
            "task_run_id": run.id, "name": run.name, "flow_run_id": run.flow_run_id, "worker": run.worker,
            "since": _when(run.start_time if run.state_type == "RUNNING" else run.created),
        }  # fmt: skip
        for name in {run.task_name, *tags}:
            row = rows.get(name)
            if row is None:
                continue
            if run.state_type == "RUNNING":
                row["holders"].append(entry)
            elif run.flow_state == "RUNNING":
                row["waiters"].append(entry)
    return list(rows.values())
