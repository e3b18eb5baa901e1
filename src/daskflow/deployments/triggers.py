"""Firing deployment triggers: one queued run per (deployment, trigger, matching event), once in all.

A scheduling service (:class:`~.service.DeploymentService`) calls
:meth:`TriggerWatcher.fire` at every poll with the deployments it serves. The
watcher reads the events of a window of the run store (emitted ones and the
runs' state changes, :func:`daskflow.runstore.events.list_events`), and for
each event that a deployment's :class:`~daskflow.events.DeploymentEventTrigger`
matches it queues a run of the deployment
(:func:`~.queue.queue_deployment_run`) with the trigger's parameters rendered
from the event over the deployment's own.

**Exactly once, across services.** The queued flow run's id is a function of
(deployment, trigger, event): ``uuid5`` of the three. Of two services that see
the same event, both try to insert that flow run and the database's primary
key lets exactly one succeed; the other's duplicate-key error means "fired
already" and is dropped. From there the run is an ordinary queued run: one
service takes it (:func:`~daskflow.runstore.queued.take_queued`) and runs it
under a claim with a lease (:mod:`daskflow.runstore.leases`), so a service
that dies mid-run leaves it ``Crashed``, not running twice.

**The window.** The first poll looks back :data:`LOOKBACK` from the watcher's
start (an event emitted while the service was starting is not lost); later
polls from the previous poll minus :data:`LOOKBACK`, so an event written with
a slightly earlier timestamp than the poll that missed it (another machine's
clock, a transaction still open) is still seen. Events seen again in the
overlap cost a lookup in an in-memory set, not a second run. Events from
before the window (older than the service) are never fired: a trigger reacts
to what happens while a service watches, as Prefect's do.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from daskflow.deployments.deployment import Deployment
from daskflow.deployments.queue import queue_deployment_run
from daskflow.events import DeploymentEventTrigger, Event
from daskflow.exceptions import DaskflowError
from daskflow.runstore import events as event_rows
from daskflow.runstore.store import RunStore

__all__ = ["LOOKBACK", "MAX_EVENTS_PER_POLL", "TriggerWatcher", "triggered_run_id"]

LOOKBACK = timedelta(seconds=60)
MAX_EVENTS_PER_POLL = 10_000
_NAMESPACE = uuid.UUID("0b8f5d3c-2a41-4f5e-8c7d-91e2a6b4c3f0")
_log = logging.getLogger("daskflow.service")


def triggered_run_id(deployment_id: str, trigger: DeploymentEventTrigger, event_id: str) -> str:
    """The id of the one run that ``event`` fires of ``deployment`` through ``trigger``."""
    return str(uuid.uuid5(_NAMESPACE, f"{deployment_id}\n{trigger.key()}\n{event_id}"))


def _as_event(row: event_rows.EventRow) -> Event:
    return Event(
        id=row.id,
        occurred=row.occurred,
        event=row.event,
        resource={k: str(v) for k, v in row.resource.items()},
        payload=row.payload,
        related=[{k: str(v) for k, v in r.items()} for r in row.related],
    )


class TriggerWatcher:
    """The event window of one service, and the runs it has fired (or seen fired) in it."""

    def __init__(self, started: datetime, service: str) -> None:
        self.since = started - LOOKBACK
        self.service = service
        self._seen: dict[str, datetime] = {}  # run id -> its event's time, pruned as the window moves

    def fire(self, store: RunStore, deployments: Sequence[Deployment], now: datetime) -> list[str]:
        """Queue the runs the new events fire; return the ids of the runs this service queued."""
        watched = [d for d in deployments if d.triggers and not d.paused and d.id is not None]
        window = self.since
        self.since = max(window, now - LOOKBACK)
        self._seen = {run_id: at for run_id, at in self._seen.items() if at >= window}
        if not watched:
            return []
        # Runs' state changes are read (from the run history) only when a trigger could match one:
        # a busy store has many more of them than emitted events.
        states = any(t.wants_state_events for d in watched for t in d.triggers)
        rows = event_rows.list_events(store, since=window, limit=MAX_EVENTS_PER_POLL, states=states)
        if len(rows) >= MAX_EVENTS_PER_POLL:
            _log.warning(
                "%d events or more in the last %s s: triggers saw the newest %d only; poll more often (--poll)",
                MAX_EVENTS_PER_POLL, f"{(now - window).total_seconds():.0f}", MAX_EVENTS_PER_POLL,
            )  # fmt: skip
        queued: list[str] = []
        for row in reversed(rows):  # oldest first: runs are queued in the order their events happened
            event = _as_event(row)
            for deployment in watched:
                for trigger in deployment.triggers:
                    if trigger.matches(event):
                        run_id = self._fire_one(store, deployment, trigger, event)
                        if run_id is not None:
                            queued.append(run_id)
        return queued

    def _fire_one(
        self, store: RunStore, deployment: Deployment, trigger: DeploymentEventTrigger, event: Event
    ) -> str | None:
        assert deployment.id is not None
        run_id = triggered_run_id(deployment.id, trigger, event.id)
        if run_id in self._seen:
            return None
        self._seen[run_id] = event.occurred
        what = f"deployment {deployment.name!r}: event {event.event!r} ({event.id})"
        try:
            parameters = trigger.render_parameters(event)
            queue_deployment_run(deployment, store, parameters, flow_run_id=run_id)
        except sa.exc.IntegrityError:
            _log.debug("%s fired already (another service queued flow run %s)", what, run_id)
            return None
        except DaskflowError as exc:  # parameters the flow does not take: the trigger's to fix, logged once
            _log.error("%s matched a trigger, but its run could not be queued: %s", what, exc)
            return None
        _log.info("%s fired a run: flow run %s queued by %s", what, run_id, self.service)
        return run_id
