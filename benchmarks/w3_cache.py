"""W3: cache — W1 with ``cache_policy=INPUTS`` on file storage: a cold run, then an all-hit run.

The flow is W1's (``inc.map(range(N))`` then one ``total(...)`` reduce),
with both tasks declared ``task(fn, cache_policy=INPUTS,
result_storage="file:///<folder>")``. Each measured cold run starts from a
fresh, empty temporary folder, so all of its N + 1 task runs miss, execute
and write an entry; the all-hit run that follows reuses that folder, so all
N + 1 runs end ``Cached`` without executing. The row's figure is the all-hit
run's wall time against raw Dask W1 at the same N
(``client.map(inc, range(N), pure=False)`` then ``client.submit(total,
...)``), on the same ``LocalCluster`` (2 worker processes x 1 thread). Two
more contenders give the hit its context: the cold run, and daskflow W1 with
no cache (what the same flow costs when every task executes a trivial body).

Hits are counted after each run, outside the timing, from the flow run's task
runs (``flow_run.task_runs``, ``state.is_cached()``): the hit rate of the
all-hit run must be 1.0 and that of the cold run 0.0; anything else is
reported in a note. ``ms_per_hit`` is the all-hit run's wall time divided by
its hits: everything a hit costs, the flow around it included (the issue's
goal is under 2 ms on local storage). The folders are deleted after the hit
run, outside the timing.

Timing alternates as in the other Dask suites, best of k, except that a cold
run and the hit run on its folder always run back to back, cold first: each
repeat is one pass of :func:`alternate` in its own order (cold, hit, raw
Dask, no cache, then the reverse with cold still before hit). Both of
Dask's scheduler settings are measured (default queuing and
``worker-saturation: inf``), as in W1.

When ``prefect`` and ``prefect-dask`` are importable, Prefect 3 runs the same
cached flow at N = 1,000 on the same cluster from a child process, with its
own ``cache_policy=INPUTS`` and its own result storage (a ``LocalFileSystem``
block on a fresh temporary folder): one cold run, then the all-hit run, once
(it takes about 78 ms a task, hit or miss); otherwise a note says it was
skipped.

With ``--keys-on-workers`` the cached map goes over the future of a list
that an uncached task makes on a worker (``inc.map(listing.submit(N))``),
kept there whatever its size: each run's key needs a value only that worker
holds, so the client cannot compute it, and daskflow looks the map up in one
Dask task per worker holding such values. The baseline is still raw Dask
computing W1.

    python benchmarks/w3_cache.py            # N = 1,000 and 10,000, best of 3
    python benchmarks/w3_cache.py --quick    # N = 1,000, one repeat
    python benchmarks/w3_cache.py --n 10000 --keys-on-workers --no-prefect
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    CLUSTER_VARIANTS,
    Contender,
    Row,
    SuiteResult,
    alternate,
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

SUITE = "W3"
TITLE = "cache: W1 with cache_policy=INPUTS on file storage, all-hit run versus raw Dask W1"
WARMUP_N = 200  # enough to load the functions, open the connections and start the event threads
PREFECT_N = 1_000
PREFECT_TIMEOUT_S = 1800

COLD, HIT, RAW, PLAIN = "daskflow cold", "daskflow hit", "raw Dask", "daskflow W1"


def inc(x: int) -> int:
    return x + 1


def total(values: list[int]) -> int:
    return sum(values)


def expected(n: int) -> int:
    return n * (n + 1) // 2


def checked(value: int, n: int) -> int:
    # A wrong sum would mean one side did less work (or a hit gave a wrong value).
    if value != expected(n):
        raise AssertionError(f"fan-out of {n} gave {value}, expected {expected(n)}")
    return value


# -- pairs of runs: a cold run and the hit run right after it --------------------------------------


def merge_contenders(into: dict[str, Contender], new: Mapping[str, Contender]) -> None:
    """Add one pass of :func:`alternate` to the contenders gathered so far."""
    for name, part in new.items():
        whole = into.setdefault(name, Contender(name))
        whole.times.extend(part.times)
        whole.client_cpu_s = min(whole.client_cpu_s, part.client_cpu_s)
        whole.workers_cpu_s = min(whole.workers_cpu_s, part.workers_cpu_s)
        whole.peak_rss_mib = max(whole.peak_rss_mib, part.peak_rss_mib)
        whole.growth_mib = max(whole.growth_mib, part.growth_mib)
        whole.per_run_peaks = whole.per_run_peaks and part.per_run_peaks


def alternate_pairs(
    runs: Mapping[str, Callable[[], object]],
    pair: tuple[str, str],
    repeats: int,
    before_each: Callable[[], object] | None = None,
    after_each: Callable[[str], object] | None = None,
    workers_cpu: Callable[[], float] | None = None,
) -> dict[str, Contender]:
    """:func:`alternate`, with the two runs of ``pair`` always back to back, ``pair[0]`` first.

    The order of the others swaps every repeat as in :func:`alternate`; the pair moves as one:
    (pair, others...) then (others reversed..., pair), so that the second of the pair always
    reads what the first just wrote.
    """
    others = [name for name in runs if name not in pair]
    contenders: dict[str, Contender] = {}
    for repeat in range(max(1, repeats)):
        order = [*pair, *others] if repeat % 2 == 0 else [*reversed(others), *pair]
        part = alternate({name: runs[name] for name in order}, 1, before_each, after_each, workers_cpu)
        merge_contenders(contenders, part)
    return contenders


class CacheFolders:
    """A fresh storage folder for each cold run; the hit run after it reads the same one.

    The next cold run's folder and tasks are made ahead, after the run before (outside the
    timing), and a folder is deleted after its hit run. ``make_tasks(url)`` gives the flow's
    tasks for a storage URL.
    """

    def __init__(self, make_tasks: Callable[[str], Any], prefix: str) -> None:
        self.make_tasks = make_tasks
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.count = 0
        self.pending = self._fresh()
        self.current: tuple[Path, Any] | None = None

    def _fresh(self) -> tuple[Path, Any]:
        self.count += 1
        folder = self.root / f"run-{self.count}"
        folder.mkdir()
        return folder, self.make_tasks(folder.as_uri())

    def cold_tasks(self) -> Any:
        """The tasks of the next cold run, on an empty folder."""
        return self.pending[1]

    def hit_tasks(self) -> Any:
        """The tasks of the hit run: the folder the last cold run filled."""
        if self.current is None:
            raise RuntimeError("a hit run before any cold run")
        return self.current[1]

    def cold_done(self) -> None:
        if self.current is not None:  # a cold run with no hit run after it
            shutil.rmtree(self.current[0], ignore_errors=True)
        self.current, self.pending = self.pending, self._fresh()

    def hit_done(self) -> None:
        if self.current is not None:
            shutil.rmtree(self.current[0], ignore_errors=True)
            self.current = None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def cached_share(flow_run: Any, cached_tasks: Collection[str] | None = None) -> tuple[int, int]:
    """(cache hits, task runs) of a finished flow run; only the runs of ``cached_tasks`` if given."""
    runs = [run for run in flow_run.task_runs if cached_tasks is None or run.task_name in cached_tasks]
    return sum(1 for run in runs if run.state.is_cached()), len(runs)


class HitCounter:
    """What each cold and hit run found in the cache, read after the run from its flow run.

    Only the runs of ``cached_tasks`` (task names) count, when given: a task with no cache
    policy can never hit.
    """

    def __init__(self, folders: CacheFolders, cached_tasks: Collection[str] | None = None) -> None:
        self.folders = folders
        self.cached_tasks = cached_tasks
        self.last_flow_run: Any = None  # set by the flow's body: a reference, no cost
        self.counts: dict[str, list[tuple[int, int]]] = {COLD: [], HIT: []}

    def after(self, name: str) -> None:
        if name in self.counts:
            self.counts[name].append(cached_share(self.last_flow_run, self.cached_tasks))
            self.last_flow_run = None
        if name == COLD:
            self.folders.cold_done()
        elif name == HIT:
            self.folders.hit_done()

    def clear(self) -> None:
        for counts in self.counts.values():
            counts.clear()

    def rate(self, name: str) -> tuple[float, int, int]:
        """The lowest hit rate of the runs named ``name`` (for hits the worst is the lowest),
        the highest for cold runs; with the hits and task runs of that run."""
        counts = self.counts[name]
        pick = min if name == HIT else max
        hits, runs = pick(counts, key=lambda c: c[0] / c[1] if c[1] else 0.0)
        return (hits / runs if runs else 0.0), hits, runs


# -- the contenders --------------------------------------------------------------------------------


@dataclass
class Flows:
    """The flows W3 times, and where their cache lives."""

    folders: CacheFolders
    counter: HitCounter
    cold: Callable[[int], int]  # the cached flow on the next empty folder
    hit: Callable[[int], int]  # the cached flow on the folder the last cold run filled
    fanout: Callable[[int], int]  # daskflow W1, no cache


def listing(n: int) -> list[int]:
    """The numbers to map over, made on a worker (``--keys-on-workers``)."""
    return list(range(n))


def daskflow_flows(client: Any, keys_on_workers: bool = False) -> Flows:
    """The cached W1 flow and plain W1, on ``client``'s cluster, with their folders and counter.

    ``keys_on_workers``: the cached map goes over a list that an uncached task made on a worker
    and that stays there, so each run's key needs a value only that worker holds.
    """
    # Imported here, after quiet_daskflow(): daskflow reads its console setting at import.
    import dask.config

    from daskflow import flow, task
    from daskflow.cache_policies import INPUTS
    from daskflow.context import get_flow_run_context
    from daskflow.task_runners import DaskTaskRunner

    def cached_tasks(url: str) -> tuple[Any, Any]:
        return (
            task(cache_policy=INPUTS, result_storage=url)(inc),
            task(cache_policy=INPUTS, result_storage=url)(total),
        )

    folders = CacheFolders(cached_tasks, "daskflow-bench-w3-")
    counter = HitCounter(folders, cached_tasks={"inc", "total"})
    runner = DaskTaskRunner(client=client)
    inc_task, total_task, listing_task = task(inc), task(total), task(listing)
    chosen: dict[str, Any] = {}

    @flow(name="w3-cache", task_runner=runner)
    def cached(n: int) -> int:
        ctx = get_flow_run_context()
        counter.last_flow_run = ctx.flow_run if ctx is not None else None
        cached_inc, cached_total = chosen["tasks"]
        if not keys_on_workers:
            value: int = cached_total(cached_inc.map(range(n)))
            return value
        # Kept on its worker whatever its size (a list under map_fetch_below would come to the client).
        with dask.config.set({"daskflow.dask.map_fetch_below": 0}):
            numbers = cached_inc.map(listing_task.submit(n))
        value = cached_total(numbers)
        return value

    @flow(name="w3-fanout", task_runner=runner)
    def fanout(n: int) -> int:
        return total_task(inc_task.map(range(n)))

    def run_cached(tasks: Any, n: int) -> int:
        chosen["tasks"] = tasks
        return checked(cached(n), n)

    def cold(n: int) -> int:
        return run_cached(folders.cold_tasks(), n)

    def hit(n: int) -> int:
        return run_cached(folders.hit_tasks(), n)

    return Flows(folders, counter, cold, hit, lambda n: checked(fanout(n), n))


def contenders(client: Any, flows: Flows, n: int) -> dict[str, Callable[[], object]]:
    return {
        COLD: lambda: flows.cold(n),
        HIT: lambda: flows.hit(n),
        RAW: lambda: checked(raw_dask_pipeline(client, range(n), [inc], total), n),
        PLAIN: lambda: flows.fanout(n),
    }


def measure_variant(
    variant: str,
    config: dict[str, Any],
    sizes: Sequence[int],
    repeats: int,
    prefect: bool,
    script: str,
    keys_on_workers: bool = False,
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    with local_cluster(config) as client:
        flows = daskflow_flows(client, keys_on_workers)
        folders, counter = flows.folders, flows.counter
        leftovers: list[int] = []

        def settle() -> None:
            leftovers.append(wait_until_idle(client))

        try:
            alternate_pairs(contenders(client, flows, min(WARMUP_N, *sizes)), (COLD, HIT), 1, settle, counter.after)
            for n in sizes:
                counter.clear()
                result = alternate_pairs(
                    contenders(client, flows, n), (COLD, HIT), repeats, settle, counter.after, workers_cpu_probe(client)
                )
                rows.append(variant_row(variant, n, result, counter, notes, keys_on_workers))
                if prefect and n == PREFECT_N:
                    add_prefect(rows[-1], script, client.scheduler.address, n, result[RAW], notes)
        finally:
            folders.close()
        left = max(leftovers, default=0)
        if left:
            notes.append(f"[{variant}] {left} tasks were still on the scheduler 60 s after a run ended")
    return rows, notes


def variant_row(
    variant: str,
    n: int,
    result: dict[str, Contender],
    counter: HitCounter,
    notes: list[str],
    keys_on_workers: bool = False,
) -> Row:
    hit, cold, base, plain = result[HIT], result[COLD], result[RAW], result[PLAIN]
    hit_rate, hits, runs = counter.rate(HIT)
    cold_rate, cold_hits, _ = counter.rate(COLD)
    ms_per_hit = hit.best_s / hits * 1e3 if hits else None
    if hit_rate != 1.0:
        notes.append(f"[{variant}] N={n}: an all-hit run had {hits} hits in {runs} task runs, not all")
    if cold_hits:
        notes.append(f"[{variant}] N={n}: a cold run on an empty folder had {cold_hits} cache hits")
    notes_text = (
        f"{hit_rate:.0%} hits, {ms_per_hit:.2f} ms/hit; " if ms_per_hit is not None else f"{hit_rate:.0%} hits; "
    ) + (
        f"cold {cold.best_s:.3g} s ({cold.best_s / base.best_s:.1f}x), hit/cold {hit.best_s / cold.best_s:.2f}; "
        f"daskflow W1 no cache {plain.best_s:.3g} s ({plain.best_s / base.best_s:.1f}x); "
        f"CPU s client+workers hit {hit.client_cpu_s + hit.workers_cpu_s:.2f} vs raw "
        f"{base.client_cpu_s + base.workers_cpu_s:.2f}"
    )
    return comparison_row(
        SUITE,
        f"all-hit cached map+reduce{' over a worker-held list' if keys_on_workers else ''} [{variant}]",
        n,
        hit,
        base,
        baseline="raw Dask W1",
        notes=notes_text,
        metrics={
            "variant": variant,
            "keys_on_workers": keys_on_workers,
            "hit_rate": hit_rate,
            "hits": hits,
            "task_runs": runs,
            "ms_per_hit": ms_per_hit,
            "cold_s": cold.best_s,
            "cold_ratio": cold.best_s / base.best_s,
            "cold_hit_rate": cold_rate,
            "hit_over_cold": hit.best_s / cold.best_s,
            "daskflow_w1_s": plain.best_s,
            "hit_over_daskflow_w1": hit.best_s / plain.best_s,
            "cold_client_cpu_s": cold.client_cpu_s,
            "cold_workers_cpu_s": cold.workers_cpu_s if cold.workers_cpu_s != float("inf") else None,
        },
    )


# -- Prefect 3 -------------------------------------------------------------------------------------


def add_prefect(row: Row, script: str, address: str, n: int, base: Contender, notes: list[str]) -> None:
    figures, note = prefect_in_child(script, ["--address", address, "--n", str(n)], PREFECT_TIMEOUT_S)
    notes.append(note)
    if figures is None:
        return
    hit_s, cold_s, hits, runs = figures["hit_seconds"], figures["cold_seconds"], figures["hits"], figures["task_runs"]
    row.metrics.update(
        prefect_s=hit_s,
        prefect_ratio=hit_s / base.best_s,
        prefect_cold_s=cold_s,
        prefect_hit_over_cold=hit_s / cold_s,
        prefect_hit_rate=hits / runs if runs else None,
        prefect_ms_per_hit=hit_s / hits * 1e3 if hits else None,
    )
    row.notes += (
        f"; Prefect all-hit {hit_s:.3g} s ({hit_s / base.best_s:.1f}x, {hits}/{runs} hits, "
        f"hit/cold {hit_s / cold_s:.2f})"
    )


def measure_prefect(address: str, n: int) -> dict[str, Any]:
    """W3 on Prefect 3 + prefect-dask, on the cluster at ``address``; in this (child) process.

    Hits are counted in the flow, after the reduce, from each map future's final state
    (which the future holds once waited for): a little of that counting is inside Prefect's time.
    """
    import prefect
    from prefect import flow, task
    from prefect.cache_policies import INPUTS as PREFECT_INPUTS
    from prefect.filesystems import LocalFileSystem
    from prefect_dask import DaskTaskRunner as PrefectDaskTaskRunner

    def storage_at(folder: str, name: str) -> LocalFileSystem:
        storage = LocalFileSystem(basepath=folder)
        storage.save(name, overwrite=True)  # Prefect refuses a block its server does not know
        return storage

    def cached_flow(storage: LocalFileSystem) -> Callable[[int], tuple[int, int, int]]:
        options: dict[str, Any] = {"cache_policy": PREFECT_INPUTS, "result_storage": storage, "persist_result": True}
        inc_task, total_task = task(**options)(inc), task(**options)(total)

        @flow(task_runner=PrefectDaskTaskRunner(address=address))
        def cached(size: int) -> tuple[int, int, int]:
            futures = inc_task.map(range(size))
            reduced = total_task.submit(futures)
            value = reduced.result()
            for future in futures:
                future.wait()
            states = [future.state for future in futures] + [reduced.state]
            return value, sum(1 for s in states if s.name == "Cached"), len(states)

        return cached

    with tempfile.TemporaryDirectory(prefix="daskflow-bench-w3-prefect-") as tmp:
        # The first call starts Prefect's API server: a one-off, not a per-run cost.
        cached_flow(storage_at(str(Path(tmp) / "warm-up"), "w3-warm-up"))(10)
        cached = cached_flow(storage_at(str(Path(tmp) / "measured"), "w3-measured"))
        started = time.perf_counter()
        value, cold_hits, _ = cached(n)
        cold_s = time.perf_counter() - started
        checked(value, n)
        started = time.perf_counter()
        value, hits, runs = cached(n)
        hit_s = time.perf_counter() - started
        checked(value, n)
    return {
        "version": prefect.__version__,
        "cold_seconds": cold_s,
        "hit_seconds": hit_s,
        "cold_hits": cold_hits,
        "hits": hits,
        "task_runs": runs,
        "n": n,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = suite_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, action="append", help="a size to run; repeatable (default 1,000 and 10,000)")
    parser.add_argument(
        "--variant", choices=[name for name, _ in CLUSTER_VARIANTS], action="append", help="only this scheduler setting"
    )
    parser.add_argument("--no-prefect", action="store_true", help="do not run the Prefect comparison")
    parser.add_argument(
        "--keys-on-workers",
        action="store_true",
        help="map over a list an uncached task made on a worker and left there: keys need that worker's values",
    )
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
        result.notes.append("Prefect 3 skipped in --quick runs: it takes about 78 ms a task, hit or miss")
    elif PREFECT_N not in sizes:
        result.notes.append(f"Prefect 3 skipped: it runs at N={PREFECT_N:,} only, which was not asked for")
    if args.keys_on_workers and not args.no_prefect:
        result.notes.append("Prefect 3 skipped: it runs the plain form only, not --keys-on-workers")
    prefect = not (args.no_prefect or missing or args.quick or args.keys_on_workers)

    for index, (variant, config) in enumerate(variants):
        # Prefect at one setting is enough: its own cost dwarfs the scheduler's.
        rows, notes = measure_variant(
            variant, config, sizes, repeats, prefect and index == 0, __file__, args.keys_on_workers
        )
        result.rows.extend(rows)
        result.notes.extend(notes)
    result.notes.append(
        f"best of {repeats} after a warm-up of N={min(WARMUP_N, *sizes)}; each cold run starts on an empty "
        "folder and the hit run right after it reads that folder; hits are counted over all N + 1 task runs "
        "(the reduce is cached too), after each run; ms/hit is the all-hit run's wall time over its hits; "
        "the ratio column is the all-hit run over raw Dask W1"
    )
    return finish_suite(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
