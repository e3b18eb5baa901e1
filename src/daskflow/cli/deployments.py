"""``daskflow deployment ls | run | pause | resume | backfill | apply | delete``.

The commands are thin shells over :mod:`daskflow.deployments`: they open the run
store the library would use (``--url`` overrides it, as for ``runs``), call the
deployment API, and report. ``run`` and ``backfill`` run the flow in this
process, on the deployment's work pool, and record the flow runs' history in the
same store (``--url`` is also the history's URL for the command), so
``daskflow runs show ID`` finds what they print.

``--param k=v`` values are read as JSON when they parse (``n=3`` is the int 3,
``ids=[1,2]`` a list, ``flag=true`` a bool) and as text otherwise
(``day=2024-01-15``); templates such as ``{{ scheduled_time }}`` work there too.
A bad deployment, file entry, parameter or time is one line on stderr ending
with the fix (exit 2); a run that did not complete exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import dask.config

from daskflow.cli.history import NoRunStore, open_run_store, parse_time, url_option
from daskflow.cli.output import (
    Cell,
    UsageProblem,
    count,
    echo_json,
    jsonable,
    one_line,
    print_table,
    usage_problems,
    when,
)
from daskflow.deployments import Deployment, apply_deployment_file, run_deployment, run_deployment_here
from daskflow.exceptions import DeploymentError, ScheduleError
from daskflow.runstore import deployments as rows
from daskflow.schedules import Cron, Interval, RRule, Schedule
from daskflow.states import State

__all__ = ["deployment", "describe_schedule", "parse_params"]


@click.group()
def deployment() -> None:
    """Deployments: flows stored with a schedule, parameters and a work pool."""


def _problems() -> AbstractContextManager[None]:
    """A bad deployment, schedule or time is the user's to fix: one line, not a traceback."""
    return usage_problems(DeploymentError, ScheduleError)


@contextmanager
def _history_at(url: str | None) -> Iterator[None]:
    # Flow runs started here record their history where --url points, beside the deployment.
    if url is None:
        yield
        return
    with dask.config.set({"daskflow.runstore.url": url}):
        yield


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("n=3", "day=2024-01-15")`` as ``{"n": 3, "day": "2024-01-15"}``: JSON when it parses, else text."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageProblem(
                f"bad --param {pair!r}: expected NAME=VALUE. Fix: e.g. --param execution_date=2024-01-15."
            )
        try:
            parsed[key.strip()] = json.loads(raw)
        except ValueError:
            parsed[key.strip()] = raw
    return parsed


def describe_schedule(schedule: Schedule | None) -> str:
    """A schedule in a table cell."""
    if schedule is None:
        return "-"
    if isinstance(schedule, Cron):
        return f"cron {schedule.cron} ({schedule.timezone})"
    if isinstance(schedule, Interval):
        return f"every {schedule.interval} ({schedule.timezone})"
    if isinstance(schedule, RRule):
        return f"rrule {one_line(schedule.rrule)} ({schedule.timezone})"
    return repr(schedule)


@deployment.command("ls")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the deployments as a JSON list.")
def deployment_ls(url: str | None, as_json: bool) -> None:
    """List deployments: flow, schedule, next run, paused, work pool, last run and its state.

    A deployment of ``flow.serve`` shows "served by HOST:PID" in the work pool column while
    that process serves it, "not served (was HOST:PID)" once it stopped.
    """
    try:
        with open_run_store(url) as store, _problems():
            found = Deployment.list(store)
            last = rows.last_runs(store, [d.id for d in found if d.id is not None])
            where = store.display_url
    except NoRunStore as exc:
        exc.print_as_empty_list(as_json)
        return
    now = datetime.now(UTC)
    listed = []
    for item in found:
        upcoming = item.upcoming_times(1, now)
        listed.append((item, upcoming[0] if upcoming else None, last.get(item.id or "")))
    if as_json:
        echo_json([
            {
                "name": item.name, "id": item.id, "flow": item.flow_name, "entrypoint": item.entrypoint,
                "schedule": None if item.schedule is None else item.schedule.to_dict(),
                "next_run": jsonable(nxt), "paused": item.paused, "work_pool": item.work_pool.to_dict(),
                "catchup": item.catchup, "tags": list(item.tags), "parameters": item.parameters,
                "last_run": jsonable(run), "triggers": [t.model_dump(mode="json") for t in item.triggers],
                "served_by": item.served_by, "served": item.served(now),
            }
            for item, nxt, run in listed
        ])  # fmt: skip
        return
    if not listed:
        click.echo(f"No deployments in {where} yet; `daskflow deployment apply FILE` creates them.")
        return
    headers = ("name", "flow", "schedule", "next run (UTC)", "paused", "work pool", "last run (UTC)", "state")
    table: list[list[Cell]] = [
        [
            item.name, item.flow_name,
            describe_schedule(item.schedule) + (f" + {count(len(item.triggers), 'trigger', 'triggers')}"
                                                if item.triggers else ""),
            when(nxt),
            "yes" if item.paused else "no", _where_it_runs(item, now),
            when(run.scheduled_time) if run else "-",
            (run.state_type or "RUNNING").title() if run else "-",
        ]
        for item, nxt, run in listed
    ]  # fmt: skip
    print_table(headers, table, right_aligned=set(), shrink=0)
    click.echo(f"{count(len(listed), 'deployment', 'deployments')} in {where}")


def _where_it_runs(item: Deployment, now: datetime) -> str:
    """The work pool; for a deployment of flow.serve, the process serving it, or that none does now."""
    if item.served_by is None:
        return item.work_pool.describe()
    return f"served by {item.served_by}" if item.served(now) else f"not served (was {item.served_by})"


def _report(state: State, scheduled: datetime | None = None) -> str:
    run = getattr(state, "flow_run", None)
    at = f"{when(scheduled)} UTC  " if scheduled is not None else ""
    message = f": {one_line(state.message)}" if state.message and not state.is_completed() else ""
    return f"{at}flow run {getattr(run, 'id', '?')}  {state.name}{message}"


@deployment.command("run")
@url_option
@click.argument("name")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a parameter (repeatable).")
@click.option("--time", "at", metavar="TIME", default=None, help="The scheduled time the run is for (default: now).")
@click.option(
    "--queue",
    is_flag=True,
    help="Queue the run for the scheduling service (daskflow serve) instead of running it here.",
)
@click.option(
    "--timeout", type=float, default=0.0, show_default=True,
    help="With --queue: seconds to wait for the run's final state (0: print its id and return).",
)  # fmt: skip
def deployment_run(
    url: str | None, name: str, params: tuple[str, ...], at: str | None, queue: bool, timeout: float
) -> None:
    """Run deployment NAME now, in this process; print its flow run id and final state.

    With --queue, as Prefect's ``prefect deployment run``: the run is queued in
    the run store for a scheduling service, and its id printed.
    """
    overrides = parse_params(params)
    scheduled = parse_time(at, "--time") if at is not None else None
    if queue:
        if scheduled is not None:
            raise click.UsageError("--time and --queue do not go together: a queued run is for now.")
        with open_run_store(url) as store, _problems():
            run = run_deployment(name, parameters=overrides or None, timeout=timeout, poll_interval=0.5, store=store)
        click.echo(f"flow run {run.id}  {run.state_name}")
        if timeout and run.is_final and run.state_type != "COMPLETED":
            raise SystemExit(1)
        return
    with open_run_store(url) as store, _problems(), _history_at(url):
        state = run_deployment_here(name, scheduled, overrides or None, store=store)
    click.echo(_report(state))
    if not state.is_completed():
        raise SystemExit(1)


def _set_paused(url: str | None, name: str, paused: bool) -> None:
    with open_run_store(url) as store, _problems():
        found = Deployment.load(name, store)
        if paused:
            found.pause(store)
        else:
            found.resume(store)
    click.echo(f"Deployment {name!r} {'paused' if paused else 'resumed'}.")


@deployment.command("pause")
@url_option
@click.argument("name")
def deployment_pause(url: str | None, name: str) -> None:
    """Stop scheduling services from firing NAME (manual runs and backfills still work)."""
    _set_paused(url, name, True)


@deployment.command("resume")
@url_option
@click.argument("name")
def deployment_resume(url: str | None, name: str) -> None:
    """Let scheduling services fire NAME again."""
    _set_paused(url, name, False)


@deployment.command("delete")
@url_option
@click.argument("name")
def deployment_delete(url: str | None, name: str) -> None:
    """Delete deployment NAME and its claimed times (flow run history stays)."""
    with open_run_store(url) as store, _problems():
        Deployment.load(name, store).delete(store)
    click.echo(f"Deployment {name!r} deleted.")


@deployment.command("apply")
@url_option
@click.argument("file", type=click.Path(dir_okay=False))
def deployment_apply(url: str | None, file: str) -> None:
    """Create or update the deployments in a YAML FILE (all checked before any is stored)."""
    with open_run_store(url, create=True) as store, _problems():
        applied = apply_deployment_file(file, store)
        where = store.display_url
    for item in applied:
        click.echo(f"Applied {item.name!r} ({item.flow_name}, {describe_schedule(item.schedule)}) id {item.id}")
    click.echo(f"{count(len(applied), 'deployment', 'deployments')} applied to {where}")


@deployment.command("backfill")
@url_option
@click.argument("name")
@click.option(
    "--start", required=True, metavar="TIME", help="First time of the window (ISO; the schedule's zone if none)."
)
@click.option("--end", required=True, metavar="TIME", help="Last time of the window, included.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=4, show_default=True, help="Runs at once.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a parameter (repeatable).")
def deployment_backfill(
    url: str | None, name: str, start: str, end: str, max_concurrent: int, params: tuple[str, ...]
) -> None:
    """Run every scheduled time of NAME in [--start, --end]; times that already ran are skipped."""
    overrides = parse_params(params)
    with open_run_store(url) as store, _problems(), _history_at(url):
        found = Deployment.load(name, store)
        states = found.backfill(start, end, max_concurrent, overrides or None, store=store)
    for moment, state in zip(states.times, states, strict=True):
        click.echo(_report(state, moment))
    for moment in states.skipped:
        click.echo(f"{when(moment)} UTC  skipped: claimed already")
    failed = sum(1 for state in states if not state.is_completed())
    click.echo(
        f"{count(len(states), 'run', 'runs')}, {failed} not completed, "
        f"{count(len(states.skipped), 'time', 'times')} skipped as claimed already"
    )
    if failed:
        raise SystemExit(1)
