"""Prefect 3's documented examples for serving deployments and their schedules, as our own tests.

The docs serve a flow with ``flow.serve(name, cron=..., tags=..., description=...,
version=..., parameters=...)``, give a deployment several schedules
(``schedules=[Cron(..., timezone=...), Interval(timedelta(...), anchor_date=...)]``)
or an RFC 5545 ``rrule=``, and serve several deployments from one process with
``serve(a.to_deployment(...), b.to_deployment(...))`` (tests/test_prefect_serve.py
fires two for real; ``run_deployment(timeout=0)`` is in tests/test_deployments_prefect.py).
Same behaviours here, with daskflow imported instead of prefect; a clock that
jumps to each due time replaces the wait, so a day of schedule takes no time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from daskflow import flow, runtime
from daskflow.schedules import Cron, Interval
from jumping_clock import JumpingClock


@flow(log_prints=True)
def repo_info(repo_name: str = "PrefectHQ/prefect") -> dict[str, Any]:
    return {
        "repo": repo_name,
        "deployment": runtime.deployment.name,
        "tags": sorted(runtime.flow_run.tags),
        "due": runtime.flow_run.scheduled_start_time,
    }


def test_serve_on_a_cron_with_tags_description_version_and_parameters(history: Any) -> None:
    start = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    states = repo_info.serve(
        name="my-first-deployment",
        cron="* * * * *",
        tags=["testing", "tutorial"],
        description="Given a GitHub repository, logs repository statistics.",
        version="tutorial/deployments",  # accepted; there is no server to show it
        parameters={"repo_name": "dask/distributed"},
        limit=3,
        clock=JumpingClock(start),
    )
    seen = [state.result() for state in states]
    assert [s["due"] for s in seen] == [start.replace(second=0) + timedelta(minutes=k) for k in (1, 2, 3)]
    assert all(s["repo"] == "dask/distributed" and s["deployment"] == "my-first-deployment" for s in seen)
    assert all(s["tags"] == ["testing", "tutorial"] for s in seen)
    detail = history().flow_run(states[0].flow_run.id)
    assert detail is not None and detail.deployment_name == "my-first-deployment"


def test_several_schedules_each_in_its_own_timezone() -> None:
    chicago = ZoneInfo("America/Chicago")
    start = datetime(2024, 5, 1, 0, 0, tzinfo=chicago)  # midnight in Chicago
    states = repo_info.serve(
        name="twice",
        schedules=[
            Cron("0 6 * * *", timezone="America/Chicago"),  # 06:00 Chicago
            Interval(timedelta(hours=10), anchor_date=datetime(2024, 1, 1, tzinfo=UTC)),
        ],
        limit=2,  # per schedule
        clock=JumpingClock(start),
    )
    due = [state.result()["due"] for state in states]
    # Each schedule fires in its own thread; the test clock jumps to whichever time is asked for first,
    # so a thread may find a time passed and skip it: check each schedule's grid, not exact times.
    by_cron = [d for d in due if d.utcoffset() != timedelta(0)]
    by_interval = [d for d in due if d.utcoffset() == timedelta(0)]
    assert len(by_cron) == 2 and len(by_interval) == 2, due
    assert all((d.tzinfo, d.hour, d.minute) == (chicago, 6, 0) for d in by_cron), by_cron
    anchor = datetime(2024, 1, 1, tzinfo=UTC)
    assert all((d - anchor) % timedelta(hours=10) == timedelta(0) and d > start for d in by_interval), by_interval


def test_an_rrule_schedule() -> None:
    start = datetime(2024, 5, 6, 0, 0, tzinfo=UTC)  # a Monday
    states = repo_info.serve(
        name="mwf",
        rrule="DTSTART:20240101T090000Z\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR",
        limit=3,
        clock=JumpingClock(start),
    )
    due = [state.result()["due"] for state in states]
    assert [d.astimezone(UTC) for d in due] == [
        datetime(2024, 5, 6, 9, tzinfo=UTC),
        datetime(2024, 5, 8, 9, tzinfo=UTC),
        datetime(2024, 5, 10, 9, tzinfo=UTC),
    ]
    assert [d.strftime("%a") for d in due] == ["Mon", "Wed", "Fri"]


def test_to_deployment_keeps_what_serve_will_use() -> None:
    made = repo_info.to_deployment(
        name="fast", interval=45, parameters={"repo_name": "x/y"}, tags=["fast"], description="every 45 s"
    )
    assert made.name == "fast" and made.parameters == {"repo_name": "x/y"} and list(made.tags) == ["fast"]
    [schedule] = made.schedules
    assert isinstance(schedule, Interval) and schedule.interval == timedelta(seconds=45)
