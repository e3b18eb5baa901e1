"""Live progress of a flow run: its task runs per task name, by state, while it runs.

A display has two halves that meet at one lock. :class:`ProgressCounts` is a
state listener: on each state change of a task run of the flow run (or of one
of its subflows) it moves that run from one bucket to another — pending,
running, completed, cached, failed — in O(1), and bumps a version number; that
is all the hot path pays, and the listener is installed only while a display
is shown. A refresh thread wakes a few times a second, and when the version
moved it takes a snapshot and hands it to a renderer: a rich progress display
on a terminal's stderr, an ipywidgets box of progress bars in a Jupyter
kernel (or, without ipywidgets, an HTML table updated in place). So drawing
never happens in the threads that run tasks, and a map of 10,000 runs costs
ten thousand dictionary updates and a few dozen redraws.

Runs created but not yet started emit no state change (a run record is born
Pending), so the refresh thread also picks up the task runs added to the flow
runs since its last look, which makes "pending" show the submitted work.

dask.config ``daskflow.progress`` chooses: ``auto`` (the default) shows the
display in a Jupyter kernel, and on stderr when it is a terminal outside CI
and pytest; ``true`` always shows it (rich on stderr outside a kernel);
``false`` never does (``DASK_DASKFLOW__PROGRESS=false`` in the environment).
Only the top-level flow run of a process shows one, one display at a time.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from daskflow import settings
from daskflow.context import on_worker_thread
from daskflow.runs import FlowRun, TaskRun, add_state_listener, remove_state_listener
from daskflow.states import State, StateType

__all__ = [
    "BUCKETS",
    "REFRESH_SECONDS",
    "HtmlRenderer",
    "ProgressCounts",
    "ProgressDisplay",
    "Renderer",
    "RichRenderer",
    "Rows",
    "WidgetRenderer",
    "bucket_of",
    "progress_mode",
    "show_progress",
]

_log = logging.getLogger("daskflow.progress")

BUCKETS = ("pending", "running", "completed", "cached", "failed")
_PENDING, _RUNNING, _COMPLETED, _CACHED, _FAILED = range(len(BUCKETS))
_BY_TYPE = {
    StateType.SCHEDULED: _PENDING,  # AwaitingRetry: it will run again
    StateType.PENDING: _PENDING,
    StateType.RUNNING: _RUNNING,
    StateType.COMPLETED: _COMPLETED,
    StateType.FAILED: _FAILED,
    StateType.CRASHED: _FAILED,
    StateType.CANCELLED: _FAILED,
}
REFRESH_SECONDS = 0.2  # at most five redraws a second: smooth enough, and nothing next to the work

Rows = list[tuple[str, tuple[int, ...]]]


def bucket_of(state: State) -> int:
    """The index in :data:`BUCKETS` a state counts under."""
    if state.type is StateType.COMPLETED and state.name == "Cached":
        return _CACHED
    return _BY_TYPE[state.type]


class ProgressCounts:
    """Task runs of one flow run (and its subflows) per task name and bucket; thread-safe."""

    def __init__(self, flow_run: FlowRun) -> None:
        self._lock = threading.Lock()
        self._flow_runs: list[FlowRun] = [flow_run]
        self._flow_ids = {flow_run.id}
        self._scanned: dict[str, int] = {flow_run.id: 0}  # flow run id -> task runs looked at so far
        self._where: dict[str, int] = {}  # task run id -> its bucket now
        self._counts: dict[str, list[int]] = {}  # task name -> runs per bucket, in order of first sight
        self.version = 0

    def on_state(self, run: TaskRun | FlowRun, state: State) -> None:
        """The state listener: O(1) per change, under the lock."""
        if on_worker_thread():
            return  # a worker thread's own copy of a run (LocalCluster processes=False); the client's counts
        if isinstance(run, TaskRun):
            if run.flow_run_id in self._flow_ids:
                with self._lock:
                    # run.state, not state: two threads may notify out of order; the record holds the latest.
                    self._move(run, bucket_of(run.state))
        elif run.parent_flow_run_id in self._flow_ids and run.id not in self._flow_ids:
            with self._lock:
                self._flow_runs.append(run)
                self._flow_ids.add(run.id)
                self._scanned[run.id] = 0

    def _move(self, run: TaskRun, bucket: int) -> None:
        row = self._counts.get(run.task_name)
        if row is None:
            row = self._counts[run.task_name] = [0] * len(BUCKETS)
        previous = self._where.get(run.id)
        if previous is not None:
            row[previous] -= 1
        row[bucket] += 1
        self._where[run.id] = bucket
        self.version += 1

    def scan(self) -> None:
        """Count the task runs created since the last scan that no state change announced yet."""
        with self._lock:
            for flow_run in self._flow_runs:
                task_runs = flow_run.task_runs
                start = self._scanned[flow_run.id]
                end = len(task_runs)
                for run in task_runs[start:end]:
                    if run.id not in self._where:
                        self._move(run, bucket_of(run.state))
                self._scanned[flow_run.id] = end

    def snapshot(self) -> Rows:
        """``[(task name, (pending, running, completed, cached, failed)), ...]``."""
        with self._lock:
            return [(name, tuple(row)) for name, row in self._counts.items()]


class Renderer(Protocol):
    """Draws snapshots of the counts somewhere."""

    def update(self, rows: Rows) -> None: ...

    def close(self) -> None: ...


def _summary(counts: tuple[int, ...]) -> str:
    pending, running, completed, cached, failed = counts
    parts = [f"{completed + cached + failed}/{sum(counts)}"]
    for n, label in ((running, "running"), (pending, "pending"), (cached, "cached"), (failed, "failed")):
        if n:
            parts.append(f"{n} {label}")
    return " · ".join(parts)


class RichRenderer:
    """One rich progress bar per task name, on a rich console (stderr by default)."""

    def __init__(self, title: str, console: Any = None) -> None:
        # rich.progress costs tens of milliseconds to import: only a terminal display pays it.
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[summary]}"),
            console=console if console is not None else Console(stderr=True),
            auto_refresh=False,  # our refresh thread decides when to draw
            redirect_stdout=False,  # stdout may be a pipe: it must not end up on the console (stderr)
        )
        self._progress.console.print(f"[dim]{title}[/dim]")
        self._tasks: dict[str, Any] = {}
        self._progress.start()

    def update(self, rows: Rows) -> None:
        for name, counts in rows:
            done = counts[_COMPLETED] + counts[_CACHED] + counts[_FAILED]
            task_id = self._tasks.get(name)
            if task_id is None:
                task_id = self._tasks[name] = self._progress.add_task(name, total=sum(counts), summary="")
            self._progress.update(task_id, total=sum(counts), completed=done, summary=_summary(counts))
        self._progress.refresh()

    def close(self) -> None:
        self._progress.stop()


class WidgetRenderer:
    """A Jupyter widget: per task name a label, an IntProgress bar and the counts."""

    def __init__(self, title: str) -> None:
        self._widgets = w = _optional("ipywidgets")
        self._rows: dict[str, tuple[Any, Any]] = {}
        self._box = w.VBox([w.HTML(f"<b>{html.escape(title)}</b>")])
        _optional("IPython.display").display(self._box)

    def update(self, rows: Rows) -> None:
        w = self._widgets
        for name, counts in rows:
            row = self._rows.get(name)
            if row is None:
                bar = w.IntProgress(min=0, max=1, value=0, layout=w.Layout(width="320px"))
                text = w.Label()
                self._rows[name] = row = (bar, text)
                label = w.Label(name, layout=w.Layout(width="180px"))
                self._box.children = (*self._box.children, w.HBox([label, bar, text]))
            bar, text = row
            done = counts[_COMPLETED] + counts[_CACHED] + counts[_FAILED]
            bar.max = max(sum(counts), 1)
            bar.value = done
            bar.bar_style = "danger" if counts[_FAILED] else ("success" if done == sum(counts) else "info")
            text.value = _summary(counts)

    def close(self) -> None:
        pass  # the box stays in the cell's output, showing the final counts


class HtmlRenderer:
    """Without ipywidgets: an HTML table in the cell's output, replaced in place."""

    def __init__(self, title: str) -> None:
        ipython_display = _optional("IPython.display")
        self._html = ipython_display.HTML
        self._title = title
        self._handle = ipython_display.display(self._html(self._table([])), display_id=True)

    def _table(self, rows: Rows) -> str:
        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(name)}</td><td style='text-align:left'>{html.escape(_summary(c))}</td></tr>"
            for name, c in rows
        )
        return f"<b>{html.escape(self._title)}</b><table>{body}</table>"

    def update(self, rows: Rows) -> None:
        if self._handle is not None:
            self._handle.update(self._html(self._table(rows)))

    def close(self) -> None:
        pass


def _optional(module: str) -> Any:
    """An optional, untyped notebook dependency, imported when a notebook display is made."""
    return importlib.import_module(module)


class ProgressDisplay:
    """The counts of one flow run, a renderer, and the thread that redraws (see the module docstring)."""

    def __init__(self, flow_run: FlowRun, renderer: Renderer, interval: float = REFRESH_SECONDS) -> None:
        self.counts = ProgressCounts(flow_run)
        self.renderer = renderer
        self._interval = interval
        self._stopped = threading.Event()
        self._drawn = -1
        self._thread = threading.Thread(target=self._refresh_loop, name="daskflow-progress", daemon=True)

    def start(self) -> ProgressDisplay:
        add_state_listener(self.counts.on_state)
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stopped.wait(self._interval):
            self._draw()

    def _draw(self) -> None:
        try:
            self.counts.scan()
            version = self.counts.version
            if version != self._drawn:
                self._drawn = version
                self.renderer.update(self.counts.snapshot())
        except Exception:  # a display must never fail a run
            _log.debug("progress display failed to draw", exc_info=True)

    def stop(self) -> None:
        """Draw the final counts and remove the listener and the thread. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        remove_state_listener(self.counts.on_state)
        self._thread.join()
        self._draw()
        try:
            self.renderer.close()
        except Exception:
            _log.debug("progress display failed to close", exc_info=True)
        _release(self)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "none", ""}


def progress_mode() -> str:
    """dask.config ``daskflow.progress`` as ``"auto"``, ``"on"`` or ``"off"``."""
    value = settings.get("progress", "auto")
    if isinstance(value, bool) or value is None:
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in _TRUE:
        return "on"
    if text in _FALSE:
        return "off"
    warnings.warn(
        f"dask.config daskflow.progress is {value!r}; expected auto, true or false. Using auto.", stacklevel=2
    )
    return "auto"


def _in_kernel() -> bool:
    if "ipykernel" not in sys.modules:  # never import IPython just to ask
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def _terminal() -> bool:
    if os.environ.get("CI") or "PYTEST_CURRENT_TEST" in os.environ:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _notebook_renderer(title: str) -> Renderer:
    if importlib.util.find_spec("ipywidgets") is None:
        return HtmlRenderer(title)
    return WidgetRenderer(title)


def _choose_renderer(mode: str, title: str) -> Renderer | None:
    if mode == "off":
        return None
    if _in_kernel():
        return _notebook_renderer(title)
    if mode == "on" or _terminal():
        return RichRenderer(title)
    return None


_active: ProgressDisplay | None = None
_active_lock = threading.Lock()


def _release(display: ProgressDisplay) -> None:
    global _active
    with _active_lock:
        if _active is display:
            _active = None


def show_progress(
    flow_run: FlowRun, renderer_factory: Callable[[str, str], Renderer | None] | None = None
) -> ProgressDisplay | None:
    """Start the display for a top-level flow run, if ``daskflow.progress`` asks for one here.

    ``renderer_factory(mode, title)`` makes the renderer (default: by place, see
    the module docstring); returning None means no display. Returns the running display (call ``stop()`` when the run ends), or None:
    for a subflow, on a worker, when another display is showing, or when the
    setting and the place (terminal, kernel, log file) say no.
    """
    global _active
    if flow_run.parent_flow_run_id is not None or on_worker_thread():
        return None
    mode = progress_mode()
    if mode == "off":
        return None
    with _active_lock:
        if _active is not None:
            return None  # two live displays would draw over each other
        try:
            factory = renderer_factory or _choose_renderer
            renderer = factory(mode, f"flow run {flow_run.name!r} of {flow_run.flow_name!r}")
        except Exception:
            _log.debug("no progress display", exc_info=True)
            return None
        if renderer is None:
            return None
        _active = ProgressDisplay(flow_run, renderer)
        return _active.start()
