"""Tasks: the decorator, options and their errors, calls outside flows, map errors, pickling."""

from __future__ import annotations

import time
from typing import Any

import cloudpickle
import pytest

from daskflow import Task, flow, task, unmapped
from daskflow.exceptions import ConfigurationError
from daskflow.futures import DaskflowFuture
from daskflow.states import State
from daskflow.tasks import exponential_backoff, task_input_hash


def test_task_works_bare_and_called_and_keeps_the_function() -> None:
    @task
    def extract(table: str, limit: int = 10) -> str:
        """Extract a table."""
        return f"{table}:{limit}"

    @task(name="load-table", tags=["db"], retries=2)
    def load(table: str) -> str:
        return table

    assert isinstance(extract, Task) and extract.name == "extract"
    assert extract.__doc__ == "Extract a table."
    assert extract.__name__ == "extract"
    assert load.name == "load-table" and load.tags == frozenset({"db"}) and load.retries == 2
    assert extract("orders") == "orders:10"  # outside a flow: runs the function plainly


def test_with_options_returns_a_changed_copy() -> None:
    @task(retries=1)
    def job() -> int:
        return 1

    changed = job.with_options(retries=5, name="job-5")
    assert (changed.retries, changed.name) == (5, "job-5")
    assert (job.retries, job.name) == (1, "job")
    with pytest.raises(ConfigurationError, match="retries must be a whole number >= 0, got -1"):
        job.with_options(retries=-1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": "3"}, "task 'job': retries must be a whole number >= 0, got '3'"),
        ({"retry_delay_seconds": "soon"}, "task 'job': retry_delay_seconds must be a number, a list of numbers"),
        ({"retry_delay_seconds": [1, -2]}, r"retry_delay_seconds\[...\] must be a number >= 0, got -2"),
        ({"timeout_seconds": 0}, "timeout_seconds must be a number of seconds > 0, got 0"),
        ({"retry_jitter_factor": -1}, "retry_jitter_factor must be a number >= 0"),
        ({"tags": [1, 2]}, "tags must be a list of strings"),
        ({"on_failure": ["not callable"]}, "on_failure must be a function or a list of functions"),
        ({"result_serializer": "yaml"}, "result_serializer must be 'parquet'.* or 'pickle', got 'yaml'"),
        ({"cache_isolation": "strict"}, "cache_isolation must be one of None, 'none', 'serializable', got 'strict'"),
        ({"concurrency_limit": 0}, "concurrency_limit must be a whole number >= 1, got 0"),
        ({"resources": {"GPU": -1}}, r"resources must map resource names to positive amounts"),
        ({"cache_expiration": -5}, "cache_expiration must be a number of seconds > 0"),
        (
            {"task_run_name": "{nope}"},
            r"task_run_name='\{nope\}' refers to \{nope\}, which is not a parameter of job\(x\)",
        ),
        ({"retires": 1}, r"unknown option 'retires' \(did you mean 'retries'\?\)"),
    ],
)
def test_bad_options_are_clear_errors_at_decoration(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):

        @task(name="job", **options)
        def job(x: int) -> int:
            return x


def test_options_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        task(retries=-1)(lambda: None)


def test_outside_a_flow_retries_still_apply(executions: Any) -> None:
    @task(retries=2)
    def flaky() -> str:
        executions.record("flaky")
        if executions.count("flaky") < 2:
            raise OSError("transient")
        return "ok"

    assert flaky() == "ok"
    assert executions.count("flaky") == 2


def test_submit_and_map_work_outside_a_flow() -> None:
    @task
    def square(x: int) -> int:
        return x * x

    future = square.submit(4)
    assert isinstance(future, DaskflowFuture)
    assert future.result(timeout=10) == 16
    assert square.map([1, 2, 3]).result(timeout=10) == [1, 4, 9]


def test_return_state_on_direct_calls() -> None:
    @task
    def bad() -> None:
        raise ValueError("nope")

    state = bad(return_state=True)
    assert isinstance(state, State) and state.is_failed()


def test_map_errors_name_the_task_and_the_lengths() -> None:
    @task(name="pair")
    def pair(a: int, b: int) -> int:
        return a + b

    @flow
    def mismatch() -> None:
        pair.map([1, 2, 3], [1, 2])

    @flow
    def nothing_to_map() -> None:
        pair.map(1, 2)

    with pytest.raises(
        ConfigurationError, match=r"task 'pair': .map\(\) got iterables of different lengths \(a: 3, b: 2\)"
    ):
        mismatch()
    with pytest.raises(
        ConfigurationError, match=r"task 'pair': .map\(\) needs at least one iterable argument.*a=int, b=int"
    ):
        nothing_to_map()


def test_strings_are_passed_whole_by_map_and_dicts_give_their_keys() -> None:
    @task
    def describe(item: int, label: str, config: dict[str, int]) -> str:
        return f"{label}{item}{config['k']}"

    assert describe.map([1, 2], "x", unmapped({"k": 9})).result() == ["x19", "x29"]
    with pytest.raises(
        ConfigurationError, match=r"different lengths \(item: 2, config: 1 \(a dict: its keys are mapped over\)\)"
    ):
        describe.map([1, 2], "x", {"k": 9})

    @task
    def key_of(name: str) -> str:
        return name.upper()

    assert key_of.map({"eu": 1, "us": 2}).result() == ["EU", "US"]  # as in Prefect: a dict maps over its keys


def test_task_round_trips_through_cloudpickle() -> None:
    @task(retries=3, tags=["t"])
    def double(x: int) -> int:
        return 2 * x

    clone = cloudpickle.loads(cloudpickle.dumps(double))
    assert clone.name == "double" and clone.retries == 3 and clone(4) == 8


def test_positional_only_varargs_and_kwargs_are_passed_through() -> None:
    @task
    def odd(a: int, /, b: int, *rest: int, c: int = 0, **extra: int) -> tuple[Any, ...]:
        return a, b, rest, c, extra

    @flow
    def pipeline() -> tuple[Any, ...]:
        return odd(1, 2, 3, 4, c=5, d=6)

    assert pipeline() == (1, 2, (3, 4), 5, {"d": 6})


def test_exponential_backoff_and_delays_between_attempts(executions: Any) -> None:
    assert exponential_backoff(10)(3) == [10.0, 20.0, 40.0]

    @task(retries=2, retry_delay_seconds=[0.1, 0.2])
    def flaky() -> None:
        executions.record("attempt")
        raise OSError("still down")

    flaky(return_state=True)
    starts = [e["start"] for e in executions.all()]
    gaps = [round(b - a, 3) for a, b in zip(starts, starts[1:])]
    assert len(starts) == 3, f"{len(starts)} attempts"
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2, f"gaps between attempts: {gaps}, configured [0.1, 0.2]"


def test_retry_jitter_stays_within_its_factor() -> None:
    from daskflow.engine import retry_delay

    delays = [retry_delay(1.0, 1, 0, jitter=0.5) for _ in range(200)]
    assert 0.5 <= min(delays) and max(delays) <= 1.5, (min(delays), max(delays))
    assert len(set(delays)) > 1


def test_retry_condition_fn_stops_retries(executions: Any) -> None:
    def only_on_connection_errors(task_obj: Any, run: Any, state: State) -> bool:
        return isinstance(state.exception, ConnectionError)

    @task(retries=3, retry_condition_fn=only_on_connection_errors)
    def broken() -> None:
        executions.record("attempt")
        raise ValueError("bad data never heals")

    state = broken(return_state=True)
    assert state.is_failed()
    assert executions.count("attempt") == 1


def test_timeout_marks_the_task_timed_out_on_time() -> None:
    @task(timeout_seconds=0.2)
    def stuck() -> None:
        time.sleep(3)

    started = time.monotonic()
    state = stuck(return_state=True)
    elapsed = time.monotonic() - started
    assert state.name == "TimedOut" and state.is_failed(), state
    assert "timeout_seconds=0.2" in (state.message or "")
    assert elapsed < 1.5, f"TimedOut after {elapsed:.2f} s for timeout_seconds=0.2"


def test_timed_out_tasks_are_retried(executions: Any) -> None:
    @task(timeout_seconds=0.1, retries=1)
    def slow_then_fast() -> str:
        executions.record("attempt")
        if executions.count("attempt") == 1:
            time.sleep(1)
        return "done"

    assert slow_then_fast() == "done"


def test_task_hooks_receive_task_run_and_state() -> None:
    seen: list[tuple[str, str, str]] = []

    @task(on_completion=[lambda t, r, s: seen.append(("done", t.name, s.name))])
    def ok() -> int:
        return 1

    @task
    def bad() -> None:
        raise ValueError("x")

    @bad.on_failure
    def tell(t: Any, r: Any, s: State) -> None:
        seen.append(("failed", r.name, s.name))

    @flow
    def pipeline() -> None:
        ok()
        bad.submit()

    pipeline()
    assert ("done", "ok", "Completed") in seen
    assert ("failed", "bad-0", "Failed") in seen


def test_task_input_hash_is_importable_as_in_prefect() -> None:
    assert callable(task_input_hash)
