"""Artifacts: created in flows and tasks on every runner, kept in the run history against their runs.

Each test reads the run store back through its own API after the history writer
has flushed (the ``history`` fixture), as ``daskflow artifacts ls`` would: the
artifact's run ids, type and data in the agreed shapes (markdown text, JSON rows,
a JSON link object). Validation errors must say what was wrong and how to fix it;
with history off, creating an artifact is a silent no-op.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from daskflow import flow, task
from daskflow.artifacts import (
    MAX_TABLE_ROWS,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from daskflow.exceptions import ArtifactError
from daskflow.task_runners import DaskTaskRunner


def _flow_run_id(store: Any, flow_name: str) -> str:
    [summary] = store.list_flow_runs(flow_name=flow_name)
    return str(summary.id)


def test_artifacts_are_kept_against_their_runs(task_runner: Any, history: Any) -> None:
    @task
    def summarize(rows: int) -> str:
        return create_table_artifact([{"rows": rows, "ok": True}], key="summary", description="row count")

    @task
    def publish(i: int) -> str:
        return create_link_artifact(f"https://example.com/part/{i}", link_text=f"part {i}", key="parts")

    @flow(name="artifacts-everywhere", task_runner=task_runner)
    def pipeline() -> dict[str, Any]:
        body_id = create_markdown_artifact("# Report\n\nall *good*", key="report", description="the flow's report")
        table_id = summarize(3)
        link_ids = publish.map(range(3)).result()
        return {"body": body_id, "table": table_id, "links": link_ids}

    ids = pipeline()
    store = history()
    flow_run_id = _flow_run_id(store, "artifacts-everywhere")
    task_ids = {run.name: run.id for run in store.task_runs(flow_run_id)}

    [report] = store.artifacts(flow_run_id=flow_run_id, key="report")
    assert (report.id, report.type, report.task_run_id) == (ids["body"], "markdown", None), report
    assert report.data == "# Report\n\nall *good*" and report.description == "the flow's report"

    [summary] = store.artifacts(flow_run_id=flow_run_id, key="summary")
    assert (summary.id, summary.type, summary.task_run_id) == (ids["table"], "table", task_ids["summarize-0"]), summary
    assert json.loads(summary.data) == [{"rows": 3, "ok": True}]

    parts = store.artifacts(flow_run_id=flow_run_id, key="parts")
    assert sorted(a.id for a in parts) == sorted(ids["links"]), parts
    by_task = {a.task_run_id: json.loads(a.data) for a in parts}
    assert by_task == {
        task_ids[f"publish-{i}"]: {"link": f"https://example.com/part/{i}", "link_text": f"part {i}"} for i in range(3)
    }, by_task
    assert all(a.type == "link" and a.flow_run_id == flow_run_id for a in parts)
    # Artifacts are not log records: the run's logs hold none of them.
    assert "daskflow.artifacts" not in {log.logger for log in store.logs(flow_run_id)}


def test_an_artifact_of_a_failing_task_is_kept(task_runner: Any, history: Any) -> None:
    seen: list[Any] = []

    @task
    def fine() -> int:
        return 1

    @task
    def broken() -> None:
        create_markdown_artifact("half-way there", key="progress")
        raise ValueError("the input was empty")

    @flow(name="artifact-then-failure", task_runner=task_runner, on_failure=[lambda f, run, s: seen.append(run)])
    def pipeline() -> None:
        fine()
        broken()

    with pytest.raises(ValueError, match="the input was empty"):
        pipeline()
    store = history()
    flow_run_id = _flow_run_id(store, "artifact-then-failure")
    [kept] = store.artifacts(key="progress")
    [failed] = [run for run in store.task_runs(flow_run_id) if run.name == "broken-0"]
    assert (kept.flow_run_id, kept.task_run_id, kept.data) == (flow_run_id, failed.id, "half-way there"), kept
    assert failed.state_name == "Failed"
    # The flow run counts its task runs, and nothing for the artifact.
    [flow_run] = seen
    assert flow_run.task_run_counts() == {"Completed": 1, "Failed": 1}, flow_run.task_run_counts()
    [summary] = store.list_flow_runs(flow_name="artifact-then-failure")
    assert summary.task_runs == 2, summary


def test_a_worker_thread_of_this_process_keeps_each_artifact_once(dask_inprocess_client: Any, history: Any) -> None:
    # processes=False: the artifact is recorded where it is made, and the copy the
    # worker's forwarder sends back to this same process is skipped.
    @task
    def publish(i: int) -> None:
        create_markdown_artifact(f"item {i}", key="in-process")

    @flow(name="in-process", task_runner=DaskTaskRunner(client=dask_inprocess_client))
    def pipeline() -> None:
        publish.map(range(4)).result()

    pipeline()
    store = history()
    kept = store.artifacts(key="in-process")
    assert sorted(a.data for a in kept) == [f"item {i}" for i in range(4)], kept
    assert all(a.flow_run_id == _flow_run_id(store, "in-process") and a.task_run_id for a in kept)


def test_a_dataframe_becomes_json_rows(history: Any) -> None:
    frame = pd.DataFrame(
        {
            "n": np.array([1, 2], dtype="int64"),
            "x": [1.5, float("nan")],
            "when": [pd.Timestamp("2024-01-02 03:04:05"), pd.NaT],
            "tz": [pd.Timestamp("2024-01-02", tz="UTC"), pd.Timestamp("2024-06-01 12:00", tz="UTC")],
            "label": ["a", None],
            "flag": [True, False],
        }
    )
    create_table_artifact(frame, key="frame")  # outside any run: kept with no run ids
    create_table_artifact(frame.set_index("label"), key="indexed")
    create_table_artifact(frame.iloc[[1]], key="sliced")  # index [1] is not the default 0..n-1
    store = history()

    [plain] = store.artifacts(key="frame")
    assert (plain.flow_run_id, plain.task_run_id) == (None, None)
    assert json.loads(plain.data) == [
        {
            "n": 1,
            "x": 1.5,
            "when": "2024-01-02T03:04:05",
            "tz": "2024-01-02T00:00:00+00:00",
            "label": "a",
            "flag": True,
        },
        {"n": 2, "x": None, "when": None, "tz": "2024-06-01T12:00:00+00:00", "label": None, "flag": False},
    ], plain.data
    assert "NaN" not in plain.data and "NaT" not in plain.data  # strict JSON, readable anywhere

    [indexed] = store.artifacts(key="indexed")
    assert [list(row)[0] for row in json.loads(indexed.data)] == ["label", "label"]  # a named index is a leading column
    assert [row["label"] for row in json.loads(indexed.data)] == ["a", None]

    [sliced] = store.artifacts(key="sliced")
    assert json.loads(sliced.data)[0]["index"] == 1 and json.loads(sliced.data)[0]["n"] == 2


def test_other_table_shapes_become_json_rows(history: Any) -> None:
    create_table_artifact({"city": ["Oslo", "Lima"], "temp": [np.float32(-3.5), math.inf]}, key="columns")
    create_table_artifact(
        [[1, "a", np.datetime64("2024-01-02T03:04:05.123456789")], [2, "b", np.datetime64("NaT")]], key="lists"
    )
    create_table_artifact([{"k": 1, 2: {"nested": [np.int64(3)]}}, {"k": Path("/tmp/x")}], key="dicts")
    store = history()
    [columns] = store.artifacts(key="columns")
    assert json.loads(columns.data) == [{"city": "Oslo", "temp": -3.5}, {"city": "Lima", "temp": None}]
    [lists] = store.artifacts(key="lists")
    assert json.loads(lists.data) == [
        {"0": 1, "1": "a", "2": "2024-01-02T03:04:05.123456"},
        {"0": 2, "1": "b", "2": None},
    ]
    [dicts] = store.artifacts(key="dicts")
    assert json.loads(dicts.data) == [{"k": 1, "2": {"nested": [3]}}, {"k": "/tmp/x"}]


@pytest.mark.parametrize(
    ("create", "match"),
    [
        (
            lambda: create_markdown_artifact("x", key="Daily Report"),
            r"'Daily Report'.*lowercase letters, digits and dashes.*key='daily-report'",
        ),
        (lambda: create_markdown_artifact("x", key="a_b"), r"'a_b' is not valid.*key='a-b'"),
        (lambda: create_markdown_artifact("x", key=""), r"'' is not valid"),
        (lambda: create_markdown_artifact(b"x"), r"markdown as a str, got bytes"),  # type: ignore[arg-type]
        (lambda: create_link_artifact(Path("/tmp/report.html")), r"link as a str URL, got PosixPath.*as_uri"),  # type: ignore[arg-type]
        (lambda: create_table_artifact(pd.Series([1, 2])), r"cannot make a table of a Series.*to_frame"),
        (lambda: create_table_artifact("a,b\n1,2"), r"cannot make a table of a str"),
        (
            lambda: create_table_artifact({"a": [1, 2, 3], "b": [1, 2]}),
            r"different lengths \(a=3, b=2\).*pad the short columns",
        ),
        (lambda: create_table_artifact({"a": 1}), r"value for 'a' is a int, not a column"),
        (lambda: create_table_artifact([{"a": 1}, [1]]), r"items are dict, list.*all dicts"),
        (lambda: create_table_artifact(pd.DataFrame([[1, 2]], columns=["a", "a"])), r"duplicate column names \['a'\]"),
        (
            lambda: create_table_artifact([[i] for i in range(MAX_TABLE_ROWS + 1)]),
            r"10,001 rows.*too large.*persist_result",
        ),
        (lambda: create_markdown_artifact("x" * (6 * 2**20)), r"6\.0 MiB.*too large.*persist_result"),
    ],
)
def test_bad_artifacts_are_refused_saying_how_to_fix_them(create: Any, match: str, history: Any) -> None:
    with pytest.raises(ArtifactError, match=match):
        create()
    store = history()
    assert store.artifacts() == []  # nothing half-made was kept


def test_artifact_errors_are_value_and_type_errors() -> None:
    with pytest.raises(ValueError):
        create_markdown_artifact("x", key="No")
    with pytest.raises(TypeError):
        create_link_artifact(42)  # type: ignore[arg-type]


def test_with_history_off_artifacts_are_a_silent_no_op(task_runner: Any, daskflow_home: Path, capsys: Any) -> None:
    @task
    def publish() -> str:
        return create_table_artifact({"a": [1]}, key="off")

    @flow(name="history-off", task_runner=task_runner)
    def pipeline() -> tuple[str, str]:
        return create_markdown_artifact("body", key="off"), publish()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        body_id, task_id = pipeline()
        outside_id = create_link_artifact("https://example.com")
    assert len({body_id, task_id, outside_id}) == 3 and all(len(i) == 36 for i in (body_id, task_id, outside_id))
    assert not list(daskflow_home.rglob("*.db")), list(daskflow_home.rglob("*"))
    assert "artifact" not in capsys.readouterr().err  # never on the console either
