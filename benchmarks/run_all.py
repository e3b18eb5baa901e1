"""Run every benchmark suite and print one table: the driver of shared/spec/benchmarks.md.

The suites are the scripts ``benchmarks/w<number>_<name>.py`` present in this
folder (W1 ... W7; a suite added later is picked up when its file appears).
Each runs in a subprocess of its own, so that one suite's Dask clusters,
threads and peak memory cannot colour the next one's figures, with a fresh,
empty daskflow home (``DASKFLOW_HOME``), so that no cache entry or run
history left by an earlier run changes them either. Each suite writes its
rows to a temporary JSON file (the contract is in ``common.py``); the driver
gathers them into one table — workload, N, daskflow s, baseline s, ratio,
notes — and, with ``--json FILE``, one JSON document. A suite that fails or
times out is reported and the others still run; the exit code is then 1.

    python benchmarks/run_all.py --quick                  # a few seconds per suite
    python benchmarks/run_all.py --json results.json      # the full sizes
    python benchmarks/run_all.py --only W6 --quick
    python benchmarks/run_all.py --quick --chart docs/benchmarks.png   # what `make bench` runs

``--chart PNG`` draws one chart of every row (:mod:`chart`): seconds per workload for
plain Python, raw Dask, daskflow and Prefect 3 (W1 runs Prefect at N=1,000 when it is
installed, quick or not; without it the suite says it skipped Prefect).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chart import chart_missing, draw_chart
from common import Row, environment, format_table, write_json

HERE = Path(__file__).resolve().parent
SUITE_FILE = re.compile(r"^w(\d+)_\w+\.py$")


def discover(folder: Path = HERE) -> list[tuple[str, Path]]:
    """The suites present, as ``("W6", path)``, in the order of their numbers."""
    found = []
    for path in folder.glob("w*.py"):
        match = SUITE_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), f"W{int(match.group(1))}", path))
    return [(suite, path) for _, suite, path in sorted(found)]


def run_suite(suite: str, path: Path, *, quick: bool, timeout: float, home: Path) -> dict[str, Any]:
    """Run one suite in a subprocess; its JSON result, or a dict with ``"error"`` saying what went wrong."""
    with tempfile.TemporaryDirectory(prefix=f"daskflow-bench-{suite.lower()}-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(path), "--json", str(out), *(["--quick"] if quick else [])]
        # One home per script: w1_fanout.py and w1_large_map.py are both W1, and neither may see the other's history.
        env = {**os.environ, "DASKFLOW_HOME": str(home / path.stem)}
        print(f"== {suite}: {' '.join([Path(command[0]).name, *command[1:]])}", flush=True)
        started = time.perf_counter()
        try:
            # The suite's own output goes straight to ours: a long run shows its progress.
            done = subprocess.run(command, env=env, cwd=HERE.parent, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"suite": suite, "error": f"timed out after {timeout:g} s"}
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            return {"suite": suite, "error": f"exited with status {done.returncode}"}
        if not out.exists():
            return {"suite": suite, "error": "wrote no JSON (see the suite contract in benchmarks/common.py)"}
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        result["elapsed_s"] = elapsed
        return result


def rows_of(results: Sequence[dict[str, Any]]) -> list[Row]:
    fields = ("suite", "workload", "n", "daskflow_s", "baseline_s", "baseline", "notes", "metrics")
    return [Row(**{k: row[k] for k in fields if k in row}) for r in results for row in r.get("rows", [])]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every suite (a few seconds each)")
    parser.add_argument("--json", metavar="FILE", help="write every suite's results to FILE as one JSON document")
    parser.add_argument("--only", action="append", metavar="SUITE", help="run only this suite (W6, ...); repeatable")
    parser.add_argument(
        "--chart",
        metavar="PNG",
        help="draw one chart of seconds per workload (plain Python, raw Dask, daskflow, Prefect)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one suite may take (default 3600)")
    args = parser.parse_args(argv)

    suites = discover()
    if args.only:
        wanted = {name.upper() for name in args.only}
        suites = [(suite, path) for suite, path in suites if suite in wanted]
    if not suites:
        print("no benchmark suites to run (looked for benchmarks/w<number>_<name>.py)", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="daskflow-bench-home-") as home:
        results = [run_suite(s, p, quick=args.quick, timeout=args.timeout, home=Path(home)) for s, p in suites]

    rows = rows_of(results)
    failures = [r for r in results if "error" in r]
    print(f"\nAll suites{' (quick)' if args.quick else ''}:")
    print(format_table(rows))
    for r in results:
        for note in r.get("notes", []):
            print(f"  {r['suite']} note: {note}")
    for r in failures:
        print(f"  {r['suite']} FAILED: {r['error']}")

    if args.chart:
        missing = chart_missing()
        if missing:
            print(f"  {missing}")
        else:
            title = f"daskflow benchmarks{' (quick)' if args.quick else ''}: seconds per workload, 2 workers x 1 thread"
            print(f"  chart: {draw_chart(rows, args.chart, title)}")

    if args.json:
        write_json(
            args.json,
            {
                "quick": args.quick,
                "environment": environment(),
                "rows": [row.to_dict() for row in rows],
                "suites": results,
                "failures": [{"suite": r["suite"], "error": r["error"]} for r in failures],
            },
        )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
