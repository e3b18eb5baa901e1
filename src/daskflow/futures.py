"""Futures: handles on task runs that were submitted and may still be running.

``task.submit()`` returns a :class:`DaskflowFuture`; ``task.map()`` returns a
:class:`DaskflowFutureList` of them. A future resolves to the run's final
:class:`~daskflow.states.State`; ``.result()`` unwraps it. Each task runner
supplies its own future class over its own machinery (a
``concurrent.futures.Future`` here, a ``distributed.Future`` on Dask); they
share this interface, and :func:`wait` and :func:`as_completed` work on any
mix of them through ``add_done_callback``.
"""

from __future__ import annotations

import abc
import concurrent.futures
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from daskflow.annotations import BaseAnnotation
from daskflow.runs import TaskRun
from daskflow.states import Cancelled, State

__all__ = [
    "DaskflowFuture",
    "DaskflowFutureList",
    "DoneAndNotDoneFutures",
    "FutureItem",
    "LocalFuture",
    "PrefectFuture",
    "PrefectFutureList",
    "as_completed",
    "fetch_all",
    "resolve_futures_to_results",
    "resolve_futures_to_states",
    "wait",
]

R = TypeVar("R")


class DaskflowFuture(abc.ABC, Generic[R]):
    """A submitted task run: its id, its current state, and its eventual value."""

    __slots__ = ("task_run",)

    def __init__(self, task_run: TaskRun) -> None:
        self.task_run = task_run

    @property
    def task_run_id(self) -> str:
        return self.task_run.id

    @property
    def state(self) -> State:
        """The final state once done, else the latest state known here."""
        final = self._final_state()
        return final if final is not None else self.task_run.state

    @abc.abstractmethod
    def _final_state(self) -> State | None:
        """The final state if the run is done, else None; never blocks."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is final or ``timeout`` seconds passed."""

    @abc.abstractmethod
    def add_done_callback(self, fn: Callable[[DaskflowFuture[R]], None]) -> None:
        """Call ``fn(self)`` once the run is final (at once if it already is)."""

    def done(self) -> bool:
        return self._final_state() is not None

    @classmethod
    def fetch_many(cls, futures: Sequence[DaskflowFuture[Any]], timeout: float | None = None) -> None:
        """Wait for those ``futures`` that are of this class and bring their final states here at once,
        where fetching them one by one would cost a round trip each (within ``timeout`` seconds; what
        is not done then is left to each future's own wait). Nothing by default."""

    def known_state(self) -> State | None:
        """The final state as this process knows it, without waiting or asking anywhere else; else None.

        What a cache key over this run may be computed from where a run over it
        is submitted. A runner whose values live elsewhere gives a completed
        state whose value is a :class:`~daskflow.states.RemoteValue` (its data
        version only), or None.
        """
        return None

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The run's value; raises the run's error if it failed (unless told not to)."""
        self.wait(timeout)
        final = self._final_state()
        if final is None:
            raise TimeoutError(
                f"task run {self.task_run.name!r} did not finish within {timeout} s; "
                "call .result() without timeout to wait for it"
            )
        value: R = final.result(raise_on_failure=raise_on_failure)
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task_run={self.task_run.name!r}, state={self.state!r})"


class FutureItem(BaseAnnotation[Any]):
    """An item of the list a future holds, standing in a ``.map``'s arguments where the list stays
    elsewhere (a Dask runner's ``.map`` over a future). ``value`` is the future."""

    __slots__ = ()

    def known_state(self) -> State | None:
        """The item's state as this process knows it (see :meth:`DaskflowFuture.known_state`), else None."""
        return None


class LocalFuture(DaskflowFuture[R]):
    """A future over a ``concurrent.futures.Future`` that resolves to the final state."""

    __slots__ = ("_future",)

    def __init__(self, task_run: TaskRun, future: concurrent.futures.Future[State]) -> None:
        super().__init__(task_run)
        self._future = future

    def _final_state(self) -> State | None:
        if not self._future.done():
            return None
        if self._future.cancelled():
            return Cancelled("the run was cancelled before it started")
        return self._future.result()

    def known_state(self) -> State | None:
        return self._final_state()  # in this process

    def wait(self, timeout: float | None = None) -> None:
        concurrent.futures.wait([self._future], timeout=timeout)

    def add_done_callback(self, fn: Callable[[DaskflowFuture[R]], None]) -> None:
        self._future.add_done_callback(lambda _: fn(self))


class DaskflowFutureList(list[DaskflowFuture[R]]):
    """The futures of one ``.map()``: a list, plus ``result()`` and ``wait()`` over all."""

    def wait(self, timeout: float | None = None) -> None:
        wait(self, timeout=timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        deadline = None if timeout is None else time.monotonic() + timeout
        fetch_all(self, timeout)
        values = []
        for future in self:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            values.append(future.result(timeout=remaining, raise_on_failure=raise_on_failure))
        return values


class DoneAndNotDoneFutures(NamedTuple):
    done: set[DaskflowFuture[Any]]
    not_done: set[DaskflowFuture[Any]]


def _completion_queue(
    futures: Iterable[DaskflowFuture[Any]],
) -> tuple[list[DaskflowFuture[Any]], queue.SimpleQueue[DaskflowFuture[Any]]]:
    pending = list(dict.fromkeys(futures))
    done_queue: queue.SimpleQueue[DaskflowFuture[Any]] = queue.SimpleQueue()
    for future in pending:
        future.add_done_callback(done_queue.put)
    return pending, done_queue


def wait(futures: Iterable[DaskflowFuture[Any]], timeout: float | None = None) -> DoneAndNotDoneFutures:
    """Wait until every future is done or ``timeout`` seconds passed; say which are done."""
    pending, done_queue = _completion_queue(futures)
    done: set[DaskflowFuture[Any]] = set()
    deadline = None if timeout is None else time.monotonic() + timeout
    while len(done) < len(pending):
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        try:
            done.add(done_queue.get(timeout=remaining))
        except queue.Empty:
            break
    return DoneAndNotDoneFutures(done, set(pending) - done)


def as_completed(futures: Iterable[DaskflowFuture[R]], timeout: float | None = None) -> Iterator[DaskflowFuture[R]]:
    """Yield the futures as they finish. Raises ``TimeoutError`` if ``timeout`` passes first."""
    pending, done_queue = _completion_queue(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[int] = set()
    while len(seen) < len(pending):
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                raise queue.Empty
            future = done_queue.get(timeout=remaining)
        except queue.Empty:
            left = len(pending) - len(seen)
            raise TimeoutError(f"{left} of {len(pending)} futures unfinished after {timeout} s") from None
        if id(future) not in seen:
            seen.add(id(future))
            yield future


# Prefect's names for the same objects, so annotations and isinstance checks keep working.
PrefectFuture = DaskflowFuture
PrefectFutureList = DaskflowFutureList


def fetch_all(futures: Iterable[DaskflowFuture[Any]], timeout: float | None = None) -> None:
    """Wait for many futures and bring their final states here at once, each class its own way
    (:meth:`DaskflowFuture.fetch_many`): what then reads them one by one finds them here."""
    listed = futures if isinstance(futures, list) else list(futures)
    if len(listed) > 1:
        for cls in {type(future) for future in listed}:
            cls.fetch_many(listed, timeout)


def _futures_in(value: Any) -> list[DaskflowFuture[Any]]:
    """The futures :func:`_replace_futures` would replace in ``value``."""
    found: list[DaskflowFuture[Any]] = []
    _replace_futures(value, found.append)
    return found


def _replace_futures(value: Any, leaf: Callable[[DaskflowFuture[Any]], Any]) -> Any:
    if isinstance(value, DaskflowFuture):
        return leaf(value)
    if isinstance(value, dict):
        items = {k: _replace_futures(v, leaf) for k, v in value.items()}
        return items if type(value) is dict else type(value)(items)
    if isinstance(value, (list, tuple, set, frozenset)):
        listed = [_replace_futures(v, leaf) for v in value]
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*listed)
        return listed if isinstance(value, DaskflowFutureList) else type(value)(listed)
    return value


def resolve_futures_to_states(value: Any) -> Any:
    """``value`` with every future in it (in lists, tuples, sets, dicts) waited for and replaced by its final state."""

    def leaf(future: DaskflowFuture[Any]) -> State:
        future.wait()
        return future.state

    fetch_all(_futures_in(value))
    return _replace_futures(value, leaf)


def resolve_futures_to_results(value: Any) -> Any:
    """``value`` with every future in it replaced by its run's value (raising a failed run's error)."""
    fetch_all(_futures_in(value))
    return _replace_futures(value, lambda future: future.result())
