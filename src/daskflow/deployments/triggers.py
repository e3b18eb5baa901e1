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

**Triggers that count** (``threshold`` above 1 with ``within``, ``after``,
``for_each`` windows, ``posture="Proactive"``) fire on what several events
did or did not do, so they keep state: Prefect's buckets, counted by
:func:`daskflow.event_triggers.count_events`. It lives in the run store, one
row per (deployment, trigger) (:func:`~daskflow.runstore.events.locked_trigger_state`),
read, counted into and written back under a lock: services over one store
take turns, each event is counted once (its id is kept while it can still be
read again), and a restarted service goes on from where the store is. A
firing gets an id from the trigger's definition and what fired it (the
event's id; a Proactive window's key and end) and is written into the state
as *pending* in the same transaction; it is queued after the commit, and again
at the next poll by any service until its flow run exists, the duplicate key
dropping a second insert: a crash between the two steps loses no firing and
queues none twice.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from daskflow.deployments.deployment import Deployment
from daskflow.deployments.queue import queue_deployment_run
from daskflow.event_triggers import count_events
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
    """The id of the one run that ``event`` fires of ``deployment`` through ``trigger``.

    For a trigger that counts, ``event_id`` is the firing's discriminator (``event:<id>`` or a window).
    """
    return str(uuid.uuid5(_NAMESPACE, f"{deployment_id}\n{trigger.key()}\n{event_id}"))


def trigger_key(trigger: DeploymentEventTrigger) -> str:
    """The key of a trigger's stored state: a digest of its definition (an edited trigger starts afresh)."""
    return hashlib.sha256(trigger.key().encode()).hexdigest()


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
        self._unqueueable: set[str] = set()  # firings whose parameters the flow refused (logged once)

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
        events = [_as_event(row) for row in reversed(rows)]  # oldest first: runs queue in the events' order
        for event in events:
            for deployment in watched:
                for trigger in deployment.triggers:
                    if not trigger.counts and trigger.matches(event):
                        run_id = self._fire_one(store, deployment, trigger, event)
                        if run_id is not None:
                            queued.append(run_id)
        for deployment in watched:
            for trigger in deployment.triggers:
                if trigger.counts and trigger.enabled:
                    queued.extend(self._count(store, deployment, trigger, events, now))
        return queued

    def _count(
        self,
        store: RunStore,
        deployment: Deployment,
        trigger: DeploymentEventTrigger,
        events: list[Event],
        now: datetime,
    ) -> list[str]:
        """Count the events into a counting trigger's stored state; queue what fired (and is still pending)."""
        assert deployment.id is not None
        horizon = now - LOOKBACK
        key = trigger_key(trigger)
        events = [e for e in events if trigger.covers(e)]
        if not events and trigger.posture == "Reactive":
            # Nothing to count: the lock (SQLite's whole-file write lock) is taken only for a firing left
            # pending by a service that died between writing it and queueing its run.
            stored = event_rows.read_trigger_state(store, deployment.id, key)
            if not (stored or {}).get("pending"):
                return []
        try:
            with event_rows.locked_trigger_state(store, deployment.id, key) as row:
                pending: list[dict[str, Any]] = row.state.get("pending", [])
                done = row.existing_flow_runs([p["run_id"] for p in pending])
                # A firing whose run is not queued a window later never will be (its parameters were refused).
                stale = [p for p in pending if datetime.fromisoformat(p["fired"]) < horizon]
                for gone in stale:
                    if gone["run_id"] not in done:
                        _log.error("deployment %r: flow run %s fired by a trigger was never queued; dropped",
                                   deployment.name, gone["run_id"])  # fmt: skip
                pending = [p for p in pending if p["run_id"] not in done and p not in stale]
                for fired in count_events(trigger, row.state, events, now, horizon):
                    run_id = triggered_run_id(deployment.id, trigger, fired.discriminator)
                    pending.append({"run_id": run_id, "fired": now.isoformat(), "event": fired.event,
                                    "key": list(fired.key), "why": fired.discriminator})  # fmt: skip
                row.state["pending"] = pending
        except sa.exc.IntegrityError:  # another service wrote this trigger's first state at the same time
            _log.debug("deployment %r: a trigger's state was created by another service; counted at next poll",
                       deployment.name)  # fmt: skip
            return []
        queued = []
        for firing in pending:
            event = Event.model_validate(firing["event"]) if firing["event"] is not None else None
            what = f"deployment {deployment.name!r}: trigger fired ({firing['why']}, key {firing['key']})"
            made = self._queue(store, deployment, trigger, event, firing["run_id"], what)
            if made is not None:
                queued.append(made)
        return queued

    def _fire_one(
        self, store: RunStore, deployment: Deployment, trigger: DeploymentEventTrigger, event: Event
    ) -> str | None:
        assert deployment.id is not None
        run_id = triggered_run_id(deployment.id, trigger, event.id)
        if run_id in self._seen:
            return None
        self._seen[run_id] = event.occurred
        return self._queue(store, deployment, trigger, event, run_id, f"deployment {deployment.name!r}: event "
                           f"{event.event!r} ({event.id})")  # fmt: skip

    def _queue(
        self,
        store: RunStore,
        deployment: Deployment,
        trigger: DeploymentEventTrigger,
        event: Event | None,
        run_id: str,
        what: str,
    ) -> str | None:
        if run_id in self._unqueueable:
            return None
        try:
            parameters = trigger.render_parameters(event)
            queue_deployment_run(deployment, store, parameters, flow_run_id=run_id)
        except sa.exc.IntegrityError:
            _log.debug("%s fired already (another service queued flow run %s)", what, run_id)
            return None
        except DaskflowError as exc:  # parameters the flow does not take: the trigger's to fix, logged once
            self._unqueueable.add(run_id)
            _log.error("%s matched a trigger, but its run could not be queued: %s", what, exc)
            return None
        _log.info("%s fired a run: flow run %s queued by %s", what, run_id, self.service)
        return run_id
