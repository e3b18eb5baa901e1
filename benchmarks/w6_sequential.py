"""W6: what daskflow adds to a task call, and to a flow call, with no Dask at all.

A flow on ``SequentialTaskRunner`` calls a trivial task N times (each call
returns its argument plus one); the baseline is the same for-loop calling the
undecorated function, the floor any orchestrator sits on. The difference
divided by N is daskflow's own cost per task call: binding the arguments, a
run record, the state changes (Pending, Running, Completed), the task-run
context and the logger plumbing. The flow's start-up is inside the daskflow
time too; the empty-flow rows show it is a few milliseconds, spread over N.

The second figure is the cost of calling an empty flow, on the sequential and
the thread-pool runner: what a user pays for ``@flow`` on a function that
does nothing (Prefect 3 pays about a second, for its heartbeat thread and
API round trips).

When ``prefect`` is importable, the same two workloads run on Prefect 3 in a
child process (importing Prefect changes logging and starts its ephemeral
API server, which must not colour daskflow's figures) and appear as extra
figures in the rows; otherwise the notes say it was skipped and why.

    python benchmarks/w6_sequential.py            # N = 10,000
    python benchmarks/w6_sequential.py --quick    # N = 2,000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from common import Row, SuiteResult, best_of, finish_suite, peak_rss_mib, suite_arguments

SUITE = "W6"
TITLE = "sequential runner: direct task calls in a flow, no Dask, versus plain Python"
PREFECT_TIMEOUT_S = 1800


def inc(x: int) -> int:
    return x + 1


def empty() -> None:
    return None


def call_repeatedly(fn: Callable[[], object], times: int) -> None:
    for _ in range(times):
        fn()


def plain_loop(n: int) -> int:
    total = 0
    for i in range(n):
        total += inc(i)
    return total


def daskflow_workloads() -> tuple[Callable[[int], int], Callable[[], None], Callable[[], None]]:
    """The flows W6 times: ``n`` direct task calls on the sequential runner, and the two empty flows."""
    from daskflow import flow, task
    from daskflow.task_runners import SequentialTaskRunner, ThreadPoolTaskRunner

    inc_task = task(inc)

    @flow(task_runner=SequentialTaskRunner())
    def task_calls(n: int) -> int:
        total = 0
        for i in range(n):
            total += inc_task(i)
        return total

    empty_sequential = flow(name="empty-sequential", task_runner=SequentialTaskRunner())(empty)
    empty_thread_pool = flow(name="empty-thread-pool", task_runner=ThreadPoolTaskRunner())(empty)
    return task_calls, empty_sequential, empty_thread_pool


def measure_daskflow(n: int, calls: int, repeats: int) -> dict[str, Any]:
    # Run logs still become records, but nothing is printed: hundreds of flow-run lines on stderr
    # would measure the terminal and bury the table. daskflow sets up its console handler when it
    # is imported, from dask.config, so the setting goes in the environment first.
    os.environ.setdefault("DASK_DASKFLOW__LOGGING__CONSOLE", "False")
    task_calls, empty_sequential, empty_thread_pool = daskflow_workloads()

    # Warm up: the first call of a flow builds its parameter model and imports what it needs lazily.
    assert task_calls(10) == plain_loop(10)
    empty_sequential()
    empty_thread_pool()

    from daskflow import settings

    return {
        "console_logging": bool(settings.get("logging.console")),
        "task_calls_s": best_of(lambda: task_calls(n), repeats),
        "plain_loop_s": best_of(lambda: plain_loop(n), repeats),
        "empty_sequential_s": best_of(lambda: call_repeatedly(empty_sequential, calls), repeats),
        "empty_thread_pool_s": best_of(lambda: call_repeatedly(empty_thread_pool, calls), repeats),
        "plain_calls_s": best_of(lambda: call_repeatedly(empty, calls), repeats),
    }


def measure_prefect(n: int, calls: int) -> dict[str, Any]:
    """The W6 workloads on Prefect 3, in this (child) process; one repeat, since Prefect is slow."""
    import prefect
    from prefect import flow, task

    inc_task = task(inc)

    @flow
    def task_calls(n: int) -> int:
        total = 0
        for i in range(n):
            total += inc_task(i)
        return total

    empty_flow = flow(name="empty")(empty)
    # The first call starts Prefect's ephemeral API server (seconds): a one-off, not a per-run cost.
    task_calls(2)
    empty_flow()
    return {
        "version": prefect.__version__,
        "task_calls_s": best_of(lambda: task_calls(n), 1),
        "empty_flow_s": best_of(lambda: call_repeatedly(empty_flow, calls), 1),
        "empty_calls": calls,
    }


def prefect_figures(n: int, calls: int) -> tuple[dict[str, Any] | None, str]:
    """Prefect's figures from a child process, or None and the reason there are none."""
    if importlib.util.find_spec("prefect") is None:
        return None, "Prefect 3 skipped: prefect is not installed (pip install 'daskflow[bench]' to compare)"
    command = [sys.executable, __file__, "--prefect-child", "--n", str(n), "--calls", str(calls)]
    with tempfile.TemporaryDirectory(prefix="w6-prefect-home-") as prefect_home:
        # Prefect's ephemeral server keeps its database in PREFECT_HOME: a fresh one, not the user's.
        env = {**os.environ, "PREFECT_HOME": prefect_home}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PREFECT_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            return None, f"Prefect 3 skipped: it did not finish within {PREFECT_TIMEOUT_S} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"Prefect 3 skipped: its run failed ({detail})"
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures, f"Prefect {figures['version']} measured in a child process, one repeat"


def main(argv: Sequence[str] | None = None) -> int:
    parser = suite_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=None, help="task calls (default: 10,000; 2,000 with --quick)")
    parser.add_argument("--calls", type=int, default=None, help="empty flow calls timed (default 200; 50 with --quick)")
    parser.add_argument("--no-prefect", action="store_true", help="do not run the Prefect comparison")
    # The child process that measures Prefect (see prefect_figures).
    parser.add_argument("--prefect-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = args.n or (2_000 if args.quick else 10_000)
    calls = args.calls or (50 if args.quick else 200)
    repeats = args.repeats or (3 if args.quick else 5)

    if args.prefect_child:
        # A handful of empty Prefect flows is enough: each costs about a second.
        print(json.dumps(measure_prefect(n, min(calls, 5))))
        return 0

    result = SuiteResult(SUITE, TITLE, quick=args.quick)
    ours = measure_daskflow(n, calls, repeats)
    peers, peer_note = (None, "Prefect 3 skipped: --no-prefect") if args.no_prefect else prefect_figures(n, calls)
    rss = round(peak_rss_mib(), 1)

    overhead_us = (ours["task_calls_s"] - ours["plain_loop_s"]) / n * 1e6
    tasks = Row(
        SUITE,
        "sequential task calls",
        n,
        ours["task_calls_s"],
        ours["plain_loop_s"],
        "plain Python",
        notes=f"{overhead_us:.1f} µs overhead per task call",
        metrics={
            "per_call_overhead_us": overhead_us,
            "per_call_us": ours["task_calls_s"] / n * 1e6,
            "peak_rss_mib": rss,
        },
    )
    if peers is not None:
        peer_overhead_us = (peers["task_calls_s"] - ours["plain_loop_s"]) / n * 1e6
        tasks.metrics.update(prefect_s=peers["task_calls_s"], prefect_per_call_overhead_us=peer_overhead_us)
        tasks.notes += f"; Prefect {peer_overhead_us:,.0f} µs"
    result.rows.append(tasks)

    for runner, key in (("sequential", "empty_sequential_s"), ("thread pool", "empty_thread_pool_s")):
        per_call_ms = ours[key] / calls * 1e3
        row = Row(
            SUITE,
            f"empty flow call, {runner} runner",
            calls,
            ours[key],
            ours["plain_calls_s"],
            "plain Python",
            notes=f"{per_call_ms:.2f} ms per flow call",
            metrics={"per_flow_call_ms": per_call_ms},
        )
        if peers is not None:
            peer_ms = peers["empty_flow_s"] / peers["empty_calls"] * 1e3
            row.metrics.update(prefect_per_flow_call_ms=peer_ms)
            row.notes += f"; Prefect {peer_ms:,.0f} ms"
        result.rows.append(row)

    result.notes.append(peer_note)
    console = "on" if ours["console_logging"] else "off"
    result.notes.append(f"best of {repeats} repeats; daskflow console logging {console}; peak RSS {rss} MiB")
    return finish_suite(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
