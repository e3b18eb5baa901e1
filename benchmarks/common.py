"""What every benchmark suite shares: timing, memory, result rows, the table, the JSON.

Figures on these shared 2-core machines are noisy, so a suite never reports
an absolute time alone: each row is one workload at one size, timed against
a baseline in the same process, side by side, with the ratio between them
(see shared/spec/benchmarks.md). Times are the best of k repeats, the usual
way to see past other processes stealing the CPU.

The suite contract, which ``run_all.py`` relies on:

- a suite is a script ``benchmarks/w<number>_<name>.py`` (W1 ... W7);
- it has ``main(argv: list[str] | None = None) -> int`` and runs it under
  ``if __name__ == "__main__"``;
- it accepts ``--quick`` (a run of a few seconds) and ``--json FILE``
  (:func:`suite_arguments` builds that parser);
- it prints its rows as a table and writes one JSON object to FILE:
  ``{"suite": "W6", "title": ..., "quick": ..., "rows": [Row, ...],
  "notes": [...], "environment": {...}}`` (:func:`finish_suite` does both).

Scripts in this folder run as files, not as a package: Python puts the
script's folder on ``sys.path``, so a suite imports this module as
``common``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Row",
    "SuiteResult",
    "best_of",
    "environment",
    "finish_suite",
    "format_table",
    "peak_rss_mib",
    "suite_arguments",
    "write_json",
]


@dataclass
class Row:
    """One workload at one size, measured against one baseline in the same process."""

    suite: str  # "W6"
    workload: str  # what ran, e.g. "sequential task calls"
    n: int  # its size: task calls, tasks, flow calls
    daskflow_s: float  # wall time of the daskflow run (best of k)
    baseline_s: float  # wall time of the baseline run (best of k)
    baseline: str  # what the baseline is: "plain Python", "raw Dask", ...
    notes: str = ""  # the figure a reader wants, in words: "14.2 µs per call"
    metrics: dict[str, float | int | str | None] = field(default_factory=dict)  # everything else, by name

    @property
    def ratio(self) -> float:
        return self.daskflow_s / self.baseline_s if self.baseline_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class SuiteResult:
    """Everything one suite run reports: its rows, notes (what was skipped and why), the machine."""

    suite: str
    title: str
    quick: bool
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "title": self.title,
            "quick": self.quick,
            "rows": [row.to_dict() for row in self.rows],
            "notes": list(self.notes),
            "environment": environment(),
        }


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls of ``fn``, in seconds.

    The garbage collector stays on while timing, unlike ``timeit``: the
    objects a task run allocates, and collecting them, are part of what a
    user pays. It is emptied before each repeat so that one repeat does not
    pay for the garbage of the one before.
    """
    best = float("inf")
    for _ in range(max(1, repeats)):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def environment() -> dict[str, Any]:
    """The facts a reader needs to compare two runs' figures."""
    daskflow_version: str | None
    try:
        from daskflow import __version__ as daskflow_version
    except Exception:  # the report should still say what it can
        daskflow_version = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "daskflow": daskflow_version,
    }


def _seconds(value: float) -> str:
    return f"{value:.4g}"


def _ratio(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """Rows as a fixed-width text table: workload, N, daskflow s, baseline s, ratio, notes."""
    header = ("workload", "N", "daskflow s", "baseline s", "ratio", "notes")
    body = [
        (
            f"{r.suite} {r.workload}",
            f"{r.n:,}",
            _seconds(r.daskflow_s),
            _seconds(r.baseline_s),
            _ratio(r.ratio),
            r.notes,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    right = {1, 2, 3, 4}  # numbers line up on the right

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def suite_arguments(description: str | None) -> argparse.ArgumentParser:
    """The command line every suite accepts; a suite may add its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds (smaller sizes, fewer repeats)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats; the best is reported")
    return parser


def finish_suite(result: SuiteResult, json_path: str | None) -> int:
    """Print the suite's table and notes, write its JSON if asked; the exit code for ``main``."""
    print(f"\n{result.suite}: {result.title}" + (" (quick)" if result.quick else ""))
    print(format_table(result.rows))
    for note in result.notes:
        print(f"  note: {note}")
    if json_path:
        write_json(json_path, result.to_dict())
    return 0
