"""Events (Prefect's ``prefect.events``): ``emit_event`` records that something happened to a resource.

::

    from daskflow.events import emit_event

    emit_event(
        event="warehouse.table.refreshed",
        resource={"prefect.resource.id": "warehouse.table.sales"},
        payload={"rows": 1200},
    )

An event has a name, the resource it is about (a dict of labels whose
``prefect.resource.id`` — or ``daskflow.resource.id`` — names it), an optional
JSON payload and related resources. It is kept in the run store's ``events``
table with the flow run and task run it was emitted in, when run history is on
(``daskflow.runstore.enabled``); otherwise it is returned and not kept, as
Prefect returns it without a server to send it to. Flow and task runs'
state changes are events too: ``daskflow events ls`` reads them from the run
history as ``daskflow.flow-run.<State>`` / ``daskflow.task-run.<State>``,
without writing them twice.

**Deployment triggers.** :class:`DeploymentEventTrigger` (Prefect's, with its
fields) says which events start a run of a deployment: ``expect`` names the
events (any of them; a trailing ``*`` is a wildcard), ``match`` the labels the
event's resource must have and ``match_related`` those of one of its related
resources (each label's value a string or a list of alternatives, with a
trailing ``*`` wildcard and a leading ``!`` for "not"). ``prefect.`` and
``daskflow.`` name the same thing in event names and labels, so
``expect={"prefect.flow-run.Completed"}`` matches daskflow's state events.
``parameters`` may use ``{{ event.payload.x }}``, ``{{ event.resource.id }}``,
``{{ event.resource['label'] }}``, ``{{ event.event }}``, ``{{ event.id }}``,
``{{ event.occurred }}``: a value that is a single template keeps the value's
type. With ``threshold=1`` (the default), no ``within`` and no ``after``,
each matching event fires the deployment once; otherwise the trigger counts as
Prefect's do: ``threshold`` events within ``within`` seconds, per ``for_each``
key, armed by an ``after`` event, or (``posture="Proactive"``) fewer than
``threshold`` within the window. A scheduling service does the firing and
keeps the counts in the run store (:mod:`daskflow.deployments.triggers`).
State-change events carry Prefect's related resources (the run's flow,
deployment, work pool, tags; a task run's flow run), so ``match_related``
selects runs by flow, deployment or tag. The trigger model is in
:mod:`daskflow.event_triggers` (no I/O, so ``daskflow.flows`` can take
triggers without importing the run store); it is re-exported here, where
Prefect code imports it from.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pydantic

from daskflow import settings
from daskflow.context import get_flow_run_context, get_task_run_context
from daskflow.event_triggers import DeploymentEventTrigger, DeploymentTrigger, EventError, as_triggers
from daskflow.runstore import events as rows
from daskflow.runstore.store import RunStore

__all__ = [
    "DeploymentEventTrigger",
    "DeploymentTrigger",
    "Event",
    "EventError",
    "as_triggers",
    "emit_event",
    "list_events",
]

_ID_KEYS = ("prefect.resource.id", "daskflow.resource.id")


class Event(pydantic.BaseModel):
    """One event: ``event`` happened to ``resource`` at ``occurred``."""

    id: str = pydantic.Field(default_factory=lambda: str(uuid.uuid4()))
    occurred: datetime = pydantic.Field(default_factory=lambda: datetime.now(UTC))
    event: str
    resource: dict[str, str]
    payload: dict[str, Any] = pydantic.Field(default_factory=dict)
    related: list[dict[str, str]] = pydantic.Field(default_factory=list)

    @property
    def resource_id(self) -> str:
        return next((self.resource[key] for key in _ID_KEYS if key in self.resource), "")


def _labels(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not any(key in value for key in _ID_KEYS):
        raise EventError(
            f"emit_event(): {what} must be a dict of labels with a 'prefect.resource.id' (or 'daskflow.resource.id'), "
            f"got {value!r}. Fix: e.g. resource={{'prefect.resource.id': 'warehouse.table.sales'}}."
        )
    return {str(k): str(v) for k, v in value.items()}


def emit_event(
    event: str,
    resource: Mapping[str, str],
    occurred: datetime | None = None,
    related: Sequence[Mapping[str, str]] | None = None,
    payload: Mapping[str, Any] | None = None,
    id: str | None = None,
    *,
    url: str | None = None,
) -> Event:
    """Record ``event`` about ``resource`` (in the run store when history is on); returns the Event."""
    if not isinstance(event, str) or not event.strip():
        raise EventError(
            f"emit_event(): the event's name must be a non-empty string such as 'table.refreshed', got {event!r}"
        )
    labels = _labels(resource, "resource")
    related_labels = [_labels(r, "each related resource") for r in (related or ())]
    payload_dict = dict(payload or {})
    try:
        json.dumps(payload_dict, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EventError(
            f"emit_event({event!r}): the payload must be JSON: {exc}. Fix: convert its values first."
        ) from None
    made = Event(
        id=id or str(uuid.uuid4()),
        occurred=occurred or datetime.now(UTC),
        event=event,
        resource=labels,
        payload=payload_dict,
        related=related_labels,
    )
    if settings.get("runstore.enabled", True) or url is not None:
        flow_run_id, task_run_id = _run_ids()
        row = rows.EventRow(
            id=made.id,
            occurred=made.occurred,
            event=made.event,
            resource=made.resource,
            payload=made.payload,
            related=made.related,
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
        )
        with RunStore(url) as store:
            rows.write_event(store, row)
    return made


def _run_ids() -> tuple[str | None, str | None]:
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        return task_ctx.flow_run_id, task_ctx.task_run.id
    flow_ctx = get_flow_run_context()
    return (flow_ctx.flow_run.id if flow_ctx is not None else None), None


def list_events(
    *,
    prefix: str | None = None,
    resource_id: str | None = None,
    limit: int = 50,
    states: bool = True,
    url: str | None = None,
) -> list[Event]:
    """Events from the run store, newest first: emitted ones and (with ``states``) the runs' state changes."""
    with RunStore(url) as store:
        found = rows.list_events(store, prefix=prefix, resource_id=resource_id, limit=limit, states=states)
    return [
        Event(
            id=r.id,
            occurred=r.occurred,
            event=r.event,
            resource={k: str(v) for k, v in r.resource.items()},
            payload=r.payload,
            related=r.related,
        )
        for r in found
    ]
