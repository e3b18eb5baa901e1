"""What the run store's reading API returns: small frozen dataclasses, never database rows.

Times are aware ``datetime`` objects in UTC; durations are seconds. These are
what ``daskflow runs ls``, ``runs show``, ``runs logs`` and ``artifacts ls``
print, so each carries exactly the columns one of them needs:

* :class:`FlowRunSummary` — a row of ``runs ls``: id, flow, state, start,
  duration, how many task runs and how many cache hits.
* :class:`FlowRunDetail` — ``runs show``: the flow run, its parameters, its
  state history, its task runs (:class:`TaskRunInfo`) and the failure's traceback.
* :class:`LogInfo` — a line of ``runs logs``; :class:`ArtifactInfo` — a row of
  ``artifacts ls``; :class:`StateInfo` — one state a run passed through.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["ArtifactInfo", "FlowRunDetail", "FlowRunSummary", "LogInfo", "StateInfo", "TaskRunInfo"]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowRunSummary:
    """One flow run as ``runs ls`` lists it."""

    id: str
    name: str
    flow_name: str
    state_type: str
    state_name: str
    start_time: datetime | None
    end_time: datetime | None
    created: datetime
    parent_flow_run_id: str | None
    task_runs: int
    cache_hits: int

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None while the run has not ended."""
        return _seconds(self.start_time, self.end_time)


@dataclass(frozen=True, slots=True, kw_only=True)
class StateInfo:
    """One state a flow run or task run entered."""

    run_id: str
    run_kind: str  # "flow" | "task"
    type: str
    name: str
    message: str | None
    timestamp: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRunInfo:
    """One task run as ``runs show`` lists it."""

    id: str
    flow_run_id: str | None
    name: str
    task_name: str
    map_index: int | None
    state_type: str
    state_name: str
    state_message: str | None
    start_time: datetime | None
    end_time: datetime | None
    run_count: int
    cache_key: str | None
    cache_hit: bool
    worker: str | None
    slot_wait: float
    traceback: str | None
    created: datetime
    upstream_ids: tuple[str, ...] = ()  # the task runs whose results this one took
    tags: tuple[str, ...] = ()

    @property
    def retries(self) -> int:
        """Attempts after the first."""
        return max(self.run_count - 1, 0)

    @property
    def duration(self) -> float | None:
        return _seconds(self.start_time, self.end_time)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowRunDetail:
    """One flow run with everything ``runs show`` prints."""

    id: str
    name: str
    flow_name: str
    parent_flow_run_id: str | None
    parameters: dict[str, Any]
    state_type: str
    state_name: str
    state_message: str | None
    start_time: datetime | None
    end_time: datetime | None
    run_count: int
    traceback: str | None
    created: datetime
    updated: datetime
    states: tuple[StateInfo, ...]
    task_runs: tuple[TaskRunInfo, ...]
    entrypoint: str | None = None  # the flow's import path, when it has one (retry imports it)
    dashboard_link: str | None = None  # the Dask dashboard of the cluster the run used, if any
    tags: tuple[str, ...] = ()
    scheduled_start_time: datetime | None = None  # when it was due (a deployment's or flow.serve's time)
    deployment_id: str | None = None
    deployment_name: str | None = None

    @property
    def duration(self) -> float | None:
        return _seconds(self.start_time, self.end_time)

    @property
    def cache_hits(self) -> int:
        return sum(1 for run in self.task_runs if run.cache_hit)

    @property
    def failure_traceback(self) -> str | None:
        """The traceback that explains a failure: the flow's own, else its first failed task run's."""
        if self.traceback:
            return self.traceback
        return next((run.traceback for run in self.task_runs if run.traceback), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogInfo:
    """One log record of a run."""

    id: int
    flow_run_id: str | None
    task_run_id: str | None
    logger: str
    level: int
    message: str
    created: datetime
    exception: str | None

    @property
    def level_name(self) -> str:
        return logging.getLevelName(self.level)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactInfo:
    """One artifact kept against a run."""

    id: str
    key: str | None
    type: str
    description: str | None
    data: str
    flow_run_id: str | None
    task_run_id: str | None
    created: datetime
