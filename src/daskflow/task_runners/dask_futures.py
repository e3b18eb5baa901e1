"""The client's handles on a Dask runner's task runs: :class:`DaskFuture` and :class:`MapItem`.

A :class:`DaskFuture` is what ``.submit``/``.map`` return on the Dask runner.
It settles once (see :mod:`.dask`, step 3 of the trace): by its run's final
state as the worker reported it (the event router calls
:meth:`DaskFuture.settle_reported`), or by the client's own judgement when
the Dask task itself erred, was lost or was cancelled
(:meth:`DaskFuture.settle`). Waiting, recovering and bounding the waits are
the runner's (:class:`~daskflow.task_runners.dask.DaskTaskRunner`); the
future asks it. A :class:`MapItem` stands for one item of an upstream's list
value in a ``.map`` over a future.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import distributed

from daskflow.engine import TaskCall
from daskflow.futures import DaskflowFuture, FutureItem
from daskflow.runs import TaskRun
from daskflow.states import Crashed, RemoteValue, State, StateType, item_state
from daskflow.task_runners.dask_events import RELEASED_PARAMETERS
from daskflow.task_runners.dask_values import on_client

if TYPE_CHECKING:
    from daskflow.task_runners.dask import DaskTaskRunner

__all__ = ["NO_UPSTREAMS", "DaskFuture", "MapItem", "MappedList"]

_FETCH_CHUNK = 10_000  # values fetched in one round trip by DaskFuture.fetch_many
# What differs between the calls of one ``.map``: the rest (the task, the flow's facts, wait_for,
# the transaction...) is the same object in every call of the batch (engine.calls.make_calls).
_OWN_FIELDS = ("task_run", "parameters", "known_key")
_shared_fields = operator.attrgetter(*(name for name in TaskCall.__slots__ if name not in _OWN_FIELDS))


class MappedList:
    """What the items of one ``.map`` over a future share: where the list is and what is known of it.

    ``key``: the upstream's Dask key when the map was made (a crash retry gives the
    upstream a new key; then each item is taken from the list itself). ``where``: the
    worker holding the list, next to which each item's task is made. ``known``: the
    upstream's final state as the client knows it (:meth:`DaskFuture.known_state`), from
    which an item's cache key may be computed on the client. ``prefix``: of the items'
    Dask keys, ``<task>-item-<run>``.
    """

    __slots__ = ("key", "where", "known", "prefix")

    def __init__(self, key: Any, where: str | None, known: State | None, prefix: str) -> None:
        self.key = key
        self.where = where
        self.known = known
        self.prefix = prefix


class MapItem(FutureItem):
    """Item ``index`` of the list that an upstream future will hold (a ``.map`` over a future).

    ``item`` is the Dask future of a small task that takes that item out of the list
    where the list lives, made when the run is submitted (a run found cached on the
    client needs none), so the run that maps over it depends on its item only: the
    runs are asked for on the workers in turn and each item travels to its run, never
    the whole list to every worker (:meth:`.dask_submit.DaskSubmitting._places`).
    """

    __slots__ = ("index", "item", "source")

    def __init__(self, value: Any, index: int = 0, source: MappedList | None = None) -> None:
        super().__init__(value)
        self.index = index
        self.item: distributed.Future[Any] | None = None
        self.source = source

    def known_state(self) -> State | None:
        known = None if self.source is None else self.source.known
        return None if known is None else item_state(known, self.index)

    def __reduce__(self) -> tuple[Any, ...]:
        return (MapItem, (self.value, self.index))


class DaskFuture(DaskflowFuture[Any]):
    """A task run on a Dask cluster; resolves to its final state.

    It settles once, by one of: the run's final state reported by its worker
    (:meth:`settle_reported`, from the event stream), or the client's own
    judgement when the Dask task itself failed, was lost or was cancelled
    (:meth:`settle`). A reported state's value or error stays on the cluster,
    in the Dask task's result, until :meth:`_final_state` is asked for it.
    """

    # A map of 100,000 items makes 100,000 of these: no per-future lock or list (recovery
    # claims a future under the runner's lock; a run without upstreams shares one empty tuple).
    # No TaskCall of its own either (176 bytes each): the calls of one map differ only in their
    # run record, arguments and known cache key, so a future keeps those and one template call
    # per map (:meth:`many`), and :attr:`call` rebuilds its call when asked (the event router
    # while the run is in flight, recovery), held in ``_call`` until the run's end is reported.
    # ``attempts``: the attempts the run had made before its current Dask task started.
    # ``_fetched``: whether ``_settled`` holds all it will (else its value is in the Dask task's result).
    # ``_remote``: the data version (and length) of a versioned value its worker reported, else None.
    __slots__ = (
        "_runner", "_template", "_parameters", "_known_key", "_call", "dask_future", "upstreams", "_settled",
        "_fetched", "attempts", "_remote",
    )  # fmt: skip
    _call: TaskCall | None

    def __init__(
        self,
        runner: DaskTaskRunner,
        call: TaskCall,
        dask_future: Any,
        upstreams: Sequence[DaskFuture],
        template: TaskCall | None = None,
    ) -> None:
        super().__init__(call.task_run)
        self._runner = runner
        self.call = call
        if template is not None and all(map(operator.is_, _shared_fields(call), _shared_fields(template))):
            self._template = template  # the map's, the same as this call but for the call's own fields
            self._call = None  # the call itself goes with the caller's list
        self.dask_future: distributed.Future[Any] = dask_future  # set by the submitter once Dask made it
        self.upstreams = upstreams
        self._settled: State | None = None
        self._fetched = True
        self._remote: RemoteValue | None = None
        self.attempts = call.task_run.run_count

    @classmethod
    def many(cls, runner: DaskTaskRunner, calls: Sequence[TaskCall]) -> list[DaskFuture]:
        """The futures of a batch of calls, sharing one template call."""
        if not calls:
            return []
        # The first call without its arguments: the template keeps no item's arguments alive.
        template = _rebuild(calls[0], calls[0].task_run, {}, None)
        return [cls(runner, call, None, NO_UPSTREAMS, template) for call in calls]

    @property
    def call(self) -> TaskCall:
        """The run's call: its own, or rebuilt from its map's template (kept until the run's end is reported)."""
        call = self._call
        if call is None:
            call = self._call = _rebuild(self._template, self.task_run, self._parameters, self._known_key)
        return call

    @call.setter
    def call(self, call: TaskCall) -> None:
        self._template = self._call = call
        self._parameters = call.parameters
        self._known_key = call.known_key

    def done(self) -> bool:
        return self._settled is not None

    def known_state(self) -> State | None:
        """Its state once fetched; before, a completed run's versioned value as its worker reported it
        (a :class:`~daskflow.states.RemoteValue`: the version, never the value); else None."""
        settled = self._settled
        if settled is None or not settled.is_completed():
            return None
        if self._fetched:
            return settled
        remote = self._remote
        return None if remote is None else State(StateType.COMPLETED, settled.name, data=remote)

    def _final_state(self) -> State | None:
        settled = self._settled
        if settled is None or self._fetched:
            return settled
        bound = self._runner._lost_timeout
        rerun = False
        while True:
            try:
                # The value (or the error) comes to the client: it was asked for (a hit left in storage
                # comes as a reference). Bounded: if every worker holding it died and none can compute
                # it again, Dask would wait forever.
                result = self.dask_future.result(timeout=bound)
            except TimeoutError:
                state: State = Crashed(
                    f"task run {self.task_run.name!r} ended {settled.name}, but its result could not be fetched "
                    f"from the Dask cluster within {bound:g} s (the workers holding it died, and no worker "
                    "computed it again); the bound is dask.config daskflow.dask.lost_timeout"
                )
            except Exception as exc:  # lost with its workers, for good, or released
                if not settled.is_completed():
                    self._fetched = True  # a failure's message and traceback came with its state
                    return settled
                if not rerun and self._runner.rerun_lost(self):
                    # Its worker died after reporting the end and before Dask took the value: Dask
                    # computes it again from its graph (the run's arguments are there, no longer
                    # here), and the history records the re-run. Once: lost again, the run crashes.
                    rerun = True
                    continue
                state = Crashed(
                    f"task run {self.task_run.name!r} completed, then the Dask worker holding its value died and "
                    f"Dask could not recompute it ({type(exc).__name__}: {exc})",
                    exc,
                )
            else:
                return self._take(result)
            break
        return self._keep(state)

    def _take(self, result: State) -> State:
        """Settle on the state Dask's result holds: the run's value (or error), fetched."""
        settled = self._settled
        assert settled is not None
        state = on_client(result, self._runner.client, self.dask_future)
        if state.type != settled.type and settled.is_completed():
            # Dask computed the lost value again (a recorded re-run) and that attempt did not
            # complete: there is no value to hand out, and the reported state holds none.
            state = Crashed(
                f"task run {self.task_run.name!r} completed, then the Dask worker holding its value died; "
                f"Dask computed it again and that attempt ended {state.name}: {state.message}"
            )
        elif state.type != settled.type:  # not the attempt whose end was reported: that one's is the truth
            state = settled
        return self._keep(state)

    def _keep(self, state: State) -> State:
        settled = self._settled
        if state.is_crashed() and settled is not None and settled.is_completed():
            self.task_run.set_state(state)  # after the Completed whose value is gone
        self._settled = state
        self._fetched = True
        return state

    @classmethod
    def fetch_many(cls, futures: Sequence[DaskflowFuture[Any]], timeout: float | None = None) -> None:
        """Fetch the values of the ``futures`` that ended on the cluster in one round trip per runner and
        chunk, not one each (``.map(...).result()`` of 3,000 runs: 3,000 round trips). What cannot be
        fetched so (a value lost with its worker, say) is left to each future's own fetch."""
        by_runner: dict[int, list[DaskFuture]] = {}
        for future in futures:
            if isinstance(future, DaskFuture) and not (future._settled is not None and future._fetched):
                by_runner.setdefault(id(future._runner), []).append(future)
        for group in by_runner.values():
            runner = group[0]._runner
            client = runner.client
            try:
                runner.wait_watched(group, timeout)
            except TimeoutError:
                pass  # those done are fetched; the caller's own wait says the rest is late
            runner.await_reports([f for f in group if f._settled is None and f.dask_future.status == "finished"])
            bound = runner._lost_timeout if timeout is None else min(timeout, runner._lost_timeout)
            for start in range(0, len(group), _FETCH_CHUNK):
                chunk = [
                    f
                    for f in group[start : start + _FETCH_CHUNK]
                    if f._settled is not None and not f._fetched and f.dask_future.status == "finished"
                ]
                if len(chunk) < 2 or client is None:
                    continue
                try:
                    results = client.sync(  # type: ignore[no-untyped-call]
                        client._gather, [f.dask_future for f in chunk], errors="raise", callback_timeout=bound
                    )
                except Exception:  # lost, erred or slow: each future's own fetch says what became of it
                    continue
                for future, result in zip(chunk, results):
                    if not future._fetched:
                        future._take(result)

    def settle(self, state: State) -> None:
        """The client decided the run's final state (a crash, a loss, a cancel): nothing to fetch."""
        self._settled = state
        self._fetched = True

    def settle_reported(self, state: State, value: RemoteValue | None = None) -> None:
        """The run's end, as its worker reported it (the event router calls this, then releases the
        call's arguments: the cluster keeps its own graph for recomputing a lost value, which is how
        a lost value is computed again, never by submitting the call anew: see ``rerun_lost``)."""
        if self._settled is None:
            self._settled = state
            self._fetched = False
            self._remote = value
        # The arguments go: a rebuilt call with them, the future's own call (a submit's) keeps none.
        self._parameters = RELEASED_PARAMETERS
        call = self._call
        if call is not self._template:
            self._call = None
        elif call is not None:
            call.parameters = RELEASED_PARAMETERS
            call.wait_for = ()

    def wait(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._settled is None:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                self._runner.wait_watched([self], timeout=remaining)
            except TimeoutError:
                return
            status = self.dask_future.status
            if status == "finished":
                self._runner.await_reports([self])
                return
            if status in ("error", "cancelled"):
                self._runner.recover_erred()
                if not self._runner.recover(self):
                    return
            if deadline is not None and time.monotonic() >= deadline:
                return

    def add_done_callback(self, fn: Callable[[DaskflowFuture[Any]], None]) -> None:
        def on_done(_: distributed.Future[Any]) -> None:
            if self._settled is not None:
                fn(self)
            else:  # recovering may block: never in Dask's single callback thread
                threading.Thread(target=self._wait_then, args=(fn,), daemon=True).start()

        self.dask_future.add_done_callback(on_done)  # type: ignore[no-untyped-call]

    def _wait_then(self, fn: Callable[[DaskflowFuture[Any]], None]) -> None:
        self.wait()
        fn(self)


def _rebuild(template: TaskCall, task_run: TaskRun, parameters: dict[str, Any], known_key: str | None) -> TaskCall:
    """``template`` with its own fields replaced (slot by slot: no __init__ or pickling on this path)."""
    call: TaskCall = object.__new__(TaskCall)
    for name in TaskCall.__slots__:
        object.__setattr__(call, name, getattr(template, name))
    call.task_run = task_run
    call.parameters = parameters
    call.known_key = known_key
    return call


NO_UPSTREAMS: tuple[DaskFuture, ...] = ()  # shared by every run without upstreams (a map of 100,000)
