"""Prefect 3's documented examples for events and artifacts, as our own tests (issue 16).

Events: the docs emit a custom event from plain Python code (a resource id,
optionally a payload and related resources) and show a flow run's state changes
as events. Artifacts: the docs create a link, a markdown report and a table
(from a list of dicts, a dict of lists or a list of lists) in flows and tasks,
and a progress artifact updated as work advances, and an image. Same
behaviours here, with daskflow imported instead of prefect, kept against the
run that made them on every runner.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from daskflow import flow, task
from daskflow.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from daskflow.events import Event, emit_event, list_events


def test_a_custom_event_from_plain_code_is_kept(history: Any) -> None:
    def greet(name: str = "kiki") -> None:
        emit_event(event=f"{name}.sent.event!", resource={"prefect.resource.id": f"coder.{name}"})

    greet()
    greet("ada")
    made = emit_event(
        event="order.shipped",
        resource={"prefect.resource.id": "shop.order.17", "prefect.resource.name": "order 17"},
        payload={"items": 3, "express": True},
        related=[{"prefect.resource.id": "shop.customer.5", "prefect.resource.role": "customer"}],
    )
    assert isinstance(made, Event) and made.event == "order.shipped"
    history()
    sent = sorted((e.event, e.resource_id) for e in list_events() if e.event.endswith(".sent.event!"))
    assert sent == [("ada.sent.event!", "coder.ada"), ("kiki.sent.event!", "coder.kiki")]
    [shipped] = list_events(prefix="order.")
    assert (shipped.id, shipped.payload, shipped.resource_id) == (
        made.id,
        {"items": 3, "express": True},
        "shop.order.17",
    )
    assert shipped.related == [{"prefect.resource.id": "shop.customer.5", "prefect.resource.role": "customer"}]


def test_a_flow_runs_state_changes_are_events(task_runner: Any, history: Any) -> None:
    @task
    def step() -> int:
        return 1

    @flow(task_runner=task_runner)
    def observed() -> int:
        emit_event(event="observed.started", resource={"prefect.resource.id": "observed.demo"})
        return step()

    state = observed(return_state=True)
    assert state.result() == 1
    history()
    run_events = [e.event for e in list_events(resource_id=f"daskflow.flow-run.{state.flow_run.id}")]
    assert "daskflow.flow-run.Running" in run_events and "daskflow.flow-run.Completed" in run_events, run_events
    assert [e.event for e in list_events(prefix="observed.")] == ["observed.started"]


def test_link_markdown_and_table_artifacts_in_flows_and_tasks(task_runner: Any, history: Any) -> None:
    @task
    def report(total: int) -> None:
        create_markdown_artifact(
            key="gtm-report",
            markdown=f"# Sales\n\n| region | total |\n|---|---|\n| eu | {total} |\n",
            description="Quarterly sales",
        )

    @flow(task_runner=task_runner)
    def quarterly() -> None:
        create_link_artifact(
            key="irregular-data", link="https://example.org/data.csv", description="## Highly variable data"
        )
        create_table_artifact(
            key="reachout",
            table=[{"customer": "ana", "score": 0.9}, {"customer": "bo", "score": 0.4}],
            description="who to contact",
        )
        create_table_artifact(key="columns", table={"customer": ["ana", "bo"], "score": [0.9, 0.4]})
        create_table_artifact(key="rows", table=[["ana", 0.9], ["bo", 0.4]])
        report.submit(120).result()

    state = quarterly(return_state=True)
    assert state.is_completed(), state
    store = history()
    [link] = store.artifacts(key="irregular-data")
    assert link.type == "link" and "https://example.org/data.csv" in link.data
    assert link.description == "## Highly variable data" and link.flow_run_id == state.flow_run.id
    [markdown] = store.artifacts(key="gtm-report")
    assert markdown.type == "markdown" and "| eu | 120 |" in markdown.data
    assert markdown.task_run_id == state.flow_run.task_runs[0].id, "kept against the task run that made it"
    for key in ("reachout", "columns", "rows"):
        [table] = store.artifacts(key=key)
        assert table.type == "table", table
        text = table.data
        assert "ana" in text and "0.9" in text and "bo" in text, (key, text)
    assert json.loads(store.artifacts(key="reachout")[0].data)[0] == {"customer": "ana", "score": 0.9}


def test_progress_goes_up_as_work_is_done_and_an_image_is_kept(history: Any) -> None:
    @task
    def load(chunks: int) -> str:
        progress_id = create_progress_artifact(progress=0.0, key="load-progress", description="loading")
        for done in range(1, chunks + 1):
            update_progress_artifact(artifact_id=progress_id, progress=100 * done / chunks)
        create_image_artifact(image_url="https://example.org/chart.png", key="chart", description="the chart")
        return progress_id

    @flow
    def loading() -> str:
        return load(4)

    loading()
    store = history()
    values = sorted(json.loads(r.data)["progress"] for r in store.artifacts(key="load-progress"))
    assert values == [0.0, 25.0, 50.0, 75.0, 100.0]
    [chart] = store.artifacts(key="chart")
    assert chart.type == "image" and "https://example.org/chart.png" in chart.data


@pytest.mark.parametrize("key", ["Has-Capitals", "under_score", "with space"])
def test_an_artifact_key_prefect_refuses_is_refused(key: str) -> None:
    """Prefect's artifact keys are lowercase letters, numbers and dashes."""
    with pytest.raises(ValueError, match="key"):
        create_markdown_artifact("# x", key=key)


def test_artifacts_are_awaited_in_an_async_flow_or_called_plainly(history: Any) -> None:
    """Prefect's artifact functions are awaited in async code; the plain call must not lose the artifact."""
    import asyncio

    @flow
    async def async_report() -> tuple[str, str]:
        awaited = await create_markdown_artifact("# awaited", key="awaited-report")
        plain = create_markdown_artifact("# plain", key="plain-report")
        progress = await create_progress_artifact(10.0, key="async-progress")
        await update_progress_artifact(progress, 90.0)
        return awaited, plain

    awaited, plain = asyncio.run(async_report())
    assert type(awaited) is str and isinstance(plain, str)
    store = history()
    assert [a.id for a in store.artifacts(key="awaited-report")] == [awaited]
    assert [a.id for a in store.artifacts(key="plain-report")] == [plain]
    assert sorted(json.loads(a.data)["progress"] for a in store.artifacts(key="async-progress")) == [10.0, 90.0]
