"""M1 (W1 at N=100,000): a 100,000-item map and one reduce — the client's memory, and the time.

The Dask-runner issue asks that a map of 100,000 items complete with bounded
client memory, and for the peak RSS and the bytes per item. The workload is
W1's (``inc.map(range(N))`` then one ``total`` reduce, versus raw Dask's
``client.map`` + ``client.submit``); what changes is how memory is measured.

A process's heap does not shrink back after a large run (and the scheduler
fills logs of fixed length, e.g. its 100,000-entry transition log, during
the first big run): measured in one process, whichever contender runs second
reuses the first one's memory and looks leaner. So the cluster lives in this
process, once, and each contender's run is a fresh client process that
connects to it by address, warms up (N=200), runs the map once and reports
its wall time, its RSS before the run and its lifetime peak RSS. The client
figures are then the client's own, without the scheduler, and the bytes per
item are ``(peak - RSS before) / N``. This process (the scheduler) reports
its own peak during each run too, for reference; it is about the same for
both, since the scheduler holds the same N tasks.

Contenders alternate on the one cluster, daskflow first (if running first
on a fresh scheduler costs anything, daskflow pays it). Two cores make this
heavy: by default one repeat, and only ``worker-saturation: inf`` (Dask's
default queuing costs 3-4 ms a task here, which would take raw Dask alone
about 5 minutes at N=100,000; W1 reports both settings at N=10,000).
Prefect is not run: at ~78 ms a task it would take two hours.

The file is named ``w1_...`` so that ``run_all.py`` finds it (it runs
``w<number>_<name>.py``); its rows say M1.

    python benchmarks/w1_large_map.py            # N = 100,000 (about 5 minutes)
    python benchmarks/w1_large_map.py --quick    # N = 5,000
    python benchmarks/w1_large_map.py --variant default --variant "saturation inf"
    python benchmarks/w1_large_map.py --n 20000 --trace-memory   # and where each contender's bytes per item go

``--trace-memory`` runs each contender under ``tracemalloc`` (slower: its times then
mean little) and prints, per contender, the allocation sites that hold the most
bytes per item at the traced peak (file:line, bytes and blocks per item): the
profile that says which objects a map item costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from common import (
    CLUSTER_VARIANTS,
    Contender,
    SuiteResult,
    child_json,
    comparison_row,
    finish_suite,
    local_cluster,
    peak_rss_since_reset_mib,
    quiet_daskflow,
    raw_dask_pipeline,
    release_memory,
    reset_peak_rss,
    rss_mib,
    suite_arguments,
    wait_until_idle,
)

SUITE = "M1"
TITLE = "large map: inc.map(range(N)) + reduce, client peak RSS and bytes per item, daskflow versus raw Dask"
WARMUP_N = 200
CHILD_TIMEOUT_S = 1800
# "daskflow, history off": the same flow with dask.config daskflow.runstore.enabled false, so that
# the cost of the run history (issue 14 goal 3: within 1.1x) is measured side by side.
HISTORY_OFF = "daskflow, history off"
CONTENDERS = ("daskflow", HISTORY_OFF, "raw Dask")
TRACE_SITES = 14  # allocation sites listed per contender by --trace-memory
_TRACE_GROWTH = 1.05  # a new peak snapshot when the traced bytes grew by 5% over the last one


class PeakSnapshot:
    """``tracemalloc`` snapshots taken while the traced memory grows: the last one is (near) the peak.

    A snapshot at the end would miss what the run held at its peak (the flow's futures are
    gone once it returns), so a thread looks four times a second and snapshots each new high.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="m1-trace", daemon=True)
        self.base: tracemalloc.Snapshot | None = None
        self.peak: tracemalloc.Snapshot | None = None
        self._peak_bytes = 0

    def __enter__(self) -> PeakSnapshot:
        tracemalloc.start(1)
        self.base = tracemalloc.take_snapshot()
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            current = tracemalloc.get_traced_memory()[0]
            if current > self._peak_bytes * _TRACE_GROWTH:
                self.peak, self._peak_bytes = tracemalloc.take_snapshot(), current

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.peak is None:
            self.peak = tracemalloc.take_snapshot()
        tracemalloc.stop()

    def sites(self, n: int, count: int = TRACE_SITES) -> list[tuple[str, float, float]]:
        """``[(file:line, bytes per item, blocks per item), ...]``, the largest first."""
        assert self.base is not None and self.peak is not None
        found = []
        for stat in self.peak.compare_to(self.base, "lineno")[:count]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("/src/")[-1]
            found.append((f"{where}:{frame.lineno}", stat.size_diff / n, stat.count_diff / n))
        return found


def run_client(contender: str, address: str, n: int, warmup: int = WARMUP_N, trace: bool = False) -> dict[str, Any]:
    """One contender's run, in this fresh client process, against the cluster at ``address``."""
    quiet_daskflow()
    import dask.config
    from distributed import Client

    # W1's functions, importable by the workers: both contenders ship the same references.
    from w1_fanout import checked, daskflow_fanout, inc, total

    off = {"daskflow.runstore.enabled": False} if contender == HISTORY_OFF else {}
    with dask.config.set(off), Client(address, set_as_default=False) as client:
        if contender in ("daskflow", HISTORY_OFF):
            fanout = daskflow_fanout(client)
            run = lambda size: fanout(size)  # noqa: E731
        else:
            run = lambda size: raw_dask_pipeline(client, range(size), [inc], total)  # noqa: E731
        checked(run(warmup), warmup)
        wait_until_idle(client)
        release_memory()
        from daskflow.engine import history

        current = history.recorder() if contender == "daskflow" else None
        if current is not None:
            history.flush(600)  # the warm-up's rows: not the run's writer time
        writer_cpu = current.writer.cpu_seconds if current is not None else 0.0
        before = rss_mib()
        tracer = PeakSnapshot() if trace else None
        cpu = time.process_time()
        started = time.perf_counter()
        if tracer is not None:
            with tracer:
                checked(run(n), n)
        else:
            checked(run(n), n)
        seconds = time.perf_counter() - started
        # The lifetime peak of this process: its imports and the warm-up are far below the run's.
        peak = peak_rss_since_reset_mib()
    rows = writer_share = None
    if current is not None:  # rows the run history wrote (the warm-up's and the run's), and its CPU
        history.flush(600)
        rows = current.writer.written
        # The writer thread's CPU over the client process's, from the run's start to its last row:
        # the share of the GIL the history took from the flow's own threads.
        writer_share = (current.writer.cpu_seconds - writer_cpu) / max(time.process_time() - cpu, 1e-9)
    return {
        "seconds": seconds,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "history_rows": rows,
        "writer_cpu_share": writer_share,
        "traced_sites": tracer.sites(n) if tracer is not None else None,
    }


def measure_variant(
    variant: str, config: dict[str, Any], n: int, repeats: int, trace: bool = False
) -> tuple[Any, list[str]]:
    notes: list[str] = []
    results = {name: Contender(name) for name in CONTENDERS}
    growth_per_item: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    scheduler_peak: dict[str, float] = {name: 0.0 for name in CONTENDERS}
    history_rows: int | None = None
    writer_share: float | None = None
    with local_cluster(config) as client:
        address = client.scheduler.address
        for repeat in range(max(1, repeats)):
            for name in CONTENDERS if repeat % 2 == 0 else reversed(CONTENDERS):
                wait_until_idle(client)
                release_memory()
                reset_peak_rss()
                command = [sys.executable, __file__, "--child", name, "--address", address, "--n", str(n)]
                command += ["--trace-memory"] if trace else []
                figures, error = child_json(command, CHILD_TIMEOUT_S)
                if figures is None:
                    raise RuntimeError(f"M1 {name} run at N={n} [{variant}]: {error}")
                scheduler_peak[name] = max(scheduler_peak[name], peak_rss_since_reset_mib())
                contender = results[name]
                contender.times.append(figures["seconds"])
                contender.peak_rss_mib = max(contender.peak_rss_mib, figures["peak_rss_mib"])
                growth = figures["peak_rss_mib"] - figures["rss_before_mib"]
                contender.growth_mib = max(contender.growth_mib, growth)
                growth_per_item[name].append(growth * 2**20 / n)
                if figures.get("history_rows") is not None:
                    history_rows = figures["history_rows"]
                if figures.get("writer_cpu_share") is not None:
                    writer_share = figures["writer_cpu_share"]
                if figures.get("traced_sites"):
                    notes.append(
                        f"[{variant}] {name}: traced bytes per item at the peak, by allocation site: "
                        + "; ".join(
                            f"{where} {size:,.0f} B ({blocks:.2f} blocks)"
                            for where, size, blocks in figures["traced_sites"]
                        )
                    )
    ours, base, off = results["daskflow"], results["raw Dask"], results[HISTORY_OFF]
    ours_bytes, base_bytes = max(growth_per_item["daskflow"]), max(growth_per_item["raw Dask"])
    memory_ratio = ours.peak_rss_mib / base.peak_rss_mib if base.peak_rss_mib else float("inf")
    notes_text = (
        f"client peak RSS {ours.peak_rss_mib:.0f} vs {base.peak_rss_mib:.0f} MiB ({memory_ratio:.2f}x); "
        f"{ours_bytes:,.0f} vs {base_bytes:,.0f} B/item; "
        f"{ours.best_s / n * 1e3:.2f} vs {base.best_s / n * 1e3:.2f} ms/task; "
        f"history on/off {ours.best_s / off.best_s:.2f}x (off: {off.best_s:.3g} s, peak RSS {off.peak_rss_mib:.0f} MiB)"
        + (f"; {history_rows / (n + WARMUP_N):.2f} history rows per task run" if history_rows else "")
        + (f"; history writer {writer_share:.1%} of the client's CPU" if writer_share is not None else "")
    )
    row = comparison_row(
        SUITE,
        f"large map+reduce, own client process [{variant}]",
        n,
        ours,
        base,
        notes=notes_text,
        metrics={
            "variant": variant,
            "client_peak_rss_ratio": memory_ratio,
            "history_off_s": off.best_s,
            "history_on_off_ratio": ours.best_s / off.best_s,
            "history_off_peak_rss_mib": round(off.peak_rss_mib, 1),
            "history_rows_per_task_run": history_rows / (n + WARMUP_N + 2) if history_rows else None,
            "history_writer_cpu_share": writer_share,
            "daskflow_bytes_per_item": ours_bytes,
            "baseline_bytes_per_item": base_bytes,
            "daskflow_scheduler_process_peak_rss_mib": round(scheduler_peak["daskflow"], 1),
            "baseline_scheduler_process_peak_rss_mib": round(scheduler_peak["raw Dask"], 1),
            "rss_per_run": "yes: one fresh client process per run",
        },
    )
    notes.append(
        f"[{variant}] scheduler process peak RSS during the runs: daskflow {scheduler_peak['daskflow']:.0f}, "
        f"raw Dask {scheduler_peak['raw Dask']:.0f} MiB"
    )
    return row, notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = suite_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=None, help="map size (default 100,000; 5,000 with --quick)")
    parser.add_argument(
        "--variant",
        choices=[name for name, _ in CLUSTER_VARIANTS],
        action="append",
        help="scheduler setting to run; repeatable (default: saturation inf only)",
    )
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="also list where each contender's bytes per item go (tracemalloc: the times then mean little)",
    )
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = args.n or (5_000 if args.quick else 100_000)

    if args.child:
        print(json.dumps(run_client(args.child, args.address, n, trace=args.trace_memory)), flush=True)
        return 0

    repeats = args.repeats or 1
    wanted = args.variant or ["saturation inf"]
    result = SuiteResult(SUITE, TITLE, quick=args.quick)
    for variant, config in CLUSTER_VARIANTS:
        if variant in wanted:
            row, notes = measure_variant(variant, config, n, repeats, trace=args.trace_memory)
            result.rows.append(row)
            result.notes.extend(notes)
    if "default" not in wanted:
        result.notes.append(
            "default queuing not run (about 5 min for raw Dask alone at N=100,000); pass --variant default"
        )
    result.notes.append(
        f"best of {repeats}; each run in a fresh client process connected to one cluster (scheduler in the "
        f"suite's process), after a warm-up of N={WARMUP_N}; B/item = (client peak - RSS before the run) / N"
    )
    result.notes.append("Prefect 3 not run here: at ~78 ms a task, 100,000 tasks take about two hours")
    return finish_suite(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
