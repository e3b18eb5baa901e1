"""A run Dask computes again after it reported its end is a recorded re-run (issue 14, goal 2).

Dask computes a value again when the worker holding it dies while the client
still holds its future. The run had reported ``Completed`` already; the
recompute is a second execution of its body (or a cache hit, if its entry had
landed), and the history must show it as one more attempt of the run.

The cluster is a ``dask scheduler`` and two ``dask worker`` processes (no
nannies) on 127.0.0.1: ``w1`` (1 thread) and ``w2`` (2 threads). Each test
pins the producer ``A`` to ``w1`` with a loose restriction (it may run
elsewhere once ``w1`` is gone), and the gate task and the consumer ``B`` to
``w2``. ``B`` depends on ``A`` and on the gate, which waits on a
``distributed.Event`` the flow sets, so ``A``'s value stays on ``w1`` alone
until then. The flow waits for ``A``'s reported end, SIGKILLs ``w1``, waits
for the process to be gone, opens the gate; the scheduler computes ``A`` again
on ``w2`` for ``B``. What ran is counted from the ``executions`` side channel;
what the history says is read from the run store.

The last tests open the other window: ``w1`` dies after ``A`` reported its end and
before Dask took its value (a worker plugin holds the task where distributed sizes
its result), with ``allowed-failures`` 0, so ``A``'s Dask task errs
(``KilledWorker``) and the client asks Dask to compute it again (``rerun_lost``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import fsspec
import pytest
from distributed import Client, Event
from fsspec.implementations.local import LocalFileSystem

import daskflow
from conftest import Executions
from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.results import ResultStore
from daskflow.task_runners import DaskTaskRunner
from daskflow.task_runners.dask_events import RECOMPUTED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WAIT_SECONDS = 60.0  # a bound on every wait, never reached when the test works
HOLD_PROTOCOL = "holdfs"


class Cluster:
    """The processes of a `dask scheduler` and its workers, by name."""

    def __init__(self, address: str, processes: dict[str, subprocess.Popen[bytes]], workers: dict[str, str]) -> None:
        self.address = address
        self.processes = processes
        self.workers = workers  # name -> address

    def kill(self, name: str) -> int:
        """SIGKILL worker ``name`` and wait until its process is gone; its pid."""
        process = self.processes[name]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(WAIT_SECONDS)
        return process.pid


def _wait_for_file(path: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.05)  # the scheduler is another process: its file is all there is to watch
    raise TimeoutError(f"{path} was not written within {timeout} s")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """`dask scheduler` + workers ``w1`` (1 thread) and ``w2`` (2 threads), no nannies, on 127.0.0.1."""
    scheduler_file = tmp_path / "scheduler.json"
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The daskflow under test (a worktree's), and this folder: the workers import the test filesystem.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(daskflow.__file__).resolve().parents[1]), str(Path(__file__).parent)])
    env["DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"] = "5s"
    quiet = {"cwd": workdir, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
    processes = {
        "scheduler": subprocess.Popen([*scheduler, "--no-dashboard", "--scheduler-file", str(scheduler_file)], **quiet)  # type: ignore[call-overload]
    }
    try:
        address = _wait_for_file(scheduler_file, WAIT_SECONDS)["address"]
        for name, threads in (("w1", 1), ("w2", 2)):
            processes[name] = subprocess.Popen(  # type: ignore[call-overload]
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", name, "--nthreads",
                 str(threads), "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                **quiet,
            )  # fmt: skip
        with Client(address, timeout=10, set_as_default=False) as probe:
            probe.wait_for_workers(2, timeout=WAIT_SECONDS)
            probe.register_plugin(_filesystems_plugin(), name="daskflow-test-holdfs")
            workers = {info["name"]: where for where, info in probe.scheduler_info()["workers"].items()}
        yield Cluster(address, processes, workers)
    finally:
        for process in reversed(processes.values()):
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


class HoldFileSystem(LocalFileSystem):  # type: ignore[misc]
    """A local folder whose publication of an entry (the rename of its temp file) in process ``hold_pid``
    never happens (it waits until the process is killed, bounded); elsewhere it goes through and then sets
    the ``distributed.Event`` ``landed`` on ``scheduler``, so a test can wait for an entry to land."""

    protocol = (HOLD_PROTOCOL,)
    root_marker = "/"

    def __init__(self, *, scheduler: str, landed: str, hold_pid: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scheduler, self.landed, self.hold_pid = scheduler, landed, hold_pid

    def mv(self, path1: str, path2: str, recursive: bool = True, **kwargs: Any) -> None:
        if os.path.basename(str(path2)).startswith(".tmp-"):  # not an entry's publication
            super().mv(path1, path2, recursive=recursive, **kwargs)
            return
        if os.getpid() == self.hold_pid:
            threading.Event().wait(WAIT_SECONDS)  # held until the test kills this process
            raise TimeoutError(f"the test never killed process {self.hold_pid}")
        super().mv(path1, path2, recursive=recursive, **kwargs)
        # The writer's thread has no task context: a client of its own.
        with Client(self.scheduler, set_as_default=False, timeout=10) as client:
            Event(self.landed, client=client).set()


def _register() -> None:
    fsspec.register_implementation(HOLD_PROTOCOL, HoldFileSystem, clobber=True)


def _filesystems_plugin() -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class Filesystems(WorkerPlugin):  # type: ignore[misc]
        def setup(self, worker: Any) -> None:
            _register()

    return Filesystems()


_register()


def _recompute_flow(cluster: Cluster, executions: Executions, storage: Any, landed: str | None) -> Any:
    """The flow of every test here: A on w1, reported; w1 killed; B on w2 needs A again."""

    @task(name="A", cache_policy=INPUTS if storage is not None else None, result_storage=storage)
    def produce(x: int) -> int:
        executions.record("A")
        return x * 10

    @task(name="gate")
    def gate(name: str) -> bool:
        return bool(Event(name).wait(WAIT_SECONDS))

    @task(name="B")
    def consume(value: int, opened: bool) -> int:
        assert opened, "the gate was never opened"
        return value + 1

    @flow(name="recompute", task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline() -> dict[str, Any]:
        gate_name = f"gate-{os.getpid()}-{time.monotonic_ns()}"
        with dask.annotate(workers=["w1"], allow_other_workers=True):
            a = produce.submit(4)
        with dask.annotate(workers=["w2"]):
            opened = gate.submit(gate_name)
            b = consume.submit(a, opened)
        a.wait()
        reported = a.state
        if landed is not None:  # the entry is in storage before w1 dies: the recompute is a hit
            assert Event(landed).wait(WAIT_SECONDS), "the entry never landed"
        killed = cluster.kill("w1")
        Event(gate_name).set()
        return {"b": b.result(), "reported": reported.name, "a": a.result(), "killed": killed}

    with Client(cluster.address, set_as_default=True, timeout=10):  # the flow body's Events talk through it
        return pipeline()


def _history_of_a(history: Any) -> tuple[Any, list[Any], list[str]]:
    """A's task run in the history, its states, and their names."""
    store = history()
    [flow_run] = store.list_flow_runs(flow_name="recompute")
    [run] = [r for r in store.task_runs(flow_run.id) if r.task_name == "A"]
    states = store.states(run.id)
    return run, states, [s.name for s in states]


def _figure(what_ran: str, run: Any, names: list[str]) -> str:
    """What a recompute test prints and fails with: how often A's body ran, then A's history."""
    return f"{what_ran}; the history: run_count {run.run_count}, final {run.state_name}, states {names}"


def _pids(runs_of_a: list[Any]) -> str:
    return f"A's body ran {len(runs_of_a)} times (pids {[e['pid'] for e in runs_of_a]})"


def test_a_recompute_that_runs_the_body_again_is_a_recorded_second_attempt(
    cluster: Cluster, executions: Executions, history: Any
) -> None:
    out = _recompute_flow(cluster, executions, None, None)
    assert out["b"] == 41 and out["a"] == 40 and out["reported"] == "Completed", out
    runs_of_a = executions.all()
    run, states, names = _history_of_a(history)
    figure = _figure(f"{_pids(runs_of_a)}, w1 was {out['killed']}", run, names)
    print(figure)
    assert len(runs_of_a) == 2 and runs_of_a[0]["pid"] == out["killed"] != runs_of_a[1]["pid"], figure
    assert run.run_count == 2, figure
    # The first attempt (its Running folded into its end when short), then the recompute's.
    assert names[-4:] == ["Completed", "AwaitingRecompute", "Retrying", "Completed"], figure
    assert names[:-4] in ([], ["Running"]), figure
    [why] = [s.message for s in states if s.name == "AwaitingRecompute"]
    assert why == RECOMPUTED.format(worker=cluster.workers["w1"]), figure
    assert run.worker == cluster.workers["w2"], figure


def test_a_recompute_that_hits_the_landed_entry_is_a_recorded_cached_attempt(
    cluster: Cluster, executions: Executions, history: Any, tmp_path: Path
) -> None:
    landed = f"landed-{os.getpid()}-{time.monotonic_ns()}"
    storage = ResultStore(f"{HOLD_PROTOCOL}://{tmp_path / 'results'}", {"scheduler": cluster.address, "landed": landed})
    out = _recompute_flow(cluster, executions, storage, landed)
    assert out["b"] == 41 and out["a"] == 40 and out["reported"] == "Completed", out
    ran = len(executions.all())
    run, states, names = _history_of_a(history)
    figure = _figure(f"A's body ran {ran} times", run, names)
    print(figure)
    assert ran == 1, figure  # the recompute read the entry: the body did not run again
    assert run.run_count == 2, figure
    assert names[-3:] == ["Completed", "AwaitingRecompute", "Cached"], figure
    assert names[:-3] in ([], ["Running"]), figure
    assert run.cache_hit, figure


def test_a_write_lost_with_its_worker_leaves_no_entry_and_the_recompute_that_writes_it_is_recorded(
    cluster: Cluster, executions: Executions, history: Any, tmp_path: Path
) -> None:
    # A's entry is written behind its value on w1, where its publication is held until w1 is killed:
    # the write dies with the worker, Dask computes A again on w2 (a miss), and that write lands.
    folder = tmp_path / "results"
    landed = f"landed-{os.getpid()}-{time.monotonic_ns()}"
    options = {"scheduler": cluster.address, "landed": landed, "hold_pid": cluster.processes["w1"].pid}
    out = _recompute_flow(cluster, executions, ResultStore(f"{HOLD_PROTOCOL}://{folder}", options), None)
    assert out["b"] == 41 and out["a"] == 40 and out["reported"] == "Completed", out
    entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    ran = len(executions.all())
    run, states, names = _history_of_a(history)
    figure = _figure(f"A's body ran {ran} times; entries when the flow returned {entries}", run, names)
    print(figure)
    assert ran == 2 and run.run_count == 2, figure
    assert names[-4:] == ["Completed", "AwaitingRecompute", "Retrying", "Completed"], figure
    # The recompute's entry, drained before the flow returned; whole (the killed write left at most a temp file).
    assert len(entries) == 1, figure
    assert ResultStore(folder.as_uri()).read(entries[0].removesuffix(".parquet")) is not None, figure


# -- a value lost before Dask took it (DaskTaskRunner.rerun_lost) ------------------------------------


def _hold_result_on(worker_name: str) -> Any:
    """A worker plugin: on ``worker_name``, the scheduler never hears that a run's Dask task ended.

    The run's final state goes out on the worker's stream to the scheduler ahead of the Dask
    task's end (distributed's ``task-finished`` message, sent when the worker's event loop takes
    the task's end): dropping that message on the way (until the test kills the worker) opens the
    window exactly: the client has the report, the scheduler never gets the value. Only for tasks
    whose value is a run's state: daskflow's runs, not the tasks around them.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class HoldResult(WorkerPlugin):  # type: ignore[misc]
        def setup(self, worker: Any) -> None:
            if worker.name != worker_name:
                return
            from daskflow.states import State

            send = worker.batched_send

            def held(message: dict[str, Any]) -> None:
                if message.get("op") == "task-finished" and isinstance(worker.data.get(message["key"]), State):
                    return  # held until the test kills this process
                send(message)

            worker.batched_send = held

    return HoldResult()


# retries=1: the old re-run resubmitted the call as a retry, without its arguments; retries=0: it ended
# the run Crashed (a value the run had produced, lost to the client). Neither policy applies: the attempt ended.
@pytest.mark.parametrize("retries", [0, 1])
def test_a_value_lost_before_dask_took_it_is_computed_again_with_the_runs_arguments(
    cluster: Cluster, executions: Executions, history: Any, retries: int
) -> None:
    _hold_results_on_w1(cluster)

    @task(name="A", retries=retries)
    def add(x: int, y: int) -> int:
        executions.record("A")
        return x + y

    @flow(name="recompute", task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline() -> dict[str, Any]:
        with dask.annotate(workers=["w1"], allow_other_workers=True):
            a = add.submit(2, y=3)
        _await_report(a)  # the run's end, reported; its Dask task is held on w1
        reported = a.task_run.state.name  # not a.state: that would fetch the value, which is held
        killed = cluster.kill("w1")
        return {"a": a.result(), "reported": reported, "killed": killed}

    with Client(cluster.address, set_as_default=True, timeout=10):
        out = pipeline()
    runs_of_a = executions.all()
    run, states, names = _history_of_a(history)
    figure = _figure(f"{out}; {_pids(runs_of_a)}", run, names)
    print(figure)
    assert out["a"] == 5 and out["reported"] == "Completed", figure
    assert len(runs_of_a) == 2 and runs_of_a[0]["pid"] == out["killed"] != runs_of_a[1]["pid"], figure
    assert run.run_count == 2 and run.state_name == "Completed", figure
    assert names[-4:] == ["Completed", "AwaitingRecompute", "Retrying", "Completed"], figure
    assert run.worker == cluster.workers["w2"], figure


def _await_report(future: Any) -> None:
    """Wait (bounded) for the run's reported end. Not ``future.wait()``: that waits on the Dask task
    too, in steps of a quarter of daskflow.dask.lost_timeout, and this one is held until its worker dies."""
    router = future._runner._router
    deadline = time.monotonic() + WAIT_SECONDS
    with router.changed:
        while not future.done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the run's end was never reported"
            router.changed.wait(remaining)


def _allow_no_failures(dask_scheduler: Any) -> None:
    dask_scheduler.allowed_failures = 0


def _hold_results_on_w1(cluster: Cluster) -> None:
    """w1 holds each result until it is killed; one death makes the task err (KilledWorker)
    rather than Dask running it again by itself."""
    with Client(cluster.address, timeout=10, set_as_default=False) as probe:
        probe.register_plugin(_hold_result_on("w1"), name="daskflow-test-hold-result")
        probe.run_on_scheduler(_allow_no_failures)


def test_a_lost_value_whose_recompute_fails_ends_the_future_crashed_not_with_no_value(
    cluster: Cluster, executions: Executions, history: Any
) -> None:
    _hold_results_on_w1(cluster)

    @task(name="A")
    def add(x: int, y: int) -> int:
        first = not executions.all()
        executions.record("A")
        if not first:
            raise ValueError("the second run of A fails")
        return x + y

    @flow(name="recompute", task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline() -> dict[str, Any]:
        with dask.annotate(workers=["w1"], allow_other_workers=True):
            a = add.submit(2, y=3)
        _await_report(a)
        cluster.kill("w1")
        state = a.state
        return {"state": state.name, "message": state.message}

    with Client(cluster.address, set_as_default=True, timeout=10):
        out = pipeline()
    run, states, names = _history_of_a(history)
    figure = _figure(f"{out}; A's body ran {len(executions.all())} times", run, names)
    print(figure)
    # Before, the future took the reported Completed, which holds no value: a.result() was None.
    assert out["state"] == "Crashed" and "ended Failed" in out["message"], figure
    assert len(executions.all()) == 2 and run.run_count == 2, figure
    assert names[-5:] == ["Completed", "AwaitingRecompute", "Retrying", "Failed", "Crashed"], figure


def test_a_dependent_of_a_value_lost_before_dask_took_it_runs_on_the_value_computed_again(
    cluster: Cluster, executions: Executions, history: Any
) -> None:
    # B waits on w2 for A's value; A's Dask task errs with w1 (KilledWorker), and B's with it.
    # Recovering B asks for A's state: A's value is computed again, and B starts again on it.
    _hold_results_on_w1(cluster)

    @task(name="A")
    def add(x: int, y: int) -> int:
        executions.record("A")
        return x + y

    @task(name="B")
    def double(value: int) -> int:
        executions.record("B")
        return value * 2

    @flow(name="recompute", task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline() -> int:
        with dask.annotate(workers=["w1"], allow_other_workers=True):
            a = add.submit(2, y=3)
        with dask.annotate(workers=["w2"]):
            b = double.submit(a)
        _await_report(a)
        cluster.kill("w1")
        return int(b.result())

    with Client(cluster.address, set_as_default=True, timeout=10):
        out = pipeline()
    run, states, names = _history_of_a(history)
    figure = f"b={out}; ran {executions.keys()}; A's history: run_count {run.run_count}, states {names}"
    print(figure)
    assert out == 10, figure
    assert executions.keys() == ["A", "A", "B"] and run.run_count == 2, figure
    assert names[-4:] == ["Completed", "AwaitingRecompute", "Retrying", "Completed"], figure
