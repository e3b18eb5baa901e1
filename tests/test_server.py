"""The daskflow server's API, live events and security, against ``daskflow server`` as a real subprocess.

Flows run in processes of their own (``server_harness.FLOWS``) and write to the
same run store as the server, SQLite here and once PostgreSQL; a run is held
at a gate file while the test looks at it. The browser tests are in
``test_server_browser.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")

from daskflow.runstore import FlowRunRecord, RunStore, TaskRunRecord  # noqa: E402
from server_harness import (  # noqa: E402
    HOSTILE_NAME,
    EventStream,
    Server,
    flow_env,
    run_script,
    server_process,
    wait_for,
)


def _run_of(server: Server, gate: str) -> dict[str, Any]:
    """The flow run holding at ``gate`` (its parameters say which), once the server lists it."""

    def found() -> dict[str, Any] | None:
        status, page = server.get("/api/flow-runs?limit=100")
        assert status == 200, page
        for run in page["flow_runs"]:
            status, detail = server.get(f"/api/flow-runs/{run['id']}")
            if detail["parameters"].get("gate") == gate:
                return detail  # type: ignore[no-any-return]
        return None

    return wait_for(found, 60, f"the run at gate {gate} to be listed")  # type: ignore[no-any-return]


def _state(server: Server, run_id: str) -> str:
    return str(server.get(f"/api/flow-runs/{run_id}")[1]["state_name"])


def test_the_api_shows_a_running_flow_run_its_task_runs_and_its_logs(
    server: Server, server_folder: Path, server_store_url: str
) -> None:
    process = run_script(server_folder, server_store_url, "3", "api-gate")
    try:
        _watch_a_held_run(server, server_folder, process)
    finally:
        (server_folder / "gates" / "api-gate").touch()  # whatever failed, the flow's process ends
        process.wait(60)


def _watch_a_held_run(server: Server, server_folder: Path, process: subprocess.Popen[str]) -> None:
    run = _run_of(server, "api-gate")
    run_id = run["id"]
    assert run["flow_name"] == HOSTILE_NAME and run["entrypoint"].endswith("server_flows.py:demo"), run

    def held() -> dict[str, Any] | None:
        detail = server.get(f"/api/flow-runs/{run_id[:8]}")[1]  # a unique prefix names the run
        return detail if detail["task_counts"] == {"Completed": 3, "Running": 1} else None

    detail = wait_for(held, 60, "3 prepare runs Completed and hold Running")
    assert detail["state_name"] == "Running" and detail["task_runs_total"] == 4, detail
    status, running = server.get(f"/api/flow-runs/{run_id}/task-runs?state=running")
    assert status == 200 and [t["task_name"] for t in running["task_runs"]] == ["hold"], running
    status, named = server.get(f"/api/flow-runs/{run_id}/task-runs?name=prepare&limit=2")
    names = [t["name"] for t in named["task_runs"]]
    assert len(names) == 2 and all(n.startswith("prepare-") for n in names) and named["has_more"], named
    status, logs = server.get(f"/api/flow-runs/{run_id}/logs")
    assert any("holding at <script>" in log["message"] for log in logs["logs"]), logs
    last = logs["last_id"]
    assert server.get(f"/api/flow-runs/{run_id}/logs?after={last}")[1]["logs"] == []
    status, refused = server.post(f"/api/flow-runs/{run_id}/retry")
    assert status == 409 and "only a failed, crashed or cancelled run" in refused["detail"], refused

    (server_folder / "gates" / "api-gate").touch()
    assert process.wait(60) == 0
    wait_for(lambda: _state(server, run_id) == "Completed", 30, "the run to end Completed")
    newer = server.get(f"/api/flow-runs/{run_id}/logs?after={last}")[1]["logs"]
    assert any(log["message"] == "released api-gate" for log in newer), newer  # the tail grew
    status, refused = server.post(f"/api/flow-runs/{run_id}/cancel")
    assert status == 409 and "already ended Completed" in refused["detail"], refused
    assert server.get("/api/flow-runs/00000000-dead")[0] == 404


def test_flow_runs_filter_and_page_on_the_server(server: Server, server_folder: Path, server_store_url: str) -> None:
    (server_folder / "gates" / "filter-gate").touch()
    for _ in range(2):
        assert run_script(server_folder, server_store_url, "1", "filter-gate").wait(60) == 0
    flow = urllib.parse.quote(HOSTILE_NAME)
    status, first = server.get(f"/api/flow-runs?flow={flow}&state=completed&limit=1")
    assert status == 200 and len(first["flow_runs"]) == 1 and first["has_more"], first
    status, second = server.get(f"/api/flow-runs?flow={flow}&state=completed&limit=1&offset=1")
    assert second["flow_runs"][0]["id"] != first["flow_runs"][0]["id"]
    assert first["flow_runs"][0]["start_time"] >= second["flow_runs"][0]["start_time"]  # newest first
    assert server.get("/api/flow-runs?flow=no-such-flow")[1]["flow_runs"] == []
    assert server.get("/api/flow-runs?since=1h")[1]["flow_runs"], "runs of the last hour"
    assert server.get("/api/flow-runs?until=2000-01-01")[1]["flow_runs"] == []
    status, bad = server.get("/api/flow-runs?since=yesterday-ish")
    assert status == 400 and "ISO time" in bad["detail"], bad


def _open_streams(base: str, count: int, query: str = "") -> list[socket.socket]:
    port = int(base.rsplit(":", 1)[1])
    streams = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(
            f"GET /api/events{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        streams.append(sock)
    for sock in streams:
        head = b""
        while b"event: hello" not in head:
            head += sock.recv(4096)
        assert b" 200 " in head.split(b"\r\n", 1)[0], head
    return streams


def test_fifty_event_streams_cost_one_poll_per_interval(
    server: Server, server_folder: Path, server_store_url: str
) -> None:
    streams = _open_streams(server.base, 50)
    try:
        wait_for(lambda: server.get("/api/health")[1]["event_clients"] >= 50, 30, "50 clients on /api/events")
        before = server.get("/api/health")[1]
        wait_for(lambda: server.get("/api/health")[1]["event_polls"] >= before["event_polls"] + 10, 30, "10 polls")
        after = server.get("/api/health")[1]
        polls = after["event_polls"] - before["event_polls"]
        statements = after["event_poll_statements"] - before["event_poll_statements"]
        # Each poll reads states, logs and (when tasks changed) their flow runs: at most 3 statements,
        # however many clients listen. Once per client would be 50 times that.
        assert statements <= 3 * polls, f"{statements} statements for {polls} polls with 50 clients"

        (server_folder / "gates" / "event-gate").touch()
        assert run_script(server_folder, server_store_url, "1", "event-gate").wait(60) == 0
        received = b""
        while b"event: state" not in received or b"event: log" not in received:
            received += streams[-1].recv(65536)
        assert b'"type":"COMPLETED"' in received or b"event: state" in received
    finally:
        for sock in streams:
            sock.close()


def test_a_deployment_runs_from_the_api_with_typed_parameters(
    server: Server, server_folder: Path, server_store_url: str
) -> None:
    assert run_script(server_folder, server_store_url, "deploy", "api-deployment").wait(60) == 0
    status, listed = server.get("/api/deployments")
    (deployment,) = [d for d in listed["deployments"] if d["name"] == "api-deployment"]
    assert deployment["parameters"] == {"gate": "deploy-gate"} and deployment["next_times"] == [], deployment
    status, bad = server.post("/api/deployments/api-deployment/runs", {"parameters": {"n": "many"}})
    assert status == 422 and bad["detail"][0]["parameter"] == "n" and "'many'" in bad["detail"][0]["message"], bad
    status, bad = server.post("/api/deployments/api-deployment/runs", {"parameters": {"m": 1}})
    assert status == 422 and bad["detail"][0]["parameter"] == "m", bad
    assert server.post("/api/deployments/missing/runs", {"parameters": {}})[0] == 404

    (server_folder / "gates" / "deploy-gate").touch()
    status, started = server.post("/api/deployments/api-deployment/runs", {"parameters": {"n": 2}})
    assert status == 201, started
    wait_for(lambda: server.get(f"/api/flow-runs/{started['flow_run_id']}")[0] == 200, 30, "the new run")
    wait_for(lambda: _state(server, started["flow_run_id"]) == "Completed", 60, "the deployment's run to complete")
    detail = server.get(f"/api/flow-runs/{started['flow_run_id']}")[1]
    assert detail["parameters"] == {"n": 2, "gate": "deploy-gate"} and detail["task_runs_total"] == 3, detail
    # The runs a deployment started, and those of deployments with a tag.
    for query in ("deployment=api-deployment", "tag=nightly", "tag=nightly&deployment=api-deployment"):
        listed = [r["id"] for r in server.get(f"/api/flow-runs?{query}")[1]["flow_runs"]]
        assert started["flow_run_id"] in listed, (query, listed)
    assert server.get("/api/flow-runs?tag=no-such-tag")[1]["flow_runs"] == []
    assert server.post("/api/deployments/api-deployment/pause")[1]["paused"] is True
    assert server.post("/api/deployments/api-deployment/resume")[1]["paused"] is False


def test_a_paused_run_is_resumed_from_the_api_and_a_bad_input_is_a_422_naming_it(
    server: Server, server_folder: Path, server_store_url: str
) -> None:
    process = run_script(server_folder, server_store_url, "pause", "api-pause")
    try:

        def paused() -> str | None:
            for run in server.get("/api/flow-runs?flow=approve&limit=100")[1]["flow_runs"]:
                if run["state_type"] == "PAUSED":  # the only run of flow "approve" in this store
                    return str(run["id"])
            return None

        run_id = wait_for(paused, 60, "the approve run to pause")
        for drawing in ("graph", "timeline"):  # nothing to draw yet: a line of text, still an image
            status, svg = server.get(f"/flow-runs/{run_id}/{drawing}.svg")
            assert status == 200 and svg.startswith("<svg") and "no task run" in svg.lower(), svg
        status, bad = server.post(f"/api/flow-runs/{run_id[:12]}/resume", {"run_input": {"approved": True}})
        assert status == 422 and [p["parameter"] for p in bad["detail"]] == ["reviewer"], bad
        status, bad = server.post(
            f"/api/flow-runs/{run_id}/resume", {"run_input": {"approved": True, "reviewer": "bo", "copies": "x"}}
        )
        assert status == 422 and bad["detail"][0]["parameter"] == "copies", bad
        assert "valid integer" in bad["detail"][0]["message"], bad
        assert _state(server, run_id) == "Paused"
        status, done = server.post(
            f"/api/flow-runs/{run_id}/resume", {"run_input": {"approved": True, "reviewer": "bo", "copies": 2}}
        )
        assert status == 200 and done == {"flow_run_id": run_id, "resumed": True}, done
        assert process.wait(60) == 0
        assert _state(server, run_id) == "Completed"
        status, again = server.post(f"/api/flow-runs/{run_id}/resume", {"run_input": {}})
        assert status == 409 and "not paused" in again["detail"], again
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(60)


def test_the_concurrency_page_shows_the_holders_of_limits_by_task_name_and_tag(
    server: Server, server_folder: Path, server_store_url: str
) -> None:
    process = run_script(server_folder, server_store_url, "limited", "limits-gate")
    try:

        def holding() -> dict[str, Any] | None:
            limits = {row["name"]: row for row in server.get("/api/concurrency")[1]["limits"]}
            return limits if limits["db"]["holders"] else None

        limits = wait_for(holding, 60, "a slotted task run to hold 'db'", every=0.2)
        assert limits["db"]["size"] == 1 and limits["slotted"]["size"] == 2, limits
        # One run holds "db" (a tag, size 1) and so "slotted" (its task's name) too; the other two wait.
        assert len(limits["db"]["holders"]) == 1, limits
        assert limits["slotted"]["holders"] == limits["db"]["holders"], limits
        # The others wait: pending, never listed as holders (listed as waiters once the engine records
        # a task run from its submission).
        held = {r["task_run_id"] for r in limits["db"]["holders"]}
        for name in ("db", "slotted"):
            waiting = {r["task_run_id"] for r in limits[name]["waiters"]}
            assert not waiting & held and len(waiting) in (0, 2), limits
        holder = limits["db"]["holders"][0]
        assert holder["name"].startswith("slotted-") and holder["since"], holder
        status, page = server.get("/concurrency")
        assert status == 200 and holder["name"] in page and 'data-limit="db"' in page
    finally:
        (server_folder / "gates" / "limits-gate").touch()
        assert process.wait(60) == 0
    wait_for(
        lambda: all(not r["holders"] and not r["waiters"] for r in server.get("/api/concurrency")[1]["limits"]),
        30, "the limits to be free once the run ended",
    )  # fmt: skip


# -- security -----------------------------------------------------------------------------------


def test_a_non_loopback_bind_without_a_token_refuses_to_start(server_folder: Path, server_store_url: str) -> None:
    command = [sys.executable, "-c", "from daskflow.cli import main; main()", "server", "--url", server_store_url]
    env = flow_env(server_folder, server_store_url)
    env.pop("DASKFLOW_SERVER_TOKEN", None)
    done = subprocess.run([*command, "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert "no token is set" in done.stderr and "--token-file" in done.stderr and "secrets" in done.stderr, done.stderr
    short = server_folder / "short-token"
    short.write_text("abc\n")
    done = subprocess.run([*command, "--token-file", str(short)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "shorter than 16" in done.stderr, done.stderr


def test_with_a_token_the_api_wants_it_and_browsers_sign_in(server_folder: Path, server_store_url: str) -> None:
    token = "s3cret-token-for-tests-0123456789"
    env = {**flow_env(server_folder, server_store_url), "DASKFLOW_SERVER_TOKEN": token}
    with server_process(server_folder, server_store_url, "--no-service", env=env) as secured:
        assert secured.get("/api/flow-runs")[0] == 401
        assert secured.get("/api/flow-runs", headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        good = {"Authorization": f"Bearer {token}"}
        assert secured.get("/api/flow-runs", headers=good)[0] == 200
        assert secured.get("/openapi.json")[0] == 401

        # A page without the cookie leads to the sign-in form, which sets an HttpOnly, SameSite=Strict cookie.
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(secured.base + "/deployments", timeout=30)
        except urllib.error.HTTPError as exc:
            assert exc.code == 303 and exc.headers["location"].startswith("/login"), exc.headers
        form = urllib.parse.urlencode({"token": token, "next": "/deployments"}).encode()
        request = urllib.request.Request(secured.base + "/login", data=form, headers={"Origin": secured.base})
        try:
            opener.open(request, timeout=30)
        except urllib.error.HTTPError as exc:
            assert exc.code == 303 and exc.headers["location"] == "/deployments"
            cookie = exc.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and token not in cookie, cookie
        session = {"Cookie": cookie.split(";", 1)[0]}
        assert secured.get("/deployments", headers=session)[0] == 200
        assert secured.get("/api/flow-runs", headers=session)[0] == 200
        # State changes: another origin is refused even with the token; a cookie needs our Origin.
        evil = {**good, "Origin": "http://evil.example"}
        status, text = secured.post("/api/deployments/none/pause", headers=evil)
        assert status == 403 and "origin http://evil.example" in text, text
        assert secured.post("/api/deployments/none/pause", headers=session)[0] == 403
        assert secured.post("/api/deployments/none/pause", headers={**session, "Origin": secured.base})[0] == 404
        assert secured.post("/api/deployments/none/pause", headers=good)[0] == 404


def test_read_only_serves_no_state_changing_route(server_folder: Path, server_store_url: str) -> None:
    with server_process(server_folder, server_store_url, "--read-only", "--no-service") as read_only:
        assert read_only.get("/api/health")[1]["read_only"] is True
        assert read_only.get("/api/flow-runs")[0] == 200
        for path in (
            "/api/flow-runs/x/cancel",
            "/api/flow-runs/x/retry",
            "/api/flow-runs/x/resume",
            "/api/deployments/x/runs",
        ):
            status, text = read_only.post(path)
            assert status == 405 and "--read-only" in text, (path, status, text)
        paths = read_only.get("/openapi.json")[1]["paths"]
        assert not [p for p, ops in paths.items() if set(ops) - {"get"}], paths
        status, page = read_only.get("/")
        assert status == 200
        assert read_only.get("/docs")[0] == 200


def test_without_a_token_another_host_name_is_refused(server: Server) -> None:
    # DNS rebinding: another site's name resolving to 127.0.0.1 arrives with that name as Host.
    status, text = server.get("/api/flow-runs", headers={"Host": "evil.example:4200"})
    assert status == 421 and "Host header" in text, (status, text)
    assert server.get("/api/flow-runs", headers={"Host": "localhost"})[0] == 200


def test_every_page_carries_a_csp_without_inline_script(server: Server) -> None:
    for path in ("/", "/deployments", "/work-pools", "/concurrency", "/artifacts", "/cache", "/blocks", "/docs"):
        with urllib.request.urlopen(server.base + path, timeout=30) as response:
            csp = response.headers["Content-Security-Policy"]
            html = response.read().decode()
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src", 1)[1].split(";")[0]
        assert "<script>" not in html and '<script src="/static/app.js" defer></script>' in html, path
        assert "http://" not in html and "https://" not in html, f"{path} refers to another site"


# -- scale ----------------------------------------------------------------------------------------

BIG_RUN = "ffffffff-0000-4000-8000-000000000000"


def _seed(url: str, flow_runs: int, task_runs: int) -> None:
    """Flow runs and one run of many task runs, through the store's own writer path, in big batches."""
    now = time.time()
    with RunStore(url) as store:
        batch: list[Any] = []
        for i in range(flow_runs):
            batch.append(
                FlowRunRecord(
                    id=f"{i:08x}-0000-4000-8000-000000000000",
                    name=f"run-{i}",
                    flow_name=f"flow-{i % 7}",
                    state_type="COMPLETED" if i % 10 else "FAILED",
                    state_name="Completed" if i % 10 else "Failed",
                    start_time=now - flow_runs + i,
                    end_time=now - flow_runs + i + 0.5,
                    updated=now,
                )  # fmt: skip
            )
            if len(batch) == 25_000:
                store.write(batch)
                batch = []
        batch.append(
            FlowRunRecord(
                id=BIG_RUN,
                name="big",
                flow_name="big",
                state_type="COMPLETED",
                state_name="Completed",
                start_time=now,
                end_time=now + 60,
                updated=now,
            )  # fmt: skip
        )
        for i in range(task_runs):
            batch.append(
                TaskRunRecord(
                    id=f"eeeeeeee-{i % 65536:04x}-4000-8000-{i:012d}",
                    flow_run_id=BIG_RUN,
                    name=f"work-{i}",
                    task_name="work",
                    map_index=i,
                    state_type="COMPLETED",
                    state_name="Cached" if i % 3 == 0 else "Completed",
                    start_time=now + i / task_runs * 50,
                    end_time=now + i / task_runs * 50 + 0.01,
                    worker=f"w{i % 4}",
                    updated=now,
                )  # fmt: skip
            )
            if len(batch) == 25_000:
                store.write(batch)
                batch = []
        store.write(batch)


@pytest.mark.slow
def test_the_api_over_100000_flow_runs_and_a_run_of_100000_task_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    _seed(url, 100_000, 100_000)
    with server_process(tmp_path, url, "--no-service") as big:
        status, first = big.get("/api/flow-runs?limit=50")
        assert status == 200 and len(first["flow_runs"]) == 50 and first["has_more"], first
        assert first["flow_runs"][0]["id"] == BIG_RUN
        assert first["flow_runs"][0]["task_counts"] == {"Cached": 33_334, "Completed": 66_666}
        deep = big.get("/api/flow-runs?limit=50&offset=99990")[1]
        assert len(deep["flow_runs"]) == 11 and not deep["has_more"], deep
        failed = big.get("/api/flow-runs?state=failed&flow=flow-3&limit=500")[1]["flow_runs"]
        assert failed and all(r["state_name"] == "Failed" and r["flow_name"] == "flow-3" for r in failed)
        detail = big.get(f"/api/flow-runs/{BIG_RUN[:8]}")[1]
        assert detail["task_runs_total"] == 100_000, detail["task_counts"]
        page = big.get(f"/api/flow-runs/{BIG_RUN}/task-runs?limit=100&offset=50000")[1]
        assert [t["map_index"] for t in page["task_runs"]] == list(range(50_000, 50_100)), page["task_runs"][:2]
        status, html = big.get(f"/flow-runs/{BIG_RUN}")
        assert status == 200 and html.count("<tr") < 50, "the flow run page lists no task runs itself: it pages them"


# -- the CLI's side ---------------------------------------------------------------------------------


def _cli(url: str, server_folder: Path, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", "from daskflow.cli import main; main()", "runs", *args, "--url", url]
    return subprocess.Popen(command, env=flow_env(server_folder, url), text=True, **kwargs)


def test_runs_logs_follow_tails_a_running_flow_until_it_ends(
    server: Server, server_folder: Path, server_store_url: str
) -> None:
    process = run_script(server_folder, server_store_url, "1", "follow-gate")
    try:
        run_id = _run_of(server, "follow-gate")["id"]
        follow = _cli(server_store_url, server_folder, "logs", run_id[:8], "--follow", stdout=subprocess.PIPE)
        assert follow.stdout is not None
        seen = []
        while not any("holding at" in line for line in seen):  # printed while the run is held
            line = follow.stdout.readline()
            assert line, f"runs logs --follow ended early: {seen}"
            seen.append(line)
        assert _state(server, run_id) == "Running"
        (server_folder / "gates" / "follow-gate").touch()
        rest, _ = follow.communicate(timeout=60)
        assert follow.returncode == 0, rest
        assert "released follow-gate" in rest and "Finished in state Completed" in rest, rest
    finally:
        (server_folder / "gates" / "follow-gate").touch()
        process.wait(60)


def test_runs_retry_runs_a_failed_flow_again_and_its_cached_tasks_hit(
    server: Server, server_folder: Path, server_store_url: str
) -> None:
    assert run_script(server_folder, server_store_url, "2", "fail").wait(60) != 0
    failed = _run_of(server, "fail")
    assert failed["state_name"] == "Failed", failed
    retry = _cli(
        server_store_url, server_folder, "retry", failed["id"][:8], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = retry.communicate(timeout=120)
    assert retry.returncode == 1 and "ended Failed" in out, out  # the same parameters fail the same way
    new_id = out.rsplit("flow run ", 1)[1].split()[0]
    detail = server.get(f"/api/flow-runs/{new_id}")[1]
    assert detail["parameters"] == failed["parameters"] and detail["entrypoint"] == failed["entrypoint"], detail
    assert detail["task_counts"] == {"Cached": 2, "Failed": 1}, detail
    done = _cli(server_store_url, server_folder, "retry", new_id, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.wait(120) == 1  # a retry of the retry imports the flow from the same file


def test_the_server_over_postgresql(postgres_url: str, tmp_path: Path) -> None:
    with server_process(tmp_path, postgres_url, "--no-service") as pg:
        stream = EventStream(pg.base)
        events: list[dict[str, Any]] = []
        try:
            assert stream.next()[0] == "hello"
            (tmp_path / "gates" / "pg-gate").touch()
            flow = run_script(tmp_path, postgres_url, "2", "pg-gate")
            while not (events and events[-1]["run_kind"] == "flow" and events[-1]["type"] == "COMPLETED"):
                kind, data = stream.next()
                if kind == "state":
                    events.append(data)
            assert flow.wait(60) == 0
        finally:
            stream.close()
        (run,) = pg.get("/api/flow-runs")[1]["flow_runs"]
        assert run["state_name"] == "Completed" and run["task_counts"] == {"Completed": 3}, run
        ids = [event["id"] for event in events]
        assert len(ids) == len(set(ids)), f"a state was sent twice: {ids}"  # the look-back skips what it sent
        assert {e["flow_run_id"] for e in events} == {run["id"]}, events
        assert [e["type"] for e in events if e["run_kind"] == "flow"] == ["RUNNING", "COMPLETED"], events
        assert pg.get(f"/flow-runs/{run['id']}")[0] == 200
        status, svg = pg.get(f"/flow-runs/{run['id']}/graph.svg")
        assert status == 200 and "prepare" in svg, svg[:200]
        assert pg.get(f"/api/flow-runs/{run['id'][:6]}/logs")[1]["logs"]


def test_import_daskflow_never_imports_the_server() -> None:
    code = (
        "import sys, daskflow, daskflow.flows, daskflow.runstore\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('daskflow.server', 'fastapi', 'uvicorn', 'starlette')))\n"
        "print(loaded)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def _top_level() -> None:
    """A function at the top of an importable module."""


def test_import_path_names_what_another_process_can_import(tmp_path: Path) -> None:
    import importlib.util

    from daskflow.engine.run_origin import import_path

    assert import_path(_top_level) == f"{__name__}:_top_level"
    assert import_path(lambda: None) is None  # "<lambda>": nothing to import

    def local() -> None: ...

    assert import_path(local) is None
    script = tmp_path / "by_path.py"
    script.write_text("def flow_fn():\n    pass\n")
    spec = importlib.util.spec_from_file_location("loaded_by_path_xyz", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["loaded_by_path_xyz"] = module  # as daskflow.deployments loads a file: in sys.modules
    try:
        spec.loader.exec_module(module)
        assert import_path(module.flow_fn) == f"{script}:flow_fn"  # its name would not import it elsewhere
    finally:
        del sys.modules["loaded_by_path_xyz"]


def test_a_dask_run_records_its_dashboard_and_the_page_links_it_while_running(
    server: Server, server_store_url: str, history: Any, dask_client: Any
) -> None:
    from daskflow import flow, task
    from daskflow.task_runners import DaskTaskRunner

    @task
    def one() -> int:
        return 1

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def on_dask() -> int:
        return one()

    state = on_dask(return_state=True)
    recorded = history().flow_run(state.flow_run.id)
    assert recorded.dashboard_link == dask_client.dashboard_link and recorded.dashboard_link, recorded

    now = time.time()
    links = {"running": "http://127.0.0.1:8787/status", "ended": "http://127.0.0.1:8787/status",
             "hostile": "javascript:alert(1)"}  # fmt: skip
    with RunStore(server_store_url) as store:
        store.write([
            FlowRunRecord(id=f"dddddddd-0000-4000-8000-00000000000{i}", name=name, flow_name="dash",
                          state_type="COMPLETED" if name == "ended" else "RUNNING",
                          state_name="Completed" if name == "ended" else "Running",
                          start_time=now, updated=now, dashboard_link=link)
            for i, (name, link) in enumerate(links.items())
        ])  # fmt: skip
    pages = {name: server.get(f"/flow-runs/dddddddd-0000-4000-8000-00000000000{i}")[1] for i, name in enumerate(links)}
    assert 'href="http://127.0.0.1:8787/status"' in pages["running"]
    assert "8787" not in pages["ended"], "a run that ended links to no cluster"
    assert "javascript:" not in pages["hostile"] and 'id="run-dashboard"' not in pages["hostile"]


def test_work_pools_show_their_live_workers(
    server: Server, server_folder: Path, server_store_url: str, dask_cluster: Any
) -> None:
    address = dask_cluster.scheduler_address
    assert run_script(server_folder, server_store_url, "deploy", "on-cluster", address).wait(60) == 0
    assert run_script(server_folder, server_store_url, "deploy", "on-nothing", "tcp://127.0.0.1:9").wait(60) == 0
    status, html = server.get("/work-pools")
    assert status == 200
    row = html.split(f'<tr data-pool="{address}">', 1)[1].split("</tr>", 1)[0]
    assert "2 workers" in row and "on-cluster" in row, row  # the session cluster: 2 workers
    dead = html.split('<tr data-pool="tcp://127.0.0.1:9">', 1)[1].split("</tr>", 1)[0]
    assert "unreachable" in dead and "on-nothing" in dead, dead
