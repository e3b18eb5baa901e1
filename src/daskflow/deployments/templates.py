"""A deployment's parameters: checked against the flow when built, rendered for each scheduled time.

A deployment stores default parameters as JSON, and a string among them may
hold templates that each run fills in for its own scheduled time:

* ``{{ scheduled_time }}`` — the time this run is for;
* ``{{ data_interval_start }}`` — the schedule's previous time before it;
* ``{{ data_interval_end }}`` — the scheduled time again, the end of the interval.

So a daily 06:00 run for 2024-01-15 processes the data interval
[2024-01-14 06:00, 2024-01-15 06:00), as in Airflow. Times are in the
schedule's timezone (UTC without a schedule). A template renders as ISO 8601
(``2024-01-15T06:00:00+00:00``), or through a ``strftime`` format after a bar:
``{{ data_interval_end | %Y-%m-%d }}`` is ``2024-01-15``. One case keeps its
type: a parameter whose whole value is a single template without a format,
and whose flow parameter is annotated ``datetime`` (or ``date``), receives an
aware ``datetime`` (or the local ``date``) instead of text. Templates inside
lists and dicts render as text.

Checking at build time catches at ``apply`` what would otherwise fail every
night: unknown parameter names, unknown template names, values that are not
JSON, required parameters a scheduled run could not supply, and values (with
templates rendered for a sample time) that fail the flow's type hints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import json
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daskflow.engine.serving import TEMPLATE, TEMPLATE_NAMES, render_templates
from daskflow.exceptions import DeploymentError, ParameterValidationError
from daskflow.flows import Flow
from daskflow.schedules import Schedule, data_interval

__all__ = ["TEMPLATE_NAMES", "TemplateTimes", "check_parameters", "render_parameters", "template_times"]


@dataclass(frozen=True)
class TemplateTimes:
    """The times one run's templates render: its scheduled time and its data interval."""

    scheduled_time: dt.datetime
    data_interval_start: dt.datetime
    data_interval_end: dt.datetime


def template_times(schedule: Schedule | None, scheduled_time: dt.datetime) -> TemplateTimes:
    """The template times of a run at ``scheduled_time`` (aware), in the schedule's zone."""
    if scheduled_time.tzinfo is None:
        raise DeploymentError(f"scheduled time {scheduled_time!r} has no timezone; give an aware datetime.")
    if schedule is None:
        moment = scheduled_time.astimezone(dt.UTC)
        return TemplateTimes(moment, moment, moment)
    start, end = data_interval(schedule, scheduled_time)
    return TemplateTimes(end, start, end)


def _annotations(flow: Flow[Any, Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(flow.fn)
    except Exception:  # unresolvable forward references: no typed rendering, text works everywhere
        return {}


def _wants(hint: Any) -> type | None:
    """``datetime`` or ``date`` if the hint asks for one (also inside Optional[...]), else None."""
    for candidate in (hint, *typing.get_args(hint)):
        if candidate is dt.datetime or candidate is dt.date:
            return typing.cast(type, candidate)
    return None


def _unknown(where: str, match: re.Match[str], text: str) -> Exception:
    return DeploymentError(
        f"{where}: unknown template {{{{ {match['name']} }}}}. Fix: use one of "
        + ", ".join(f"{{{{ {known} }}}}" for known in TEMPLATE_NAMES)
        + "."
    )


def render_parameters(
    flow: Flow[Any, Any] | None, parameters: Mapping[str, Any], times: TemplateTimes
) -> dict[str, Any]:
    """``parameters`` with every template filled in for ``times`` (see the module docstring)."""
    hints = _annotations(flow) if flow is not None else {}
    by_name: dict[str, dt.datetime] = dataclasses.asdict(times)
    rendered: dict[str, Any] = {}
    for name, value in parameters.items():
        where = f"parameter {name!r}"
        whole = TEMPLATE.fullmatch(value.strip()) if isinstance(value, str) else None
        wanted = _wants(hints.get(name))
        if whole is not None and not whole["format"] and wanted is not None:
            moment = by_name.get(whole["name"])
            if moment is None:
                raise _unknown(where, whole, value)
            rendered[name] = moment if wanted is dt.datetime else moment.date()
        else:
            rendered[name] = render_templates(value, by_name, where, _unknown)
    return rendered


def _check_json(deployment: str, parameters: Mapping[str, Any]) -> None:
    for name, value in parameters.items():
        if not isinstance(name, str):
            raise DeploymentError(f"deployment {deployment!r}: parameter name {name!r} is not a string.")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise DeploymentError(
                f"deployment {deployment!r}: parameter {name!r} = {value!r} cannot be stored as JSON ({exc}). "
                "Fix: pass JSON values (str, int, float, bool, None, lists, dicts); for a time, use a "
                "template such as '{{ scheduled_time }}' or an ISO string."
            ) from None


def check_parameters(
    deployment: str, flow: Flow[Any, Any], parameters: Mapping[str, Any], schedule: Schedule | None
) -> None:
    """Raise a :class:`DeploymentError` for parameters that could not make a valid run (module docstring)."""
    _check_json(deployment, parameters)
    signature = inspect.signature(flow.fn)
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(parameters) - set(params))
    if unknown and not takes_any:
        raise DeploymentError(
            f"deployment {deployment!r}: flow {flow.name!r} has no parameter(s) {', '.join(map(repr, unknown))}; "
            f"its signature is {flow.fn.__name__}{signature}. Fix: rename or drop them."
        )
    required = [
        name
        for name, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    missing = [name for name in required if name not in parameters]
    if missing and schedule is not None:
        raise DeploymentError(
            f"deployment {deployment!r}: flow {flow.name!r} requires {', '.join(map(repr, missing))}, which a "
            "scheduled run has no other way to receive. Fix: add them to parameters=..., e.g. "
            f"parameters={{{missing[0]!r}: '{{{{ scheduled_time }}}}'}}."
        )
    upcoming = schedule.next_times(1) if schedule is not None else []
    sample_time = upcoming[0] if upcoming else dt.datetime.now(dt.UTC)  # an ended RRULE has none
    rendered = render_parameters(flow, parameters, template_times(schedule, sample_time))
    if missing:
        return  # a manual run will supply them; nothing complete to validate yet
    try:
        flow.validate_parameters(flow.bind_parameters((), rendered))
    except (ParameterValidationError, TypeError) as exc:
        raise DeploymentError(
            f"deployment {deployment!r}: its parameters, rendered for {sample_time.isoformat()}, do not fit "
            f"flow {flow.name!r}: {exc}"
        ) from None
