"""Variables (Prefect's ``prefect.variables.Variable``): JSON values by name in the run store, read
from flows and tasks on every runner, and the ``daskflow variable`` commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from daskflow import flow, task
from daskflow.cli import main
from daskflow.variables import Variable, VariableError


def test_set_get_overwrite_and_unset_as_prefect_documents() -> None:
    assert Variable.get("batch_size") is None
    assert Variable.get("batch_size", default=100) == 100
    made = Variable.set("batch_size", 500, tags=["config"])
    assert (made.name, made.value, made.tags) == ("batch_size", 500, ["config"])
    assert Variable.get("batch_size") == 500
    with pytest.raises(VariableError, match=r"'batch_size' already exists.*overwrite=True"):
        Variable.set("batch_size", 1000)
    assert Variable.get("batch_size") == 500, "a refused set changed nothing"
    Variable.set("batch_size", 1000, overwrite=True)
    assert Variable.get("batch_size") == 1000
    assert Variable.unset("batch_size") is True
    assert Variable.unset("batch_size") is False
    assert Variable.get("batch_size", default="gone") == "gone"


@pytest.mark.parametrize(
    "value",
    ["s3://bucket/raw", 3, 2.5, True, None, [1, "two", None], {"eu": {"bucket": "b", "shards": [1, 2]}}],
)
def test_every_json_value_comes_back_as_it_went_in(value: Any) -> None:
    Variable.set("v", value)
    assert Variable.get("v") == value and type(Variable.get("v")) is type(value)


def test_bad_names_and_values_are_clear_errors() -> None:
    with pytest.raises(VariableError, match=r"Invalid variable name 'Batch Size'.*lowercase"):
        Variable.set("Batch Size", 1)
    with pytest.raises(VariableError, match=r"'when': its value must be JSON.*got datetime.*isoformat"):
        import datetime

        Variable.set("when", datetime.datetime(2024, 5, 1))
    with pytest.raises(VariableError, match=r"must be JSON.*got float"):
        Variable.set("nan", float("nan"))
    assert Variable.list() == []


def test_async_spellings() -> None:
    async def main_() -> tuple[Any, Any, bool]:
        await Variable.aset("region", "eu")
        got = await Variable.aget("region")
        missing = await Variable.aget("nope", default=0)
        return got, missing, await Variable.aunset("region")

    assert asyncio.run(main_()) == ("eu", 0, True)


def _read_in_task(url: str) -> Any:
    @task
    def read(name: str) -> Any:
        # A Dask worker process has its own environment: the test gives the store's URL explicitly,
        # as a deployment gives it through daskflow.runstore.url.
        return Variable.get(name, url=url)

    return read


def test_flows_and_tasks_read_variables_on_every_runner(task_runner: Any, daskflow_home: Path) -> None:
    url = f"sqlite:///{daskflow_home / 'runs.db'}"
    Variable.set("threshold", {"min": 3}, url=url)
    read = _read_in_task(url)

    @flow(task_runner=task_runner)
    def pipeline() -> tuple[Any, Any]:
        return Variable.get("threshold", url=url), read.submit("threshold").result()

    assert pipeline() == ({"min": 3}, {"min": 3})


def test_the_variable_commands() -> None:
    cli = CliRunner()
    done = cli.invoke(main, ["variable", "set", "batch_size", "500", "--tag", "config"])
    assert done.exit_code == 0, done.output
    assert cli.invoke(main, ["variable", "set", "bucket", "s3://raw"]).exit_code == 0
    assert Variable.get("batch_size") == 500 and Variable.get("bucket") == "s3://raw"
    again = cli.invoke(main, ["variable", "set", "batch_size", "600"])
    assert again.exit_code == 2 and "already exists" in again.output and "overwrite" in again.output
    assert cli.invoke(main, ["variable", "set", "batch_size", "600", "--overwrite"]).exit_code == 0
    got = cli.invoke(main, ["variable", "get", "batch_size"])
    assert got.exit_code == 0 and json.loads(got.output) == 600
    listed = cli.invoke(main, ["variable", "ls", "--json"])
    assert [(v["name"], v["value"], v["tags"]) for v in json.loads(listed.output)] == [
        ("batch_size", 600, []),
        ("bucket", "s3://raw", []),
    ]
    table = cli.invoke(main, ["variable", "ls"])
    assert "batch_size" in table.output and "600" in table.output
    assert cli.invoke(main, ["variable", "unset", "bucket"]).exit_code == 0
    missing = cli.invoke(main, ["variable", "unset", "bucket"])
    assert missing.exit_code == 2 and "No variable named 'bucket'" in missing.output
    bad = cli.invoke(main, ["variable", "get", "Not OK"])
    assert bad.exit_code == 2 and "Invalid variable name" in bad.output
