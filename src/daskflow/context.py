"""Run contexts: what code running inside a flow or a task can ask about its run.

Two context variables hold the innermost flow run and task run. Because they
are ``contextvars``, they follow a run into the threads and event loops it
starts when the runner copies the context, and stay out of unrelated threads.
On a Dask worker only the task-run context exists: it carries the few facts of
its flow run that a task may need (ids, names, flow parameters), so a task
never needs the live flow object, which stays on the client.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from daskflow.exceptions import MissingContextError
from daskflow.runs import FlowRun, TaskRun

__all__ = [
    "CANCEL_POLL_SECONDS",
    "FlowRunContext",
    "TaskRunContext",
    "get_flow_run_context",
    "get_run_context",
    "get_task_run_context",
    "on_worker_thread",
    "run_cancelled",
    "set_wait_hook",
    "set_worker_thread",
    "use_flow_run_context",
    "use_task_run_context",
    "waiting",
]


@dataclass(eq=False)
class FlowRunContext:
    """The running flow run, seen from the flow's body and from local task runs."""

    flow: Any
    flow_run: FlowRun
    task_runner: Any
    parameters: dict[str, Any]
    log_prints: bool = False
    concurrency_limits: dict[str, int] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # What the flow body's direct task calls returned: id(value) -> (task run id, value). A value
    # passed on to another task names the run that made it (the run report's graph), as a future
    # does; the value is kept so that its id cannot be reused by another object meanwhile.
    produced: dict[int, tuple[str, Any]] = field(default_factory=dict)
    _counters: dict[str, Iterator[int]] = field(default_factory=dict)
    _counters_lock: threading.Lock = field(default_factory=threading.Lock)

    def next_index(self, task_name: str) -> int:
        """A per-task counter that numbers this flow's task runs: ``extract-0``, ``extract-1``."""
        counter = self._counters.get(task_name)
        if counter is None:
            with self._counters_lock:
                counter = self._counters.setdefault(task_name, itertools.count())
        return next(counter)


@dataclass(eq=False, slots=True)
class TaskRunContext:
    """The running task run, wherever it runs (in a thread of the client, on a worker)."""

    task: Any
    task_run: TaskRun
    parameters: dict[str, Any]
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    flow_name: str | None = None
    flow_parameters: dict[str, Any] = field(default_factory=dict)
    log_prints: bool = False
    # Sizes of the named limits the flow run knows (the flow's, then dask.config's).
    concurrency_limits: dict[str, int] = field(default_factory=dict)
    # Where named limits, rate limits and locks live: the cluster's on Dask, else None (this process).
    coordination: Any = None
    # Set when the run's flow run is cancelled: long waits inside the run (for a slot) watch it.
    cancel_event: threading.Event | None = None

    @property
    def task_run_id(self) -> str:
        return self.task_run.id


_flow_ctx: ContextVar[FlowRunContext | None] = ContextVar("daskflow_flow_run", default=None)
_task_ctx: ContextVar[TaskRunContext | None] = ContextVar("daskflow_task_run", default=None)


def get_flow_run_context() -> FlowRunContext | None:
    return _flow_ctx.get()


def get_task_run_context() -> TaskRunContext | None:
    return _task_ctx.get()


def get_run_context() -> TaskRunContext | FlowRunContext:
    """The innermost run context: the task run if inside one, else the flow run."""
    ctx: TaskRunContext | FlowRunContext | None = _task_ctx.get() or _flow_ctx.get()
    if ctx is None:
        raise MissingContextError(
            "there is no flow or task run here: this can only be called while a "
            "@flow or @task function is running"
        )
    return ctx


@contextmanager
def use_flow_run_context(ctx: FlowRunContext) -> Iterator[FlowRunContext]:
    # A task run context from an enclosing task must not leak into a subflow's body.
    flow_token = _flow_ctx.set(ctx)
    task_token = _task_ctx.set(None)
    try:
        yield ctx
    finally:
        _task_ctx.reset(task_token)
        _flow_ctx.reset(flow_token)


_wait_hooks = threading.local()
_worker_threads = threading.local()


def set_worker_thread(flag: bool) -> None:
    """Mark this thread as running a Dask task (set by the Dask runner on its worker threads)."""
    _worker_threads.flag = flag


def on_worker_thread() -> bool:
    """True in a thread that runs a task for a Dask worker: its run records are the worker's copies."""
    return getattr(_worker_threads, "flag", False)


def set_wait_hook(hook: Callable[[], AbstractContextManager[None]] | None) -> None:
    """How this thread waits without holding its runner's capacity (set by runners on their threads)."""
    _wait_hooks.hook = hook


# How often a long wait inside a run looks whether the run was cancelled meanwhile (seconds).
CANCEL_POLL_SECONDS = 0.5


def run_cancelled() -> bool:
    """True inside a task run whose flow run was cancelled (a wait for a slot then gives up)."""
    ctx = _task_ctx.get()
    event = ctx.cancel_event if ctx is not None else None
    return event is not None and event.is_set()


@contextmanager
def waiting() -> Iterator[None]:
    """Around a long wait inside a task run (for a slot, a lock, an identical run).

    The runner of this thread may lend the thread's place to other runs meanwhile:
    a Dask worker secedes from its thread pool, the thread pool runner starts
    another thread. Elsewhere it changes nothing.
    """
    hook = getattr(_wait_hooks, "hook", None)
    if hook is None:
        yield
        return
    with hook():
        yield


@contextmanager
def use_task_run_context(ctx: TaskRunContext) -> Iterator[TaskRunContext]:
    token = _task_ctx.set(ctx)
    try:
        yield ctx
    finally:
        _task_ctx.reset(token)
