"""Run history through a real 30 s database outage in the middle of a 2,000-item map, counted.

Issue 15, defect 4: the writer used to drop what it could not write (936 of 2,001
task runs lost to a 15 s PostgreSQL stop). Here the database goes away for
30 s once item 300 of the map has run — PostgreSQL stopped with ``pg_ctl stop -m
fast`` (a private server, so the session's is not disturbed), or the SQLite file
held under ``BEGIN EXCLUSIVE`` by another connection — while the rest of the map
runs. The flow must complete during the outage, and once the database is back,
every flow run, task run, state and log record must be in the store, each once.

Items from 1,000 on wait until the outage has begun (an event, bounded), so at
least half the map is recorded while the database is away whatever the speed of
the machine. The states expected are counted by a state listener of the test's
own, beside the engine's recorder.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask.config
import pytest

from conftest import _free_port, _postgres_bindir
from daskflow import flow, get_run_logger, task
from daskflow.engine.history import recorder
from daskflow.runs import FlowRun, TaskRun, add_state_listener, remove_state_listener
from daskflow.runstore import RunStore
from daskflow.task_runners import ThreadPoolTaskRunner

ITEMS = 2_000
OUTAGE_SECONDS = 30.0  # the fault itself: how long the database is away
OUTAGE_AT = 300  # the map item whose run starts the outage
HELD_FROM = 1_000  # items from here on wait for the outage to have begun


class PrivatePostgres:
    """A PostgreSQL server of this test's own, which the test stops and starts."""

    def __init__(self) -> None:
        bindir = _postgres_bindir()
        if bindir is None:
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin). Fix: apt-get install postgresql")
        pytest.importorskip("psycopg")
        self.bindir = bindir
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="daskflow-pg-outage-"))
        self.data, self.log, self.port = self.root / "data", self.root / "server.log", _free_port()
        if self.run_as:
            shutil.chown(self.root, "postgres")
        (self.root / "pwfile").write_text("outage")
        if self.run_as:
            shutil.chown(self.root / "pwfile", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", f"--pwfile={self.root / 'pwfile'}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")  # fmt: skip
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres:outage@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.run_as, str(self.bindir / tool), *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr}\n{log}")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories= -c fsync=off"
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options)

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")

    def remove(self) -> None:
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.remove()


class StateCounter:
    """Counts, per run, the states the engine announced: what the recorder was handed."""

    def __init__(self) -> None:
        self.states: Counter[tuple[str, str]] = Counter()
        self.flow_runs: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, run: TaskRun | FlowRun, state: Any) -> None:
        with self.lock:
            self.states[(run.id, state.name)] += 1
            if isinstance(run, FlowRun):
                self.flow_runs.add(run.id)


def _map_through_an_outage(begin: Callable[[], None], end: Callable[[], None]) -> tuple[Any, float, bool]:
    """Run the 2,000-item map; the outage starts at item 300 and lasts 30 s. Return (state, seconds, overlapped)."""
    reached, begun, ended = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def outage() -> None:
        try:
            assert reached.wait(120), "the map never reached the item that starts the outage"
            begin()
            begun.set()
            time.sleep(OUTAGE_SECONDS)  # the fault being injected, not synchronisation
            end()
        except BaseException as exc:
            failures.append(exc)
            begun.set()
        finally:
            ended.set()

    @task
    def item(i: int) -> int:
        get_run_logger().info("item %d", i)
        if i == OUTAGE_AT:
            reached.set()
        if i >= HELD_FROM:
            assert begun.wait(120), "the outage never began"
        return i * 2

    @flow(name="through-an-outage", task_runner=ThreadPoolTaskRunner(max_workers=8))
    def pipeline(n: int) -> int:
        get_run_logger().info("mapping %d items", n)
        total = sum(item.map(range(n)).result())
        get_run_logger().info("mapped, total %d", total)
        return total

    thread = threading.Thread(target=outage, name="test-outage", daemon=True)
    thread.start()
    started = time.monotonic()
    state = pipeline(ITEMS, return_state=True)
    elapsed = time.monotonic() - started
    overlapped = begun.is_set() and not ended.is_set()  # the flow ended while the database was away
    assert ended.wait(OUTAGE_SECONDS + 120), "the outage did not end"
    thread.join(10)
    assert not failures, failures
    return state, elapsed, overlapped


def _check_everything_is_kept(store: RunStore, counter: StateCounter, report: list[str]) -> None:
    (flow_run_id,) = counter.flow_runs
    detail = store.flow_run(flow_run_id)
    assert detail is not None and detail.state_name == "Completed", detail
    task_runs = store.task_runs(flow_run_id)
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT run_id, name, uid FROM states").all()
    stored = Counter((run_id, name) for run_id, name, _ in rows)
    # A task run that had ended when the writer drained its Pending or Running state keeps its row
    # and its final state only (engine/history.py, issue 14 goal 3): left out by design, not lost.
    ended = {run_id for run_id, name in stored if name == "Completed"} - counter.flow_runs
    missing = Counter(
        {
            key: n
            for key, n in (counter.states - stored).items()
            if key[0] not in ended or key[1] not in ("Pending", "Running")
        }
    )
    logs = [log.message for log in store.logs(flow_run_id)]
    item_logs = sorted(m for m in logs if m.startswith("item "))
    current = recorder()
    assert current is not None
    writer = current.writer
    report.append(
        f"task runs {len(task_runs)}/{ITEMS}, states {sum(stored.values())} stored for "
        f"{sum(counter.states.values())} announced ({len(missing)} missing), item logs {len(item_logs)}/{ITEMS}, "
        f"writer: spooled {writer.spooled}, replayed {writer.replayed}, dropped {writer.dropped}"
    )
    print(report)
    assert len(task_runs) == ITEMS and {run.state_name for run in task_runs} == {"Completed"}, report
    assert sorted(run.map_index for run in task_runs) == list(range(ITEMS)), report
    assert not missing, (report, list(missing.items())[:5])
    assert len({uid for _, _, uid in rows}) == len(rows), f"a state was stored twice: {report}"
    assert item_logs == sorted(f"item {i}" for i in range(ITEMS)), report
    assert "mapping 2000 items" in logs and "mapped, total 3998000" in logs, report
    assert writer.dropped == 0 and writer.spooled > 0, report
    assert writer.backlog == [], report


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.filterwarnings("ignore:cannot read cancel requests")  # the cancel watcher meets the outage too
def test_postgres_stopped_for_30_s_mid_map_loses_nothing(private_postgres: PrivatePostgres, history: Any) -> None:
    counter = StateCounter()
    add_state_listener(counter)
    try:
        with dask.config.set({"daskflow.runstore.url": private_postgres.url}):
            state, elapsed, overlapped = _map_through_an_outage(private_postgres.stop, private_postgres.start)
            assert state.is_completed() and state.result() == 3_998_000, state
            store = history()  # flushes: the spool is replayed now that the server is back
            report = [f"flow took {elapsed:.1f} s and ended during the outage: {overlapped}"]
            _check_everything_is_kept(store, counter, report)
    finally:
        remove_state_listener(counter)
    assert overlapped, report


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sqlite_held_exclusive_for_30_s_mid_map_loses_nothing(history: Any, daskflow_home: Path) -> None:
    RunStore().close()  # the file exists, so another connection can lock it
    locker: list[sqlite3.Connection] = []

    def lock() -> None:
        connection = sqlite3.connect(daskflow_home / "runs.db", isolation_level=None, check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")
        locker.append(connection)

    def unlock() -> None:
        locker[0].execute("ROLLBACK")
        locker[0].close()

    counter = StateCounter()
    add_state_listener(counter)
    try:
        state, elapsed, overlapped = _map_through_an_outage(lock, unlock)
        assert state.is_completed() and state.result() == 3_998_000, state
        store = history()
        report = [f"flow took {elapsed:.1f} s and ended during the outage: {overlapped}"]
        _check_everything_is_kept(store, counter, report)
    finally:
        remove_state_listener(counter)
    assert overlapped, report
