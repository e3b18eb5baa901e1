"""Caching in task runs: keys, hits and misses, expiry, refresh, and faults — on every runner
and every storage.

Executions are counted through the ``executions`` side channel (a file per
execution), so "not executed on a hit" is measured, not inferred from states.
``memory://`` lives in one process, so on Dask it is paired with a cluster whose
workers are threads of this process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest

from conftest import RUNNER_FACTORIES, private_client, put_raw, raw_bytes
from daskflow import flow, task
from daskflow.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from daskflow.context import get_flow_run_context
from daskflow.exceptions import ResultError, UnhashableInputError
from daskflow.results import ResultStore, read_map
from daskflow.runs import FlowRun
from daskflow.states import State
from daskflow.task_runners import DaskTaskRunner, ThreadPoolTaskRunner
from daskflow.tasks import task_input_hash


@pytest.fixture(params=sorted(RUNNER_FACTORIES))
def task_runner(request: pytest.FixtureRequest, location: tuple[str, dict[str, Any]]) -> Any:
    """The runners of the contract; with memory:// storage, Dask's workers are threads of
    this process (a memory:// folder exists in one process only)."""
    if request.param == "dask" and location[0].startswith("memory://"):
        return DaskTaskRunner(client=request.getfixturevalue("dask_inprocess_client"))
    if request.param == "dask":
        request.getfixturevalue("dask_client")
    return RUNNER_FACTORIES[request.param]()


@pytest.fixture
def storage(location: tuple[str, dict[str, Any]]) -> Any:
    """A result_storage on each location of the contract."""
    url, options = location
    return ResultStore(url, options)


def _run_twice(pipeline: Any, *args: Any) -> tuple[Any, Any]:
    first = pipeline(*args, return_state=True)
    second = pipeline(*args, return_state=True)
    return first, second


def _flow_task_states(pipeline: Any, *args: Any) -> tuple[Any, list[State]]:
    value, flow_run = _flow_run_of(pipeline, *args)
    return value, [r.state for r in flow_run.task_runs]


def _flow_run_of(pipeline: Any, *args: Any) -> tuple[Any, FlowRun]:
    runs: dict[str, Any] = {}

    @flow(task_runner=pipeline.task_runner)
    def wrapper() -> Any:
        value = pipeline.fn(*args)
        ctx = get_flow_run_context()
        assert ctx is not None
        runs["flow"] = ctx.flow_run
        return value

    value = wrapper()
    return value, runs["flow"]


def test_a_second_run_is_all_hits_and_executes_nothing(task_runner: Any, storage: Any, executions: Any) -> None:
    @task(cache_policy=INPUTS + TASK_SOURCE, result_storage=storage)
    def transform(i: int) -> pd.DataFrame:
        executions.record(f"transform-{i}")
        return pd.DataFrame({"i": [i] * 3, "sq": [i * i] * 3})

    @task
    def total(frames: list[pd.DataFrame]) -> int:
        return int(sum(f["sq"].sum() for f in frames))

    @flow(task_runner=task_runner)
    def pipeline(n: int) -> int:
        return total(transform.map(range(n)))

    cold, cold_states = _flow_task_states(pipeline, 6)
    warm, warm_states = _flow_task_states(pipeline, 6)
    assert cold == warm == 3 * sum(i * i for i in range(6))
    assert len(executions.all()) == 6, f"{len(executions.all())} executions over two runs, expected 6"
    cached = [s for s in warm_states if s.is_cached()]
    assert len(cached) == 6, [s.name for s in warm_states]
    assert all(s.is_completed() for s in cold_states) and not any(s.is_cached() for s in cold_states)


def test_the_flow_run_counts_its_hits_and_misses(task_runner: Any, storage: Any) -> None:
    @task(cache_policy=INPUTS, result_storage=storage)
    def square(i: int) -> int:
        return i * i

    @task
    def plain(i: int) -> int:
        return i

    @flow(task_runner=task_runner)
    def pipeline(n: int) -> int:
        return sum(square.map(range(n)).result()) + plain(1)

    cold_value, cold = _flow_run_of(pipeline, 4)
    warm_value, warm = _flow_run_of(pipeline, 5)
    assert cold_value == warm_value - 16 == 15
    assert (cold.cache_hits, cold.cache_misses) == (0, 4), (cold.cache_hits, cold.cache_misses)
    assert (warm.cache_hits, warm.cache_misses) == (4, 1), (warm.cache_hits, warm.cache_misses)
    keys = {run.cache_key for run in warm.task_runs if run.task_name == "square"}
    assert None not in keys and len(keys) == 5, keys


def test_identical_runs_in_flight_compute_once(task_runner: Any, storage: Any, executions: Any) -> None:
    isolation = "serializable" if isinstance(task_runner, DaskTaskRunner) else None

    @task(cache_policy=INPUTS, result_storage=storage, cache_isolation=isolation)
    def expensive(x: int) -> int:
        executions.record("expensive")
        return x + 1

    @flow(task_runner=task_runner)
    def pipeline() -> list[int]:
        return [f.result() for f in [expensive.submit(7) for _ in range(6)]]

    values, states = _flow_task_states(pipeline)
    assert values == [8] * 6
    assert executions.count("expensive") == 1, f"{executions.count('expensive')} executions of one key"
    assert sorted(s.name for s in states) == ["Cached"] * 5 + ["Completed"], [s.name for s in states]


def test_without_isolation_identical_runs_do_not_wait_for_each_other(storage: Any, executions: Any) -> None:
    both_running = threading.Barrier(2, timeout=30)

    @task(cache_policy=INPUTS, result_storage=storage, cache_isolation="none")
    def rendezvous(x: int) -> int:
        executions.record("rendezvous")
        both_running.wait()  # only passes if the two identical runs run at the same time
        return x

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline() -> list[int]:
        return [f.result() for f in [rendezvous.submit(1), rendezvous.submit(1)]]

    assert pipeline() == [1, 1]
    assert executions.count("rendezvous") == 2


def test_a_maps_entries_read_back_as_one_dataset(task_runner: Any, storage: Any) -> None:
    @task(cache_policy=INPUTS, result_storage=storage)
    def month(m: int) -> pd.DataFrame:
        return pd.DataFrame({"month": [m] * 3, "value": [m * 10.0, m * 10.0 + 1, m * 10.0 + 2]})

    @task(cache_policy=INPUTS, result_storage=storage)
    def scalar(m: int) -> int:
        return m

    kept: dict[str, Any] = {}

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        kept["frames"] = month.map([1, 2, 3])
        kept["scalars"] = scalar.map([1, 2])
        kept["frames"].wait()
        kept["scalars"].wait()

    pipeline()
    frame = read_map(kept["frames"], month.result_storage).compute()
    assert frame["month"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert frame["value"].sum() == 10 * 3 * 6 + 9
    table = read_map(kept["frames"], storage, engine="arrow").to_table()
    assert table.num_rows == 9 and table.column_names[:2] == ["month", "value"]
    with pytest.raises(ResultError, match="holds a python, not a DataFrame"):
        read_map(kept["scalars"], storage)


def test_read_map_names_a_run_without_an_entry(daskflow_home: Path) -> None:
    @task
    def plain(i: int) -> pd.DataFrame:
        return pd.DataFrame({"i": [i]})

    kept: dict[str, Any] = {}

    @flow
    def pipeline() -> None:
        kept["futures"] = plain.map([1, 2])

    pipeline()
    with pytest.raises(ResultError, match=r"item 0 \('plain-\d+'\) has no cache entry.*cache_policy=INPUTS"):
        read_map(kept["futures"])


def test_a_failed_run_never_writes_an_entry(task_runner: Any, storage: Any, executions: Any) -> None:
    @task(cache_policy=INPUTS, result_storage=storage)
    def flaky(x: int) -> int:
        executions.record("flaky")
        if executions.count("flaky") == 1:
            raise ValueError("first attempt fails")
        return x

    @flow(task_runner=task_runner)
    def pipeline() -> State:
        return flaky.submit(1, return_state=True)  # type: ignore[return-value]

    first = pipeline(return_state=True)
    assert first.is_failed()
    assert list(storage.entries()) == [], "a failed run wrote a cache entry"
    assert pipeline() == 1
    assert len(list(storage.entries())) == 1


def test_refresh_cache_recomputes_and_overwrites(task_runner: Any, storage: Any, executions: Any) -> None:
    @task(cache_policy=INPUTS, result_storage=storage)
    def stamp(x: int) -> int:
        executions.record("stamp")
        return executions.count("stamp")

    @flow(task_runner=task_runner)
    def pipeline(refresh: bool) -> int:
        return stamp.with_options(refresh_cache=refresh)(1)

    assert pipeline(False) == 1
    assert pipeline(False) == 1  # a hit
    assert pipeline(True) == 2  # recomputed
    assert pipeline(False) == 2  # and the entry was overwritten
    assert executions.count("stamp") == 2


def test_expired_entries_are_misses(task_runner: Any, storage: Any, executions: Any) -> None:
    # Two tasks so that no assertion depends on how fast a run starts: an entry that expires in an
    # hour is a hit on the next run; one that expires in 0.5 s is a miss once that much time passed.
    @task(cache_policy=INPUTS, cache_expiration=timedelta(hours=1), result_storage=storage)
    def long_lived(x: int) -> int:
        executions.record("long")
        return x

    @task(cache_policy=INPUTS, cache_expiration=timedelta(seconds=0.5), result_storage=storage)
    def short_lived(x: int) -> int:
        executions.record("short")
        return x

    @flow(task_runner=task_runner)
    def pipeline() -> tuple[int, int]:
        return long_lived(3), short_lived(3)

    assert pipeline() == (3, 3)
    time.sleep(0.6)  # the entry's age, not synchronisation: expiry is about wall-clock time
    assert pipeline() == (3, 3)
    assert executions.count("long") == 1
    assert executions.count("short") == 2


def test_a_corrupt_entry_is_a_warning_and_one_recompute(
    task_runner: Any, storage: Any, executions: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @task(cache_policy=INPUTS, result_storage=storage)
    def value(x: int) -> dict[str, int]:
        executions.record("value")
        return {"x": x}

    @flow(task_runner=task_runner)
    def pipeline() -> dict[str, int]:
        return value(5)

    assert pipeline() == {"x": 5}
    [entry] = list(storage.entries())
    with fsspec.open(entry.path, "wb", **storage.storage_options) as f:
        f.write(b"PAR1 this is not a parquet file PAR1")
    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert pipeline() == {"x": 5}
    assert executions.count("value") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(entry.key in m for m in warnings), warnings
    assert pipeline() == {"x": 5} and executions.count("value") == 2, "the recompute rewrote a good entry"


def test_an_unhashable_argument_fails_the_run_naming_task_and_argument() -> None:
    import threading

    @task(name="load", cache_policy=INPUTS)
    def load(conn: Any, table: str) -> str:
        return table

    @task(name="load-excluded", cache_policy=INPUTS - "conn")
    def load_excluded(conn: Any, table: str) -> str:
        return table

    seen: dict[str, State] = {}

    @flow
    def pipeline() -> None:
        seen["state"] = load(threading.Lock(), "orders", return_state=True)  # type: ignore[assignment]

    pipeline()
    state = seen["state"]
    assert state.is_failed() and isinstance(state.exception, UnhashableInputError), state
    message = state.message or ""
    assert "load" in message and "conn" in message and "lock" in message.lower(), message
    assert 'INPUTS - "conn"' in message, message

    @flow
    def excluded() -> str:
        return load_excluded(threading.Lock(), "orders")

    assert excluded() == "orders"


def test_no_cache_and_tasks_without_a_policy_never_store(daskflow_home: Path) -> None:
    @task
    def plain(x: int) -> int:
        return x

    @task(cache_policy=NO_CACHE)
    def opted_out(x: int) -> int:
        return x

    @flow
    def pipeline() -> tuple[int, int]:
        return plain(1), opted_out(2)

    assert pipeline() == (1, 2)
    results = daskflow_home / "results"
    assert not results.exists() or not any(results.iterdir())


def test_the_seed_task_input_hash_caches_by_arguments(daskflow_home: Path, executions: Any) -> None:
    @task(cache_key_fn=task_input_hash, cache_expiration=timedelta(hours=1))
    def extract_orders(execution_date: str) -> pd.DataFrame:
        executions.record(execution_date)
        return pd.DataFrame({"day": [execution_date]})

    @flow
    def etl(day: str) -> int:
        return len(extract_orders(day))

    assert etl("2024-01-15") == 1
    assert etl("2024-01-15") == 1
    assert etl("2024-01-16") == 1
    assert executions.keys() == ["2024-01-15", "2024-01-16"]


_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from daskflow import flow, task
    from daskflow.cache_policies import INPUTS, TASK_SOURCE

    @task(cache_policy=INPUTS + TASK_SOURCE)
    def describe(payload: dict) -> str:
        print("EXECUTED")
        return repr(sorted(payload["set"])) + repr(payload["nested"])

    @flow
    def pipeline() -> str:
        return describe({"set": {3, 1, 2}, "nested": {"b": [1.5, None], "a": ("x", b"y")}})

    print(pipeline())
    """
)


def test_keys_match_across_processes_with_different_hash_seeds(tmp_path: Path) -> None:
    script = tmp_path / "cached_flow.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "DASKFLOW_HOME": str(tmp_path / "home"), "DASK_DASKFLOW__LOGGING__CONSOLE": "false"}
    outputs = []
    for seed in ("0", "1", "12345"):
        result = subprocess.run(
            [sys.executable, str(script)],
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout)
    executed = [out.count("EXECUTED") for out in outputs]
    assert executed == [1, 0, 0], f"executions per process (hash seeds 0, 1, 12345): {executed}"


def test_editing_the_source_misses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executions: Any) -> None:
    module = tmp_path / "edited_task_module.py"

    def load_version(body: str) -> Any:
        module.write_text(
            "from daskflow import task\nfrom daskflow.cache_policies import INPUTS, TASK_SOURCE\n"
            f"@task(cache_policy=INPUTS + TASK_SOURCE)\ndef compute(x):\n    {body}\n"
        )
        namespace: dict[str, Any] = {}
        exec(compile(module.read_text(), str(module), "exec"), namespace)
        return namespace["compute"]

    first = load_version("return x + 1")
    second = load_version("return x + 2")
    assert first(1) == 2 and first(1) == 2
    assert second(1) == 3, "an edited function must not read the old function's entry"


@pytest.mark.slow
def test_values_lost_with_a_worker_come_back_from_the_cache_not_a_recompute(tmp_path: Path, executions: Any) -> None:
    storage = ResultStore((tmp_path / "results").as_uri())

    def ended(task: Any, run: Any, state: State) -> None:  # runs on a hit too: counts the runs
        executions.record(f"ended-{run.name}-{state.name}")

    @task(cache_policy=INPUTS, result_storage=storage, on_completion=[ended])
    def work(i: int) -> int:
        executions.record(f"work-{i}")
        return i * 3

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    with private_client() as client:
        killed: dict[str, Any] = {}

        @flow(task_runner=DaskTaskRunner(client=client))
        def pipeline() -> int:
            futures = work.map(range(20))
            futures.wait()
            # The entries are written behind the values on the workers: this test is about values whose
            # entries landed (a write lost with its worker is a recorded re-run: test_dask_recompute.py).
            ctx = get_flow_run_context()
            assert ctx is not None
            landed = ctx.task_runner.drain_writes(ctx.flow_run.id)
            assert landed.landed == 20 and not landed.failed and not landed.unfinished, landed
            holders = client.who_has([f.dask_future for f in futures])  # type: ignore[attr-defined]
            victim = next(iter(holders[futures[0].dask_future.key]))  # type: ignore[attr-defined]
            killed["lost"] = sum(1 for workers in holders.values() if set(workers) == {victim})
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            # The reduce must not start on the dying worker: that would be a crash of the reduce
            # (an attempt under its own policy), not the loss this test is about. Polled: the
            # scheduler is another process, with no event to wait on here.
            deadline = time.monotonic() + 60
            while victim in client.scheduler_info()["workers"] and time.monotonic() < deadline:
                time.sleep(0.05)
            return total(futures)

        assert pipeline() == 3 * sum(range(20))
    hits = [key for key in executions.keys() if key.startswith("ended-") and key.endswith("-Cached")]
    assert killed["lost"] > 0 and len(hits) == killed["lost"], (killed["lost"], hits)
    counts = [executions.count(f"work-{i}") for i in range(20)]
    assert counts == [1] * 20, f"{sum(counts) - 20} of {killed['lost']} lost values were recomputed, not read back"


# -- data versions: a run over a cached value is keyed by the value's version --------------


def _flip_a_data_byte(store: ResultStore, key_prefix: str) -> str:
    """Damage a data page of the one entry whose key starts with ``key_prefix``; its footer stays readable."""
    [entry] = [e for e in store.entries() if e.key.startswith(key_prefix)]
    data = bytearray(raw_bytes(store, entry.key))
    data[len(data) // 3] ^= 0xFF
    put_raw(store, entry.key, bytes(data))
    return entry.key


def _version_pipeline(task_runner: Any, storage: Any, executions: Any, **split_options: Any) -> Any:
    @task(name="split", cache_policy=INPUTS, result_storage=storage, **split_options)
    def split(seed: int) -> list[pd.DataFrame]:
        executions.record("split")
        rng = np.random.default_rng(seed)  # random floats: the entry stays over 1 MiB on disk
        return [pd.DataFrame({"x": rng.random(100_000), "part": i}) for i in range(3)]

    @task(name="summarise", cache_policy=INPUTS, result_storage=storage)
    def summarise(part: pd.DataFrame) -> float:
        executions.record("summarise")
        return float(part["x"].sum())

    @flow(task_runner=task_runner)
    def pipeline(seed: int) -> list[float]:
        return summarise.map(split.submit(seed)).result()

    return pipeline


def test_a_map_over_a_cached_list_is_keyed_by_its_version_and_never_reads_it(
    task_runner: Any, storage: Any, executions: Any
) -> None:
    pipeline = _version_pipeline(task_runner, storage, executions)
    cold, cold_run = _flow_run_of(pipeline, 7)
    assert executions.keys().count("summarise") == 3 and executions.count("split") == 1
    # The list's data pages are damaged: a warm run that read them would fail or miss.
    _flip_a_data_byte(storage, "split-")
    warm, warm_run = _flow_run_of(pipeline, 7)
    assert warm == cold and len(cold) == 3
    assert (warm_run.cache_hits, warm_run.cache_misses) == (4, 0), [r.state for r in warm_run.task_runs]
    assert len(executions.all()) == 4, executions.keys()
    keys = {run.map_index: run.cache_key for run in cold_run.task_runs if run.task_name == "summarise"}
    assert keys == {run.map_index: run.cache_key for run in warm_run.task_runs if run.task_name == "summarise"}


def test_a_damaged_value_needed_downstream_fails_clearly_and_the_next_run_recomputes(
    task_runner: Any, storage: Any, executions: Any
) -> None:
    pipeline = _version_pipeline(task_runner, storage, executions)
    expected = pipeline(3)
    for entry in list(storage.entries()):
        if entry.key.startswith("summarise-"):
            storage.delete(entry.key)  # the runs downstream now need the list's items
    key = _flip_a_data_byte(storage, "split-")
    state = pipeline(3, return_state=True)
    assert state.is_failed()
    failed = [run for run in state.flow_run.task_runs if run.state.is_failed()]
    assert {run.task_name for run in failed} == {"summarise"}, [
        (r.task_name, r.state) for r in state.flow_run.task_runs
    ]
    messages = [run.state.message or "" for run in failed]
    assert all("argument 'part'" in m and key in m for m in messages), messages
    assert any("the entry was removed" in m for m in messages), messages
    assert not storage.exists(key)
    assert pipeline(3) == expected  # recomputed from scratch
    assert executions.count("split") == 2


def test_refreshing_a_cached_upstream_gives_its_value_a_new_version(
    task_runner: Any, storage: Any, executions: Any
) -> None:
    pipeline = _version_pipeline(task_runner, storage, executions)
    first = pipeline(5)
    refreshed = _version_pipeline(task_runner, storage, executions, refresh_cache=True)
    assert refreshed(5) == first
    # Same inputs, same values; but a rewritten upstream entry is new data to what runs downstream.
    assert executions.count("split") == 2 and executions.count("summarise") == 6


def test_the_caller_reads_a_hit_left_in_storage(task_runner: Any, storage: Any, executions: Any) -> None:
    @task(cache_policy=INPUTS, result_storage=storage)
    def frames(seed: int) -> list[pd.DataFrame]:
        executions.record("frames")
        rng = np.random.default_rng(seed)
        return [pd.DataFrame({"x": rng.random(100_000)}) for _ in range(2)]

    @flow(task_runner=task_runner)
    def pipeline() -> tuple[list[pd.DataFrame], bool]:
        future = frames.submit(1)
        return future.result(), future.state.is_cached()  # (a state in the return value would be resolved)

    cold, _ = pipeline()
    warm, cached = pipeline()
    assert cached and executions.count("frames") == 1
    assert len(warm) == 2
    for got, want in zip(warm, cold):
        pd.testing.assert_frame_equal(got, want)


def test_a_cache_key_fn_downstream_of_a_cached_value_gets_the_value(
    task_runner: Any, storage: Any, executions: Any
) -> None:
    @task(cache_policy=INPUTS, result_storage=storage)
    def numbers(n: int) -> list[int]:
        return list(range(n))

    def by_length(context: Any, arguments: dict[str, Any]) -> str:
        executions.record(f"key-fn-{type(arguments['values']).__name__}")  # a file: seen from any process
        return f"n{len(arguments['values'])}"

    @task(cache_key_fn=by_length, result_storage=storage)
    def count(values: list[int]) -> int:
        return len(values)

    @flow(task_runner=task_runner)
    def pipeline() -> int:
        return count(numbers.submit(1000))

    assert pipeline() == pipeline() == 1000
    assert executions.keys() == ["key-fn-list", "key-fn-list"], executions.keys()


@pytest.mark.parametrize("first", ["threadpool", "dask"])
def test_versioned_keys_are_the_same_on_every_runner(
    first: str, dask_client: Any, tmp_path: Path, executions: Any
) -> None:
    storage = ResultStore((tmp_path / "results").as_uri())
    order = [first, *(name for name in sorted(RUNNER_FACTORIES) if name != first)]
    runners = [RUNNER_FACTORIES[name]() for name in order]
    pipelines = [_version_pipeline(runner, storage, executions) for runner in runners]
    values = [pipeline(11) for pipeline in pipelines]  # computed on the first, hits on the others
    assert values[0] == values[1] == values[2]
    assert executions.count("split") == 1 and executions.count("summarise") == 3, executions.keys()


def test_a_map_over_a_cached_set_takes_its_items_as_iteration_gives_them(task_runner: Any, storage: Any) -> None:
    @task(cache_policy=INPUTS, result_storage=storage)
    def letters(word: str) -> set[str]:
        return set(word)

    @task(cache_policy=INPUTS, result_storage=storage)
    def upper(letter: str) -> str:
        return letter.upper()

    @flow(task_runner=task_runner)
    def pipeline(word: str) -> list[str]:
        return sorted(upper.map(letters.submit(word)).result())

    assert pipeline("abca") == pipeline("abca") == ["A", "B", "C"]
