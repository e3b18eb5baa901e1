"""The scheduling service for real: flows in a module written to disk, deployments in an SQLite run
store, runs on threads. No mocks.

A fake clock drives the service: it jumps to whatever the service waits for, but only once the
service has no run in flight (runs take no time on it), and it performs scheduled "actions"
(apply, pause, edit a deployment) as it passes their moment, as a person would while the service
runs. A day of hourly schedules takes a few seconds. The flows write one file per execution, so
the tests count what really ran, besides the claims in the store.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import import_flows
from daskflow.deployments import Deployment, DeploymentService
from daskflow.exceptions import ConfigurationError
from daskflow.runstore import RunStore
from daskflow.runstore import deployments as rows
from daskflow.schedules import Cron, Interval

FLOWS = """
import json, time, uuid
from pathlib import Path
from daskflow import flow

@flow
def stamp(label: str, window: str = "", out: str = "", hold: float = 0.0) -> str:
    if hold:
        print("started", label, flush=True)
        for _ in range(int(hold / 0.05)):  # small steps: a cancel lands between two of them
            time.sleep(0.05)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        record = {"label": label, "window": window, "start": time.time()}
        Path(out, uuid.uuid4().hex + ".json").write_text(json.dumps(record))
    return label
"""

HOURLY = Cron("0 * * * *")
DAY = datetime(2024, 5, 1, tzinfo=UTC)


def at(hour: int, minute: int = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute)


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module: ModuleType = import_flows(tmp_path, monkeypatch, "dfl_service", FLOWS)
    return module


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def store(url: str) -> Any:
    with RunStore(url) as opened:
        yield opened


class FakeClock:
    """Jumps to the moment waited for once the service is idle; stops the service past ``end``."""

    def __init__(
        self, start: datetime, end: datetime, actions: Sequence[tuple[datetime, Callable[[], object]]] = ()
    ) -> None:
        self.current = start
        self.end = end
        self.actions = sorted(actions, key=lambda item: item[0])
        self.stop = threading.Event()
        self.service: DeploymentService | None = None

    def now(self) -> datetime:
        return self.current

    def wait_until(self, moment: datetime, wake: threading.Event) -> bool:
        assert self.service is not None and self.service.wait_idle(60), "a run did not end within 60 s"
        if wake.is_set():
            return True
        if moment > self.end:
            self.stop.set()
            return True
        while self.actions and self.actions[0][0] <= moment:
            self.actions.pop(0)[1]()
        self.current = max(self.current, moment)
        return False


def serve(clock: FakeClock, store_url: str | None, name: str = "svc", poll: float = 600) -> DeploymentService:
    """Run a service on ``clock`` until the clock passes its end; return it."""
    service = DeploymentService(store_url, clock=clock, poll_seconds=poll, name=name)
    clock.service = service
    service.run(clock.stop)
    return service


def deploy(
    flows: ModuleType, store: Any, name: str, out: Path, schedule: Any = HOURLY, hold: float = 0.0, **options: Any
) -> Deployment:
    parameters: dict[str, Any] = {"hold": hold} if hold else {}
    parameters |= {
        "label": "{{ scheduled_time | %H:%M }}",
        "window": "{{ data_interval_start | %H:%M }}-{{ data_interval_end | %H:%M }}",
        "out": str(out / name),
    }
    deployment = Deployment.build_from_flow(flows.stamp, name, schedule=schedule, parameters=parameters, **options)
    deployment.apply(store)
    return deployment


def stamps(out: Path, name: str) -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in (out / name).glob("*.json")), key=lambda r: r["start"])


def claimed(store: Any, name: str) -> list[datetime]:
    record = rows.get_deployment(store, name)
    assert record is not None
    return [claim.scheduled_time for claim in rows.list_runs(store, record.id)]


def hours(*values: int, minute: int = 0) -> list[str]:
    return [f"{h:02d}:{minute:02d}" for h in values]


def test_a_day_of_hourly_deployments_fires_each_time_once_and_follows_changes(
    flows: ModuleType, store: Any, url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    deploy(flows, store, "hourly", out)
    deploy(flows, store, "paused", out, paused=True)
    deploy(flows, store, "napping", out)
    deploy(flows, store, "moving", out)
    actions = [
        (at(6, 25), lambda: deploy(flows, store, "late", out)),
        (at(8, 5), lambda: Deployment.load("napping", store).pause(store)),
        (at(12, 5), lambda: deploy(flows, store, "moving", out, schedule=Cron("30 */3 * * *"))),
        (at(20, 5), lambda: Deployment.load("napping", store).resume(store)),
    ]
    clock = FakeClock(at(0) - timedelta(minutes=1), at(23, 30), actions)

    started = time.monotonic()
    service = serve(clock, url, name="day-service")
    assert time.monotonic() - started < 30

    everything = list(range(24))
    hourly = stamps(out, "hourly")
    # Each hour exactly once, in order, with its own parameters (checked by hand).
    assert [r["label"] for r in hourly] == hours(*everything)
    assert hourly[0]["window"] == "23:00-00:00" and hourly[7]["window"] == "06:00-07:00"
    assert claimed(store, "hourly") == [at(h) for h in everything]
    record = rows.get_deployment(store, "hourly")
    assert record is not None
    claims = rows.list_runs(store, record.id)
    assert {(c.kind, c.state_type, c.claimed_by) for c in claims} == {("scheduled", "COMPLETED", service.id)}
    assert all(c.flow_run_id for c in claims)

    assert stamps(out, "paused") == [] and claimed(store, "paused") == []
    # Applied at 06:25, seen at the 06:30 poll: from 07:00 on; no catch-up of the hours before it existed.
    assert [r["label"] for r in stamps(out, "late")] == hours(*range(7, 24))
    # Paused at 08:05 (seen 08:10), resumed at 20:05 (seen 20:10): the paused hours are not caught up.
    assert [r["label"] for r in stamps(out, "napping")] == hours(*range(0, 9), 21, 22, 23)
    # Every 3 hours at :30 from the poll after the edit on; the old hourly times stop at 12:00.
    moving = [r["label"] for r in stamps(out, "moving")]
    assert moving == hours(*range(0, 13)) + hours(12, 15, 18, 21, minute=30)
    assert stamps(out, "moving")[13]["window"] == "09:30-12:30"  # the new schedule's own interval


def test_two_services_on_one_store_run_every_time_once_in_total(
    flows: ModuleType, history: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with RunStore() as mine:  # the configured store: the services' and the history's
        # The two fake clocks do not keep in step, so one service's run may be "in flight" at the
        # other's earlier time: concurrent runs are allowed here, this test is about the claims.
        deploy(flows, mine, "a", out, allow_concurrent_runs=True)
        deploy(flows, mine, "b", out, schedule=Cron("*/30 * * * *"), allow_concurrent_runs=True)
    clocks = [FakeClock(at(0) - timedelta(minutes=1), at(11, 45)) for _ in range(2)]
    threads = [
        threading.Thread(target=serve, args=(clock, None, f"svc-{i}", 300), name=f"test-service-{i}")
        for i, clock in enumerate(clocks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    written = history()
    expected = {"a": [at(h) for h in range(12)], "b": [at(h, m) for h in range(12) for m in (0, 30)]}
    for name, times in expected.items():
        assert claimed(written, name) == times  # the unique claim: one row per time
        labels = sorted(r["label"] for r in stamps(out, name))
        assert labels == sorted(t.strftime("%H:%M") for t in times)  # and one execution per time
    flow_runs = written.list_flow_runs(limit=None)
    assert len(flow_runs) == 12 + 24 and {run.state_type for run in flow_runs} == {"COMPLETED"}


def test_catchup_after_downtime_and_a_claim_left_by_a_dead_service(
    flows: ModuleType, store: Any, url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    for catchup in ("all", "latest", "none"):
        deploy(flows, store, catchup, out, catchup=catchup)
    serve(FakeClock(at(0, 30), at(1, 30)), url, name="first")  # runs 01:00, then goes down
    # A service that claimed 02:00 and died mid-run: the claim has no final state and its lease ran out.
    dead = rows.get_deployment(store, "all")
    claim = rows.claim_run(store, dead.id, at(2), "scheduled", "dead-host:1", lease_seconds=0.001) if dead else None
    assert dead is not None and claim is not None

    with caplog.at_level(logging.INFO, logger="daskflow.service"):
        serve(FakeClock(at(6, 45), at(6, 50)), url, name="second")

    assert claimed(store, "all") == [at(h) for h in range(1, 7)]
    assert [r["label"] for r in stamps(out, "all")] == hours(1, 3, 4, 5, 6)  # 02:00 is not run again
    assert claimed(store, "latest") == [at(1), at(6)]
    assert claimed(store, "none") == [at(1)]
    left = [c for c in rows.list_runs(store, dead.id) if c.state_type != "COMPLETED"]
    assert [(c.scheduled_time, c.claimed_by, c.state_type) for c in left] == [(at(2), "dead-host:1", "CRASHED")]
    assert (
        "deployment 'all': the run for 2024-05-01T02:00:00+00:00 was left without a final state; marked "
        "Crashed. The service dead-host:1 (host " in caplog.text
    )
    assert "catching up 4 missed time(s) (catchup='all')" in caplog.text


def test_bad_service_options_are_clear_errors() -> None:
    with pytest.raises(ConfigurationError, match="poll_seconds=0"):
        DeploymentService(poll_seconds=0)
    with pytest.raises(ConfigurationError, match="max_concurrent_runs=0"):
        DeploymentService(max_concurrent_runs=0)


def _pythonpath(code: Path) -> str:
    """The flows' folder, then this test run's own path (a worktree's source, say)."""
    return os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)
    into.put("")  # the end of the stream


def _wait_for(lines: queue.Queue[str], seen: list[str], text: str, count: int = 1) -> None:
    while sum(text in line for line in seen) < count:
        line = lines.get(timeout=60)
        assert line, f"the process ended before {text!r} appeared:\n" + "".join(seen)
        seen.append(line)


@pytest.mark.slow  # a signal to a process tree, waited out (Makefile: make test-slow)
@pytest.mark.parametrize("signals", [1, 2])
def test_daskflow_serve_fires_runs_and_sigterm_ends_it_cleanly(
    flows: ModuleType, store: Any, url: str, tmp_path: Path, signals: int
) -> None:
    """One SIGTERM lets the run in flight finish; a second one cancels it. Either way: exit 0, and
    no claim is left without a final state."""
    out = tmp_path / "out"
    hold = 0.8 if signals == 1 else 30.0  # how long each run takes
    deployment = deploy(flows, store, "every-second", out, schedule=Interval(1), hold=hold)
    script = Path(sys.executable).parent / "daskflow"
    env = {**os.environ, "PYTHONPATH": _pythonpath(tmp_path / "code"), "DASKFLOW_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [str(script), "serve", "--url", url, "--poll", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    out_lines: queue.Queue[str] = queue.Queue()
    err_lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, out_lines), daemon=True).start()
    threading.Thread(target=_lines, args=(process.stderr, err_lines), daemon=True).start()
    printed: list[str] = []
    logged: list[str] = []
    try:
        # Two runs started (so one ended, or two when it is quick): the second is in flight now.
        _wait_for(out_lines, printed, "started", 2 if signals == 1 else 1)
        process.send_signal(signal.SIGTERM)
        _wait_for(err_lines, logged, "stopping: waiting for 1 run(s) in flight")
        if signals == 2:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        logged.extend(iter(err_lines.get, ""))
    assert any("serving 1 deployment(s)" in line for line in logged), logged
    claims = rows.list_runs(store, deployment.id or "")
    states = [c.state_type for c in claims]
    if signals == 1:
        assert len(claims) >= 2 and set(states) == {"COMPLETED"}, logged
    else:
        assert states == ["CANCELLED"], logged
        assert any("cancelling 1 run(s) in flight" in line for line in logged)
    assert len(stamps(out, "every-second")) == states.count("COMPLETED")
    flow_runs = store.list_flow_runs(limit=None)  # the history went where --url pointed
    assert sorted(run.state_type for run in flow_runs) == sorted(states)
