"""daskflow: Prefect-style workflow orchestration on Dask distributed.

Write ``@flow`` and ``@task`` functions as with Prefect; switch by changing the
import line. This module only re-exports the public names.

``compile`` and the pausing functions are imported when first used (a module
``__getattr__``, PEP 562), and so are the notebook cards of states and runs:
the compiler and the report (markdown, the page) were about a sixth of
``import daskflow``'s CPU time, paid by every process that runs a flow — each
script, service and Dask worker — and used by few. What is exported, and how it
behaves, is as with eager imports; type checkers read the imports under
``TYPE_CHECKING``. The rest stays eager: ``flow`` and ``task`` need the engine,
whose import also installs what must listen from the start (the run history's
artifact handler).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from daskflow import runtime
from daskflow._version import __version__
from daskflow.annotations import allow_failure, quote, unmapped
from daskflow.context import tags
from daskflow.flows import Flow, flow, serve
from daskflow.futures import DaskflowFuture, as_completed, wait
from daskflow.logging import get_run_logger
from daskflow.states import State, register_notebook_html
from daskflow.tasks import Task, task

if TYPE_CHECKING:
    from daskflow.compiler import compile
    from daskflow.pausing import pause_flow_run, resume_flow_run, suspend_flow_run

__all__ = [
    "DaskflowFuture",
    "Flow",
    "State",
    "Task",
    "__version__",
    "allow_failure",
    "as_completed",
    "compile",
    "flow",
    "get_run_logger",
    "pause_flow_run",
    "quote",
    "resume_flow_run",
    "runtime",
    "serve",
    "suspend_flow_run",
    "tags",
    "task",
    "unmapped",
    "wait",
]

# The names imported on first use, and the module each comes from.
_LAZY = {
    "compile": "daskflow.compiler",
    "pause_flow_run": "daskflow.pausing",
    "resume_flow_run": "daskflow.pausing",
    "suspend_flow_run": "daskflow.pausing",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'daskflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _notebook_card(obj: Any) -> str | None:
    # Cards are drawn by daskflow.report.notebook, which registers its own renderer in place of
    # this one when imported: the first state or run a notebook shows imports it.
    from daskflow.report.notebook import notebook_card

    return notebook_card(obj)


register_notebook_html(_notebook_card)
