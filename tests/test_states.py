"""States: kinds, names, results and errors, and that they survive pickling."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest

from daskflow.exceptions import CancelledRunError, CrashedRunError, ResultError
from daskflow.states import (
    Cached,
    Cancelled,
    Completed,
    Crashed,
    Failed,
    KnownValue,
    Pending,
    RemoteValue,
    Running,
    StateType,
    TimedOut,
    item_state,
)


def test_kinds_and_names() -> None:
    assert Completed(1).type is StateType.COMPLETED and Completed(1).name == "Completed"
    cached = Cached(2)
    assert (
        cached.type is StateType.COMPLETED and cached.name == "Cached" and cached.is_cached() and cached.is_completed()
    )
    timed_out = TimedOut("too slow")
    assert timed_out.type is StateType.FAILED and timed_out.is_failed() and timed_out.is_timed_out()
    assert Crashed("worker died").is_crashed() and Cancelled().is_cancelled()
    assert Pending().is_pending() and Running().is_running()
    assert all(s.is_final() for s in (Completed(), Cached(), Failed(), TimedOut(), Crashed(), Cancelled()))
    assert not any(s.is_final() for s in (Pending(), Running()))


def test_result_returns_the_value_or_raises_the_error() -> None:
    assert Completed({"rows": 3}).result() == {"rows": 3}
    error = ValueError("bad row")
    failed = Failed(exception=error)
    assert failed.message == "ValueError: bad row"
    with pytest.raises(ValueError, match="bad row"):
        failed.result()
    assert failed.result(raise_on_failure=False) is error
    assert "Traceback" in (failed.traceback or "") or failed.traceback is not None
    with pytest.raises(CrashedRunError, match="worker died"):
        Crashed("worker died").result()
    with pytest.raises(CancelledRunError):
        Cancelled().result()


def test_result_of_a_running_state_says_to_wait() -> None:
    with pytest.raises(Exception, match="has no result yet"):
        Running().result()


def test_timestamp_is_timezone_aware() -> None:
    state = Completed()
    assert state.timestamp.tzinfo is UTC
    assert abs((datetime.now(UTC) - state.timestamp).total_seconds()) < 5


def test_states_pickle_with_their_data_and_traceback_text() -> None:
    try:
        raise KeyError("col")
    except KeyError as exc:
        failed = Failed(exception=exc)
    clone = pickle.loads(pickle.dumps(failed))
    assert clone.name == "Failed" and clone.message == failed.message
    assert clone.traceback == failed.traceback and "KeyError" in (clone.traceback or "")
    assert isinstance(clone.exception, KeyError)
    assert pickle.loads(pickle.dumps(Cached([1, 2]))).result() == [1, 2]


def test_repr_is_readable() -> None:
    assert repr(Completed(3)) == "Completed(type=COMPLETED, result=int)"
    assert repr(Failed("boom")) == "Failed(message='boom', type=FAILED)"


def test_states_know_no_runs_and_no_html() -> None:
    """``states`` is the model: no back-reference to runs (no runs <-> states cycle), no drawing."""
    import ast
    import inspect

    import daskflow.states as states
    from daskflow.states import State

    tree = ast.parse(inspect.getsource(states))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not {"html", "daskflow.runs", "daskflow.report"} & imported, imported
    assert "flow_run" not in State.__slots__
    assert not hasattr(states, "html_card") and not hasattr(states, "state_colour")


def test_a_state_and_a_run_show_their_cards_through_the_notebook_module() -> None:
    import daskflow  # noqa: F401  (registers the cards)
    from daskflow.report import notebook
    from daskflow.runs import FlowRun, FlowRunState

    failed = Failed("<bad> row")
    card = failed._repr_html_()
    assert card is not None and card == notebook.notebook_card(failed)
    assert "Failed" in card and "&lt;bad&gt; row" in card and "<bad>" not in card
    run = FlowRun(id="r1", name="swift-otter", flow_name="etl")
    final = FlowRunState.of(Completed(3), run)
    run.set_state(final)
    assert final._repr_html_() == run._repr_html_() and "Flow run" in (run._repr_html_() or "")


def test_a_remote_values_items_are_versioned_as_the_values_own_items_are() -> None:
    """A client keys a run over item i of a list held on a worker by the version the worker gives it."""
    here, there = KnownValue(["a", "b", "c"], "v-1"), RemoteValue("v-1", 3)
    for index in (0, 2, -1, -3):
        assert there.item(index).version == here.item(index).version, index
    assert item_state(Completed(there), 1).deferred.version == "v-1/1"  # type: ignore[union-attr]
    for index in (3, -4):
        with pytest.raises(IndexError, match="of a list of 3"):
            there.item(index)
    with pytest.raises(IndexError, match="length is not known here"):
        RemoteValue("v-2").item(-1)
    assert not there.in_memory()
    with pytest.raises(ResultError, match="held where its run executed"):
        Completed(there).result()
