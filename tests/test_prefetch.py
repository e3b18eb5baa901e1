"""Cache hits found where a map is submitted: hits never become Dask tasks, misses do.

Counted, not timed: the keys the scheduler saw (a scheduler plugin records every
key that enters its state machine), the executions in the side channel, the
states and the history rows. A run whose key the client can know (plain
arguments, or cached upstream runs already ended here) is looked up on the
client; everything else — a corrupt entry, an entry of another task, a store
the workers do not share — goes to the runner and is judged there as before.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask.config
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

from conftest import put_raw, raw_bytes
from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.engine.prefetch import ClientReach, _reachable, reach_of
from daskflow.results import ResultStore
from daskflow.task_runners import DaskTaskRunner, ThreadPoolTaskRunner

pytestmark = pytest.mark.timeout(300)


class KeysSeen(SchedulerPlugin):
    """Every key that enters the scheduler's state machine, by task name prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.keys: set[str] = set()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if isinstance(key, str) and key.startswith(self.prefix) and start == "released":
            self.keys.add(key)


@pytest.fixture
def seen(dask_client: Any) -> Iterator[KeysSeen]:
    """A plugin on the session scheduler counting the keys of tasks named ``seen.prefix``."""
    prefix = f"prefetched-{uuid.uuid4().hex[:8]}"
    plugin = KeysSeen(prefix)
    name = f"keys-seen-{prefix}"
    dask_client.register_plugin(plugin, name=name)
    try:
        # The scheduler of a LocalCluster runs in this process: read the copy it was given.
        yield dask_client.cluster.scheduler.plugins[name]
    finally:
        dask_client.unregister_scheduler_plugin(name)


def _dask_key(future: Any) -> str:
    return f"{future.task_run.task_name}-{future.task_run.id.replace('-', '')}"


def _cached_map(name: str, storage: str, executions: Any) -> Any:
    @task(name=name, cache_policy=INPUTS, result_storage=storage)
    def inc(x: int) -> int:
        executions.record(f"inc|{x}")
        return x + 1

    return inc


def _mapping_flow(
    inc: Any, runner: Any, made: list[Any], name: str | None = None, source: Callable[[int], Any] = range
) -> Any:
    """A flow mapping ``inc`` over ``source(n)`` (``range(n)``) on ``runner``; each run's futures are
    left in ``made``."""

    @flow(name=name, task_runner=runner)
    def pipeline(n: int) -> list[int]:
        futures = inc.map(source(n))
        made[:] = futures
        return futures.result()

    return pipeline


def test_an_all_hit_map_submits_no_dask_task_and_a_partial_one_only_its_misses(
    dask_client: Any, seen: KeysSeen, tmp_path: Path, executions: Any, history: Any
) -> None:
    inc = _cached_map(seen.prefix, (tmp_path / "results").as_uri(), executions)
    made: list[Any] = []
    pipeline = _mapping_flow(inc, DaskTaskRunner(client=dask_client), made, "prefetched")

    assert pipeline(20) == list(range(1, 21))
    cold_keys = set(seen.keys)
    assert len(cold_keys) == 20, f"a cold map of 20 is 20 Dask tasks, the scheduler saw {len(cold_keys)}"
    assert len(executions.keys()) == 20

    assert pipeline(20) == list(range(1, 21))
    assert seen.keys == cold_keys, f"an all-hit map submitted {len(seen.keys - cold_keys)} Dask tasks, not 0"
    assert [f.state.name for f in made] == ["Cached"] * 20, [f.state.name for f in made]
    assert len(executions.keys()) == 20, "a hit executed"

    assert pipeline(30) == list(range(1, 31))
    new_keys = seen.keys - cold_keys
    misses = {_dask_key(f) for f in made if f.state.name != "Cached"}
    assert len(misses) == 10 and new_keys == misses, f"submitted {len(new_keys)} keys for {len(misses)} misses"
    assert sorted(executions.keys()) == sorted([f"inc|{i}" for i in range(20)] + [f"inc|{i}" for i in range(20, 30)])

    # Each hit still has its task run and state in the history, like a hit found on a worker.
    store = history()
    newest, warm, cold = store.list_flow_runs(flow_name="prefetched")
    assert (cold.task_runs, cold.cache_hits) == (20, 0), cold
    assert (warm.task_runs, warm.cache_hits) == (20, 20), warm
    assert (newest.task_runs, newest.cache_hits) == (30, 20), newest
    runs = store.task_runs(warm.id)
    assert all(run.state_name == "Cached" and run.cache_key for run in runs), runs[:3]


def test_a_reduce_over_hits_is_a_hit_and_nothing_reaches_the_scheduler(
    dask_client: Any, seen: KeysSeen, tmp_path: Path, executions: Any
) -> None:
    storage = (tmp_path / "results").as_uri()
    inc = _cached_map(seen.prefix, storage, executions)

    @task(name=f"{seen.prefix}-total", cache_policy=INPUTS, result_storage=storage)
    def total(values: list[int]) -> int:
        executions.record("total")
        return sum(values)

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline(n: int) -> int:
        return total(inc.map(range(n)))

    assert pipeline(30) == sum(range(1, 31))
    cold_keys = set(seen.keys)
    assert len(cold_keys) == 31, len(cold_keys)
    assert pipeline(30) == sum(range(1, 31))
    assert seen.keys == cold_keys, f"the all-hit run submitted {sorted(seen.keys - cold_keys)}"
    assert executions.count("total") == 1, executions.keys()


def _over_a_listing(
    prefix: str, store: ResultStore, executions: Any, client: Any, made: list[Any], name: str, **listing_options: Any
) -> Any:
    """A flow mapping a cached ``inc`` over the list a ``listing`` task (with these options) makes on
    the cluster; each run's futures are left in ``made``."""

    @task(name=f"{prefix}-list", **listing_options)
    def listing(n: int) -> list[int]:
        executions.record("listing")
        return list(range(n))

    inc = _cached_map(prefix, store.url, executions)
    return _mapping_flow(inc, DaskTaskRunner(client=client), made, name, listing.submit)


def test_a_map_over_a_cached_list_held_on_a_worker_is_looked_up_on_the_client(
    dask_client: Any, seen: KeysSeen, tmp_path: Path, executions: Any, history: Any
) -> None:
    """The list's run ends on a worker (its key needs the worker: a cache_key_fn), which reports its
    value's version and length, never the value: the map's keys are computed on the client from them,
    hits become no Dask task and no item task, and only the misses' items are taken out of the list."""
    store = ResultStore((tmp_path / "results").as_uri())
    made: list[Any] = []
    pipeline = _over_a_listing(
        seen.prefix, store, executions, dask_client, made, "over-a-list",
        cache_key_fn=lambda context, parameters: f"months-{parameters['n']}", result_storage=store.url,
    )  # fmt: skip

    def kinds(keys: set[str]) -> list[str]:
        return sorted(
            "item" if key.startswith(f"{seen.prefix}-list-item-") else "list" if key.startswith(f"{seen.prefix}-list-")
            else "run" for key in keys
        )  # fmt: skip

    assert pipeline(6) == list(range(1, 7))
    cold = set(seen.keys)
    assert kinds(cold) == ["item"] * 6 + ["list"] + ["run"] * 6, sorted(cold)

    assert pipeline(6) == list(range(1, 7))
    warm = seen.keys - cold
    assert kinds(warm) == ["list"], f"the all-hit map submitted {sorted(warm)}"
    assert [f.state.name for f in made] == ["Cached"] * 6
    assert executions.count("listing") == 1 and len(executions.keys()) == 7, executions.keys()
    store_history = history()
    newest = store_history.list_flow_runs(flow_name="over-a-list")[0]
    assert (newest.task_runs, newest.cache_hits) == (7, 7), newest

    # Two entries gone: their runs alone go, each with the task that takes its own item out.
    gone = [2, 5]
    for index in gone:
        assert store.delete(made[index].task_run.cache_key)
    before = set(seen.keys)
    assert pipeline(6) == list(range(1, 7))
    new = seen.keys - before
    assert kinds(new) == ["item"] * 2 + ["list"] + ["run"] * 2, sorted(new)
    assert {key.rsplit("-", 1)[1] for key in new if key.startswith(f"{seen.prefix}-list-item-")} == {"2", "5"}
    assert [i for i, f in enumerate(made) if f.state.name != "Cached"] == gone
    assert sorted(e for e in executions.keys() if e != "listing") == sorted(
        [f"inc|{i}" for i in range(6)] + [f"inc|{i}" for i in gone]
    )


def _kinds(prefix: str, keys: set[str]) -> list[str]:
    """The Dask keys of a test's tasks by what they are: a list's run, its items, a lookup, a map's runs."""
    kinds = []
    for key in keys:
        rest = key[len(prefix) + 1 :]
        kinds.append(
            "item" if rest.startswith("list-item-") else "list" if rest.startswith("list-")
            else "lookup" if rest.startswith("lookup-") else "run"
        )  # fmt: skip
    return sorted(kinds)


@pytest.fixture
def lists_stay_on_workers() -> Iterator[None]:
    """Lists of any size stay where they are made (one under daskflow.dask.map_fetch_below comes here)."""
    with dask.config.set({"daskflow.dask.map_fetch_below": 0}):
        yield


def test_a_map_over_a_list_only_a_worker_holds_is_looked_up_there_in_one_task(
    dask_client: Any, seen: KeysSeen, tmp_path: Path, executions: Any, history: Any, lists_stay_on_workers: None
) -> None:
    """The list's run does not cache: its items are values on a worker, which the client never sees
    (the list is too large to bring), so the map's keys are computed there, all in one Dask task next
    to the list, and only the misses are submitted (each with its item's task); a hit becomes no Dask
    task, and is recorded here."""
    store = ResultStore((tmp_path / "results").as_uri())
    made: list[Any] = []
    pipeline = _over_a_listing(seen.prefix, store, executions, dask_client, made, "over-an-uncached-list")

    assert pipeline(20) == list(range(1, 21))
    cold = set(seen.keys)
    assert _kinds(seen.prefix, cold) == ["item"] * 20 + ["list", "lookup"] + ["run"] * 20, sorted(cold)

    assert pipeline(20) == list(range(1, 21))
    warm = seen.keys - cold
    assert _kinds(seen.prefix, warm) == ["list", "lookup"], f"the all-hit map submitted {sorted(warm)}"
    assert [f.state.name for f in made] == ["Cached"] * 20
    assert len([e for e in executions.keys() if e.startswith("inc|")]) == 20, executions.keys()
    newest = history().list_flow_runs(flow_name="over-an-uncached-list")[0]
    assert (newest.task_runs, newest.cache_hits) == (21, 20), newest

    gone = [0, 7, 19]
    for index in gone:
        assert store.delete(made[index].task_run.cache_key)
    before = set(seen.keys)
    assert pipeline(20) == list(range(1, 21))
    new = seen.keys - before
    assert _kinds(seen.prefix, new) == ["item"] * 3 + ["list", "lookup"] + ["run"] * 3, sorted(new)
    assert [i for i, f in enumerate(made) if f.state.name != "Cached"] == gone
    assert sorted(e for e in executions.keys() if e.startswith("inc|")) == sorted(
        [f"inc|{i}" for i in range(20)] + [f"inc|{i}" for i in gone]
    )


def test_runs_whose_store_the_client_does_not_share_are_not_looked_up_on_the_workers_for_it(
    dask_client: Any, seen: KeysSeen, memory_url: str, executions: Any, lists_stay_on_workers: None
) -> None:
    """memory:// lives in each process: a hit found on a worker could not be read here, so each run
    looks itself up where it runs, as before."""

    @task(name=f"{seen.prefix}-list")
    def listing(n: int) -> list[int]:
        return list(range(n))

    inc = _cached_map(seen.prefix, memory_url, executions)

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline(n: int) -> list[int]:
        return inc.map(listing.submit(n)).result()

    assert pipeline(20) == list(range(1, 21))
    assert pipeline(20) == list(range(1, 21))
    assert "lookup" not in _kinds(seen.prefix, seen.keys), sorted(seen.keys)
    assert _kinds(seen.prefix, seen.keys).count("run") == 40


def test_a_map_over_a_small_list_is_keyed_on_the_client_once_the_list_comes_here(
    dask_client: Any, seen: KeysSeen, tmp_path: Path, executions: Any
) -> None:
    """A list under daskflow.dask.map_fetch_below comes to the client: its values key the map's runs
    here, so an all-hit map over an uncached list is no Dask task but the list's own."""

    @task(name=f"{seen.prefix}-list")
    def listing(n: int) -> list[int]:
        return list(range(n))

    inc = _cached_map(seen.prefix, (tmp_path / "results").as_uri(), executions)

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline(n: int) -> list[int]:
        return inc.map(listing.submit(n)).result()

    assert pipeline(20) == list(range(1, 21))
    cold = set(seen.keys)
    assert _kinds(seen.prefix, cold) == ["list"] + ["run"] * 20, sorted(cold)
    assert pipeline(20) == list(range(1, 21))
    assert _kinds(seen.prefix, seen.keys - cold) == ["list"], sorted(seen.keys - cold)


def test_a_corrupt_entry_is_a_miss_recomputed_on_the_worker(
    dask_client: Any, seen: KeysSeen, tmp_path: Path, executions: Any
) -> None:
    store = ResultStore((tmp_path / "results").as_uri())
    inc = _cached_map(seen.prefix, store.url, executions)
    made: list[Any] = []
    pipeline = _mapping_flow(inc, DaskTaskRunner(client=dask_client), made)

    pipeline(20)
    keys = [f.task_run.cache_key for f in made]
    good = raw_bytes(store, keys[3])
    damage = {3: b"", 4: good[: len(good) // 2], 5: good[:-3], 6: bytes(reversed(good))}
    for index, data in damage.items():
        put_raw(store, keys[index], data)
    cold_keys = set(seen.keys)
    assert pipeline(20) == list(range(1, 21)), "a corrupt entry gave a wrong value"
    names = {i: f.state.name for i, f in enumerate(made)}
    assert {i for i, n in names.items() if n != "Cached"} == set(damage), names
    assert seen.keys - cold_keys == {_dask_key(made[i]) for i in damage}, "not exactly the corrupt entries went"
    assert sorted(e for e in executions.keys() if e in {f"inc|{i}" for i in damage}) == sorted(
        [f"inc|{i}" for i in damage] * 2
    ), executions.keys()


def test_an_entry_of_another_task_is_a_miss_with_a_warning(
    task_runner: Any, tmp_path: Path, executions: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore((tmp_path / "results").as_uri())
    inc = _cached_map(f"orders-{uuid.uuid4().hex[:6]}", store.url, executions)
    made: list[Any] = []
    pipeline = _mapping_flow(inc, task_runner, made)

    pipeline(20)
    foreign = made[7].task_run.cache_key
    store.write(foreign, 999, task_name="customers")
    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert pipeline(20) == list(range(1, 21)), "another task's value was returned"
    assert [i for i, f in enumerate(made) if f.state.name != "Cached"] == [7]
    assert executions.count("inc|7") == 2, executions.keys()
    if not isinstance(task_runner, DaskTaskRunner):  # on Dask the warning is in the worker's run log
        assert "written by task 'customers'" in caplog.text, caplog.text


def test_hits_over_every_runner_end_cached_and_feed_downstream_runs(
    task_runner: Any, tmp_path: Path, executions: Any
) -> None:
    storage = (tmp_path / "results").as_uri()
    inc = _cached_map(f"inc-{uuid.uuid4().hex[:6]}", storage, executions)

    @task
    def double(x: int) -> int:  # not cached: it runs every time, on the hits' values
        return 2 * x

    states: list[str] = []

    @flow(task_runner=task_runner)
    def pipeline(n: int) -> list[int]:
        firsts = inc.map(range(n))
        seconds = double.map(firsts)
        values = seconds.result()
        states[:] = [f.state.name for f in firsts]
        return values

    assert pipeline(25) == [2 * (i + 1) for i in range(25)]
    assert pipeline(25) == [2 * (i + 1) for i in range(25)]
    assert states == ["Cached"] * 25, states
    assert len(executions.keys()) == 25, executions.keys()


def test_a_store_the_workers_do_not_share_is_looked_up_on_the_workers(
    dask_client: Any, seen: KeysSeen, memory_url: str, executions: Any
) -> None:
    # memory:// lives in each process: an entry only the client holds is not the workers'.
    store = ResultStore(memory_url)
    inc = _cached_map(seen.prefix, memory_url, executions)
    made: list[Any] = []
    pipeline = _mapping_flow(inc, DaskTaskRunner(client=dask_client), made)

    pipeline(3)
    for future in made:  # the workers wrote theirs; the client now gets entries of its own
        store.write(future.task_run.cache_key, -1, task_name=future.task_run.task_name)
    assert pipeline(3) == [1, 2, 3], "the client's own memory entries were taken as the workers'"
    assert len(seen.keys) == 6, f"the second run must go to the workers; the scheduler saw {len(seen.keys)} keys"


def test_which_stores_are_looked_up_where_runs_are_submitted(tmp_path: Path, memory_url: str) -> None:
    local, memory = ResultStore(tmp_path.as_uri()), ResultStore(memory_url)
    here = ClientReach(same_process=True, same_host=True)
    same_machine = ClientReach(same_process=False, same_host=True)
    elsewhere = ClientReach(same_process=False, same_host=False)
    assert [_reachable(local, r) for r in (here, same_machine, elsewhere)] == [True, True, False]
    assert [_reachable(memory, r) for r in (here, same_machine, elsewhere)] == [True, False, False]


def test_a_cluster_of_threads_in_this_process_is_looked_up_like_this_process(
    dask_inprocess_client: Any, memory_url: str, executions: Any
) -> None:
    """LocalCluster(processes=False), a notebook's usual cluster: its inproc:// workers share this
    process's memory:// store and folders, so an all-hit map is found here and runs nothing."""
    runner = DaskTaskRunner(client=dask_inprocess_client)
    # What reach_of asks of a started runner: its client.
    assert reach_of(SimpleNamespace(client=dask_inprocess_client)) == ClientReach(same_process=True, same_host=True)
    inc = _cached_map(f"inproc-{uuid.uuid4().hex[:6]}", memory_url, executions)
    made: list[Any] = []
    pipeline = _mapping_flow(inc, runner, made)
    assert pipeline(20) == list(range(1, 21))
    assert pipeline(20) == list(range(1, 21))
    assert [f.state.name for f in made] == ["Cached"] * 20
    assert all(not hasattr(f, "dask_future") for f in made), "a hit became a Dask task"
    assert len(executions.keys()) == 20


class Hashed:
    """An argument that counts how often its state is read (a cache key reads it once per hash)."""

    reads = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __getstate__(self) -> dict[str, int]:
        Hashed.reads += 1
        return {"n": self.n}


def test_a_miss_looked_up_on_the_client_is_not_hashed_again_by_its_run(tmp_path: Path) -> None:
    """The key the client computed for a miss travels with the call: its inputs are hashed once."""

    @task(cache_policy=INPUTS, result_storage=str(tmp_path / "store"))
    def size(item: Hashed) -> int:
        return item.n

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def sizes() -> list[int]:
        return size.map([Hashed(1), Hashed(2), Hashed(3)]).result()

    Hashed.reads = 0
    assert sizes() == [1, 2, 3]
    assert Hashed.reads == 3  # the client's lookup only: the runs used its keys
    Hashed.reads = 0
    assert sizes() == [1, 2, 3]  # all hits, found where the map was submitted
    assert Hashed.reads == 3
