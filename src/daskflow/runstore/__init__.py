"""Run history: every flow run and task run, its states, logs and artifacts, in an SQL database.

:class:`RunStore` (:mod:`.store`) reads and writes the database — an SQLite
file under the daskflow home by default, or any SQLAlchemy URL in
``daskflow.runstore.url`` — and migrates its schema (:mod:`.migrations`);
:class:`RunStoreWriter` (:mod:`.writer`) feeds it from the engine in batches,
off the hot path, and turns an unavailable database into a warning. The
records written are in :mod:`.records`, what reading returns in
:mod:`.history`, the errors in :mod:`.errors`.

``RunStore`` is imported on first use: it brings SQLAlchemy and Alembic, which
the writer loads on its own thread only when it opens the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daskflow.runstore.errors import (
    AmbiguousRunIdError,
    RunStoreError,
    RunStoreUnavailableError,
    RunStoreVersionError,
    RunStoreWarning,
)
from daskflow.runstore.history import ArtifactInfo, FlowRunDetail, FlowRunSummary, LogInfo, StateInfo, TaskRunInfo
from daskflow.runstore.records import (
    ArtifactRecord,
    FlowRunRecord,
    LogEntry,
    Record,
    StateRecord,
    TaskRunRecord,
    log_entry_from_record,
)
from daskflow.runstore.urls import resolve_url
from daskflow.runstore.writer import RunStoreWriter

if TYPE_CHECKING:
    from daskflow.runstore.store import RunStore

__all__ = [
    "AmbiguousRunIdError",
    "ArtifactInfo",
    "ArtifactRecord",
    "FlowRunDetail",
    "FlowRunRecord",
    "FlowRunSummary",
    "LogEntry",
    "LogInfo",
    "Record",
    "RunStore",
    "RunStoreError",
    "RunStoreUnavailableError",
    "RunStoreVersionError",
    "RunStoreWarning",
    "RunStoreWriter",
    "StateInfo",
    "StateRecord",
    "TaskRunInfo",
    "TaskRunRecord",
    "log_entry_from_record",
    "resolve_url",
]


def __getattr__(name: str) -> Any:
    if name == "RunStore":
        from daskflow.runstore.store import RunStore

        return RunStore
    raise AttributeError(f"module 'daskflow.runstore' has no attribute {name!r}")
