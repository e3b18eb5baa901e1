"""The run report (daskflow.report): one self-contained HTML page per flow run.

The histories are real where it matters — flows run on the Dask and thread
pool runners with the ``history`` fixture, so the report reads what the engine
actually records (a map of 20, a cache hit, a task failing after retries with
a warning logged on a worker, a subflow) — and synthetic where size is the
point: 10,000 task runs written straight into the store.

The page is checked twice: structurally, parsed with the standard library's
``html.parser`` (node colours, the ×20 group, traceback and log line, escaped
markdown, no external URL), and in a real headless Chromium through
Playwright (no script errors, the SVG's node count and computed fill, timeline
bars, the log level filter).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from daskflow import flow, get_run_logger, task
from daskflow.cache_policies import INPUTS
from daskflow.exceptions import RunNotFoundError
from daskflow.report import render_report, write_report
from daskflow.report.artifact_html import render_link, render_markdown, render_table, safe_href
from daskflow.report.layout import MAX_PER_COLUMN, layout_graph, layout_timeline, nice_ticks
from daskflow.runstore import ArtifactRecord, FlowRunRecord, LogEntry, StateRecord, TaskRunInfo, TaskRunRecord
from daskflow.task_runners import DaskTaskRunner, ThreadPoolTaskRunner

RED = "#e03131"

# -- a small DOM over html.parser ------------------------------------------------------------

_VOID = frozenset({"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def all_text(self) -> str:
        return "".join(self.text) + "".join(child.all_text() for child in self.children)

    def find_all(self, tag: str, **attrs: str) -> list[Element]:
        found = []
        for child in self.children:
            classes = child.attrs.get("class", "").split()
            if child.tag == tag and all(
                (v in classes) if k == "class_" else child.attrs.get(k) == v for k, v in attrs.items()
            ):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def parse(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def external_urls(root: Element, stack: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(tag, attribute, url) of every src/href that leaves the page, outside artifacts."""
    found = []
    for child in root.children:
        inside_artifact = "artifact" in child.attrs.get("class", "").split()
        for name in ("src", "href"):
            value = child.attrs.get(name, "")
            if value and not value.startswith("#") and not stack and not inside_artifact:
                found.append((child.tag, name, value))
        found.extend(external_urls(child, stack + (("artifact",) if inside_artifact else ())))
    return found


# -- a real run ----------------------------------------------------------------------------


def _run_demo(task_runner: Any, history: Any, tmp_path: Path) -> tuple[Any, str]:
    """Run a flow with a map of 20, a cache hit, a subflow and a task failing after two retries."""

    @task(cache_policy=INPUTS, result_storage=(tmp_path / "results").as_uri())
    def load(n: int) -> list[int]:
        get_run_logger().info("loaded %d rows", n)
        return list(range(n))

    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @task(retries=2)
    def publish(value: int) -> None:
        get_run_logger().warning("uploading %d to the warehouse", value)
        raise RuntimeError("the warehouse refused the upload")

    @flow(name="audit")
    def audit(n: int) -> int:
        return n

    @flow(name="report-demo", task_runner=task_runner)
    def pipeline(n: int = 20, label: str = "<b>nightly</b>") -> int:
        rows = load.submit(n)
        summed = total.submit(double.map(rows))
        audit(n)
        publish.submit(summed).result()
        return summed.result()

    for _ in range(2):  # the second run's load is a cache hit
        with pytest.raises(RuntimeError, match="refused"):
            pipeline()
    store = history()
    run_id = store.list_flow_runs(flow_name="report-demo")[0].id
    store.write(
        [
            ArtifactRecord(
                type="markdown",
                key="summary",
                data="# Nightly summary\n\n| region | rows |\n|---|---|\n| north | 10 |\n\n<script>alert('x')</script>",
                flow_run_id=run_id,
            ),
            ArtifactRecord(
                type="table", key="rows", data=json.dumps([{"a": 1, "b": "<i>x</i>"}, {"a": 2}]), flow_run_id=run_id
            ),
            ArtifactRecord(
                type="link",
                key="dashboard",
                data=json.dumps({"link": "https://example.com/d", "link_text": "Dashboard"}),
                flow_run_id=run_id,
            ),  # fmt: skip
            ArtifactRecord(
                type="link", key="evil", data=json.dumps({"link": "javascript:alert(1)"}), flow_run_id=run_id
            ),
        ]
    )
    return store, run_id


def test_the_report_of_a_dask_run_says_what_failed_where_and_why(
    dask_client: Any, history: Any, tmp_path: Path
) -> None:
    store, run_id = _run_demo(DaskTaskRunner(client=dask_client), history, tmp_path)
    html = render_report(store, run_id)
    root = parse(html)

    nodes = {node.attrs["data-task"]: node for node in root.find_all("g", class_="node")}
    assert set(nodes) == {"load", "double", "total", "publish"}, set(nodes)
    publish_body = nodes["publish"].find_all("rect", class_="node-body")[0]
    assert publish_body.attrs["fill"] == RED, publish_body.attrs
    assert nodes["load"].attrs["data-state"] == "cached", nodes["load"].attrs
    assert "double \u00d720" in nodes["double"].all_text(), nodes["double"].all_text()
    assert nodes["double"].attrs["data-runs"] == "20"
    edges = {(e.attrs["data-source"], e.attrs["data-target"]) for e in root.find_all("path", class_="edge")}
    assert edges == {("load", "double"), ("double", "total"), ("total", "publish")}, edges

    # Which task failed, on which worker, after how many retries, and what did it log?
    [failed] = root.find_all("details", class_="failed-run")
    text = failed.all_text()
    assert "publish-0" in text and "tcp://127.0.0.1:" in text and "2 retries" in text, text
    assert "RuntimeError: the warehouse refused the upload" in text, text
    assert "uploading 380 to the warehouse" in text, text  # logged on a worker, three times
    summary = root.find_all("section", id="failure")[0].all_text()
    assert "publish-0" in summary and "after 2 retries" in summary, summary

    bars = root.find_all("rect", class_="bar")
    # A lane per worker; runs with no worker (hits found on the client before submitting) are "local".
    assert bars and {lane.attrs["data-worker"] for lane in root.find_all("g", class_="lane")} <= {
        run.worker or "local" for run in store.task_runs(run_id)
    }
    assert root.find_all("tr", class_="subflow") and "audit" in root.find_all("tr", class_="subflow")[0].all_text()
    params = root.find_all("pre", class_="parameters")[0].all_text()
    assert json.loads(params) == {"n": 20, "label": "<b>nightly</b>"}, params
    assert "&lt;b&gt;nightly&lt;/b&gt;" in html and "<b>nightly</b>" not in html

    articles = {a.find_all("h3")[0].all_text().split()[0]: a for a in root.find_all("article", class_="artifact")}
    assert articles["summary"].find_all("h1") and articles["summary"].find_all("table"), articles["summary"]
    assert len(root.find_all("script")) == 1, "only the page's own script"
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in articles["summary"].all_text().replace("<", "&lt;").replace(
        ">", "&gt;"
    )
    assert "<script>alert" not in html
    assert [th.all_text() for th in articles["rows"].find_all("th")] == ["a", "b"]
    assert "&lt;i&gt;x&lt;/i&gt;" in html
    assert articles["dashboard"].find_all("a")[0].attrs["href"] == "https://example.com/d"
    assert not articles["evil"].find_all("a") and "javascript:alert(1)" in articles["evil"].all_text()
    assert external_urls(root) == [], external_urls(root)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def _find_chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium on PATH (chromium or chromium-browser): the browser check needs one")
    return path


def test_the_report_works_in_a_real_browser(history: Any, tmp_path: Path) -> None:
    chromium = _find_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    store, run_id = _run_demo(ThreadPoolTaskRunner(max_workers=4), history, tmp_path)
    path = write_report(store, run_id, tmp_path / "out" / "report.html")

    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: errors.append(f"request {r.url}") if not r.url.startswith("file:") else None)
            page.goto(path.as_uri())
            assert page.locator("svg.graph g.node").count() == 4
            fill = page.eval_on_selector('g.node[data-task="publish"] rect.node-body', "e => getComputedStyle(e).fill")
            assert fill == "rgb(224, 49, 49)", fill
            # Runs a pixel apart in one state share a bar, so 23 quick runs make a few bars; the failure has its own.
            assert page.locator("svg.timeline rect.bar").count() >= 3
            assert page.locator('svg.timeline rect.bar[data-state="failed"]').count() == 1
            assert page.locator('g.lane[data-worker="local"]').count() == 1
            info = page.locator("#log-table tr.lvl-INFO").first
            warning = page.locator("#log-table tr.lvl-WARNING").first
            assert info.is_visible() and warning.is_visible()
            page.select_option("#log-level", "30")
            assert info.is_hidden() and warning.is_visible()
            assert "records shown" in page.inner_text("#log-shown")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        finally:
            browser.close()
    assert errors == [], errors


# -- a synthetic history of 10,000 task runs -------------------------------------------------


def _write_big_history(store: Any, n: int = 10_000, names: int = 3) -> str:
    """One flow run: a load, a map of ``n`` doubles over 8 workers x 2 threads (1% failed), a total."""
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    flow_id = str(uuid.uuid4())
    records: list[Any] = [
        FlowRunRecord(id=flow_id, name="big-run", flow_name="big", state_type="FAILED", state_name="Failed",
                      state_message="100 of 10,002 task runs failed", parameters={"n": n}, start_time=t0,
                      end_time=t0 + timedelta(seconds=120), run_count=1, updated=t0 + timedelta(seconds=120)),
        StateRecord(run_id=flow_id, run_kind="flow", type="RUNNING", name="Running", timestamp=t0),
    ]  # fmt: skip
    load_id = str(uuid.uuid4())
    records.append(
        TaskRunRecord(
            id=load_id,
            flow_run_id=flow_id,
            name="load-0",
            task_name="load",
            state_type="COMPLETED",
            state_name="Cached",
            cache_hit=True,
            start_time=t0,
            end_time=t0 + timedelta(milliseconds=5),
            run_count=1,
            created=t0,
        )  # fmt: skip
    )
    ids = []
    for i in range(n):
        run_id = str(uuid.uuid4())
        ids.append(run_id)
        worker, thread = divmod(i % 16, 2)
        start = t0 + timedelta(seconds=0.01 + (i // 16) * 0.18 + thread * 0.05)
        failed = i % 100 == 37
        records.append(
            TaskRunRecord(
                id=run_id, flow_run_id=flow_id, name=f"double-{i}", task_name=f"double{i % names if names > 3 else ''}",
                map_index=i, state_type="FAILED" if failed else "COMPLETED", state_name="Failed" if failed else "Completed",
                state_message="boom" if failed else None, start_time=start, end_time=start + timedelta(seconds=0.15),
                run_count=3 if failed else 1, worker=f"tcp://10.0.0.{worker}:4000", upstream_ids=(load_id,),
                traceback="Traceback (most recent call last):\nValueError: boom" if failed else None,
                slot_wait=0.01, created=t0 + timedelta(microseconds=i),
            )
        )  # fmt: skip
    records.append(
        TaskRunRecord(
            id=str(uuid.uuid4()),
            flow_run_id=flow_id,
            name="total-0",
            task_name="total",
            state_type="PENDING",
            state_name="Pending",
            upstream_ids=tuple(ids),
            created=t0 + timedelta(seconds=119),
        )  # fmt: skip
    )
    for i in range(6_000):
        records.append(
            LogEntry(
                flow_run_id=flow_id,
                task_run_id=ids[i % n],
                logger="daskflow.task_runs",
                level=20 if i % 3 else 30,
                message=f"item {i} <done>",
                created=t0 + timedelta(milliseconds=i),
            )  # fmt: skip
        )
    store.write(records)
    return flow_id


def test_ten_thousand_task_runs_make_a_bounded_page(history: Any, tmp_path: Path) -> None:
    store = history()
    flow_id = _write_big_history(store)
    started = time.perf_counter()
    path = write_report(store, flow_id, tmp_path / "big.html")
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    figures = f"10,002 task runs: {size / 1e6:.2f} MB written in {seconds:.2f} s"
    assert size < 5_000_000, figures
    html = path.read_text()
    root = parse(html)
    assert len(root.find_all("g", class_="node")) == 3, figures
    bars = root.find_all("rect", class_="bar")
    assert 0 < len(bars) <= 3_000, (len(bars), figures)
    assert "bars stand for" in html, figures
    assert any(bar.attrs["data-state"] == "failed" for bar in bars), "failures are never merged away"
    assert len(root.find_all("tr", class_="log")) == 5_000 + 60, figures  # the capped logs + the 60 failures' own
    assert "Showing the first 5,000 log records" in html, figures
    assert len(root.find_all("details", class_="failed-run")) == 100, figures
    assert root.find_all("tr", class_="task-group"), "10,000 runs are summed up per task"
    [double] = [node for node in root.find_all("g", class_="node") if node.attrs["data-task"] == "double"]
    assert double.attrs["data-state"] == "failed" and "double \u00d710,000" not in double.all_text()
    assert "double \u00d710000" in double.all_text(), double.all_text()
    print(figures)


def test_hundreds_of_distinct_tasks_wrap_into_a_grid(history: Any, tmp_path: Path) -> None:
    store = history()
    flow_id = _write_big_history(store, n=600, names=300)
    root = parse(render_report(store, flow_id))
    nodes = root.find_all("g", class_="node")
    assert len(nodes) == 302
    [svg] = root.find_all("svg", class_="graph")
    assert float(svg.attrs["height"]) < (MAX_PER_COLUMN + 1) * 80, svg.attrs  # wrapped, not one endless column


# -- the API's edges -------------------------------------------------------------------------


def test_what_went_wrong_names_the_cause_and_counts_the_runs_that_never_ran(history: Any) -> None:
    @task
    def fetch(i: int) -> int:
        if i == 2:
            raise ConnectionError("source down")
        return i

    @task
    def store_it(value: int) -> int:
        return value

    @flow(name="cause-and-consequence")
    def pipeline() -> list[Any]:
        return [store_it.submit(fetch.submit(i)) for i in range(3)]  # returned: their states decide the flow's

    assert pipeline(return_state=True).is_failed()
    store = history()
    [summary] = store.list_flow_runs(flow_name="cause-and-consequence")
    page = render_report(store, summary.id)
    section = page[page.index('id="failure"') : page.index("</section>", page.index('id="failure"'))]
    assert "fetch-2" in section and "source down" in section, section
    causes = section[section.index("<ul>") : section.index("</ul>")]
    assert "store_it-2" not in causes, f"a NotReady run is a consequence, not a cause: {causes}"
    assert "1 task run did not run because a run it depends on failed" in section, section


def test_an_unknown_run_is_a_clear_error_and_writing_is_atomic(history: Any, tmp_path: Path) -> None:
    @flow(name="tiny")
    def tiny() -> int:
        return 1

    tiny()
    store = history()
    with pytest.raises(RunNotFoundError, match=r"'nope'.*daskflow runs ls"):
        render_report(store, "nope")
    target = tmp_path / "r.html"
    target.write_text("old")
    with pytest.raises(LookupError):
        write_report(store, "nope", target)
    assert target.read_text() == "old"
    [summary] = store.list_flow_runs(flow_name="tiny")
    assert write_report(store, summary.id[:8], os.fspath(target)) == target  # the only run: a prefix is enough
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"], "no temporary file left behind"
    fixed = datetime(2024, 1, 1, tzinfo=UTC)
    assert render_report(store, summary.id, generated_at=fixed) == render_report(store, summary.id, generated_at=fixed)
    assert "This flow run has no task runs" in render_report(store, summary.id)


def test_artifacts_are_rendered_and_cannot_inject_anything() -> None:
    html = render_markdown("# T\n\n<img src=x onerror=alert(1)>\n\n[a](javascript:alert(1)) ![p](https://e.com/p.png)")
    assert "<h1>T</h1>" in html and "<img src=x" not in html and 'href="javascript' not in html, html
    assert "<img" not in html and 'href="https://e.com/p.png"' in html, html  # never fetched, only linked
    assert "<th>x</th>" in render_table(json.dumps({"columns": ["x"], "rows": [[1], [2]]}))
    assert "<th>x</th>" in render_table(json.dumps({"columns": ["x"], "data": [{"x": 1}]}))
    assert "<td>3</td>" in render_table(json.dumps([[1, 2], [3, 4]]))
    assert "<th>c</th>" in render_table(json.dumps({"c": [1, 2]}))
    assert "<pre>not json</pre>" in render_table("not json")
    for url in ("javascript:alert(1)", "java\tscript:x", "//evil.com/x", "data:text/html,x", "file:///etc/passwd"):
        assert safe_href(url) is None, url
        assert "href" not in render_link(json.dumps({"link": url}))
    for url in ("https://e.com", "http://e.com", "mailto:a@b.c", "reports/x.html", "#top"):
        assert safe_href(url) == url, url
    assert (
        render_link("https://e.com/x")
        == '<p><a href="https://e.com/x" rel="noopener noreferrer">https://e.com/x</a></p>'
    )


def test_the_graph_layout_layers_by_longest_path_and_survives_cycles() -> None:
    # a -> b -> d, a -> c -> d, a -> d: d sits two columns right of a, b and c share a column.
    layout = layout_graph(4, [(0, 1), (0, 2), (1, 3), (2, 3), (0, 3)])
    layers = {node: place.layer for node, place in layout.places.items()}
    assert layers == {0: 0, 1: 1, 2: 1, 3: 2}, layers
    assert layout.places[1].x == layout.places[2].x and layout.places[1].y != layout.places[2].y
    cyclic = layout_graph(2, [(0, 1), (1, 0)])
    assert cyclic.back_edges == frozenset({(1, 0)}) and len(cyclic.places) == 2
    assert nice_ticks(10) == [0, 2, 4, 6, 8, 10] and nice_ticks(0.03)[1] == pytest.approx(0.005)


def _info(i: int, start: datetime, seconds: float, state: str, worker: str | None = None) -> TaskRunInfo:
    return TaskRunInfo(
        id=f"run-{i}", flow_run_id="flow", name=f"t-{i}", task_name="t", map_index=i, state_type=state.upper(),
        state_name=state, state_message=None, start_time=start, end_time=start + timedelta(seconds=seconds),
        run_count=1, cache_key=None, cache_hit=False, worker=worker, slot_wait=0.0, traceback=None, created=start,
    )  # fmt: skip


def test_the_timeline_packs_threads_into_rows_and_caps_its_bars() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    # Two threads of one worker: two rows; a run on no worker goes to the "local" lane.
    runs = [_info(i, t0 + timedelta(seconds=i // 2), 1.0, "Completed", "w1") for i in range(10)]
    runs.append(_info(10, t0, 2.0, "Completed"))
    timeline = layout_timeline(runs, t0)
    assert [(lane.worker, len(lane.sublanes)) for lane in timeline.lanes] == [("w1", 2), ("local", 1)]
    assert timeline.span == 5.0 and timeline.runs_placed == 11
    # 5,000 runs alternating between states cannot merge: the longest 300 are kept, the failures always.
    many = [
        _info(i, t0 + timedelta(seconds=i), 0.3 + (i % 7) / 10, "Failed" if i % 500 == 0 else "Completed" if i % 2 else "Cached")
        for i in range(5_000)
    ]  # fmt: skip
    capped = layout_timeline(many, t0, max_bars=300)
    kept = [bar for lane in capped.lanes for sub in lane.sublanes for bar in sub]
    assert capped.bars_drawn == len(kept) == 300 and capped.runs_drawn == 300, capped
    assert sum(bar.key == "failed" for bar in kept) == 10
    assert min(bar.end - bar.start for bar in kept if bar.key != "failed") == pytest.approx(0.9)  # the longest ones
