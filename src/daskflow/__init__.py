"""daskflow: Prefect-style workflow orchestration on Dask distributed.

Write ``@flow`` and ``@task`` functions as with Prefect; switch by changing the
import line. This module only re-exports the public names.
"""

from daskflow import runtime
from daskflow._version import __version__
from daskflow.annotations import allow_failure, quote, unmapped
from daskflow.compiler import compile
from daskflow.context import tags
from daskflow.flows import Flow, flow, serve
from daskflow.futures import DaskflowFuture, as_completed, wait
from daskflow.logging import get_run_logger
from daskflow.pausing import pause_flow_run, resume_flow_run, suspend_flow_run
from daskflow.report import notebook as _notebook  # noqa: F401  (registers the notebook cards of states and runs)
from daskflow.states import State
from daskflow.tasks import Task, task

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
