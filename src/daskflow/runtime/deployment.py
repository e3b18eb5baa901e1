"""``daskflow.runtime.deployment``: the deployment the current flow run was started for (see :mod:`daskflow.runtime`).

A run started by ``daskflow serve``, a deployment's backfill or
``flow.serve(name=...)`` has one; a flow called directly has none (None, ``{}``).
"""

from __future__ import annotations

from typing import Any

from daskflow.runs import DeploymentRef
from daskflow.runtime._facts import flow_facts, module_getattr
from daskflow.runtime.flow_run import _id as _current_flow_run_id

__all__ = ["flow_run_id", "id", "name", "parameters"]


def _deployment() -> DeploymentRef | None:
    facts = flow_facts()
    return facts.deployment if facts is not None else None


def _id() -> str | None:
    found = _deployment()
    return found.id if found is not None else None


def _name() -> str | None:
    found = _deployment()
    return found.name if found is not None else None


def _parameters() -> dict[str, Any]:
    found = _deployment()
    return dict(found.parameters) if found is not None else {}


def _flow_run_id() -> str | None:
    return _current_flow_run_id() if _deployment() is not None else None


__getattr__ = module_getattr(
    "deployment",
    {"id": _id, "name": _name, "parameters": _parameters, "flow_run_id": _flow_run_id},
    {"parameters": {}},
)
