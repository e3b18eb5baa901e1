"""Concurrency limits and rate limits, on every runner, with real faults.

Peaks are measured, not inferred: each execution writes its start and end to
the ``executions`` side channel, and the tests compute the most executions
ever in progress at once. The Dask tests run on clusters of worker processes
with several threads each (a limit below the thread count is the case that
matters), with short lease settings (1 s) so that a lease nobody refreshes ends within
a test (a killed holder's slot comes back as soon as the scheduler removes its worker).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import dask.config
import pytest
from distributed import Client

from conftest import private_client
from daskflow import flow, task
from daskflow.concurrency import concurrency, rate_limit
from daskflow.context import get_task_run_context
from daskflow.exceptions import ConcurrencyLimitError
from daskflow.task_runners import DaskTaskRunner, SequentialTaskRunner, ThreadPoolTaskRunner


@pytest.fixture(scope="module")
def threaded_client() -> Any:
    """2 worker processes x 4 threads, loopback, short leases."""
    with private_client(threads_per_worker=4) as client:
        yield client


RUNNERS = ["sequential", "threadpool", "dask"]


@pytest.fixture(params=RUNNERS)
def runner(request: pytest.FixtureRequest) -> Any:
    if request.param == "sequential":
        return SequentialTaskRunner()
    if request.param == "threadpool":
        return ThreadPoolTaskRunner(max_workers=8)
    return DaskTaskRunner(client=request.getfixturevalue("threaded_client"))


def _limited_work(executions: Any, name: str, **options: Any) -> Any:
    @task(name=name, **options)
    def work(i: int) -> int:
        started = time.time()
        time.sleep(0.01)
        executions.record(f"{name}-{i}", start=started)
        return i

    return work


def test_a_tasks_limit_is_never_exceeded(runner: Any, executions: Any) -> None:
    work = _limited_work(executions, "capped", concurrency_limit=3)

    @flow(task_runner=runner)
    def pipeline(n: int) -> int:
        return sum(work.map(range(n)).result())

    n = 200 if isinstance(runner, DaskTaskRunner) else 100
    assert pipeline(n) == sum(range(n))
    peak = executions.peak_concurrency()
    assert len(executions.all()) == n
    assert 1 <= peak <= 3, f"peak {peak} runs at once under a limit of 3"


def test_flow_limits_by_task_name_and_by_tag(runner: Any, executions: Any) -> None:
    by_name = _limited_work(executions, "by-name")
    by_tag = _limited_work(executions, "by-tag", tags={"db"})

    @flow(task_runner=runner, concurrency_limit={"by-name": 2, "db": 1})
    def pipeline() -> list[int]:
        a, b = by_name.map(range(20)), by_tag.map(range(20))
        return a.result() + b.result()

    assert pipeline() == list(range(20)) * 2
    name_runs = [e for e in executions.all() if e["key"].startswith("by-name")]
    tag_runs = [e for e in executions.all() if e["key"].startswith("by-tag")]
    assert _peak(name_runs) <= 2 and _peak(tag_runs) == 1, (_peak(name_runs), _peak(tag_runs))


def test_config_limits_apply_to_tags(runner: Any, executions: Any) -> None:
    work = _limited_work(executions, "configured", tags={"warehouse"})

    @flow(task_runner=runner)
    def pipeline() -> int:
        return len(work.map(range(20)).result())

    with dask.config.set({"daskflow.concurrency.limits": {"warehouse": 2}}):
        assert pipeline() == 20
    assert executions.peak_concurrency() <= 2


def test_concurrency_inside_a_task_and_the_wait_is_recorded(runner: Any, executions: Any) -> None:
    @task
    def query(i: int) -> float:
        with concurrency("db"):
            started = time.time()
            time.sleep(0.02)
            executions.record(f"query-{i}", start=started)
        ctx = get_task_run_context()
        assert ctx is not None
        return ctx.task_run.slot_wait

    @flow(task_runner=runner, concurrency_limit={"db": 1})
    def pipeline() -> list[float]:
        return query.map(range(8)).result()

    waits = pipeline()
    assert executions.peak_concurrency() == 1
    if not isinstance(runner, SequentialTaskRunner):
        assert max(waits) > 0.02, f"eight runs on one slot, yet the longest wait was {max(waits):.3f} s"


def test_waiters_do_not_hold_threads(executions: Any) -> None:
    # 4 threads, 100 runs on a limit of 1: an unrelated run still gets a thread early.
    work = _limited_work(executions, "single", concurrency_limit=1)

    @task
    def unrelated() -> None:
        executions.record("unrelated")

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def pipeline() -> None:
        limited = work.map(range(100))
        unrelated.submit().wait()
        limited.wait()

    pipeline()
    starts = {e["key"]: e["start"] for e in executions.all()}
    before = sum(1 for key, start in starts.items() if key.startswith("single") and start < starts["unrelated"])
    assert before < 50, f"the unrelated run waited for {before} of the 100 limited runs"
    assert executions.peak_concurrency() <= 2  # one limited run, maybe the unrelated one


def test_waiters_on_dask_secede_and_unrelated_tasks_run(threaded_client: Client, executions: Any) -> None:
    work = _limited_work(executions, "single-dask", concurrency_limit=1)

    @task
    def unrelated() -> None:
        executions.record("unrelated")

    @flow(task_runner=DaskTaskRunner(client=threaded_client))
    def pipeline() -> None:
        limited = work.map(range(60))
        unrelated.submit().wait()
        limited.wait()

    pipeline()
    starts = {e["key"]: e["start"] for e in executions.all()}
    before = sum(1 for key, start in starts.items() if key.startswith("single") and start < starts["unrelated"])
    assert before < 30, f"the unrelated run waited for {before} of the 60 limited runs"
    limited = [e for e in executions.all() if e["key"].startswith("single")]
    assert _peak(limited) == 1


@pytest.mark.parametrize("ending", ["raises", "times out"])
def test_a_slot_is_released_however_its_holder_ends(runner: Any, ending: str) -> None:
    @task(concurrency_limit=1, timeout_seconds=0.2 if ending == "times out" else None)
    def bad() -> None:
        if ending == "raises":
            raise RuntimeError("boom")
        time.sleep(5)

    @task(concurrency_limit=1, name="bad")  # same limit name: task:bad
    def good() -> int:
        return 1

    @flow(task_runner=runner)
    def pipeline() -> tuple[str, int]:
        state = bad.submit(return_state=True)
        return state.name, good.submit().result(timeout=30)

    assert pipeline() == ("Failed" if ending == "raises" else "TimedOut", 1)


def test_a_cancelled_holder_releases_its_slot() -> None:
    started = threading.Event()

    @task(concurrency_limit=1, name="cancellable")
    def slow() -> None:
        started.set()
        for _ in range(3000):  # short sleeps: the interrupt lands between them
            time.sleep(0.01)

    @task(concurrency_limit=1, name="cancellable")
    def quick() -> int:
        return 1

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def interrupted() -> None:
        slow.submit()
        assert started.wait(30)
        raise KeyboardInterrupt

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def after() -> int:
        return quick.submit().result(timeout=10)

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert after() == 1


@pytest.mark.slow
def test_overbooking_the_scheduler_detects_is_a_warning(
    threaded_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    @task(concurrency_limit=1, name="gil-hog")
    def hog() -> int:
        # One C call that holds the GIL for about three seconds: its lease is not refreshed for
        # longer than the tests' 1 s lease timeout, the scheduler drops it, and the
        # waiting run takes the slot while this one still runs.
        time.sleep(0.3)  # first, with the GIL free, so that the client sees it Running
        return sum(range(120_000_000)) % 7

    @task(concurrency_limit=1, name="gil-hog")
    def waiter() -> None:
        time.sleep(6)  # still holding the slot it took over when the hog gives its own back

    @flow(task_runner=DaskTaskRunner(client=threaded_client))
    def pipeline() -> None:
        first = hog.submit()
        deadline = time.monotonic() + 30
        while first.task_run.state.name != "Running" and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a state the client gets in batches: hog holds the slot now
        waiter.submit()
        first.wait()

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        pipeline()
    messages = [r.getMessage() for r in caplog.records]
    warned = [m for m in messages if "was overbooked" in m]
    assert warned and "gil-hog" in warned[0] and "lease-timeout" in warned[0], messages


def test_two_sizes_of_one_name_do_not_collide_on_a_cluster(threaded_client: Client) -> None:
    @task
    def use(i: int) -> int:
        with concurrency("shared"):
            return i

    for size in (2, 3):

        @flow(task_runner=DaskTaskRunner(client=threaded_client), concurrency_limit={"shared": size})
        def pipeline() -> int:
            return sum(use.map(range(6)).result())

        assert pipeline() == 15


@pytest.mark.slow
def test_a_killed_slot_holder_releases_its_slot_within_the_lease_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "holder.pid"

    @task(concurrency_limit=1, name="guarded")
    def holder() -> None:
        with open(f"{pid_file}.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(f"{pid_file}.tmp", pid_file)
        time.sleep(60)  # until the test kills this worker

    @task(concurrency_limit=1, name="guarded")
    def next_in_line() -> float:
        return time.time()

    with private_client(threads_per_worker=2, **{"distributed.scheduler.allowed-failures": 0}) as client:
        killed_at: list[float] = []

        def killer() -> None:
            deadline = time.monotonic() + 60
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            killed_at.append(time.time())
            os.kill(int(pid_file.read_text()), signal.SIGKILL)

        @flow(task_runner=DaskTaskRunner(client=client))
        def pipeline() -> tuple[str, float]:
            crashed = holder.submit()
            threading.Thread(target=killer, daemon=True).start()
            crashed.wait()
            # Its worker is dead: only the end of its lease can give the slot back.
            return crashed.state.name, next_in_line.submit().result(timeout=60)

        state_name, got_slot_at = pipeline()
    assert state_name == "Crashed"
    assert got_slot_at - killed_at[0] < 10, f"the slot came back {got_slot_at - killed_at[0]:.1f} s after the kill"


def test_rate_limit_spaces_the_starts(runner: Any, executions: Any) -> None:
    @task
    def call_api(i: int) -> None:
        with rate_limit("api", per_second=5):
            executions.record(f"call-{i}")

    @flow(task_runner=runner)
    def pipeline() -> None:
        call_api.map(range(12)).wait()

    pipeline()
    starts = sorted(e["start"] for e in executions.all())
    # The task stamps its start a moment after it got its token; on a busy machine that moment
    # varies, so a token's stamp may come late and the fifth one after it on time. A window of
    # 0.9 s tolerates 0.1 s of that, and six starts in it still mean the bucket let too many in.
    busiest = max(sum(1 for t in starts if s <= t < s + 0.9) for s in starts)
    assert busiest <= 5, f"{busiest} starts within 0.9 s under a limit of 5 per second: {starts}"


def test_limit_errors_name_the_limit_and_the_fix() -> None:
    @task
    def unknown() -> None:
        with concurrency("nowhere", strict=True):
            pass

    @task
    def too_big() -> None:
        with concurrency("db", occupy=3):
            pass

    @flow(task_runner=SequentialTaskRunner(), concurrency_limit={"db": 2})
    def pipeline(which: str) -> None:
        (unknown if which == "unknown" else too_big)()

    with pytest.raises(
        ConcurrencyLimitError, match=r"concurrency\('nowhere'\): no limit of that name has a size.*concurrency_limit="
    ):
        pipeline("unknown")
    with pytest.raises(ConcurrencyLimitError, match=r"only 2 slots, so this would wait forever"):
        pipeline("too_big")
    with pytest.raises(ConcurrencyLimitError, match=r"rate_limit\('api'\): no rate is set"):
        with rate_limit("api", strict=True):
            pass


def _peak(entries: list[dict[str, Any]]) -> int:
    events = sorted(
        [(e["start"], 1) for e in entries] + [(e["end"], -1) for e in entries], key=lambda ev: (ev[0], ev[1])
    )
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
