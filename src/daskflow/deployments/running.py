"""Running a deployment: claim a scheduled time, render its parameters, run the flow on its pool.

Every run of a deployment, whoever starts it, goes the same three steps:

1. **claim** the scheduled time in the run store
   (:func:`~daskflow.runstore.deployments.claim_run`): one row per
   (deployment, time), so a time runs at most once however many services,
   backfills and people ask for it; the loser of a race skips it;
2. **render** the deployment's parameters for that time (its templates and
   data interval, :mod:`.templates`), overrides included;
3. **run** the flow in this process with its task runs on the work pool's
   cluster (:mod:`.work_pools`), and record the flow run's id and final state
   type on the claim.

A manual run is for "now" unless given a time; a backfill runs every
scheduled time of a window, several at once on threads (each flow run waits on
its cluster, not on this process's CPU), at most ``max_concurrent`` at a time,
each claimed just before it starts so that a process that dies leaves few
claims without a state.

:func:`missed_times` is the catchup rule a scheduling service applies after
downtime: ``"all"`` runs every time it missed, ``"latest"`` only the most
recent one (the default: a daily ETL that was down at 06:00 still runs today,
once), ``"none"`` none of them (it waits for the next time on the schedule).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daskflow.context import ScheduledRunInfo, starting_scheduled_run
from daskflow.deployments.templates import render_parameters, template_times
from daskflow.deployments.work_pools import pool_runner, resolve_work_pool
from daskflow.exceptions import DeploymentError
from daskflow.flows import Flow
from daskflow.runs import DeploymentRef
from daskflow.runstore.deployments import claim_run, finish_run, list_runs
from daskflow.schedules import Schedule
from daskflow.states import State, StateType
from daskflow.task_runners import TaskRunner

if TYPE_CHECKING:
    from daskflow.deployments.deployment import Deployment
    from daskflow.runstore.store import RunStore

__all__ = ["CATCHUP", "BackfillStates", "missed_times", "run_backfill", "run_once"]

CATCHUP = ("none", "latest", "all")
_log = logging.getLogger("daskflow.deployments")


class BackfillStates(list[State]):
    """The final states of a backfill's runs, in scheduled-time order; ``times`` are their times.

    ``skipped`` lists the times of the window that were claimed already (by an
    earlier backfill, a service or a manual run) and so did not run again.
    """

    def __init__(self, runs: Sequence[tuple[datetime, State]], skipped: Sequence[datetime]) -> None:
        super().__init__(state for _, state in runs)
        self.times = [time for time, _ in runs]
        self.skipped = list(skipped)


def missed_times(schedule: Schedule, after: datetime, now: datetime, catchup: str) -> list[datetime]:
    """Which of the schedule's times in ``(after, now]`` to run after downtime, per ``catchup``."""
    if catchup not in CATCHUP:
        raise DeploymentError(f"catchup={catchup!r} is not one of {', '.join(CATCHUP)}.")
    if catchup == "none":
        return []
    times = [t for t in schedule.times_between(after, now) if t.timestamp() > after.timestamp()]
    return times if catchup == "all" else times[-1:]


def _call(flow: Flow[Any, Any], parameters: dict[str, Any]) -> State:
    outcome = flow(**parameters, return_state=True)
    if flow.isasync:
        outcome = asyncio.run(outcome)
    assert isinstance(outcome, State)
    return outcome


def _run_claimed(
    deployment: Deployment,
    flow: Flow[Any, Any],
    runner: TaskRunner | None,
    store: RunStore,
    scheduled_time: datetime,
    kind: str,
    overrides: Mapping[str, Any] | None,
    claimed_by: str | None,
) -> State | None:
    """Claim, render, run and record one scheduled time; None if it was claimed already."""
    assert deployment.id is not None
    parameters = {**deployment.parameters, **(overrides or {})}
    # Rendered before claiming: a bad template must not leave a claim that never ran.
    rendered = render_parameters(flow, parameters, template_times(deployment.schedule, scheduled_time))
    claim = claim_run(store, deployment.id, scheduled_time, kind, claimed_by)
    if claim is None:
        return None
    to_run = flow if runner is None else flow.with_options(task_runner=runner)
    # The run records its scheduled time and deployment, and takes the deployment's tags (daskflow.runtime).
    info = ScheduledRunInfo(scheduled_time, DeploymentRef(deployment.id, deployment.name, rendered), frozenset(deployment.tags))
    try:
        with starting_scheduled_run(info):
            state = _call(to_run, rendered)
    except BaseException:
        # The flow never got a final state (a call that does not fit its signature, Ctrl-C):
        # the claim says so rather than look forever in flight.
        finish_run(store, claim, None, StateType.CRASHED.value)
        raise
    run = getattr(state, "flow_run", None)
    finish_run(store, claim, getattr(run, "id", None), state.type.value)
    return state


def run_once(
    deployment: Deployment,
    store: RunStore,
    scheduled_time: datetime,
    kind: str,
    overrides: Mapping[str, Any] | None = None,
    claimed_by: str | None = None,
) -> State | None:
    """Run one scheduled time of ``deployment`` on its work pool; None if that time was claimed already."""
    assert deployment.id is not None
    # A time another service already took is skipped before the pool is opened (which may start
    # a cluster); the claim itself, atomic, still decides between two services that look at once.
    if list_runs(store, deployment.id, since=scheduled_time, until=scheduled_time, limit=1):
        return None
    flow = deployment.load_flow()
    pool = resolve_work_pool(deployment.work_pool)
    with pool_runner(pool) as runner:
        return _run_claimed(deployment, flow, runner, store, scheduled_time, kind, overrides, claimed_by)


def run_backfill(
    deployment: Deployment,
    store: RunStore,
    times: Sequence[datetime],
    max_concurrent: int,
    overrides: Mapping[str, Any] | None = None,
    claimed_by: str | None = None,
) -> BackfillStates:
    """Run each of ``times``, at most ``max_concurrent`` at once, on one opening of the work pool."""
    if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
        raise DeploymentError(f"max_concurrent={max_concurrent!r} must be a whole number >= 1.")
    flow = deployment.load_flow()
    pool = resolve_work_pool(deployment.work_pool)
    # Parameters are rendered for every time before anything runs: a template that fails
    # on one of them fails the backfill at once, not halfway through the window.
    for moment in times:
        parameters = {**deployment.parameters, **(overrides or {})}
        render_parameters(flow, parameters, template_times(deployment.schedule, moment))
    with pool_runner(pool) as runner, ThreadPoolExecutor(max_concurrent, "daskflow-backfill") as pool_threads:
        futures = [
            pool_threads.submit(
                _run_claimed, deployment, flow, runner, store, moment, "backfill", overrides, claimed_by
            )
            for moment in times
        ]
        outcomes = [future.result() for future in futures]
    ran = [(moment, state) for moment, state in zip(times, outcomes, strict=True) if state is not None]
    skipped = [moment for moment, state in zip(times, outcomes, strict=True) if state is None]
    for moment in skipped:
        _log.warning(
            "backfill of deployment %r: %s was claimed already (an earlier run); skipped",
            deployment.name, moment.isoformat(),
        )  # fmt: skip
    return BackfillStates(ran, skipped)
