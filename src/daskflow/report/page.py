"""One self-contained HTML page per flow run: :func:`render_report` and :func:`write_report`.

The page is a single file that opens anywhere, offline and years later: the
style sheet, the two SVG drawings and the few lines of script (the log level
filter) are inline, and nothing refers to a URL except the links that the
flow's own artifacts hold. Without script the page shows everything; the
script only adds the filter.

It is built from the run store alone (:func:`~.model.load_report_data`), so a
report can be made on any machine that can read the store, long after the
cluster is gone. Apart from the one "generated at" line, the same history
gives the same bytes. :func:`write_report` writes a temporary file beside the
target and renames it over, so a reader never sees half a report.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from daskflow import settings
from daskflow._version import __version__
from daskflow.engine import history
from daskflow.report.layout import layout_graph, layout_timeline
from daskflow.report.model import DEFAULT_LOG_LIMIT, STATE_STYLES, ReportData, format_time, load_report_data
from daskflow.report.sections import artifacts_html, failure_summary_html, header_html, logs_html, task_runs_html
from daskflow.report.svg import graph_svg, timeline_svg

if TYPE_CHECKING:
    from daskflow.runstore.store import RunStore

__all__ = ["default_report_path", "render_report", "write_report"]

_CSS = """
:root { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #212529; }
body { margin: 0 auto; max-width: 1400px; padding: 0 20px 40px; line-height: 1.4; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #dee2e6; padding: 8px 0; z-index: 1; }
nav a { margin-right: 16px; color: #1864ab; text-decoration: none; }
h1 { margin: 16px 0 4px; } h1 .run-name { color: #868e96; font-weight: normal; }
h2 { border-bottom: 2px solid #dee2e6; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #dee2e6; padding: 3px 8px; text-align: left; vertical-align: top; }
thead th { background: #f1f3f5; position: sticky; top: 0; }
table.facts th { background: #f8f9fa; white-space: nowrap; }
pre { background: #f8f9fa; border: 1px solid #dee2e6; padding: 8px; overflow: auto; max-height: 480px;
      font-size: 12px; white-space: pre-wrap; word-break: break-word; margin: 4px 0; }
code { font-size: 12px; }
.badge { display: inline-block; border-radius: 10px; padding: 1px 9px; font-size: 12px; font-weight: 600; }
.final-state .badge { font-size: 16px; padding: 3px 14px; }
.message { margin-left: 8px; }
.note { color: #6c757d; font-size: 13px; }
.scroll { overflow: auto; max-height: 720px; border: 1px solid #e9ecef; }
.graph text { font-size: 13px; } .graph .node-label { font-weight: 600; } .graph .node-sub { font-size: 11px; }
.timeline text { font-size: 11px; fill: #495057; }
.legend span { margin-right: 10px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; vertical-align: -2px; margin-right: 4px; border-radius: 2px; }
.failure-summary { border-left: 4px solid #e03131; background: #fff5f5; padding: 4px 16px 8px; }
.failure-summary h2 { border: 0; margin-top: 12px; }
details.failed-run { border: 1px solid #ffc9c9; border-radius: 4px; margin: 8px 0; padding: 4px 10px; }
details.failed-run summary { cursor: pointer; }
tr.lvl-WARNING td.level { color: #e67700; font-weight: 600; }
tr.lvl-ERROR td.level, tr.lvl-CRITICAL td.level { color: #c92a2a; font-weight: 600; }
td.message { white-space: pre-wrap; word-break: break-word; }
article.artifact { border: 1px solid #dee2e6; border-radius: 4px; padding: 0 14px 10px; margin: 12px 0; }
.markdown table { margin: 8px 0; }
footer { margin-top: 40px; }
"""

# The level filter; the page works without it (every record shows, the control stays hidden).
_SCRIPT = """
(function () {
  var box = document.getElementById("log-filter");
  if (!box) { return; }
  var select = document.getElementById("log-level");
  var shown = document.getElementById("log-shown");
  var rows = document.querySelectorAll("#log-table tr.log");
  function apply() {
    var min = Number(select.value), visible = 0;
    for (var i = 0; i < rows.length; i++) {
      var hide = Number(rows[i].getAttribute("data-level")) < min;
      rows[i].hidden = hide;
      if (!hide) { visible++; }
    }
    shown.textContent = visible + " of " + rows.length + " records shown";
  }
  select.addEventListener("change", apply);
  box.hidden = false;
  apply();
})();
"""


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _legend() -> str:
    items = "".join(
        f'<span><i style="background:{style.colour}"></i>{style.label}</span>'
        for style in STATE_STYLES.values()
        if style.key != "other"
    )
    return f'<p class="legend">{items}</p>'


def _graph_section(data: ReportData) -> str:
    layout = layout_graph(len(data.groups), list(data.edges))
    notes = [
        "One box per task; a task that ran several times (a map) is one box, its runs' states in the bar at "
        "its foot. A box takes the colour of its worst run. Hover a box or an edge for details."
    ]
    if layout.back_edges:
        notes.append(f"{_count(len(layout.back_edges), 'dashed edge')} point backwards: those tasks fed each other.")
    return (
        f'<section id="graph"><h2>Task graph ({len(data.groups):,} tasks, {len(data.edges):,} edges)</h2>'
        f'<p class="note">{" ".join(notes)}</p>{_legend()}'
        f'<div class="scroll graph-box">{graph_svg(data.groups, data.edges, layout)}</div></section>'
    )


def _timeline_section(data: ReportData) -> str:
    timeline = layout_timeline(data.detail.task_runs, data.origin)
    notes = [f"Seconds since the flow run started ({escape(format_time(data.origin))}); one lane per worker."]
    if timeline.bars_drawn < timeline.runs_placed:
        notes.append(
            f"{timeline.bars_drawn:,} bars stand for {timeline.runs_drawn:,} of {timeline.runs_placed:,} task runs: "
            "runs of one state that follow each other closer than a pixel share a bar"
            + (
                f", and {timeline.runs_placed - timeline.runs_drawn:,} short runs were left out to keep the page small."
                if timeline.runs_drawn < timeline.runs_placed
                else "."
            )
        )
    if timeline.runs_placed < timeline.runs_total:
        notes.append(
            f"{_count(timeline.runs_total - timeline.runs_placed, 'task run')} never started and are not drawn."
        )
    if timeline.crowded:
        notes.append(f"{_count(timeline.crowded, 'run')} overlap others in a crowded lane.")
    return (
        f'<section id="timeline"><h2>Timeline</h2><p class="note">{" ".join(notes)}</p>'
        f'<div class="scroll">{timeline_svg(timeline)}</div></section>'
    )


def render_report(
    store: RunStore, flow_run_id: str, *, log_limit: int = DEFAULT_LOG_LIMIT, generated_at: datetime | None = None
) -> str:
    """The HTML report of one flow run (an id or a unique prefix of one).

    Raises :class:`~daskflow.exceptions.RunNotFoundError` when the store has no
    such run, and :class:`~daskflow.runstore.AmbiguousRunIdError` when a prefix
    matches several. ``generated_at`` fixes the one line that would otherwise
    say when the page was made.
    """
    history.flush()  # a run of this process may still have records on their way to the store
    data = load_report_data(store, flow_run_id, log_limit=log_limit)
    d = data.detail
    moment = generated_at or datetime.now(UTC)
    title = f"{d.flow_name} / {d.name} \u2014 {d.state_name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        '<nav><a href="#summary">Summary</a>'
        + ('<a href="#failure">What went wrong</a>' if data.failures else "")
        + '<a href="#graph">Graph</a><a href="#timeline">Timeline</a><a href="#task-runs">Task runs</a>'
        '<a href="#logs">Logs</a><a href="#artifacts">Artifacts</a></nav>',
        header_html(data),
        failure_summary_html(data),
        _graph_section(data),
        _timeline_section(data),
        task_runs_html(data),
        logs_html(data),
        artifacts_html(data),
        f'<footer class="note">Generated by daskflow {escape(__version__)} at {escape(format_time(moment))} '
        f"from the run store {escape(store.display_url)}.</footer>",
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(part for part in parts if part)


def default_report_path(flow_run_id: str) -> Path:
    """Where a run's report goes when no path is given: ``<daskflow home>/reports/<id>.html``."""
    return settings.home() / "reports" / f"{flow_run_id}.html"


def write_report(store: RunStore, flow_run_id: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of one flow run to ``path`` atomically; returns the path written.

    Without ``path`` it goes to :func:`default_report_path` of the run's whole id.

    The folder is created when missing. The page is written to a temporary file
    in the same folder, then renamed over ``path``, so an open report is never
    half replaced.
    """
    html = render_report(store, flow_run_id)  # fails before anything is written
    if path is None:
        path = default_report_path(store.resolve_run_id(flow_run_id) or flow_run_id)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            file.write(html)
        # mkstemp makes the file private (0600); a report is meant to be shared like any page.
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target
