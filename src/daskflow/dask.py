"""``daskflow.dask``: a Dask client inside a task, to the cluster the flow runs on (prefect-dask's ``prefect_dask`` names).

A task that runs on ``DaskTaskRunner`` may itself use Dask collections — a
``dask.dataframe`` groupby, a ``dask.array`` reduction — on the same cluster::

    from daskflow.dask import get_dask_client

    @task
    def daily_totals(path: str) -> pd.DataFrame:
        with get_dask_client():
            df = dd.read_parquet(path)
            return df.groupby("day").amount.sum().compute()

``get_dask_client()`` wraps ``distributed.worker_client()``: the task's worker
thread leaves the worker's thread pool while the block waits on the
cluster, so the sub-computation can use this worker too and cannot deadlock
the cluster. ``get_async_dask_client()`` is the ``async with`` form for
``async def`` tasks: an asynchronous client to the worker's scheduler.

Both are for task code running on a Dask worker; anywhere else (a local
runner, a flow's body, no run at all) they raise a
:class:`~daskflow.exceptions.ConfigurationError` saying so. This module imports
``distributed`` only when a client is asked for, so ``import daskflow`` stays
free of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from daskflow.context import get_task_run_context, on_worker_thread
from daskflow.exceptions import ConfigurationError

__all__ = ["get_async_dask_client", "get_dask_client"]


def _where() -> str:
    ctx = get_task_run_context()
    return f"task run {ctx.task_run.name!r}" if ctx is not None else "code outside any task"


def _check_on_worker(what: str) -> None:
    if get_task_run_context() is None or not on_worker_thread():
        raise ConfigurationError(
            f"{what} was called in {_where()}, which does not run on a Dask worker. It gives a client to the "
            "cluster a task runs on, so it works only in a task of a flow with task_runner=DaskTaskRunner(...). "
            "Fix: run the flow on DaskTaskRunner, or start your own distributed.Client where you need one."
        )


@contextmanager
def get_dask_client(timeout: float | str | None = None, **client_kwargs: Any) -> Iterator[Any]:
    """A ``distributed.Client`` to this task's cluster for the block (``distributed.worker_client``)."""
    _check_on_worker("get_dask_client()")
    import distributed  # only here: daskflow itself never imports distributed at import time

    if timeout is not None:
        client_kwargs["timeout"] = timeout
    with distributed.worker_client(**client_kwargs) as client:
        yield client


@asynccontextmanager
async def get_async_dask_client(timeout: float | str | None = None, **client_kwargs: Any) -> AsyncIterator[Any]:
    """An asynchronous ``distributed.Client`` to this task's scheduler, closed when the block ends."""
    _check_on_worker("get_async_dask_client()")
    import distributed  # only here, as above

    worker = distributed.get_worker()
    if timeout is not None:
        client_kwargs["timeout"] = timeout
    async with distributed.Client(  # type: ignore[no-untyped-call]
        worker.scheduler.address, asynchronous=True, set_as_default=False, **client_kwargs
    ) as client:
        yield client
