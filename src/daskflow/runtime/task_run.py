"""``daskflow.runtime.task_run``: the task run this code is part of (see :mod:`daskflow.runtime`)."""

from __future__ import annotations

from typing import Any

from daskflow.context import get_task_run_context
from daskflow.runtime._facts import module_getattr

__all__ = ["id", "name", "parameters", "run_count", "tags", "task_name"]


def _id() -> str | None:
    ctx = get_task_run_context()
    return ctx.task_run.id if ctx is not None else None


def _name() -> str | None:
    ctx = get_task_run_context()
    return ctx.task_run.name if ctx is not None else None


def _task_name() -> str | None:
    ctx = get_task_run_context()
    return ctx.task_run.task_name if ctx is not None else None


def _parameters() -> dict[str, Any]:
    ctx = get_task_run_context()
    return dict(ctx.parameters) if ctx is not None else {}


def _tags() -> list[str]:
    ctx = get_task_run_context()
    return sorted(ctx.task_run.tags) if ctx is not None else []


def _run_count() -> int:
    ctx = get_task_run_context()
    return ctx.task_run.run_count if ctx is not None else 0


__getattr__ = module_getattr(
    "task_run",
    {
        "id": _id,
        "name": _name,
        "task_name": _task_name,
        "parameters": _parameters,
        "tags": _tags,
        "run_count": _run_count,
    },
    {"parameters": {}, "tags": [], "run_count": 0},
)
