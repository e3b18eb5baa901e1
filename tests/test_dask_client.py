"""``daskflow.dask.get_dask_client`` (prefect-dask's name): Dask collections computed on the flow's own
cluster from inside a task, and a clear error where there is no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from daskflow import flow, task
from daskflow.dask import get_async_dask_client, get_dask_client
from daskflow.exceptions import ConfigurationError
from daskflow.task_runners import DaskTaskRunner, SequentialTaskRunner


@task
def _total(n: int) -> tuple[int, str]:
    import dask.bag as db

    with get_dask_client() as client:
        total = db.from_sequence(range(n), npartitions=4).map(lambda x: x * 2).sum().compute()
        return int(total), str(client.scheduler.address)


@task
async def _async_total(n: int) -> int:
    import dask.bag as db

    async with get_async_dask_client() as client:
        future = client.compute(db.from_sequence(range(n), npartitions=2).sum())
        return int(await future)


def test_a_task_computes_a_collection_on_the_flows_cluster(dask_client: Any) -> None:
    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> tuple[tuple[int, str], int]:
        return _total(100), _async_total(10)

    (total, address), async_total = pipeline()
    assert total == 2 * sum(range(100)) and async_total == sum(range(10))
    assert address == dask_client.scheduler.address, "the task's client talks to the flow's own scheduler"


def test_outside_a_dask_worker_it_says_what_is_needed() -> None:
    @flow(task_runner=SequentialTaskRunner())
    def pipeline() -> Any:
        return _total(3)

    with pytest.raises(
        ConfigurationError, match=r"task run '_total-0', which does not run on a Dask worker.*DaskTaskRunner"
    ):
        pipeline()
    with pytest.raises(ConfigurationError, match=r"code outside any task"):
        with get_dask_client():
            pass
