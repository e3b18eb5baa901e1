"""The engine: what happens around one task run and one flow run."""

from daskflow.engine.calls import TaskCall, make_calls
from daskflow.engine.flow_engine import FlowRunEngine, run_flow_async, run_flow_sync
from daskflow.engine.inputs import UNCHANGED, find_upstream_runs, iter_upstreams, resolve_inputs, transform
from daskflow.engine.retries import exponential_backoff, retry_delay
from daskflow.engine.task_engine import TaskRunEngine, run_coroutine, run_task_async, run_task_sync
from daskflow.engine.timeouts import call_with_timeout, interrupt_thread

__all__ = [
    "UNCHANGED",
    "transform",
    "FlowRunEngine",
    "TaskCall",
    "TaskRunEngine",
    "call_with_timeout",
    "exponential_backoff",
    "find_upstream_runs",
    "interrupt_thread",
    "iter_upstreams",
    "make_calls",
    "resolve_inputs",
    "retry_delay",
    "run_coroutine",
    "run_flow_async",
    "run_flow_sync",
    "run_task_async",
    "run_task_sync",
]
