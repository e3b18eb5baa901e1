"""``Deployment``: a flow, a schedule, default parameters and a work pool, kept in the run store.

A deployment is what lets a flow run without its author: another process (a
scheduling service, ``daskflow deployment run``, a backfill) finds everything
it needs in the run store. So a :class:`Deployment` holds only what can be
stored: the flow by entrypoint (:mod:`.entrypoints`), the schedule as its dict
form, parameters as JSON with per-run templates (:mod:`.templates`), tags, a
description, a work pool (:mod:`.work_pools`), a catchup setting
(:data:`~.running.CATCHUP`), a paused flag, and whether its runs may overlap
(``allow_concurrent_runs``, off by default: one run in flight at a time, across
every service on the store).

The seed's use works as written::

    Deployment.build_from_flow(daily_order_etl, name="daily-schedule",
                               schedule={"cron": "0 6 * * *", "timezone": "UTC"},
                               work_pool_name="default-agent-pool",
                               parameters={"execution_date": "{{ data_interval_end }}"}).apply()

``build_from_flow`` checks everything that can be checked without running
(the flow is importable, parameters fit its signature, templates are known);
``apply`` upserts by name and returns the id; :meth:`Deployment.load`,
:meth:`Deployment.list` and :meth:`Deployment.delete` read and remove them.
Running here is :func:`run_deployment_here` (or :meth:`Deployment.run`) and
:meth:`Deployment.backfill` (:mod:`.running`). Pausing stops a scheduling
service from firing the deployment; it does not stop manual runs or backfills,
which a person asked for explicitly.

Every method takes an optional ``store``; without one it opens the configured
run store (``daskflow.runstore.url``) for the call. That is also where flow runs
record their history, so keep the two the same for ``runs show`` to find them.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from daskflow.deployments.entrypoints import entrypoint_of, load_flow
from daskflow.deployments.running import CATCHUP, BackfillStates, run_backfill, run_once
from daskflow.deployments.templates import check_parameters
from daskflow.deployments.work_pools import WorkPool
from daskflow.event_triggers import DeploymentEventTrigger, EventError, as_triggers
from daskflow.exceptions import DeploymentError, DeploymentNotFoundError
from daskflow.flows import Flow
from daskflow.runstore import deployments as rows
from daskflow.runstore.store import RunStore
from daskflow.schedules import Schedule, schedule_from_dict
from daskflow.states import State

__all__ = ["DEFAULT_CATCHUP", "Deployment", "open_store", "run_deployment_here"]

DEFAULT_CATCHUP = "latest"


@contextmanager
def open_store(store: RunStore | None) -> Iterator[RunStore]:
    """``store`` itself, or the configured run store opened for the block."""
    if store is not None:
        yield store
        return
    own = RunStore()
    try:
        yield own
    finally:
        own.close()


def _as_schedule(schedule: Schedule | Mapping[str, Any] | None) -> Schedule | None:
    return None if schedule is None else schedule_from_dict(schedule)


def _as_pool(work_pool_name: str | None, work_pool: WorkPool | Mapping[str, Any] | None) -> WorkPool:
    if work_pool is not None and work_pool_name is not None:
        raise DeploymentError(f"give work_pool_name={work_pool_name!r} or work_pool=..., not both.")
    if isinstance(work_pool, WorkPool):
        return work_pool
    if work_pool is not None:
        return WorkPool.from_dict(work_pool)
    return WorkPool(work_pool_name)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise DeploymentError(f"a deployment needs a name, e.g. name='daily-schedule'; got {name!r}.")
    return name.strip()


def _check_catchup(catchup: str, where: str) -> str:
    if catchup not in CATCHUP:
        raise DeploymentError(
            f"{where}: catchup={catchup!r} is not one of {', '.join(CATCHUP)} (none: skip times missed "
            "while no service ran; latest: run the most recent one; all: run every one)."
        )
    return catchup


def _aware(moment: datetime | str, what: str, schedule: Schedule | None) -> datetime:
    """An aware datetime: ISO text parsed, a naive time read in the schedule's zone (else UTC)."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            raise DeploymentError(f"{what} {moment!r} is not an ISO date or time, e.g. 2024-01-01T06:00.") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=schedule.tzinfo if schedule is not None else UTC)
    return moment


@dataclass
class Deployment:
    """A flow, how and where it runs, by name; see the module docstring."""

    name: str
    entrypoint: str
    flow_name: str
    schedule: Schedule | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    description: str | None = None
    work_pool: WorkPool = field(default_factory=WorkPool)
    catchup: str = DEFAULT_CATCHUP
    paused: bool = False
    id: str | None = None  # set by apply() and load()
    # Runs of one deployment never overlap, across every service on the store, unless this is on.
    allow_concurrent_runs: bool = False
    flow: Flow[Any, Any] | None = field(default=None, repr=False, compare=False)  # imported on first need
    # Events that start a run each (a scheduling service fires them; daskflow.deployments.triggers).
    triggers: tuple[DeploymentEventTrigger, ...] = ()
    # Registered by flow.serve/serve(): the process serving it and until when (a lease it renews; None
    # once it stopped). Only that process fires its schedule; services still start its queued runs.
    served_by: str | None = None
    served_until: datetime | None = None

    def served(self, now: datetime) -> bool:
        """Whether the process that registered it with ``flow.serve`` serves it now."""
        return self.served_by is not None and self.served_until is not None and self.served_until > now

    @classmethod
    def build_from_flow(
        cls,
        flow: Flow[Any, Any],
        name: str,
        schedule: Schedule | Mapping[str, Any] | None = None,
        work_pool_name: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        *,
        tags: Sequence[str] = (),
        description: str | None = None,
        catchup: str = DEFAULT_CATCHUP,
        paused: bool = False,
        work_pool: WorkPool | Mapping[str, Any] | None = None,
        allow_concurrent_runs: bool = False,
        triggers: Sequence[DeploymentEventTrigger | Mapping[str, Any]] = (),
    ) -> Deployment:
        """A deployment of ``flow``, checked (not stored: call :meth:`apply`)."""
        entrypoint = entrypoint_of(flow)
        return cls.build(
            name, entrypoint, flow=flow, schedule=schedule, parameters=parameters, tags=tags,
            description=description, catchup=catchup, paused=paused,
            work_pool=_as_pool(work_pool_name, work_pool), allow_concurrent_runs=allow_concurrent_runs,
            triggers=triggers,
        )  # fmt: skip

    @classmethod
    def build(
        cls,
        name: str,
        entrypoint: str,
        *,
        flow: Flow[Any, Any] | None = None,
        schedule: Schedule | Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        description: str | None = None,
        catchup: str = DEFAULT_CATCHUP,
        paused: bool = False,
        work_pool: WorkPool | None = None,
        allow_concurrent_runs: bool = False,
        triggers: Sequence[DeploymentEventTrigger | Mapping[str, Any]] = (),
    ) -> Deployment:
        """A deployment of the flow at ``entrypoint`` (imported to check it), as a deployment file makes."""
        name = _check_name(name)
        try:
            checked_triggers = as_triggers(triggers, f"deployment {name!r}")
        except EventError as exc:
            raise DeploymentError(str(exc)) from None
        flow = flow if flow is not None else load_flow(entrypoint)
        resolved = _as_schedule(schedule)
        params = dict(parameters or {})
        check_parameters(name, flow, params, resolved)
        if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
            raise DeploymentError(f"deployment {name!r}: tags must be a list of strings, got {tags!r}.")
        if not isinstance(allow_concurrent_runs, bool):
            raise DeploymentError(
                f"deployment {name!r}: allow_concurrent_runs must be True or False, got {allow_concurrent_runs!r}."
            )
        return cls(
            name=name, entrypoint=entrypoint, flow_name=flow.name, schedule=resolved, parameters=params,
            tags=tuple(tags), description=description if description is not None else flow.description,
            work_pool=work_pool or WorkPool(), catchup=_check_catchup(catchup, f"deployment {name!r}"),
            paused=bool(paused), flow=flow, allow_concurrent_runs=allow_concurrent_runs,
            triggers=checked_triggers,
        )  # fmt: skip

    # -- the run store -----------------------------------------------------------------------

    def apply(self, store: RunStore | None = None) -> str:
        """Store this deployment, creating or updating it by name; return its id."""
        with open_store(store) as opened:
            self.id = rows.save_deployment(
                opened,
                name=self.name,
                flow_name=self.flow_name,
                entrypoint=self.entrypoint,
                schedule=None if self.schedule is None else self.schedule.to_dict(),
                parameters=self.parameters,
                tags=self.tags,
                description=self.description,
                work_pool=self.work_pool.to_dict() or None,
                catchup=self.catchup,
                paused=self.paused,
                allow_concurrent_runs=self.allow_concurrent_runs,
                triggers=[trigger.model_dump(mode="json") for trigger in self.triggers],
                served_by=self.served_by,
                served_until=self.served_until,
            )
        return self.id

    @classmethod
    def from_record(cls, record: rows.DeploymentRecord) -> Deployment:
        """A deployment as the run store holds it (its flow not imported yet)."""
        return cls(
            name=record.name, entrypoint=record.entrypoint, flow_name=record.flow_name,
            schedule=_as_schedule(record.schedule), parameters=dict(record.parameters), tags=record.tags,
            description=record.description, work_pool=WorkPool.from_dict(record.work_pool or {}),
            catchup=record.catchup, paused=record.paused, id=record.id,
            allow_concurrent_runs=record.allow_concurrent_runs,
            triggers=as_triggers(record.triggers, f"deployment {record.name!r}"),
            served_by=record.served_by, served_until=record.served_until,
        )  # fmt: skip

    @classmethod
    def load(cls, name: str, store: RunStore | None = None) -> Deployment:
        """The stored deployment ``name`` (or id); :class:`DeploymentNotFoundError` if there is none."""
        with open_store(store) as opened:
            record = rows.get_deployment(opened, name)
            if record is None:
                known = [r.name for r in rows.list_deployments(opened)]
                listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "") if known else "none"
                raise DeploymentNotFoundError(
                    f"no deployment named {name!r} in the run store at {opened.display_url} (deployments there: "
                    f"{listed}). Fix: apply it first (Deployment.build_from_flow(...).apply() or "
                    "`daskflow deployment apply FILE`), or check the name with `daskflow deployment ls`."
                )
        return cls.from_record(record)

    @classmethod
    def list(cls, store: RunStore | None = None) -> builtins.list[Deployment]:
        """Every stored deployment, by name."""
        with open_store(store) as opened:
            return [cls.from_record(record) for record in rows.list_deployments(opened)]

    def delete(self, store: RunStore | None = None) -> bool:
        """Remove this deployment (and its claimed times) from the run store; False if it was not there."""
        with open_store(store) as opened:
            return rows.delete_deployment(opened, self.name)

    def pause(self, store: RunStore | None = None) -> None:
        """Stop scheduling services from firing this deployment (manual runs and backfills still run)."""
        self._set_paused(True, store)

    def resume(self, store: RunStore | None = None) -> None:
        """Let scheduling services fire this deployment again."""
        self._set_paused(False, store)

    def _set_paused(self, paused: bool, store: RunStore | None) -> None:
        with open_store(store) as opened:
            if not rows.set_paused(opened, self.name, paused):
                raise DeploymentNotFoundError(f"no deployment named {self.name!r}: apply it first.")
        self.paused = paused

    # -- running --------------------------------------------------------------------------------

    def load_flow(self) -> Flow[Any, Any]:
        """The deployment's flow, imported from its entrypoint on first use."""
        if self.flow is None:
            self.flow = load_flow(self.entrypoint)
        return self.flow

    def next_run_times(self, n: int = 1, after: datetime | None = None) -> builtins.list[datetime]:
        """The schedule's next ``n`` times after ``after`` (default now); none without a schedule."""
        return [] if self.schedule is None else self.schedule.next_times(n, after)

    def upcoming_times(self, n: int = 1, now: datetime | None = None) -> builtins.list[datetime]:
        """The next ``n`` times something will fire it: none while paused or, for a deployment of
        ``flow.serve``, while no process serves it (its schedule fires only in that process)."""
        now = now or datetime.now(UTC)
        if self.paused or (self.served_by is not None and not self.served(now)):
            return []
        return self.next_run_times(n, now)

    def run(
        self,
        scheduled_time: datetime | str | None = None,
        parameters: Mapping[str, Any] | None = None,
        store: RunStore | None = None,
    ) -> State:
        """Run now, in this process (see :func:`run_deployment_here`); return the flow run's final state."""
        return run_deployment_here(self, scheduled_time, parameters, store=store)

    def backfill(
        self,
        start: datetime | str,
        end: datetime | str,
        max_concurrent: int = 4,
        parameters: Mapping[str, Any] | None = None,
        store: RunStore | None = None,
    ) -> BackfillStates:
        """Run every scheduled time in ``[start, end]``, each with its own templated parameters.

        At most ``max_concurrent`` run at once. Each time is claimed first: one
        claimed already (an earlier backfill, a service) is skipped, logged and
        listed in the result's ``skipped``. Returns the final states of the runs,
        in time order (their times in ``.times``). Naive times are read in the
        schedule's timezone.
        """
        if self.schedule is None:
            raise DeploymentError(f"deployment {self.name!r} has no schedule, so it has no times to backfill.")
        first = _aware(start, "backfill start", self.schedule)
        last = _aware(end, "backfill end", self.schedule)
        if last < first:
            raise DeploymentError(
                f"backfill of {self.name!r}: end {last.isoformat()} is before start {first.isoformat()}."
            )
        times = list(self.schedule.times_between(first, last))
        with open_store(store) as opened:
            self._ensure_id(opened)
            return run_backfill(self, opened, times, max_concurrent, parameters)

    def _ensure_id(self, store: RunStore) -> None:
        if self.id is None:  # built but not applied: its runs need a stored deployment to claim against
            stored = rows.get_deployment(store, self.name)
            if stored is None:
                raise DeploymentNotFoundError(f"deployment {self.name!r} is not in the run store: apply() it first.")
            self.id = stored.id


def run_deployment_here(
    name_or_deployment: str | Deployment,
    scheduled_time: datetime | str | None = None,
    parameters: Mapping[str, Any] | None = None,
    kind: str = "manual",
    *,
    store: RunStore | None = None,
    claimed_by: str | None = None,
) -> State:
    """Run a deployment once, in this process, on its work pool; return the flow run's final state.

    (Prefect's ``run_deployment``, which queues the run for a scheduling
    service instead, is :func:`daskflow.deployments.flow_api.run_deployment`.)

    ``scheduled_time`` (default: now) is the time the run is for: its templates
    are rendered for it, and it is claimed in the run store, so asking for a
    time that already ran is an error rather than a second run. ``parameters``
    override the deployment's (and may hold templates too). ``kind`` is what the
    claim records: "manual", "scheduled" (a service) or "backfill".
    """
    with open_store(store) as opened:
        if isinstance(name_or_deployment, Deployment):
            deployment = name_or_deployment
            deployment._ensure_id(opened)
        else:
            deployment = Deployment.load(name_or_deployment, opened)
        moment = (
            datetime.now(UTC)
            if scheduled_time is None
            else _aware(scheduled_time, "scheduled_time", deployment.schedule)
        )
        if parameters:
            # Overrides are checked like the deployment's own: a typo fails here, before any claim.
            merged = {**deployment.parameters, **parameters}
            check_parameters(deployment.name, deployment.load_flow(), merged, None)
        state = run_once(deployment, opened, moment, kind, parameters, claimed_by)
        if state is None:
            taken = rows.list_runs(opened, deployment.id or "", since=moment, until=moment)
            who = f" by {taken[0].claimed_by} ({taken[0].kind}, flow run {taken[0].flow_run_id})" if taken else ""
            raise DeploymentError(
                f"deployment {deployment.name!r} already ran for {moment.isoformat()}{who}. Fix: run it for "
                "another time, or leave the time out to run it now."
            )
        return state
