"""A deployment's Run from the server is queued in the run store and started by a scheduling service.

The server runs with ``--no-service``; two real ``daskflow serve`` processes
share its SQLite store. Each queued run must be in the store (``Scheduled``)
as soon as the POST answers, be started by exactly one of the services, under
the id the POST gave, and complete.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")

import sqlalchemy as sa  # noqa: E402

from daskflow.runstore import RunStore, schema  # noqa: E402
from server_harness import flow_env, interrupt, run_script, server_process, wait_for  # noqa: E402


@contextmanager
def serve_process(folder: Path, url: str, name: str) -> Iterator[Path]:
    """``daskflow serve --url URL --poll 0.3`` until the block ends; yields its log file."""
    log = folder / f"serve-{name}.log"
    command = [sys.executable, "-c", "from daskflow.cli import main; main()", "serve", "--url", url, "--poll", "0.3"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=flow_env(folder, url), stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: "serving" in log.read_text() or process.poll() is not None, 60, f"serve {name} to start")
        assert process.poll() is None, log.read_text()
        yield log
    finally:
        interrupt(process, grace=60)


def test_runs_queued_by_the_server_run_once_in_one_of_two_services(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert run_script(tmp_path, url, "deploy", "queued").wait(60) == 0
    (tmp_path / "gates" / "deploy-gate").touch()
    with ExitStack() as stack:
        server = stack.enter_context(server_process(tmp_path, url, "--no-service"))
        assert server.get("/api/health")[1]["service"] is None
        logs = [stack.enter_context(serve_process(tmp_path, url, name)) for name in ("a", "b")]

        # A run in flight is listed by its deployment and by the deployment's tag: queued, then running.
        status, held = server.post("/api/deployments/queued/runs", {"parameters": {"n": 1, "gate": "queue-hold"}})
        assert status == 201, held
        held_id = held["flow_run_id"]

        def listed_by_filters() -> bool:
            return all(
                held_id in [r["id"] for r in server.get(f"/api/flow-runs?{q}")[1]["flow_runs"]]
                for q in ("deployment=queued", "tag=nightly", "deployment=queued&tag=nightly")
            )

        assert listed_by_filters(), "a queued run is not listed by its deployment and tag"
        wait_for(lambda: server.get(f"/api/flow-runs/{held_id}")[1]["state_name"] == "Running", 60, "the held run")
        assert listed_by_filters(), "a running run is not listed by its deployment and tag"
        assert server.get("/api/flow-runs?deployment=queued&state=Running")[1]["flow_runs"][0]["id"] == held_id
        (tmp_path / "gates" / "queue-hold").touch()
        wait_for(lambda: server.get(f"/api/flow-runs/{held_id}")[1]["state_name"] == "Completed", 60, "the held run")

        status, bad = server.post("/api/deployments/queued/runs", {"parameters": {"n": "two"}})
        assert status == 422 and bad["detail"][0]["parameter"] == "n", bad
        ids = []
        for n in (1, 2, 3, 4):
            status, queued = server.post("/api/deployments/queued/runs", {"parameters": {"n": n}})
            assert status == 201 and queued["state"] == "Scheduled", queued
            # In the store at once, with its deployment and parameters, before any service started it.
            status, detail = server.get(f"/api/flow-runs/{queued['flow_run_id']}")
            assert status == 200 and detail["deployment_name"] == "queued", detail
            assert detail["parameters"] == {"n": n, "gate": "deploy-gate"}, detail
            ids.append(queued["flow_run_id"])

        def all_completed() -> bool:
            return all(server.get(f"/api/flow-runs/{i}")[1]["state_name"] == "Completed" for i in ids)

        wait_for(all_completed, 120, "the four queued runs to complete", every=0.2)
        for n, run_id in zip((1, 2, 3, 4), ids, strict=True):
            detail = server.get(f"/api/flow-runs/{run_id}")[1]
            assert detail["parameters"] == {"n": n, "gate": "deploy-gate"} and detail["task_runs_total"] == n + 1, (
                detail
            )
        listed = [r["id"] for r in server.get("/api/flow-runs?deployment=queued&tag=nightly")[1]["flow_runs"]]
        assert sorted(listed) == sorted([*ids, held_id]), listed

    # Exactly once: one claim per queued run, one Running state each, one service's log line each.
    with RunStore(url) as store, store.engine.connect() as connection:
        dr, st = schema.deployment_runs, schema.states
        claims = connection.execute(sa.select(dr.c.flow_run_id, dr.c.kind, dr.c.state_type)).all()
        ids.append(held_id)
        assert sorted(claims) == sorted((i, "manual", "COMPLETED") for i in ids), claims
        for run_id in ids:
            running = connection.execute(
                sa.select(sa.func.count()).select_from(st).where(st.c.run_id == run_id, st.c.type == "RUNNING")
            ).scalar()
            assert running == 1, (run_id, running)
    texts = [log.read_text() for log in logs]
    for run_id in ids:
        starts = sum(text.count(f"starting queued flow run {run_id}") for text in texts)
        assert starts == 1, (run_id, texts)
