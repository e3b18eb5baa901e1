"""Deployment triggers for real: ``DeploymentEventTrigger`` matching as Prefect's, and two scheduling
services in threads over one SQLite run store firing each matching event's run exactly once, with
parameters rendered from the event; ``flow.serve(triggers=...)`` firing in the serving process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import import_flows, service_threads
from daskflow.deployments import Deployment, apply_deployment_file
from daskflow.deployments.triggers import triggered_run_id
from daskflow.events import DeploymentEventTrigger, Event, EventError, emit_event
from daskflow.exceptions import DeploymentError
from daskflow.runstore import schema
from server_harness import interrupt

FLOWS = """
from daskflow import flow

@flow
def refresh(table: str, rows: int = 0) -> str:
    return f"{table}:{rows}"
"""


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module: ModuleType = import_flows(tmp_path, monkeypatch, "dfl_triggers", FLOWS)
    return module


def event(name: str, resource: dict[str, str], related: list[dict[str, str]] | None = None, **payload: Any) -> Event:
    return Event(event=name, resource=resource, related=related or [], payload=payload)


# -- matching, as Prefect's -------------------------------------------------------------------


def test_expect_match_and_match_related_follow_prefect() -> None:
    trigger = DeploymentEventTrigger(
        expect={"warehouse.table.*"},
        match={"prefect.resource.id": ["warehouse.table.sales", "warehouse.table.orders"], "env": "!dev"},
        match_related={"prefect.resource.role": "owner", "prefect.resource.id": "team.*"},
    )
    owner = [{"prefect.resource.id": "team.data", "prefect.resource.role": "owner"}]
    sales = {"prefect.resource.id": "warehouse.table.sales"}
    assert trigger.matches(event("warehouse.table.refreshed", sales, owner))
    assert trigger.matches(event("warehouse.table.refreshed", {**sales, "env": "prod"}, owner))
    assert not trigger.matches(event("warehouse.table.refreshed", {**sales, "env": "dev"}, owner)), "negation"
    assert not trigger.matches(event("warehouse.view.refreshed", sales, owner)), "expect"
    assert not trigger.matches(event("warehouse.table.refreshed", {"prefect.resource.id": "x"}, owner)), "match"
    assert not trigger.matches(event("warehouse.table.refreshed", sales, [])), "match_related"
    assert not trigger.matches(
        event("warehouse.table.refreshed", sales, [{"prefect.resource.id": "team.data", "prefect.resource.role": "x"}])
    )
    # Prefect's names match daskflow's state events, and no expect matches any event.
    completed = DeploymentEventTrigger(
        expect={"prefect.flow-run.Completed"}, match={"prefect.resource.id": "prefect.flow-run.*"}
    )
    state_event = event("daskflow.flow-run.Completed", {"daskflow.resource.id": "daskflow.flow-run.abc"})
    assert completed.matches(state_event)
    assert DeploymentEventTrigger().matches(state_event)
    assert not DeploymentEventTrigger(enabled=False).matches(state_event)


def test_state_events_are_read_only_for_triggers_that_could_match_them() -> None:
    wants = [
        DeploymentEventTrigger(expect=set(expect)).wants_state_events
        for expect in (
            [], ["prefect.flow-run.Completed"], ["daskflow.task-run.*"], ["prefect.*"], ["*"], ["table.refreshed"],
            ["table.*", "warehouse.loaded"],
        )
    ]  # fmt: skip
    assert wants == [True, True, True, True, True, False, False]


def test_parameters_are_rendered_from_the_event() -> None:
    trigger = DeploymentEventTrigger(
        parameters={
            "table": "{{ event.resource['warehouse.table'] }}",
            "rows": "{{ event.payload.rows }}",  # a single template keeps the value's type
            "note": "{{ event.event }} on {{ event.resource.id }}",
            "fixed": 3,
        }
    )
    made = event("table.refreshed", {"prefect.resource.id": "wh.sales", "warehouse.table": "sales"}, rows=1200)
    assert trigger.render_parameters(made) == {
        "table": "sales",
        "rows": 1200,
        "note": "table.refreshed on wh.sales",
        "fixed": 3,
    }


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"threshold": 0}, "threshold=0 must be 1 or more"),
        ({"threshold": 5}, "threshold=5 counts events over a time window, and within= is 0. Fix: give within="),
        ({"within": -1}, "within=.* is negative"),
        ({"for_each": {"related:flow"}}, "for_each label 'related:flow' names no label. Fix: 'related:<role>:<label>'"),
        ({"parameters": {"x": "{{ flow_run.id }}"}}, "parameter template .* is not understood"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_unsupported_triggers_are_refused_when_defined(fields: dict[str, Any], refused: str) -> None:
    with pytest.raises(ValueError, match=refused):
        DeploymentEventTrigger(**fields)


def test_deploy_takes_triggers_as_objects_or_dicts_and_stores_them(flows: ModuleType, history: Any) -> None:
    flows.refresh.deploy(
        "on-refresh",
        triggers=[
            DeploymentEventTrigger(expect={"table.refreshed"}, parameters={"table": "{{ event.resource.id }}"}),
            {"type": "event", "expect": ["table.dropped"], "match": {"prefect.resource.id": "wh.*"}},
        ],
    )
    stored = Deployment.load("on-refresh")
    assert [sorted(t.expect) for t in stored.triggers] == [["table.refreshed"], ["table.dropped"]]
    assert stored.triggers[1].match == {"prefect.resource.id": "wh.*"}
    with pytest.raises(
        EventError, match=r"triggers\[0\] is not a valid trigger.*threshold=2 counts events over a time window"
    ):
        flows.refresh.deploy("bad", triggers=[{"expect": ["x"], "threshold": 2}])
    with pytest.raises(DeploymentError, match=r"triggers\[0\] has type 'compound'"):
        Deployment.build_from_flow(flows.refresh, "bad", triggers=[{"type": "compound"}])
    with pytest.raises(EventError, match=r"triggers\[0\] is a int"):
        flows.refresh.to_deployment("bad", triggers=[3])


def test_deployment_files_take_triggers(flows: ModuleType, tmp_path: Path, history: Any) -> None:
    spec = tmp_path / "deployments.yaml"
    entrypoint = f"{flows.__name__}:refresh"
    spec.write_text(
        "deployments:\n"
        f"  - name: from-file\n    entrypoint: {entrypoint}\n"
        "    triggers:\n"
        "      - {expect: [table.refreshed], match: {prefect.resource.id: 'wh.*'}, parameters: {table: x}}\n"
    )
    apply_deployment_file(spec)
    (trigger,) = Deployment.load("from-file").triggers
    assert trigger.expect == {"table.refreshed"} and trigger.parameters == {"table": "x"}
    spec.write_text(
        f"deployments:\n  - name: bad-file\n    entrypoint: {entrypoint}\n    triggers: [{{threshold: 0}}]\n"
    )
    with pytest.raises(
        DeploymentError, match=r"field 'triggers': triggers\[0\] is not a valid trigger.*threshold=0 must be 1 or more"
    ):
        apply_deployment_file(spec)


# -- firing: two services over one store ------------------------------------------------------


services = service_threads  # several services on one store, in threads of this process


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.05)


def runs_of(store: Any, deployment: str) -> list[Any]:
    fr = schema.flow_runs
    with store.engine.connect() as connection:
        return connection.execute(
            sa.select(fr.c.id, fr.c.state_type, fr.c.parameters).where(fr.c.deployment_name == deployment)
        ).all()


def running_states(store: Any, run_id: str) -> int:
    st = schema.states
    with store.engine.connect() as connection:
        query = sa.select(sa.func.count()).select_from(st).where(st.c.run_id == run_id, st.c.type == "RUNNING")
        return int(connection.execute(query).scalar() or 0)


def test_two_services_fire_each_matching_event_once(flows: ModuleType, history: Any) -> None:
    trigger = DeploymentEventTrigger(
        expect={"table.refreshed"},
        match={"prefect.resource.id": "wh.*"},
        parameters={"table": "{{ event.resource['table'] }}", "rows": "{{ event.payload.rows }}"},
    )
    flows.refresh.deploy("refresher", triggers=[trigger])
    deployment_id = Deployment.load("refresher").id
    assert deployment_id is not None
    with services(2) as running:
        emitted = []
        for i in range(6):
            emitted.append(
                emit_event(
                    "table.refreshed", {"prefect.resource.id": f"wh.t{i}", "table": f"t{i}"}, payload={"rows": i}
                )
            )
            emit_event("table.refreshed", {"prefect.resource.id": f"lake.t{i}"})  # match: no
            emit_event("table.dropped", {"prefect.resource.id": f"wh.t{i}"})  # expect: no
        store = history()

        def all_completed() -> bool:
            found = runs_of(store, "refresher")
            return len(found) >= 6 and all(r.state_type == "COMPLETED" for r in found)

        wait_for(all_completed, 120, "the six triggered runs to complete")
        # Two more looks at the events by each service: a late second firing would show up now.
        marks = [service.trigger_polls for service in running]
        wait_for(lambda: all(s.trigger_polls >= m + 2 for s, m in zip(running, marks)), 60, "two more polls")
    found = runs_of(store, "refresher")
    assert len(found) == 6, f"{len(found)} runs for 6 matching events"
    expected = {
        triggered_run_id(deployment_id, trigger, e.id): {"table": f"t{i}", "rows": i} for i, e in enumerate(emitted)
    }
    assert {r.id: json.loads(r.parameters) for r in found} == expected
    assert all(running_states(store, r.id) == 1 for r in found), "a triggered run started twice"


def test_serve_with_triggers_fires_in_the_serving_process(flows: ModuleType, history: Any) -> None:
    stop = threading.Event()
    result: dict[str, Any] = {}
    trigger = DeploymentEventTrigger(expect={"file.arrived"}, parameters={"table": "{{ event.payload.name }}"})

    def serving() -> None:
        result["states"] = flows.refresh.serve("on-file", triggers=[trigger], stop=stop, poll_seconds=0.1)

    thread = threading.Thread(target=serving, daemon=True)
    thread.start()
    try:
        wait_for(lambda: _exists("on-file"), 60, "the served deployment to be registered")
        emit_event("file.arrived", {"prefect.resource.id": "inbox.a"}, payload={"name": "orders"})
        wait_for(lambda: len(runs_of(history(), "on-file")) == 1, 60, "the triggered run")
        wait_for(lambda: runs_of(history(), "on-file")[0].state_type == "COMPLETED", 60, "the run to complete")
    finally:
        stop.set()
        thread.join(60)
    assert [s.result() for s in result["states"]] == ["orders:0"]


def _exists(name: str) -> bool:
    try:
        Deployment.load(name)
    except Exception:
        return False
    return True


# -- two `daskflow serve` processes --------------------------------------------------------------


def test_two_daskflow_serve_processes_fire_each_event_once(flows: ModuleType, tmp_path: Path) -> None:
    import dask.config

    from daskflow.runstore import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    trigger = DeploymentEventTrigger(expect={"table.refreshed"}, parameters={"table": "{{ event.resource.id }}"})
    with dask.config.set({"daskflow.runstore.url": url, "daskflow.runstore.enabled": True}):
        flows.refresh.deploy("proc-refresher", triggers=[trigger])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), str(Path(flows.__file__ or "").parent)]
    )
    env["DASK_DASKFLOW__RUNSTORE__URL"] = url
    env["DASK_DASKFLOW__RUNSTORE__ENABLED"] = "true"
    env["DASK_DASKFLOW__PROGRESS"] = "false"
    logs = [tmp_path / f"serve-{name}.log" for name in ("a", "b")]
    command = [sys.executable, "-c", "from daskflow.cli import main; main()", "serve", "--url", url, "--poll", "0.3"]
    processes = []
    for log in logs:
        with open(log, "w") as out:
            processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True))
    try:
        wait_for(lambda: all("serving" in log.read_text() for log in logs), 60, "both services to start")
        emitted = [emit_event("table.refreshed", {"prefect.resource.id": f"wh.t{i}"}, url=url) for i in range(5)]
        with RunStore(url) as store:

            def completed() -> bool:
                found = runs_of(store, "proc-refresher")
                return len(found) >= 5 and all(r.state_type == "COMPLETED" for r in found)

            wait_for(completed, 120, "the five triggered runs to complete")
            found = runs_of(store, "proc-refresher")
            assert sorted(json.loads(r.parameters)["table"] for r in found) == [f"wh.t{i}" for i in range(5)]
            assert all(running_states(store, r.id) == 1 for r in found), "a triggered run started twice"
    finally:
        interrupt(*processes, grace=60)
    texts = [log.read_text() for log in logs]
    for made in emitted:
        fired = sum(text.count(f"({made.id}) fired a run") for text in texts)
        assert fired == 1, (made.id, fired, texts)
    assert len(found) == 5, f"{len(found)} runs for 5 events"


def test_a_flow_runs_completion_fires_a_deployment(flows: ModuleType, history: Any) -> None:
    state = flows.refresh("upstream", return_state=True)
    assert state.flow_run is not None
    upstream = state.flow_run.id
    history()  # written: its Completed state is in the run store now
    trigger = DeploymentEventTrigger(
        expect={"prefect.flow-run.Completed"},  # Prefect's name for daskflow's state event
        match={"prefect.resource.id": f"prefect.flow-run.{upstream}"},
        parameters={"table": "{{ event.resource.id }}"},
    )
    flows.refresh.deploy("downstream", triggers=[trigger])
    with services(1):
        wait_for(lambda: any(r.state_type == "COMPLETED" for r in runs_of(history(), "downstream")), 60, "the run")
    (run,) = runs_of(history(), "downstream")
    assert json.loads(run.parameters) == {"table": f"daskflow.flow-run.{upstream}", "rows": 0}
