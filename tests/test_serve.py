"""The serving loop on a fake clock (a day of schedules in milliseconds), the parameter templates
with hand-checked times, ``flow.serve``'s argument errors, and ``flow.serve`` in a subprocess on the
real clock, stopped by SIGTERM with a run in flight."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from daskflow import flow
from daskflow.engine.serving import ScheduledRun, render_parameters, run_schedule
from daskflow.exceptions import ConfigurationError, ScheduleError
from daskflow.schedules import Cron, Interval


class FakeClock:
    """Time that jumps to whatever is waited for: a day of waits takes no time at all."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def wait_until(self, moment: datetime, stop: threading.Event) -> bool:
        if not stop.is_set() and moment > self.current:
            self.current = moment
        return stop.is_set()


def test_a_day_of_hourly_cron_runs_fires_each_time_once_in_order() -> None:
    clock = FakeClock(datetime(2024, 5, 1, tzinfo=UTC) - timedelta(seconds=1))
    started = time.monotonic()
    fired = run_schedule(Cron("0 * * * *"), lambda run: run, stop=threading.Event(), clock=clock, limit=24)
    assert time.monotonic() - started < 5
    assert [r.scheduled_time for r in fired] == [datetime(2024, 5, 1, h, tzinfo=UTC) for h in range(24)]
    assert fired[0].previous_time == datetime(2024, 4, 30, 23, tzinfo=UTC)
    assert [r.previous_time for r in fired[1:]] == [r.scheduled_time for r in fired[:-1]]


def test_interval_with_anchor_and_a_stop_event() -> None:
    stop = threading.Event()
    clock = FakeClock(datetime(2024, 1, 1, 1, 0, tzinfo=UTC))

    def fire(run: ScheduledRun) -> datetime:
        if run.index == 2:
            stop.set()
        return run.scheduled_time

    schedule = Interval(timedelta(minutes=90), anchor_date=datetime(2024, 1, 1, 0, 15, tzinfo=UTC))
    assert run_schedule(schedule, fire, stop=stop, clock=clock) == [
        datetime(2024, 1, 1, 1, 45, tzinfo=UTC), datetime(2024, 1, 1, 3, 15, tzinfo=UTC), datetime(2024, 1, 1, 4, 45, tzinfo=UTC),
    ]  # fmt: skip


def test_a_run_that_outlasts_the_next_times_skips_them_with_a_warning(caplog: Any) -> None:
    clock = FakeClock(datetime(2024, 5, 1, tzinfo=UTC))
    missed: list[tuple[list[datetime], int]] = []

    def fire(run: ScheduledRun) -> ScheduledRun:
        if run.index == 0:
            clock.current += timedelta(hours=2, minutes=30)  # a slow run: 02:00 and 03:00 pass meanwhile
        return run

    fired = run_schedule(
        Cron("0 * * * *"),
        fire,
        stop=threading.Event(),
        clock=clock,
        limit=2,
        on_missed=lambda s, n: missed.append((s, n)),
    )
    assert [r.scheduled_time.hour for r in fired] == [1, 4]
    assert fired[1].previous_time == datetime(2024, 5, 1, 3, tzinfo=UTC)  # the schedule's, skipped or not
    assert missed == [([datetime(2024, 5, 1, 2, tzinfo=UTC), datetime(2024, 5, 1, 3, tzinfo=UTC)], 2)]
    assert "skipped: 2024-05-01T02:00:00+00:00, 2024-05-01T03:00:00+00:00" in caplog.text


def test_templates_across_the_berlin_spring_forward() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    clock = FakeClock(datetime(2024, 3, 30, 0, 0, tzinfo=berlin))
    params = {"day": "{{ scheduled_time }}", "window": ["{{data_interval_start}}", "{{ data_interval_end }}"], "n": 3}
    fired = run_schedule(
        Cron("0 2 * * *", timezone="Europe/Berlin"),
        lambda run: render_parameters(params, run.scheduled_time, run.previous_time),
        stop=threading.Event(), clock=clock, limit=3,
    )  # fmt: skip
    # 02:00 does not exist on 2024-03-31: the run is at the jump, 03:00 CEST (01:00 UTC).
    assert fired == [
        {
            "day": "2024-03-30T02:00:00+01:00",
            "window": ["2024-03-29T02:00:00+01:00", "2024-03-30T02:00:00+01:00"],
            "n": 3,
        },
        {
            "day": "2024-03-31T03:00:00+02:00",
            "window": ["2024-03-30T02:00:00+01:00", "2024-03-31T03:00:00+02:00"],
            "n": 3,
        },
        {
            "day": "2024-04-01T02:00:00+02:00",
            "window": ["2024-03-31T03:00:00+02:00", "2024-04-01T02:00:00+02:00"],
            "n": 3,
        },
    ]


def test_render_parameters_rules() -> None:
    t = datetime(2024, 2, 29, 6, tzinfo=UTC)
    assert render_parameters(
        {"path": "s3://b/{{ scheduled_time }}.csv", "d": {"k": ("{{ data_interval_start }}",)}}, t, None
    ) == {
        "path": "s3://b/2024-02-29T06:00:00+00:00.csv",
        "d": {"k": ("2024-02-29T06:00:00+00:00",)},  # no previous time: an empty interval
    }
    with pytest.raises(ConfigurationError, match=r"parameter 'day': unknown template '\{\{ schedule_time \}\}'"):
        render_parameters({"day": "{{ schedule_time }}"}, t, None)


@flow
def _report(day: str, factor: int = 1) -> str:
    return f"{day}x{factor}"


def test_flow_serve_runs_the_flow_with_rendered_parameters() -> None:
    clock = FakeClock(datetime(2024, 5, 1, 5, 59, tzinfo=UTC))
    states = _report.serve(cron="0 6 * * *", parameters={"day": "{{ scheduled_time }}"}, limit=2, clock=clock)
    assert [s.result() for s in states] == ["2024-05-01T06:00:00+00:00x1", "2024-05-02T06:00:00+00:00x1"]


def test_bad_serve_arguments_are_clear_errors() -> None:
    with pytest.raises(ScheduleError, match=r"got cron='0 \* \* \* \*', interval=60"):
        _report.serve(cron="0 * * * *", interval=60)
    # No schedule at all is not an error any more: it serves on-demand runs, as Prefect's serve()
    # (issue 16 item 15; tests/test_deployments_prefect.py).
    with pytest.raises(ConfigurationError, match="on_stop='later'"):
        _report.serve(interval=60, on_stop="later", parameters={"day": "x"})
    with pytest.raises(ConfigurationError, match="unknown template"):
        _report.serve(interval=60, parameters={"day": "{{ today }}"})
    with pytest.raises(ConfigurationError, match="limit=0"):
        _report.serve(interval=60, parameters={"day": "x"}, limit=0)
    with pytest.raises(ScheduleError):
        _report.serve(cron="not a cron")


# -- flow.serve in a process of its own: real clock, real signals ------------------------------

SLOW_SERVE = """
import sys, time
from daskflow import flow

@flow
def slow() -> str:
    print("started", flush=True)
    for _ in range(40):  # two seconds in small steps: a cancel lands between two of them
        time.sleep(0.05)
    return "done"

if __name__ == "__main__":
    states = slow.serve(interval=1, on_stop=sys.argv[1])
    print("states", ",".join(state.type.value for state in states), flush=True)
"""


@pytest.mark.slow  # a signal to a process tree, waited out (Makefile: make test-slow)
@pytest.mark.parametrize(("on_stop", "final"), [("finish", "COMPLETED"), ("cancel", "CANCELLED")])
def test_sigterm_stops_flow_serve_finishing_or_cancelling_the_run_in_flight(
    tmp_path: Any, on_stop: str, final: str
) -> None:
    script = tmp_path / "serve_slow.py"
    script.write_text(SLOW_SERVE)
    env = {**os.environ, "DASKFLOW_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [sys.executable, str(script), on_stop], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    first: queue.Queue[str] = queue.Queue()
    # The first line comes once the first run is in flight; read on a thread so a hang fails in 60 s.
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: first.put(stdout.readline()), daemon=True).start()
    try:
        line = first.get(timeout=60)
        assert line.strip() == "started", line
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert out.strip().splitlines()[-1] == f"states {final}", out + err
    assert "stopping; a run is in flight" in err
