"""A deployment served by ``flow.serve(...)`` is in the run store, reachable from other processes.

A real ``flow.serve`` runs in a subprocess on the real clock, over the test's SQLite run store; this
process asks for a run with ``run_deployment("flow/name", timeout=None)`` (and the CLI's
``deployment run --queue``), which the serving process picks up and runs: the run completes and is
recorded with its deployment's id. While it serves, ``deployment ls`` says "served by HOST:PID";
after SIGTERM it is still listed, "not served". A scheduling service elsewhere never fires a
served deployment's schedule (the serving process does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from daskflow import cli
from daskflow.deployments import Deployment, run_deployment
from daskflow.deployments.planner import Planner
from daskflow.exceptions import DeploymentNotFoundError
from daskflow.runstore import RunStore
from daskflow.runstore import deployments as rows
from daskflow.runstore.queries import flow_run_header

SERVED = """
import sys

from daskflow import flow, runtime

@flow
def greet(name: str = "world") -> str:
    return f"hello {name} ({runtime.deployment.name})"

if __name__ == "__main__":
    greet.serve("greeter", interval=3600, parameters={"name": "schedule"}, poll_seconds=0.2)
"""


def _wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def _served(name: str) -> Deployment | None:
    try:
        found = Deployment.load(name)
    except DeploymentNotFoundError:
        return None
    return found if found.served(datetime.now(UTC)) else None


def _ls(url: str) -> tuple[dict[str, Any], str]:
    listed = CliRunner().invoke(cli.main, ["deployment", "ls", "--json", "--url", url])
    table = CliRunner().invoke(cli.main, ["deployment", "ls", "--url", url])
    assert listed.exit_code == 0 and table.exit_code == 0, listed.output + table.output
    (entry,) = [d for d in json.loads(listed.output) if d["name"] == "greeter"]
    return entry, table.output


@pytest.mark.timeout(300)
def test_a_served_deployment_runs_what_another_process_asks_for_and_stays_listed_after(
    tmp_path: Path, history: Any, daskflow_home: Path
) -> None:
    script = tmp_path / "served_greet.py"
    script.write_text(SERVED)
    store = history()
    url = f"sqlite:///{store.display_url.removeprefix('sqlite:///')}"
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DASKFLOW_HOME": str(daskflow_home)},
    )  # fmt: skip
    try:
        served = _wait_for(lambda: _served("greeter"), "the served deployment in the run store")
        assert served.schedule is not None and served.schedule.to_dict()["interval"] == 3600, served.schedule
        assert served.served_by is not None and served.served_by.endswith(f":{process.pid}"), served.served_by
        entry, table = _ls(url)
        assert entry["served"] is True and entry["next_run"] is not None, entry
        assert f"served by {served.served_by}" in table, table

        done = run_deployment("greet/greeter", parameters={"name": "test"}, timeout=None, poll_interval=0.1)
        assert done.state_type == "COMPLETED" and done.deployment_id == served.id, done
        assert done.parameters == {"name": "test"}, done.parameters
        detail = flow_run_header(store, done.id)
        assert detail is not None and detail.deployment_id == served.id and detail.deployment_name == "greeter"

        # The CLI queues one too; the serving process runs it.
        queued = CliRunner().invoke(cli.main, ["deployment", "run", "greeter", "--queue", "--url", url])
        assert queued.exit_code == 0, queued.output
        run_id = queued.output.split()[2]
        finished = _wait_for(
            lambda: (d := flow_run_header(store, run_id)) is not None and d.state_type == "COMPLETED" and d,
            "the run queued by the CLI to complete",
        )
        assert finished.deployment_id == served.id
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err

    # Stopped: listed, not served, no next run; its runs stay in the history.
    after = Deployment.load("greeter")
    assert after.served_by == served.served_by and not after.served(datetime.now(UTC)), after
    entry, table = _ls(url)
    assert entry["served"] is False and entry["next_run"] is None, entry
    assert f"not served (was {served.served_by})" in table, table
    # The server's deployment pages and API list no upcoming times for it either (one rule, in Deployment).
    from daskflow.server.api import _deployment_json

    assert after.upcoming_times(5) == [], after
    with RunStore(url) as opened:
        record = rows.get_deployment(opened, "greeter")
        assert record is not None and _deployment_json(record)["next_times"] == [], record


def test_a_scheduling_service_leaves_a_served_deployments_schedule_to_its_process(tmp_path: Path) -> None:
    """The planner of a ``daskflow serve`` does not fire a schedule registered by flow.serve."""
    with RunStore() as opened:
        common: dict[str, Any] = {
            "flow_name": "greet", "entrypoint": f"{tmp_path}/x.py:greet", "schedule": {"interval": 60},
            "parameters": {}, "tags": (), "description": None, "work_pool": None, "catchup": "all", "paused": False,
        }  # fmt: skip
        rows.save_deployment(opened, name="deployed", **common)
        rows.save_deployment(
            opened, name="served", served_by="host:1", served_until=datetime.now(UTC) + timedelta(seconds=60), **common
        )
        records = rows.list_deployments(opened)
    planner = Planner(lambda deployment_id: None)
    planner.refresh(records, datetime.now(UTC) + timedelta(hours=1))
    active = {plan.name: plan.active for plan in planner.plans.values()}
    assert active == {"deployed": True, "served": False}, active
