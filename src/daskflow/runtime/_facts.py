"""How the three runtime modules read the run context, and the environment overrides they share."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from daskflow.context import FlowRunFacts, get_flow_run_context, get_task_run_context
from daskflow.exceptions import ConfigurationError

__all__ = ["flow_facts", "module_getattr"]


def flow_facts() -> FlowRunFacts | None:
    """The facts of the flow run of this code: from the flow run itself on its client, else from the task run."""
    flow_ctx = get_flow_run_context()
    task_ctx = get_task_run_context()
    if task_ctx is not None and (flow_ctx is None or task_ctx.flow_run_id != flow_ctx.flow_run.id):
        return task_ctx.flow_facts
    if flow_ctx is not None:
        return FlowRunFacts.of(flow_ctx.flow_run)
    return None


def _env_value(module: str, name: str) -> tuple[str, str] | None:
    """The override of ``module.name`` from the environment and the variable that gave it, or None.

    ``DASKFLOW__RUNTIME__...`` first; Prefect's ``PREFECT__RUNTIME__...`` too, so a test suite that
    mocks the runtime the way Prefect's docs show keeps working after the import line changes.
    """
    for prefix in ("DASKFLOW", "PREFECT"):
        variable = f"{prefix}__RUNTIME__{module.upper()}__{name.upper()}"
        raw = os.environ.get(variable)
        if raw is not None:
            return variable, raw
    return None


def _from_env(module: str, name: str, default: Any) -> Any:
    found = _env_value(module, name)
    if found is None:
        return None
    variable, raw = found
    where = f"{variable}={raw!r}"
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(f"{where}: {module}.{name} is a whole number") from None
    if isinstance(default, (Mapping, list)):
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigurationError(f"{where}: {module}.{name} is given as JSON, e.g. '{{\"x\": 1}}'") from None
    if isinstance(default, datetime) or name.endswith("_time"):
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            raise ConfigurationError(f"{where}: {module}.{name} is an ISO 8601 time") from None
    return raw


def module_getattr(
    module: str, getters: Mapping[str, Callable[[], Any]], defaults: Mapping[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` answering ``getters`` (with environment overrides), AttributeError otherwise."""

    def __getattr__(name: str) -> Any:
        getter = getters.get(name)
        if getter is None:
            # As in Prefect, the environment may mock a key the module does not have (as a string).
            mocked = _env_value(module, name) if not name.startswith("__") else None
            if mocked is not None:
                return mocked[1]
            raise AttributeError(
                f"daskflow.runtime.{module} has no attribute {name!r}; it has: {', '.join(sorted(getters))}"
            )
        overridden = _from_env(module, name, defaults.get(name))
        return overridden if overridden is not None else getter()

    return __getattr__
