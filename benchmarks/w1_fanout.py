"""W1: fan-out — a map of N trivial tasks and one reduce, daskflow versus raw Dask on one cluster.

The flow maps ``inc`` over ``range(N)`` and hands the N futures to one
``total`` task; the baseline is what a Dask user writes for the same graph,
``client.map(inc, range(N), pure=False)`` then ``client.submit(total, futures)``.
The task bodies are trivial, so the difference is daskflow itself: turning
each call into a run record, the engine around each task on the worker, the
state events coming back. Both run on the same ``LocalCluster`` (2 worker
processes x 1 thread), alternately, best of k, after a small warm-up of
each, so the ratio holds on a noisy shared machine.

Each size is measured twice, on two clusters: with Dask's default queuing
and with ``distributed.scheduler.worker-saturation: inf``; the spec asks for
both, since queuing alone costs about 4x on tasks this small.

The client's peak resident memory is measured for each run (its peak is
reset before the run): the ``LocalCluster`` scheduler lives in the client
process, so the figure includes the scheduler's state for the N tasks, for
both contenders alike. N = 100,000 is the large-map suite
(``w1_large_map.py``), which is about memory.

When ``prefect`` and ``prefect-dask`` are importable, Prefect 3 runs the
same flow on the same cluster from a child process, at the smallest N, once
(it takes about 78 ms a task); otherwise a note says it was skipped.

    python benchmarks/w1_fanout.py            # N = 1,000 and 10,000, best of 3
    python benchmarks/w1_fanout.py --quick    # N = 1,000, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import (
    CLUSTER_VARIANTS,
    Row,
    SuiteResult,
    alternate,
    best_of,
    comparison_row,
    finish_suite,
    local_cluster,
    prefect_in_child,
    prefect_missing,
    quiet_daskflow,
    raw_dask_pipeline,
    suite_arguments,
    wait_until_idle,
    workers_cpu_probe,
)

SUITE = "W1"
TITLE = "fan-out: inc.map(range(N)) then one total(...) reduce, daskflow versus raw Dask"
WARMUP_N = 200  # enough to load the functions, open the connections and start the event threads
PREFECT_TIMEOUT_S = 1800


def inc(x: int) -> int:
    return x + 1


def total(values: list[int]) -> int:
    return sum(values)


def expected(n: int) -> int:
    return n * (n + 1) // 2


def checked(value: int, n: int) -> int:
    # A wrong sum would mean one side did less work: its time would mean nothing.
    if value != expected(n):
        raise AssertionError(f"fan-out of {n} gave {value}, expected {expected(n)}")
    return value


def daskflow_fanout(client: Any) -> Callable[[int], int]:
    """The W1 flow on ``client``'s cluster."""
    # Imported here, after quiet_daskflow(): daskflow reads its console setting at import.
    from daskflow import flow, task
    from daskflow.task_runners import DaskTaskRunner

    inc_task = task(inc)
    total_task = task(total)

    @flow(name="w1-fanout", task_runner=DaskTaskRunner(client=client))
    def fanout(n: int) -> int:
        return total_task(inc_task.map(range(n)))

    return fanout


def contenders(client: Any, fanout: Callable[[int], int], n: int) -> dict[str, Callable[[], object]]:
    return {
        "daskflow": lambda: checked(fanout(n), n),
        "raw Dask": lambda: checked(raw_dask_pipeline(client, range(n), [inc], total), n),
    }


def measure_variant(
    variant: str, config: dict[str, Any], sizes: Sequence[int], repeats: int, prefect: bool, script: str
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    with local_cluster(config) as client:
        fanout = daskflow_fanout(client)
        leftovers: list[int] = []

        def settle() -> None:
            leftovers.append(wait_until_idle(client))

        alternate(contenders(client, fanout, min(WARMUP_N, *sizes)), 1, before_each=settle)
        for n in sizes:
            result = alternate(
                contenders(client, fanout, n), repeats, before_each=settle, workers_cpu=workers_cpu_probe(client)
            )
            ours, base = result["daskflow"], result["raw Dask"]
            notes_text = (
                f"{ours.best_s / n * 1e3:.2f} vs {base.best_s / n * 1e3:.2f} ms/task; "
                f"CPU ms/task client {ours.client_cpu_s / n * 1e3:.2f} vs {base.client_cpu_s / n * 1e3:.2f}, "
                f"workers {ours.workers_cpu_s / n * 1e3:.2f} vs {base.workers_cpu_s / n * 1e3:.2f}; "
                f"client peak RSS {ours.peak_rss_mib:.0f} vs {base.peak_rss_mib:.0f} MiB"
            )
            row = comparison_row(SUITE, f"fan-out map+reduce [{variant}]", n, ours, base, notes=notes_text)
            row.metrics["variant"] = variant
            row.metrics["python_s"] = best_of(lambda: checked(total([inc(i) for i in range(n)]), n), max(repeats, 3))
            if prefect and n == min(sizes):
                figures, note = prefect_in_child(
                    script, ["--address", client.scheduler.address, "--n", str(n)], PREFECT_TIMEOUT_S
                )
                notes.append(note)
                if figures is not None:
                    row.metrics.update(prefect_s=figures["seconds"], prefect_ratio=figures["seconds"] / base.best_s)
                    row.notes += f"; Prefect {figures['seconds']:.3g} s ({figures['seconds'] / base.best_s:.1f}x)"
            rows.append(row)
        left = max(leftovers, default=0)
        if left:
            notes.append(f"[{variant}] {left} tasks were still on the scheduler 60 s after a run ended")
    return rows, notes


STARTED_SHAPE = {"n_workers": 2, "threads_per_worker": 1, "processes": True}  # Dask's own shape on 2 cores


def measure_started(sizes: Sequence[int], repeats: int) -> list[Row]:
    """W1 on the cluster ``DaskTaskRunner()`` starts, versus raw Dask on a default ``LocalCluster``.

    Issue 14 goal 4: the clusters daskflow starts for a flow run choose settings for
    orchestration (no queuing, see ``task_runners/dask_cluster.py``); the baseline is
    what a Dask user gets from ``LocalCluster()`` of the same shape, default config.
    Each side starts and closes its own cluster inside the timed run, as a flow run
    with ``DaskTaskRunner()`` does, so both pay the same start-up.
    """
    import logging

    from distributed import Client, LocalCluster

    from daskflow import flow, task
    from daskflow.task_runners import DaskTaskRunner

    quiet = {"silence_logs": logging.ERROR}
    inc_task = task(inc)
    total_task = task(total)

    @flow(name="w1-fanout-started", task_runner=DaskTaskRunner(cluster_kwargs={**STARTED_SHAPE, **quiet}))
    def fanout(n: int) -> int:
        return total_task(inc_task.map(range(n)))

    def raw(n: int) -> int:
        shape = {**STARTED_SHAPE, **quiet, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
        with LocalCluster(**shape) as cluster, Client(cluster, set_as_default=False) as client:
            return raw_dask_pipeline(client, range(n), [inc], total)

    rows = []
    for n in sizes:
        load_before = os.getloadavg()[0]  # wall times on a shared machine mean little without it
        result = alternate({"daskflow": lambda: checked(fanout(n), n), "raw Dask": lambda: checked(raw(n), n)}, repeats)
        load_after = os.getloadavg()[0]
        ours, base = result["daskflow"], result["raw Dask"]
        row = comparison_row(
            SUITE,
            "fan-out on the cluster DaskTaskRunner() starts vs raw Dask on LocalCluster() [default], start-up included",
            n,
            ours,
            base,
            notes=(
                f"{ours.best_s / n * 1e3:.2f} vs {base.best_s / n * 1e3:.2f} ms/task; speedup "
                f"{base.best_s / ours.best_s:.2f}x; client CPU {ours.client_cpu_s:.2f} vs {base.client_cpu_s:.2f} s; "
                f"load {load_before:.1f} -> {load_after:.1f}"
            ),
        )
        row.metrics["variant"] = "started"
        rows.append(row)
    return rows


def measure_prefect(address: str, n: int) -> dict[str, Any]:
    """W1 on Prefect 3 + prefect-dask, on the cluster at ``address``; in this (child) process."""
    import prefect
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner as PrefectDaskTaskRunner

    inc_task = task(inc)
    total_task = task(total)

    @flow(task_runner=PrefectDaskTaskRunner(address=address))
    def fanout(n: int) -> int:
        return total_task.submit(inc_task.map(range(n))).result()

    fanout(10)  # the first call starts Prefect's API server: a one-off, not a per-run cost
    started = time.perf_counter()
    checked(fanout(n), n)
    return {"version": prefect.__version__, "seconds": time.perf_counter() - started, "n": n}


def main(argv: Sequence[str] | None = None) -> int:
    parser = suite_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, action="append", help="a size to run; repeatable (default 1,000 and 10,000)")
    parser.add_argument(
        "--variant", choices=[name for name, _ in CLUSTER_VARIANTS], action="append", help="only this scheduler setting"
    )
    parser.add_argument("--no-prefect", action="store_true", help="do not run the Prefect comparison")
    parser.add_argument(
        "--started-only", action="store_true", help="only the cluster DaskTaskRunner() starts versus LocalCluster()"
    )
    parser.add_argument("--no-started", action="store_true", help="leave out the started-cluster comparison")
    parser.add_argument("--prefect-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.prefect_child:
        print(json.dumps(measure_prefect(args.address, args.n[0])), flush=True)
        return 0

    quiet_daskflow()
    sizes = sorted(args.n or ([1_000] if args.quick else [1_000, 10_000]))
    repeats = args.repeats or (1 if args.quick else 3)
    variants = [(name, config) for name, config in CLUSTER_VARIANTS if not args.variant or name in args.variant]
    result = SuiteResult(SUITE, TITLE, quick=args.quick)

    missing = prefect_missing()
    if args.no_prefect:
        result.notes.append("Prefect 3 skipped: --no-prefect")
    elif missing:
        result.notes.append(missing)
    # Prefect runs in quick runs too (issue 14 goal 6: `make bench` sets them side by side), at
    # the smallest N only: it takes about 78 ms a task.
    prefect = not (args.no_prefect or missing)

    if not args.no_started:
        result.rows.extend(measure_started(sizes, repeats))
    if args.started_only:
        variants = []
    for index, (variant, config) in enumerate(variants):
        # Prefect at one setting is enough: its own cost dwarfs the scheduler's.
        rows, notes = measure_variant(variant, config, sizes, repeats, prefect and index == 0, __file__)
        result.rows.extend(rows)
        result.notes.extend(notes)
    result.notes.append(
        f"best of {repeats} after a warm-up of N={min(WARMUP_N, *sizes)}, alternating daskflow and raw Dask; "
        "'A vs B' is daskflow vs raw Dask; client CPU and RSS include the LocalCluster scheduler "
        "(it runs in the client process); CPU is the least of any run, less disturbed by other load than wall time"
    )
    return finish_suite(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
