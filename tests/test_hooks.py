"""Hooks, run names and the final-state set: each defined once, the same for tasks, flows and compile."""

from __future__ import annotations

from typing import Any

import pytest

import daskflow
from daskflow import flow, task
from daskflow.engine.hooks import hooks_for
from daskflow.exceptions import CompileError
from daskflow.states import (
    FINAL_TYPE_NAMES,
    FINAL_TYPES,
    Cached,
    Cancelled,
    Completed,
    Crashed,
    Failed,
    Pending,
    Running,
    State,
    StateType,
)


def test_the_final_state_set_is_the_one_every_module_uses() -> None:
    from daskflow.cli import runs as cli_runs
    from daskflow.runstore import leases
    from daskflow.server import actions, concurrency
    from daskflow.task_runners import dask_events, dask_protocol

    assert {t.value for t in FINAL_TYPES} == FINAL_TYPE_NAMES == {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    used = {
        "runstore.leases": set(leases.FINAL_STATE_TYPES),
        "server.concurrency": set(concurrency._FINAL),
        "server.actions": set(actions.FINAL_TYPES),
        "cli.runs": set(cli_runs._FINAL_TYPES),
        "dask_protocol": set(dask_protocol._FINAL_TYPES),
        "dask_events": set(dask_events._FINAL_TYPES),
    }
    assert all(names == FINAL_TYPE_NAMES for names in used.values()), used
    for state_type in StateType:
        assert State(state_type).is_final() == (state_type.value in FINAL_TYPE_NAMES), state_type


def test_which_hooks_a_state_calls_is_one_rule_for_tasks_and_flows() -> None:
    def h(name: str) -> Any:
        def hook(*args: Any) -> None:
            pass

        hook.__name__ = name
        return hook

    @task(on_completion=[h("t_done")], on_failure=[h("t_failed")], on_running=[h("t_running")])
    def t() -> None:
        pass

    @flow(
        on_completion=[h("f_done")],
        on_failure=[h("f_failed")],
        on_crashed=[h("f_crashed")],
        on_cancellation=[h("f_cancelled")],
        on_running=[h("f_running")],
    )
    def f() -> None:
        pass

    def names(options: Any, state: State) -> list[str]:
        return [hook.__name__ for hook in hooks_for(options, state)]

    assert names(t.options, Completed(1)) == names(t.options, Cached(1)) == ["t_done"]
    # A task has no on_crashed: its infrastructure failing is its failure.
    assert names(t.options, Failed("x")) == names(t.options, Crashed("x")) == ["t_failed"]
    assert names(t.options, Cancelled("x")) == names(t.options, Pending()) == []
    assert names(t.options, Running()) == ["t_running"]
    assert names(f.options, Completed(1)) == ["f_done"]
    assert names(f.options, Failed("x")) == ["f_failed"]
    assert names(f.options, Crashed("x")) == ["f_crashed"]
    assert names(f.options, Cancelled("x")) == ["f_cancelled"]
    assert names(f.options, Running()) == ["f_running"]


def test_a_task_run_calls_its_hooks_with_the_task_the_run_and_the_state() -> None:
    calls: list[tuple[str, str, str]] = []

    def record(owner: Any, run: Any, state: State) -> None:
        calls.append((owner.name, run.name, state.name))

    def broken(owner: Any, run: Any, state: State) -> None:
        raise RuntimeError("a broken hook never changes the run")

    @task(on_running=[record], on_failure=[broken, record], task_run_name="load-{day}")
    def load(day: str) -> None:
        raise ValueError(day)

    @flow
    def pipeline() -> State:
        return load.submit("mon", return_state=True)

    state = pipeline(return_state=True)
    assert state.is_failed(), state
    assert calls == [("load", "load-mon", "Running"), ("load", "load-mon", "Failed")], calls


def test_a_run_name_template_fails_in_the_same_words_in_a_task_a_flow_and_compile() -> None:
    @task(task_run_name=lambda: 1 / 0)
    def t() -> int:
        return 1

    @flow(flow_run_name=lambda: {}["missing"])
    def bad_flow_name() -> None:
        pass

    @flow
    def calls_t() -> State:
        return t(return_state=True)

    flow_state = bad_flow_name(return_state=True)
    assert flow_state.is_failed()
    assert flow_state.message.startswith("flow 'bad-flow-name': flow_run_name <function"), flow_state.message
    assert flow_state.message.endswith("could not be formed: KeyError: 'missing'"), flow_state.message
    assert isinstance(flow_state.exception, KeyError)

    task_state = calls_t(return_state=True)
    assert task_state.is_failed()
    assert "task 't': task_run_name <function" in task_state.message, task_state.message
    assert "could not be formed: ZeroDivisionError: division by zero" in task_state.message, task_state.message

    with pytest.raises(CompileError, match=r"flow 'bad-flow-name': flow_run_name .* could not be formed: KeyError"):
        daskflow.compile(bad_flow_name)


def test_format_string_run_names_take_the_parameters(task_runner: Any) -> None:
    @task(task_run_name="square-{x}")
    def square(x: int) -> int:
        return x * x

    @flow(task_runner=task_runner, flow_run_name="squares-of-{n}")
    def squares(n: int) -> list[int]:
        return square.map(range(n)).result()

    state = squares(3, return_state=True)
    assert state.result() == [0, 1, 4]
    run = state.flow_run
    assert run.name == "squares-of-3"
    assert sorted(r.name for r in run.task_runs) == ["square-0", "square-1", "square-2"]
