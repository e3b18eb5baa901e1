"""The two drawings of a run report, as inline SVG strings: the task graph and the timeline.

Both take positions already computed (:mod:`.layout`) and only write markup:
every shape carries a ``<title>`` (the browser's tooltip, and what a screen
reader reads) and ``data-*`` attributes naming what it stands for, so tests and
users' scripts can find a node or a bar without parsing its geometry. Every
text that came from a user — task names, worker addresses, messages — passes
through :func:`html.escape`; numbers are rounded to a tenth of a pixel to keep
a 10,000-run timeline small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from daskflow.report.layout import TIMELINE_WIDTH, GraphLayout, TimelineBar, TimelineLayout, nice_ticks
from daskflow.report.model import STATE_STYLES, TaskGroup, format_duration

__all__ = ["graph_svg", "timeline_svg"]

_LABEL_CHARS = 26  # characters of a task name that fit a node; the tooltip has the rest


def _n(value: float) -> str:
    """A coordinate, short: at most one decimal, no trailing zero."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _group_tooltip(group: TaskGroup) -> str:
    counts = ", ".join(f"{count} {style.label}" for style, count in group.ordered_counts())
    lines = [
        group.label,
        f"{group.size} task run{'s' if group.size != 1 else ''}: {counts}",
        f"duration {group.duration_range()}",
        f"retries {group.retries}, cache hits {group.cache_hits}, slot wait {format_duration(group.slot_wait)}",
        "workers: "
        + ", ".join(group.workers[:6])
        + (f" and {len(group.workers) - 6} more" if len(group.workers) > 6 else ""),
    ]
    return "\n".join(lines)


def _stacked_bar(group: TaskGroup, x: float, y: float, width: float, height: float) -> list[str]:
    """Proportional segments for the states of the group's runs, on a white strip so red shows on red."""
    parts = [
        f'<rect x="{_n(x - 2)}" y="{_n(y - 2)}" width="{_n(width + 4)}" height="{_n(height + 4)}" rx="2" fill="#ffffff"/>'
    ]
    total = group.size or 1
    counts = group.ordered_counts()
    # Never thinner than 3 px, so one failure among 10,000 runs stays visible; the widest segment pays for it.
    widths = [max(width * count / total, 3.0) for _, count in counts]
    widest = max(range(len(widths)), key=widths.__getitem__)
    widths[widest] -= sum(widths) - width
    cursor = x
    for (style, count), w in zip(counts, widths, strict=True):
        parts.append(
            f'<rect class="segment" data-state="{style.key}" x="{_n(cursor)}" y="{_n(y)}" width="{_n(w)}" '
            f'height="{_n(height)}" fill="{style.colour}"><title>{count} {style.label}</title></rect>'
        )
        cursor += w
    return parts


def graph_svg(groups: Sequence[TaskGroup], edges: Mapping[tuple[int, int], int], layout: GraphLayout) -> str:
    """The task graph: one node per task group, coloured by its most severe state, with edges between groups."""
    if not groups:
        return '<p class="note">This flow run has no task runs.</p>'
    w, h = layout.node_width, layout.node_height
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{_n(layout.width)}" '
        f'height="{_n(layout.height)}" viewBox="0 0 {_n(layout.width)} {_n(layout.height)}" role="img" '
        'aria-label="Task graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#6c757d"/></marker></defs>',
        '<g class="edges">',
    ]
    names = {group.index: group.name for group in groups}
    # Hundreds of edges (one task fanning out to hundreds of others) would hide the nodes: fade them.
    opacity = 1.0 if len(edges) <= 60 else max(0.2, 60 / len(edges))
    for (source, target), links in sorted(edges.items()):
        a, b = layout.places[source], layout.places[target]
        x1, y1 = a.x + w, a.y + h / 2
        x2, y2 = b.x, b.y + h / 2
        back = (source, target) in layout.back_edges
        bend = max(40.0, abs(x2 - x1) / 2)
        dash = ' stroke-dasharray="5 4"' if back else ""
        out.append(
            f'<path class="edge" data-source="{escape(names[source])}" data-target="{escape(names[target])}" '
            f'd="M{_n(x1)},{_n(y1)} C{_n(x1 + bend)},{_n(y1)} {_n(x2 - bend)},{_n(y2)} {_n(x2)},{_n(y2)}" '
            f'fill="none" stroke="#6c757d" stroke-opacity="{opacity:.2f}" stroke-width="1.3"{dash} marker-end="url(#arrow)">'
            f"<title>{escape(names[source])} \u2192 {escape(names[target])}: {links} result{'s' if links != 1 else ''}"
            "</title></path>"
        )
    out.append('</g><g class="nodes">')
    for group in groups:
        place = layout.places[group.index]
        style = STATE_STYLES[group.summary_key]
        counts = " \u00b7 ".join(f"{count} {s.label}" for s, count in group.ordered_counts())
        out.append(
            f'<g class="node" data-task="{escape(group.name)}" data-state="{style.key}" data-runs="{group.size}" '
            f'transform="translate({_n(place.x)},{_n(place.y)})">'
            f"<title>{escape(_group_tooltip(group))}</title>"
            f'<rect class="node-body" width="{_n(w)}" height="{_n(h)}" rx="6" fill="{style.colour}" '
            'stroke="#343a40" stroke-width="0.6"/>'
            f'<text x="10" y="19" fill="{style.text}" class="node-label">{escape(_clip(group.label, _LABEL_CHARS))}</text>'
            f'<text x="10" y="35" fill="{style.text}" class="node-sub">{escape(_clip(counts, 34))}</text>'
        )
        out.extend(_stacked_bar(group, 10, h - 14, w - 20, 7))
        out.append("</g>")
    out.append("</g></svg>")
    return "".join(out)


# -- timeline ------------------------------------------------------------------------------

_LABEL_WIDTH = 190
_SUBLANE = 14
_BAR = 10
_LANE_GAP = 10
_AXIS = 26


def _bar_tooltip(bar: TimelineBar) -> str:
    style = STATE_STYLES[bar.key]
    if len(bar.runs) == 1:
        run = bar.runs[0]
        parts = [run.name, run.state_name, format_duration(run.duration), f"retries {run.retries}"]
        if run.cache_hit:
            parts.append("cache hit")
        if run.slot_wait:
            parts.append(f"slot wait {format_duration(run.slot_wait)}")
        return " \u00b7 ".join(parts) + f"\n{bar.start:.3f}\u2013{bar.end:.3f} s"
    names = sorted({run.task_name for run in bar.runs})
    return (
        f"{len(bar.runs)} {style.label} runs merged ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): "
        f"{bar.runs[0].name} \u2026 {bar.runs[-1].name}\n{bar.start:.3f}\u2013{bar.end:.3f} s"
    )


def timeline_svg(timeline: TimelineLayout) -> str:
    """A Gantt chart of task runs: one lane per worker, bars coloured by state, x in seconds from the flow's start."""
    if not timeline.lanes:
        return '<p class="note">No task run of this flow run started, so there is no timeline.</p>'
    scale = TIMELINE_WIDTH / timeline.span
    height = _AXIS + sum(len(lane.sublanes) * _SUBLANE + _LANE_GAP for lane in timeline.lanes)
    width = _LABEL_WIDTH + TIMELINE_WIDTH + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Timeline of task runs per worker">'
    ]
    for tick in nice_ticks(timeline.span):
        x = _LABEL_WIDTH + tick * scale
        out.append(
            f'<line x1="{_n(x)}" y1="{_AXIS - 6}" x2="{_n(x)}" y2="{height}" stroke="#e9ecef"/>'
            f'<text x="{_n(x)}" y="{_AXIS - 10}" text-anchor="middle" class="tick">{tick:g} s</text>'
        )
    y = float(_AXIS)
    for lane in timeline.lanes:
        lane_height = len(lane.sublanes) * _SUBLANE
        runs = sum(len(bar.runs) for sub in lane.sublanes for bar in sub)
        out.append(
            f'<g class="lane" data-worker="{escape(lane.worker)}">'
            f'<rect x="0" y="{_n(y)}" width="{width}" height="{lane_height}" fill="#f8f9fa"/>'
            f'<text x="6" y="{_n(y + min(lane_height, 2 * _SUBLANE) / 2 + 4)}" class="lane-label">'
            f"<title>{escape(lane.worker)}: {runs} task runs drawn in {len(lane.sublanes)} rows</title>"
            f"{escape(_clip(lane.worker, 28))}</text>"
        )
        for row, sub in enumerate(lane.sublanes):
            top = y + row * _SUBLANE + (_SUBLANE - _BAR) / 2
            for bar in sub:
                colour = STATE_STYLES[bar.key].colour
                x = _LABEL_WIDTH + bar.start * scale
                bar_width = max((bar.end - bar.start) * scale, 1.0)  # a 1 ms cache hit still shows
                out.append(
                    f'<rect class="bar" data-state="{bar.key}" x="{_n(x)}" y="{_n(top)}" width="{_n(bar_width)}" '
                    f'height="{_BAR}" fill="{colour}"><title>{escape(_bar_tooltip(bar))}</title></rect>'
                )
        out.append("</g>")
        y += lane_height + _LANE_GAP
    out.append("</svg>")
    return "".join(out)
