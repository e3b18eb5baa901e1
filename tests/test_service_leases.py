"""Claims with leases (issue 15, defects 6 and 10), on real SQLite and PostgreSQL stores and real services.

The claim functions first, over every run store: an exclusive claim is refused
while another claim of the deployment is in flight under a live lease, and taken
once that run ends or its lease runs out; reaping marks an abandoned claim, its
flow run and its unfinished task runs ``Crashed``, exactly once among reapers
that race; a renewal learns that its claim was reaped.

Then ``daskflow serve`` for real: a service SIGKILLed mid-run leaves a claim
that a second service marks ``Crashed`` after the lease, naming the dead
service's host and pid, and the deployment's next time fires once; and two live
services over one SQLite store never run one deployment's times on top of each
other, counted from the runs' own side channel (a file per execution with its
start and end).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daskflow.deployments import Deployment
from daskflow.runstore import FlowRunRecord, RunStore, TaskRunRecord
from daskflow.runstore import deployments as rows
from daskflow.runstore.deployments import RunInFlightError
from daskflow.runstore.leases import live_claims, reap_expired, renew_leases
from daskflow.schedules import Interval

T0 = datetime(2024, 5, 1, tzinfo=UTC)

FLOWS = """
import json, os, time, uuid
from pathlib import Path
from daskflow import flow

@flow
def tick(label: str, out: str, hold_first: float = 0.0, hold_each: float = 0.0) -> str:
    start = time.time()
    Path(out).mkdir(parents=True, exist_ok=True)
    marker = Path(out, "held")
    if hold_first and not marker.exists():  # the first run only: it is the one killed
        marker.write_text(str(os.getpid()))
        print("holding", label, flush=True)
        time.sleep(hold_first)
    time.sleep(hold_each)
    record = {"label": label, "start": start, "end": time.time(), "pid": os.getpid()}
    Path(out, uuid.uuid4().hex + ".json").write_text(json.dumps(record))
    print("finished", label, flush=True)
    return label
"""


@pytest.fixture
def deployment_id(run_store_url: str) -> str:
    with RunStore(run_store_url) as store:
        return rows.save_deployment(
            store, name=f"d-{uuid.uuid4().hex[:6]}", flow_name="tick", entrypoint="m:tick", schedule=None,
            parameters={}, tags=(), description=None, work_pool=None, catchup="latest", paused=False,
        )  # fmt: skip


def test_an_exclusive_claim_waits_for_the_run_in_flight(run_store_url: str, deployment_id: str) -> None:
    with RunStore(run_store_url) as store:
        first = rows.claim_run(store, deployment_id, T0, "scheduled", "svc-a", lease_seconds=60, exclusive=True)
        assert first is not None and [c.id for c in live_claims(store, deployment_id)] == [first]
        with pytest.raises(RunInFlightError, match=r"the run for 2024-05-01T00:00:00\+00:00 is in flight") as info:
            rows.claim_run(store, deployment_id, T0 + timedelta(hours=1), "scheduled", "svc-b", lease_seconds=60,
                           exclusive=True)  # fmt: skip
        assert info.value.claim.claimed_by == "svc-a"
        # The same time, claimed by another service: the usual race, lost quietly.
        assert rows.claim_run(store, deployment_id, T0, "scheduled", "svc-b", lease_seconds=60, exclusive=True) is None
        # Not exclusive (a deployment that allows concurrent runs, a backfill): claimed.
        assert rows.claim_run(store, deployment_id, T0 + timedelta(hours=2), "backfill", lease_seconds=60) is not None
        rows.finish_run(store, first, None, "COMPLETED")
        later = T0 + timedelta(hours=3)
        with pytest.raises(RunInFlightError):  # the backfill's run is in flight now
            rows.claim_run(store, deployment_id, later, "scheduled", "svc-b", lease_seconds=60, exclusive=True)
        (backfill,) = live_claims(store, deployment_id)
        rows.finish_run(store, backfill.id, None, "COMPLETED")
        assert rows.claim_run(store, deployment_id, later, "scheduled", "svc-b", lease_seconds=60, exclusive=True)


def test_exclusive_claims_of_different_times_racing_at_once_start_one_run(
    run_store_url: str, deployment_id: str
) -> None:
    stores = [RunStore(run_store_url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def claim(store: RunStore, n: int) -> None:
        barrier.wait(10)
        try:
            got = rows.claim_run(store, deployment_id, T0 + timedelta(minutes=n), "scheduled", f"svc-{n}",
                                 lease_seconds=60, exclusive=True)  # fmt: skip
            outcomes.append("claimed" if got else "taken")
        except RunInFlightError:
            outcomes.append("in flight")

    threads = [threading.Thread(target=claim, args=(store, n)) for n, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in stores:
        store.close()
    assert sorted(outcomes) == ["claimed"] + ["in flight"] * 5, outcomes


def test_an_expired_lease_is_reaped_once_and_its_runs_marked_crashed(run_store_url: str, deployment_id: str) -> None:
    with RunStore(run_store_url) as store:
        claim = rows.claim_run(store, deployment_id, T0, "scheduled", "serve@far-host:4242", lease_seconds=60)
        assert claim is not None
        assert renew_leases(store, {claim: "fr-1"}, 0.05) == set()  # the heartbeat's last beat, then it died
        now = time.time()
        store.write([
            FlowRunRecord(id="fr-1", name="bold-fox", flow_name="tick", state_type="RUNNING", state_name="Running",
                          start_time=now, updated=now),
            TaskRunRecord(id="tr-done", flow_run_id="fr-1", name="a-0", task_name="a", state_type="COMPLETED",
                          state_name="Completed", updated=now),
            TaskRunRecord(id="tr-running", flow_run_id="fr-1", name="b-0", task_name="b", state_type="RUNNING",
                          state_name="Running", updated=now),
        ])  # fmt: skip
        expired = threading.Event()
        # Wait for the lease to run out: a bounded wait on the database's own view of it.
        deadline = time.monotonic() + 10
        while live_claims(store, deployment_id) and time.monotonic() < deadline:
            expired.wait(0.02)
        assert not live_claims(store, deployment_id), "the lease did not run out"

        results: list[list[Any]] = []
        stores = [RunStore(run_store_url) for _ in range(4)]
        barrier = threading.Barrier(len(stores))

        def reap(opened: RunStore, n: int) -> None:
            barrier.wait(10)
            results.append(reap_expired(opened, f"reaper-{n}"))

        threads = [threading.Thread(target=reap, args=(opened, n)) for n, opened in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for opened in stores:
            opened.close()
        reaped = [claim_info for result in results for claim_info in result]
        assert [c.id for c in reaped] == [claim], f"reaped {len(reaped)} times by {len(results)} reapers"

        detail = store.flow_run("fr-1")
        assert detail is not None and detail.state_name == "Crashed", detail
        assert detail.state_message is not None
        assert "serve@far-host:4242" in detail.state_message and f"pid {os.getpid()}" in detail.state_message
        assert [s.name for s in detail.states] == ["Crashed"]
        assert {r.id: r.state_name for r in detail.task_runs} == {"tr-done": "Completed", "tr-running": "Crashed"}
        (info,) = rows.list_runs(store, deployment_id)
        assert (info.state_type, info.flow_run_id) == ("CRASHED", "fr-1")
        # The service that held it, had it been alive after all, learns it at its next renewal.
        assert renew_leases(store, {claim: "fr-1"}, 60) == {claim}
        # A late snapshot of the dead process (say, replayed from its spool) does not undo the crash.
        store.write([FlowRunRecord(id="fr-1", name="bold-fox", flow_name="tick", state_type="RUNNING",
                                   state_name="Running", updated=now + 0.001)])  # fmt: skip
        assert store.flow_run("fr-1").state_name == "Crashed"  # type: ignore[union-attr]


# -- real services --------------------------------------------------------------------------------


@pytest.fixture
def code(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    name = f"dfl_leases_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(FLOWS))
    sys.path.insert(0, str(folder))
    try:
        yield folder / f"{name}.py"
    finally:
        sys.path.remove(str(folder))


class Service:
    """``daskflow serve`` as a subprocess, its stdout and stderr read line by line on threads."""

    def __init__(self, url: str, code: Path, home: Path, lease: str, *options: str) -> None:
        path = os.pathsep.join(p for p in (str(code.parent), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "DASKFLOW_HOME": str(home),
               "DASK_DASKFLOW__DEPLOYMENTS__LEASE": lease}  # fmt: skip
        script = Path(sys.executable).parent / "daskflow"
        self.process = subprocess.Popen(
            [str(script), "serve", "--url", url, "--poll", "0.5", *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.out.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self.err.append), daemon=True).start()
        self.printed: list[str] = []

    @staticmethod
    def _pump(stream: Any, put: Any) -> None:
        for line in stream:
            put(line)
        put("")

    def wait_printed(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.out.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert line, f"the service ended before printing {text!r}:\n{''.join(self.err)}"
            self.printed.append(line)
            if text in line:
                return line

    def logged(self, text: str) -> list[str]:
        return [line for line in list(self.err) if text in line]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def test_allow_concurrent_runs_is_kept_and_checked(code: Path, tmp_path: Path) -> None:
    from daskflow.deployments.files import load_deployment_file
    from daskflow.exceptions import DeploymentError

    module = __import__(code.stem)
    with RunStore(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        for allowed in (True, False):
            Deployment.build_from_flow(
                module.tick, "overlapping", parameters={"label": "x", "out": "o"}, allow_concurrent_runs=allowed
            ).apply(store)
            assert Deployment.load("overlapping", store).allow_concurrent_runs is allowed
            record = rows.get_deployment(store, "overlapping")
            assert record is not None and record.allow_concurrent_runs is allowed
    entry = f"{{name: f, entrypoint: '{code.name}:tick', parameters: {{label: x, out: o}}"
    good, bad = code.parent / "good.yaml", code.parent / "bad.yaml"  # entrypoints relative to the file
    good.write_text(f"deployments: [{entry}, allow_concurrent_runs: true}}]")
    bad.write_text(f"deployments: [{entry}, allow_concurrent_runs: 'yes'}}]")
    assert [d.allow_concurrent_runs for d in load_deployment_file(good)] == [True]
    with pytest.raises(DeploymentError, match="field 'allow_concurrent_runs': expected true or false, got 'yes'"):
        load_deployment_file(bad)
    with pytest.raises(DeploymentError, match="allow_concurrent_runs must be True or False, got 1"):
        Deployment.build_from_flow(module.tick, "d", parameters={"label": "x", "out": "o"}, allow_concurrent_runs=1)  # type: ignore[arg-type]


def _executions(out: Path) -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in out.glob("*.json")), key=lambda e: e["start"])


def _overlaps(executions: list[dict[str, Any]]) -> int:
    overlaps, latest_end = 0, float("-inf")
    for execution in executions:
        if execution["start"] < latest_end:
            overlaps += 1
        latest_end = max(latest_end, execution["end"])
    return overlaps


def _deploy(code: Path, url: str, out: Path, allow_concurrent_runs: bool = False, **parameters: Any) -> Deployment:
    module = __import__(code.stem)
    deployment = Deployment.build_from_flow(
        module.tick, f"ticks-{uuid.uuid4().hex[:4]}", schedule=Interval(1), allow_concurrent_runs=allow_concurrent_runs,
        parameters={"label": "{{ scheduled_time | %H:%M:%S }}", "out": str(out), **parameters},
    )  # fmt: skip
    with RunStore(url) as store:
        deployment.apply(store)
    return deployment


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_service_s_run_is_marked_crashed_by_another_and_the_next_time_fires_once(
    code: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    out = tmp_path / "out"
    deployment = _deploy(code, url, out, hold_first=120.0)
    assert deployment.id is not None
    first = Service(url, code, tmp_path / "home-a", lease="2s")
    second: Service | None = None
    try:
        held = first.wait_printed("holding")
        with RunStore(url) as store:
            deadline = time.monotonic() + 30  # the heartbeat writes the flow run's id on the claim at once
            while time.monotonic() < deadline:
                claims = live_claims(store, deployment.id)
                if claims and claims[0].flow_run_id and store.flow_run(claims[0].flow_run_id):
                    break
                threading.Event().wait(0.05)
            (killed,) = claims
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=30) == -signal.SIGKILL

        second = Service(url, code, tmp_path / "home-b", "600s", "--lease", "2")  # the option wins
        second.wait_printed("finished", timeout=90)  # the next time, after the reap
        reaped = second.logged("marked Crashed")
        assert second.logged("claims leased for 2 s"), second.err
        assert second.stop() == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()

    with RunStore(url) as store:
        claims = rows.list_runs(store, deployment.id)
        crashed = [c for c in claims if c.state_type == "CRASHED"]
        assert [c.id for c in crashed] == [killed.id], claims
        assert crashed[0].claimed_by.endswith(f":{first.process.pid}") and crashed[0].pid == first.process.pid
        assert killed.flow_run_id is not None
        run = store.flow_run(killed.flow_run_id)
        assert run is not None and run.state_name == "Crashed", run
        message = run.state_message or ""
        assert f"pid {first.process.pid}" in message and f"host {crashed[0].host}" in message, message
        after = [c for c in claims if c.scheduled_time > killed.scheduled_time]
    executions = _executions(out)
    labels = [e["label"] for e in executions]
    report = (
        f"reaped {len(reaped)} claim(s): {reaped[:1]}; later claims "
        f"{[(c.scheduled_time.strftime('%H:%M:%S'), c.state_type) for c in after]}; executions {labels}"
    )
    assert len(reaped) == 1 and killed.scheduled_time.strftime("%H:%M:%S") in reaped[0], report
    assert held.split()[-1] not in labels, report  # the killed run never finished, and never ran again
    assert after and len(labels) == len(set(labels)) == sum(c.state_type == "COMPLETED" for c in after), report
    # No run of the deployment started while the dead service's lease was live.
    lease_end = crashed[0].lease_expires
    assert lease_end is not None and all(e["start"] >= lease_end.timestamp() for e in executions), report
    assert _overlaps(executions) == 0, report
    print(report)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("allow_concurrent_runs", [False, True], ids=["one-at-a-time", "concurrent-allowed"])
def test_two_live_services_never_run_one_deployment_s_times_on_top_of_each_other(
    code: Path, tmp_path: Path, allow_concurrent_runs: bool
) -> None:
    """Unless the deployment allows concurrent runs: then they do overlap (as every deployment's did before
    claims were leased), which shows the side channel sees overlaps when there are some."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    out = tmp_path / "out"
    deployment = _deploy(code, url, out, allow_concurrent_runs, hold_each=1.6)  # each run outlasts the interval
    assert deployment.id is not None
    services = [Service(url, code, tmp_path / f"home-{n}", lease="5s") for n in range(2)]
    try:
        finished = 0
        deadline = time.monotonic() + 120
        while finished < 8 and time.monotonic() < deadline:
            for service in services:
                try:
                    line = service.out.get(timeout=0.1)
                except queue.Empty:
                    continue
                assert line, f"a service ended early:\n{''.join(service.err)}"
                finished += "finished" in line
        codes = [service.stop() for service in services]
    finally:
        for service in services:
            service.stop()
    assert codes == [0, 0], [service.err for service in services]
    executions = _executions(out)
    by_pid = {pid: sum(e["pid"] == pid for e in executions) for pid in {e["pid"] for e in executions}}
    skipped = sum(len(service.logged("is skipped")) for service in services)
    report = f"{len(executions)} executions by service pid {by_pid}; {skipped} times skipped with a warning"
    assert len(executions) >= 8, report
    overlaps = _overlaps(executions)
    report += f"; {overlaps} executions started while another was running"
    if allow_concurrent_runs:
        assert overlaps > 0 and skipped == 0, report
    else:
        assert overlaps == 0, report
    with RunStore(url) as store:
        claims = rows.list_runs(store, deployment.id)
    assert sum(c.state_type == "COMPLETED" for c in claims) == len(executions), (report, claims)
    print(report)
