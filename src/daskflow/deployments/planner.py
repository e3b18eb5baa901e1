"""Which scheduled times of which deployments are due: the bookkeeping of the scheduling service.

The service (:mod:`.service`) owns the threads, the run store and the clock;
this module owns only time. A :class:`Planner` holds one
:class:`DeploymentPlan` per deployment in the run store, rebuilt from the
deployment list each time the service polls it (:meth:`Planner.refresh`), and
answers three questions at a given "now": which times have come due
(:meth:`Planner.advance`), which of them may start (:meth:`Planner.startable`),
and when something next comes due (:meth:`Planner.next_due`). It does no I/O
except through the ``last_claimed`` function it is given, so a day of
schedules can be planned on a fake clock as fast as it can be counted.

A plan keeps the schedule's next time not yet due (``next_time``) and a queue
of due times waiting to start (``pending``). The rules, all per deployment:

* **first sight** (the service starts, or a deployment is applied while it
  runs): the times missed since the last time claimed for it by a schedule
  (else since it was created) are queued per its catchup setting
  (:func:`~.running.missed_times`), and ``next_time`` is the first time after now;
* **one run at a time**: queued times start one after another. A time that
  comes due while a run of the deployment is still in flight is skipped with
  a warning, as ``flow.serve`` does: running it late, behind a slow run, would
  pile runs up and hand each of them stale data. Queued catch-up times are not
  skipped: the catchup setting asked for them. A deployment that allows
  concurrent runs (``allow_concurrent_runs``) starts each time as it comes due;
* **a changed schedule** drops the queue (those were the old schedule's times)
  and moves ``next_time`` to the new schedule's first time after now;
  **pausing** drops the queue and stops the clock; **resuming** starts again
  from now: times that passed while paused are not caught up, pausing means
  "do not run these"; other changes (parameters, work pool) apply to the next
  run; a **deleted** deployment's plan goes (its run in flight finishes).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from daskflow.deployments.deployment import Deployment
from daskflow.deployments.running import missed_times
from daskflow.runstore.deployments import DeploymentRecord
from daskflow.schedules import Schedule

__all__ = ["DeploymentPlan", "Planner"]

_log = logging.getLogger("daskflow.service")
_SHOWN = 5  # times named in a warning about skipped times; the rest are counted

LastClaimed = Callable[[str], "datetime | None"]


@dataclass(eq=False)
class DeploymentPlan:
    """One deployment's place in time; see the module docstring."""

    record: DeploymentRecord
    deployment: Deployment
    next_time: datetime | None = None
    pending: deque[datetime] = field(default_factory=deque)
    running: datetime | None = None  # the scheduled time of its run in flight, if any

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def schedule(self) -> Schedule | None:
        return self.deployment.schedule

    @property
    def active(self) -> bool:
        """Whether this deployment's schedule fires: it has one, and it is not paused."""
        # A deployment served by flow.serve has its schedule fired by that process's own threads.
        return self.schedule is not None and not self.record.paused and self.record.served_by is None

    def first_after(self, moment: datetime) -> datetime | None:
        ahead = self.schedule.next_times(1, start=moment) if self.schedule is not None else []
        return ahead[0] if ahead else None


class Planner:
    """The plans of every deployment; see the module docstring."""

    def __init__(self, last_claimed: LastClaimed) -> None:
        self._last_claimed = last_claimed
        self.plans: dict[str, DeploymentPlan] = {}

    def refresh(self, records: Iterable[DeploymentRecord], now: datetime) -> None:
        """Bring the plans in line with the deployments as the run store now lists them."""
        seen: set[str] = set()
        for record in records:
            seen.add(record.id)
            plan = self.plans.get(record.id)
            if plan is None:
                self.plans[record.id] = self._first_sight(record, now)
            elif record != plan.record:  # `updated` moves on every save, pause and resume
                self._changed(plan, record, now)
        for gone in [deployment_id for deployment_id in self.plans if deployment_id not in seen]:
            plan = self.plans.pop(gone)
            _log.info("deployment %r was deleted: no longer scheduled", plan.name)

    def _first_sight(self, record: DeploymentRecord, now: datetime) -> DeploymentPlan:
        plan = DeploymentPlan(record, Deployment.from_record(record))
        if not plan.active:
            return plan
        assert plan.schedule is not None
        # The last time a schedule claimed (this service's or another's, or a backfill):
        # the catchup window starts there, else at the deployment's creation.
        after = self._last_claimed(record.id) or record.created
        missed = missed_times(plan.schedule, after, now, record.catchup)
        plan.pending.extend(missed)
        plan.next_time = plan.first_after(now)
        if missed:
            _log.info(
                "deployment %r: catching up %d missed time(s) (catchup=%r): %s",
                plan.name, len(missed), record.catchup, _listed(missed),
            )  # fmt: skip
        return plan

    def _changed(self, plan: DeploymentPlan, record: DeploymentRecord, now: datetime) -> None:
        was_active, old_schedule = plan.active, plan.record.schedule
        plan.record, plan.deployment = record, Deployment.from_record(record)
        if not plan.active:
            if was_active:
                plan.pending.clear()
                plan.next_time = None
                _log.info("deployment %r is paused (or has no schedule): not firing it", plan.name)
            return
        if not was_active or record.schedule != old_schedule:
            plan.pending.clear()  # the old schedule's times (or a paused one's): not this schedule's to run
            plan.next_time = plan.first_after(now)
            what = "resumed" if not was_active else "has a new schedule"
            _log.info("deployment %r %s: next at %s", plan.name, what, _when(plan.next_time))

    def advance(self, now: datetime) -> None:
        """Queue the times that came due by ``now``; skip (and warn of) those that met a run in flight."""
        for plan in self.plans.values():
            if not plan.active:
                continue
            skipped: list[datetime] = []
            while plan.next_time is not None and plan.next_time <= now:
                if plan.running is not None and not plan.record.allow_concurrent_runs:
                    skipped.append(plan.next_time)
                else:
                    plan.pending.append(plan.next_time)
                plan.next_time = plan.first_after(plan.next_time)
            if skipped:
                _log.warning(
                    "deployment %r: its run for %s was still in flight at %d scheduled time(s), skipped: %s. "
                    "Runs of one deployment never overlap; the next is at %s. If runs often take longer "
                    "than the interval, make the schedule sparser.",
                    plan.name, _when(plan.running), len(skipped), _listed(skipped), _when(plan.next_time),
                )  # fmt: skip

    def startable(self) -> list[tuple[DeploymentPlan, datetime]]:
        """The first queued time of each deployment with no run in flight, earliest first."""
        ready = [
            (plan, plan.pending[0])
            for plan in self.plans.values()
            if plan.pending and (plan.running is None or plan.record.allow_concurrent_runs)
        ]
        return sorted(ready, key=lambda item: (item[1], item[0].name))

    def next_due(self) -> datetime | None:
        """The earliest time still ahead of any active deployment; None when nothing is scheduled."""
        times = [plan.next_time for plan in self.plans.values() if plan.active and plan.next_time is not None]
        return min(times) if times else None


def _when(moment: datetime | None) -> str:
    return "(none: the schedule ends)" if moment is None else moment.isoformat()


def _listed(times: list[datetime]) -> str:
    shown = ", ".join(t.isoformat() for t in times[:_SHOWN])
    return shown + (f" and {len(times) - _SHOWN} more" if len(times) > _SHOWN else "")
