"""Cache entries written behind the value (issue 14, goal 2): counts and events, never timings.

The writes go through ``gatefs://``, a real local filesystem (fsspec's own,
subclassed) whose publication of an entry (the rename of its temp file) waits
on a gate the test controls: a ``threading.Event`` for the runners of this
process, a ``distributed.Event`` for Dask's worker processes. So "the value
went downstream before its entry landed" is an observed order, not a race:
the downstream task sees the folder without the entry, then opens the gate.

What must hold on every runner:

* the downstream run gets the value while the entry is still unwritten;
* the entry exists when ``flow()`` returns, and already when the flow run
  became ``Completed`` (seen by a state listener);
* a write that fails (storage broken mid-write) is a warning in the task run's
  log and in the flow run's log, the run and the flow still complete with the
  right value, and no entry or temp file is left;
* an identical run in the same process while the write is in flight is a hit
  on the value in flight, not a second execution.

A Dask worker killed with a write in flight, and the recompute Dask then runs
of the lost value (a recorded re-run), are tested in ``test_dask_recompute.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

import faultfs
from conftest import RUNNER_FACTORIES
from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.results import ResultStore
from daskflow.results.write_behind import WriteBehind, WriteReport
from daskflow.runs import FlowRun, add_state_listener, remove_state_listener
from daskflow.task_runners import ThreadPoolTaskRunner

GATE_PROTOCOL = "gatefs"
GATE_WAIT_SECONDS = 60.0  # a bound, never reached when the test works: the gate is opened by an event
_local_gates: dict[str, threading.Event] = {}


class GateFileSystem(LocalFileSystem):  # type: ignore[misc]
    """A local folder whose renames (the publication of an entry) wait until the gate ``gate`` opens.

    ``scheduler`` set: the gate is the ``distributed.Event`` of that name on that
    scheduler (the writer's thread of a Dask worker has no task context, so it
    connects a client of its own); unset: a ``threading.Event`` of this process.
    """

    protocol = (GATE_PROTOCOL,)
    root_marker = "/"

    def __init__(
        self, *, gate: str | None = None, scheduler: str | None = None, kill_once: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.scheduler = scheduler
        self.kill_once = kill_once
        self._client: Any = None

    def mv(self, path1: str, path2: str, recursive: bool = True, **kwargs: Any) -> None:
        if os.path.basename(str(path2)).startswith(".tmp-"):  # not an entry's publication
            super().mv(path1, path2, recursive=recursive, **kwargs)
            return
        if self.kill_once is not None:
            try:
                os.close(os.open(self.kill_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        if self.gate is not None:
            if not self._wait():
                raise TimeoutError(f"gate {self.gate!r} stayed closed for {GATE_WAIT_SECONDS} s")
        super().mv(path1, path2, recursive=recursive, **kwargs)

    def _wait(self) -> bool:
        if self.scheduler is None:
            return _local_gates.setdefault(self.gate, threading.Event()).wait(GATE_WAIT_SECONDS)
        from distributed import Client, Event

        if self._client is None:
            self._client = Client(self.scheduler, set_as_default=False)
        return bool(Event(self.gate, client=self._client).wait(GATE_WAIT_SECONDS))


def register_filesystems() -> bool:
    """Make ``gatefs://`` and ``faultfs://`` known to fsspec here (run on the Dask workers too)."""
    fsspec.register_implementation(GATE_PROTOCOL, GateFileSystem, clobber=True)
    fsspec.register_implementation(faultfs.PROTOCOL, faultfs.FaultFileSystem, clobber=True)
    return True


register_filesystems()


def on_workers(request: pytest.FixtureRequest) -> Any:
    """The session's Dask client, its workers knowing the test filesystems."""
    client = request.getfixturevalue("dask_client")
    assert all(client.run(register_filesystems).values())
    return client


def open_gate(gate: str, scheduler: str | None) -> None:
    """Open the gate: from a task (a Dask worker's or this process's thread) or the test."""
    if scheduler is None:
        _local_gates.setdefault(gate, threading.Event()).set()
        return
    from distributed import Event

    Event(gate).set()  # in a task on a worker: the worker's client


def entries_in(folder: str) -> list[str]:
    """The published entries in ``folder`` (temp files start with a dot)."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.endswith(".parquet") and not name.startswith("."))


def temps_in(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".")) if os.path.isdir(folder) else []


# Behind the value on every runner, Dask's workers included (what a worker killed with a write in
# flight leaves, and the recompute Dask then runs, are in tests/test_dask_recompute.py).
@pytest.fixture(params=sorted(RUNNER_FACTORIES))
def runner_and_scheduler(request: pytest.FixtureRequest) -> tuple[Any, str | None]:
    """Each runner of the contract, with the scheduler address its gates need (None: this process)."""
    if request.param == "dask":
        client = on_workers(request)
        return RUNNER_FACTORIES["dask"](), client.scheduler.address
    return RUNNER_FACTORIES[request.param](), None


class Completions:
    """Each flow run that becomes ``Completed`` in this process, with the entries of ``folder`` at that moment."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.seen: list[tuple[str, list[str]]] = []

    def __call__(self, run: Any, state: Any) -> None:
        if isinstance(run, FlowRun) and state.is_completed():
            self.seen.append((run.flow_name, entries_in(self.folder)))


@pytest.fixture
def completions(tmp_path: Path) -> Iterator[Completions]:
    listener = Completions(str(tmp_path / "results"))
    add_state_listener(listener)
    yield listener
    remove_state_listener(listener)


def test_the_value_goes_downstream_before_its_entry_lands_and_the_flow_ends_after_it(
    runner_and_scheduler: tuple[Any, str | None], tmp_path: Path, completions: Completions
) -> None:
    runner, scheduler = runner_and_scheduler
    folder = completions.folder
    gate = f"gate-{uuid.uuid4().hex}"
    storage = ResultStore(f"{GATE_PROTOCOL}://{folder}", {"gate": gate, "scheduler": scheduler})

    @task(cache_policy=INPUTS, result_storage=storage)
    def produce(x: int) -> dict[str, int]:
        return {"x": x, "double": 2 * x}

    @task
    def consume(value: dict[str, int]) -> tuple[int, list[str]]:
        seen = entries_in(folder)  # before the gate opens, the entry cannot have landed
        open_gate(gate, scheduler)
        return value["double"] + 1, seen

    @flow(task_runner=runner)
    def pipeline() -> tuple[int, list[str]]:
        return consume(produce.submit(21))

    result, seen_downstream = pipeline()
    assert result == 43
    assert seen_downstream == [], f"the downstream run saw entries {seen_downstream} before the gate opened"
    landed = entries_in(folder)
    assert len(landed) == 1, f"the entry was not in storage when the flow returned: {landed}"
    assert temps_in(folder) == []
    at_completion = [entries for name, entries in completions.seen if name == "pipeline"]
    assert at_completion == [landed], f"the flow run was Completed with entries {at_completion}, not {landed}"
    assert ResultStore(f"file://{folder}").read(landed[0].removesuffix(".parquet")) is not None


def test_a_failing_write_warns_in_both_logs_and_leaves_no_entry(
    runner_and_scheduler: tuple[Any, str | None], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task_runner, _ = runner_and_scheduler
    folder = str(tmp_path / "results")
    faultfs.FaultFileSystem.injected.clear()
    # The storage breaks after 100 bytes of the entry: the write fails half-way, behind the value.
    storage = ResultStore(f"{faultfs.PROTOCOL}://{folder}", {"fail_after_bytes": 100})

    @task(cache_policy=INPUTS, result_storage=storage)
    def produce(x: int) -> list[int]:
        return list(range(x))

    @task
    def consume(values: list[int]) -> int:
        return sum(values)

    @flow(task_runner=task_runner)
    def pipeline() -> int:
        return consume(produce.submit(1000))

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        state = pipeline(return_state=True)
    assert state.is_completed(), state
    assert state.result() == sum(range(1000))
    assert entries_in(folder) == [] and temps_in(folder) == [], os.listdir(folder)
    warnings = [(r.name, r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
    task_warnings = [m for name, m in warnings if "task_runs" in name or "could not cache" in m]
    flow_warnings = [m for _, m in warnings if "1 of 1 cache entries of this flow run could not be written" in m]
    assert any("could not cache the result of task 'produce'" in m for m in task_warnings), warnings
    assert len(flow_warnings) == 1, warnings


def test_an_identical_run_in_this_process_hits_the_value_in_flight(tmp_path: Path, executions: Any) -> None:
    folder = str(tmp_path / "results")
    gate = f"gate-{uuid.uuid4().hex}"
    storage = ResultStore(f"{GATE_PROTOCOL}://{folder}", {"gate": gate})

    @task(cache_policy=INPUTS, result_storage=storage)
    def produce(x: int) -> int:
        executions.record("produce")
        return x * 10

    @task
    def second(x: int, after: int) -> tuple[int, list[str]]:
        # The first run completed, its entry is held at the gate: this identical run looks it up now.
        value = produce(x)
        seen = entries_in(folder)
        open_gate(gate, None)
        return value, seen

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline() -> tuple[int, list[str]]:
        first = produce.submit(4)
        return second(4, first)

    value, seen = pipeline()
    assert value == 40
    assert seen == [], seen
    assert executions.count("produce") == 1, "the identical run computed again instead of hitting the value in flight"
    assert len(entries_in(folder)) == 1


# -- the writer itself: bounded, reports what became of each owner's writes -----------------


def test_the_writer_is_bounded_reports_per_owner_and_drains_with_a_bound() -> None:
    writer = WriteBehind(max_pending=2, threads=1)
    release = threading.Event()
    started = threading.Event()

    def slow() -> bool:
        started.set()
        return release.wait(GATE_WAIT_SECONDS)

    def fails() -> bool:
        return False

    def raises() -> bool:
        raise OSError("disk on fire")

    assert writer.submit("flow-a", ("u", "k1"), "v1", "ver1", slow, "run a1")
    assert started.wait(GATE_WAIT_SECONDS)
    assert writer.submit("flow-b", ("u", "k2"), "v2", "ver2", fails, "run b1")
    # Full: the third is refused, and its caller writes it itself.
    assert not writer.submit("flow-b", ("u", "k3"), "v3", "ver3", raises, "run b2")
    assert writer.pending(("u", "k1")) == ("v1", "ver1")
    assert writer.pending(("u", "k3")) is None

    # Bounded: a drain whose writes are still held reports them unfinished.
    assert writer.drain("flow-a", timeout=0.05) == WriteReport(0, (), 1)
    release.set()
    assert writer.drain("flow-a", timeout=GATE_WAIT_SECONDS) == WriteReport(1, (), 0)
    assert writer.drain("flow-b", timeout=GATE_WAIT_SECONDS) == WriteReport(0, ("run b1",), 0)
    assert writer.pending(("u", "k1")) is None and writer.queued == 0

    assert writer.submit("flow-c", ("u", "k4"), "v4", "ver4", raises, "run c1")
    assert writer.drain("flow-c", timeout=GATE_WAIT_SECONDS) == WriteReport(0, ("run c1",), 0)
    assert writer.drain("flow-never", timeout=0) == WriteReport()


def filesystems_plugin() -> Any:
    """A worker plugin: every worker of the cluster, restarted ones too, knows the test filesystems."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class Filesystems(WorkerPlugin):  # type: ignore[misc]
        def setup(self, worker: Any) -> None:
            register_filesystems()

    return Filesystems()


@pytest.mark.slow  # a cluster of its own, a worker killed and restarted
def test_a_writer_killed_before_it_publishes_leaves_no_entry_and_the_flow_completes(
    tmp_path: Path, executions: Any
) -> None:
    from datetime import timedelta

    from conftest import private_client
    from daskflow.task_runners import DaskTaskRunner

    folder = str(tmp_path / "results")
    marker = str(tmp_path / "killed")
    # The first publication of an entry kills its worker process (SIGKILL, from the writer's thread,
    # after the temp file is written and before its rename); any later one goes through.
    storage = ResultStore(f"{GATE_PROTOCOL}://{folder}", {"kill_once": marker})

    # retries=1: the kill may come before the worker told the scheduler that the task ended; the
    # scheduler then counts a worker death under the task, an attempt that crashed (issue 15).
    @task(cache_policy=INPUTS, result_storage=storage, retries=1)
    def produce(x: int) -> dict[str, int]:
        executions.record("produce")
        return {"x": x, "pid": os.getpid()}

    with private_client() as client:
        client.register_plugin(filesystems_plugin(), name="daskflow-test-filesystems")

        @flow(task_runner=DaskTaskRunner(client=client))
        def pipeline() -> int:
            return produce(7)["x"]

        state = pipeline(return_state=True)
        assert os.path.exists(marker), "the writer was never killed: the test did not test anything"
        assert state.is_completed() and state.result() == 7, state
        store = ResultStore(f"file://{folder}")
        for name in entries_in(folder):  # published by a run after the kill: whole, or not there
            assert store.read(name.removesuffix(".parquet")) is not None, name
        assert len(temps_in(folder)) <= 1, temps_in(folder)  # the killed writer's, at most
        assert store.prune(temp_grace=timedelta(0)).orphans or not temps_in(folder)
        assert temps_in(folder) == []

        assert pipeline() == 7  # a hit on an entry that landed, or a recompute: never a partial entry
    [name] = entries_in(folder)
    assert store.read(name.removesuffix(".parquet")) is not None
    assert 1 <= executions.count("produce") <= 3, executions.keys()
