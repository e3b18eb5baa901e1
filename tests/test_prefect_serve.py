"""Serving the Prefect 3 way (issue 16, item 3 in part): ``flow.serve`` with Prefect's arguments,
``flow.to_deployment`` and the top-level ``serve`` of several deployments in one process."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from daskflow import flow, runtime, serve
from daskflow.exceptions import ConfigurationError, ScheduleError
from daskflow.schedules import Cron, Interval
from jumping_clock import JumpingClock


def test_two_deployments_fire_on_their_intervals_in_one_process() -> None:
    seen: dict[str, list[tuple[str, list[str]]]] = {"fast": [], "slow": []}
    lock = threading.Lock()
    stop = threading.Event()

    @flow
    def ping(which: str) -> str:
        with lock:
            seen[which].append((runtime.deployment.name, runtime.flow_run.tags))
            if all(len(runs) >= 2 for runs in seen.values()):
                stop.set()  # both have fired twice: enough
        return which

    started = time.monotonic()
    states = serve(
        ping.to_deployment("ping-fast", interval=1, parameters={"which": "fast"}, tags=["fast"]),
        ping.to_deployment("ping-slow", interval=2, parameters={"which": "slow"}, tags=["slow"], description="x"),
        stop=stop,
        limit=10,  # a bound: never more than 10 runs each, even if stop were never set
    )
    waited = time.monotonic() - started
    assert stop.is_set(), f"both deployments did not fire twice within {waited:.1f} s: {seen}"
    assert len(states["ping-fast"]) >= 2 and len(states["ping-slow"]) >= 2
    assert all(state.is_completed() for runs in states.values() for state in runs)
    assert seen["fast"][0] == ("ping-fast", ["fast"]) and seen["slow"][0] == ("ping-slow", ["slow"])


def test_serve_with_a_list_of_schedules_fires_each() -> None:
    @flow
    def report() -> datetime:
        return runtime.flow_run.scheduled_start_time

    start = datetime(2024, 5, 1, tzinfo=UTC)
    states = report.serve(
        "report",
        schedules=[Interval(timedelta(hours=6), anchor_date=start), Cron("30 1 * * *")],
        limit=2,
        clock=JumpingClock(start - timedelta(seconds=1)),
    )
    times = sorted(state.result() for state in states)
    assert len(times) == 4 and times[0] == start, times
    assert any(t.minute == 30 for t in times), "the cron schedule fired too"


def test_bad_serve_options_are_clear_errors() -> None:
    @flow
    def job(x: int) -> int:
        return x

    with pytest.raises(ScheduleError, match=r"schedules=\[\.\.\.\] or one of cron="):
        job.to_deployment("j", interval=60, schedules=[Cron("0 * * * *")])
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) colour"):
        job.to_deployment("j", interval=60, colour="red")
    with pytest.raises(ConfigurationError, match=r"tags must be a list of non-empty strings"):
        job.to_deployment("j", interval=60, tags=[""])
    with pytest.raises(ConfigurationError, match="names must differ"):
        serve(job.to_deployment("same", interval=60), job.to_deployment("same", interval=30))
    with pytest.raises(ConfigurationError, match="at least one deployment"):
        serve()
    deployment = job.to_deployment("job-hourly", cron="0 * * * *", parameters={"x": 1}, version="1.2", paused=False)
    assert (deployment.name, deployment.parameters, len(deployment.schedules)) == ("job-hourly", {"x": 1}, 1)
