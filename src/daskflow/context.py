"""Run contexts: what code running inside a flow or a task can ask about its run.

Two context variables hold the innermost flow run and task run. Because they
are ``contextvars``, they follow a run into the threads and event loops it
starts when the runner copies the context, and stay out of unrelated threads.
On a Dask worker only the task-run context exists: it carries the few facts of
its flow run that a task may need (ids, names, flow parameters), so a task
never needs the live flow object, which stays on the client.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daskflow.exceptions import MissingContextError
from daskflow.runs import DeploymentRef, FlowRun, TaskRun

__all__ = [
    "CANCEL_POLL_SECONDS",
    "CommitMode",
    "FlowRunContext",
    "FlowRunFacts",
    "IsolationLevel",
    "ScheduledRunInfo",
    "TaskRunContext",
    "Transaction",
    "TransactionState",
    "deadline_passed",
    "enter_task_run",
    "get_current_tags",
    "get_flow_run_context",
    "get_run_context",
    "get_task_run_context",
    "get_transaction",
    "leave_task_run",
    "on_worker_thread",
    "run_cancelled",
    "scheduled_run_info",
    "set_wait_hook",
    "shielded",
    "shielded_threads",
    "set_worker_thread",
    "starting_scheduled_run",
    "tags",
    "use_flow_run_context",
    "use_task_run_context",
    "use_transaction",
    "wait_deadline",
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
    # The flow run's facts for its task runs, taken once per attempt (see facts()).
    _facts: tuple[int, frozenset[str], FlowRunFacts] | None = None

    def facts(self) -> FlowRunFacts:
        """``FlowRunFacts.of(self.flow_run)``, taken again only when the run's attempt or tags change."""
        run = self.flow_run
        kept = self._facts
        if kept is None or kept[0] != run.run_count or kept[1] is not run.tags:
            kept = self._facts = (run.run_count, run.tags, FlowRunFacts.of(run))
        return kept[2]

    def next_index(self, task_name: str) -> int:
        """A per-task counter that numbers this flow's task runs: ``extract-0``, ``extract-1``."""
        counter = self._counters.get(task_name)
        if counter is None:
            with self._counters_lock:
                counter = self._counters.setdefault(task_name, itertools.count())
        return next(counter)


@dataclass(frozen=True, slots=True)
class FlowRunFacts:
    """What a task run may ask about its flow run wherever it runs (``daskflow.runtime``).

    A snapshot taken when the task run is created on the client; it travels to
    a Dask worker with the task run, where the flow run itself does not.
    """

    tags: frozenset[str] = frozenset()
    scheduled_start_time: datetime | None = None
    run_count: int = 0
    parent_flow_run_id: str | None = None
    deployment: DeploymentRef | None = None

    @classmethod
    def of(cls, run: FlowRun) -> FlowRunFacts:
        return cls(run.tags, run.scheduled_start_time, run.run_count, run.parent_flow_run_id, run.deployment)


@dataclass(frozen=True, slots=True)
class ScheduledRunInfo:
    """Facts a scheduler knows about the flow run it is about to start (see :func:`starting_scheduled_run`)."""

    scheduled_start_time: datetime | None = None
    deployment: DeploymentRef | None = None
    tags: frozenset[str] = frozenset()


_scheduled: ContextVar[ScheduledRunInfo | None] = ContextVar("daskflow_scheduled_run", default=None)


@contextmanager
def starting_scheduled_run(info: ScheduledRunInfo) -> Iterator[None]:
    """The flow run started in this block (not its subflows) is due at ``info``'s time, for its deployment."""
    token = _scheduled.set(info)
    try:
        yield
    finally:
        _scheduled.reset(token)


def scheduled_run_info() -> ScheduledRunInfo | None:
    """What :func:`starting_scheduled_run` said about the flow run being started here, if anything."""
    return _scheduled.get()


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
    # Its flow run's tags, scheduled time, attempt and deployment (daskflow.runtime).
    flow_facts: FlowRunFacts | None = None

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
            "there is no flow or task run here: this can only be called while a @flow or @task function is running"
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


# A deadline (time.monotonic()) for the long wait in progress in this context: set by
# ``concurrency(..., timeout_seconds=)`` around its wait for slots, so the coordinations' step-wise
# waits, which already watch run_cancelled(), give up at the deadline too.
_wait_deadline: ContextVar[float | None] = ContextVar("daskflow_wait_deadline", default=None)


def run_cancelled() -> bool:
    """True when a long wait should give up: the task run's flow run was cancelled, or the
    wait's deadline (see :func:`wait_deadline`) has passed."""
    deadline = _wait_deadline.get()
    if deadline is not None and time.monotonic() >= deadline:
        return True
    ctx = _task_ctx.get()
    event = ctx.cancel_event if ctx is not None else None
    return event is not None and event.is_set()


@contextmanager
def wait_deadline(seconds: float | None) -> Iterator[None]:
    """Long waits in this block give up (as if cancelled) once ``seconds`` have passed; None: no deadline."""
    if seconds is None:
        yield
        return
    token = _wait_deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _wait_deadline.reset(token)


def deadline_passed() -> bool:
    """True inside :func:`wait_deadline` once its time is up."""
    deadline = _wait_deadline.get()
    return deadline is not None and time.monotonic() >= deadline


# Threads in a conversation with the cluster about a slot or a lock (taking one, giving one back).
# An exception raised into such a thread from outside (a cancel interrupts the threads of its
# runs) could land after the scheduler granted a lease and before anyone recorded it: the lease
# would then be refreshed by its worker for ever and never released. The canceller leaves these
# threads alone; they see the run's cancel event instead (the engine hands on a slot taken then).
_shielded_threads: set[int] = set()


@contextmanager
def shielded() -> Iterator[None]:
    """Around taking or giving back a cluster slot or lock: no interrupt is raised in this thread."""
    ident = threading.get_ident()
    if ident in _shielded_threads:  # nested: the outer block ends the shield
        yield
        return
    _shielded_threads.add(ident)
    try:
        yield
    finally:
        _shielded_threads.discard(ident)


def shielded_threads() -> frozenset[int]:
    """The threads inside :func:`shielded` now."""
    return frozenset(_shielded_threads)


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


def enter_task_run(ctx: TaskRunContext) -> Token[TaskRunContext | None]:
    """Make ``ctx`` the current task run; :func:`leave_task_run` with the token restores the previous one.

    The pair is :func:`use_task_run_context` without a generator: the lean path of a
    direct task call (daskflow.engine.direct) enters a run for every call.
    """
    return _task_ctx.set(ctx)


def leave_task_run(token: Token[TaskRunContext | None]) -> None:
    _task_ctx.reset(token)


@contextmanager
def use_task_run_context(ctx: TaskRunContext) -> Iterator[TaskRunContext]:
    token = _task_ctx.set(ctx)
    try:
        yield ctx
    finally:
        _task_ctx.reset(token)


# Tags from the enclosing ``with tags(...)`` blocks. A run started inside takes them when it is
# created (in the thread that starts it), so a task run carries them to a Dask worker in its record.
_tags: ContextVar[frozenset[str]] = ContextVar("daskflow_tags", default=frozenset())


@contextmanager
def tags(*names: str) -> Iterator[frozenset[str]]:
    """Add ``names`` to every flow run and task run started inside the block (nested blocks add up).

    Yields the tags now in force. As in Prefect, a run's tags are its own
    (``@task(tags=...)``) plus these; they are kept in the run history
    (``daskflow runs ls --tag``) and count as the run's tags for concurrency limits.
    """
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"tags(): every tag must be a non-empty string, got {name!r}; e.g. with tags('etl', 'nightly'):"
            )
    current = _tags.get() | frozenset(names)
    token = _tags.set(current)
    try:
        yield current
    finally:
        _tags.reset(token)


def get_current_tags() -> frozenset[str]:
    """The tags of the enclosing ``with tags(...)`` blocks (empty outside any)."""
    return _tags.get()


class IsolationLevel(enum.Enum):
    """How concurrent runs of one key see each other (a task's ``cache_isolation``: None / "serializable")."""

    READ_COMMITTED = "READ_COMMITTED"
    SERIALIZABLE = "SERIALIZABLE"


class CommitMode(enum.Enum):
    EAGER = "EAGER"
    LAZY = "LAZY"
    OFF = "OFF"


class TransactionState(enum.Enum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    STAGED = "STAGED"
    COMMITTED = "COMMITTED"
    ROLLED_BACK = "ROLLED_BACK"


class Transaction:
    """A unit of work whose task runs' results commit together (see :mod:`daskflow.transactions`).

    ``key`` names it (for a task's own commit, the run's cache key), ``value``
    is what was committed, ``get``/``set`` hold values that hooks share. A
    ``transaction()`` block also records the task runs started inside it.
    """

    def __init__(
        self,
        key: str | None = None,
        *,
        value: Any = None,
        state: TransactionState = TransactionState.PENDING,
        isolation_level: IsolationLevel | None = None,
        commit_mode: CommitMode | None = None,
    ) -> None:
        self.key = key
        self.value = value
        self.state = state
        self.isolation_level = isolation_level
        self.commit_mode = commit_mode
        self._values: dict[str, Any] = {}
        self.runs: list[tuple[Any, TaskRun]] = []  # (task, its run) started inside the block, in order
        self._runs_lock = threading.Lock()

    def get(self, name: str, default: Any = None) -> Any:
        """A value set on this transaction with :meth:`set`; ``default`` if there is none."""
        return self._values.get(name, default)

    def set(self, name: str, value: Any) -> None:
        self._values[name] = value

    def track(self, task: Any, runs: list[TaskRun]) -> None:
        """Record task runs started inside the block (called as they are created)."""
        with self._runs_lock:
            self.runs.extend((task, run) for run in runs)

    def is_committed(self) -> bool:
        return self.state is TransactionState.COMMITTED

    def is_rolled_back(self) -> bool:
        return self.state is TransactionState.ROLLED_BACK

    def is_staged(self) -> bool:
        return self.state is TransactionState.STAGED

    def is_active(self) -> bool:
        return self.state is TransactionState.ACTIVE

    def __repr__(self) -> str:
        return f"Transaction(key={self.key!r}, state={self.state.value})"


_transaction: ContextVar[Transaction | None] = ContextVar("daskflow_transaction", default=None)


def get_transaction() -> Transaction | None:
    """The ``transaction()`` block this code runs in, or None."""
    return _transaction.get()


@contextmanager
def use_transaction(txn: Transaction) -> Iterator[Transaction]:
    token = _transaction.set(txn)
    try:
        yield txn
    finally:
        _transaction.reset(token)
