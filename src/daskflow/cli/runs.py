"""``daskflow runs``: the run history — list flow runs, show one, read its logs.

Each command opens the run store (``--url``, else the configured one; see
:mod:`daskflow.cli.history`), reads what it needs through the store's read
API, and prints it: ``runs ls`` a table of flow runs, newest first;
``runs show`` one flow run with its task runs and, when it failed, the
failure (:mod:`daskflow.cli.run_detail`); ``runs logs`` its log records,
oldest first; ``runs report`` writes its HTML report (:mod:`daskflow.report`); ``runs cancel``
asks a running flow run to stop (:mod:`daskflow.runstore.cancellation`). ``ls`` and ``show`` take ``--json`` for scripts.

A new command on a run joins the group here, as ``@runs.command("name")``,
taking ``@url_option`` and an ``ID`` argument resolved by
:func:`~daskflow.cli.history.find_flow_run`, so every run command names its
store and its run the same way.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

import click
import dask.config
from rich.text import Text

from daskflow.cli import run_detail
from daskflow.cli.history import (
    TIME_FORMS,
    NoRunStore,
    find_flow_run,
    open_run_store,
    parse_time,
    resolve_flow_run_id,
    url_option,
)
from daskflow.cli.output import (
    Cell,
    UsageProblem,
    count,
    echo_json,
    format_duration,
    is_terminal,
    jsonable,
    make_console,
    print_table,
    short_ids,
    state_text,
    when,
    when_precise,
)
from daskflow.report import write_report
from daskflow.runstore import FlowRunSummary, LogInfo, TaskRunInfo
from daskflow.runstore.cancellation import request_cancel
from daskflow.runstore.queries import flow_run_header, logs_after
from daskflow.runstore.urls import resolve_url
from daskflow.states import FINAL_TYPE_NAMES

__all__ = ["runs"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LEVEL_STYLES = {"WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red reverse", "DEBUG": "dim"}


@click.group()
def runs() -> None:
    """Run history: every flow run, its task runs, states, logs and failures.

    Runs are recorded while daskflow.runstore.enabled is true (the default),
    in the run store at --url URL, else the daskflow.runstore.url setting,
    else sqlite:///$DASKFLOW_HOME/runs.db. Times are shown in UTC.
    """


@runs.command("ls")
@url_option
@click.option("--flow", "flow_name", metavar="NAME", default=None, help="Only the runs of this flow.")
@click.option(
    "--state",
    "states",
    metavar="STATE",
    multiple=True,
    help="Only runs in this state: a type (completed, failed, crashed, cancelled, running) or a state name "
    "(Cached, TimedOut), any case; repeatable.",
)
@click.option("--since", metavar="TIME", default=None, help=f"Only runs that started at or after TIME: {TIME_FORMS}.")
@click.option("--until", metavar="TIME", default=None, help="Only runs that started before TIME (same forms).")
@click.option(
    "--limit", metavar="N", type=click.IntRange(min=1), default=20, show_default=True, help="At most N, the newest."
)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list (times in ISO 8601).")
@click.option(
    "--tag",
    "tags",
    metavar="TAG",
    multiple=True,
    help="Only runs with this tag (from `with tags(...)`); repeatable: all of them.",
)
def runs_ls(
    url: str | None,
    flow_name: str | None,
    states: tuple[str, ...],
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
    tags: tuple[str, ...] = (),
) -> None:
    """List flow runs, newest first.

    Columns: id, flow / run name, state, start, duration, task runs, cache hits.
    """
    since_at = parse_time(since, "--since") if since is not None else None
    until_at = parse_time(until, "--until") if until is not None else None
    if since_at is not None and until_at is not None and since_at >= until_at:
        raise UsageProblem(
            f"--since {since!r} ({when(since_at)} UTC) is not before --until {until!r} ({when(until_at)} UTC), "
            "so no run could match. Fix: swap them, or drop one."
        )
    try:
        with open_run_store(url) as store:
            found = store.list_flow_runs(
                flow_name=flow_name,
                state=list(states) or None,
                since=since_at,
                until=until_at,
                limit=limit,
                tag=list(tags) or None,
            )
            where = store.display_url
    except NoRunStore as exc:
        exc.print_as_empty_list(as_json)
        return
    if as_json:
        echo_json([{**jsonable(run), "duration": run.duration} for run in found])
        return
    if not found:
        click.echo(_nothing_listed(where, flow_name, states, since_at, until_at))
        return
    _print_runs(found)
    more = f" (the newest {limit}; --limit N shows more)" if len(found) == limit else ""
    click.echo(f"{count(len(found), 'flow run', 'flow runs')}, newest first{more}, in {where}")


def _print_runs(found: list[FlowRunSummary]) -> None:
    headers = ("id", "flow / run", "state", "start (UTC)", "duration", "tasks", "cache hits")
    short = short_ids([run.id for run in found])
    rows: list[list[Cell]] = [
        [
            short[run.id],  # any unique prefix names the run in `runs show`
            f"{run.flow_name} / {run.name}",
            state_text(run.state_type, run.state_name),
            when(run.start_time),
            format_duration(run.duration),
            str(run.task_runs),
            str(run.cache_hits),
        ]
        for run in found
    ]
    print_table(headers, rows, right_aligned={4, 5, 6}, shrink=1)


def _nothing_listed(
    where: str, flow_name: str | None, states: tuple[str, ...], since: datetime | None, until: datetime | None
) -> str:
    filters = []
    if flow_name is not None:
        filters.append(f"flow {flow_name!r}")
    if states:
        filters.append("state " + " or ".join(states))
    if since is not None:
        filters.append(f"since {when(since)} UTC")
    if until is not None:
        filters.append(f"until {when(until)} UTC")
    if not filters:
        return f"No flow runs recorded in {where} yet."
    return f"No flow runs in {where} match {', '.join(filters)}; `daskflow runs ls` without filters lists them all."


@runs.command("show")
@url_option
@click.argument("run_id", metavar="ID")
@click.option(
    "--all",
    "all_tasks",
    is_flag=True,
    help=f"List every task run; past {run_detail.GROUP_ABOVE} they are grouped by task (failed ones still listed).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (times in ISO 8601).")
def runs_show(url: str | None, run_id: str, all_tasks: bool, as_json: bool) -> None:
    """Show one flow run, its task runs, and why it failed.

    ID is a flow run id, or a prefix of one that no other run shares. A failed
    run ends with the failure: the task run that failed, its worker, retries,
    traceback and last log lines.
    """
    with open_run_store(url) as store:
        page = run_detail.gather(store, find_flow_run(store, run_id))
    if as_json:
        echo_json(run_detail.as_json(page))
    else:
        run_detail.render(page, all_tasks=all_tasks)


@runs.command("logs")
@url_option
@click.argument("run_id", metavar="ID")
@click.option(
    "--task",
    "task",
    metavar="NAME",
    default=None,
    help="Only the records of this task run (work-3), or of every run of this task (work).",
)
@click.option(
    "--level",
    type=click.Choice(_LEVELS, case_sensitive=False),
    default=None,
    help="Only records at this level or above.",
)
@click.option("--limit", metavar="N", type=click.IntRange(min=1), default=None, help="Only the last N records.")
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing new records as the run writes them, until it ends (or Ctrl-C)."
)
def runs_logs(
    url: str | None, run_id: str, task: str | None, level: str | None, limit: int | None, follow: bool
) -> None:
    """Print a flow run's log records, oldest first.

    Its task runs' records are included: time (UTC), level, run name, message,
    and the exception of a record that had one. With --follow, new records are
    read from the run store as they arrive, until the run ends.
    """
    if follow:
        _follow_logs(url, run_id, task, level, limit)
        return
    min_level = logging.getLevelName(level.upper()) if level is not None else None
    with open_run_store(url) as store:
        flow_run = find_flow_run(store, run_id)
        flow_run_id, task_runs = flow_run.id, list(flow_run.task_runs)
        wanted = _task_run_ids(task_runs, task, flow_run_id) if task is not None else None
        only = next(iter(wanted)) if wanted is not None and len(wanted) == 1 else None
        logs = store.logs(flow_run_id, task_run_id=only, min_level=min_level)
    if wanted is not None:
        logs = [log for log in logs if log.task_run_id in wanted]
    if limit is not None:
        logs = logs[-limit:]
    names = {t.id: t.name for t in task_runs}
    if not logs:
        about = f" of {task!r}" if task is not None else ""
        above = f" at {level.upper()} or above" if level is not None else ""
        click.echo(f"No log records{about}{above} in flow run {flow_run_id}.")
        return
    _print_logs(logs, names, flow_run.name)


_FOLLOW_POLL_SECONDS = 0.5  # how often --follow reads new records: the store offers nothing to wait on


def _follow_logs(url: str | None, run_id: str, task: str | None, level: str | None, limit: int | None) -> None:
    """``runs logs --follow``: the last records, then each new one, until the run has ended and all are read."""
    min_level = logging.getLevelName(level.upper()) if level is not None else None
    with open_run_store(url) as store:
        flow_run = find_flow_run(store, run_id)
        after, first = 0, True
        while True:
            ended = (flow_run_header(store, flow_run.id) or flow_run).state_type in _FINAL_TYPES
            batch = logs_after(store, flow_run.id, after=after, min_level=min_level, limit=5000)
            if batch:
                after = batch[-1].id
                task_runs = store.task_runs(flow_run.id)  # new task runs may have started since the last read
                names = {t.id: t.name for t in task_runs}
                wanted = _task_run_ids(task_runs, task, flow_run.id) if task else None
                shown = [log for log in batch if wanted is None or log.task_run_id in wanted]
                if first and limit is not None:
                    shown = shown[-limit:]
                if shown:
                    _print_logs(shown, names, flow_run.name)
            first = False
            if len(batch) == 5000:
                continue  # a backlog: read on before waiting
            if ended:
                return  # records are written before the final state, so none come after this read
            time.sleep(_FOLLOW_POLL_SECONDS)


@runs.command("retry")
@url_option
@click.argument("run_id", metavar="ID")
def runs_retry(url: str | None, run_id: str) -> None:
    """Run a failed, crashed or cancelled flow run again: same flow, same parameters.

    The flow is imported from the path its run recorded, and runs here, in the
    foreground, recording its history in the same run store; its tasks whose
    results are cached hit. Prints the new run's id and final state.
    """
    from daskflow.server.actions import ActionError, retry_plan

    resolved = resolve_url(url)
    with open_run_store(url) as store:
        flow_run = find_flow_run(store, run_id)
        try:
            plan = retry_plan(store, flow_run)
        except ActionError as exc:
            raise UsageProblem(str(exc)) from None
    click.echo(f"Retrying flow run {flow_run.id} ({plan.entrypoint}, parameters {plan.parameters})")
    with dask.config.set({"daskflow.runstore.url": resolved, "daskflow.runstore.enabled": True}):
        state = plan.flow(**plan.parameters, return_state=True)
    new_run = getattr(state, "flow_run", None)
    click.echo(f"flow run {getattr(new_run, 'id', '?')} ended {state.name}")
    if not state.is_completed():
        raise SystemExit(1)


@runs.command("report")
@url_option
@click.argument("run_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    metavar="FILE.html",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Where to write the page (default: reports/<id>.html in the daskflow home).",
)
def runs_report(url: str | None, run_id: str, output: str | None) -> None:
    """Write one flow run's report: a self-contained HTML page.

    It shows the task graph coloured by state (maps grouped), a timeline of task
    runs per worker, what failed where and after how many retries, every task
    run, the logs, the artifacts, the parameters and timings. It needs nothing
    but the file: open it in a browser, attach it to a ticket.
    """
    with open_run_store(url) as store:
        written = write_report(store, resolve_flow_run_id(store, run_id), output)
    click.echo(f"Wrote the report of flow run {run_id} to {written}")


_FINAL_TYPES = FINAL_TYPE_NAMES
_WAIT_POLL_SECONDS = 0.25  # how often --wait reads the run's state: the store offers nothing to wait on


@runs.command("cancel")
@url_option
@click.argument("run_id", metavar="ID")
@click.option("--reason", metavar="TEXT", default=None, help="Why; recorded with the request and in the run's state.")
@click.option("--wait", is_flag=True, help="Wait until the run has ended and print its final state.")
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="With --wait: give up waiting after this long (the request stays).",
)
def runs_cancel(url: str | None, run_id: str, reason: str | None, wait: bool, timeout: float) -> None:
    """Ask a running flow run to stop: its task runs are cancelled and it ends Cancelled.

    The request is recorded in the run store and the command returns at once;
    the process running the flow (any process with run history on, against this
    store) sees it within about a second, cancels the run's Dask futures and
    task runs and releases their concurrency slots. With --wait, it then waits
    for the run's final state. A run that has already ended is an error.
    """
    with open_run_store(url) as store:
        flow_run = find_flow_run(store, run_id)
        label = f"flow run {flow_run.id} ({flow_run.flow_name} / {flow_run.name})"
        if flow_run.state_type in _FINAL_TYPES:
            ended = f" at {when(flow_run.end_time)} UTC" if flow_run.end_time is not None else ""
            raise UsageProblem(
                f"{label} already ended {flow_run.state_name}{ended}: there is nothing to cancel. "
                "Fix: pick a running one from `daskflow runs ls --state running`."
            )
        request_cancel(store, flow_run.id, reason)
        click.echo(f"Asked {label} to stop; it ends Cancelled within a few seconds if its process is running.")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while True:
            current = store.flow_run(flow_run.id)
            if current is not None and current.state_type in _FINAL_TYPES:
                click.echo(f"{label} ended {current.state_name}: {current.state_message or ''}".rstrip(": "))
                return
            if time.monotonic() >= deadline:
                raise UsageProblem(
                    f"{label} has not ended within {timeout:g} s (it is {current.state_name if current else 'gone'}). "
                    "The request stays: it stops once its process reads it; if that process is gone, the run "
                    "will never end here. Fix: check with `daskflow runs show`."
                )
            time.sleep(_WAIT_POLL_SECONDS)


def _task_run_ids(task_runs: list[TaskRunInfo], name: str, flow_run_id: str) -> set[str]:
    """The task runs ``name`` means: the one so named, else every run of the task so named."""
    exact = {t.id for t in task_runs if t.name == name}
    if exact:
        return exact
    of_task = {t.id for t in task_runs if t.task_name == name}
    if of_task:
        return of_task
    tasks = sorted({t.task_name for t in task_runs})
    known = ", ".join(tasks[:20]) + (", ..." if len(tasks) > 20 else "") if tasks else "none: it has no task runs"
    raise UsageProblem(
        f"flow run {flow_run_id} has no task run or task named {name!r}. Fix: give a task run name "
        f"(see `daskflow runs show {flow_run_id}`) or a task name; its tasks: {known}."
    )


def _print_logs(logs: list[LogInfo], names: dict[str, str], flow_run_name: str) -> None:
    """One line per record, aligned; a record's later lines and its exception indented under it."""
    who = [names.get(log.task_run_id, log.task_run_id) if log.task_run_id else flow_run_name for log in logs]
    width = max(len(name) for name in who)
    console = make_console() if is_terminal() else None
    for log, name in zip(logs, who, strict=True):
        head = f"{when_precise(log.created)}  {log.level_name:<8}  {name:<{width}}  "
        body = log.message.replace("\n", "\n" + " " * len(head))
        if log.exception:
            body += "\n" + "\n".join(" " * 4 + line for line in log.exception.rstrip().splitlines())
        if console is None:
            click.echo(head + body)
        else:
            line = Text(f"{when_precise(log.created)}  ")
            line.append(f"{log.level_name:<8}", style=_LEVEL_STYLES.get(log.level_name, ""))
            console.print(line.append(head[len(line.plain) :] + body), soft_wrap=True)
