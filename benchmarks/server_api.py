"""S1-S4: the daskflow server over a large run store — page times, live latency, and the cost of listeners.

Not one of the W suites of shared/spec/benchmarks.md (those measure the
engine's overhead against raw Dask); this one measures issue 13's targets for
``daskflow server``, run as a user runs it (a subprocess on 127.0.0.1), over a
temporary SQLite store seeded through the store's own ``RunStore.write``:

* **S1** ``GET /api/flow-runs`` first page (50 runs) over 100,000 flow runs: the
  server's own time (its ``Server-Timing`` header), median and best of 20.
  Target: under 100 ms.
* **S2** the flow-run page of a run of 100,000 task runs: the HTML and the
  three API calls its script makes to fill it (header, first task-run page,
  log tail), server time summed; and in Chromium (when Playwright and a
  ``chromium`` are there) the time until its task table shows, and the number
  of DOM elements, which stays bounded because task runs are paged and maps
  are one node of the graph. Target: under 1 s. The graph and timeline images
  load after the page; their first drawing (one read of every task run, then
  kept until the run changes) is reported on its own.
* **S3** live latency: a state written to the store (a commit by another
  process's writer, here this script) until a connected browser's
  ``EventSource`` has it: median and p99 of 30.
* **S4** 50 clients on ``/api/events``: the polls and SQL statements the server
  ran in 5 s, which must be one poll per interval, not one per client.

    python benchmarks/server_api.py            # 100,000 flow runs and task runs
    python benchmarks/server_api.py --quick    # 10,000 of each
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import Row, SuiteResult, finish_suite, suite_arguments

ROOT = Path(__file__).resolve().parents[1]
BIG_RUN = "ffffffff-0000-4000-8000-000000000000"
INTERVAL = 0.5  # the server's event poll interval (its default)


def seed(url: str, flow_runs: int, task_runs: int) -> float:
    """Flow runs and one run of ``task_runs`` task runs, written in batches through ``RunStore.write``."""
    from daskflow.runstore import FlowRunRecord, RunStore, TaskRunRecord

    started = time.perf_counter()
    now = time.time()
    with RunStore(url) as store:
        batch: list[Any] = []

        def add(record: Any) -> None:
            batch.append(record)
            if len(batch) >= 25_000:
                store.write(batch)
                batch.clear()

        for i in range(flow_runs):
            add(FlowRunRecord(
                id=f"{i:08x}-0000-4000-8000-000000000000", name=f"run-{i}", flow_name=f"flow-{i % 7}",
                state_type="COMPLETED", state_name="Completed", start_time=now - flow_runs + i,
                end_time=now - flow_runs + i + 0.5, updated=now,
            ))  # fmt: skip
        add(FlowRunRecord(
            id=BIG_RUN, name="big", flow_name="big-map", state_type="COMPLETED", state_name="Completed",
            start_time=now, end_time=now + 60, updated=now,
        ))  # fmt: skip
        for i in range(task_runs):
            add(TaskRunRecord(
                id=f"eeeeeeee-{i % 65536:04x}-4000-8000-{i:012d}", flow_run_id=BIG_RUN, name=f"work-{i}",
                task_name="work", map_index=i, state_type="COMPLETED",
                state_name="Cached" if i % 3 == 0 else "Completed", start_time=now + i / task_runs * 50,
                end_time=now + i / task_runs * 50 + 0.01, worker=f"w{i % 4}", updated=now,
            ))  # fmt: skip
        store.write(batch)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(url: str, home: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DASKFLOW_HOME": str(home), "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-c", "from daskflow.cli import main; main()", "server", "--url", url,
               "--port", str(port), "--no-service", "--event-interval", str(INTERVAL)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(base, "/api/health")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("daskflow server did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


def get(base: str, path: str) -> tuple[float, bytes]:
    """(server time in seconds from its Server-Timing header, body)."""
    with urllib.request.urlopen(base + path, timeout=60) as response:
        body = response.read()
        timing = response.headers.get("Server-Timing", "app;dur=0")
    return float(timing.split("dur=")[1]) / 1000, body


def s1_first_page(base: str, n: int, repeats: int) -> Row:
    get(base, "/api/flow-runs?limit=50")  # the first read warms the connection pool and SQLite's cache
    times = [get(base, "/api/flow-runs?limit=50")[0] for _ in range(repeats)]
    median = statistics.median(times)
    return Row(
        "S1", "GET /api/flow-runs first page (50)", n, median, 0.100, "target",
        notes=f"median {median * 1000:.1f} ms, best {min(times) * 1000:.1f} ms server time (target < 100 ms)",
        metrics={"best_s": min(times), "repeats": repeats},
    )  # fmt: skip


def s2_flow_run_page(base: str, n: int, repeats: int, browser: Any) -> list[Row]:
    paths = [f"/flow-runs/{BIG_RUN}", f"/api/flow-runs/{BIG_RUN}", f"/api/flow-runs/{BIG_RUN}/task-runs?limit=50&offset=0",
             f"/api/flow-runs/{BIG_RUN}/logs?after=0&level=20"]  # fmt: skip
    totals = []
    for _ in range(repeats):
        totals.append(sum(get(base, path)[0] for path in paths))
    median = statistics.median(totals)
    first = get(base, f"/flow-runs/{BIG_RUN}/graph.svg")[0]  # draws the graph and the timeline from one read
    other = get(base, f"/flow-runs/{BIG_RUN}/timeline.svg")[0]
    again = get(base, f"/flow-runs/{BIG_RUN}/graph.svg")[0]
    metrics: dict[str, Any] = {"drawings_first_s": first, "timeline_after_s": other, "graph_cached_s": again}
    notes = f"median {median * 1000:.0f} ms server time for the page and its 3 API calls (target < 1 s)"
    if browser is not None:
        page = browser.new_page()
        started = time.perf_counter()
        page.goto(base + paths[0])
        page.wait_for_selector("#task-body tr")
        shown = time.perf_counter() - started
        elements = page.evaluate("document.getElementsByTagName('*').length")
        page.close()
        metrics.update({"browser_table_shown_s": shown, "dom_elements": elements})
        notes += f"; Chromium: task table shown in {shown * 1000:.0f} ms, {elements} DOM elements"
    rows = [Row("S2", f"flow-run page of a {n:,}-task-run run", n, median, 1.0, "target", notes=notes, metrics=metrics)]
    rows.append(Row(
        "S2", "its graph + timeline images, first drawing", n, first + other, 1.0, "target",
        notes=f"both drawn from one read in {first:.2f} s (they load after the page); then {other * 1000:.0f} ms "
        f"and {again * 1000:.0f} ms from the cache",
    ))  # fmt: skip
    return rows


def s3_live_latency(base: str, url: str, browser: Any, samples: int) -> Row | None:
    """A state committed -> the browser's EventSource has it, in ms of the same clock."""
    if browser is None:
        return None
    from daskflow.runstore import RunStore, StateRecord

    page = browser.new_page()
    page.goto(base + "/docs")
    page.evaluate(
        """() => { window.__arrivals = {};
        const source = new EventSource('/api/events');
        source.addEventListener('state', (e) => { const d = JSON.parse(e.data); window.__arrivals[d.run_id] = Date.now(); });
        return new Promise((ok) => source.addEventListener('hello', ok)); }"""
    )
    latencies = []
    with RunStore(url) as store:
        for _ in range(samples):
            run_id = str(uuid.uuid4())
            store.write([StateRecord(run_id=run_id, run_kind="flow", type="RUNNING", name="Running")])
            committed = time.time() * 1000
            page.wait_for_function("(id) => window.__arrivals[id] !== undefined", arg=run_id, timeout=10_000)
            latencies.append(page.evaluate("(id) => window.__arrivals[id]", run_id) - committed)
            time.sleep(INTERVAL * 0.37)  # spread the writes over the poll's phase, or every sample is alike
    page.close()
    latencies.sort()
    median, p99 = statistics.median(latencies), latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Row(
        "S3", "live latency: state committed -> browser event", samples, median / 1000, 2.0, "target (2 s)",
        notes=f"median {median:.0f} ms, p99 {p99:.0f} ms (poll interval {INTERVAL * 1000:.0f} ms)",
        metrics={"p99_ms": p99, "max_ms": latencies[-1]},
    )  # fmt: skip


def s4_many_listeners(base: str, clients: int, seconds: float) -> Row:
    port = int(base.rsplit(":", 1)[1])
    streams = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        streams.append(sock)
    try:
        for sock in streams:
            head = b""
            while b"event: hello" not in head:
                head += sock.recv(4096)
        import json

        before = json.loads(get(base, "/api/health")[1])
        time.sleep(seconds)  # a measuring window, not a synchronisation
        after = json.loads(get(base, "/api/health")[1])
    finally:
        for sock in streams:
            sock.close()
    polls = after["event_polls"] - before["event_polls"]
    statements = after["event_poll_statements"] - before["event_poll_statements"]
    expected = seconds / INTERVAL
    return Row(
        "S4", f"{clients} clients on /api/events for {seconds:g} s", clients, polls, expected, "one poll per interval",
        notes=f"{polls} polls, {statements} SQL statements ({statements / max(polls, 1):.1f} per poll) for "
        f"{after['event_clients']} clients; one per client would be {clients}x",
        metrics={"statements": statements, "clients": after["event_clients"]},
    )  # fmt: skip


def launch_browser() -> tuple[Any, Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, None
    if chromium is None:
        return None, None
    manager = sync_playwright().start()
    return manager, manager.chromium.launch(executable_path=chromium, args=["--no-sandbox"])


def main() -> int:
    args = suite_arguments(__doc__.split("\n")[0] if __doc__ else None).parse_args()
    n = 10_000 if args.quick else 100_000
    repeats = args.repeats or (5 if args.quick else 20)
    result = SuiteResult("S", "daskflow server over a large run store", args.quick)
    with tempfile.TemporaryDirectory(prefix="daskflow-bench-server-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'runs.db'}"
        seeded = seed(url, n, n)
        result.notes.append(
            f"seeded {n:,} flow runs and a run of {n:,} task runs through RunStore.write in {seeded:.1f} s"
        )
        manager, browser = launch_browser()
        if browser is None:
            result.notes.append("no Playwright or chromium: the browser figures (S2's DOM, S3) are left out")
        try:
            with running_server(url, Path(tmp) / "home") as base:
                result.rows.append(s1_first_page(base, n, repeats))
                result.rows.extend(s2_flow_run_page(base, n, max(3, repeats // 4), browser))
                latency = s3_live_latency(base, url, browser, 10 if args.quick else 30)
                if latency is not None:
                    result.rows.append(latency)
                result.rows.append(s4_many_listeners(base, 50, 2.0 if args.quick else 5.0))
        finally:
            if browser is not None:
                browser.close()
                manager.stop()
    return finish_suite(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
