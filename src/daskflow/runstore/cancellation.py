"""Cancel requests: how ``daskflow runs cancel`` reaches a flow run in another process.

A flow run is cancelled by whoever runs it — only that process holds its Dask
futures and its threads. Another process (the CLI, a service) cannot reach
them, so it *asks*: :func:`request_cancel` writes one row into the
``cancel_requests`` table, keyed by flow run id, and returns at once. Every
process that runs flows with history on polls that table for the ids of the
flow runs it has in flight (:mod:`daskflow.engine.cancellation`, one query for
all of them, :func:`pending_cancel_requests`) and cancels the ones it finds.

A request is idempotent: asking twice keeps the first request time (the
moment someone first wanted the run stopped) and the latest reason. Requests
are never deleted here: a row for a finished run is harmless (nobody polls for
that id any more) and records who asked and why.

Errors follow the store: a database that cannot be used raises
:class:`~daskflow.runstore.errors.RunStoreUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.store import RunStore

__all__ = ["CancelRequest", "cancel_requested", "pending_cancel_requests", "request_cancel"]

_IN_CHUNK = 500  # ids per IN (...) list, as in store.py: far below every backend's bound-parameter limit


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Someone asked for a flow run to stop: when (UTC) and, optionally, why."""

    flow_run_id: str
    requested_at: datetime
    reason: str | None = None


def request_cancel(store: RunStore, flow_run_id: str, reason: str | None = None) -> CancelRequest:
    """Record that ``flow_run_id`` should be cancelled; return the request as stored.

    Only records the wish: the process running the flow notices it within
    about a second (if it runs with history on, against this store). Asking
    again keeps the first request time and takes the new reason, if one is given.
    """
    table = schema.cancel_requests
    now = datetime.now(UTC)
    # IMMEDIATE on SQLite: read-then-write in one transaction without a lock upgrade that could fail.
    engine = store.engine.execution_options(sqlite_begin="IMMEDIATE")
    with store.database_errors(), engine.begin() as connection:
        row = connection.execute(sa.select(table).where(table.c.flow_run_id == flow_run_id)).first()
        if row is None:
            connection.execute(table.insert().values(flow_run_id=flow_run_id, requested_at=now, reason=reason))
            return CancelRequest(flow_run_id, now, reason)
        kept = reason if reason is not None else row.reason
        if kept != row.reason:
            connection.execute(table.update().where(table.c.flow_run_id == flow_run_id).values(reason=kept))
        return CancelRequest(flow_run_id, row.requested_at, kept)


def pending_cancel_requests(store: RunStore, flow_run_ids: Iterable[str]) -> dict[str, CancelRequest]:
    """The cancel requests recorded for any of ``flow_run_ids``, by id (one query per 500 ids)."""
    ids = list(dict.fromkeys(flow_run_ids))
    found: dict[str, CancelRequest] = {}
    if not ids:
        return found
    table = schema.cancel_requests
    with store.database_errors(), store.engine.connect() as connection:
        for start in range(0, len(ids), _IN_CHUNK):
            query = sa.select(table).where(table.c.flow_run_id.in_(ids[start : start + _IN_CHUNK]))
            for row in connection.execute(query):
                found[row.flow_run_id] = CancelRequest(row.flow_run_id, row.requested_at, row.reason)
    return found


def cancel_requested(store: RunStore, flow_run_id: str) -> bool:
    """True if someone asked for ``flow_run_id`` to be cancelled."""
    return flow_run_id in pending_cancel_requests(store, [flow_run_id])
