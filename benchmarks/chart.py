"""The one chart of a benchmark run: seconds per workload for plain Python, raw Dask, daskflow and Prefect.

``run_all.py --chart FILE`` draws it from the rows of every suite it ran. Each row
gives its daskflow time and its baseline's time; the baseline is placed by what it
is (``"plain Python"``, ``"raw Dask ..."``; other baselines, such as an ideal
time or daskflow itself, are not systems and are left out), and a row may carry
``python_s`` (the plain loop, W1) and ``prefect_s`` (Prefect 3 + prefect-dask on
the same cluster, W1) among its metrics. A system without a figure for a
workload simply has no bar there. Seconds are on a log scale: the four systems
span three orders of magnitude on the same work.

matplotlib comes with the ``bench`` extra; without it the chart is skipped, and
the driver says so.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SYSTEMS", "chart_missing", "chart_series", "draw_chart"]

SYSTEMS = ("plain Python", "raw Dask", "daskflow", "Prefect 3 + prefect-dask")
_COLOURS = ("#9e9e9e", "#4c72b0", "#dd8452", "#c44e52")


def chart_missing() -> str | None:
    """Why the chart cannot be drawn here, or None."""
    if importlib.util.find_spec("matplotlib") is None:
        return "chart skipped: matplotlib is not installed (pip install -e '.[bench]')"
    return None


def _system_of(baseline: str) -> str | None:
    if baseline.startswith("plain Python"):
        return "plain Python"
    if baseline.startswith("raw Dask"):
        return "raw Dask"
    return None


def _label(row: Any) -> str:
    workload = str(row.workload)
    variant = row.metrics.get("variant")
    short = workload.split(":")[0].split(" [")[0]
    if len(short) > 36:
        short = short[:35] + "…"
    short = short.replace(", ", ",\n")  # long names on two lines: the labels of neighbours do not meet
    return f"{row.suite} {short}\nN={row.n:,}" + (f" [{variant}]" if variant else "")


def chart_series(rows: Sequence[Any]) -> tuple[list[str], dict[str, list[float | None]]]:
    """Workload labels and, per system, its seconds for each (None where it has none)."""
    labels: list[str] = []
    series: dict[str, list[float | None]] = {system: [] for system in SYSTEMS}
    for row in rows:
        figures: dict[str, float | None] = dict.fromkeys(SYSTEMS)
        figures["daskflow"] = row.daskflow_s
        system = _system_of(str(row.baseline))
        if system is not None:
            figures[system] = row.baseline_s
        for key, system in (("python_s", "plain Python"), ("prefect_s", "Prefect 3 + prefect-dask")):
            value = row.metrics.get(key)
            if isinstance(value, int | float):
                figures[system] = float(value)
        if sum(v is not None for v in figures.values()) < 2:
            continue  # compared with nothing that is a system: no place in this chart
        labels.append(_label(row))
        for name in SYSTEMS:
            series[name].append(figures[name])
    return labels, series


def draw_chart(rows: Sequence[Any], path: str | Path, title: str) -> Path:
    """Draw the chart of ``rows`` to ``path`` (a PNG), atomically; return the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    labels, series = chart_series(rows)
    width = 0.2
    figure, axes = plt.subplots(figsize=(max(8.0, 1.25 * len(labels) + 2), 5.5), dpi=110)
    for offset, (system, colour) in enumerate(zip(SYSTEMS, _COLOURS, strict=True)):
        xs = [i + (offset - 1.5) * width for i, v in enumerate(series[system]) if v is not None]
        ys = [v for v in series[system] if v is not None]
        bars = axes.bar(xs, ys, width, label=system, color=colour)
        axes.bar_label(bars, labels=[f"{v:.3g}" for v in ys], fontsize=6, rotation=90, padding=2)
    axes.set_yscale("log")
    axes.set_ylabel("seconds (best of k; log scale)")
    axes.set_xticks(range(len(labels)), labels, fontsize=7)
    axes.set_title(title, fontsize=10)
    bottom, top = axes.get_ylim()
    axes.set_ylim(bottom, top * 30)  # room above the tallest bar for its label and the legend
    axes.legend(fontsize=8, loc="upper right", ncols=2)
    axes.grid(axis="y", which="both", alpha=0.25)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    figure.savefig(tmp, format="png")
    plt.close(figure)
    tmp.replace(target)
    return target
