"""What ``daskflow runs show`` prints about one flow run, gathered once and laid out for a reader.

The page answers, top to bottom: what ran (flow, run name, parameters), how it
ended (state, message, times), what its task runs did (a table), and — when
something failed — which task run failed, on which worker, after how many
retries, with its traceback and the last lines it logged. A newcomer reading a
failed run should not need a second command.

:func:`gather` reads everything from the store in one place
(:class:`FlowRunPage`), so the text (:func:`render`) and the JSON
(:func:`as_json`) say the same thing, and a later view (an HTML report) can
reuse it. A map of thousands of items would bury the failure under its rows:
past :data:`GROUP_ABOVE` task runs the table has one row per task, with counts
per state, and every failed or crashed task run is still listed on its own.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text

from daskflow.cli.output import (
    Cell,
    count,
    format_duration,
    jsonable,
    make_console,
    print_table,
    state_text,
    when,
    when_precise,
)
from daskflow.runstore import FlowRunDetail, FlowRunSummary, LogInfo, TaskRunInfo

if TYPE_CHECKING:
    from daskflow.runstore import RunStore

__all__ = ["GROUP_ABOVE", "Failure", "FlowRunPage", "as_json", "gather", "render"]

GROUP_ABOVE = 50  # task runs past which the table groups them by task
_FAILURES_IN_DETAIL = 3  # the first root failures shown with traceback and logs; the rest are named
_LAST_LOG_LINES = 10
_UPSTREAM_FAILED = "NotReady"  # a task that never ran because an input failed: not a root cause
_DID_NOT_RUN = frozenset({_UPSTREAM_FAILED, "UpstreamFailed"})  # UpstreamFailed: its name in older stores
_FAILED_TYPES = ("FAILED", "CRASHED")


@dataclass(frozen=True)
class Failure:
    """A task run that failed on its own account, with the last records it logged."""

    task_run: TaskRunInfo
    logs: list[LogInfo]
    log_total: int  # how many records it logged in all


@dataclass(frozen=True)
class FlowRunPage:
    """Everything ``runs show`` prints about one flow run."""

    run: FlowRunDetail
    subflows: list[FlowRunSummary]
    failures: list[Failure]  # root failures, in the order they ended; only the first few carry logs
    upstream_failed: int  # task runs that did not run because an upstream task run failed
    flow_logs: list[LogInfo]  # the flow's own last records, when it failed without a failed task run


def gather(store: RunStore, run: FlowRunDetail) -> FlowRunPage:
    """Read what the page needs besides ``run`` itself: subflows, failures and their logs."""
    subflows = store.list_flow_runs(parent_flow_run_id=run.id, limit=None)
    failed = [t for t in run.task_runs if t.state_type in _FAILED_TYPES]
    roots = sorted(
        (t for t in failed if t.state_name not in _DID_NOT_RUN),
        key=lambda t: (t.end_time or t.created, t.created),
    )
    failures = []
    for index, task_run in enumerate(roots):
        logs = store.logs(run.id, task_run_id=task_run.id) if index < _FAILURES_IN_DETAIL else []
        failures.append(Failure(task_run, logs[-_LAST_LOG_LINES:], len(logs)))
    flow_logs: list[LogInfo] = []
    if run.state_type in _FAILED_TYPES and not roots:
        flow_logs = [log for log in store.logs(run.id) if log.task_run_id is None][-_LAST_LOG_LINES:]
    did_not_run = sum(1 for t in run.task_runs if t.state_name in _DID_NOT_RUN)
    return FlowRunPage(run, subflows, failures, did_not_run, flow_logs)


def as_json(page: FlowRunPage) -> dict[str, Any]:
    """The page for scripts: the run as stored, with durations, retries and the failures' logs."""
    run = page.run
    data: dict[str, Any] = jsonable(run)
    data["duration"] = run.duration
    data["cache_hits"] = run.cache_hits
    data["task_runs"] = [{**jsonable(t), "duration": t.duration, "retries": t.retries} for t in run.task_runs]
    data["subflow_runs"] = [{**jsonable(s), "duration": s.duration} for s in page.subflows]
    data["failures"] = [
        {"task_run_id": f.task_run.id, "task_run": f.task_run.name, "worker": f.task_run.worker,
         "retries": f.task_run.retries, "traceback": f.task_run.traceback, "last_logs": jsonable(f.logs)}
        for f in page.failures
    ]  # fmt: skip
    return data


def render(page: FlowRunPage, *, all_tasks: bool = False) -> None:
    """Print the page: header, task runs, subflows, then the failure."""
    _header(page)
    runs = page.run.task_runs
    if not runs:
        _say(Text("\nNo task runs."))
    elif len(runs) > GROUP_ABOVE and not all_tasks:
        _say(Text(f"\nTask runs, grouped by task ({len(runs)} runs; --all lists each one):"))
        _grouped_table(runs)
        failed = [t for t in runs if t.state_type in _FAILED_TYPES]
        if failed:
            _say(Text(f"\nFailed task runs ({len(failed)}):"))
            _task_table(failed)
    else:
        _say(Text("\nTask runs:"))
        _task_table(_in_task_order(runs))
    if page.subflows:
        _say(Text("\nSubflow runs:"))
        for sub in page.subflows:
            line = Text(f"  {sub.id}  {sub.flow_name} / {sub.name}  ")
            line.append_text(state_text(sub.state_type, sub.state_name))
            _say(line.append(f"  {format_duration(sub.duration)}"))
    _failure(page)


def _say(text: Text) -> None:
    # soft_wrap: a traceback line or a long message stays one line, for the terminal to wrap or not.
    make_console().print(text, soft_wrap=True)


def _header(page: FlowRunPage) -> None:
    run = page.run
    state = state_text(run.state_type, run.state_name)
    if run.state_message:
        state.append(f": {run.state_message}")
    fields: list[tuple[str, Text]] = [
        ("flow", Text(run.flow_name)),
        ("run name", Text(run.name)),
        ("state", state),
        ("parameters", Text(_parameters(run.parameters))),
        ("started", Text(_utc(when(run.start_time)))),
        ("ended", Text(_utc(when(run.end_time)))),
        ("duration", Text(format_duration(run.duration))),
        ("task runs", Text(_task_summary(run))),
    ]
    if run.parent_flow_run_id:
        fields.append(("subflow of", Text(f"daskflow runs show {run.parent_flow_run_id}")))
    _say(Text(f"Flow run {run.id}", style="bold"))
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        _say(Text(f"  {label.ljust(width)}  ").append_text(value))


def _utc(text: str) -> str:
    return text if text == "-" else f"{text} UTC"


def _parameters(parameters: dict[str, Any]) -> str:
    if not parameters:
        return "(none)"
    return ", ".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in parameters.items())


def _task_summary(run: FlowRunDetail) -> str:
    states = Counter(t.state_name for t in run.task_runs)
    text = str(len(run.task_runs))
    if states:
        text += ": " + _state_counts(states)
    if run.cache_hits:
        text += f"; {count(run.cache_hits, 'cache hit', 'cache hits')}"
    return text


def _state_counts(states: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in states.most_common())


def _in_task_order(runs: tuple[TaskRunInfo, ...]) -> list[TaskRunInfo]:
    """Task by task, in the order each task first ran; a map's items by index.

    The store's order is creation order, in which the items of a map that
    threads or workers started together come shuffled.
    """
    first: dict[str, int] = {}
    for index, t in enumerate(runs):
        first.setdefault(t.task_name, index)
    return sorted(runs, key=lambda t: (first[t.task_name], -1 if t.map_index is None else t.map_index, t.created))


def _has_slot_wait(runs: list[TaskRunInfo]) -> bool:
    return any(t.slot_wait > 0 for t in runs)


def _task_table(runs: list[TaskRunInfo]) -> None:
    slot_wait = _has_slot_wait(runs)
    headers = ["task run", "state", "retries", "duration", "worker", "cache"] + (["slot wait"] if slot_wait else [])
    rows: list[list[Cell]] = []
    for t in runs:
        row: list[Cell] = [
            t.name,
            state_text(t.state_type, t.state_name),
            str(t.retries),
            format_duration(t.duration),
            t.worker or "-",
            _cache(t),
        ]
        if slot_wait:
            row.append(format_duration(t.slot_wait) if t.slot_wait > 0 else "-")
        rows.append(row)
    print_table(headers, rows, right_aligned={2, 3, 6})


def _cache(run: TaskRunInfo) -> str:
    if run.cache_hit:
        return "hit"
    return "miss" if run.cache_key else "-"


def _grouped_table(runs: tuple[TaskRunInfo, ...]) -> None:
    groups: dict[str, list[TaskRunInfo]] = {}
    for t in runs:  # in creation order: a task's row sits where its first run started
        groups.setdefault(t.task_name, []).append(t)
    slot_wait = _has_slot_wait(list(runs))
    headers = ["task", "runs", "states", "retries", "longest", "workers", "cache hits"]
    headers += ["slot wait"] if slot_wait else []
    rows: list[list[Cell]] = []
    for name, members in groups.items():
        durations = [t.duration for t in members if t.duration is not None]
        row: list[Cell] = [
            name,
            str(len(members)),
            _state_counts(Counter(t.state_name for t in members)),
            str(sum(t.retries for t in members)),
            format_duration(max(durations) if durations else None),
            str(len({t.worker for t in members if t.worker})),
            str(sum(1 for t in members if t.cache_hit)),
        ]
        if slot_wait:
            row.append(format_duration(sum(t.slot_wait for t in members)))
        rows.append(row)
    print_table(headers, rows, right_aligned={1, 3, 4, 5, 6, 7})


def _failure(page: FlowRunPage) -> None:
    run = page.run
    failed_subflows = [s for s in page.subflows if s.state_type in _FAILED_TYPES]
    if not page.failures and not failed_subflows and run.state_type not in _FAILED_TYPES:
        return
    _say(Text("\nFailure", style="bold red"))
    for failure in page.failures[:_FAILURES_IN_DETAIL]:
        _task_failure(failure)
    rest = page.failures[_FAILURES_IN_DETAIL:]
    if rest:
        names = ", ".join(f.task_run.name for f in rest[:10]) + (", ..." if len(rest) > 10 else "")
        _say(Text(f"  ... and {count(len(rest), 'more failed task run', 'more failed task runs')}: {names} "
                  f"(`daskflow runs logs {run.id} --task NAME` shows what each logged)"))  # fmt: skip
    if page.upstream_failed:
        n = page.upstream_failed
        _say(Text(f"  {count(n, 'task run', 'task runs')} did not run because a task run "
                  f"{'it depends' if n == 1 else 'they depend'} on failed (state {_UPSTREAM_FAILED})."))  # fmt: skip
    for sub in failed_subflows:
        _say(Text(f"  Subflow run {sub.id} ({sub.flow_name} / {sub.name}) ended {sub.state_name}: "
                  f"daskflow runs show {sub.id}"))  # fmt: skip
    if not page.failures and run.state_type in _FAILED_TYPES:
        _say(Text(f"  The flow itself {run.state_name.lower()}: {run.state_message or '(no message)'}"))
        _block("traceback", run.traceback)
        _logs_block(page.flow_logs, len(page.flow_logs), "the flow", shown_traceback=run.traceback)


def _task_failure(failure: Failure) -> None:
    t = failure.task_run
    where = f"on worker {t.worker}" if t.worker else "in the flow's own process (not on a Dask worker)"
    tries = (
        f"after {count(t.retries, 'retry', 'retries')} ({t.run_count} attempts)"
        if t.retries
        else "on its first attempt (no retries)"
    )
    line = Text(f"  Task run {t.name} (task {t.task_name}) ")
    line.append_text(state_text(t.state_type, t.state_name))
    _say(line.append(f" {where}, {tries}."))
    if t.state_message:
        _say(Text(f"    message: {t.state_message}"))
    _block("traceback", t.traceback)
    _logs_block(failure.logs, failure.log_total, t.name, shown_traceback=t.traceback)


def _block(title: str, text: str | None) -> None:
    if not text:
        return
    _say(Text(f"    {title}:"))
    _say(Text("\n".join("      " + line for line in text.rstrip().splitlines())))


def _logs_block(logs: list[LogInfo], total: int, who: str, *, shown_traceback: str | None) -> None:
    if not logs:
        _say(Text(f"    {who} logged nothing."))
        return
    shown = f"last {len(logs)} of {total}" if total > len(logs) else str(total)
    _say(Text(f"    log ({shown}):"))
    for log in logs:
        head = f"      {when_precise(log.created)}  {log.level_name:<8} "
        # A message's later lines line up under its first, so they read as one record.
        _say(Text(head + log.message.replace("\n", "\n" + " " * len(head))))
        if log.exception and shown_traceback and log.exception.strip() in shown_traceback:
            _say(Text("        (with the traceback above)"))
        elif log.exception:
            _say(Text("\n".join("        " + line for line in log.exception.rstrip().splitlines())))
