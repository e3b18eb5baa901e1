"""Prefect 3's other artifacts (issue 16, item 8): progress (created, then updated), image, and the
``Artifact`` object; kept against their runs on every runner."""

from __future__ import annotations

import json
from typing import Any

import pytest

from daskflow import flow, task
from daskflow.artifacts import Artifact, create_image_artifact, create_progress_artifact, update_progress_artifact
from daskflow.exceptions import ArtifactError


@task
def _load(parts: int) -> str:
    progress = create_progress_artifact(0, key="load-progress", description="rows loaded")
    for done in range(1, parts + 1):
        update_progress_artifact(progress, 100 * done / parts)
    create_image_artifact("https://example.org/chart.png", key="load-chart")
    return progress


def test_progress_and_image_artifacts_on_every_runner(task_runner: Any, history: Any) -> None:
    @flow(task_runner=task_runner)
    def pipeline() -> tuple[str, str | None]:
        progress_id = _load.submit(4).result()
        made = Artifact(type="markdown", key="summary", data="# done").create()
        return progress_id, made.id

    state = pipeline(return_state=True)
    progress_id, summary_id = state.result()
    store = history()
    rows = store.artifacts(key="load-progress")
    assert len(rows) == 5, [r.data for r in rows]
    values = sorted(json.loads(r.data)["progress"] for r in rows)
    assert values == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert {r.task_run_id for r in rows} == {state.flow_run.task_runs[0].id}
    assert all(json.loads(r.data).get("updates") == progress_id for r in rows if r.id != progress_id)
    assert all(r.description == "rows loaded" for r in rows)
    [chart] = store.artifacts(key="load-chart")
    assert (chart.type, json.loads(chart.data)) == ("image", {"image_url": "https://example.org/chart.png"})
    latest = Artifact.get("load-progress")
    assert latest is not None and latest.type == "progress" and latest.data["progress"] == 100.0
    summary = Artifact.get("summary")
    assert summary is not None and (summary.id, summary.data, summary.type) == (summary_id, "# done", "markdown")
    assert Artifact.get("never-made") is None


def test_bad_artifact_input_is_a_clear_error() -> None:
    with pytest.raises(ArtifactError, match=r"progress is a number from 0 to 100.*got 150"):
        create_progress_artifact(150)
    with pytest.raises(ArtifactError, match=r"image's URL"):
        create_image_artifact("")
    with pytest.raises(ArtifactError, match=r"type 'video' is not one of"):
        Artifact(type="video", data="x").create()
