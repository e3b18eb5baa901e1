"""Values on the cluster as the Dask runner's client sees them.

A run's value stays where it was computed; the client holds references.
:class:`ClusterValue` is a cache hit that the client received as a reference
to an entry in storage, read through the worker that ran the hit (the default
storage may be that worker's own disk). :func:`length_and_worker` runs next
to a list value to learn how to map over it without moving it, and
:func:`shared_value` is the task that holds what a submission ships once (a
task object, the flow's facts): a task, not a scattered value, so that Dask
recomputes it when every worker holding it dies.
"""

from __future__ import annotations

from typing import Any

import distributed
from dask.sizeof import sizeof
from distributed import Client

from daskflow.states import DeferredData, LoadedOnce, State
from daskflow.task_runners.dask_worker import state_length, state_value

__all__ = ["ClusterValue", "length_and_worker", "on_client", "shared_value"]


def shared_value(obj: Any) -> Any:
    """The task that holds an object shipped once (see ``DaskTaskRunner._shared``)."""
    return obj


def length_and_worker(state: State, below: int = 0) -> tuple[int | None, str | None, Any]:
    """The length of a run's list value, the worker that holds it (this task runs next to it), and
    the list itself when it is in memory here and smaller than ``below`` bytes (else None)."""
    try:
        where: str | None = distributed.get_worker().address
    except ValueError:
        where = None
    length = state_length(state)
    small = None
    if length is not None and below > 0:
        deferred = state.deferred
        if deferred is None or deferred.in_memory():
            value = state.data
            if sizeof(value) < below:
                small = value
    return length, where, small


class ClusterValue(LoadedOnce):
    """A hit the client received as a reference: read where the cluster keeps it, through Dask.

    The entry may be on a worker's own disk (the default storage is under each
    machine's home), so the client asks the worker that ran the hit to read it;
    once the cluster is gone, it reads the storage itself.
    """

    __slots__ = ("inner", "client", "future")

    def __init__(self, inner: DeferredData, client: Client, future: distributed.Future) -> None:
        super().__init__()
        self.inner = inner
        self.client = client
        self.future = future

    @property
    def version(self) -> str:
        return self.inner.version

    @property
    def length(self) -> int | None:
        return self.inner.length

    def in_memory(self) -> bool:
        return self._loaded or self.inner.in_memory()

    def _load(self) -> Any:
        if self.inner.in_memory() or self.client.status != "running":
            return self.inner.get()
        return self.client.submit(state_value, self.future, pure=False).result()

    def item(self, index: int) -> DeferredData:
        return self.inner.item(index)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_inner_value, (self.inner,))


def _inner_value(inner: DeferredData) -> DeferredData:
    return inner


def on_client(state: State, client: Client | None, future: distributed.Future) -> State:
    """``state`` as the client keeps it: a hit left in storage is read through the cluster."""
    deferred = state.deferred
    if client is None or deferred is None or deferred.in_memory():
        return state
    # A copy: with workers in this process the state may be the very object the worker holds.
    return State(
        state.type,
        state.name,
        state.message,
        ClusterValue(deferred, client, future),
        state.exception,
        state.epoch,
        state.traceback,
    )
