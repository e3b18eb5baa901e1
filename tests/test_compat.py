"""Pins every private ``distributed`` detail that ``daskflow.concurrency.distributed_compat`` relies on.

If an upgrade of ``distributed`` moves one of them, a test here fails and names
it, instead of a fault test failing far away (or a slot silently waiting out its
lease). CI runs this file against the oldest and the newest ``distributed`` that
``pyproject.toml`` allows.
"""

from __future__ import annotations

import inspect
import pickle
import time
from collections import deque
from typing import Any

import pytest
from dask.base import annotate
from distributed import Client, KilledWorker, Semaphore, get_worker
from distributed.scheduler import TaskState

from daskflow.concurrency import distributed_compat as compat


def _wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        time.sleep(0.01)


def test_a_semaphore_keeps_its_lease_ids_and_releases_one_by_id(dask_client: Client) -> None:
    with dask_client.as_current():
        semaphore = Semaphore(max_leases=2, name="daskflow-compat-pin")
        assert isinstance(semaphore._leases, deque)
        assert inspect.iscoroutinefunction(Semaphore._release)
        assert hasattr(semaphore, "loop") and callable(semaphore._verify_running) and callable(semaphore.sync)
        assert compat.acquire_owned(semaphore, 1, "tcp://owner:1")
        [lease] = compat.lease_ids(semaphore)
        assert lease.startswith("tcp://owner:1#"), lease
        assert dask_client.run_on_scheduler(compat.leases_alive, name=semaphore.name, leases=[lease])
        assert semaphore.get_value() == 1
        compat.release_lease_soon(semaphore)
        _wait_until(lambda: semaphore.get_value() == 0, 10)
        assert compat.lease_ids(semaphore) == []
        semaphore.close()


def test_the_scheduler_releases_a_removed_workers_leases_by_their_owner(dask_client: Client) -> None:
    def hold(name: str) -> str:
        semaphore = Semaphore(max_leases=3, name=name)
        assert compat.acquire_owned(semaphore, 5, get_worker().address)
        semaphore._leases.clear()  # as if its process died: nobody will release it
        return str(get_worker().address)

    name = "daskflow-compat-owner"
    holder = dask_client.submit(hold, name, pure=False).result()
    with dask_client.as_current():
        semaphore = Semaphore(max_leases=3, name=name)
        assert semaphore.get_value() == 1
        released = dask_client.run_on_scheduler(lambda dask_scheduler: compat.release_leases_of(dask_scheduler, holder))
        assert released == 1, f"released {released} leases of {holder}"
        assert semaphore.get_value() == 0
        semaphore.close()


def test_a_worker_knows_its_threads_and_the_running_tasks_annotations(dask_client: Client) -> None:
    def look() -> tuple[bool, bool, dict[str, Any], int]:
        worker = get_worker()
        key = worker.get_current_task()
        with worker.active_threads_lock:
            mine = key in worker.active_threads.values()
        threads = compat.active_task_threads(worker, [key], set())
        annotations = dict(worker.state.tasks[key].annotations or {})
        return mine, threads != [], annotations, compat.current_task_crashes()

    with annotate(**{compat.MARK_ANNOTATION: True}):
        mine, found, annotations, crashes = dask_client.submit(look, pure=False).result()
    assert mine and found
    assert annotations.get(compat.MARK_ANNOTATION) is True, annotations
    assert crashes == 0


def test_the_scheduler_counts_worker_deaths_on_its_task_states() -> None:
    assert "suspicious" in TaskState.__slots__ and "annotations" in TaskState.__slots__
    params = inspect.signature(compat.WorkerDeaths.transition).parameters
    assert {"key", "start", "finish"} <= set(params)
    # A worker's log_event reaches scheduler plugins: how a task says that it waits.
    from distributed.diagnostics.plugin import SchedulerPlugin

    assert {"topic", "msg"} <= set(inspect.signature(SchedulerPlugin.log_event).parameters)


def test_killed_worker_says_how_many_workers_died(dask_client: Client) -> None:
    def make(dask_scheduler: Any) -> tuple[bytes, str]:
        # As the scheduler makes it when a task's last allowed worker dies.
        worker = next(iter(dask_scheduler.workers.values()))
        return pickle.dumps(KilledWorker(task="x", last_worker=worker.clean(), allowed_failures=3)), worker.address

    data, address = dask_client.run_on_scheduler(make)
    exc = pickle.loads(data)
    assert compat.killed_worker_deaths(exc) == 4
    assert compat.killed_worker_task(exc) == "x"
    assert compat.killed_worker_address(exc) == address


def test_the_message_texts_daskflow_matches(dask_client: Client) -> None:
    import threading

    with pytest.raises(TypeError) as raised:
        dask_client.submit(lambda lock: None, threading.Lock(), pure=False)
    assert compat.pickling_failed(raised.value), str(raised.value)
    assert compat.graph_deserialization_failed(RuntimeError("Error during deserialization of the task graph."))


def test_the_plugin_registers_once_per_scheduler(dask_client: Client) -> None:
    assert compat.install_crash_counter(dask_client)
    assert compat.install_crash_counter(dask_client)

    def plugins(dask_scheduler: Any) -> list[str]:
        return [name for name, plugin in dask_scheduler.plugins.items() if isinstance(plugin, compat.WorkerDeaths)]

    assert dask_client.run_on_scheduler(plugins) == ["daskflow-worker-deaths"]

    def waits(key: str) -> bool:
        compat.mark_waiting(True)
        return True

    future = dask_client.submit(waits, "x", pure=False, key="daskflow-compat-waits")
    assert future.result()
    key = future.key

    def seen(dask_scheduler: Any) -> bool:
        return key in dask_scheduler.plugins["daskflow-worker-deaths"].waiting

    _wait_until(lambda: dask_client.run_on_scheduler(seen), 10)
