"""daskflow.compile: flows traced into Dask graphs, computed on every scheduler, and what is refused.

Every compiled flow is checked against running the same flow normally. The
refusals are checked for the flow's name, the exact file and line (found
through a ``# refused: <marker>`` comment, never a hard-coded number), what was
attempted and the fix.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import pytest
from dask.base import key_split
from dask.delayed import Delayed

from daskflow import allow_failure, flow, task, unmapped
from daskflow.compiler import CompiledFlow, compile, compile_flow
from daskflow.compiler import __all__ as compiler_all
from daskflow.exceptions import CompileError, ParameterValidationError, UpstreamFailedError

# -- tasks and flows (module level, so the processes scheduler can import them) ------------------


@task
def double(x: int) -> int:
    return 2 * x


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def total(xs: list[int]) -> int:
    return sum(xs)


@task
def describe(n: int) -> dict[str, float]:
    return {"n": n, "rate": n / 10}


@task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@task
def recover(x: Any) -> str:
    return f"recovered {type(x).__name__}"


@task
def process_id() -> int:
    return os.getpid()


@task
async def async_double(x: int) -> int:
    return 2 * x


@task(name="extract-table")
def extract_table(name: str) -> str:
    return name.upper()


@flow
def chain_flow(n: int = 3) -> int:
    a = double(n)
    return double(add(a, 1))


@flow
def fan_flow(items: list[int]) -> dict[str, Any]:
    doubled = double.map(items)
    ten = double(5)
    summed = total.submit(doubled)
    return {"doubled": doubled, "total": summed, "plus_ten": add.map(items, unmapped(ten)), "pair": (summed, "x")}


@flow
def tolerant_flow() -> dict[str, Any]:
    bad = boom.submit(1)
    boom.submit(2)  # fails and nobody uses it: a flow run still completes
    after = double.submit(3, wait_for=[allow_failure(bad)])
    return {"recovered": recover.submit(allow_failure(bad)), "n": add(describe(4)["n"], 1), "after": after}


@flow
def tables_flow(names: list[str]) -> list[str]:
    return extract_table.map(names)


@flow
def constant_flow(x: int = 1) -> dict[str, int]:
    return {"x": x}


@flow
def direct_failure_flow() -> int:
    return add(boom(1), 1)


@flow
def returned_failure_flow() -> list[int]:
    return [*double.map([1, 2]), boom.submit(3)]


@flow
def upstream_failure_flow() -> int:
    return double.submit(2, wait_for=[boom.submit(1)])


EQUIVALENT = [
    (chain_flow, {"n": 3}),
    (fan_flow, {"items": [1, 2, 3]}),
    (tolerant_flow, {}),
    (tables_flow, {"names": ["orders", "users"]}),
    (constant_flow, {"x": 2}),
]


def _compute(collection: Any, scheduler: str = "sync") -> Any:
    (value,) = dask.compute(collection, scheduler=scheduler)
    return value


# -- the compiled graph computes what the flow returns ---------------------------------------------


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
@pytest.mark.parametrize(("fl", "params"), EQUIVALENT, ids=[f.name for f, _ in EQUIVALENT])
def test_compiled_flow_computes_what_running_it_returns(fl: Any, params: dict[str, Any], scheduler: str) -> None:
    expected = fl(**params)
    assert _compute(compile_flow(fl, **params), scheduler) == expected


@flow
def pid_flow() -> int:
    return process_id()


def test_compiled_flows_run_on_the_processes_scheduler() -> None:
    collections = compile_flow(fan_flow, items=[1, 2]), compile_flow(tolerant_flow), compile_flow(pid_flow)
    fanned, tolerated, pid = dask.compute(*collections, scheduler="processes", num_workers=2)
    assert [fanned, tolerated] == [fan_flow(items=[1, 2]), tolerant_flow()]
    assert pid != os.getpid(), "the tasks ran in worker processes"


def test_compiled_flows_run_on_a_distributed_client() -> None:
    distributed = pytest.importorskip("distributed")

    @task(resources={"GPU": 1})
    def restrictions() -> Any:
        worker = distributed.get_worker()
        return worker.state.tasks[worker.get_current_task()].resource_restrictions

    @flow
    def gpu_flow() -> Any:
        return restrictions()

    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0", resources={"GPU": 1}
    )
    with cluster, distributed.Client(cluster):  # the active client is dask's default scheduler
        assert dask.compute(compile_flow(fan_flow, items=[1, 2, 3]))[0] == fan_flow(items=[1, 2, 3])
        assert dask.compute(compile_flow(tolerant_flow))[0] == tolerant_flow()
        with pytest.raises(ValueError, match="boom 1"):
            dask.compute(compile_flow(direct_failure_flow))
        # A task's worker resources reach the scheduler as the node's restrictions.
        assert dask.compute(compile_flow(gpu_flow))[0] == {"GPU": 1}


def test_failures_end_the_compute_as_they_end_the_flow_run() -> None:
    for fl, error, match in [
        (direct_failure_flow, ValueError, "boom 1"),  # a direct call raises in the body
        (returned_failure_flow, ValueError, "boom 3"),  # a failed run in the return value
        (upstream_failure_flow, UpstreamFailedError, "wait_for"),  # its downstream never ran
    ]:
        with pytest.raises(error, match=match):
            fl()
        for scheduler in ("sync", "threads"):
            with pytest.raises(error, match=match):
                _compute(compile_flow(fl), scheduler)


@flow
def async_task_flow(n: int = 2) -> int:
    return add(async_double(n), 1)


def test_async_tasks_compile_even_inside_a_running_event_loop() -> None:
    async def in_a_notebook() -> Any:  # Task.__call__ would run an async task at once in a running loop
        return compile_flow(async_task_flow, n=2)

    collection = asyncio.run(in_a_notebook())
    assert _compute(collection, "threads") == async_task_flow(n=2) == 5


def test_parameters_are_validated_before_tracing() -> None:
    with pytest.raises(ParameterValidationError, match="n"):
        compile_flow(chain_flow, n="many")
    assert _compute(compile_flow(chain_flow, n="3")) == chain_flow(n=3) == 14  # coerced, as in a run
    assert _compute(compile_flow(chain_flow)) == 14  # defaults apply


def test_nothing_runs_while_tracing_and_retries_apply_at_compute(executions: Any) -> None:
    @task(retries=2, retry_delay_seconds=0)
    def flaky(x: int) -> int:
        executions.record("flaky")
        if executions.count("flaky") < 3:
            raise RuntimeError("not yet")
        return x * 10

    @flow
    def retrying(x: int = 4) -> int:
        return add(flaky(x), 1)

    collection = compile_flow(retrying, x=4)
    assert executions.count("flaky") == 0, "tracing must not run tasks"
    assert _compute(collection, "threads") == 41
    assert executions.count("flaky") == 3, f"2 retries then success, got {executions.count('flaky')} executions"
    # Each compute is a fresh run: the same graph runs again, on its own run record.
    assert _compute(collection, "sync") == 41
    assert executions.count("flaky") == 4


# -- the graph's shape ---------------------------------------------------------------------------


def test_one_node_per_task_run_named_after_its_task() -> None:
    collection = compile_flow(fan_flow, items=[1, 2, 3])
    graph = dict(collection.__dask_graph__())
    assert Counter(key_split(key) for key in graph) == {"double": 4, "total": 1, "add": 3, fan_flow.name: 1}
    assert key_split(collection.key) == fan_flow.name == "fan-flow"

    doubles = [key for key in graph if key_split(key) == "double"]
    by_token = Counter(key.split("-")[1] for key in doubles)
    assert sorted(by_token.values()) == [1, 3], f"a map's runs share one token: {doubles}"
    mapped = {key for key in doubles if by_token[key.split("-")[1]] == 3}
    [direct] = set(doubles) - mapped
    [summed] = [key for key in graph if key_split(key) == "total"]
    adds = {key for key in graph if key_split(key) == "add"}

    assert graph[summed].dependencies == mapped
    assert all(graph[key].dependencies == {direct} for key in adds), "unmapped(ten) is an edge to every run"
    # The flow node waits on what it returns; `ten` is consumed by the adds, so no direct edge.
    assert graph[collection.key].dependencies == mapped | adds | {summed}


def test_map_keys_use_the_task_name_for_the_dashboard() -> None:
    graph = dict(compile_flow(tables_flow, names=["a", "b", "c"]).__dask_graph__())
    assert sorted(key_split(key) for key in graph) == ["extract-table"] * 3 + [tables_flow.name]


def test_wait_for_and_unconsumed_runs_are_edges() -> None:
    collection = compile_flow(tolerant_flow)
    graph = dict(collection.__dask_graph__())
    names = Counter(key_split(key) for key in graph)
    assert names == {"boom": 2, "double": 1, "recover": 1, "describe": 1, "getitem": 1, "add": 1, tolerant_flow.name: 1}
    [after] = [key for key in graph if key_split(key) == "double"]
    booms = {key for key in graph if key_split(key) == "boom"}
    [waited_for] = graph[after].dependencies & booms  # wait_for=[allow_failure(bad)] is an edge
    [unused] = booms - {waited_for}
    # The flow node waits for the run nobody uses, as a flow run does, and not for consumed ones.
    assert unused in graph[collection.key].dependencies
    assert waited_for not in graph[collection.key].dependencies


def test_visualize_draws_the_graph(tmp_path: Path) -> None:
    pytest.importorskip("graphviz")
    if shutil.which("dot") is None:
        pytest.skip("graphviz's `dot` program is not installed (apt-get install graphviz; .ci/run does)")
    target = tmp_path / "fan.png"
    compile_flow(fan_flow, items=[1, 2]).visualize(filename=str(target))
    assert target.stat().st_size > 0


def test_the_collection_is_a_delayed_named_after_the_flow() -> None:
    collection = compile(chain_flow, n=1)
    assert compile is compile_flow
    assert sorted(compiler_all) == ["CompiledFlow", "compile", "compile_flow"]
    assert isinstance(collection, CompiledFlow) and isinstance(collection, Delayed)
    assert dask.is_dask_collection(collection)
    assert repr(collection) == f"CompiledFlow({collection.key!r}, nodes=4)"
    assert collection.compute(scheduler="sync") == chain_flow(n=1) == 6
    (persisted,) = dask.persist(collection, scheduler="sync")
    assert persisted.compute() == 6


def test_importing_the_compiler_does_not_import_distributed() -> None:
    code = "import sys, daskflow.compiler; assert 'distributed' not in sys.modules, 'distributed was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- what cannot be compiled ahead ---------------------------------------------------------------


@flow
def branching_flow(n: int = 5) -> dict[str, float]:
    summary = describe(n)
    if summary["rate"] < 0.9:  # refused: branch
        raise ValueError("too few valid rows")
    return summary


@flow
def looping_flow() -> list[int]:
    tables = describe(3)
    out = []
    for _ in tables:  # refused: loop
        out.append(double(1))
    return out


@flow
def unpacking_flow() -> int:
    low, high = describe(3)  # refused: unpack
    return add(low, high)


@flow
def mapping_value_flow() -> list[int]:
    tables = double(3)
    return double.map(tables)  # refused: map over a value


@flow
def mapping_future_flow() -> list[int]:
    tables = total.submit([1, 2])
    return double.map(tables)  # refused: map over a future


@flow
def result_flow() -> int:
    future = double.submit(2)
    return future.result() + 1  # refused: result


@flow
def len_flow() -> int:
    rows = describe(2)
    return double(len(rows))  # refused: len


@flow
def state_flow() -> int:
    state = double(2, return_state=True)
    if state.is_completed():  # refused: state
        return 1
    return 0


@flow
def plain_value_flow() -> str:
    return json.dumps(describe(1))  # refused: plain value


@flow
def sub_flow() -> int:
    return double(1)


@flow
def parent_flow() -> int:
    first = double(2)
    return add(first, sub_flow())  # refused: subflow


def _is_good(summary: Any) -> str:
    if summary["rate"] > 0.5:  # refused: in helper
        return "good"
    return "bad"


@flow
def helper_flow() -> str:
    return _is_good(describe(7))  # refused: helper call


@flow
def swallowing_flow() -> int:
    future = double.submit(2)
    try:
        return future.result()  # refused: swallowed
    except Exception:  # a body's own handler must not hide the refusal
        return 0


def _line(fn: Callable[..., Any], marker: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    [offset] = [i for i, text in enumerate(lines) if text.rstrip().endswith(f"# refused: {marker}")]
    return start + offset


REFUSED = [
    (branching_flow, "branch", "truth value of a task's result", "move this decision into a task"),
    (looping_flow, "loop", "iterates over or unpacks", "move this decision into a task"),
    (unpacking_flow, "unpack", "iterates over or unpacks", "move this decision into a task"),
    (mapping_value_flow, "map over a value", "maps over a task's output with .map()", "map over a literal list"),
    (mapping_future_flow, "map over a future", "maps over a task's output with .map()", "map over a literal list"),
    (result_flow, "result", "calls `.result()` on a task's future", "pass the future itself"),
    (swallowing_flow, "swallowed", "calls `.result()` on a task's future", "pass the future itself"),
    (len_flow, "len", "len() of a task's result", "move this decision into a task"),
    (state_flow, "state", "`state.is_completed`", "move this decision into a task"),
    (plain_value_flow, "plain value", "as a plain Python value (Object of type Delayed", "pass the value to a task"),
    (parent_flow, "subflow", "calls the subflow 'sub-flow'", "compile the subflow on its own"),
]


@pytest.mark.parametrize(("fl", "marker", "what", "fix"), REFUSED, ids=[r[1] for r in REFUSED])
def test_refused_with_the_flow_the_line_and_the_fix(fl: Any, marker: str, what: str, fix: str) -> None:
    with pytest.raises(CompileError) as info:
        compile_flow(fl)
    message = str(info.value)
    assert f"cannot compile flow {fl.name!r}" in message
    assert f"{__file__}:{_line(fl.fn, marker)}, in the flow body" in message, message
    assert what in message, message
    assert fix in message and f"run the flow normally ({fl.fn.__name__}(...))" in message, message
    assert isinstance(info.value, TypeError)  # CompileError is a TypeError, never a raw dask one
    assert "Delayed objects" not in message


def test_refused_in_a_helper_names_the_helper_and_the_body_line() -> None:
    with pytest.raises(CompileError) as info:
        compile_flow(helper_flow)
    message = str(info.value)
    helper_at = f"{__file__}:{_line(_is_good, 'in helper')}, in _is_good()"
    body_at = f"called from the flow body at {__file__}:{_line(helper_flow.fn, 'helper call')}"
    assert helper_at in message and body_at in message, message
    assert 'if summary["rate"] > 0.5:' in message


def test_a_subflow_is_refused_before_any_of_its_tasks_runs(executions: Any) -> None:
    @task
    def record() -> int:
        executions.record("subflow task")
        return 1

    @flow
    def child() -> int:
        return record()

    @flow
    def parent() -> int:
        return child()

    with pytest.raises(CompileError, match="subflow 'child'"):
        compile_flow(parent)
    assert executions.count("subflow task") == 0


def test_async_flows_and_non_flows_are_refused() -> None:
    @flow
    async def async_flow() -> int:
        return double(1)

    with pytest.raises(CompileError, match=r"'async-flow'.*async def flow.*plain def"):
        compile_flow(async_flow)
    with pytest.raises(CompileError, match="takes a @flow"):
        compile_flow(double)  # type: ignore[arg-type]


def test_the_body_s_own_errors_pass_through_unchanged() -> None:
    @flow
    def own_error(n: int = 0) -> int:
        if n == 0:
            raise KeyError("n must not be 0")
        return double(n)

    with pytest.raises(KeyError, match="n must not be 0"):
        compile_flow(own_error)
    assert _compute(compile_flow(own_error, n=2)) == 4
