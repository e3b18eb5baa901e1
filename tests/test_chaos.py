"""The chaos soak: a large cached, limited map while workers are SIGKILLed at random.

A 2,000-item map with caching and a concurrency limit of 10 runs on a
LocalCluster of 3 workers x 4 threads with nannies, while a thread SIGKILLs a
random worker process every 2 s. It must end ``Completed`` with every value
right; the side channel must never show more than 10 executions at once; no
slot may wait out a dead worker's lease (the lease timeout is set far longer
than the test); every task run must be in the history with a final state; and
a task body that ran to its end runs again only where the history records a
re-run of that task run. The counts are printed and carried by the assertion
messages.

It once stalled: a dead worker's request for a slot, still waiting on the
scheduler when the worker was removed, took a freed slot for that dead worker,
until all 10 were held by removed workers (see
:class:`daskflow.concurrency.distributed_compat.WorkerDeaths`).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dask.config
import pytest
from distributed import Client, LocalCluster

from conftest import TEST_DASK_CONFIG, Executions
from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.task_runners import DaskTaskRunner

ITEMS = 2000
LIMIT = 10
KILL_EVERY = 2.0
KILL_FOR = 60.0


@pytest.mark.slow
# A passing run takes about 80 s; while the soak can still stall (xfail below), a stall costs the
# suite at most 150 s rather than 300 s.
@pytest.mark.timeout(150)
@pytest.mark.xfail(
    # Not run by make test while it can stall: a stall's timeout is raised inside the flow body,
    # and the runner's shutdown then waits for the stuck runs without a bound (see the closing
    # note of stop 12), which would hold CI until its own limit. Run it by hand with --runxfail.
    run=False,
    strict=False,
    reason="passes in some runs (29 kills, 2,000/2,000) but can still stall, two ways seen with the fixes here: "
    "the map's shared definition task (daskflow-shared-*, which every run depends on) stayed 'processing' on a "
    "live worker while 1,566 runs waited on it; and every nanny gave up (no worker left on the scheduler after 8 "
    "kills). See the dask2 branch's report (issue 15). Fixed: slots granted to removed workers, and a broadcast "
    "to a dying worker failing the flow",
)
def test_chaos_soak(executions: Executions, history: Any, tmp_path: Path) -> None:
    config = {
        **TEST_DASK_CONFIG,
        # Far longer than the soak: a slot comes back only because the scheduler removed its worker.
        "distributed.scheduler.locks.lease-timeout": "300s",
    }
    kills: list[float] = []
    stop = threading.Event()

    @task(cache_policy=INPUTS, result_storage=(tmp_path / "results").as_uri(), concurrency_limit=LIMIT,
          retries=50, retry_delay_seconds=0)  # fmt: skip
    def square(i: int) -> int:
        started = time.time()
        time.sleep(0.1)
        executions.record(f"square-{i}", start=started)  # only bodies that ran to their end
        return i * i

    with dask.config.set(config):
        cluster = LocalCluster(
            n_workers=3,
            threads_per_worker=4,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=50,
        )
    client = Client(cluster, set_as_default=False)

    def killer() -> None:
        rng = random.Random(15)
        end = time.monotonic() + KILL_FOR
        while not stop.wait(KILL_EVERY) and time.monotonic() < end:
            try:
                registered = set(client.scheduler_info()["workers"])
            except Exception:  # the scheduler is busy: next time
                continue
            # Only a worker that has connected and that the scheduler has registered: a worker
            # killed while its nanny still starts it makes the nanny give up for good
            # ("Worker failed to connect"), which would end the cluster, not test the runner.
            # (The scheduler's worker info carries no pid: the nanny knows its process.)
            pids = [
                nanny.process.pid for nanny in list(cluster.workers.values())
                if nanny.status.name == "running" and nanny.process is not None and nanny.process.pid
                and nanny.worker_address in registered
            ]  # fmt: skip
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills.append(time.monotonic())

    thread = threading.Thread(target=killer, daemon=True)

    @flow(name="chaos", task_runner=DaskTaskRunner(client=client))
    def pipeline() -> list[int]:
        thread.start()
        return square.map(range(ITEMS)).result()

    try:
        started = time.monotonic()
        state = pipeline(return_state=True)
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(10)
        client.close()
        try:
            # Bounded: a nanny may be restarting the last worker killed.
            cluster.close(timeout=60)
        except Exception as exc:
            print(f"closing the cluster: {type(exc).__name__}: {exc}")

    store = history()
    [flow_run] = store.list_flow_runs(flow_name="chaos")
    runs = store.task_runs(flow_run.id)
    by_state = Counter(run.state_name for run in runs)
    reruns = {run.map_index: run.run_count for run in runs}
    done = Counter(e["key"] for e in executions.all())
    re_executed = {key: n for key, n in done.items() if n > 1}
    unrecorded = {key: n for key, n in re_executed.items() if reruns.get(int(key.split("-")[1]), 0) < n}
    retried = sum(1 for count in reruns.values() if count > 1)
    peak = executions.peak_concurrency()
    figure = (
        f"{len(kills)} kills in {took:.1f} s; flow {state.name}; {len(runs)} task runs in the history {dict(by_state)}; "
        f"{retried} runs with more than one attempt (attempts in all: {sum(reruns.values())}, so "
        f"{sum(reruns.values()) - len(runs)} crashed attempts retried); "
        f"{len(re_executed)} bodies ran to their end more than once; peak {peak} at once (limit {LIMIT})"
    )
    print(figure)
    assert state.is_completed(), f"{figure}: {state.message}"
    assert state.result() == [i * i for i in range(ITEMS)], figure
    assert len(kills) >= 10, figure
    assert peak <= LIMIT, figure
    assert len(runs) == ITEMS and set(by_state) <= {"Completed", "Cached"}, figure
    assert not unrecorded, f"{figure}; re-executed without a recorded re-run: {unrecorded}"
