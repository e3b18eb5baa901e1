"""Deployment triggers as Prefect documents them, beyond one run per event: state events' related
resources and ``match_related`` on them, ``threshold`` within a window, ``after``, ``for_each`` and
``posture="Proactive"``, fired by real scheduling services over one SQLite run store (their counting
state in the store, surviving a restart). Windows are small; waits are bounded polls of the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from conftest import import_flows, service_threads
from daskflow import tags
from daskflow.cli import main
from daskflow.deployments import Deployment, DeploymentService
from daskflow.deployments.deployment import run_deployment_here
from daskflow.deployments.triggers import trigger_key, triggered_run_id
from daskflow.event_triggers import count_events, event_json
from daskflow.events import DeploymentEventTrigger, Event, emit_event, list_events
from daskflow.runstore import schema
from daskflow.runstore.events import locked_trigger_state

FLOWS = """
from daskflow import flow, task

@task
def extract(n: int) -> int:
    return n

@flow
def pipeline(n: int = 1) -> int:
    return extract(n)

@flow
def react(key: str | None = "", note: str | None = "") -> str:
    return f"{key}|{note}"
"""


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module: ModuleType = import_flows(tmp_path, monkeypatch, "dfl_counting", FLOWS)
    return module


@contextmanager
def services(count: int = 1) -> Iterator[list[DeploymentService]]:
    with service_threads(count) as made:
        wait_for(lambda: all(s.trigger_polls >= 1 for s in made), 60, "the services' first look at the events")
        yield made


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.05)


def polls(running: list[DeploymentService], more: int = 2) -> None:
    """Wait until every service has looked at the events ``more`` more times (a late firing would show)."""
    marks = [s.trigger_polls for s in running]
    wait_for(lambda: all(s.trigger_polls >= m + more for s, m in zip(running, marks)), 60, f"{more} more polls")


def runs_of(store: Any, deployment: str) -> list[Any]:
    fr = schema.flow_runs
    query = sa.select(fr.c.id, fr.c.state_type, fr.c.parameters).where(fr.c.deployment_name == deployment)
    with store.engine.connect() as connection:
        return list(connection.execute(query.order_by(fr.c.created)).all())


def parameters_of(store: Any, deployment: str) -> list[dict[str, Any]]:
    return [json.loads(r.parameters) for r in runs_of(store, deployment)]


def completed(store: Any, deployment: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        found = runs_of(store, deployment)
        return len(found) >= count and all(r.state_type == "COMPLETED" for r in found)

    return check


def trigger(**fields: Any) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(parameters={"key": "{{ event.resource.id }}", "note": "{{ event.event }}"}, **fields)


# -- 1. related resources on state events ---------------------------------------------------------


def test_state_events_relate_flow_deployment_work_pool_tags_and_flow_run(flows: ModuleType, history: Any) -> None:
    flows.pipeline.deploy("nightly-load", work_pool_name="default", tags=["nightly"])
    with tags("team-a"):
        state = run_deployment_here("nightly-load")
    run_id = state.flow_run.id
    history()
    flow_events = list_events(resource_id=f"prefect.flow-run.{run_id}")  # Prefect's name finds it too
    done = next(e for e in flow_events if e.event == "daskflow.flow-run.Completed")
    assert done.resource["daskflow.state-name"] == "Completed"
    deployment_id = Deployment.load("nightly-load").id
    related = {(r["daskflow.resource.role"], r["daskflow.resource.id"]) for r in done.related}
    assert related == {
        ("flow", "daskflow.flow.pipeline"),
        ("deployment", f"daskflow.deployment.{deployment_id}"),
        ("work-pool", "daskflow.work-pool.default"),
        ("tag", "daskflow.tag.nightly"),
        ("tag", "daskflow.tag.team-a"),
    }, done.related
    flow_run = f"daskflow.flow-run.{run_id}"
    task_events = [
        e for e in list_events(prefix="prefect.task-run.", limit=500) if any(flow_run in r.values() for r in e.related)
    ]
    # Completed, always; Running only if the run was still running when the history writer drained
    # (a run that had ended by then keeps its final state only: see engine/history.py).
    assert "daskflow.task-run.Completed" in {e.event for e in task_events}, task_events
    for event in task_events:
        roles = {(r["daskflow.resource.role"], r["daskflow.resource.id"]) for r in event.related}
        assert roles >= {("flow-run", flow_run), ("flow", "daskflow.flow.pipeline")}, roles
    # `events ls` shows them: a column, and the labels in --json.
    table = CliRunner().invoke(main, ["events", "ls", "--resource", f"daskflow.flow-run.{run_id}"])
    assert table.exit_code == 0, table.output
    assert "related" in table.output and "flow:pipeline" in table.output and "deployment:nightly-load" in table.output
    assert "tag:nightly" in table.output and "work-pool:default" in table.output, table.output
    listed = CliRunner().invoke(main, ["events", "ls", "--json", "--resource", f"daskflow.flow-run.{run_id}"])
    assert {"daskflow.tag.nightly"} <= {
        r["daskflow.resource.id"] for e in json.loads(listed.output) for r in e["related"]
    }


# -- 2. match_related ---------------------------------------------------------------------------


def test_match_related_takes_prefect_names_wildcards_negation_and_lists_of_specs() -> None:
    related = [
        {"daskflow.resource.id": "daskflow.flow.etl", "daskflow.resource.role": "flow"},
        {"daskflow.resource.id": "daskflow.tag.nightly", "daskflow.resource.role": "tag"},
    ]
    done = Event(event="daskflow.flow-run.Completed", resource={"daskflow.resource.id": "daskflow.flow-run.1"})
    done_related = done.model_copy(update={"related": related})
    one = DeploymentEventTrigger(
        match_related={"prefect.resource.role": "flow", "prefect.resource.id": "prefect.flow.e*"}
    )
    both = DeploymentEventTrigger(
        match_related=[{"prefect.resource.role": "flow"}, {"prefect.resource.id": ["prefect.tag.nightly", "x"]}]
    )
    not_dev = DeploymentEventTrigger(match_related={"prefect.resource.role": "tag", "prefect.resource.id": "!*.dev"})
    assert one.matches(done_related) and both.matches(done_related) and not_dev.matches(done_related)
    assert not one.matches(done), "no related resources"
    assert not both.matches(done_related.model_copy(update={"related": related[:1]})), "every spec must be met"


def test_a_tagged_flow_s_completion_fires_through_match_related(flows: ModuleType, history: Any) -> None:
    flows.react.deploy(
        "on-nightly",
        triggers=[
            trigger(
                expect={"prefect.flow-run.Completed"},
                match_related={"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.nightly"},
            )
        ],
    )
    with services() as running:
        flows.pipeline(2)  # untagged: no run
        with tags("nightly"):
            tagged = flows.pipeline(3, return_state=True).flow_run.id
        store = history()
        wait_for(completed(store, "on-nightly", 1), 60, "the run fired by the tagged flow's completion")
        polls(running)
    assert parameters_of(store, "on-nightly") == [
        {"key": f"daskflow.flow-run.{tagged}", "note": "daskflow.flow-run.Completed"}
    ]


# -- 3. threshold within a window, for_each -------------------------------------------------------


def test_threshold_within_fires_once_per_key_when_enough_events_came(flows: ModuleType, history: Any) -> None:
    flows.react.deploy(
        "on-three",
        triggers=[trigger(expect={"table.failed"}, threshold=3, within=60, for_each={"prefect.resource.id"})],
    )
    with services(2) as running:  # two services over one store: each event counted once
        for i in range(5):
            emit_event("table.failed", {"prefect.resource.id": "wh.a"}, payload={"i": i})
        for _ in range(2):
            emit_event("table.failed", {"prefect.resource.id": "wh.b"})  # 2 < 3: no run
        emit_event("table.loaded", {"prefect.resource.id": "wh.b"})  # not expected
        store = history()
        wait_for(completed(store, "on-three", 1), 60, "the run for wh.a's third failure")
        polls(running)
    # One run, for wh.a: its 4th and 5th events fall in the rest of the window that fired (as in Prefect).
    assert parameters_of(store, "on-three") == [{"key": "wh.a", "note": "table.failed"}]


def test_windows_count_as_prefect_s_buckets() -> None:
    # The counting itself, with explicit times: a window opens at the first event and lasts `within`.
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    made = DeploymentEventTrigger(expect={"x"}, threshold=2, within=10, for_each={"related:flow:prefect.resource.id"})

    def at(seconds: float, flow: str) -> Event:
        return Event(
            event="x", occurred=t0 + timedelta(seconds=seconds), resource={"prefect.resource.id": "r"},
            related=[{"prefect.resource.id": flow, "prefect.resource.role": "flow"}],
        )  # fmt: skip

    state: dict[str, Any] = {}
    horizon = t0 - timedelta(seconds=60)
    events = [at(0, "f1"), at(11, "f1"), at(15, "f1"), at(1, "f2"), at(5, "f2")]
    fired = count_events(made, state, sorted(events, key=lambda e: e.occurred), t0 + timedelta(seconds=20), horizon)
    # f1: 0 s alone in [0, 10); 11 s opens [11, 21) and 15 s completes it. f2: 1 s and 5 s in [1, 11).
    assert [(f.key, f.event["occurred"] if f.event else None) for f in fired] == [
        (("f2",), (t0 + timedelta(seconds=5)).isoformat()),
        (("f1",), (t0 + timedelta(seconds=15)).isoformat()),
    ]
    again = count_events(made, state, events, t0 + timedelta(seconds=21), horizon)
    assert again == [], "an event counted once is not counted again (another service, the next poll)"


def test_proactive_windows_are_judged_when_they_end_and_swept_when_no_service_watched() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    made = DeploymentEventTrigger(posture="Proactive", expect={"beat"}, within=10)
    beat = Event(event="beat", occurred=t0 + timedelta(seconds=3), resource={"prefect.resource.id": "r"})
    state: dict[str, Any] = {}

    def judge(seconds: float, *events: Event) -> list[Any]:
        now = t0 + timedelta(seconds=seconds)
        return count_events(made, state, list(events), now, now - timedelta(seconds=60))

    assert judge(0) == []  # armed: the window [0, 10) opens when the trigger is first watched
    assert judge(5, beat) == [] and judge(10) == []  # one beat in [0, 10): as expected
    assert judge(15) == []  # [10, 20) is still open
    (fired,) = judge(21)  # nothing in [10, 20): fires, once, with no event to render from
    assert (fired.event, fired.discriminator) == (None, f"window:[]:{(t0 + timedelta(seconds=20)).isoformat()}")
    assert judge(25) == []  # [21, 31) is open
    # Every service was down from 25 s to 200 s: [21, 31) ended out of reach, so it is swept, not judged.
    assert judge(200) == [] and judge(205) == []
    assert len(judge(211)) == 1  # the window opened at 200 s judged as usual


def test_a_late_event_judges_its_ended_proactive_window_and_counts_in_the_next() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    made = DeploymentEventTrigger(posture="Proactive", expect={"beat"}, within=10, for_each={"prefect.resource.id"})
    state: dict[str, Any] = {}

    def judge(seconds: float, *beats: float) -> list[Any]:
        now = t0 + timedelta(seconds=seconds)
        events = [
            Event(id=f"b{at}", event="beat", occurred=t0 + timedelta(seconds=at), resource={"prefect.resource.id": "a"})
            for at in beats
        ]
        return count_events(made, state, events, now, now - timedelta(seconds=60))

    assert judge(1, 0) == [] and judge(12) == []  # "a" beat in [0, 10); [12, 22) opens
    (fired,) = judge(26, 25)  # [12, 22) had no beat: the beat at 25 s judges it, fires, then counts
    assert (fired.key, fired.discriminator) == (("a",), "event:b25")
    assert judge(36) == [], "the beat at 25 s counted in [25, 35)"
    assert len(judge(47)) == 1, "nothing in [36, 46)"


# -- 4. after ------------------------------------------------------------------------------------


def test_after_arms_the_trigger_per_key_and_a_firing_disarms_it(flows: ModuleType, history: Any) -> None:
    flows.react.deploy(
        "after-start",
        triggers=[trigger(after={"job.started"}, expect={"job.finished"}, for_each={"prefect.resource.id"})],
    )
    with services() as running:
        emit_event("job.finished", {"prefect.resource.id": "job.1"})  # never started: not armed
        emit_event("job.started", {"prefect.resource.id": "job.2"})
        emit_event("job.finished", {"prefect.resource.id": "job.2"}, payload={"n": 1})  # fires
        emit_event("job.finished", {"prefect.resource.id": "job.2"}, payload={"n": 2})  # disarmed: no run
        store = history()
        wait_for(completed(store, "after-start", 1), 60, "the run for job.2")
        polls(running)
    assert parameters_of(store, "after-start") == [{"key": "job.2", "note": "job.finished"}]


# -- 5. Proactive ------------------------------------------------------------------------------------


def test_proactive_fires_for_the_key_whose_expected_event_did_not_come(flows: ModuleType, history: Any) -> None:
    flows.react.deploy(
        "missing-heartbeat",
        triggers=[
            trigger(
                posture="Proactive", after={"job.started"}, expect={"job.heartbeat"}, within=2,
                for_each={"prefect.resource.id"},
            )
        ],
    )  # fmt: skip
    with services() as running:
        emit_event("job.started", {"prefect.resource.id": "job.quiet"})
        emit_event("job.started", {"prefect.resource.id": "job.alive"})
        emit_event("job.heartbeat", {"prefect.resource.id": "job.alive"})
        store = history()
        wait_for(completed(store, "missing-heartbeat", 1), 60, "the run for the silent job")
        polls(running, 5)
    # The run renders from the event that armed the window (the last one it saw).
    assert parameters_of(store, "missing-heartbeat") == [{"key": "job.quiet", "note": "job.started"}]


def test_proactive_without_after_counts_from_when_the_service_first_watched(flows: ModuleType, history: Any) -> None:
    flows.react.deploy("nothing-came", triggers=[trigger(posture="Proactive", expect={"file.arrived"}, within=1)])
    with services() as running:
        store = history()
        wait_for(lambda: len(runs_of(store, "nothing-came")) >= 1, 60, "a run for the window with no event")
        polls(running)
    (first, *_) = runs_of(store, "nothing-came")
    # Nothing to render from: templates are None, as Prefect renders a missing event.
    assert json.loads(first.parameters) == {"key": None, "note": None}
    assert DeploymentEventTrigger(posture="Proactive").within == timedelta(seconds=10), "Prefect's default window"


# -- state in the run store ------------------------------------------------------------------------


def test_a_trigger_s_count_survives_a_service_restart(flows: ModuleType, history: Any) -> None:
    flows.react.deploy("two-of-them", triggers=[trigger(expect={"row.bad"}, threshold=2, within=120)])
    store = history()

    def counted() -> int:
        with store.engine.connect() as connection:
            text = connection.execute(sa.select(schema.trigger_states.c.state)).scalar()
        return sum(b["count"] for b in json.loads(text)["buckets"].values()) if text else 0

    with services():
        emit_event("row.bad", {"prefect.resource.id": "t.x"}, payload={"n": 1})
        wait_for(lambda: counted() == 1, 60, "the first event counted in the store")
    assert runs_of(store, "two-of-them") == []
    with services() as running:  # a new service: it goes on from the stored count
        emit_event("row.bad", {"prefect.resource.id": "t.x"}, payload={"n": 2})
        wait_for(completed(store, "two-of-them", 1), 60, "the run fired by the second event")
        polls(running)
    assert parameters_of(store, "two-of-them") == [{"key": "t.x", "note": "row.bad"}]


def test_a_trigger_s_key_is_the_same_in_every_process() -> None:
    # Services in other processes must agree on a trigger's state row and its runs' ids.
    code = (
        "from daskflow.deployments.triggers import trigger_key; from daskflow.events import DeploymentEventTrigger; "
        "print(trigger_key(DeploymentEventTrigger(expect={'a', 'b', 'c', 'd'}, after={'x', 'y', 'z'}, "
        "for_each={'l1', 'l2', 'l3'}, threshold=2, within=5)))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    keys = {
        subprocess.run(
            [sys.executable, "-c", code], env={**env, "PYTHONHASHSEED": seed}, capture_output=True, text=True,
            check=True, timeout=120,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(keys) == 1, keys


def test_two_services_count_flow_runs_by_related_flow_on_postgresql(
    flows: ModuleType, history: Any, postgres_url: str
) -> None:
    # The related resources' join and the trigger state's row lock on PostgreSQL: two completions of
    # `pipeline` (its related flow), counted by two services, fire one run.
    import dask.config

    with dask.config.set({"daskflow.runstore.url": postgres_url}):
        flows.react.deploy(
            "pg-every-two",
            triggers=[
                trigger(
                    expect={"prefect.flow-run.Completed"},
                    match_related={"prefect.resource.role": "flow", "prefect.resource.id": "prefect.flow.pipeline"},
                    threshold=2,
                    within=60,
                )
            ],
        )
        with services(2) as running:
            first = flows.pipeline(1, return_state=True).flow_run.id
            second = flows.pipeline(2, return_state=True).flow_run.id
            store = history()
            wait_for(completed(store, "pg-every-two", 1), 60, "the run fired by the second completion")
            polls(running)
        assert store.engine.dialect.name == "postgresql"
        assert parameters_of(store, "pg-every-two") == [
            {"key": f"daskflow.flow-run.{second}", "note": "daskflow.flow-run.Completed"}
        ], first


def test_a_firing_left_pending_by_a_dead_service_is_queued_once_by_the_next(flows: ModuleType, history: Any) -> None:
    made = trigger(expect={"row.bad"}, threshold=2, within=60)
    flows.react.deploy("pending-left", triggers=[made])
    deployment_id = Deployment.load("pending-left").id
    assert deployment_id is not None
    store = history()
    # What a service writes before it queues the run, had it died right after the commit.
    fired = Event(event="row.bad", resource={"prefect.resource.id": "t.lost"})
    run_id = triggered_run_id(deployment_id, made, f"event:{fired.id}")
    with locked_trigger_state(store, deployment_id, trigger_key(made)) as row:
        row.state["pending"] = [
            {"run_id": run_id, "fired": datetime.now(UTC).isoformat(), "event": event_json(fired), "key": [],
             "why": f"event:{fired.id}"}
        ]  # fmt: skip
    with services(2) as running:
        wait_for(completed(store, "pending-left", 1), 60, "the pending firing's run")
        polls(running)
    assert [r.id for r in runs_of(store, "pending-left")] == [run_id]
    assert parameters_of(store, "pending-left") == [{"key": "t.lost", "note": "row.bad"}]
    with store.engine.connect() as connection:
        left = json.loads(connection.execute(sa.select(schema.trigger_states.c.state)).scalar())
    assert left["pending"] == [], "a queued firing is dropped from the state once its run exists"
