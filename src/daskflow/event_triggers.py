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
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import pydantic

from daskflow.exceptions import DaskflowError

__all__ = ["DeploymentEventTrigger", "DeploymentTrigger", "EventError", "EventLike", "as_triggers"]


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

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

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

    @pydantic.model_validator(mode="after")
    def _supported(self) -> DeploymentEventTrigger:
        where = f"DeploymentEventTrigger({self.name or ', '.join(sorted(self.expect)) or 'any event'})"
        if self.posture != "Reactive":
            raise ValueError(
                f"{where}: posture='Proactive' (fire when events do NOT happen) is not supported by daskflow; "
                "Fix: use a Reactive trigger, or a schedule that checks for the missing event."
            )
        if self.threshold != 1:
            raise ValueError(
                f"{where}: threshold={self.threshold} is not supported; daskflow fires once per matching event "
                "(threshold=1). Fix: leave threshold out and count in the flow if needed."
            )
        if self.after:
            raise ValueError(f"{where}: after= is not supported. Fix: leave it out and match on expect= alone.")
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
        """Whether ``event`` fires this trigger."""
        if not self.enabled:
            return False
        if self.expect and not any(_matches_pattern(event.event, pattern) for pattern in self.expect):
            return False
        if not _labels_match(event.resource, self.match):
            return False
        # Each related spec must be met by one of the event's related resources.
        return all(any(_labels_match(r, spec) for r in event.related) for spec in self.related_specs)

    def render_parameters(self, event: EventLike) -> dict[str, Any]:
        """The trigger's parameters with their ``{{ event... }}`` templates filled from ``event``."""
        return {name: _render(value, event) for name, value in (self.parameters or {}).items()}

    @property
    def wants_state_events(self) -> bool:
        """Whether a run's state change (``daskflow.flow-run.*``/``task-run.*``) could match ``expect``."""
        if not self.expect:
            return True
        prefixes = ("daskflow.flow-run.", "daskflow.task-run.")
        for pattern in self.expect:
            if pattern.startswith("!"):
                return True
            text = _canonical(pattern)
            stem = text[:-1] if text.endswith("*") else text
            if any(p.startswith(stem) if text.endswith("*") else text.startswith(p) for p in prefixes):
                return True
        return False

    def key(self) -> str:
        """A stable identity of this trigger's definition (which trigger of a deployment fired)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), default=str)


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


def _lookup(event: EventLike, path: str) -> Any:
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


def _render(value: Any, event: EventLike) -> Any:
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
