"""``run_deployment(name, as_subflow=...)`` called inside a flow, with a real scheduling service running
the queued run (in a thread, over the same SQLite run store).

As in Prefect, ``as_subflow=True`` (the default) makes the queued run a child of the calling flow run:
its ``parent_flow_run_id`` is in the store from the moment it is queued, kept when the service runs it,
seen by ``daskflow.runtime`` inside it, and shown by ``runs ls --json`` and ``runs show``.
``as_subflow=False`` queues a run of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import import_flows, service_threads
from daskflow import cli
from daskflow.deployments import DeploymentService
from daskflow.runstore.queries import flow_run_header

FLOWS = """
import json
from pathlib import Path

from daskflow import flow, runtime, task
from daskflow.deployments import run_deployment

@flow
def child(out: str) -> str:
    seen = {"id": runtime.flow_run.id, "parent": runtime.flow_run.parent_flow_run_id,
            "deployment": runtime.deployment.name}
    Path(out).write_text(json.dumps(seen))
    return "child done"

@flow
def caller(out: str, as_subflow: bool = True) -> dict:
    run = run_deployment("child/kid", parameters={"out": out}, timeout=120, poll_interval=0.1, as_subflow=as_subflow)
    return {"me": runtime.flow_run.id, "child": run.id, "state": run.state_type, "parent": run.parent_flow_run_id}

@task
def ask(out: str) -> str:
    return run_deployment("child/kid", parameters={"out": out}, timeout=0).id

@flow
def caller_through_a_task(out: str) -> dict:
    return {"me": runtime.flow_run.id, "child": ask(out)}
"""


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module: ModuleType = import_flows(tmp_path, monkeypatch, "dfl_subflow_deploy", FLOWS)
    return module


@contextmanager
def service_thread() -> Iterator[DeploymentService]:
    """A scheduling service over the configured run store, polling every 0.1 s, until the block ends."""
    with service_threads(1) as (service,):
        yield service


def _cli(history: Any, *args: str) -> str:
    url = f"sqlite:///{history().display_url.removeprefix('sqlite:///')}"
    result = CliRunner().invoke(cli.main, [*args, "--url", url])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_deployment_run_as_a_subflow_is_the_child_of_the_calling_flow_run(
    flows: ModuleType, history: Any, tmp_path: Path
) -> None:
    flows.child.deploy("kid")
    out = tmp_path / "seen.json"
    with service_thread():
        got = flows.caller(str(out))
    assert got["state"] == "COMPLETED", got
    assert got["parent"] == got["me"], f"run_deployment's flow run names its parent: {got}"
    seen = json.loads(out.read_text())
    assert seen == {"id": got["child"], "parent": got["me"], "deployment": "kid"}, "runtime inside the child"

    detail = flow_run_header(history(), got["child"])
    assert detail is not None and detail.state_type == "COMPLETED", detail
    assert detail.parent_flow_run_id == got["me"] and detail.deployment_name == "kid", detail
    listed = {run["id"]: run for run in json.loads(_cli(history, "runs", "ls", "--json"))}
    assert listed[got["child"]]["parent_flow_run_id"] == got["me"], listed[got["child"]]
    assert listed[got["me"]]["parent_flow_run_id"] is None
    shown = json.loads(_cli(history, "runs", "show", got["me"], "--json"))
    assert got["child"] in json.dumps(shown), "runs show of the caller lists the deployment run as its subflow"
    child_text = _cli(history, "runs", "show", got["child"])
    assert f"daskflow runs show {got['me']}" in child_text, child_text


def test_as_subflow_false_queues_a_run_of_its_own(flows: ModuleType, history: Any, tmp_path: Path) -> None:
    flows.child.deploy("kid")
    out = tmp_path / "seen.json"
    with service_thread():
        got = flows.caller(str(out), as_subflow=False)
    assert got["state"] == "COMPLETED" and got["parent"] is None, got
    assert json.loads(out.read_text())["parent"] is None
    detail = flow_run_header(history(), got["child"])
    assert detail is not None and detail.parent_flow_run_id is None, detail


def test_a_task_of_the_flow_queues_it_as_a_subflow_of_its_flow_run(
    flows: ModuleType, history: Any, tmp_path: Path
) -> None:
    """Queued with timeout=0 from a task and left queued: the link is there before any service runs it."""
    flows.child.deploy("kid")
    got = flows.caller_through_a_task(str(tmp_path / "seen.json"))
    detail = flow_run_header(history(), got["child"])
    assert detail is not None and detail.state_name == "Scheduled", detail
    assert detail.parent_flow_run_id == got["me"], detail
