"""The text parts of a run report, each a function from :class:`~.model.ReportData` to an HTML fragment.

The order on the page follows the questions a newcomer asks of a run: how did
it end and with what inputs (:func:`header_html`), what went wrong, where and
after how many tries (:func:`failure_summary_html`), the details of each
failed run with its traceback and its own log lines
(:func:`failed_runs_html`), then every task run (:func:`task_runs_html`), the
logs (:func:`logs_html`) and the artifacts (:func:`artifacts_html`).

Everything from the run store is escaped here with :func:`html.escape`; the
fragments are joined by :mod:`.page`. Sizes are bounded for runs of 10,000
tasks: the task table turns into one row per task name past
:data:`LISTED_RUNS`, and at most :data:`DETAILED_FAILURES` failures get their
full traceback.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape

from daskflow.report.artifact_html import render_artifact, render_markdown
from daskflow.report.model import (
    STATE_STYLES,
    ReportData,
    TaskGroup,
    format_duration,
    format_time,
    is_failure,
    state_key,
)
from daskflow.runstore.history import LogInfo, TaskRunInfo

__all__ = [
    "DETAILED_FAILURES",
    "LISTED_RUNS",
    "artifacts_html",
    "badge",
    "failed_runs_html",
    "failure_summary_html",
    "header_html",
    "logs_html",
    "task_runs_html",
]

LISTED_RUNS = 300  # task runs listed one per row; more are summarised per task name
DETAILED_FAILURES = 200  # failed task runs shown with traceback and logs; more are counted
_OPEN_FAILURES = 10  # of those, how many start unfolded


_DID_NOT_RUN = frozenset({"NotReady", "UpstreamFailed"})  # a run whose input's run did not complete


def badge(state_type: str, state_name: str) -> str:
    """A state name on its colour."""
    style = STATE_STYLES[state_key(state_type, state_name)]
    return (
        f'<span class="badge" data-state="{style.key}" style="background:{style.colour};color:{style.text}">'
        f"{escape(state_name)}</span>"
    )


def _chips(counts: Iterable[tuple[str, int]]) -> str:
    parts = []
    for key, count in counts:
        style = STATE_STYLES[key]
        parts.append(
            f'<span class="badge" data-state="{key}" style="background:{style.colour};color:{style.text}">'
            f"{count:,} {style.label}</span>"
        )
    return " ".join(parts) or '<span class="note">none</span>'


def _offset(moment: datetime | None, origin: datetime | None) -> str:
    if moment is None or origin is None:
        return "\u2014"
    return f"+{(moment - origin).total_seconds():.3f} s"


def header_html(data: ReportData) -> str:
    """Flow, run, final state and message, times, parameters, counts, state history and subflows."""
    d = data.detail
    counts: dict[str, int] = {}
    for group in data.groups:
        for key, count in group.counts.items():
            counts[key] = counts.get(key, 0) + count
    ordered = [(key, counts[key]) for key in STATE_STYLES if counts.get(key)]
    retries = sum(run.retries for run in d.task_runs)
    slot_wait = sum(run.slot_wait for run in d.task_runs)
    message = f' <span class="message">{escape(d.state_message)}</span>' if d.state_message else ""
    parameters = json.dumps(d.parameters, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    facts = [
        ("Flow", escape(d.flow_name)),
        ("Flow run", f"{escape(d.name)} <code>{escape(d.id)}</code>"),
        ("Started", escape(format_time(d.start_time))),
        ("Ended", escape(format_time(d.end_time))),
        ("Duration", escape(format_duration(d.duration))),
        ("Attempts", str(d.run_count)),
        ("Task runs", f"{len(d.task_runs):,} in {len(data.groups):,} tasks &nbsp; {_chips(ordered)}"),
        ("Cache hits", f"{d.cache_hits:,}"),
        ("Retries", f"{retries:,} (all task runs together)"),
        ("Slot wait", f"{escape(format_duration(slot_wait))} (time task runs waited for concurrency slots)"),
    ]
    if d.parent_flow_run_id:
        facts.insert(2, ("Parent flow run", f"<code>{escape(d.parent_flow_run_id)}</code>"))
    rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    history = " \u2192 ".join(
        f'{badge(s.type, s.name)} <span class="note">{escape(_offset(s.timestamp, d.start_time or d.created))}</span>'
        for s in d.states
    )
    out = [
        f'<header id="summary"><h1>{escape(d.flow_name)} <span class="run-name">/ {escape(d.name)}</span></h1>',
        f'<p class="final-state">{badge(d.state_type, d.state_name)}{message}</p>',
        f'<table class="facts">{rows}</table>',
        f'<h3>Parameters</h3><pre class="parameters">{escape(parameters)}</pre>',
    ]
    if history:
        out.append(f'<h3>State history</h3><p class="states">{history}</p>')
    if data.subflows:
        out.append("<h3>Subflow runs</h3><table><thead><tr><th>Flow run</th><th>Flow</th><th>State</th>"
                   "<th>Duration</th><th>Task runs</th><th>Id</th></tr></thead><tbody>")  # fmt: skip
        for sub in data.subflows:
            out.append(
                f'<tr class="subflow"><td>{escape(sub.name)}</td><td>{escape(sub.flow_name)}</td>'
                f"<td>{badge(sub.state_type, sub.state_name)}</td><td>{escape(format_duration(sub.duration))}</td>"
                f"<td>{sub.task_runs:,}</td><td><code>{escape(sub.id)}</code></td></tr>"
            )
        out.append("</tbody></table>")
    out.append("</header>")
    return "".join(out)


def _where(run: TaskRunInfo) -> str:
    worker = run.worker or "local (the flow's own process)"
    tries = "first attempt" if run.retries == 0 else f"{run.retries} retr{'y' if run.retries == 1 else 'ies'}"
    return f"on worker <code>{escape(worker)}</code> after {tries}"


def failure_summary_html(data: ReportData) -> str:
    """One line per failed task: which run, where, after how many retries, and its message."""
    failures = data.failures
    d = data.detail
    if not failures and d.state_type.upper() not in ("FAILED", "CRASHED"):
        return ""
    out = ['<section id="failure" class="failure-summary"><h2>What went wrong</h2><ul>']
    # A run that never started because its input failed is a consequence, not a cause: counted below.
    # It ends NotReady (a kind of Cancelled, so not among the failures); older stores hold UpstreamFailed.
    causes = [run for run in failures if run.state_name not in _DID_NOT_RUN]
    consequences = sum(1 for run in d.task_runs if run.state_name in _DID_NOT_RUN)
    by_task: dict[str, list[TaskRunInfo]] = {}
    for run in causes or failures:
        by_task.setdefault(run.task_name, []).append(run)
    for task_name, runs in by_task.items():
        first = runs[0]
        total = sum(group.size for group in data.groups if group.name == task_name)
        others = f" ({len(runs)} of {total} runs failed; the first is shown)" if len(runs) > 1 else ""
        message = escape(first.state_message or "no message")
        out.append(
            f"<li><strong>{escape(first.name)}</strong> {badge(first.state_type, first.state_name)} "
            f"{_where(first)}: {message}{escape(others)} "
            f'<a href="#run-{escape(first.id)}">traceback and logs</a></li>'
        )
    if not failures:
        out.append(f"<li>The flow itself {badge(d.state_type, d.state_name)}: {escape(d.state_message or '')}</li>")
    out.append("</ul>")
    if causes and consequences:
        did_not_run = "1 task run" if consequences == 1 else f"{consequences:,} task runs"
        out.append(f'<p class="note">{did_not_run} did not run because a run it depends on failed (NotReady).</p>')
    if d.traceback:
        out.append(f"<details><summary>The flow run's traceback</summary><pre>{escape(d.traceback)}</pre></details>")
    out.append("</section>")
    return "".join(out)


def _log_rows(records: Sequence[LogInfo], data: ReportData, origin: datetime | None) -> str:
    rows = []
    for record in records:
        if record.task_run_id is None:
            task = "flow"
        else:  # a run of another flow run's (a subflow's) shows as the start of its id
            task = data.task_names.get(record.task_run_id, record.task_run_id[:8])
        exception = f"<pre>{escape(record.exception)}</pre>" if record.exception else ""
        level = escape(record.level_name)
        rows.append(
            f'<tr class="log lvl-{level}" data-level="{record.level}">'
            f'<td title="{escape(format_time(record.created))}">{escape(_offset(record.created, origin))}</td>'
            f'<td class="level">{level}</td><td>{escape(task)}</td>'
            f'<td class="message">{escape(record.message)}{exception}</td></tr>'
        )
    return "".join(rows)


_LOG_HEAD = "<thead><tr><th>Time</th><th>Level</th><th>Task run</th><th>Message</th></tr></thead>"


def failed_runs_html(data: ReportData) -> str:
    """Each failed or crashed task run with its facts, traceback and log lines."""
    failures = data.failures
    if not failures:
        return ""
    names = data.task_names
    origin = data.origin
    out = [f'<h3 id="failed-runs">Failed task runs ({len(failures):,})</h3>']
    for i, run in enumerate(failures[:DETAILED_FAILURES]):
        upstream = ", ".join(names.get(u, u) for u in run.upstream_ids) or "none"
        facts = [
            ("State", f"{badge(run.state_type, run.state_name)} {escape(run.state_message or '')}"),
            ("Task", escape(run.task_name) + (f" (map index {run.map_index})" if run.map_index is not None else "")),
            ("Worker", f"<code>{escape(run.worker or 'local')}</code>"),
            ("Attempts", f"{run.run_count} ({run.retries} retries)"),
            ("Started", f"{escape(format_time(run.start_time))} ({escape(_offset(run.start_time, origin))})"),
            ("Duration", escape(format_duration(run.duration))),
            ("Slot wait", escape(format_duration(run.slot_wait))),
            ("Took results of", escape(upstream)),
        ]
        rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
        logs = data.failed_logs.get(run.id, [])
        log_part = (
            f'<table class="logs">{_LOG_HEAD}<tbody>{_log_rows(logs, data, origin)}</tbody></table>'
            if logs
            else '<p class="note">This task run logged nothing.</p>'
        )
        traceback = (
            f'<pre class="traceback">{escape(run.traceback)}</pre>'
            if run.traceback
            else ('<p class="note">No traceback was recorded.</p>')
        )
        out.append(
            f'<details class="failed-run" id="run-{escape(run.id)}"{" open" if i < _OPEN_FAILURES else ""}>'
            f"<summary><strong>{escape(run.name)}</strong> {badge(run.state_type, run.state_name)} "
            f"{_where(run)}</summary>"
            f'<table class="facts">{rows}</table><h4>Traceback</h4>{traceback}'
            f"<h4>Its log lines ({len(logs)})</h4>{log_part}</details>"
        )
    if len(failures) > DETAILED_FAILURES:
        out.append(
            f'<p class="note">Showing the first {DETAILED_FAILURES} of {len(failures):,} failed task runs in detail; '
            "`daskflow runs show` and `daskflow runs logs` have the others.</p>"
        )
    return "".join(out)


def _run_row(run: TaskRunInfo, origin: datetime | None) -> str:
    return (
        f'<tr class="task-run" data-state="{state_key(run.state_type, run.state_name)}">'
        f"<td>{escape(run.name)}</td><td>{badge(run.state_type, run.state_name)}</td>"
        f"<td>{run.retries}</td><td>{escape(format_duration(run.duration))}</td>"
        f"<td>{escape(_offset(run.start_time, origin))}</td><td><code>{escape(run.worker or 'local')}</code></td>"
        f"<td>{'yes' if run.cache_hit else ''}</td><td>{escape(format_duration(run.slot_wait) if run.slot_wait else '')}</td></tr>"
    )


def _group_row(group: TaskGroup) -> str:
    durations = group.durations
    if durations:
        spread = " / ".join(format_duration(v) for v in (durations[0], statistics.median(durations), durations[-1]))
    else:
        spread = "\u2014"
    workers = group.workers
    return (
        f'<tr class="task-group" data-state="{group.summary_key}"><td>{escape(group.name)}</td><td>{group.size:,}</td>'
        f"<td>{_chips((style.key, count) for style, count in group.ordered_counts())}</td>"
        f"<td>{escape(spread)}</td><td>{group.retries:,}</td><td>{group.cache_hits:,}</td>"
        f"<td>{escape(format_duration(group.slot_wait))}</td>"
        f'<td title="{escape(", ".join(workers))}">{len(workers)}</td></tr>'
    )


def task_runs_html(data: ReportData) -> str:
    """Failed runs in detail, then the rest: listed one per row, or one row per task name when many."""
    runs = data.detail.task_runs
    out = [f'<section id="task-runs"><h2>Task runs ({len(runs):,})</h2>', failed_runs_html(data)]
    rest = [run for run in runs if not is_failure(run)]
    if len(runs) <= LISTED_RUNS:
        if rest:
            out.append(
                '<h3>Other task runs</h3><div class="scroll"><table class="runs"><thead><tr><th>Task run</th>'
                "<th>State</th><th>Retries</th><th>Duration</th><th>Started</th><th>Worker</th><th>Cache hit</th>"
                "<th>Slot wait</th></tr></thead><tbody>"
            )
            origin = data.origin
            out.extend(_run_row(run, origin) for run in rest)
            out.append("</tbody></table></div>")
    else:
        out.append(
            f'<h3>All task runs, by task</h3><p class="note">{len(runs):,} task runs are too many to list; '
            "each row sums up one task's runs. Durations are min / median / max.</p>"
            '<div class="scroll"><table class="runs"><thead><tr><th>Task</th><th>Runs</th><th>States</th>'
            "<th>Duration</th><th>Retries</th><th>Cache hits</th><th>Slot wait</th><th>Workers</th></tr></thead><tbody>"
        )
        out.extend(_group_row(group) for group in data.groups)
        out.append("</tbody></table></div>")
    out.append("</section>")
    return "".join(out)


_LEVELS = (("0", "all levels"), ("10", "DEBUG and above"), ("20", "INFO and above"), ("30", "WARNING and above"),
           ("40", "ERROR and above"), ("50", "CRITICAL"))  # fmt: skip


def logs_html(data: ReportData) -> str:
    """Every log record (up to the limit) with a level filter that the page's script turns on."""
    logs = data.logs
    out = [f'<section id="logs"><h2>Logs ({len(logs):,}{"+" if data.logs_total else ""})</h2>']
    if data.logs_total:
        out.append(
            f'<p class="note">Showing the first {len(logs):,} log records; the run has more. '
            f"`daskflow runs logs {escape(data.detail.id)}` prints them all.</p>"
        )
    if not logs:
        out.append('<p class="note">This flow run logged nothing.</p></section>')
        return "".join(out)
    # Hidden until the script runs, so without script there is no control that does nothing.
    options = "".join(f'<option value="{value}">{label}</option>' for value, label in _LEVELS)
    out.append(
        f'<p class="log-filter" id="log-filter" hidden><label>Show <select id="log-level">{options}</select></label> '
        '<span id="log-shown" class="note"></span></p>'
    )
    out.append(f'<div class="scroll"><table class="logs" id="log-table">{_LOG_HEAD}<tbody>')
    out.append(_log_rows(logs, data, data.origin))
    out.append("</tbody></table></div></section>")
    return "".join(out)


def artifacts_html(data: ReportData) -> str:
    """Each artifact of the run, oldest first, rendered by type."""
    out = [f'<section id="artifacts"><h2>Artifacts ({len(data.artifacts):,})</h2>']
    if not data.artifacts:
        out.append('<p class="note">This flow run made no artifacts.</p>')
    for artifact in data.artifacts:
        task = data.task_names.get(artifact.task_run_id or "")
        where = f" by task run {escape(task)}" if task else ""
        description = (
            f'<div class="description">{render_markdown(artifact.description)}</div>' if artifact.description else ""
        )
        out.append(
            f'<article class="artifact" data-type="{escape(artifact.type)}"><h3>{escape(artifact.key or "(no key)")} '
            f'<span class="note">{escape(artifact.type)}{where}, {escape(format_time(artifact.created))}</span></h3>'
            f"{description}{render_artifact(artifact)}</article>"
        )
    out.append("</section>")
    return "".join(out)
