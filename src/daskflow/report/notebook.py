"""Notebook cards: how states and run records show themselves in Jupyter.

A state, a task run and a flow run each have a ``_repr_html_`` that asks the
model layer's hook (:func:`daskflow.states.notebook_html`) for their card; this
module is what answers, registered when daskflow is imported. Keeping the HTML
here leaves ``states`` and ``runs`` free of drawing, and lets the model import
nothing from above.

Every card has one layout (:func:`html_card`): a header with the state's name
coloured by kind, the state's message, then labelled rows. A flow run's card
counts its task runs by state and its cache hits, links the Dask dashboard it
ran on and gives the command that writes its report; the state a flow call
returns (it knows its run) shows its run's card. Cards read only the records:
no I/O, so showing one costs nothing. Everything a user wrote (names,
messages, links) is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from daskflow.runs import FlowRun, FlowRunState, TaskRun, format_seconds
from daskflow.states import State, StateType, register_notebook_html

__all__ = ["html_card", "notebook_card", "state_colour"]

# Colours of the state badge, by kind; Cached gets its own, a hit being worth seeing.
_COLOURS = {
    StateType.SCHEDULED: "#6b7280",
    StateType.PENDING: "#6b7280",
    StateType.RUNNING: "#1d4ed8",
    StateType.COMPLETED: "#15803d",
    StateType.FAILED: "#b91c1c",
    StateType.CRASHED: "#c2410c",
    StateType.CANCELLED: "#57534e",
    StateType.PAUSED: "#a16207",
    StateType.CANCELLING: "#57534e",
}
_CACHED_COLOUR = "#0f766e"


def state_colour(state: State) -> str:
    """The CSS colour a state's name is shown in (by kind; Cached has its own)."""
    return _CACHED_COLOUR if state.is_cached() else _COLOURS[state.type]


def html_card(kind: str, title: str | None, state: State, rows: Sequence[tuple[str, str]]) -> str:
    """The HTML card of a state or a run: a header, the state's message, then labelled rows.

    ``kind`` and ``title`` are plain text (escaped here); the row labels are plain
    text too, while the row values are HTML the caller has already escaped, so a
    row may hold a link or coloured counts.
    """
    badge = (
        f'<span style="background:{state_colour(state)};color:#fff;border-radius:4px;'
        f'padding:1px 7px;font-weight:600">{html.escape(state.name)}</span>'
    )
    header = f"<b>{html.escape(kind)}</b>"
    if title:
        header += f" <code>{html.escape(title)}</code>"
    parts = [
        '<div class="daskflow-card" style="display:inline-block;border:1px solid #d1d5db;border-radius:6px;'
        'padding:6px 10px;font-family:system-ui,sans-serif;font-size:13px;line-height:1.5">',
        f"<div>{header} {badge}</div>",
    ]
    if state.message:
        parts.append(f'<div style="opacity:.8">{html.escape(state.message)}</div>')
    if rows:
        parts.append('<table style="border-collapse:collapse;margin-top:4px">')
        for label, value in rows:
            parts.append(
                f'<tr><td style="padding:0 12px 0 0;opacity:.7;text-align:left">{html.escape(label)}</td>'
                f'<td style="padding:0;text-align:left">{value}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</div>")
    return "".join(parts)


def _state_card(state: State) -> str:
    rows = [("at", html.escape(state.timestamp.strftime("%Y-%m-%d %H:%M:%S UTC")))]
    if state.is_completed():
        rows.append(("result", html.escape(state._result_type())))
    return html_card("State", None, state, rows)


def _task_run_card(run: TaskRun) -> str:
    rows = [("duration", format_seconds(run.duration)), ("task", html.escape(run.task_name))]
    if run.retries:
        rows.append(("retries", str(run.retries)))
    if run.worker:
        rows.append(("worker", html.escape(run.worker)))
    rows.append(("run id", f"<code>{html.escape(run.id)}</code>"))
    return html_card("Task run", run.name, run.state, rows)


def _flow_run_card(run: FlowRun) -> str:
    rows = [
        ("duration", format_seconds(run.duration)),
        ("flow", html.escape(run.flow_name)),
        ("task runs", _counts_html(run.task_runs)),
    ]
    if any(task_run.cache_key is not None for task_run in run.task_runs):
        hits, misses = run.cache_hits, run.cache_misses
        rows.append(("cache", f"{hits} hit{'s' * (hits != 1)}, {misses} miss{'es' * (misses != 1)}"))
    rows.append(("run id", f"<code>{html.escape(run.id)}</code>"))
    if run.dashboard_link:
        link = html.escape(run.dashboard_link, quote=True)
        rows.append(("dashboard", f'<a href="{link}" target="_blank">{link}</a>'))
    rows.append(("report", f"<code>daskflow runs report {html.escape(run.id)} -o {html.escape(run.id)}.html</code>"))
    return html_card("Flow run", run.name, run.state, rows)


def _counts_html(task_runs: list[TaskRun]) -> str:
    """``12 total: 10 Completed, 2 Cached``, each state name in its colour."""
    if not task_runs:
        return "none"
    counts: dict[str, tuple[State, int]] = {}
    for run in task_runs:
        state = run.state
        known = counts.get(state.name)
        counts[state.name] = (state, 1) if known is None else (known[0], known[1] + 1)
    shown = ", ".join(
        f'{n} <span style="color:{state_colour(state)};font-weight:600">{html.escape(name)}</span>'
        for name, (state, n) in counts.items()
    )
    return f"{len(task_runs)} total: {shown}"


def notebook_card(obj: Any) -> str | None:
    """The card of a state or run record; None for anything else (the notebook shows its repr)."""
    if isinstance(obj, FlowRunState):
        return _flow_run_card(obj.flow_run)  # the state a flow call returned: its run is what matters
    if isinstance(obj, State):
        return _state_card(obj)
    if isinstance(obj, FlowRun):
        return _flow_run_card(obj)
    if isinstance(obj, TaskRun):
        return _task_run_card(obj)
    return None


register_notebook_html(notebook_card)
