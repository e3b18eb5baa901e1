"""The live progress display and the notebook cards of states and runs.

The display is driven through the real flow engine; its terminal renderer draws
on a rich console writing to a string, and a recording renderer keeps the last
snapshot, so the tests check the final counts per task name rather than
screen output alone. The cards are checked for what they must say (counts,
cache hits, dashboard link, report command) and that user text is escaped.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Any

import dask.config
import pytest
from rich.console import Console

from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.engine import progress
from daskflow.engine.progress import RichRenderer, Rows, bucket_of, progress_mode, show_progress
from daskflow.runs import FlowRun, FlowRunState, TaskRun, _listeners
from daskflow.states import Cached, Completed, Failed, Pending, Running, State
from daskflow.task_runners import DaskTaskRunner, ThreadPoolTaskRunner


class RecordingRenderer(RichRenderer):
    """The terminal renderer on a string console, keeping the last snapshot it drew."""

    def __init__(self, title: str) -> None:
        self.buffer = io.StringIO()
        super().__init__(title, Console(file=self.buffer, force_terminal=True, width=120))
        self.last: dict[str, tuple[int, ...]] = {}
        self.closed = False

    def update(self, rows: Rows) -> None:
        super().update(rows)
        self.last = dict(rows)

    def close(self) -> None:
        super().close()
        self.closed = True


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordingRenderer]]:
    """Progress forced on; every display the engine starts draws into a recording renderer."""
    made: list[RecordingRenderer] = []

    def factory(mode: str, title: str) -> RecordingRenderer:
        renderer = RecordingRenderer(title)
        made.append(renderer)
        return renderer

    monkeypatch.setattr(progress, "_choose_renderer", factory)
    with dask.config.set({"daskflow.progress": True}):
        yield made


def _final(made: list[RecordingRenderer]) -> dict[str, tuple[int, ...]]:
    assert len(made) == 1, "one display per top-level flow run"
    assert made[0].closed
    return made[0].last


# (pending, running, completed, cached, failed)


def test_final_counts_per_task_name_on_a_real_flow(shown: list[RecordingRenderer]) -> None:
    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def odd_only(x: int) -> int:
        if x % 2 == 0:
            raise ValueError(f"{x} is even")
        return x

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def pipeline(n: int) -> int:
        checked = odd_only.map(range(6))
        for future in checked:
            future.wait()
        return total(inc.map(range(n)))

    listeners_before = len(_listeners)
    assert pipeline(20) == sum(range(1, 21))
    assert _final(shown) == {"odd_only": (0, 0, 3, 0, 3), "inc": (0, 0, 20, 0, 0), "total": (0, 0, 1, 0, 0)}
    text = shown[0].buffer.getvalue()
    assert "inc" in text and "20/20" in text and "3 failed" in text
    assert len(_listeners) == listeners_before, "the display's listener is removed when the run ends"


def test_cache_hits_count_as_cached_and_subflows_count_in_the_parent(shown: list[RecordingRenderer]) -> None:
    @task(cache_policy=INPUTS, result_storage="memory://progress-test-cache")
    def square(x: int) -> int:
        return x * x

    @flow
    def child() -> int:
        return sum(square.map(range(4)).result())

    @flow
    def parent() -> int:
        return child() + child()  # the second call hits the cache of the first

    assert parent() == 2 * sum(x * x for x in range(4))
    assert _final(shown) == {"square": (0, 0, 4, 4, 0)}


def test_counts_on_dask_in_process_workers_are_not_doubled(
    shown: list[RecordingRenderer], dask_inprocess_client: Any
) -> None:
    # Worker threads of this process keep their own copies of the runs: only the client's count.
    @task
    def inc(x: int) -> int:
        return x + 1

    @flow(task_runner=DaskTaskRunner(client=dask_inprocess_client))
    def fanout(n: int) -> list[int]:
        return inc.map(range(n)).result()

    assert fanout(30) == list(range(1, 31))
    assert _final(shown) == {"inc": (0, 0, 30, 0, 0)}


def test_counts_on_a_dask_cluster_and_the_dashboard_link_recorded(
    shown: list[RecordingRenderer], dask_client: Any
) -> None:
    @task
    def inc(x: int) -> int:
        return x + 1

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def fanout(n: int) -> int:
        return sum(inc.map(range(n)).result())

    state = fanout(25, return_state=True)
    assert state.result() == sum(range(1, 26))
    assert _final(shown) == {"inc": (0, 0, 25, 0, 0)}
    run = state.flow_run
    assert run is not None
    # No bokeh, no dashboard: the link is recorded as the client gives it, "" as None.
    assert run.dashboard_link == (dask_client.dashboard_link or None)


def test_pending_runs_are_counted_before_they_start() -> None:
    run = FlowRun(id="f1", name="r", flow_name="f")
    counts = progress.ProgressCounts(run)
    run.task_runs.extend(TaskRun(id=f"t{i}", name=f"a-{i}", task_name="a", flow_run_id="f1") for i in range(3))
    counts.scan()
    assert counts.snapshot() == [("a", (3, 0, 0, 0, 0))]
    run.task_runs[0].state = Running()
    counts.on_state(run.task_runs[0], run.task_runs[0].state)
    counts.scan()  # already known: not counted twice
    assert counts.snapshot() == [("a", (2, 1, 0, 0, 0))]
    other = TaskRun(id="x", name="b-0", task_name="b", flow_run_id="another-flow")
    counts.on_state(other, Running())
    assert counts.snapshot() == [("a", (2, 1, 0, 0, 0))]


def test_buckets() -> None:
    assert [progress.BUCKETS[bucket_of(s)] for s in (Pending(), Running(), Completed(), Cached(), Failed())] == [
        "pending", "running", "completed", "cached", "failed",
    ]  # fmt: skip


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_shows_nothing_without_a_terminal_and_in_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    run = FlowRun(id="f2", name="r", flow_name="f")
    with dask.config.set({"daskflow.progress": "auto"}):
        assert progress_mode() == "auto"
        assert show_progress(run) is None  # pytest's captured stderr is no terminal
        monkeypatch.setattr(sys, "stderr", _FakeTerminal())
        assert show_progress(run) is None  # a terminal, but under pytest
        monkeypatch.delenv("PYTEST_CURRENT_TEST")
        monkeypatch.setenv("CI", "true")
        assert show_progress(run) is None  # a terminal, but in CI
        monkeypatch.delenv("CI")
        display = show_progress(run)
        assert display is not None and isinstance(display.renderer, RichRenderer)
        display.stop()
        display.stop()  # idempotent


def test_false_shows_nothing_and_installs_no_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _FakeTerminal())
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    run = FlowRun(id="f3", name="r", flow_name="f")
    before = len(_listeners)
    for value in (False, "false", "off", "0"):
        with dask.config.set({"daskflow.progress": value}):
            assert progress_mode() == "off"
            assert show_progress(run) is None
    assert len(_listeners) == before


def test_a_subflow_and_a_second_display_get_none(shown: list[RecordingRenderer]) -> None:
    top = FlowRun(id="f4", name="r", flow_name="f")
    child = FlowRun(id="f5", name="c", flow_name="f", parent_flow_run_id="f4")
    assert show_progress(child) is None
    first = show_progress(top)
    assert first is not None
    try:
        assert show_progress(FlowRun(id="f6", name="s", flow_name="f")) is None
    finally:
        first.stop()


def test_a_bad_setting_warns_and_means_auto() -> None:
    with dask.config.set({"daskflow.progress": "sometimes"}), pytest.warns(UserWarning, match="daskflow.progress"):
        assert progress_mode() == "auto"


# -- cards ----------------------------------------------------------------------------------


def test_the_state_a_flow_returns_knows_its_run_and_shows_its_card() -> None:
    @task(cache_policy=INPUTS, result_storage="memory://progress-test-cards")
    def double(x: int) -> int:
        return 2 * x

    @flow(name="cards", task_runner=ThreadPoolTaskRunner(max_workers=2))
    def cards(n: int) -> int:
        return sum(double.map(range(n)).result())

    cards(3)
    state = cards(4, return_state=True)  # 3 hits, 1 miss
    run = state.flow_run
    assert isinstance(run, FlowRun) and run.state is state and run.cache_hits == 3
    card = state._repr_html_()
    assert card == run._repr_html_()
    assert "Completed" in card and "4 total" in card and "3 <span" in card and "1 <span" in card
    assert "3 hits, 1 miss" in card
    assert run.id in card and f"daskflow runs report {run.id} -o {run.id}.html" in card
    assert "dashboard" not in card  # not run on Dask
    assert cards(2) == 2  # without return_state: the value, as before


def test_cards_escape_user_text() -> None:
    run = FlowRun(id="<id>", name="<b>bold</b>", flow_name="a&b", dashboard_link='http://h:8787/status?x="1"&y=<2>')
    task_run = TaskRun(id="t", name="<i>t</i>", task_name="<script>alert(1)</script>", flow_run_id="<id>")
    task_run.set_state(Failed("<oops> & <more>"))
    run.task_runs.append(task_run)
    run.set_state(Failed("1/1 states failed: <oops>"))
    card = run._repr_html_()
    for raw in ("<b>bold</b>", "a&b", "<oops>", "<script>", '"1"&y=<2>'):
        assert raw not in card
    assert "&lt;b&gt;bold&lt;/b&gt;" in card and "a&amp;b" in card and "&lt;oops&gt;" in card
    assert 'href="http://h:8787/status?x=&quot;1&quot;&amp;y=&lt;2&gt;"' in card
    task_card = task_run._repr_html_()
    assert (
        "&lt;script&gt;" in task_card and "<script>" not in task_card and "&lt;oops&gt; &amp; &lt;more&gt;" in task_card
    )


def test_a_state_alone_shows_what_it_has_and_pickles_without_its_run() -> None:
    import pickle

    state = Failed("<bad> row")
    card = state._repr_html_()
    assert "Failed" in card and "&lt;bad&gt; row" in card and "UTC" in card
    assert not hasattr(state, "flow_run")  # a State knows no run; a flow run's final state does
    run = FlowRun(id="f", name="n", flow_name="f")
    final = FlowRunState.of(state, run)
    assert final.flow_run is run and final.epoch == state.epoch and final.message == state.message
    copy = pickle.loads(pickle.dumps(final))
    assert type(copy) is State and not hasattr(copy, "flow_run") and copy.message == "<bad> row"


def test_the_dashboard_link_of_the_runner_is_recorded_and_shown() -> None:
    class LinkedRunner(ThreadPoolTaskRunner):
        @property
        def dashboard_link(self) -> str | None:
            return "http://127.0.0.1:8787/status"

    @flow(task_runner=LinkedRunner())
    def linked() -> int:
        return 1

    state: State = linked(return_state=True)
    assert state.flow_run is not None and state.flow_run.dashboard_link == "http://127.0.0.1:8787/status"
    assert '<a href="http://127.0.0.1:8787/status"' in state._repr_html_()
