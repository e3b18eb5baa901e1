"""Events (Prefect's ``emit_event``): recorded with the run they were emitted in, on every runner;
the runs' state changes listed as events; ``daskflow events ls``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from daskflow import flow, task
from daskflow.cli import main
from daskflow.events import EventError, emit_event, list_events


def test_an_event_emitted_in_a_task_is_kept_with_its_runs_on_every_runner(
    task_runner: Any, history: Any, daskflow_home: Path
) -> None:
    url = f"sqlite:///{daskflow_home / 'runs.db'}"  # a Dask worker process is told where the store is

    @task
    def refresh(table: str) -> str:
        made = emit_event(
            event="warehouse.table.refreshed",
            resource={"prefect.resource.id": f"warehouse.table.{table}"},
            related=[{"prefect.resource.id": "warehouse.db", "prefect.resource.role": "database"}],
            payload={"rows": 1200},
            url=url,
        )
        return made.id

    @flow(task_runner=task_runner)
    def pipeline() -> str:
        return refresh("sales")

    state = pipeline(return_state=True)
    event_id = state.result()
    history()  # the run's states are written
    [found] = list_events(prefix="warehouse.", url=url)
    assert (found.id, found.event, found.resource_id, found.payload) == (
        event_id,
        "warehouse.table.refreshed",
        "warehouse.table.sales",
        {"rows": 1200},
    )
    assert found.related == [{"prefect.resource.id": "warehouse.db", "prefect.resource.role": "database"}]
    run_id = state.flow_run.id
    flow_events = [e.event for e in list_events(resource_id=f"daskflow.flow-run.{run_id}", url=url)]
    assert flow_events == ["daskflow.flow-run.Completed", "daskflow.flow-run.Running"]


def test_the_events_command_lists_emitted_events_and_state_changes(history: Any) -> None:
    @flow
    def tiny() -> int:
        emit_event("tiny.ran", {"daskflow.resource.id": "tiny"}, payload={"n": 1})
        return 1

    tiny()
    history()
    listed = CliRunner().invoke(main, ["events", "ls", "--json"])
    assert listed.exit_code == 0, listed.output
    names = [e["event"] for e in json.loads(listed.output)]
    assert "tiny.ran" in names and "daskflow.flow-run.Completed" in names
    only = CliRunner().invoke(main, ["events", "ls", "--no-states", "--json"])
    assert [e["event"] for e in json.loads(only.output)] == ["tiny.ran"]
    table = CliRunner().invoke(main, ["events", "ls", "--event", "tiny."])
    assert "tiny.ran" in table.output and '{"n": 1}' in table.output


def test_bad_events_are_clear_errors() -> None:
    with pytest.raises(EventError, match=r"must be a dict of labels with a 'prefect.resource.id'"):
        emit_event("x.happened", {"name": "no id"})
    with pytest.raises(EventError, match=r"name must be a non-empty string"):
        emit_event("", {"prefect.resource.id": "r"})
    with pytest.raises(EventError, match=r"payload must be JSON"):
        emit_event("x.happened", {"prefect.resource.id": "r"}, payload={"when": object()})
    # History off (the tests' default): the event is made and returned, not kept.
    made = emit_event("x.happened", {"prefect.resource.id": "r"})
    assert made.event == "x.happened" and made.resource_id == "r"
