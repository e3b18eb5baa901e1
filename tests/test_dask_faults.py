"""The Dask runner under real infrastructure faults, counted from the side channel.

Worker processes die for real here (``os._exit`` inside a task, SIGKILL from
the test), on LocalClusters with nannies that start a fresh worker in their
place. What ran is counted from the ``executions`` side channel, never inferred
from states, and every test reports its figures in its assertion messages.

A worker death is one attempt of each run it was running, judged by the task's
own policy (retries, delays, ``retry_condition_fn``) whatever the cluster's
``distributed.scheduler.allowed-failures``: the clusters here run with 0 (every
death reaches the client as ``KilledWorker``) and with Dask's default of 3 (the
scheduler runs the task again by itself, and the worker's engine counts it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import dask.config
import pytest
from distributed import Client

from conftest import Executions, private_client
from daskflow import flow, task
from daskflow.runs import FlowRun
from daskflow.states import State
from daskflow.task_runners import DaskTaskRunner, dask_submit

pytestmark = pytest.mark.slow


@pytest.fixture(params=[0, 3], ids=["allowed-failures-0", "allowed-failures-3"])
def crash_cluster(request: pytest.FixtureRequest) -> Iterator[Client]:
    """2 worker processes x 4 threads with nannies; the scheduler's allowed-failures as the param."""
    with private_client(2, 4, **{"distributed.scheduler.allowed-failures": request.param}) as client:
        yield client


@pytest.fixture
def default_cluster() -> Iterator[Client]:
    """2 worker processes x 1 thread with nannies, Dask's default allowed-failures (3)."""
    with private_client(2, 1) as client:
        assert dask.config.get("distributed.scheduler.allowed-failures") == 3
        yield client


def _wait_until(predicate: Any, timeout: float) -> bool:
    """Poll ``predicate`` (a side-channel count) until true or ``timeout``; inside a task."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_runs_killed_together_by_one_worker_death_retry_concurrently(
    crash_cluster: Client, executions: Executions, flow_runs: list[FlowRun]
) -> None:
    items = 8  # all of them running at once: 4 on each worker

    @task(retries=1, retry_delay_seconds=5)
    def held(i: int) -> int:
        first = executions.count(f"item-{i}") == 0
        executions.record(f"item-{i}")
        if first:
            # Every item starts, then item 0 takes its worker (and its 3 siblings there) down.
            _wait_until(lambda: len(executions.all()) >= items, 60)
            if i == 0:
                executions.record("exit")
                os._exit(1)
            _wait_until(lambda: executions.count("exit") > 0, 60)
            time.sleep(0.5)  # those on the other worker end after the death
        return i * 10

    @flow(task_runner=DaskTaskRunner(client=crash_cluster))
    def pipeline() -> list[int]:
        return held.map(range(items)).result()

    assert pipeline() == [i * 10 for i in range(items)]
    ended = time.time()
    [exit_record] = [e for e in executions.all() if e["key"] == "exit"]
    after_death = ended - exit_record["end"]
    runs = flow_runs[-1].task_runs
    crashed = [r for r in runs if any("after a crash" in (s.message or "") for s in r.state_history)]
    counts = {i: executions.count(f"item-{i}") for i in range(items)}
    figure = (
        f"{len(crashed)} runs crashed together; the flow ended {after_death:.2f} s after the death; executions {counts}"
    )
    print(figure)
    assert len(crashed) >= 2, figure  # the exiting run and at least one sibling on its worker
    for run in crashed:
        names = [s.name for s in run.state_history]
        assert names[-1] == "Completed" and "AwaitingRetry" in names, (run.name, names, figure)
        assert run.run_count == 2, (run.name, run.run_count, figure)
        assert counts[run.map_index or 0] == 2, (run.name, figure)
    assert all(1 <= n <= 2 for n in counts.values()), figure
    # One delay of 5 s for all of them, not one per crashed run (4 x 5 s = 20 s serially).
    assert after_death < 5 * len(crashed), figure


@pytest.mark.parametrize("allowed_failures", [None, 0], ids=["default-allowed-failures", "allowed-failures-0"])
def test_a_task_that_kills_its_worker_every_time_runs_retries_plus_one_times(
    allowed_failures: int | None, executions: Executions
) -> None:
    config = {} if allowed_failures is None else {"distributed.scheduler.allowed-failures": allowed_failures}

    @task(name="suicidal", retries=1, retry_delay_seconds=0)
    def suicidal() -> None:
        executions.record("suicidal")
        os._exit(1)

    @task
    def fine(i: int) -> int:
        return i

    seen: dict[str, Any] = {}
    with private_client(2, 1, **config) as client:

        @flow(task_runner=DaskTaskRunner(client=client))
        def pipeline() -> list[int]:
            seen["crash"] = suicidal.submit(return_state=True)
            return fine.map(range(4)).result()

        assert pipeline() == list(range(4))
    ran = executions.count("suicidal")
    state = seen["crash"]
    assert ran == 2, f"a task that kills its worker ran {ran} times with retries=1 (expected 2); final {state!r}"
    assert state.is_crashed(), state
    assert "worker running task run 'suicidal-0' died" in (state.message or ""), state.message


def test_a_retry_condition_that_says_no_ends_a_crash_at_once(default_cluster: Client, executions: Executions) -> None:
    def never(task: Any, run: Any, state: State) -> bool:
        return False

    @task(name="fragile", retries=3, retry_delay_seconds=0, retry_condition_fn=never)
    def fragile() -> None:
        executions.record("fragile")
        os._exit(1)

    @flow(task_runner=DaskTaskRunner(client=default_cluster))
    def run_it() -> str:
        state = fragile.submit(return_state=True)
        return f"{state.name}|{state.message}"

    name, _, message = run_it().partition("|")
    ran = executions.count("fragile")
    assert ran == 1, f"retry_condition_fn returned False, yet the task ran {ran} times ({name}: {message})"
    assert name == "Crashed", (name, message)
    assert "died" in message, message


def test_a_large_map_survives_the_death_of_every_holder_of_its_shared_definition(
    executions: Executions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any map over the inline threshold ships the task once: a low threshold makes this one do so.
    monkeypatch.setattr(dask_submit, "_INLINE_BYTES", 1024)
    items = 300
    kills: list[int] = []

    @task(retries=3, retry_delay_seconds=0)
    def slow(i: int) -> int:
        executions.record(f"slow-{i}")
        time.sleep(0.02)
        return i + 1

    with private_client(2, 2) as client:
        original = list(client.run(os.getpid).values())

        def killer() -> None:
            if _wait_until(lambda: len(executions.all()) >= 40, 60):
                for pid in original:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()

        @flow(task_runner=DaskTaskRunner(client=client))
        def pipeline() -> list[int]:
            return slow.map(range(items)).result()

        started = time.monotonic()
        values = pipeline()
        took = time.monotonic() - started
        thread.join(10)
    ran = len(executions.all())
    figure = f"{len(kills)} original workers killed; {ran} executions for {items} items in {took:.1f} s"
    print(figure)
    assert len(kills) == 2, figure
    assert values == [i + 1 for i in range(items)], figure


def test_a_dead_workers_slot_comes_back_at_once(executions: Executions) -> None:
    # A lease timeout far longer than the test: only the scheduler's removal of the worker frees the slot.
    config = {"distributed.scheduler.locks.lease-timeout": "60s"}
    killed: list[float] = []

    @task(concurrency_limit=1, retries=1, retry_delay_seconds=0)
    def limited(i: int) -> int:
        executions.record("start", i=i)
        if len(executions.all()) == 1:  # the first to hold the slot: until its worker is killed
            _wait_until(lambda: False, 60)
        return i

    def killer() -> None:
        if _wait_until(lambda: len(executions.all()) >= 1, 60):
            os.kill(executions.all()[0]["pid"], signal.SIGKILL)
            killed.append(time.time())

    with private_client(2, 1, **config) as client:
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()

        @flow(task_runner=DaskTaskRunner(client=client))
        def pipeline() -> list[int]:
            return limited.map(range(2)).result()

        assert pipeline() == [0, 1]
        thread.join(10)
    [kill] = killed
    later = [e["start"] - kill for e in executions.all()[1:]]
    figure = (
        f"the slot's next holder started {min(later):.2f} s after its holder's worker was killed (lease timeout 60 s)"
    )
    print(figure)
    assert min(later) < 30, figure


def test_a_flow_that_fails_mid_map_leaves_every_task_run_final_in_the_history(
    dask_client: Client, history: Any
) -> None:
    from daskflow.context import get_flow_run_context

    @task
    def work(i: int) -> int:
        if i == 0:
            raise ValueError("item 0 fails")
        time.sleep(0.05)
        return i

    @flow(name="fails-mid-map", task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> int:
        futures = work.map(range(40))
        ctx = get_flow_run_context()
        assert ctx is not None
        # The scheduler loses the last half before they start (as when it forgets a graph).
        ctx.task_runner.client.cancel([f.dask_future for f in futures[20:]], force=True)
        return sum(futures.result())

    state = pipeline(return_state=True)
    assert state.is_failed(), state
    store = history()
    [flow_run] = store.list_flow_runs(flow_name="fails-mid-map")
    runs = store.task_runs(flow_run.id)
    states: dict[str, int] = {}
    for run in runs:
        states[run.state_name] = states.get(run.state_name, 0) + 1
    figure = f"{len(runs)} of 40 submitted task runs in the history, by state: {states}"
    assert len(runs) == 40, figure
    assert all(run.state_type in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for run in runs), figure


def test_a_task_the_scheduler_lost_ends_its_run_within_the_configured_bound(dask_client: Client) -> None:
    from daskflow.context import get_flow_run_context

    def forget(dask_scheduler: Any, key: str, client: str) -> None:
        # What a scheduler that never got (or lost) the task leaves: the client's future stays pending.
        dask_scheduler.client_releases_keys(keys=[key], client=client, stimulus_id="test-forget")

    @task
    def upstream() -> int:
        time.sleep(1.0)
        return 1

    @task(name="vanishing")
    def vanishing(x: int) -> int:
        return x + 1

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> str:
        future = vanishing.submit(upstream.submit())
        ctx = get_flow_run_context()
        assert ctx is not None
        client = ctx.task_runner.client
        key = future.dask_future.key
        known = _wait_until(lambda: client.run_on_scheduler(lambda dask_scheduler: key in dask_scheduler.tasks), 30)
        assert known, "the scheduler never received the task"
        client.run_on_scheduler(forget, key=key, client=client.id)
        future.wait()
        state = future.state
        return f"{state.name}|{state.message}"

    started = time.monotonic()
    with dask.config.set({"daskflow.dask.lost_timeout": "2s"}):
        name, _, message = pipeline().partition("|")
    took = time.monotonic() - started
    figure = f"the run ended {name} {took:.1f} s after the flow started (bound 2 s): {message}"
    print(figure)
    assert name == "Crashed", figure
    assert "'vanishing-0' never started" in message and "lost_timeout" in message, figure
    assert took < 60, figure  # not a timing: without the bound this flow never ends


def test_a_slot_granted_to_a_worker_after_its_removal_comes_back(dask_client: Client) -> None:
    # The chaos soak's stall: a worker's request for a slot waits on the scheduler (its handler
    # waits there for a free slot); the worker dies and is removed, which frees slots, and the
    # waiting handler takes one for the dead worker. Nobody would release it until the lease
    # timeout (60 s here), so every slot of the limit could end up held by dead workers.
    from distributed import Semaphore

    from daskflow.concurrency import distributed_compat as compat

    assert compat.install_crash_counter(dask_client)
    name, gone = "daskflow-faults-late-grant", "tcp://127.0.0.1:9"
    with dask.config.set({"distributed.scheduler.locks.lease-timeout": "60s"}), dask_client.as_current():
        semaphore = Semaphore(max_leases=1, name=name)
        semaphore.register()  # on the scheduler with that timeout (read then)
    timeout = dask_client.run_on_scheduler(
        lambda dask_scheduler: dask_scheduler.extensions["semaphores"].lease_timeouts[name]
    )
    assert timeout == 60, f"the semaphore's lease timeout is {timeout}"
    assert semaphore.acquire(timeout=10)  # the only slot is taken: the dead worker's request waits
    granted: list[bool] = []

    def request() -> None:  # what acquire_owned sends from a worker, without a worker to refresh it
        granted.append(
            dask_client.sync(dask_client.scheduler.semaphore_acquire, name=name, timeout=30, lease_id=f"{gone}#late")
        )

    def pending(dask_scheduler: Any) -> int:
        return int(dask_scheduler.extensions["semaphores"].metrics["pending"][name])

    def remove(dask_scheduler: Any) -> None:  # what the scheduler tells its plugins when it removes a worker
        for plugin in dask_scheduler.plugins.values():
            if isinstance(plugin, compat.WorkerDeaths):
                plugin.remove_worker(dask_scheduler, gone)

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    assert _wait_until(lambda: dask_client.run_on_scheduler(pending) == 1, 10), "the request never waited"
    dask_client.run_on_scheduler(remove)
    started = time.monotonic()
    semaphore.release()
    thread.join(30)
    assert granted == [True], f"the waiting request was not granted the freed slot: {granted}"
    came_back = _wait_until(lambda: semaphore.get_value() == 0, 20)
    figure = (
        f"the slot granted to the removed worker {'came back' if came_back else 'was still held'} after "
        f"{time.monotonic() - started:.2f} s (lease timeout 60 s)"
    )
    print(figure)
    assert came_back, figure
    assert semaphore.acquire(timeout=10), "the slot that came back cannot be taken"
    semaphore.release()
    semaphore.close()
