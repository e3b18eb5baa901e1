"""The sequential runner: every task run executes at once, in the caller's thread.

The simplest runner and the cheapest: ``submit`` runs the task to its final
state before returning a future that is already done. Use it for debugging
(a breakpoint in a task stops the flow where you expect) and for flows whose
tasks are too small to be worth a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from daskflow.engine import TaskCall, run_task_sync
from daskflow.futures import DaskflowFuture
from daskflow.runs import TaskRun
from daskflow.states import State
from daskflow.task_runners.base import TaskRunner

__all__ = ["FinishedFuture", "SequentialTaskRunner", "submit_misses"]


class FinishedFuture(DaskflowFuture[Any]):
    """A future whose run had already finished when it was made."""

    __slots__ = ("_state",)

    def __init__(self, task_run: TaskRun, state: State) -> None:
        super().__init__(task_run)
        self._state = state

    def _final_state(self) -> State | None:
        return self._state

    def known_state(self) -> State | None:
        return self._state

    def wait(self, timeout: float | None = None) -> None:
        return None

    def add_done_callback(self, fn: Callable[[DaskflowFuture[Any]], None]) -> None:
        fn(self)


def submit_misses(
    calls: Sequence[TaskCall],
    hits: Sequence[State | None],
    submit: Callable[[Sequence[TaskCall]], Sequence[DaskflowFuture[Any]]],
) -> list[DaskflowFuture[Any]]:
    """One future per call, in order: a finished one for each call with a hit (its final state), the
    future ``submit`` gives for each of the others, which are submitted in one batch."""
    misses = [call for call, hit in zip(calls, hits) if hit is None]
    if len(misses) == len(calls):
        return list(submit(calls))
    submitted = iter(submit(misses) if misses else ())
    return [
        FinishedFuture(call.task_run, hit) if hit is not None else next(submitted) for call, hit in zip(calls, hits)
    ]


class SequentialTaskRunner(TaskRunner):
    """Runs each task run to completion, one after another, in the calling thread."""

    def __init__(self) -> None:
        super().__init__()

    def submit_batch(self, calls: Sequence[TaskCall]) -> list[DaskflowFuture[Any]]:
        return [FinishedFuture(call.task_run, run_task_sync(call)) for call in calls]
