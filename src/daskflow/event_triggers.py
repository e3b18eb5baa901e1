"""Deployment triggers' model: which events start a run, and the run's parameters from the event.

:class:`DeploymentEventTrigger` is Prefect's (``prefect.events.DeploymentEventTrigger``),
re-exported by :mod:`daskflow.events`; its semantics are described there. This
module is pure (no run store, no I/O): ``flow.serve(triggers=...)`` and
``flow.deploy(triggers=...)`` check triggers at definition through it, and the
scheduling service matches stored events against them
(:mod:`daskflow.deployments.triggers`). An event is anything with the
attributes of :class:`daskflow.events.Event` (:class:`EventLike`).

Matching: ``expect`` (any of the names; a trailing ``*`` is a wildcard),
``match`` on the event's resource labels and ``match_related`` on its related
resources (each spec met by one of them); a label's value is a string or a
list of alternatives, each with an optional trailing ``*`` and leading ``!``
(not). ``prefect.`` and ``daskflow.`` are one namespace in names and labels.

Counting (:func:`count_events`), for triggers that fire on more than one event
(:attr:`DeploymentEventTrigger.counts`), follows Prefect's trigger service:
each ``for_each`` key has a *bucket*, a window ``[start, start + within)`` with
a count. The first expected event of a key opens one (or an ``after`` event
arms it); events in the window add to it. A Reactive trigger fires as soon as
the count reaches ``threshold`` and the next window starts where the fired one
ends; a Proactive one fires when its window has ended with fewer than
``threshold``. A trigger with ``after`` is disarmed after each window; one
without starts the next window at once. The state is a JSON object that the
caller stores (the run store, under a lock: :mod:`daskflow.deployments.triggers`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import pydantic

from daskflow.exceptions import DaskflowError

__all__ = [
    "DeploymentEventTrigger",
    "DeploymentTrigger",
    "EventError",
    "EventLike",
    "Firing",
    "as_triggers",
    "count_events",
    "event_json",
]


class EventError(DaskflowError, ValueError):
    """An event's name, resource or payload (or a trigger on events) is not acceptable."""


class EventLike(Protocol):
    """What a trigger reads of an event (:class:`daskflow.events.Event` has it)."""

    id: str
    occurred: datetime
    event: str
    resource: dict[str, str]
    payload: dict[str, Any]
    related: list[dict[str, str]]


LabelValue = str | list[str]
# {{ event.a.b }} or {{ event.resource['some.label'] }}: a path into the event.
_TEMPLATE = re.compile(r"\{\{\s*(?P<path>event(?:\.[A-Za-z_][\w-]*|\[\s*(?P<q>['\"])[^'\"]*(?P=q)\s*\])*)\s*\}\}")
_STEP = re.compile(r"\.(?P<attr>[A-Za-z_][\w-]*)|\[\s*['\"](?P<key>[^'\"]*)['\"]\s*\]")


def _canonical(text: str) -> str:
    """``prefect.`` and ``daskflow.`` name one namespace: Prefect code's names match daskflow's events."""
    return "daskflow." + text[len("prefect.") :] if text.startswith("prefect.") else text


def _matches_pattern(value: str | None, pattern: str) -> bool:
    negated = pattern.startswith("!")
    pattern = _canonical(pattern[1:] if negated else pattern)
    if value is None:
        return negated
    value = _canonical(value)
    hit = value.startswith(pattern[:-1]) if pattern.endswith("*") else value == pattern
    return hit != negated


def _labels_match(labels: Mapping[str, str], spec: Mapping[str, LabelValue]) -> bool:
    canonical = {_canonical(k): v for k, v in labels.items()}
    for key, wanted in spec.items():
        alternatives = [wanted] if isinstance(wanted, str) else list(wanted)
        value = canonical.get(_canonical(key))
        positive = [p for p in alternatives if not p.startswith("!")]
        negative = [p for p in alternatives if p.startswith("!")]
        if positive and not any(_matches_pattern(value, p) for p in positive):
            return False
        if not all(_matches_pattern(value, p) for p in negative):
            return False
    return True


class DeploymentEventTrigger(pydantic.BaseModel):
    """Run a deployment once per event that matches (Prefect's ``DeploymentEventTrigger``); see the module."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str | None = None
    description: str = ""
    enabled: bool = True
    parameters: dict[str, Any] | None = None
    job_variables: dict[str, Any] | None = None
    match: dict[str, LabelValue] = pydantic.Field(default_factory=dict)
    match_related: dict[str, LabelValue] | list[dict[str, LabelValue]] = pydantic.Field(default_factory=dict)
    after: set[str] = pydantic.Field(default_factory=set)
    expect: set[str] = pydantic.Field(default_factory=set)
    for_each: set[str] = pydantic.Field(default_factory=set)
    posture: Literal["Reactive", "Proactive"] = "Reactive"
    threshold: int = 1
    within: timedelta = timedelta(0)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _proactive_window(cls, data: Any) -> Any:
        # As Prefect: a Proactive trigger without `within` waits 10 s for its events.
        if isinstance(data, dict) and data.get("posture") == "Proactive" and not data.get("within"):
            data = {**data, "within": timedelta(seconds=10)}
        return data

    @pydantic.model_validator(mode="after")
    def _supported(self) -> DeploymentEventTrigger:
        where = f"DeploymentEventTrigger({self.name or ', '.join(sorted(self.expect)) or 'any event'})"
        if self.threshold < 1:
            raise ValueError(
                f"{where}: threshold={self.threshold} must be 1 or more (how many events fire it, or, Proactive, "
                "how many are expected). Fix: e.g. threshold=1."
            )
        if self.within < timedelta(0):
            raise ValueError(f"{where}: within={self.within} is negative. Fix: give a number of seconds >= 0.")
        if self.posture == "Reactive" and self.threshold > 1 and not self.within:
            raise ValueError(
                f"{where}: threshold={self.threshold} counts events over a time window, and within= is 0. "
                f"Fix: give within=<seconds> the {self.threshold} events must occur in, e.g. within=60."
            )
        for label in self.for_each:
            if label.startswith("related:") and label.count(":") < 2:
                raise ValueError(
                    f"{where}: for_each label {label!r} names no label. Fix: 'related:<role>:<label>', "
                    "e.g. 'related:flow:prefect.resource.id'."
                )
        if self.job_variables:
            raise ValueError(
                f"{where}: job_variables are not supported (work pools are Dask clusters, set in dask config "
                "daskflow.work_pools). Fix: leave them out."
            )
        for value in (self.parameters or {}).values():
            _check_templates(value, where)
        return self

    @property
    def related_specs(self) -> list[dict[str, LabelValue]]:
        if isinstance(self.match_related, dict):
            return [self.match_related] if self.match_related else []
        return [spec for spec in self.match_related if spec]

    def matches(self, event: EventLike) -> bool:
        """Whether ``event`` fires this trigger on its own (for a trigger that does not count, :attr:`counts`)."""
        return self.covers(event) and self.expects(event.event)

    def covers(self, event: EventLike) -> bool:
        """Whether this trigger looks at ``event``: its resources match and it is expected or arms (``after``)."""
        if not self.enabled:
            return False
        if not (self.expects(event.event) or self.starts_after(event.event)):
            return False
        if not _labels_match(event.resource, self.match):
            return False
        # Each related spec must be met by one of the event's related resources.
        return all(any(_labels_match(r, spec) for r in event.related) for spec in self.related_specs)

    def expects(self, name: str) -> bool:
        """Whether an event called ``name`` is one this trigger counts (any, when ``expect`` is empty)."""
        return not self.expect or any(_matches_pattern(name, pattern) for pattern in self.expect)

    def starts_after(self, name: str) -> bool:
        """Whether an event called ``name`` arms this trigger (one of ``after``)."""
        return any(_matches_pattern(name, pattern) for pattern in self.after)

    @property
    def counts(self) -> bool:
        """Whether firing depends on more than one event (threshold, within, after, Proactive): it keeps state."""
        return self.posture == "Proactive" or self.threshold > 1 or bool(self.within) or bool(self.after)

    def bucketing_key(self, event: EventLike) -> tuple[str, ...]:
        """The values of the ``for_each`` labels on ``event`` (sorted by label): one count per distinct key."""
        return tuple(_find_label(event, label) or "" for label in sorted(self.for_each))

    def render_parameters(self, event: EventLike | None) -> dict[str, Any]:
        """The trigger's parameters with their ``{{ event... }}`` templates filled from ``event``.

        A Proactive trigger fires for events that did not happen: with no event to read, a template is None.
        """
        return {name: _render(value, event) for name, value in (self.parameters or {}).items()}

    @property
    def wants_state_events(self) -> bool:
        """Whether a run's state change (``daskflow.flow-run.*``/``task-run.*``) could match ``expect``."""
        if not self.expect:
            return True
        prefixes = ("daskflow.flow-run.", "daskflow.task-run.")
        for pattern in self.expect | self.after:
            if pattern.startswith("!"):
                return True
            text = _canonical(pattern)
            stem = text[:-1] if text.endswith("*") else text
            if any(p.startswith(stem) if text.endswith("*") else text.startswith(p) for p in prefixes):
                return True
        return False

    def key(self) -> str:
        """A stable identity of this trigger's definition (which trigger of a deployment fired).

        The same in every process: the sets are sorted (their order follows each process's string hashing).
        """
        data = self.model_dump(mode="json")
        for name in ("expect", "after", "for_each"):
            data[name] = sorted(data[name])
        return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


DeploymentTrigger = DeploymentEventTrigger  # Prefect's union name; event triggers are the one kind here


def _check_templates(value: Any, where: str) -> None:
    if isinstance(value, str):
        for opened in re.finditer(r"\{\{.*?\}\}", value):
            if not _TEMPLATE.fullmatch(opened.group(0)):
                raise ValueError(
                    f"{where}: parameter template {opened.group(0)!r} is not understood. Fix: use "
                    "{{ event.payload.x }}, {{ event.resource.id }}, {{ event.resource['label'] }}, "
                    "{{ event.event }}, {{ event.id }} or {{ event.occurred }}."
                )
    elif isinstance(value, Mapping):
        for item in value.values():
            _check_templates(item, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_templates(item, where)


def _find_label(event: EventLike, label: str) -> str | None:
    """A label of the event's resource, or ``related:<role>:<label>`` of its first related resource in that role."""
    if label.startswith("related:"):
        _, role, name = label.split(":", 2)
        for related in event.related:
            labels = _Labels(related)
            if labels.get("role") == role:
                found = labels.get(name)
                return None if found is None else str(found)
        return None
    found = _Labels(event.resource).get(label)
    return None if found is None else str(found)


def _lookup(event: EventLike | None, path: str) -> Any:
    if event is None:
        return None
    current: Any = {
        "id": event.id,
        "event": event.event,
        "occurred": event.occurred.isoformat(),
        "resource": _Labels(event.resource),
        "payload": event.payload,
        "related": [_Labels(r) for r in event.related],
    }
    for step in _STEP.finditer(path[len("event") :]):
        name = step.group("attr") if step.group("attr") is not None else step.group("key")
        if isinstance(current, _Labels):
            current = current.get(name)
        elif isinstance(current, Mapping):
            current = current.get(name)
        else:
            return None
        if current is None:
            return None
    return dict(current) if isinstance(current, _Labels) else current


class _Labels(dict[str, str]):
    """A resource's labels, where ``.id``/``.name``/``.role`` read ``prefect.resource.id`` etc. as in Prefect."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        if name in self:
            return self[name]
        for key, value in self.items():
            if _canonical(key) in (_canonical(name), f"daskflow.resource.{name}"):
                return value
        return default


def _render(value: Any, event: EventLike | None) -> Any:
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole is not None:
            return _lookup(event, whole.group("path"))  # a single template keeps the value's type
        return _TEMPLATE.sub(lambda m: _text(_lookup(event, m.group("path"))), value)
    if isinstance(value, Mapping):
        return {k: _render(v, event) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_render(v, event) for v in value]
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def as_triggers(
    triggers: Sequence[DeploymentEventTrigger | Mapping[str, Any]] | None, where: str
) -> tuple[DeploymentEventTrigger, ...]:
    """``triggers`` as :class:`DeploymentEventTrigger` objects (dicts, as in a deployment file, converted)."""
    if triggers is None:
        return ()
    if isinstance(triggers, (DeploymentEventTrigger, Mapping)):
        triggers = [triggers]
    made = []
    for i, one in enumerate(triggers):
        if isinstance(one, DeploymentEventTrigger):
            made.append(one)
            continue
        if not isinstance(one, Mapping):
            raise EventError(
                f"{where}: triggers[{i}] is a {type(one).__name__}; give DeploymentEventTrigger(expect=..., match=...) "
                "or a dict of its fields."
            )
        fields = {k: v for k, v in one.items() if k != "type"}
        if one.get("type", "event") != "event":
            raise EventError(f"{where}: triggers[{i}] has type {one['type']!r}; daskflow supports event triggers only.")
        try:
            made.append(DeploymentEventTrigger(**fields))
        except pydantic.ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(map(str, e['loc'])) + ': ' if e['loc'] else ''}{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise EventError(f"{where}: triggers[{i}] is not a valid trigger: {reasons}") from None
    return tuple(made)


# -- counting: triggers with a threshold, a window, `after` or a Proactive posture -------------------


@dataclass(frozen=True, slots=True)
class Firing:
    """A counting trigger fired: for which ``for_each`` key, on which event (None: Proactive, nothing came).

    ``discriminator`` tells this firing from every other of the same trigger (the event's id, or the
    Proactive window's key and end), so the run it queues has an id of its own, the same in every service.
    """

    key: tuple[str, ...]
    event: dict[str, Any] | None
    discriminator: str


def event_json(event: EventLike) -> dict[str, Any]:
    """An event as the JSON a trigger's state keeps (to fire with later)."""
    return {
        "id": event.id, "occurred": event.occurred.isoformat(), "event": event.event,
        "resource": dict(event.resource), "payload": dict(event.payload), "related": [dict(r) for r in event.related],
    }  # fmt: skip


def count_events(
    trigger: DeploymentEventTrigger,
    state: dict[str, Any],
    events: Sequence[EventLike],
    now: datetime,
    horizon: datetime,
) -> list[Firing]:
    """Count ``events`` (oldest first) into ``state`` as Prefect's trigger service does; what fires.

    ``state`` is a JSON object, changed in place: ``buckets`` (per ``for_each`` key, a window with its
    count), ``counted`` (the ids of events counted already, so an event seen again by another service
    or poll counts once) and ``horizon``. An event older than the horizon (from before the window a
    service reads) is not counted: it is too late, as an event older than its window is in Prefect.
    Then the Proactive windows that ended by ``now`` are judged.
    """
    buckets: dict[str, dict[str, Any]] = state.setdefault("buckets", {})
    counted: dict[str, str] = state.setdefault("counted", {})
    floor = _time(state["horizon"]) if "horizon" in state else horizon
    fired: list[Firing] = []
    for event in events:
        if event.id in counted or event.occurred < floor or not trigger.covers(event):
            continue
        counted[event.id] = event.occurred.isoformat()
        key = trigger.bucketing_key(event)
        name = json.dumps(key)
        bucket = buckets.get(name)
        if trigger.after and trigger.starts_after(event.event):
            if bucket is None:  # armed; an event both armed and expected does not count for itself
                bucket = _bucket(event.occurred, trigger.within, -1 if trigger.expects(event.event) else 0)
            bucket["last"] = event_json(event)
        elif bucket is None and not trigger.after and trigger.expects(event.event):
            bucket = _bucket(event.occurred, trigger.within, 0)
        if bucket is None or not trigger.expects(event.event):
            if bucket is not None:
                buckets[name] = bucket
            continue
        _store(buckets, name, _evaluate(trigger, key, bucket, event.occurred, event, fired))
    if trigger.within:
        # A window that ended before the horizon is swept, not judged, as Prefect sweeps its closed buckets:
        # no service watched as it ended (all were down), and its events may be out of reach now.
        for name, bucket in list(buckets.items()):
            if _time(bucket["end"]) < horizon:
                del buckets[name]
    if trigger.posture == "Proactive":
        if not trigger.for_each and not trigger.after and json.dumps(()) not in buckets:
            buckets[json.dumps(())] = _bucket(now, trigger.within, 0)  # armed from when it is first watched
        for name, bucket in list(buckets.items()):
            _store(buckets, name, _evaluate(trigger, tuple(json.loads(name)), bucket, now, None, fired))
    floor = max(floor, horizon)
    state["horizon"] = floor.isoformat()
    state["counted"] = {i: at for i, at in counted.items() if _time(at) >= floor}
    return fired


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _bucket(start: datetime, within: timedelta, count: int) -> dict[str, Any]:
    return {"start": start.isoformat(), "end": (start + within).isoformat(), "count": count, "last": None}


def _store(buckets: dict[str, dict[str, Any]], name: str, bucket: dict[str, Any] | None) -> None:
    if bucket is None:
        buckets.pop(name, None)
    else:
        buckets[name] = bucket


def _evaluate(
    trigger: DeploymentEventTrigger,
    key: tuple[str, ...],
    bucket: dict[str, Any],
    now: datetime,
    event: EventLike | None,
    fired: list[Firing],
) -> dict[str, Any] | None:
    """One bucket at ``now`` (with the event that occurred then, if any): the bucket to keep, or None.

    A Reactive trigger fires as soon as its count reaches the threshold, then ignores its events until
    the window's end; a Proactive one only when its window has ended with fewer events than expected.
    After a window a new one starts where it ended, unless ``after`` must arm the trigger again.
    """
    start, end = _time(bucket["start"]), _time(bucket["end"])
    uncounted = 1 if event is not None else 0
    if now < start:
        return bucket  # an event from before this window (late, or in the rest of a fired window)
    immediate = trigger.posture == "Reactive" and not trigger.within
    if uncounted and (immediate or start <= now < end):
        bucket = {**bucket, "count": bucket["count"] + 1, "last": event_json(event) if event else bucket["last"]}
        uncounted = 0
    reactive = trigger.posture == "Reactive"
    met = bucket["count"] >= trigger.threshold if reactive else bucket["count"] < trigger.threshold
    if (reactive or end <= now) and met:
        what = event_json(event) if event is not None else bucket["last"]
        discriminator = f"event:{event.id}" if event is not None else f"window:{json.dumps(key)}:{bucket['end']}"
        fired.append(Firing(key, what, discriminator))
    elif now < end:
        return bucket
    if trigger.after or not trigger.within:
        return None
    # The event came after the window: it counts in the next one, which starts with it.
    if reactive and uncounted:
        return _evaluate(trigger, key, _bucket(max(end, now), trigger.within, 0), now, event, fired)
    following = _bucket(max(end, now), trigger.within, uncounted)
    if uncounted and event is not None:
        following["last"] = event_json(event)
    return following
