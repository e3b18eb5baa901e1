"""Where things go on the page: the task graph's layers and the timeline's lanes, computed in Python.

**Graph.** Nodes are task groups, edges the groups' upstream links. Each node
gets a *layer* (a column, left to right) by longest path: a node sits one
column right of its furthest upstream, so every edge points rightwards. Edges
that would close a cycle between groups (task A fed B in one run and B fed A in
another) are left out of the layering — an edge counts only when its source
group appeared first — and drawn as back edges. Within a column, nodes start
in order of first appearance, then a few barycenter sweeps (each node moves
to the mean position of its neighbours in the previous column, then the next)
undo most edge crossings at a cost linear in the edges. A column taller than
:data:`MAX_PER_COLUMN` wraps into several, so hundreds of unrelated tasks stay a
scrollable grid instead of one endless column.

**Timeline.** Task runs become bars in lanes, one lane per worker. Inside a
lane, overlapping runs are packed first-fit into sub-lanes (a worker with four
threads ends up with about four). To bound the drawing for runs of 10,000
tasks, consecutive bars of the same state in one sub-lane that lie closer than
a pixel or so merge into one bar (visually they are one anyway), and past
``max_bars`` the longest bars are kept, failures always; the layout says how
many runs were merged or left out so the page can say so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from daskflow.report.model import state_key
from daskflow.runstore.history import TaskRunInfo

__all__ = [
    "MAX_PER_COLUMN",
    "GraphLayout",
    "NodePlace",
    "TimelineBar",
    "TimelineLane",
    "TimelineLayout",
    "layout_graph",
    "layout_timeline",
    "nice_ticks",
]

NODE_WIDTH = 200
NODE_HEIGHT = 58
COLUMN_GAP = 80
ROW_GAP = 18
MARGIN = 16
MAX_PER_COLUMN = 20  # nodes in one column before it wraps into another
_SWEEPS = 4  # barycenter passes each way; crossings rarely improve after a few


@dataclass(frozen=True, slots=True)
class NodePlace:
    """The top-left corner of one node, and its layer."""

    layer: int
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class GraphLayout:
    """Node positions (by group index), which edges point backwards, and the drawing's size."""

    places: dict[int, NodePlace]
    back_edges: frozenset[tuple[int, int]]
    width: float
    height: float
    node_width: float = NODE_WIDTH
    node_height: float = NODE_HEIGHT


def _layers(count: int, edges: Sequence[tuple[int, int]]) -> tuple[list[int], frozenset[tuple[int, int]]]:
    """Longest-path layer of each node 0..count-1 (nodes numbered in order of first appearance)."""
    forward: dict[int, list[int]] = defaultdict(list)
    back = set()
    for source, target in edges:
        if source < target:
            forward[target].append(source)
        else:
            back.add((source, target))
    layer = [0] * count
    for node in range(count):  # sources always come first, so one pass in index order suffices
        ups = forward.get(node)
        if ups:
            layer[node] = max(layer[up] for up in ups) + 1
    return layer, frozenset(back)


def _order(columns: list[list[int]], edges: Sequence[tuple[int, int]], back: frozenset[tuple[int, int]]) -> None:
    """Reorder each column in place by barycenters of its neighbours, sweeping right then left."""
    preds: dict[int, list[int]] = defaultdict(list)
    succs: dict[int, list[int]] = defaultdict(list)
    for source, target in edges:
        if (source, target) not in back:
            preds[target].append(source)
            succs[source].append(target)

    def sweep(column: list[int], neighbours: Mapping[int, list[int]], position: Mapping[int, float]) -> None:
        current = {node: i for i, node in enumerate(column)}

        def centre(node: int) -> float:
            seen = [position[n] for n in neighbours.get(node, ()) if n in position]
            return sum(seen) / len(seen) if seen else float(current[node])

        column.sort(key=lambda node: (centre(node), current[node]))

    for _ in range(_SWEEPS):
        position: dict[int, float] = {}
        for column in columns:
            if position:
                sweep(column, preds, position)
            position.update({node: float(i) for i, node in enumerate(column)})
        position = {}
        for column in reversed(columns):
            if position:
                sweep(column, succs, position)
            position.update({node: float(i) for i, node in enumerate(column)})


def layout_graph(count: int, edges: Sequence[tuple[int, int]]) -> GraphLayout:
    """Place ``count`` nodes (numbered in order of first appearance) joined by ``edges``."""
    if count == 0:
        return GraphLayout({}, frozenset(), 0.0, 0.0)
    layer, back = _layers(count, edges)
    columns: list[list[int]] = [[] for _ in range(max(layer) + 1)]
    for node in range(count):
        columns[layer[node]].append(node)
    _order(columns, edges, back)
    places: dict[int, NodePlace] = {}
    x = float(MARGIN)
    tallest = 0
    for index, column in enumerate(columns):
        # A tall column wraps into several side by side; its nodes fill them top to bottom.
        wraps = math.ceil(len(column) / MAX_PER_COLUMN)
        rows = math.ceil(len(column) / wraps)
        tallest = max(tallest, rows)
        for i, node in enumerate(column):
            sub, row = divmod(i, rows)
            places[node] = NodePlace(
                index, x + sub * (NODE_WIDTH + COLUMN_GAP / 2), MARGIN + row * (NODE_HEIGHT + ROW_GAP)
            )
        x += wraps * NODE_WIDTH + (wraps - 1) * COLUMN_GAP / 2 + COLUMN_GAP
    # Every column is centred vertically on the tallest, so short chains sit mid-height.
    height = 2 * MARGIN + tallest * (NODE_HEIGHT + ROW_GAP) - ROW_GAP
    for node, place in places.items():
        column = columns[place.layer]
        wraps = math.ceil(len(column) / MAX_PER_COLUMN)
        rows = math.ceil(len(column) / wraps)
        offset = (tallest - rows) * (NODE_HEIGHT + ROW_GAP) / 2
        places[node] = NodePlace(place.layer, place.x, place.y + offset)
    return GraphLayout(places, back, x - COLUMN_GAP + MARGIN, height)


# -- timeline ------------------------------------------------------------------------------

TIMELINE_WIDTH = 1000  # pixels of the time axis; what "closer than a pixel" refers to
MAX_SUBLANES = 32  # per worker; more overlapping runs than this share the last sub-lane
DEFAULT_MAX_BARS = 3_000


@dataclass(slots=True)
class TimelineBar:
    """One drawn bar: a run, or consecutive runs of one state merged; times in seconds from the origin."""

    start: float
    end: float
    key: str
    runs: list[TaskRunInfo]


@dataclass(slots=True)
class TimelineLane:
    """One worker's lane: its sub-lanes of bars."""

    worker: str
    sublanes: list[list[TimelineBar]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TimelineLayout:
    """The lanes, the time span, and what was left out of the drawing."""

    lanes: list[TimelineLane]
    span: float  # seconds the axis covers
    runs_total: int  # task runs of the flow run
    runs_placed: int  # those that started (or hit the cache), and so have a place in time
    bars_drawn: int
    runs_drawn: int  # runs inside the drawn bars (merged bars hold several)
    crowded: int  # runs that found no free sub-lane and overlap another


def nice_ticks(span: float, target: int = 8) -> list[float]:
    """Round tick positions from 0 to ``span``: steps of 1, 2 or 5 times a power of ten."""
    if span <= 0:
        return [0.0]
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(span / step + 1e-9) + 1)]


def layout_timeline(
    task_runs: Sequence[TaskRunInfo], origin: datetime | None, *, max_bars: int = DEFAULT_MAX_BARS
) -> TimelineLayout:
    """Pack the task runs that started into worker lanes; see the module docstring."""
    if origin is None:
        return TimelineLayout([], 0.0, len(task_runs), 0, 0, 0, 0)
    ends = [run.end_time for run in task_runs if run.end_time is not None]
    latest = max(ends) if ends else origin
    timed: list[tuple[float, float, TaskRunInfo]] = []
    for run in task_runs:
        began = run.start_time
        if began is None and run.cache_hit:
            # A cache hit never starts running; it is drawn as an instant where it ended (or was created).
            began = run.end_time or run.created
        if began is None:
            continue
        start = (began - origin).total_seconds()
        # A run without an end was still running when the history was written: draw it to the last end seen.
        end = (max(run.end_time or latest, began) - origin).total_seconds()
        timed.append((start, end, run))
    span = max((end for _, end, _ in timed), default=0.0)
    span = span if span > 0 else 1.0
    lanes: dict[str, TimelineLane] = {}
    sublane_ends: dict[str, list[float]] = {}
    crowded = 0
    for start, end, run in sorted(timed, key=lambda item: (item[0], item[1])):
        worker = run.worker or "local"
        lane = lanes.get(worker)
        if lane is None:
            lane = lanes[worker] = TimelineLane(worker)
            sublane_ends[worker] = []
        free = sublane_ends[worker]
        slot = next((i for i, busy_until in enumerate(free) if busy_until <= start), None)
        if slot is None:
            if len(free) < MAX_SUBLANES:
                slot = len(free)
                free.append(end)
                lane.sublanes.append([])
            else:
                slot = min(range(len(free)), key=free.__getitem__)
                crowded += 1
        free[slot] = max(free[slot], end)
        lane.sublanes[slot].append(TimelineBar(start, end, state_key(run.state_type, run.state_name), [run]))
    _merge_close_bars(lanes.values(), span)
    bars = [bar for lane in lanes.values() for sub in lane.sublanes for bar in sub]
    if len(bars) > max_bars:
        _keep_longest(lanes.values(), bars, max_bars)
        bars = [bar for lane in lanes.values() for sub in lane.sublanes for bar in sub]
    return TimelineLayout(
        lanes=list(lanes.values()),
        span=span,
        runs_total=len(task_runs),
        runs_placed=len(timed),
        bars_drawn=len(bars),
        runs_drawn=sum(len(bar.runs) for bar in bars),
        crowded=crowded,
    )


def _merge_close_bars(lanes: Iterable[TimelineLane], span: float) -> None:
    """Merge consecutive same-state bars of a sub-lane that are less than ~1.5 px apart."""
    gap = 1.5 * span / TIMELINE_WIDTH
    for lane in lanes:
        for i, sub in enumerate(lane.sublanes):
            merged: list[TimelineBar] = []
            for bar in sub:
                last = merged[-1] if merged else None
                if last is not None and last.key == bar.key and bar.start - last.end < gap:
                    last.end = max(last.end, bar.end)
                    last.runs.extend(bar.runs)
                else:
                    merged.append(TimelineBar(bar.start, bar.end, bar.key, list(bar.runs)))
            lane.sublanes[i] = merged


_ALWAYS_KEPT = frozenset({"failed", "crashed", "timedout", "cancelled"})


def _keep_longest(lanes: Iterable[TimelineLane], bars: list[TimelineBar], max_bars: int) -> None:
    """Drop all but ``max_bars`` bars: failures first, then the longest."""
    ranked = sorted(bars, key=lambda bar: (bar.key not in _ALWAYS_KEPT, -(bar.end - bar.start)))
    kept = {id(bar) for bar in ranked[:max_bars]}
    for lane in lanes:
        lane.sublanes = [[bar for bar in sub if id(bar) in kept] for sub in lane.sublanes]
