"""Prefect 3's deployment calls for real: ``flow.deploy`` into an SQLite run store, ``run_deployment``
queueing runs that a scheduling service (in a thread, over the same store) or a ``flow.serve()`` with
no schedule starts, and the options daskflow refuses with what it does instead.

The flows live in a module written to disk (a fresh name per test), so that a service can import them
by entrypoint as it would in another process.
"""

from __future__ import annotations

import importlib
import json
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import import_flows, service_threads
from daskflow import serve
from daskflow.deployments import Deployment, DeploymentFlowRun, DeploymentService, run_deployment
from daskflow.engine.serving import DEPLOYMENT_BACKEND_MODULE
from daskflow.exceptions import DeploymentError, DeploymentNotFoundError
from daskflow.runstore.queries import flow_run_header
from daskflow.schedules import Cron, Interval

FLOWS = """
from daskflow import flow, task

@task
def add(x: int, y: int) -> int:
    return x + y

@flow
def total(n: int, bonus: int = 0) -> int:
    return add(n, bonus)

@flow
def other(n: int = 1) -> int:
    return n
"""


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module: ModuleType = import_flows(tmp_path, monkeypatch, "dfl_prefect_deploy", FLOWS)
    return module


@contextmanager
def service_thread(**options: Any) -> Iterator[DeploymentService]:
    """A scheduling service over the configured run store, polling every 0.1 s, until the block ends."""
    with service_threads(1, **options) as (service,):
        yield service


def test_deploy_registers_the_deployment_for_daskflow_serve(flows: ModuleType, history: Any) -> None:
    deployment_id = flows.total.deploy(
        "nightly",
        work_pool_name="default-agent-pool",
        cron="0 6 * * *",
        parameters={"n": 2},
        tags=["etl"],
        description="the nightly total",
        version="1.0",  # Prefect's, accepted
    )
    stored = Deployment.load("nightly")
    assert stored.id == deployment_id
    assert (stored.flow_name, stored.parameters, stored.tags) == ("total", {"n": 2}, ("etl",))
    assert stored.schedule == Cron("0 6 * * *") and stored.work_pool.name == "default-agent-pool"
    assert stored.description == "the nightly total" and stored.entrypoint.endswith(":total")
    # Deploying again by the same name updates it and keeps its id (as Prefect's deploy does).
    assert flows.total.deploy("nightly", interval=3600, parameters={"n": 3}) == deployment_id
    again = Deployment.load("nightly")
    assert isinstance(again.schedule, Interval) and again.parameters == {"n": 3}
    # No schedule at all: an on-demand deployment.
    flows.other.deploy("on-demand")
    assert Deployment.load("on-demand").schedule is None


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"image": "registry/etl:latest"}, "image= is not supported: daskflow builds no images"),
        ({"build": True}, "build=True is not supported"),
        ({"push": True}, "push=True is not supported"),
        ({"job_variables": {"image": "x"}}, "job_variables are not supported: a work pool is a Dask cluster"),
        ({"concurrency_limit": 3}, "concurrency_limit=3"),
        ({"schedules": [Cron("0 * * * *"), Cron("30 * * * *")]}, "2 schedules given; a daskflow deployment has one"),
        ({"parameters": {"m": 1}}, "has no parameter"),
        ({"colour": "red"}, r"unknown option\(s\) colour"),
    ],
)
def test_deploy_refuses_what_daskflow_does_differently_saying_what_to_do(
    flows: ModuleType, history: Any, options: dict[str, Any], refused: str
) -> None:
    with pytest.raises(Exception, match=refused) as caught:
        flows.total.deploy(
            "refused", work_pool_name="default", parameters=options.pop("parameters", {"n": 1}), **options
        )
    assert (
        "Fix" in str(caught.value) or "daskflow takes" in str(caught.value) or "has no parameter" in str(caught.value)
    )
    with pytest.raises(DeploymentNotFoundError):
        Deployment.load("refused")  # nothing was stored
    # build=False / push=False (nothing to build) are what daskflow does anyway: accepted.
    assert flows.total.deploy("plain", build=False, push=False, parameters={"n": 1})


def test_run_deployment_timeout_0_returns_at_once_and_a_service_runs_it(flows: ModuleType, history: Any) -> None:
    flows.total.deploy("adder", parameters={"n": 1})
    queued = run_deployment("adder", parameters={"n": 40, "bonus": 2}, timeout=0)
    # Returned before any service exists: the run is in the store, Scheduled, with its parameters.
    assert isinstance(queued, DeploymentFlowRun)
    assert (queued.state_type, queued.state_name) == ("SCHEDULED", "Scheduled"), queued
    assert queued.parameters == {"n": 40, "bonus": 2} and queued.deployment_name == "adder"
    assert not queued.is_final and not queued.state.is_completed()

    with service_thread():
        done = run_deployment("total/adder", parameters={"n": 5}, timeout=120, poll_interval=0.1)
        assert done.state_type == "COMPLETED" and done.state.is_completed(), done
        assert done.parameters == {"n": 5, "bonus": 0} and done.flow_name == "total"  # defaults recorded
        # The first one, queued before the service started, ran too, under the id it was given.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            detail = flow_run_header(history(), queued.id)
            if detail is not None and detail.state_type == "COMPLETED":
                break
            time.sleep(0.1)
        assert detail is not None and detail.state_type == "COMPLETED", detail


def test_run_deployment_waits_up_to_its_timeout_and_keys_make_it_idempotent(flows: ModuleType, history: Any) -> None:
    flows.total.deploy("nobody-serves-it", parameters={"n": 1})
    started = time.monotonic()
    pending = run_deployment("nobody-serves-it", timeout=0.5, poll_interval=0.1)
    waited = time.monotonic() - started
    assert pending.state_type == "SCHEDULED" and not pending.is_final, pending
    assert waited >= 0.5, f"returned after {waited:.2f} s, before its timeout"
    once = run_deployment("nobody-serves-it", idempotency_key="2024-05-01", timeout=0)
    twice = run_deployment("nobody-serves-it", idempotency_key="2024-05-01", timeout=0)
    other = run_deployment("nobody-serves-it", idempotency_key="2024-05-02", timeout=0)
    assert once.id == twice.id != other.id


def test_run_deployment_errors_name_the_problem(flows: ModuleType, history: Any) -> None:
    flows.total.deploy("checked", parameters={"n": 1})
    with pytest.raises(DeploymentNotFoundError, match="no deployment named 'missing'"):
        run_deployment("missing", timeout=0)
    with pytest.raises(DeploymentNotFoundError, match="is of flow 'total', not 'other'"):
        run_deployment("other/checked", timeout=0)
    with pytest.raises(DeploymentError, match="has no parameter"):
        run_deployment("checked", parameters={"nn": 1}, timeout=0)
    with pytest.raises(DeploymentError, match="work_queue_name= is not supported"):
        run_deployment("checked", work_queue_name="q", timeout=0)
    with pytest.raises(DeploymentError, match="timeout=-1 must be seconds"):
        run_deployment("checked", timeout=-1)


def test_serve_with_no_schedule_runs_what_run_deployment_queues(flows: ModuleType, history: Any) -> None:
    stop = threading.Event()
    result: dict[str, Any] = {}

    def serving() -> None:
        result["states"] = flows.total.serve("on-demand", parameters={"n": 10}, stop=stop, poll_seconds=0.1)

    thread = threading.Thread(target=serving, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # registered in the store once serve() is up
            try:
                Deployment.load("on-demand")
                break
            except DeploymentNotFoundError:
                time.sleep(0.05)
        runs = [
            run_deployment("total/on-demand", parameters={"bonus": b}, timeout=120, poll_interval=0.1) for b in (1, 2)
        ]
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert [r.state_type for r in runs] == ["COMPLETED", "COMPLETED"], runs
    assert [r.parameters for r in runs] == [{"n": 10, "bonus": 1}, {"n": 10, "bonus": 2}]
    states = result["states"]
    assert sorted(s.result() for s in states) == [11, 12], states
    # Registered with no schedule: a `daskflow serve` elsewhere has nothing of it to fire on its own.
    assert Deployment.load("on-demand").schedule is None


def test_a_flow_defined_in_a_function_cannot_be_served_on_demand(history: Any) -> None:
    from daskflow import flow

    @flow
    def local() -> int:
        return 1

    with pytest.raises(DeploymentError, match="define the flow at the top level"):
        serve(local.to_deployment("local"), stop=threading.Event())


def test_the_deployments_seam_is_the_only_upward_import() -> None:
    # Modules below the deployments layer never import it; one names it, for the lazy import of the seam.
    root = Path(importlib.import_module("daskflow").__file__ or "").parent
    below = {root / "flows.py", *root.glob("engine/*.py"), *root.glob("*.py")} - {root / "__init__.py"}
    imports = re.compile(r"^\s*(from|import)\s+daskflow\.deployments", re.MULTILINE)
    named = re.compile(r"[\"']daskflow\.deployments")
    assert not [p.name for p in below if imports.search(p.read_text())]
    assert sorted(str(p.relative_to(root)) for p in below if named.search(p.read_text())) == ["engine/serving.py"]
    assert DEPLOYMENT_BACKEND_MODULE == "daskflow.deployments.flow_api"


def test_cli_queues_a_run_and_lists_triggers(flows: ModuleType, history: Any) -> None:
    from click.testing import CliRunner

    from daskflow import cli
    from daskflow.events import DeploymentEventTrigger

    flows.total.deploy("cli-queued", parameters={"n": 1}, triggers=[DeploymentEventTrigger(expect={"go"})])
    url = f"sqlite:///{history().display_url.removeprefix('sqlite:///')}"
    result = CliRunner().invoke(
        cli.main, ["deployment", "run", "cli-queued", "--queue", "--param", "n=4", "--url", url]
    )
    assert result.exit_code == 0, result.output
    run_id = result.output.split()[2]
    detail = flow_run_header(history(), run_id)
    assert detail is not None and detail.state_name == "Scheduled" and detail.parameters == {"n": 4}, detail
    listed = CliRunner().invoke(cli.main, ["deployment", "ls", "--json", "--url", url])
    assert listed.exit_code == 0, listed.output
    (entry,) = [d for d in json.loads(listed.output) if d["name"] == "cli-queued"]
    assert [t["expect"] for t in entry["triggers"]] == [["go"]]
    table = CliRunner().invoke(cli.main, ["deployment", "ls", "--url", url])
    assert "1 trigger" in table.output, table.output
    refused = CliRunner().invoke(
        cli.main, ["deployment", "run", "cli-queued", "--queue", "--time", "2024-01-01", "--url", url]
    )
    assert refused.exit_code != 0 and "--time and --queue" in refused.output


def test_from_source_loads_a_flow_from_a_local_folder_to_deploy(tmp_path: Path, history: Any) -> None:
    from daskflow import Flow

    project = tmp_path / "project" / "pipelines"
    project.mkdir(parents=True)
    (project / "etl.py").write_text(textwrap.dedent(FLOWS))
    loaded = Flow.from_source(tmp_path / "project", "pipelines/etl.py:total")
    assert loaded.name == "total" and loaded(n=2, bonus=1) == 3
    loaded.deploy("from-source", parameters={"n": 1})
    assert Deployment.load("from-source").entrypoint == f"{(project / 'etl.py').resolve()}:total"
    with pytest.raises(DeploymentError, match="local folders only"):
        Flow.from_source("https://github.com/org/repo.git", "flows.py:f")
    with pytest.raises(DeploymentError, match="must be 'path/to/file.py:flow_name'"):
        Flow.from_source(tmp_path, "flows:f")
    with pytest.raises(DeploymentError, match="there is no file"):
        Flow.from_source(tmp_path, "missing.py:f")
