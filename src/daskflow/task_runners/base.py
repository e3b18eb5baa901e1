"""The task runner interface: one primitive, submitting a batch of calls.

A task runner decides where task runs execute. It has one primitive,
:meth:`TaskRunner.submit_batch`: a ``.submit`` is a batch of one, a ``.map`` is
one batch of all its calls, so a runner that talks to a remote scheduler makes
one round trip per map. Whatever the runner, each call runs through the task
engine (:func:`daskflow.engine.run_task_sync`), so states, retries and
timeouts behave the same everywhere.

A flow run uses a fresh copy of its flow's runner (:meth:`duplicate`) as a
context manager: entering starts it, leaving waits for every run submitted to
it; leaving on an interrupt cancels what has not finished (:meth:`cancel_all`).
A direct task call inside a flow (``my_task(x)``) goes through :meth:`call`;
local runners run it right there in the flow's thread.

Cached runs write their entries behind their values (see
:mod:`daskflow.results.write_behind`); before its flow run may end, the flow
engine asks the runner to :meth:`drain_writes`: wait for every run, then for
every entry they are writing, wherever they ran.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from daskflow.engine import TaskCall, run_task_sync
from daskflow.futures import DaskflowFuture
from daskflow.results import write_behind
from daskflow.results.write_behind import WriteReport
from daskflow.states import State, item_state

__all__ = ["TaskRunner"]


class TaskRunner(abc.ABC):
    """Where a flow's task runs execute. Subclasses implement ``submit_batch``."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._started = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def duplicate(self) -> Self:
        """A fresh, unstarted runner with the same settings (one per flow run)."""
        return type(self)(**self._settings)

    @property
    def dashboard_link(self) -> str | None:
        """The URL of the dashboard of the cluster this runner uses, if it has one (None here)."""
        return None

    def start(self) -> None:
        self._started = True

    def shutdown(self) -> None:
        """Wait for every submitted run, then release resources."""
        self._started = False

    def cancel_all(self) -> None:
        """Cancel every run not yet finished: unstarted ones never start."""

    def wait_for_runs(self) -> None:
        """Wait until every run submitted so far has ended (here: they end as they are submitted)."""

    def drain_writes(self, flow_run_id: str) -> WriteReport:
        """Wait for every run, then until the cache entries flow run ``flow_run_id`` is writing in this
        process have landed or failed (bounded by ``daskflow.results.write_behind.drain_timeout``)."""
        self.wait_for_runs()
        return write_behind.drain(flow_run_id)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.cancel_all()
        self.shutdown()

    @abc.abstractmethod
    def submit_batch(self, calls: Sequence[TaskCall]) -> list[DaskflowFuture[Any]]:
        """Start every call (in order); return one future per call."""

    def submit(self, call: TaskCall) -> DaskflowFuture[Any]:
        return self.submit_batch([call])[0]

    def expand_future(self, future: DaskflowFuture[Any]) -> list[Any]:
        """The items to map over when ``.map`` is given a future of a list.

        A versioned list (a cached run's) gives one state per item, versioned by
        position and not read yet, so each run's cache key is known without it.
        """
        future.wait()
        state = future.state
        deferred = state.deferred if state.is_completed() else None
        if deferred is None or deferred.length is None:  # not a versioned list or tuple: its items as they are
            return list(future.result())
        return [item_state(state, index) for index in range(deferred.length)]

    def call(self, call: TaskCall) -> State:
        """Run one call to its final state for a direct task call; here, in this thread."""
        return run_task_sync(call)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings.items())
        return f"{self.name}({args})"
