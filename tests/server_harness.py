"""What the server tests share: ``daskflow server`` as a real subprocess, a flow module, and small HTTP calls.

The flow module (:data:`FLOWS`) is written into the test's folder and run as a
script in its own process, as a user would (``python server_flows.py``), so
its runs record a file import path that the server can import again for Retry
and for a deployment's Run. Its ``hold`` task waits for a *gate file*: a test
lets a run finish by creating the file, so it can watch a run while it is
running without sleeping. Its names and texts are hostile on purpose (an
``<img onerror>`` flow name, ``<script>`` in a log line and an artifact).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "EventStream",
    "FLOWS",
    "HOSTILE_NAME",
    "Server",
    "api",
    "flow_env",
    "free_port",
    "run_script",
    "server",
    "server_folder",
    "server_process",
    "server_store_url",
    "stacks_on_failure",
    "wait_for",
]

HOSTILE_NAME = "<img src=x onerror=alert(1)>"

FLOWS = """
import os
import sys
import time
from pathlib import Path

import pydantic

from daskflow import flow, get_run_logger, pause_flow_run, task
from daskflow.artifacts import create_markdown_artifact
from daskflow.cache_policies import INPUTS

GATES = Path(os.environ["SERVER_TEST_GATES"])


def wait_for_gate(name: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not (GATES / name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {name} was never opened")
        time.sleep(0.02)


@task(cache_policy=INPUTS)
def prepare(i: int) -> int:
    return i * 10


@task
def hold(total: int, gate: str) -> int:
    logger = get_run_logger()
    logger.info("holding at <script>window.__pwned_log = 1</script> %s", gate)
    if gate == "fail":
        raise RuntimeError("asked to fail")
    wait_for_gate(gate)
    logger.info("released %s", gate)
    return total


@flow(name="<img src=x onerror=alert(1)>")
def demo(n: int = 3, gate: str = "go") -> int:
    create_markdown_artifact("notes <script>window.__pwned_artifact = 1</script>", key="notes")
    values = prepare.map(range(n)).result()
    get_run_logger().info("prepared %d values", len(values))
    return hold(sum(values), gate)


class Approval(pydantic.BaseModel):
    approved: bool
    reviewer: str
    copies: int = 1


@flow(name="approve")
def approve(gate: str = "pause") -> str:
    answer = pause_flow_run(wait_for_input=Approval, timeout=120)
    get_run_logger().info("approved=%s by %s, %d copies", answer.approved, answer.reviewer, answer.copies)
    return f"{answer.reviewer}:{answer.copies}"


@task(tags=["db"])
def slotted(i: int, gate: str) -> int:
    wait_for_gate(gate)
    return i


@flow(name="limited")
def limited(gate: str = "limits") -> int:
    # Under "db" (a tag, size 1) and "slotted" (the task's name, size 2): one holds, two wait.
    return sum(slotted.map(range(3), gate=gate).result())


if __name__ == "__main__":
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks_on_failure: where a stuck run is
    if sys.argv[1] == "limited":
        limited(sys.argv[2])
    elif sys.argv[1] == "pause":
        approve(sys.argv[2])
    elif sys.argv[1] == "deploy":
        from daskflow.deployments import Deployment

        from daskflow.deployments import WorkPool

        pool = WorkPool(address=sys.argv[3]) if len(sys.argv) > 3 else None
        Deployment.build_from_flow(
            demo, name=sys.argv[2], parameters={"gate": "deploy-gate"}, tags=["nightly"], work_pool=pool
        ).apply()
    else:
        demo(int(sys.argv[1]), sys.argv[2])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def api(
    base: str, path: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One HTTP call; (status, decoded JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, kind = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    text = raw.decode()
    return status, json.loads(text) if "json" in kind else text


class Server:
    """A running ``daskflow server`` subprocess."""

    def __init__(self, process: subprocess.Popen[str], base: str, log: Path) -> None:
        self.process, self.base, self.log = process, base, log

    def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return api(self.base, path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return api(self.base, path, method="POST", body=body if body is not None else {}, **kwargs)


def flow_env(folder: Path, url: str) -> dict[str, str]:
    """The environment of the flows and the server: one run store, one daskflow home, the gates."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, str(folder), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DASK_DASKFLOW__RUNSTORE__URL"] = url
    env["DASK_DASKFLOW__RUNSTORE__ENABLED"] = "true"
    env["DASK_DASKFLOW__PROGRESS"] = "false"
    env["SERVER_TEST_GATES"] = str(folder / "gates")
    env["DASK_DASKFLOW__CONCURRENCY__LIMITS"] = "{'db': 1, 'slotted': 2}"  # the `limited` flow's
    (folder / "gates").mkdir(exist_ok=True)
    return env


@contextmanager
def server_process(folder: Path, url: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``daskflow server --url URL --port <free> ARGS`` until the block ends (then SIGINT, bounded wait)."""
    port = free_port()
    log = folder / f"server-{port}.log"
    command = [sys.executable, "-c", "from daskflow.cli import main; main()", "server", "--url", url]
    command += ["--port", str(port), "--event-interval", "0.2", *args]
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, env=env or flow_env(folder, url), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"daskflow server exited {process.returncode}: {log.read_text()}")
            try:
                return server.get("/api/health")[0] in (200, 401)
            except OSError:
                return False

        wait_for(up, 60, "the server to answer /api/health")
        yield server
    finally:
        interrupt(process, grace=30)


def interrupt(*processes: subprocess.Popen[str], grace: float) -> None:
    """Stop processes as Ctrl-C would (SIGINT to all, so they wind down together), killing any
    that is still up ``grace`` seconds later."""
    for process in processes:
        process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def run_script(folder: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """Run the flow module as a script (``python server_flows.py ARGS``) in its own process."""
    script = folder / "server_flows.py"
    if not script.exists():
        script.write_text(FLOWS)
    log_path = folder / f"flow-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, str(script), *args],
            env=flow_env(folder, url),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    _flow_logs[process.pid] = log_path
    return process


_flow_logs: dict[int, Path] = {}  # run_script's processes: pid -> output file


@contextmanager
def stacks_on_failure(process: subprocess.Popen[str]) -> Iterator[None]:
    """If the block fails while the flow script ``process`` runs, the failure's report ends with the
    script's output and every one of its threads' stacks (faulthandler on SIGUSR1): a run that stays
    Running says where it is stuck, which a flaky failure may not show twice."""
    try:
        yield
    except BaseException as exc:
        log = _flow_logs.get(process.pid)
        if process.poll() is None and log is not None:
            process.send_signal(signal.SIGUSR1)
            try:
                wait_for(lambda: "most recent call first" in log.read_text(errors="replace"), 10, "the stacks")
            except AssertionError:
                pass  # the output below says what there is
        text = log.read_text(errors="replace") if log is not None else "(not started by run_script)"
        exc.add_note(f"the flow script's output (pid {process.pid}, exit {process.poll()}):\n{text[-20000:]}")
        raise


class EventStream:
    """One ``GET /api/events`` stream, read one server-sent event at a time."""

    def __init__(self, base: str, query: str = "") -> None:
        host, port = base.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.connection.request("GET", "/api/events" + query, headers={"Accept": "text/event-stream"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.status

    def next(self) -> tuple[str, dict[str, Any]]:
        """The next event: its kind (hello, state, log, reset) and its data."""
        kind, data = "", ""
        while True:
            line = self.response.readline().decode()
            if not line:
                raise EOFError("the event stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
            elif not line and kind:
                return kind, json.loads(data)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture(scope="module")
def server_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the test module's own: its flow script, gates, logs and run store."""
    return tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_").replace("_", "-"))


@pytest.fixture(scope="module")
def server_store_url(server_folder: Path) -> str:
    return f"sqlite:///{server_folder / 'runs.db'}"


@pytest.fixture(scope="module")
def server(server_folder: Path, server_store_url: str) -> Iterator[Server]:
    """One ``daskflow server`` (with its scheduling service) for the module's tests."""
    with server_process(server_folder, server_store_url, "--poll", "0.5") as running:
        yield running
