"""What a run report shows, gathered from the run store and grouped, before anything is drawn.

A report is one flow run read back through :class:`~daskflow.runstore.store.RunStore`:
its detail (states, task runs), its logs, artifacts and subflow runs, all
collected once by :func:`load_report_data` into a :class:`ReportData`. The
drawing modules never touch the store.

The unit the graph draws is a :class:`TaskGroup`: all task runs of one task
name. A ``.map`` over 10,000 items is one group, so the graph stays as small as
the flow's code however much data went through it; a group keeps its state
counts, its duration range and the groups it took results from
(:func:`group_edges`, from each task run's ``upstream_ids``).

States are reduced to a few *state keys* (:func:`state_key`), each with one
colour (:data:`STATE_STYLES`), so the graph, the timeline and the tables
colour a state the same way. A group takes the colour of its most severe run:
one failed child turns a map's node red.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from daskflow.exceptions import RunNotFoundError
from daskflow.runs import format_seconds
from daskflow.runstore.history import ArtifactInfo, FlowRunDetail, FlowRunSummary, LogInfo, TaskRunInfo

if TYPE_CHECKING:
    from daskflow.runstore.store import RunStore

__all__ = [
    "DEFAULT_LOG_LIMIT",
    "STATE_STYLES",
    "ReportData",
    "StateStyle",
    "TaskGroup",
    "format_duration",
    "format_time",
    "group_edges",
    "group_task_runs",
    "is_failure",
    "load_report_data",
    "state_key",
]

DEFAULT_LOG_LIMIT = 5_000  # log records shown; beyond that the page says how many were left out
_FAILED_LOG_LIMIT = 200  # log lines shown under each failed task run


@dataclass(frozen=True, slots=True)
class StateStyle:
    """How one state key is drawn: its label, fill colour, the text colour on it, and its severity."""

    key: str
    label: str
    colour: str
    text: str
    severity: int  # the highest severity among a group's runs colours the group


# Ordered as the stacked bars and the count chips show them: good news first.
STATE_STYLES: dict[str, StateStyle] = {
    style.key: style
    for style in (
        StateStyle("completed", "Completed", "#2f9e44", "#ffffff", 1),
        StateStyle("cached", "Cached", "#1098ad", "#ffffff", 0),
        StateStyle("running", "Running", "#f59f00", "#1a1a1a", 4),
        StateStyle("pending", "Pending", "#ced4da", "#1a1a1a", 3),
        StateStyle("cancelled", "Cancelled", "#868e96", "#ffffff", 5),
        StateStyle("timedout", "TimedOut", "#e8590c", "#ffffff", 6),
        StateStyle("failed", "Failed", "#e03131", "#ffffff", 7),
        StateStyle("crashed", "Crashed", "#8b1a1a", "#ffffff", 8),
        StateStyle("other", "Other", "#adb5bd", "#1a1a1a", 2),
    )
}

_KEY_BY_NAME = {"completed": "completed", "cached": "cached", "timedout": "timedout", "crashed": "crashed"}
_KEY_BY_TYPE = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CRASHED": "crashed",
    "CANCELLED": "cancelled",
    "RUNNING": "running",
    "PENDING": "pending",
    "SCHEDULED": "pending",
}


def state_key(state_type: str, state_name: str) -> str:
    """The colour key of a state: its name when it is a distinct kind (Cached, TimedOut), else its type."""
    by_name = _KEY_BY_NAME.get(state_name.lower())
    if by_name is not None:
        return by_name
    return _KEY_BY_TYPE.get(state_type.upper(), "other")


def is_failure(run: TaskRunInfo) -> bool:
    """Whether a task run ended failed or crashed (a timeout is a kind of failure)."""
    return run.state_type.upper() in ("FAILED", "CRASHED")


@dataclass(slots=True)
class TaskGroup:
    """Every task run of one task name: one node of the graph, one row of the grouped table."""

    name: str
    index: int  # order of first appearance, which is also a topological order of most flows
    runs: list[TaskRunInfo] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def size(self) -> int:
        return len(self.runs)

    @property
    def label(self) -> str:
        return self.name if self.size == 1 else f"{self.name} \u00d7{self.size}"

    @property
    def summary_key(self) -> str:
        """The most severe state key among the runs: the node's colour."""
        return max(self.counts, key=lambda key: STATE_STYLES[key].severity) if self.counts else "other"

    @property
    def durations(self) -> list[float]:
        return sorted(d for d in (run.duration for run in self.runs) if d is not None)

    @property
    def retries(self) -> int:
        return sum(run.retries for run in self.runs)

    @property
    def cache_hits(self) -> int:
        return sum(1 for run in self.runs if run.cache_hit)

    @property
    def slot_wait(self) -> float:
        return sum(run.slot_wait for run in self.runs)

    @property
    def workers(self) -> list[str]:
        return sorted({run.worker or "local" for run in self.runs})

    def ordered_counts(self) -> list[tuple[StateStyle, int]]:
        """(style, count) for each state present, in :data:`STATE_STYLES` order."""
        return [(style, self.counts[key]) for key, style in STATE_STYLES.items() if self.counts[key]]

    def duration_range(self) -> str:
        """``min–max s (median m)``, or a single duration, or a dash when none ended."""
        values = self.durations
        if not values:
            return "\u2014"
        if len(values) == 1:
            return format_duration(values[0])
        median = statistics.median(values)
        return f"{format_duration(values[0])}\u2013{format_duration(values[-1])} (median {format_duration(median)})"


def group_task_runs(task_runs: Iterable[TaskRunInfo]) -> list[TaskGroup]:
    """The task runs grouped by task name, groups in order of their first run."""
    groups: dict[str, TaskGroup] = {}
    for run in task_runs:
        group = groups.get(run.task_name)
        if group is None:
            group = groups[run.task_name] = TaskGroup(run.task_name, len(groups))
        group.runs.append(run)
        group.counts[state_key(run.state_type, run.state_name)] += 1
    return list(groups.values())


def group_edges(groups: Sequence[TaskGroup]) -> dict[tuple[int, int], int]:
    """(upstream group, downstream group) -> how many run-level links it stands for.

    Upstream ids outside this flow run (a parent's run passed into a subflow) and
    links inside one group (a task folding over its own earlier results) are left
    out: neither is an edge between two nodes of this graph.
    """
    group_of = {run.id: group.index for group in groups for run in group.runs}
    edges: Counter[tuple[int, int]] = Counter()
    for group in groups:
        for run in group.runs:
            for upstream in run.upstream_ids:
                source = group_of.get(upstream)
                if source is not None and source != group.index:
                    edges[(source, group.index)] += 1
    return dict(edges)


def format_duration(seconds: float | None) -> str:
    """A duration in the page, a dash while a run has not ended (see :func:`daskflow.runs.format_seconds`)."""
    return format_seconds(seconds)


def format_time(moment: datetime | None) -> str:
    """A UTC time to the millisecond; a dash when there is none."""
    if moment is None:
        return "\u2014"
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything one report shows, read from the run store in one go."""

    detail: FlowRunDetail
    groups: list[TaskGroup]
    edges: dict[tuple[int, int], int]
    logs: list[LogInfo]
    logs_total: int | None  # None when every record fits under the limit, else at least this many
    failed_logs: dict[str, list[LogInfo]]  # the log lines of each failed task run, by its id
    artifacts: list[ArtifactInfo]
    subflows: list[FlowRunSummary]
    task_names: dict[str, str]  # task run id -> task run name, for the logs and artifacts

    @property
    def failures(self) -> list[TaskRunInfo]:
        """The failed and crashed task runs, in the order they were created."""
        return [run for run in self.detail.task_runs if is_failure(run)]

    @property
    def origin(self) -> datetime | None:
        """Time zero of the timeline: when the flow run started (else its first task run did)."""
        starts = [run.start_time for run in self.detail.task_runs if run.start_time is not None]
        candidates = [moment for moment in (self.detail.start_time, *starts) if moment is not None]
        return min(candidates) if candidates else self.detail.created


def load_report_data(store: RunStore, id_or_prefix: str, *, log_limit: int = DEFAULT_LOG_LIMIT) -> ReportData:
    """Read one flow run and what belongs to it; an unknown id is a :class:`RunNotFoundError`."""
    detail = store.flow_run(id_or_prefix)
    if detail is None:
        raise RunNotFoundError(
            f"No flow run with id {id_or_prefix!r} in the run store at {store.display_url}. "
            "Fix: copy an id (or its first characters) from `daskflow runs ls`, or name the run store "
            "that recorded it (daskflow.runstore.url)."
        )
    # One record more than shown tells whether the list was cut.
    logs = store.logs(detail.id, limit=log_limit + 1)
    logs_total: int | None = None
    if len(logs) > log_limit:
        logs = logs[:log_limit]
        logs_total = log_limit + 1
    failures = [run for run in detail.task_runs if is_failure(run)]
    failed_logs: dict[str, list[LogInfo]] = {run.id: [] for run in failures}
    if logs_total is None:
        for record in logs:
            if record.task_run_id in failed_logs:
                failed_logs[record.task_run_id].append(record)
    else:
        # The shown logs are cut, so a failed run's own lines are fetched on their own;
        # the first few hundred failures are enough to see what went wrong.
        for run in failures[:_FAILED_LOG_LIMIT]:
            failed_logs[run.id] = store.logs(detail.id, task_run_id=run.id, limit=_FAILED_LOG_LIMIT)
    for run_id, records in failed_logs.items():
        failed_logs[run_id] = records[:_FAILED_LOG_LIMIT]
    artifacts = sorted(store.artifacts(flow_run_id=detail.id), key=lambda a: (a.created, a.id))
    subflows = sorted(store.list_flow_runs(parent_flow_run_id=detail.id, limit=None), key=lambda s: s.created)
    groups = group_task_runs(detail.task_runs)
    return ReportData(
        detail=detail,
        groups=groups,
        edges=group_edges(groups),
        logs=logs,
        logs_total=logs_total,
        failed_logs=failed_logs,
        artifacts=artifacts,
        subflows=subflows,
        task_names={run.id: run.name for run in detail.task_runs},
    )
