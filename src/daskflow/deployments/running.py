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

While the run is in flight its claim carries a **lease** that a heartbeat
thread renews every third of ``daskflow.deployments.lease`` (60 s), writing the
flow run's id on the claim as soon as the flow run exists. A process that dies
stops renewing, and a scheduling service then takes the run for crashed
(:mod:`daskflow.runstore.leases`). A scheduled run of a deployment that does
not allow concurrent runs claims *exclusively*: while another claim of the
deployment is in flight under a live lease, in whichever service, the time is
not claimed and :class:`~daskflow.runstore.errors.RunInFlightError` says which
run holds it.

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
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daskflow import settings
from daskflow.context import ScheduledRunInfo, starting_scheduled_run
from daskflow.deployments.templates import render_parameters, template_times
from daskflow.deployments.work_pools import pool_runner, resolve_work_pool
from daskflow.exceptions import DeploymentError
from daskflow.flows import Flow
from daskflow.runs import DeploymentRef, FlowRun, TaskRun, add_state_listener, remove_state_listener
from daskflow.runstore.deployments import RunInFlightError, claim_run, finish_run, list_runs
from daskflow.runstore.errors import RunStoreUnavailableError
from daskflow.runstore.leases import live_claims, renew_leases
from daskflow.schedules import Schedule
from daskflow.states import State, StateType
from daskflow.task_runners import TaskRunner

if TYPE_CHECKING:
    from daskflow.deployments.deployment import Deployment
    from daskflow.runstore.store import RunStore

__all__ = ["CATCHUP", "BackfillStates", "lease_seconds", "missed_times", "run_backfill", "run_once"]

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


def lease_seconds() -> float:
    """How long a claim's lease lasts without renewal: ``daskflow.deployments.lease`` in seconds."""
    import dask.utils

    value = dask.utils.parse_timedelta(settings.get("deployments.lease", "60s"), default="s")
    if value is None or value <= 0:
        raise DeploymentError(f"daskflow.deployments.lease={value!r} must be a duration > 0, e.g. '60s'.")
    return float(value)


class _Heartbeat:
    """Renews one claim's lease until the run ends; learns the flow run's id from its first state."""

    def __init__(self, store: RunStore, claim_id: str, lease: float) -> None:
        self.store, self.claim_id, self.lease = store, claim_id, lease
        self.flow_run_id: str | None = None
        self._caller = threading.get_ident()
        self._stop = threading.Event()
        self._news = threading.Event()  # the flow run's id is known: write it now, not at the next beat
        self._thread = threading.Thread(target=self._beat, name=f"daskflow-lease-{claim_id[:8]}", daemon=True)

    def on_state(self, run: TaskRun | FlowRun, state: State) -> None:
        # A state listener: quick, never raises. The first flow run of the claiming thread to change
        # state is ours (its subflows start later; it has a parent when queued as a subflow).
        if self.flow_run_id is None and isinstance(run, FlowRun) and threading.get_ident() == self._caller:
            self.flow_run_id = run.id
            self._news.set()

    def _beat(self) -> None:
        failing = False
        written: str | None = None
        while not self._stop.is_set():
            flow_run_id = self.flow_run_id
            try:
                lost = renew_leases(self.store, {self.claim_id: flow_run_id}, self.lease)
            except RunStoreUnavailableError as exc:
                if not failing:
                    _log.warning("the lease of claim %s could not be renewed: %s", self.claim_id, exc)
                failing = True
            else:
                failing = False
                written = flow_run_id
                if lost:
                    _log.error(
                        "claim %s (flow run %s) was taken for crashed by another service: its lease ran out "
                        "before this process renewed it. Its run goes on here; make daskflow.deployments.lease "
                        "longer if this process pauses or loses the run store for long.", self.claim_id, flow_run_id,
                    )  # fmt: skip
                    return
            if failing:
                wait = min(self.lease / 3, 1.0)  # try again soon: the lease runs out meanwhile
            else:
                wait = self.lease / 3 if written == self.flow_run_id else 0.0
            self._news.wait(wait)
            self._news.clear()

    @contextmanager
    def running(self) -> Iterator[None]:
        add_state_listener(self.on_state)
        self._thread.start()
        try:
            yield
        finally:
            remove_state_listener(self.on_state)
            self._stop.set()
            self._news.set()
            self._thread.join(30)


def _refuse_if_in_flight(store: RunStore, deployment: Deployment, scheduled_time: datetime) -> bool:
    """False when this very time is claimed already; raise RunInFlightError for another run in flight."""
    assert deployment.id is not None
    live = live_claims(store, deployment.id)
    if any(claim.scheduled_time == scheduled_time for claim in live):
        return False
    if live:
        claim = live[0]
        raise RunInFlightError(
            f"the run for {claim.scheduled_time.isoformat()} is in flight (claimed by {claim.claimed_by})", claim
        )
    return True


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
    exclusive: bool = False,
) -> State | None:
    """Claim, render, run and record one scheduled time; None if it was claimed already.

    ``exclusive``: raise :class:`RunInFlightError` instead of claiming while a run
    of the deployment is in flight.
    """
    assert deployment.id is not None
    parameters = {**deployment.parameters, **(overrides or {})}
    # Rendered before claiming: a bad template must not leave a claim that never ran.
    rendered = render_parameters(flow, parameters, template_times(deployment.schedule, scheduled_time))
    lease = lease_seconds()
    claim = claim_run(store, deployment.id, scheduled_time, kind, claimed_by, lease_seconds=lease, exclusive=exclusive)
    if claim is None:
        return None
    to_run = flow if runner is None else flow.with_options(task_runner=runner)
    # The run records its scheduled time and deployment, and takes the deployment's tags (daskflow.runtime).
    info = ScheduledRunInfo(
        scheduled_time, DeploymentRef(deployment.id, deployment.name, rendered), frozenset(deployment.tags)
    )
    try:
        with _Heartbeat(store, claim, lease).running(), starting_scheduled_run(info):
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
    exclusive: bool = False,
) -> State | None:
    """Run one scheduled time of ``deployment`` on its work pool; None if that time was claimed already.

    ``exclusive`` (a scheduling service, for a deployment that does not allow
    concurrent runs): raise :class:`RunInFlightError` while one of its runs is in flight.
    """
    assert deployment.id is not None
    # A time another service already took is skipped before the pool is opened (which may start
    # a cluster); the claim itself, atomic, still decides between two services that look at once.
    if list_runs(store, deployment.id, since=scheduled_time, until=scheduled_time, limit=1):
        return None
    if exclusive and not _refuse_if_in_flight(store, deployment, scheduled_time):
        return None
    flow = deployment.load_flow()
    pool = resolve_work_pool(deployment.work_pool)
    with pool_runner(pool) as runner:
        return _run_claimed(deployment, flow, runner, store, scheduled_time, kind, overrides, claimed_by, exclusive)


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
