"""What a map item keeps on the client once it ran on Dask (issue 14 goal 3: client memory at 100,000 items).

Counts, not bytes: a finished item keeps its run record, its state and its
futures, and neither the call that submitted it (one template per map stands
for all of them) nor its arguments; what recovery needs is rebuilt from the
template when asked for.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from conftest import Opaque
from daskflow import flow, task
from daskflow.engine import TaskCall, make_calls
from daskflow.states import Completed
from daskflow.task_runners import DaskTaskRunner
from daskflow.task_runners.dask_futures import DaskFuture


@task
def unwrap(value: Opaque) -> int:
    return value.n


def _calls_of(runs: set[int]) -> list[TaskCall]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, TaskCall) and id(o.task_run) in runs]


def test_a_finished_map_item_keeps_neither_its_call_nor_its_arguments(dask_client: Any) -> None:
    n = 40
    refs: list[weakref.ref[Opaque]] = []
    kept: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> list[int]:
        arguments = [Opaque(i) for i in range(n)]
        refs.extend(weakref.ref(argument) for argument in arguments)
        futures = unwrap.map(arguments)
        del arguments
        futures.wait()
        kept["futures"] = futures
        return futures.result()

    assert pipeline() == list(range(n))
    futures = kept["futures"]
    calls = _calls_of({id(f.task_run) for f in futures})
    # One template for the whole map, without arguments (it was one TaskCall per item).
    assert len(calls) <= 1, f"{len(calls)} TaskCalls of the map's runs are alive"
    assert all(not call.parameters for call in calls)
    gc.collect()
    alive = [ref for ref in refs if ref() is not None]
    assert alive == [], f"{len(alive)} of {n} arguments are still held after their runs ended"
    # The futures still answer, and a call is there for recovery, rebuilt around the item's own run.
    assert [f.state.name for f in futures] == ["Completed"] * n
    assert futures[7].result() == 7
    call = futures[7].call
    assert call.task_run is futures[7].task_run
    assert call.task is unwrap and call.flow_run_id == futures[0].task_run.flow_run_id


def _batch(parameter_sets: list[dict[str, Any]], **options: Any) -> list[TaskCall]:
    """The calls ``.map`` makes in a flow run (the flow's facts are the same objects in each)."""

    made: list[list[TaskCall]] = []

    @flow
    def body() -> None:  # (not returned: the flow run's final state would hold the list)
        made.append(make_calls(unwrap, parameter_sets, **options))

    body()
    return made.pop()


def test_futures_of_a_batch_share_one_template_and_rebuild_their_calls() -> None:
    calls = _batch([{"value": Opaque(i)} for i in range(5)], mapped=True)
    runs = [call.task_run for call in calls]
    futures = DaskFuture.many(None, calls)  # type: ignore[arg-type]  # a runner is needed only to wait
    del calls
    # Only the template is left: the batch's calls went with the list that held them.
    assert len(_calls_of({id(run) for run in runs})) == 1
    rebuilt = [future.call for future in futures]
    assert [call.parameters["value"].n for call in rebuilt] == [0, 1, 2, 3, 4]
    assert [call.task_run for call in rebuilt] == runs
    assert [call.task_run.map_index for call in rebuilt] == [0, 1, 2, 3, 4]
    assert futures[3].call is rebuilt[3]  # kept while the run is in flight: one rebuild, not one per event
    del rebuilt
    futures[3].settle_reported(Completed(data=None))
    # Its end was reported: the rebuilt call and the arguments go; the others keep theirs.
    assert len(_calls_of({id(runs[3])})) == 0
    assert futures[3].call.parameters == {}
    assert futures[2].call.parameters["value"].n == 2


def test_a_call_unlike_the_template_keeps_its_own() -> None:
    [first] = _batch([{"value": Opaque(1)}])
    [other] = _batch([{"value": Opaque(2)}], wait_for=[object()])
    future = DaskFuture(None, other, None, (), template=first)  # type: ignore[arg-type]
    assert future.call is other  # a different wait_for: not the template's call, so never rebuilt from it


def test_a_reported_end_releases_the_arguments_of_the_futures_own_call() -> None:
    # The event router settles a run by its future alone (it never rebuilds a map item's call to
    # do so): the future lets go of the arguments, whether its call is rebuilt or its own.
    [first] = _batch([{"value": Opaque(1)}])
    [own] = _batch([{"value": Opaque(2)}], wait_for=[object()])
    future = DaskFuture(None, own, None, (), template=first)  # type: ignore[arg-type]
    future.settle_reported(Completed(data=None))
    assert future.call is own
    assert own.parameters == {} and own.wait_for == (), (own.parameters, own.wait_for)
    items = DaskFuture.many(None, _batch([{"value": Opaque(i)} for i in range(3)], mapped=True))  # type: ignore[arg-type]
    items[1].settle_reported(Completed(data=None))
    assert items[1].call.parameters == {}
    assert items[0].call.parameters["value"].n == 0
