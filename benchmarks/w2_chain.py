"""W2: chain — ``a.map`` -> ``b.map(a_futures)`` -> reduce, and what of it reaches the client.

The flow maps ``a`` over ``range(N)``, maps ``b`` over the N futures of
``a`` and hands the N futures of ``b`` to one ``total`` task; the baseline
is the same chain in raw Dask (``client.map`` over the futures of the map
before, then one ``client.submit``). Timed alternately on one
``LocalCluster`` (2 worker processes x 1 thread), best of k, at Dask's
default queuing and at ``worker-saturation: inf``, as W1.

The point of the suite is the second figure: a value passed from task to
task must move between workers, never through the client. Two independent
measurements of each run say whether it did:

- the values are :class:`common.Traced`, which count each unpickling in the
  process that does it: the client process's count is the number of values
  that came to it by any route (the expected number is 1, the reduce's result);
- the workers' ``transfer_outgoing_log`` records every ``get_data``, with
  the bytes written and who asked: fetches by anyone but a worker are bytes
  sent to the client (each run starts with an empty log, long enough for it).

The client process also hosts the scheduler, which never unpickles values;
so both counts are the client's alone.

    python benchmarks/w2_chain.py            # N = 1,000 and 10,000, best of 3
    python benchmarks/w2_chain.py --quick    # N = 1,000, one repeat
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from common import (
    CLUSTER_VARIANTS,
    Row,
    SuiteResult,
    Traced,
    alternate,
    client_transfers,
    comparison_row,
    finish_suite,
    local_cluster,
    prefect_in_child,
    prefect_missing,
    quiet_daskflow,
    raw_dask_pipeline,
    reset_client_transfers,
    suite_arguments,
    traced_unpickles,
    wait_until_idle,
    workers_cpu_probe,
)

SUITE = "W2"
TITLE = "chain: a.map -> b.map(a_futures) -> reduce, daskflow versus raw Dask; values through the client"
WARMUP_N = 200
PREFECT_TIMEOUT_S = 1800


def a(i: int) -> Traced:
    return Traced(i)


def b(item: Traced) -> Traced:
    return Traced(item.value * 2)


def total(items: list[Traced]) -> Traced:
    return Traced(sum(item.value for item in items))


def checked(value: Traced, n: int) -> Traced:
    # A wrong sum would mean one side did less work: its time and its counts would mean nothing.
    if not isinstance(value, Traced) or value.value != n * (n - 1):
        raise AssertionError(f"chain of {n} gave {value!r}, expected Traced({n * (n - 1)})")
    return value


def daskflow_chain(client: Any) -> Callable[[int], Traced]:
    """The W2 flow on ``client``'s cluster."""
    # Imported here, after quiet_daskflow(): daskflow reads its console setting at import.
    from daskflow import flow, task
    from daskflow.task_runners import DaskTaskRunner

    a_task, b_task, total_task = task(a), task(b), task(total)

    @flow(name="w2-chain", task_runner=DaskTaskRunner(client=client))
    def chain(n: int) -> Traced:
        return total_task(b_task.map(a_task.map(range(n))))

    return chain


class Counts:
    """What reached the client in each run of each contender, read between runs (untimed)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.mark = 0
        self.unpickled: dict[str, list[int]] = defaultdict(list)
        self.sent_bytes: dict[str, list[int]] = defaultdict(list)
        self.sent_values: dict[str, list[int]] = defaultdict(list)
        self.truncated = False

    def before(self) -> None:
        wait_until_idle(self.client)
        reset_client_transfers(self.client)
        self.mark = traced_unpickles()

    def after(self, name: str) -> None:
        # Once the scheduler has forgotten the run's tasks, nothing of it can still be on its way.
        wait_until_idle(self.client)
        self.unpickled[name].append(traced_unpickles() - self.mark)
        sent_bytes, sent_values, truncated = client_transfers(self.client)
        self.sent_bytes[name].append(sent_bytes)
        self.sent_values[name].append(sent_values)
        self.truncated = self.truncated or truncated


def contenders(client: Any, chain: Callable[[int], Traced], n: int) -> dict[str, Callable[[], object]]:
    return {
        "daskflow": lambda: checked(chain(n), n),
        "raw Dask": lambda: checked(raw_dask_pipeline(client, range(n), [a, b], total), n),
    }


def measure_variant(
    variant: str, config: dict[str, Any], sizes: Sequence[int], repeats: int, prefect: bool, script: str
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    with local_cluster(config) as client:
        chain = daskflow_chain(client)
        warm = Counts(client)
        alternate(contenders(client, chain, min(WARMUP_N, *sizes)), 1, warm.before, warm.after)
        for n in sizes:
            counts = Counts(client)
            result = alternate(
                contenders(client, chain, n), repeats, counts.before, counts.after, workers_cpu_probe(client)
            )
            ours, base = result["daskflow"], result["raw Dask"]
            # The most of any run: one run that leaked is what matters.
            ours_values, base_values = max(counts.unpickled["daskflow"]), max(counts.unpickled["raw Dask"])
            ours_bytes, base_bytes = max(counts.sent_bytes["daskflow"]), max(counts.sent_bytes["raw Dask"])
            notes_text = (
                f"values unpickled in client {ours_values} vs {base_values} (expected 1); "
                f"bytes to client {ours_bytes:,} vs {base_bytes:,}; "
                f"{ours.best_s / (2 * n) * 1e3:.2f} vs {base.best_s / (2 * n) * 1e3:.2f} ms/task, "
                f"CPU {(ours.client_cpu_s + ours.workers_cpu_s) / (2 * n) * 1e3:.2f} vs "
                f"{(base.client_cpu_s + base.workers_cpu_s) / (2 * n) * 1e3:.2f}"
            )
            row = comparison_row(
                SUITE,
                f"chain map->map->reduce [{variant}]",
                n,
                ours,
                base,
                notes=notes_text,
                metrics={
                    "variant": variant,
                    "tasks": 2 * n + 1,
                    "daskflow_values_unpickled_in_client": ours_values,
                    "baseline_values_unpickled_in_client": base_values,
                    "daskflow_bytes_to_client": ours_bytes,
                    "baseline_bytes_to_client": base_bytes,
                    "daskflow_values_fetched_by_client": max(counts.sent_values["daskflow"]),
                    "baseline_values_fetched_by_client": max(counts.sent_values["raw Dask"]),
                    "intermediate_values_through_client": max(0, ours_values - 1),
                },
            )
            if prefect and n == min(sizes):
                figures, note = prefect_in_child(
                    script, ["--address", client.scheduler.address, "--n", str(n)], PREFECT_TIMEOUT_S
                )
                notes.append(note)
                if figures is not None:
                    row.metrics.update(prefect_s=figures["seconds"], prefect_ratio=figures["seconds"] / base.best_s)
                    row.notes += f"; Prefect {figures['seconds']:.3g} s ({figures['seconds'] / base.best_s:.1f}x)"
            rows.append(row)
            if counts.truncated:
                notes.append(
                    f"[{variant}] N={n}: a worker's transfer log was full; bytes to client may be undercounted"
                )
    return rows, notes


def measure_prefect(address: str, n: int) -> dict[str, Any]:
    """W2 on Prefect 3 + prefect-dask, on the cluster at ``address``; in this (child) process."""
    import prefect
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner as PrefectDaskTaskRunner

    a_task, b_task, total_task = task(a), task(b), task(total)

    @flow(task_runner=PrefectDaskTaskRunner(address=address))
    def chain(n: int) -> Traced:
        return total_task.submit(b_task.map(a_task.map(range(n)))).result()

    chain(10)  # the first call starts Prefect's API server: a one-off, not a per-run cost
    before = traced_unpickles()
    started = time.perf_counter()
    checked(chain(n), n)
    seconds = time.perf_counter() - started
    return {
        "version": prefect.__version__,
        "seconds": seconds,
        "n": n,
        "unpickled_in_client": traced_unpickles() - before,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = suite_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, action="append", help="a size to run; repeatable (default 1,000 and 10,000)")
    parser.add_argument(
        "--variant", choices=[name for name, _ in CLUSTER_VARIANTS], action="append", help="only this scheduler setting"
    )
    parser.add_argument("--no-prefect", action="store_true", help="do not run the Prefect comparison")
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
    elif args.quick:
        result.notes.append("Prefect 3 skipped in --quick runs: it takes about 78 ms a task")
    prefect = not (args.no_prefect or missing or args.quick)

    for index, (variant, config) in enumerate(variants):
        rows, notes = measure_variant(variant, config, sizes, repeats, prefect and index == 0, __file__)
        result.rows.extend(rows)
        result.notes.extend(notes)
    result.notes.append(
        f"best of {repeats} after a warm-up of N={min(WARMUP_N, *sizes)}, alternating daskflow and raw Dask; "
        "N is the map size (2N+1 tasks); 'A vs B' is daskflow vs raw Dask; client counts are the most of any run; "
        "CPU is client + workers, per task"
    )
    return finish_suite(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
