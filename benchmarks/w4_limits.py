"""W4: concurrency limits — 20 sleeps of 0.1 s under a limit of 5 on 2 workers x 10 threads.

Twenty tasks that each sleep 0.1 s run under one limit of 5 on a cluster of
2 worker processes x 10 threads: 20 threads for 20 tasks, so only the limit
holds them back, and the ideal wall time is 20 / 5 x 0.1 = 0.4 s. Each task
returns its start and end times; the suite reports the most tasks ever in
progress at once (it must be exactly 5) and the wall time over the ideal
(the goal is 1.3x). The baseline is raw Dask with a ``distributed.Semaphore``
of 5 taken inside each task, on the same cluster.

A second row prices a limit on W1's tiny tasks: ``inc.map(range(1_000))`` +
reduce with ``concurrency_limit`` larger than the thread count (so it never
makes anyone wait), against the same daskflow flow without a limit, on W1's
cluster (2 workers x 1 thread). It is the cost of asking the scheduler for a
slot and giving it back, per task (the goal is under 1.3x).

Prefect 3 is not run here: its limits are server-side objects that need a
Prefect server set up with them, which W4's 0.4 s would be lost in.

    python benchmarks/w4_limits.py            # best of 5
    python benchmarks/w4_limits.py --quick    # best of 2
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from common import (
    CLUSTER_VARIANTS,
    SuiteResult,
    alternate,
    comparison_row,
    finish_suite,
    local_cluster,
    quiet_daskflow,
    suite_arguments,
    wait_until_idle,
    workers_cpu_probe,
)

SUITE = "W4"
TITLE = "limit: 20 x sleep(0.1) under a limit of 5 on 2 workers x 10 threads; and a limit's cost on W1"
N = 20
LIMIT = 5
NAP_S = 0.1
IDEAL_S = N / LIMIT * NAP_S
W1_N = 1_000


def nap(i: int) -> tuple[float, float]:
    started = time.time()
    time.sleep(NAP_S)
    return started, time.time()


def raw_nap(i: int, semaphore: Any) -> tuple[float, float]:
    with semaphore:
        return nap(i)


def inc(x: int) -> int:
    return x + 1


def total(values: list[int]) -> int:
    return sum(values)


def peak(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals in progress at once."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1])
    )
    most = current = 0
    for _, delta in events:
        current += delta
        most = max(most, current)
    return most


def daskflow_limited(client: Any, limit: int = LIMIT) -> Callable[[int], list[tuple[float, float]]]:
    """The W4 flow on ``client``'s cluster: ``n`` naps under a limit of ``limit``; each nap's (start, end)."""
    from daskflow import flow, task
    from daskflow.task_runners import DaskTaskRunner

    nap_task = task(nap, name="w4-nap", concurrency_limit=limit)

    @flow(name="w4-limit", task_runner=DaskTaskRunner(client=client))
    def limited(n: int) -> list[tuple[float, float]]:
        return nap_task.map(range(n)).result()

    return limited


def raw_limited(
    client: Any, limit: int = LIMIT, name: str = "w4-raw-limit"
) -> Callable[[int], list[tuple[float, float]]]:
    """The baseline: ``n`` naps in raw Dask, each inside a ``distributed.Semaphore`` of ``limit``."""
    from distributed import Semaphore

    semaphore = Semaphore(max_leases=limit, name=name)

    def run(n: int) -> list[tuple[float, float]]:
        futures = client.map(raw_nap, range(n), semaphore=semaphore, pure=False)
        intervals: list[tuple[float, float]] = client.gather(futures)
        return intervals

    return run


def measure_limit(repeats: int) -> tuple[Any, list[str]]:
    peaks: dict[str, list[int]] = {"daskflow": [], "raw Dask": []}
    with local_cluster(threads_per_worker=10) as client:
        limited, raw = daskflow_limited(client), raw_limited(client)

        def run_daskflow() -> None:
            peaks["daskflow"].append(peak(limited(N)))

        def run_raw() -> None:
            peaks["raw Dask"].append(peak(raw(N)))

        runs = {"daskflow": run_daskflow, "raw Dask": run_raw}
        settle = lambda: wait_until_idle(client)  # noqa: E731
        alternate(runs, 1, before_each=settle)  # warm-up
        peaks["daskflow"].clear()
        peaks["raw Dask"].clear()
        result = alternate(runs, repeats, before_each=settle, workers_cpu=workers_cpu_probe(client))
    ours, base = result["daskflow"], result["raw Dask"]
    row = comparison_row(
        SUITE,
        f"limit {LIMIT}, {N} x sleep({NAP_S}) [2 x 10 threads]",
        N,
        ours,
        base,
        baseline="raw Dask + Semaphore",
        notes=(
            f"{ours.best_s / IDEAL_S:.2f}x the {IDEAL_S:g} s ideal (raw {base.best_s / IDEAL_S:.2f}x); "
            f"most at once: daskflow {max(peaks['daskflow'])}, raw {max(peaks['raw Dask'])} (limit {LIMIT})"
        ),
        metrics={
            "ideal_s": IDEAL_S,
            "ratio_to_ideal": ours.best_s / IDEAL_S,
            "baseline_ratio_to_ideal": base.best_s / IDEAL_S,
            "daskflow_peak": max(peaks["daskflow"]),
            "daskflow_peak_min": min(peaks["daskflow"]),
            "baseline_peak": max(peaks["raw Dask"]),
        },
    )
    notes = []
    if set(peaks["daskflow"]) != {LIMIT}:
        notes.append(f"daskflow's peaks per run were {peaks['daskflow']}, not always {LIMIT}")
    return row, notes


def daskflow_capped(client: Any) -> Callable[[int, bool], int]:
    """W1 on ``client``'s cluster, its map under a limit of 100 (never reached) or under none."""
    from daskflow import flow, task
    from daskflow.task_runners import DaskTaskRunner

    plain, capped = task(inc, name="w4-inc"), task(inc, name="w4-inc-capped", concurrency_limit=100)
    total_task = task(total)

    @flow(name="w4-w1", task_runner=DaskTaskRunner(client=client))
    def fanout(n: int, limited: bool) -> int:
        return total_task((capped if limited else plain).map(range(n)))

    return fanout


def measure_cost(variant: str, config: dict[str, Any], n: int, repeats: int) -> Any:
    with local_cluster(config) as client:
        fanout = daskflow_capped(client)
        runs = {"with a limit": lambda: fanout(n, True), "without": lambda: fanout(n, False)}
        settle = lambda: wait_until_idle(client)  # noqa: E731
        alternate(runs, 1, before_each=settle)
        result = alternate(runs, repeats, before_each=settle, workers_cpu=workers_cpu_probe(client))
    ours, base = result["with a limit"], result["without"]
    per_task_ms = (ours.best_s - base.best_s) / n * 1e3
    return comparison_row(
        SUITE,
        f"W1 with a limit of 100 (never reached) [{variant}]",
        n,
        ours,
        base,
        baseline="daskflow W1 without a limit",
        notes=f"{per_task_ms:+.2f} ms per task for the slot",
        metrics={"variant": variant, "limit_ms_per_task": per_task_ms},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = suite_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    args = parser.parse_args(argv)
    quiet_daskflow()
    repeats = args.repeats or (2 if args.quick else 5)
    result = SuiteResult(SUITE, TITLE, quick=args.quick)
    row, notes = measure_limit(repeats)
    result.rows.append(row)
    result.notes.extend(notes)
    n = 200 if args.quick else W1_N
    for variant, config in CLUSTER_VARIANTS:
        result.rows.append(measure_cost(variant, config, n, repeats))
    result.notes.append(f"best of {repeats} after a warm-up, alternating; Prefect 3 not run (server-side limits)")
    return finish_suite(result, args.json)


if __name__ == "__main__":
    # Run as the importable module: the workers find nap and raw_nap by reference.
    import w4_limits

    raise SystemExit(w4_limits.main())
