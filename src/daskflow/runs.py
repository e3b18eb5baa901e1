"""Run records: what is known about one task run or one flow run.

A run record is the engine's notebook for a run: its identity (id, name, the
task or flow it runs, its parent), its state history, its attempts and
timings, and where it ran. The engine writes it; everything that watches runs
(the console, the run store, a progress bar, the Dask runner forwarding states
from workers) listens through :func:`add_state_listener`, so the engine needs
to know none of them.

Listeners are called synchronously on every state change, in the thread that
changed it: they must be quick and must not raise (an exception is logged and
swallowed so a broken observer never fails a run).

A flow run's final state is a :class:`FlowRunState`: a state that knows its
run (``state.flow_run``), which is how the caller of ``my_flow(return_state=True)``
reaches the run record. The back-reference lives here, on a subclass of the
runs layer, so ``states`` knows nothing of runs.

In a notebook a run record shows itself as an HTML card (``_repr_html_``),
drawn by :mod:`daskflow.report.notebook` through the hook in ``states``.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Union

from daskflow.states import Pending, State, StateType, notebook_html

__all__ = [
    "DeploymentRef",
    "FlowRun",
    "FlowRunState",
    "StateListener",
    "TaskRun",
    "add_state_listener",
    "format_seconds",
    "new_run_id",
    "remove_state_listener",
]

_log = logging.getLogger("daskflow.runs")

StateListener = Callable[[Union["TaskRun", "FlowRun"], State], None]
_listeners: list[StateListener] = []
_listeners_lock = threading.Lock()


def add_state_listener(listener: StateListener) -> None:
    """Call ``listener(run, state)`` on every state change of every run in this process."""
    with _listeners_lock:
        if listener not in _listeners:
            _listeners.append(listener)


def remove_state_listener(listener: StateListener) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _fresh_prefix() -> None:
    global _id_middle, _id_counter
    hex_ = uuid.uuid4().hex
    # UUID-shaped: 12 random hex digits fixed per process in the middle, a 12-digit counter at the end.
    _id_middle = f"-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-"
    _id_counter = itertools.count(int(hex_[20:], 16) & 0xFFFFFFFF)


_id_middle = ""
_id_counter: Iterator[int] = itertools.count()
_fresh_prefix()
os.register_at_fork(after_in_child=_fresh_prefix)  # a forked child must not repeat its parent's ids
# An odd multiplier permutes the 32-bit numbers: the first 8 digits differ between any two of
# this process's first 2**32 ids, so a short prefix (as `daskflow runs show 1f3a9c02`) names one run.
_SPREAD = 0x9E3779B1


def new_run_id() -> str:
    """A new run id: unique across processes, and cheap enough for the hot path."""
    n = next(_id_counter)
    return f"{(n * _SPREAD) & 0xFFFFFFFF:08x}{_id_middle}{n & 0xFFFFFFFFFFFF:012x}"


def _notify(run: TaskRun | FlowRun, state: State) -> None:
    for listener in tuple(_listeners):
        try:
            listener(run, state)
        except Exception:  # an observer must never fail a run
            _log.exception("state listener %r failed", listener)


@dataclass(eq=False, slots=True, kw_only=True)
class _Run:
    """What task runs and flow runs share: identity, state history and timings."""

    id: str
    name: str
    tags: frozenset[str] = frozenset()
    state: State = field(default_factory=Pending)
    state_history: list[State] = field(default_factory=list)
    run_count: int = 0
    start_time: float | None = None
    end_time: float | None = None

    def __post_init__(self) -> None:
        self.state_history.append(self.state)

    def set_state(self, state: State, *, notify: bool = True) -> None:
        """Make ``state`` the run's state; ``notify=False`` tells no state listener (the caller
        hands the change to the one that needs it: see daskflow.engine.direct)."""
        self.state = state
        self.state_history.append(state)
        if state.type is StateType.RUNNING and self.start_time is None:
            self.start_time = state.epoch
        elif state.is_final():
            self.end_time = state.epoch
        if notify and _listeners:
            _notify(self, state)  # type: ignore[arg-type]

    @property
    def duration(self) -> float | None:
        """Seconds from the first Running state to the final state."""
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    def _repr_html_(self) -> str | None:
        return notebook_html(self)


@dataclass(eq=False, slots=True, kw_only=True)
class TaskRun(_Run):
    """One run of a task: a direct call, a ``.submit`` or one item of a ``.map``."""

    task_name: str
    flow_run_id: str | None = None
    map_index: int | None = None
    upstream_ids: tuple[str, ...] = ()
    cache_key: str | None = None
    worker: str | None = None
    slot_wait: float = 0.0  # seconds spent waiting for concurrency slots and rate limits

    @property
    def retries(self) -> int:
        """How many times the run was retried (attempts after the first)."""
        return max(self.run_count - 1, 0)

    @property
    def cache_hit(self) -> bool:
        return self.state.is_cached()

    def __repr__(self) -> str:
        return f"TaskRun(name={self.name!r}, state={self.state!r})"


@dataclass(frozen=True, slots=True)
class DeploymentRef:
    """The deployment a flow run was started for: what ``daskflow.runtime.deployment`` tells."""

    id: str | None
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True, kw_only=True)
class FlowRun(_Run):
    """One run of a flow, with the task runs it started (in submission order)."""

    flow_name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    parent_flow_run_id: str | None = None
    task_runs: list[TaskRun] = field(default_factory=list)
    dashboard_link: str | None = None  # the Dask dashboard of the cluster the run used, if any
    entrypoint: str | None = None  # where the flow imports from, recorded so that the run can be retried
    # When the run was due: its schedule's time for a deployment or flow.serve run, else its creation.
    scheduled_start_time: datetime | None = None
    deployment: DeploymentRef | None = None  # the deployment this run is for, if any

    @property
    def cache_hits(self) -> int:
        """How many of this flow's task runs took their value from the cache."""
        return sum(1 for run in self.task_runs if run.state.is_cached())

    @property
    def cache_misses(self) -> int:
        """How many of this flow's task runs had a cache key, found no entry and ran."""
        return sum(1 for run in self.task_runs if run.cache_key is not None and not run.state.is_cached())

    def task_run_counts(self) -> dict[str, int]:
        """How many of this flow's task runs are in each state (by state name)."""
        counts: dict[str, int] = {}
        for run in self.task_runs:
            counts[run.state.name] = counts.get(run.state.name, 0) + 1
        return counts

    def __repr__(self) -> str:
        return f"FlowRun(name={self.name!r}, flow={self.flow_name!r}, state={self.state!r})"


class FlowRunState(State):
    """The final state of a flow run, knowing its run: ``state.flow_run`` (see the module docstring).

    It is the run's own final state (``state.flow_run.state is state``). Leaving
    the process it becomes a plain :class:`State`: the run is not pickled.
    """

    __slots__ = ("flow_run",)

    flow_run: FlowRun

    @classmethod
    def of(cls, state: State, run: FlowRun) -> FlowRunState:
        """``state`` (type, name, message, value, error, time) as the final state of ``run``."""
        new = cls.__new__(cls)
        for name in State.__slots__:
            setattr(new, name, getattr(state, name))
        new.flow_run = run
        return new


def format_seconds(seconds: float | None, missing: str = "\u2014") -> str:
    """A duration as a table cell shows it: ``420 ms``, ``3.25 s``, ``12.3 s``, ``2 min 05 s``, ``1 h 03 min``.

    ``missing`` stands for a run that has not ended (None).
    """
    if seconds is None:
        return missing
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
