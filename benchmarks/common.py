"""What every benchmark suite shares: timing, memory, result rows, the table, the JSON.

Figures on these shared 2-core machines are noisy, so a suite never reports
an absolute time alone: each row is one workload at one size, timed against
a baseline in the same process, side by side, with the ratio between them
(see shared/spec/benchmarks.md). Times are the best of k repeats, the usual
way to see past other processes stealing the CPU.

The suite contract, which ``run_all.py`` relies on:

- a suite is a script ``benchmarks/w<number>_<name>.py`` (W1 ... W7);
- it has ``main(argv: list[str] | None = None) -> int`` and runs it under
  ``if __name__ == "__main__"``;
- it accepts ``--quick`` (a run of a few seconds) and ``--json FILE``
  (:func:`suite_arguments` builds that parser);
- it prints its rows as a table and writes one JSON object to FILE:
  ``{"suite": "W6", "title": ..., "quick": ..., "rows": [Row, ...],
  "notes": [...], "environment": {...}}`` (:func:`finish_suite` does both).

Scripts in this folder run as files, not as a package: Python puts the
script's folder on ``sys.path``, so a suite imports this module as
``common``. The Dask suites' workers inherit that path, so they can import it
too (:class:`Traced` relies on it).

The second half is what the Dask suites share: the one cluster shape they
all use (:func:`local_cluster`, with the two scheduler settings the spec
asks to report), the raw-Dask baseline (:func:`raw_dask_pipeline`), timing
two contenders alternately with each run's client peak memory
(:func:`alternate`), counting what reaches the client (:class:`Traced`,
:func:`client_transfers`), and running Prefect in a child process.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import importlib.util
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLUSTER_VARIANTS",
    "Contender",
    "Row",
    "SuiteResult",
    "Traced",
    "alternate",
    "best_of",
    "child_json",
    "client_transfers",
    "comparison_row",
    "environment",
    "finish_suite",
    "format_table",
    "local_cluster",
    "peak_rss_mib",
    "peak_rss_since_reset_mib",
    "prefect_in_child",
    "prefect_missing",
    "quiet_daskflow",
    "raw_dask_pipeline",
    "release_memory",
    "reset_client_transfers",
    "reset_peak_rss",
    "rss_mib",
    "suite_arguments",
    "traced_unpickles",
    "wait_until_idle",
    "workers_cpu_probe",
    "write_json",
]


@dataclass
class Row:
    """One workload at one size, measured against one baseline in the same process."""

    suite: str  # "W6"
    workload: str  # what ran, e.g. "sequential task calls"
    n: int  # its size: task calls, tasks, flow calls
    daskflow_s: float  # wall time of the daskflow run (best of k)
    baseline_s: float  # wall time of the baseline run (best of k)
    baseline: str  # what the baseline is: "plain Python", "raw Dask", ...
    notes: str = ""  # the figure a reader wants, in words: "14.2 µs per call"
    metrics: dict[str, float | int | str | None] = field(default_factory=dict)  # everything else, by name

    @property
    def ratio(self) -> float:
        return self.daskflow_s / self.baseline_s if self.baseline_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class SuiteResult:
    """Everything one suite run reports: its rows, notes (what was skipped and why), the machine."""

    suite: str
    title: str
    quick: bool
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "title": self.title,
            "quick": self.quick,
            "rows": [row.to_dict() for row in self.rows],
            "notes": list(self.notes),
            "environment": environment(),
        }


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls of ``fn``, in seconds.

    The garbage collector stays on while timing, unlike ``timeit``: the
    objects a task run allocates, and collecting them, are part of what a
    user pays. It is emptied before each repeat so that one repeat does not
    pay for the garbage of the one before.
    """
    best = float("inf")
    for _ in range(max(1, repeats)):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def environment() -> dict[str, Any]:
    """The facts a reader needs to compare two runs' figures."""
    daskflow_version: str | None
    try:
        from daskflow import __version__ as daskflow_version
    except Exception:  # the report should still say what it can
        daskflow_version = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "daskflow": daskflow_version,
    }


def _seconds(value: float) -> str:
    return f"{value:.4g}"


def _ratio(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """Rows as a fixed-width text table: workload, N, daskflow s, baseline s, ratio, notes."""
    header = ("workload", "N", "daskflow s", "baseline s", "ratio", "notes")
    body = [
        (
            f"{r.suite} {r.workload}",
            f"{r.n:,}",
            _seconds(r.daskflow_s),
            _seconds(r.baseline_s),
            _ratio(r.ratio),
            r.notes,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    right = {1, 2, 3, 4}  # numbers line up on the right

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def suite_arguments(description: str | None) -> argparse.ArgumentParser:
    """The command line every suite accepts; a suite may add its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds (smaller sizes, fewer repeats)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats; the best is reported")
    return parser


def finish_suite(result: SuiteResult, json_path: str | None) -> int:
    """Print the suite's table and notes, write its JSON if asked; the exit code for ``main``."""
    if sys.flags.dont_write_bytecode:  # PYTHONDONTWRITEBYTECODE or -B: say what it costs, on both sides
        result.notes.append(
            "PYTHONDONTWRITEBYTECODE was set: every process this run started (Dask workers included) compiled "
            "the modules it imports whose bytecode no earlier run wrote, seconds of CPU each; start-up figures "
            "are inflated on both sides (`make bench` unsets it)"
        )
    print(f"\n{result.suite}: {result.title}" + (" (quick)" if result.quick else ""))
    print(format_table(result.rows))
    for note in result.notes:
        print(f"  note: {note}")
    if json_path:
        write_json(json_path, result.to_dict())
    return 0


# -- Dask suites: one cluster, two contenders side by side ---------------------------------------
#
# W1, W2, W5 and the large map time daskflow and raw Dask on the same LocalCluster, in the
# same process, alternately: the only fair comparison on a shared 2-core machine. The
# helpers below are what those suites share; each takes a ``distributed.Client`` and
# imports ``distributed`` lazily, so that W6 (no Dask) never pays for it.

# The two scheduler settings every Dask suite reports (shared/spec/benchmarks.md): Dask's
# default queuing, which costs about 4x on tiny tasks with 1-thread workers, and no queuing.
CLUSTER_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default", {}),
    ("saturation inf", {"distributed.scheduler.worker-saturation": "inf"}),
)


def quiet_daskflow() -> None:
    """Keep daskflow's run logs off the console; call it before daskflow (or dask) is imported.

    Thousands of run-log lines on stderr would measure the terminal and bury the table. The
    records are still made, forwarded from the workers and handled, as for any user: only
    printing them is skipped. daskflow reads the setting from dask.config, which reads the
    environment when dask is imported (and hands it to the workers it spawns).
    """
    os.environ.setdefault("DASK_DASKFLOW__LOGGING__CONSOLE", "False")
    if "dask.config" in sys.modules:  # too late for the environment: set it directly
        import dask.config

        dask.config.set({"daskflow.logging.console": False})


@contextmanager
def local_cluster(config: Mapping[str, Any] | None = None, threads_per_worker: int = 1) -> Iterator[Any]:
    """A client of the benchmark cluster: ``LocalCluster``, 2 worker processes x 1 thread, loopback.

    ``threads_per_worker`` changes the thread count for the suites that need more (W4).

    ``config`` (dask.config keys, e.g. one of :data:`CLUSTER_VARIANTS`) is set before the
    cluster starts, since the scheduler reads it once, and stays set while it runs. The
    scheduler runs in this process: its memory counts in this process's RSS.
    """
    import dask.config
    from distributed import Client, LocalCluster

    with dask.config.set(dict(config or {})):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
        try:
            with Client(cluster) as client:
                try:
                    yield client
                finally:
                    # A worker's heartbeat racing the scheduler's shutdown logs a harmless ERROR
                    # with a traceback, after the figures are taken: keep it off the report.
                    with suppress(Exception):
                        client.run(_quiet_worker_shutdown)
        finally:
            # On a loaded machine closing the workers can time out: the figures are taken by
            # then, and a suite must not lose them (and its JSON) to a slow shutdown.
            try:
                cluster.close(timeout=120)
            except Exception as exc:
                print(
                    f"warning: the benchmark cluster did not close cleanly: {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )


def _quiet_worker_shutdown() -> None:
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)


def workers_cpu_probe(client: Any) -> Callable[[], float]:
    """A function giving the CPU seconds all of ``client``'s workers have used so far."""
    return lambda: float(sum(client.run(time.process_time).values()))


def raw_dask_pipeline(
    client: Any, items: Sequence[Any], stages: Sequence[Callable[[Any], Any]], reduce: Callable[[list[Any]], Any]
) -> Any:
    """The raw-Dask baseline: one ``client.map`` per stage over the futures of the stage before,
    then one ``client.submit`` reduce. Only the reduce's value comes to the client."""
    futures: Sequence[Any] = items
    for stage in stages:
        futures = client.map(stage, futures, pure=False)
    return client.submit(reduce, futures, pure=False).result()


def wait_until_idle(client: Any, timeout: float = 60.0) -> int:
    """Wait until the scheduler holds no task of this client's (the last run's were released); the count left.

    Releasing 10,000 futures is a message the scheduler handles after the run returned:
    without this wait the next run would pay for forgetting the last one's tasks. Tasks that
    other clients of a shared cluster still want (a notebook's, another test's) are not waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        left: int = client.run_on_scheduler(_scheduler_task_count, client_id=client.id)
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def _scheduler_task_count(dask_scheduler: Any, client_id: str | None = None) -> int:
    """Tasks this client still wants, and those no client wants that the scheduler has yet to forget."""
    if client_id is None:
        return len(dask_scheduler.tasks)
    return sum(
        1
        for ts in dask_scheduler.tasks.values()
        if not ts.who_wants or any(cs.client_key == client_id for cs in ts.who_wants)
    )


# -- client memory of one run --------------------------------------------------------------------


def _status_kib(name: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mib() -> float:
    """This process's resident memory now, in MiB (its peak so far where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else peak_rss_mib()


def reset_peak_rss() -> bool:
    """Make this process's peak RSS (VmHWM) its current RSS, so the next peak is one run's own.

    Linux >= 4.0 (``clear_refs`` value 5). False where that is not possible: the peak is
    then the process's lifetime peak, which only ever grows.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mib() -> float:
    kib = _status_kib("VmHWM")
    return kib / 1024 if kib is not None else peak_rss_mib()


_libc: Any = None


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS before a run.

    Without ``malloc_trim`` the memory a run freed stays resident and the next run, reusing
    it, seems to need less: whichever contender ran second would look leaner. Trimming
    narrows that bias without removing it (Python's arenas and Dask's fixed-length logs stay),
    so in-process peaks are compared as peaks, and the large-map suite, which is about
    memory, gives each run a fresh process.
    """
    global _libc
    gc.collect()
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
        if _libc and not hasattr(_libc, "malloc_trim"):  # glibc only
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


@dataclass
class Contender:
    """One side of a side-by-side comparison: its run times and its client memory."""

    name: str
    times: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0  # the client process's highest resident memory during one of its runs
    growth_mib: float = 0.0  # the most that memory rose, during one run, above where it stood at the start
    per_run_peaks: bool = True  # False: peaks are the process's lifetime peak (no /proc/self/clear_refs)
    # CPU seconds of one run (the least of any run): unlike wall time, hardly touched by other
    # processes on the machine, and they say where the time went.
    client_cpu_s: float = float("inf")  # this process, every thread (the LocalCluster scheduler's too)
    workers_cpu_s: float = float("inf")  # all worker processes together (when a probe is given)

    @property
    def best_s(self) -> float:
        return min(self.times) if self.times else float("inf")


def alternate(
    runs: Mapping[str, Callable[[], object]],
    repeats: int,
    before_each: Callable[[], object] | None = None,
    after_each: Callable[[str], object] | None = None,
    workers_cpu: Callable[[], float] | None = None,
) -> dict[str, Contender]:
    """Run each callable ``repeats`` times, alternately, and keep the best time of each.

    The order swaps every repeat (A B, B A, A B, ...) so that neither side always runs
    right after the other's garbage or on a warmer machine. Each run's client peak RSS is
    measured from a reset peak. ``before_each`` readies the cluster for a run and
    ``after_each(name)`` reads what a run left behind; neither is timed. ``workers_cpu``
    (e.g. :func:`workers_cpu_probe`) gives the workers' CPU seconds so far.
    """
    contenders = {name: Contender(name) for name in runs}
    names = list(runs)
    for repeat in range(max(1, repeats)):
        for name in names if repeat % 2 == 0 else reversed(names):
            # Garbage first: a run's Dask futures caught in reference cycles are released only when
            # collected, and before_each (e.g. waiting for the scheduler to forget the last run's
            # tasks) must see that release, or the next run pays for forgetting them.
            release_memory()
            if before_each is not None:
                before_each()
            workers_before = workers_cpu() if workers_cpu is not None else 0.0
            start_mib = rss_mib()
            per_run = reset_peak_rss()
            cpu_before = time.process_time()
            started = time.perf_counter()
            runs[name]()
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_before
            peak = peak_rss_since_reset_mib()
            contender = contenders[name]
            contender.times.append(elapsed)
            contender.client_cpu_s = min(contender.client_cpu_s, cpu)
            if workers_cpu is not None:
                contender.workers_cpu_s = min(contender.workers_cpu_s, workers_cpu() - workers_before)
            contender.peak_rss_mib = max(contender.peak_rss_mib, peak)
            contender.growth_mib = max(contender.growth_mib, peak - start_mib)
            contender.per_run_peaks = contender.per_run_peaks and per_run
            if after_each is not None:
                after_each(name)
    return contenders


# -- what reaches the client ---------------------------------------------------------------------

_unpickled = 0
_unpickled_lock = threading.Lock()


class Traced:
    """A value that counts, in whichever process unpickles it, each time it is unpickled.

    A value moving between processes is unpickled where it arrives, so the count in the
    client process is the number of values that came to it, whatever the route (a result
    fetched, a state, an event). Import it from this module, which the workers can import
    too (they inherit the script's ``sys.path``): it then pickles as a reference, a few bytes.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_traced, (self.value,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Traced) and other.value == self.value

    def __hash__(self) -> int:
        return hash((Traced, self.value))

    def __repr__(self) -> str:
        return f"Traced({self.value!r})"


def _unpickle_traced(value: Any) -> Traced:
    global _unpickled
    with _unpickled_lock:  # the client's comm threads unpickle concurrently
        _unpickled += 1
    return Traced(value)


def traced_unpickles() -> int:
    """How many :class:`Traced` values this process has unpickled so far."""
    return _unpickled


def reset_client_transfers(client: Any, capacity: int = 200_000) -> None:
    """Start the workers' record of the data they send afresh, so the next count is one run's.

    The record (``transfer_outgoing_log``) keeps 1,000 entries by default, fewer than a run
    of 10,000 tasks makes between workers: each worker gets an empty one holding
    ``capacity``. Only the workers' logs change; raising the config key instead
    (``distributed.admin.low-level-log-length``) would also lengthen the scheduler's event
    topics, which hold daskflow's state events, and so change what is measured.
    """
    client.run(_fresh_outgoing_log, capacity)


def client_transfers(client: Any) -> tuple[int, int, bool]:
    """Bytes and values the workers sent to anyone but a worker (the client) since the reset.

    Read from each worker's ``transfer_outgoing_log`` (one entry per ``get_data``, with the
    bytes written to the wire): a client fetch names no worker as ``who``. The third value
    is True if a log reached its length limit, when older entries may be missing: raise
    the ``capacity`` of :func:`reset_client_transfers`.
    """
    workers = set(client.scheduler_info(n_workers=-1)["workers"])
    sent_bytes = sent_values = 0
    truncated = False
    for entries, full in client.run(_outgoing_log).values():
        truncated = truncated or full
        for who, values, wire_bytes in entries:
            if who not in workers:
                sent_bytes += wire_bytes
                sent_values += values
    return sent_bytes, sent_values, truncated


def _fresh_outgoing_log(capacity: int, dask_worker: Any) -> None:
    dask_worker.transfer_outgoing_log = deque(maxlen=capacity)


def _outgoing_log(dask_worker: Any) -> tuple[list[tuple[str | None, int, int]], bool]:
    log = dask_worker.transfer_outgoing_log
    entries = [(e.get("who"), len(e.get("keys", ())), int(e.get("compressed") or e.get("total") or 0)) for e in log]
    return entries, log.maxlen is not None and len(log) >= log.maxlen


# -- Prefect 3, the third column -----------------------------------------------------------------


def prefect_missing() -> str | None:
    """Why Prefect 3 + prefect-dask cannot be compared here, or None when both are importable."""
    missing = [name for name in ("prefect", "prefect_dask") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"Prefect 3 skipped: {' and '.join(missing)} not installed (pip install 'daskflow[bench]' to compare)"


def prefect_in_child(script: str | Path, args: Sequence[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run ``script --prefect-child ARGS`` and return the JSON it prints last, or None and why not.

    Prefect runs in a child process because importing it changes logging and starts its
    ephemeral API server, which must not colour daskflow's figures; it joins the parent's
    cluster by address, so its time is comparable with the baseline measured there. Its
    database goes to a fresh ``PREFECT_HOME``, not the user's.
    """
    with tempfile.TemporaryDirectory(prefix="daskflow-bench-prefect-home-") as prefect_home:
        figures, error = child_json(
            [sys.executable, str(script), "--prefect-child", *args],
            timeout,
            # Prefect's temporary API server gets 20 s to start by default, which a loaded 2-core
            # machine misses (the whole comparison then fails): its start is not what is measured.
            {"PREFECT_HOME": prefect_home, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"},
        )
    if figures is None:
        return None, f"Prefect 3 skipped: {error}"
    return (
        figures,
        f"Prefect {figures.get('version', '3')} + prefect-dask measured in a child process on the same cluster",
    )


def child_json(
    command: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Run ``command`` and return the JSON object it printed last on stdout, or None and what went wrong."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
    except subprocess.TimeoutExpired:
        return None, f"it did not finish within {timeout:g} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"it failed with status {done.returncode} ({detail})"
    try:
        figures: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        return None, f"it printed no figures ({lines[-1][:80]})"
    return figures, ""


def comparison_row(
    suite: str,
    workload: str,
    n: int,
    ours: Contender,
    base: Contender,
    baseline: str = "raw Dask",
    notes: str = "",
    metrics: Mapping[str, float | int | str | None] | None = None,
) -> Row:
    """A row from two contenders of :func:`alternate`, with both sides' times per item and memory."""
    figures: dict[str, float | int | str | None] = {
        "daskflow_ms_per_item": ours.best_s / n * 1e3,
        "baseline_ms_per_item": base.best_s / n * 1e3,
        "daskflow_peak_rss_mib": round(ours.peak_rss_mib, 1),
        "baseline_peak_rss_mib": round(base.peak_rss_mib, 1),
        "daskflow_rss_growth_mib": round(ours.growth_mib, 1),
        "baseline_rss_growth_mib": round(base.growth_mib, 1),
        "daskflow_client_cpu_s": ours.client_cpu_s,
        "baseline_client_cpu_s": base.client_cpu_s,
        "daskflow_workers_cpu_s": ours.workers_cpu_s if ours.workers_cpu_s != float("inf") else None,
        "baseline_workers_cpu_s": base.workers_cpu_s if base.workers_cpu_s != float("inf") else None,
        "repeats": len(ours.times),
        "rss_per_run": "yes" if ours.per_run_peaks and base.per_run_peaks else "no: lifetime peak",
    }
    figures.update(metrics or {})
    return Row(suite, workload, n, ours.best_s, base.best_s, baseline, notes=notes, metrics=figures)
