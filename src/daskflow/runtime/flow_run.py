"""``daskflow.runtime.flow_run``: the flow run this code is part of (see :mod:`daskflow.runtime`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daskflow.context import get_flow_run_context, get_task_run_context
from daskflow.runtime._facts import flow_facts, module_getattr

__all__ = [
    "flow_name",
    "id",
    "name",
    "parameters",
    "parent_deployment_id",
    "parent_flow_run_id",
    "root_flow_run_id",
    "run_count",
    "scheduled_start_time",
    "tags",
]


def _id() -> str | None:
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        return task_ctx.flow_run_id
    flow_ctx = get_flow_run_context()
    return flow_ctx.flow_run.id if flow_ctx is not None else None


def _name() -> str | None:
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        return task_ctx.flow_run_name
    flow_ctx = get_flow_run_context()
    return flow_ctx.flow_run.name if flow_ctx is not None else None


def _flow_name() -> str | None:
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        return task_ctx.flow_name
    flow_ctx = get_flow_run_context()
    return flow_ctx.flow_run.flow_name if flow_ctx is not None else None


def _parameters() -> dict[str, Any]:
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        return dict(task_ctx.flow_parameters)
    flow_ctx = get_flow_run_context()
    return dict(flow_ctx.parameters) if flow_ctx is not None else {}


def _tags() -> list[str]:
    facts = flow_facts()
    return sorted(facts.tags) if facts is not None else []


def _scheduled_start_time() -> datetime:
    facts = flow_facts()
    if facts is not None and facts.scheduled_start_time is not None:
        return facts.scheduled_start_time
    return datetime.now(UTC)  # as in Prefect: outside a run, now


def _run_count() -> int:
    flow_ctx = get_flow_run_context()
    task_ctx = get_task_run_context()
    if flow_ctx is not None and (task_ctx is None or task_ctx.flow_run_id == flow_ctx.flow_run.id):
        return flow_ctx.flow_run.run_count  # live: a retried flow body sees its attempt
    facts = flow_facts()
    return facts.run_count if facts is not None else 0


def _parent_flow_run_id() -> str | None:
    facts = flow_facts()
    return facts.parent_flow_run_id if facts is not None else None


def _parent_deployment_id() -> str | None:
    facts = flow_facts()
    return facts.deployment.id if facts is not None and facts.deployment is not None else None


def _root_flow_run_id() -> str | None:
    return _parent_flow_run_id() or _id()


__getattr__ = module_getattr(
    "flow_run",
    {
        "id": _id,
        "name": _name,
        "flow_name": _flow_name,
        "parameters": _parameters,
        "tags": _tags,
        "scheduled_start_time": _scheduled_start_time,
        "run_count": _run_count,
        "parent_flow_run_id": _parent_flow_run_id,
        "parent_deployment_id": _parent_deployment_id,
        "root_flow_run_id": _root_flow_run_id,
    },
    {"parameters": {}, "tags": [], "run_count": 0, "scheduled_start_time": datetime.now(UTC)},
)
