"""What the server's buttons do, written once for the API, the pages and ``daskflow runs retry``.

* :func:`cancel_flow_run` records a cancel request; the process running the
  flow sees it within about a second (:mod:`daskflow.runstore.cancellation`).
* :func:`retry_plan` checks that a run can be retried — it ended failed,
  crashed or cancelled, and its flow's import path was recorded — and returns
  the flow and parameters; :func:`start_in_background` runs it with an id fixed
  in advance, so the caller can answer with the new run's id at once. Its
  cached tasks hit: the new run has the same flow source and parameters.
* :func:`parameter_fields` describes a flow's parameters for a form (name,
  type, default, JSON schema), and :func:`validate_parameters` checks values
  against the type hints one parameter at a time, so a bad value is reported
  against its own name (the API's 422, the form's message under its field).
* :func:`pause_of` and :func:`resume_fields` describe what a run paused for
  input waits for (a form from its model's JSON schema); :func:`resume_with`
  hands it the input. The paused run validates the input itself (pydantic's
  rules, :mod:`daskflow.pausing`), so a refusal comes back as the run's own
  validation error, split here into one problem per field.

A retry started here executes on a daemon thread of this process, on the
flow's own task runner, and records its history in the configured run store
like any other run. A deployment's Run is not started here: it is queued
(:mod:`daskflow.deployments.queue`) for a scheduling service.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daskflow.deployments import load_flow
from daskflow.engine.run_origin import preset_flow_run_id
from daskflow.exceptions import DaskflowError
from daskflow.flows import Flow
from daskflow.pausing import PauseError, resume_flow_run
from daskflow.runs import new_run_id
from daskflow.runstore.cancellation import request_cancel
from daskflow.runstore.history import FlowRunDetail
from daskflow.runstore.pausing import PausedRow, read_paused
from daskflow.runstore.queries import flow_run_entrypoint
from daskflow.runstore.store import RunStore
from daskflow.states import FINAL_TYPE_NAMES, StateType

__all__ = [
    "ActionError",
    "FINAL_TYPES",
    "ParameterProblem",
    "RetryPlan",
    "cancel_flow_run",
    "parameter_fields",
    "pause_of",
    "resume_fields",
    "resume_with",
    "retry_plan",
    "start_in_background",
    "validate_parameters",
]

FINAL_TYPES = FINAL_TYPE_NAMES
_RETRYABLE = frozenset(t.value for t in (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED))
_log = logging.getLogger("daskflow.server")
_RECORDED_WITHIN = 15.0  # seconds a Run or Retry waits for its new run to be in the store before answering
_RECORDED_POLL = 0.05
_WRITTEN_AFTER_END = 2.0


class ActionError(DaskflowError, ValueError):
    """A button that cannot do its work for this run: the message says why and what to do (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class ParameterProblem:
    """One parameter that does not fit: its name and what is wrong with it."""

    parameter: str
    message: str


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What a retry runs: the flow (imported) and the original run's parameters."""

    flow: Flow[Any, Any]
    parameters: dict[str, Any]
    entrypoint: str


def cancel_flow_run(store: RunStore, run: FlowRunDetail, reason: str | None = None) -> None:
    """Ask a running flow run to stop; a run that has ended is an :class:`ActionError`."""
    if run.state_type in FINAL_TYPES:
        raise ActionError(
            f"flow run {run.id} ({run.flow_name} / {run.name}) already ended {run.state_name}: nothing to cancel."
        )
    request_cancel(store, run.id, reason or "cancelled from the daskflow server")


def retry_plan(store: RunStore, run: FlowRunDetail) -> RetryPlan:
    """How to retry ``run``: a new run of the same flow with the same parameters."""
    if run.state_type not in _RETRYABLE:
        raise ActionError(
            f"flow run {run.id} is {run.state_name}: only a failed, crashed or cancelled run is retried. "
            "Fix: wait for it to end, or run its flow again."
        )
    entrypoint = run.entrypoint or flow_run_entrypoint(store, run.id)
    if not entrypoint:
        raise ActionError(
            f"flow run {run.id} recorded no import path for flow {run.flow_name!r} (it was defined inside a "
            "function, or ran before daskflow recorded import paths), so it cannot be imported again. "
            "Fix: define the flow at the top level of a module and run it again from there."
        )
    try:
        flow = load_flow(entrypoint)
    except DaskflowError as exc:
        raise ActionError(f"flow run {run.id}: its flow cannot be imported here: {exc}") from None
    return RetryPlan(flow, dict(run.parameters), entrypoint)


def start_in_background(store: RunStore, name: str, target: Callable[[], Any]) -> str:
    """Run ``target`` (which starts one flow run) on a daemon thread, with a fresh run id; return the id.

    Returns once the run is in the run store (or its thread has ended, or
    :data:`_RECORDED_WITHIN` seconds passed), so that whoever is told the id can
    read the run at once: its history is written by the writer thread, a moment later.
    """
    run_id = new_run_id()
    ended = threading.Event()

    def body() -> None:
        with preset_flow_run_id(run_id):
            try:
                target()
            except BaseException:  # the run's own state records a failure; this is what escaped it
                _log.exception("%s (flow run %s) raised", name, run_id)
            finally:
                ended.set()

    threading.Thread(target=body, name=f"daskflow-server-{name}", daemon=True).start()
    deadline = time.monotonic() + _RECORDED_WITHIN
    while store.resolve_run_id(run_id) is None and time.monotonic() < deadline:
        if ended.wait(_RECORDED_POLL):
            # A run that ended is written within the writer's interval; one that never began, never.
            deadline = min(deadline, time.monotonic() + _WRITTEN_AFTER_END)
    return run_id


def retry_in_background(store: RunStore, plan: RetryPlan) -> str:
    """Start the retry on a thread of this process; the new flow run's id."""
    return start_in_background(
        store, f"retry-{plan.flow.name}", lambda: plan.flow(**plan.parameters, return_state=True)
    )


def _hints(flow: Flow[Any, Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(flow.fn)
    except Exception:  # unresolvable forward references: the raw annotations
        return dict(getattr(flow.fn, "__annotations__", {}))


def _json_default(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return None


def parameter_fields(flow: Flow[Any, Any], defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A form field per flow parameter: name, type label, JSON schema type, default, required."""
    import pydantic

    hints = _hints(flow)
    fields = []
    for name, param in inspect.signature(flow.fn).parameters.items():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        hint = hints.get(name, Any)
        try:
            schema = pydantic.TypeAdapter(hint).json_schema()
        except Exception:  # a type pydantic cannot describe: a JSON text field
            schema = {}
        kind = schema.get("type") if isinstance(schema.get("type"), str) else "json"
        if name in defaults:
            default = defaults[name]
        elif param.default is not inspect.Parameter.empty:
            default = _json_default(param.default)
        else:
            default = None
        fields.append(
            {
                "name": name,
                "type": getattr(hint, "__name__", str(hint).replace("typing.", "")),
                "input": kind if kind in ("integer", "number", "boolean", "string") else "json",
                "default": default,
                "required": param.default is inspect.Parameter.empty and name not in defaults,
            }
        )
    return fields


def validate_parameters(flow: Flow[Any, Any], values: Mapping[str, Any]) -> list[ParameterProblem]:
    """What is wrong with ``values`` for ``flow``, one problem per parameter; empty when they fit."""
    import pydantic

    params = inspect.signature(flow.fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _hints(flow)
    problems = []
    for name, value in values.items():
        if name not in params and not takes_any:
            known = ", ".join(params) or "none"
            problems.append(ParameterProblem(name, f"flow {flow.name!r} has no parameter {name!r} (it has: {known})"))
            continue
        hint = hints.get(name)
        if hint is None or hint is Any or isinstance(value, str) and "{{" in value:  # a template renders later
            continue
        try:
            pydantic.TypeAdapter(hint).validate_python(value)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            label = getattr(hint, "__name__", str(hint))
            problems.append(ParameterProblem(name, f"got {value!r}, expected {label}: {first.get('msg', '')}"))
    return problems


def pause_of(store: RunStore, run: FlowRunDetail) -> PausedRow | None:
    """The pause ``run`` waits in now, or None (not paused, resumed already, or its pause timed out)."""
    if run.state_type != StateType.PAUSED.value:
        return None
    row = read_paused(store, run.id)
    return row if row is not None and row.resumed_at is None else None


def resume_fields(schema_text: str | None) -> list[dict[str, Any]]:
    """A form field per property of a pause's input model (its JSON schema), shaped as :func:`parameter_fields`."""
    if not schema_text:
        return []
    schema = json.loads(schema_text)
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") if isinstance(prop.get("type"), str) else "json"
        fields.append(
            {
                "name": name,
                "type": prop.get("title", name) if kind == "json" else kind,
                "input": kind if kind in ("integer", "number", "boolean", "string") else "json",
                "default": _json_default(prop.get("default")),
                "required": name in required,
                "description": prop.get("description"),
            }
        )
    return fields


def _input_problems(error: str) -> list[ParameterProblem]:
    """pydantic's ValidationError text, one problem per field.

    Its lines are a header (``N validation errors for Model``), then for each
    error the field's location on a line of its own and the message indented under it.
    """
    problems: list[ParameterProblem] = []
    lines = error.splitlines()
    for where, line in enumerate(lines[1:], start=1):
        if line and not line[0].isspace() and where + 1 < len(lines) and lines[where + 1].startswith("  "):
            message = lines[where + 1].strip().split(" [type=")[0]
            problems.append(ParameterProblem(line.strip(), message))
    return problems or [ParameterProblem("", error)]


def resume_with(store: RunStore, run: FlowRunDetail, run_input: Any, wait: float = 15.0) -> list[ParameterProblem]:
    """Resume ``run`` with ``run_input``; what was wrong with the input (empty: it was taken and the run goes on).

    A run that is not waiting for input is an :class:`ActionError`.
    """
    if pause_of(store, run) is None:
        raise ActionError(
            f"flow run {run.id} is {run.state_name}, not paused for input: nothing to resume. "
            f"Fix: check it with daskflow runs show {run.id}."
        )
    try:
        resume_flow_run(run.id, run_input, wait=wait, url=store.url)
    except PauseError as exc:
        refused = read_paused(store, run.id)
        if refused is not None and refused.input_error and refused.resumed_at is None:
            return _input_problems(refused.input_error)
        raise ActionError(str(exc)) from None
    return []
