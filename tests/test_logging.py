"""Run loggers and log_prints."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest

from daskflow import flow, get_run_logger, task
from daskflow.exceptions import MissingContextError
from daskflow.task_runners import SequentialTaskRunner


def test_run_logger_records_carry_the_run_names(caplog: pytest.LogCaptureFixture) -> None:
    @task(name="extract-table")
    def extract() -> None:
        get_run_logger().info("extracted %d rows", 42)

    @flow(name="etl")
    def etl() -> None:
        get_run_logger().warning("starting")
        extract()

    with caplog.at_level(logging.INFO, logger="daskflow"):
        etl()
    task_record = next(r for r in caplog.records if r.getMessage() == "extracted 42 rows")
    assert task_record.task_name == "extract-table"  # type: ignore[attr-defined]
    assert task_record.task_run_name == "extract-table-0"  # type: ignore[attr-defined]
    assert task_record.flow_name == "etl"  # type: ignore[attr-defined]
    assert task_record.name == "daskflow.task_runs"
    flow_record = next(r for r in caplog.records if r.getMessage() == "starting")
    assert flow_record.levelname == "WARNING" and flow_record.flow_name == "etl"  # type: ignore[attr-defined]
    assert flow_record.task_run_id is None  # type: ignore[attr-defined]


def test_get_run_logger_outside_a_run_is_a_clear_error() -> None:
    with pytest.raises(MissingContextError, match="only be called while a @flow or @task function is running"):
        get_run_logger()


def test_log_prints_turns_prints_into_records(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    @task
    def chatty() -> None:
        print("from the task", 1)

    @task(log_prints=False)
    def quiet() -> None:
        print("stays on stdout")

    @flow(log_prints=True)
    def etl() -> None:
        print("from the flow")
        chatty()
        quiet()

    with caplog.at_level(logging.INFO, logger="daskflow"):
        etl()
    messages = [r.getMessage() for r in caplog.records]
    assert "from the flow" in messages and "from the task 1" in messages
    assert "stays on stdout" not in messages
    out = capsys.readouterr().out
    assert "stays on stdout" in out and "from the flow" not in out
    print("outside any run")
    assert "outside any run" in capsys.readouterr().out


def test_console_format_names_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    @flow(name="console-check")
    def noisy() -> None:
        get_run_logger().info("hello console")

    noisy()
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if "hello console" in l)
    assert "| INFO    | Flow run '" in line, line


class _Value:
    """A flow's return value, watched by a weak reference."""


def test_a_handler_that_keeps_records_keeps_no_run_value_alive() -> None:
    """The "Finished in state" records carry the state as text: a handler that keeps its records (a
    notebook's, pytest's capture, a MemoryHandler) must not keep the run's value, its task runs and
    their states alive (after a map of 100,000 items, all of them)."""
    kept: list[logging.LogRecord] = []

    class Keeping(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    @task
    def make() -> _Value:
        return _Value()

    @flow(task_runner=SequentialTaskRunner())
    def pipeline() -> _Value:
        return make()

    handler = Keeping(level=logging.DEBUG)
    logger = logging.getLogger("daskflow")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # the task run's "Finished in state" is a DEBUG record
    try:
        value = weakref.ref(pipeline())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    gc.collect()
    finished = [record for record in kept if record.getMessage().startswith("Finished in state")]
    assert len(finished) == 2, [record.getMessage() for record in kept]
    assert value() is None, "a kept record holds the run's value"
