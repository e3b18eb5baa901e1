"""The daskflow server in a real browser: headless Chromium (Debian's) driven by Playwright.

The server is ``daskflow server`` in a subprocess over a temporary SQLite
store; flows run in processes of their own and are held at gate files
(``server_harness``), so a test watches a page change while the run is
running, without reloading it. Every page is checked for console errors, and
the hostile names, log lines and artifacts of the test flow must show as text
and run nothing (no window flag set, no dialog).

Set ``DASKFLOW_SERVER_SCREENSHOTS`` to a folder to keep the screenshots (the
README's is made this way).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from server_harness import HOSTILE_NAME, Server, run_script, stacks_on_failure, wait_for  # noqa: E402

PAGES = ("/", "/deployments", "/work-pools", "/concurrency", "/artifacts", "/cache", "/blocks", "/docs")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on PATH (chromium or chromium-browser): the browser tests need one")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


class Watched:
    """A page, and every console error, page error and dialog it produced."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def unexpected(self, *allowed: str) -> list[str]:
        return [p for p in self.problems if not any(a in p for a in allowed)]


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    page = Watched(browser)
    try:
        yield page
    finally:
        page.page.close()


def _run_id(server: Server, gate: str) -> str:
    def found() -> str | None:
        for run in server.get("/api/flow-runs?limit=100")[1]["flow_runs"]:
            if server.get(f"/api/flow-runs/{run['id']}")[1]["parameters"].get("gate") == gate:
                return str(run["id"])
        return None

    return str(wait_for(found, 60, f"the run held at {gate} to be listed"))


def _screenshot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=False)
    keep = os.environ.get("DASKFLOW_SERVER_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(keep) / name)


def test_a_running_flow_updates_live_and_hostile_text_stays_text(
    server: Server, server_folder: Path, server_store_url: str, watched: Watched, tmp_path: Path
) -> None:
    process = run_script(server_folder, server_store_url, "3", "live-gate")
    try:
        with stacks_on_failure(process):
            run_id = _run_id(server, "live-gate")
            page = watched.page
            page.goto(server.base + "/")
            link = page.locator(f'#runs-body tr[data-run-id="{run_id}"] a')
            sync_api.expect(link).to_contain_text(HOSTILE_NAME, timeout=10_000)  # the name, as text
            assert page.locator("#runs-body img").count() == 0, "the flow name became an <img> element"

            link.click()
            page.wait_for_url(f"**/flow-runs/{run_id}")
            page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
            hold = page.locator("#task-body tr", has_text="hold").locator(".badge")
            sync_api.expect(hold).to_have_text("Running", timeout=60_000)
            sync_api.expect(page.locator("#run-state .badge")).to_have_text("Running", timeout=30_000)
            sync_api.expect(page.locator("#log-tail .log", has_text="holding at")).to_have_count(1, timeout=30_000)
            lines_before = page.locator("#log-tail .log").count()
            _screenshot(page, tmp_path, "server-flow-run.png")  # the README's: a run held at its gate, live

            (server_folder / "gates" / "live-gate").touch()
            sync_api.expect(hold).to_have_text("Completed", timeout=30_000)
            sync_api.expect(page.locator("#run-state .badge")).to_have_text("Completed", timeout=30_000)
            sync_api.expect(page.locator("#log-tail .log", has_text="released live-gate")).to_have_count(
                1, timeout=30_000
            )
            assert page.locator("#log-tail .log").count() > lines_before, "the log tail did not grow"
            assert page.evaluate("window.__sameDocument") is True, "the page reloaded instead of updating"

            # Hostile text: a <script> log line and artifact, an <img onerror> flow name, all shown as text.
            assert page.evaluate("[window.__pwned_log, window.__pwned_artifact]") == [None, None]
            assert "<script>window.__pwned_log = 1</script>" in page.locator("#log-tail").inner_text()
            assert "<script>window.__pwned_artifact = 1</script>" in page.locator("#artifacts").inner_text()
            assert HOSTILE_NAME in page.locator("h1").inner_text()
            assert page.locator("main img").count() == 2  # the graph and the timeline, nothing the run wrote
            page.select_option("#log-level", "30")  # WARNING and above: none in this run
            sync_api.expect(page.locator("#log-tail .log")).to_have_count(0)
            page.select_option("#log-level", "20")
            sync_api.expect(page.locator("#log-tail .log", has_text="released")).to_have_count(1)
            assert process.wait(60) == 0

            task_link = page.locator("#task-body a", has_text="hold")
            task_link.click()
            page.wait_for_url("**/task-runs/*")
            assert "holding at <script>" in page.locator(".logs").inner_text()
            for path in PAGES:
                page.goto(server.base + path)
                page.wait_for_load_state("load")
            _screenshot(page, tmp_path, "server-docs.png")
            page.goto(server.base + "/")
            sync_api.expect(page.locator("#runs-body tr").first).to_contain_text(HOSTILE_NAME)
            _screenshot(page, tmp_path, "server-runs.png")
            assert watched.problems == [], watched.problems
    finally:
        (server_folder / "gates" / "live-gate").touch()
        process.wait(60)


def test_cancel_ends_a_running_flow_and_retry_hits_its_cache(
    server: Server, server_folder: Path, server_store_url: str, watched: Watched
) -> None:
    process = run_script(server_folder, server_store_url, "2", "cancel-gate")
    try:
        run_id = _run_id(server, "cancel-gate")
        page = watched.page
        page.goto(f"{server.base}/flow-runs/{run_id}")
        hold = page.locator("#task-body tr", has_text="hold").locator(".badge")
        sync_api.expect(hold).to_have_text("Running", timeout=60_000)
        sync_api.expect(page.locator("#retry-button")).to_be_hidden()
        page.click("#cancel-button")
        sync_api.expect(page.locator("#action-message")).to_contain_text("Cancel requested")
        sync_api.expect(page.locator("#run-state .badge")).to_have_text("Cancelled", timeout=20_000)
    finally:
        (server_folder / "gates" / "cancel-gate").touch()  # the held task's thread may run on after the cancel
        process.wait(60)
    sync_api.expect(page.locator("#retry-button")).to_be_visible()
    page.click("#retry-button")
    page.wait_for_url(lambda url: "/flow-runs/" in url and run_id not in url, timeout=30_000)
    sync_api.expect(page.locator("#run-state .badge")).to_have_text("Completed", timeout=30_000)
    cached = page.locator("#task-body tr", has_text="prepare-").locator(".badge")
    sync_api.expect(cached).to_have_text(["Cached", "Cached"], timeout=10_000)
    new_id = page.url.rsplit("/", 1)[1]
    detail = server.get(f"/api/flow-runs/{new_id}")[1]
    assert detail["parameters"] == {"n": 2, "gate": "cancel-gate"} and detail["task_counts"] == {
        "Cached": 2, "Completed": 1,
    }, detail  # fmt: skip

    # The Cache page lists the entries the runs wrote, per task, and clears one task's.
    page.goto(server.base + "/cache")
    row = page.locator("tr", has=page.locator("td", has_text="prepare"))
    sync_api.expect(row.locator("td").nth(1)).not_to_have_text("0")
    row.locator("button.cache-clear").click()
    sync_api.expect(row).to_have_count(0, timeout=10_000)
    assert watched.problems == [], watched.problems


def test_the_deployment_form_runs_typed_parameters_and_shows_a_bad_one(
    server: Server, server_folder: Path, server_store_url: str, watched: Watched
) -> None:
    assert run_script(server_folder, server_store_url, "deploy", "ui-deployment").wait(60) == 0
    (server_folder / "gates" / "deploy-gate").touch()
    page = watched.page
    page.goto(server.base + "/deployments")
    page.locator("tr", has_text="ui-deployment").locator("a", has_text="Run").click()
    page.wait_for_url("**/deployments/ui-deployment")
    runs_before = len(server.get("/api/flow-runs?limit=500")[1]["flow_runs"])

    page.fill("#param-n", "many")
    page.click("#run-submit")
    sync_api.expect(page.locator("#error-n")).to_contain_text("'many'", timeout=10_000)
    assert page.url.endswith("/deployments/ui-deployment"), "a bad value must not run anything"
    assert len(server.get("/api/flow-runs?limit=500")[1]["flow_runs"]) == runs_before

    page.fill("#param-n", "2")
    page.click("#run-submit")
    page.wait_for_url("**/flow-runs/*", timeout=30_000)
    sync_api.expect(page.locator("#run-state .badge")).to_have_text("Completed", timeout=30_000)
    assert '"n": 2' in page.locator("pre.params").inner_text()  # an int, not "2"
    # The deliberate bad value is the one error the console saw: the API's 422 for it.
    assert watched.unexpected("status of 422") == [], watched.problems


def test_a_run_paused_for_input_is_resumed_from_its_page_with_typed_input(
    server: Server, server_folder: Path, server_store_url: str, watched: Watched
) -> None:
    process = run_script(server_folder, server_store_url, "pause", "pause-gate")
    try:
        run_id = _run_id(server, "pause-gate")
        wait_for(lambda: server.get(f"/api/flow-runs/{run_id}")[1]["state_type"] == "PAUSED", 60, "the run to pause")
        page = watched.page
        page.goto(f"{server.base}/flow-runs/{run_id}")
        sync_api.expect(page.locator("#run-state .badge")).to_have_text("Paused")
        page.select_option("#param-approved", "true")
        page.fill("#param-reviewer", "ada")
        page.fill("#param-copies", "lots")
        page.click("#resume-button")
        sync_api.expect(page.locator("#error-copies")).to_contain_text("valid integer", timeout=30_000)
        assert server.get(f"/api/flow-runs/{run_id}")[1]["state_type"] == "PAUSED", "a bad input resumed the run"

        page.fill("#param-copies", "3")
        page.click("#resume-button")
        sync_api.expect(page.locator("#action-message")).to_contain_text("Resumed", timeout=30_000)
        sync_api.expect(page.locator("#resume-section")).to_be_hidden()
        sync_api.expect(page.locator("#run-state .badge")).to_have_text("Completed", timeout=30_000)
        sync_api.expect(page.locator("#log-tail .log", has_text="approved=True by ada, 3 copies")).to_have_count(
            1, timeout=30_000
        )
        assert process.wait(60) == 0
        assert watched.unexpected("status of 422") == [], watched.problems
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(60)
