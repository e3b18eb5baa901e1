"""Prefect 3 code with the import changed (issue 16): the module paths, the options Prefect accepts,
``tags(...)``, named limits as Prefect documents them, blocks by Prefect's paths, and ``@flow`` on
methods. Contract tests run on the three runners where behaviour could differ by runner."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import dask.config
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from daskflow import flow, task
from daskflow.cli import main
from daskflow.context import tags
from daskflow.exceptions import ConcurrencyLimitError, ConfigurationError
from daskflow.task_runners import SequentialTaskRunner


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("daskflow.concurrency.sync", ["concurrency", "rate_limit"]),
        ("daskflow.concurrency.asyncio", ["concurrency", "rate_limit"]),
        ("daskflow.blocks.system", ["Secret", "String", "JSON"]),
        ("daskflow.blocks.core", ["Block"]),
        ("daskflow.utilities.annotations", ["unmapped", "allow_failure", "quote", "opaque"]),
        ("daskflow.tasks", ["task_input_hash", "exponential_backoff"]),
        ("daskflow.logging", ["get_logger", "get_run_logger", "disable_run_logger"]),
        ("daskflow.context", ["tags", "get_run_context"]),
        ("daskflow.runtime", ["flow_run", "task_run", "deployment"]),
        ("daskflow.variables", ["Variable"]),
        ("daskflow.transactions", ["IsolationLevel", "Transaction", "get_transaction"]),
        ("daskflow", ["tags", "runtime"]),
    ],
)
def test_prefect_import_paths_exist(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in names if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing}"


def test_the_annotations_are_one_set_of_classes() -> None:
    import daskflow
    from daskflow.utilities import annotations

    assert annotations.unmapped is daskflow.unmapped and annotations.quote is daskflow.quote


# -- tags(...) ---------------------------------------------------------------------------------


@task(tags=["own"])
def _tagged(x: int) -> list[str]:
    from daskflow import runtime

    return runtime.task_run.tags


def test_tags_reach_every_run_started_inside_and_nest(task_runner: Any) -> None:
    @flow(task_runner=task_runner)
    def pipeline() -> tuple[list[str], list[str]]:
        outer = _tagged.submit(1)
        with tags("inner"):
            inner = _tagged.submit(2)
        return outer.result(), inner.result()

    with tags("etl", "nightly") as current:
        assert current == {"etl", "nightly"}
        state = pipeline(return_state=True)
    assert state.result() == (["etl", "nightly", "own"], ["etl", "inner", "nightly", "own"])
    assert state.flow_run.tags == {"etl", "nightly"}
    with pytest.raises(TypeError, match=r"every tag must be a non-empty string, got 3"):
        with tags(3):  # type: ignore[arg-type]
            pass


def test_tags_are_kept_in_the_history_and_listed_by_tag(history: Any) -> None:
    @flow(task_runner=SequentialTaskRunner())
    def tagged_flow(x: int) -> list[str]:
        return _tagged(x)

    with tags("team_a%"):
        first = tagged_flow(1, return_state=True).flow_run
    second = tagged_flow(2, return_state=True).flow_run
    store = history()
    assert [r.id for r in store.list_flow_runs(tag="team_a%")] == [first.id]
    assert {r.id for r in store.list_flow_runs()} == {first.id, second.id}
    assert store.list_flow_runs(tag="team_ab") == [], "% and _ in a tag match only themselves"
    detail = store.flow_run(first.id)
    assert detail.tags == ("team_a%",) and detail.task_runs[0].tags == ("own", "team_a%")
    listed = CliRunner().invoke(main, ["runs", "ls", "--tag", "team_a%", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [run["id"] for run in json.loads(listed.output)] == [first.id]


def test_tags_from_the_context_are_concurrency_limit_tags(task_runner: Any, executions: Any) -> None:
    @task
    def load(i: int) -> int:
        started = time.time()
        time.sleep(0.02)  # a measurable stretch of work, so overlapping runs would show
        executions.record(f"load-{i}", start=started)
        return i

    @flow(task_runner=task_runner, concurrency_limit={"warehouse": 1})
    def pipeline() -> list[int]:
        with tags("warehouse"):
            return load.map(range(6)).result()

    assert pipeline() == list(range(6))
    assert executions.peak_concurrency() == 1, f"peak {executions.peak_concurrency()} under a tag limit of 1"


# -- options Prefect accepts -------------------------------------------------------------------


def test_the_options_prefect_accepts_are_accepted_at_decoration() -> None:
    @task(
        result_storage_key="out-{parameters[x]}",
        result_serializer="json",
        cache_result_in_memory=False,
        on_running=[lambda *a: None],
        on_commit=[lambda txn: None],
        on_rollback=[lambda txn: None],
        viz_return_value=[1, 2],
    )
    def t(x: int) -> int:
        return x

    @flow(result_serializer="pickle", cache_result_in_memory=False, on_running=[lambda *a: None])
    def f() -> None:
        pass

    assert t.result_serializer == "parquet" and t.persist_result is True
    assert f.result_serializer == "pickle"
    with pytest.raises(ConfigurationError, match=r"result_storage_key=.*refers to \{nope\}"):
        task(result_storage_key="{nope}")(lambda: None)
    with pytest.raises(ConfigurationError, match=r"on_commit must be a function"):
        task(on_commit=["x"])(lambda: None)


def test_hooks_on_running_and_on_commit_on_every_runner(task_runner: Any, executions: Any, tmp_path: Path) -> None:
    @task(result_storage_key="doubled-{parameters[x]}", result_storage=str(tmp_path))
    def doubled(x: int) -> int:
        return 2 * x

    @doubled.on_running
    def running(task_: Any, run: Any, state: Any) -> None:
        executions.record(f"running-{run.name}-{state.type.value}")

    @doubled.on_commit
    def committed(txn: Any) -> None:
        executions.record(f"commit-{txn.key.rsplit('-', 2)[-2]}-{txn.key.rsplit('-', 1)[-1]}-{txn.value}")

    @flow(task_runner=task_runner)
    def pipeline() -> list[int]:
        return doubled.map([1, 2]).result()

    assert pipeline() == [2, 4]
    assert sorted(executions.keys()) == [
        "commit-doubled-1-2",
        "commit-doubled-2-4",
        "running-doubled-0-RUNNING",
        "running-doubled-1-RUNNING",
    ]
    assert pipeline() == [2, 4]  # both hits under the storage key: nothing runs, nothing commits
    assert len(executions.keys()) == 4, executions.keys()


def test_result_storage_key_templates_name_the_runs_entry(task_runner: Any, executions: Any, tmp_path: Path) -> None:
    @task(result_storage_key="report-{flow_run.flow_name}-{parameters[day]}", result_storage=str(tmp_path))
    def report(day: str) -> str:
        executions.record(f"report-{day}")
        return f"report of {day}"

    @flow(task_runner=task_runner, name="daily")
    def daily(day: str) -> tuple[bool, str]:
        state = report(day, return_state=True)
        return state.is_cached(), state.result()

    first, second, other = daily("2024-05-01"), daily("2024-05-01"), daily("2024-05-02")
    assert (first[0], second[0], other[0]) == (False, True, False)
    assert second[1] == "report of 2024-05-01"
    assert sorted(executions.keys()) == ["report-2024-05-01", "report-2024-05-02"]


def test_flow_on_running_hook_sees_each_attempt() -> None:
    seen: list[tuple[str, int]] = []

    @flow(retries=1, on_running=[lambda f, run, state: seen.append((state.name, run.run_count))])
    def twice() -> int:
        if len(seen) == 1:
            raise RuntimeError("first attempt")
        return 1

    assert twice() == 1
    assert seen == [("Running", 1), ("Retrying", 2)]


# -- named limits as Prefect documents them ----------------------------------------------------


def test_concurrency_timeout_seconds_gives_up_with_a_timeout_error() -> None:
    from daskflow.concurrency.sync import concurrency

    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with concurrency("db"):
            held.set()
            release.wait(30)

    with dask.config.set({"daskflow.concurrency.limits": {"db": 1}}):
        thread = threading.Thread(target=holder, daemon=True)
        thread.start()
        assert held.wait(10)
        try:
            with pytest.raises(TimeoutError, match=r"concurrency\('db'\): no slot within timeout_seconds=0.2 .*db=1"):
                with concurrency("db", timeout_seconds=0.2):
                    pytest.fail("the slot was held by another thread")
        finally:
            release.set()
            thread.join(10)
        with concurrency("db", timeout_seconds=5):  # free again: no wait
            pass


def test_unsized_names_run_unless_strict(caplog: pytest.LogCaptureFixture) -> None:
    from daskflow.concurrency.sync import concurrency, rate_limit

    ran = []
    with caplog.at_level(logging.WARNING, logger="daskflow.concurrency"):
        with concurrency(["nowhere", "db"], occupy=1):
            ran.append("concurrency")
        rate_limit("unrated")
        ran.append("rate_limit")
    assert ran == ["concurrency", "rate_limit"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("'db', 'nowhere' have no size, so the code runs without limit" in m for m in messages), messages
    assert any("'unrated' has no rate" in m for m in messages), messages
    with pytest.raises(ConcurrencyLimitError, match=r"concurrency\('db'\): no limit of that name has a size"):
        with concurrency("db", strict=True):
            pass
    with pytest.raises(ConcurrencyLimitError, match=r"rate_limit\('unrated'\): no rate is set"):
        rate_limit("unrated", strict=True)


def test_rate_limit_called_as_a_function_waits_for_its_token(task_runner: Any) -> None:
    from daskflow.concurrency import rate_limit

    @task
    def calls(n: int) -> float:
        from daskflow.context import get_task_run_context

        for _ in range(n):
            rate_limit("api", per_second=5)  # as Prefect documents it: a call, not a block
        ctx = get_task_run_context()
        assert ctx is not None
        return ctx.task_run.slot_wait

    @flow(task_runner=task_runner)
    def pipeline() -> float:
        return calls(6)

    # A bucket of 5 tokens refilled each second: the sixth call waits for the first token to return.
    assert pipeline() >= 0.5


def test_async_concurrency_and_rate_limit(task_runner: Any, executions: Any) -> None:
    from daskflow.concurrency.asyncio import concurrency, rate_limit

    @task
    async def limited(i: int) -> int:
        await rate_limit("starts", per_second=100)
        async with concurrency("gpu"):
            started = time.time()
            await asyncio.sleep(0.02)
            executions.record(f"gpu-{i}", start=started)
        return i

    @flow(task_runner=task_runner, concurrency_limit={"gpu": 1})
    def pipeline() -> list[int]:
        return limited.map(range(4)).result()

    assert pipeline() == [0, 1, 2, 3]
    assert executions.peak_concurrency() == 1


# -- logging, blocks, annotations, methods -----------------------------------------------------


def test_disable_run_logger_lets_a_tasks_function_run_plainly() -> None:
    from daskflow.exceptions import MissingContextError
    from daskflow.logging import disable_run_logger, get_logger, get_run_logger

    @task
    def logs(x: int) -> int:
        get_run_logger().info("working on %s", x)
        return x + 1

    with pytest.raises(MissingContextError):
        logs.fn(1)
    with disable_run_logger():
        assert logs.fn(1) == 2
    assert not logging.getLogger("daskflow.task_runs").disabled, "restored on leaving"
    assert get_logger().name == "daskflow" and get_logger("etl").name == "daskflow.etl"


def test_blocks_by_prefects_paths() -> None:
    from daskflow.blocks.core import Block
    from daskflow.blocks.system import JSON, Secret, String

    class Warehouse(Block):
        host: str
        port: int = 5432
        password: SecretStr

    String(value="s3://raw").save("raw-prefix")
    Secret(value="hunter2").save("token")
    JSON(value={"a": [1]}).save("settings")
    Warehouse(host="db", password=SecretStr("pw")).save("prod")
    assert String.load("raw-prefix").value == "s3://raw"
    assert Secret.load("token").get() == "hunter2"
    assert JSON.load("settings").value == {"a": [1]}
    loaded = Warehouse.load("prod")
    assert (loaded.host, loaded.port, loaded.password.get_secret_value()) == ("db", 5432, "pw")
    with pytest.raises(Exception, match=r"port"):
        Warehouse(host="db", port="not a port", password=SecretStr("pw"))  # type: ignore[arg-type]


def test_opaque_and_quote_hand_values_over_unlooked_at(task_runner: Any) -> None:
    from daskflow.utilities.annotations import opaque, quote

    @task
    def kind(value: Any) -> str:
        return type(value).__name__

    @flow(task_runner=task_runner)
    def pipeline() -> list[str]:
        return [kind(opaque([1, 2])), kind(quote({"a": 1}))]

    assert pipeline() == ["list", "dict"]
    assert quote(3).unquote() == 3


class _Pipelines:
    factor = 10

    def __init__(self, offset: int) -> None:
        self.offset = offset

    @flow
    def shifted(self, x: int) -> int:
        return x + self.offset

    @classmethod
    @flow
    def scaled(cls, x: int) -> int:
        return x * cls.factor


def test_flows_on_methods_and_classmethods_bind_as_in_prefect() -> None:
    assert _Pipelines(5).shifted(1) == 6
    assert _Pipelines.scaled(3) == 30
    state = _Pipelines(2).shifted(x=1, return_state=True)
    assert state.result() == 3 and state.flow_run.parameters == {"x": 1}
    assert _Pipelines.shifted.name == "shifted"


def test_map_over_a_dict_iterates_its_keys_on_every_runner(task_runner: Any) -> None:
    @task
    def region(name: str) -> str:
        return name.upper()

    @task
    def regions() -> dict[str, int]:
        return {"eu": 1, "us": 2}

    @flow(task_runner=task_runner)
    def pipeline() -> tuple[list[str], list[str]]:
        return region.map({"eu": 1, "us": 2}).result(), region.map(regions.submit()).result()

    assert pipeline() == (["EU", "US"], ["EU", "US"])
