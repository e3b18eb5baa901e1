"""Shared fixtures: an isolated daskflow home, the task runners under contract, and
a side channel that counts executions.

Every test gets its own ``DASKFLOW_HOME`` so nothing a test stores (results,
run history) leaks into the user's home or into another test.

``executions`` is the side channel of testing.md: test tasks call
``executions.record(key)``, which writes one file per execution holding
``(key, attempt, pid, start, end)``; tests then count what really ran instead
of inferring it from states.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import pytest

from daskflow.task_runners import SequentialTaskRunner, ThreadPoolTaskRunner

# The server tests' fixtures (a folder, a run store and a `daskflow server` per module) live with
# the rest of their harness; loading it here lets test_server.py and test_server_browser.py share them.
pytest_plugins = ["server_harness"]

# The contract suite runs over every runner in this list.
RUNNER_FACTORIES: dict[str, Callable[[], Any]] = {
    "sequential": SequentialTaskRunner,
    "threadpool": lambda: ThreadPoolTaskRunner(max_workers=4),
    "dask": lambda: _dask_runner(),
}

# Short lease settings and quick failure detection for every cluster the tests start.
TEST_DASK_CONFIG = {
    # 1 s, not distributed's 30 s, so that a lease no one refreshes ends within a test; not the
    # 200 ms testing.md first suggested: on 2 loaded cores (two xdist processes and their clusters) a
    # worker's event loop misses a 40 ms refresh often enough to expire live leases and overbook the
    # limits under test. A dead worker's slots no longer wait for the timeout at all: the scheduler
    # plugin releases them when it removes the worker (issue 15, defect 9).
    "distributed.scheduler.locks.lease-timeout": "1s",
    "distributed.scheduler.locks.lease-validation-interval": "100ms",
    "distributed.comm.timeouts.connect": "5s",
}

# What the Dask servers the tests start do while they wait. A scheduler, nanny or worker at distributed's
# defaults wakes every 20 ms to time its event loop, every 10 ms to sample its threads' stacks (the
# profiler), every 100 ms to read its memory and every 500 ms to read the system: an idle LocalCluster
# of 2 worker processes took 10-15% of a core, and the suite keeps several up (session clusters in
# each xdist process, and the clusters flows and servers start in subprocesses) on 2 cores. With these
# it takes 2-3%. None of them is a figure a test checks. They are set for this process and, through
# the environment, for every process a test starts (servers, flow scripts, `dask worker`, notebooks).
QUIET_DASK_CONFIG: dict[str, Any] = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.worker.profile.enabled": False,
}


def _quiet_dask() -> None:
    import dask.config

    for key, value in QUIET_DASK_CONFIG.items():
        os.environ.setdefault("DASK_" + key.upper().replace(".", "__").replace("-", "_"), str(value))
    dask.config.set(QUIET_DASK_CONFIG)


_quiet_dask()

_session_client: Any = None


@contextmanager
def private_client(n_workers: int = 2, threads_per_worker: int = 1, **config: Any) -> Iterator[Any]:
    """A client of a LocalCluster of its own, for a test that kills or reconfigures workers:
    worker processes, loopback only, the tests' Dask settings plus ``config``."""
    import dask.config
    from distributed import Client, LocalCluster

    with (
        dask.config.set({**TEST_DASK_CONFIG, **config}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=50,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def _dask_runner() -> Any:
    from daskflow.task_runners import DaskTaskRunner

    assert _session_client is not None, "the dask_client fixture was not set up"
    return DaskTaskRunner(client=_session_client)


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    """A real LocalCluster shared by the tests: processes, 2 workers x 1 thread, loopback only."""
    import dask.config
    from distributed import LocalCluster

    with dask.config.set(TEST_DASK_CONFIG):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
        try:
            yield cluster
        finally:
            cluster.close()


@pytest.fixture(scope="session")
def dask_inprocess_client() -> Iterator[Any]:
    """A client of a cluster whose workers are threads of this process (2 x 2 threads):
    for what lives in one process only, such as memory:// storage."""
    import dask.config
    from distributed import Client, LocalCluster

    with dask.config.set(TEST_DASK_CONFIG):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=False,
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="session")
def dask_client(dask_cluster: Any) -> Iterator[Any]:
    global _session_client
    from distributed import Client

    client = Client(dask_cluster, set_as_default=False)
    _session_client = client
    try:
        yield client
    finally:
        _session_client = None
        client.close()


@pytest.fixture(autouse=True)
def daskflow_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("daskflow-home")
    monkeypatch.setenv("DASKFLOW_HOME", str(home))
    # Run history is off unless a test asks for it (the `history` fixture): a database
    # per test home would cost every test a migration.
    import dask.config

    with dask.config.set({"daskflow.runstore.enabled": False}):
        yield home


@pytest.fixture
def history(daskflow_home: Path) -> Iterator[Any]:
    """Run history on, in this test's home; yields a function giving the store once written."""
    import dask.config

    from daskflow.engine.history import flush, stop_recording
    from daskflow.runstore import RunStore

    stores: list[Any] = []

    def written() -> Any:
        assert flush(30), "the run history was not written within 30 s"
        if not stores:
            stores.append(RunStore())
        return stores[0]

    with dask.config.set({"daskflow.runstore.enabled": True}):
        try:
            yield written
        finally:
            stop_recording()
            for store in stores:
                store.close()


@pytest.fixture(params=sorted(RUNNER_FACTORIES))
def task_runner(request: pytest.FixtureRequest) -> Any:
    if request.param == "dask":
        request.getfixturevalue("dask_client")
    return RUNNER_FACTORIES[request.param]()


class Executions:
    """Counts task executions through files, so it works across threads and processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def record(self, key: str, start: float | None = None, **extra: Any) -> None:
        entry = {
            "key": key,
            "pid": os.getpid(),
            "start": start if start is not None else time.time(),
            "end": time.time(),
            **extra,
        }
        path = self.folder / f"{uuid.uuid4().hex}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)

    def all(self) -> list[dict[str, Any]]:
        return sorted((json.loads(p.read_text()) for p in self.folder.glob("*.json")), key=lambda e: e["start"])

    def keys(self) -> list[str]:
        return [e["key"] for e in self.all()]

    def count(self, key: str) -> int:
        return sum(1 for e in self.all() if e["key"] == key)

    def peak_concurrency(self) -> int:
        events = []
        for e in self.all():
            events.append((e["start"], 1))
            events.append((e["end"], -1))
        peak = current = 0
        for _, delta in sorted(events, key=lambda ev: (ev[0], ev[1])):
            current += delta
            peak = max(peak, current)
        return peak


@pytest.fixture
def flow_runs() -> Iterator[list[Any]]:
    """Every flow run (a ``daskflow.runs.FlowRun``, with its task runs) that ends while the test runs."""
    from daskflow.runs import FlowRun, add_state_listener, remove_state_listener

    ended: list[Any] = []

    def listener(run: Any, state: Any) -> None:
        if isinstance(run, FlowRun) and state.is_final():
            ended.append(run)

    add_state_listener(listener)
    yield ended
    remove_state_listener(listener)


@pytest.fixture
def executions(tmp_path: Path) -> Iterator[Executions]:
    folder = tmp_path / "executions"
    folder.mkdir()
    yield Executions(folder)


# -- storages: the same fixtures serve the result store and caching tests ----------------

S3_BUCKET = "daskflow-results-test"


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, Any]]:
    pytest.importorskip("s3fs")
    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    # moto's S3 application itself, served on a thread of this process. ThreadedMotoServer serves
    # every AWS service behind a dispatcher that works out the service of each request by trying
    # the URL patterns of all of them: a fifth of moto's CPU in the suite, which runs thousands of
    # S3 requests, in the process (and under the GIL) of the tests waiting for the answers.
    server = make_server("127.0.0.1", 0, create_backend_app("s3"), threaded=True, request_handler=MotoRequestHandler)
    serving = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    serving.start()
    host, port = server.server_address[:2]
    assert host == "127.0.0.1", f"moto must bind loopback only, bound {host}:{port}"
    options: dict[str, Any] = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
    }
    boto3 = pytest.importorskip("boto3")
    boto3.client(
        "s3",
        endpoint_url=options["client_kwargs"]["endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=S3_BUCKET)
    try:
        yield options
    finally:
        server.shutdown()
        serving.join()
        server.server_close()


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A fresh memory:// folder, removed afterwards (memory:// is shared by the whole process)."""
    url = f"memory://test-{uuid.uuid4().hex}"
    yield url
    memory = fsspec.filesystem("memory")
    if memory.exists(url):
        memory.rm(url, recursive=True)


@pytest.fixture(params=["file", "memory", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(url, storage_options) of an empty folder on each storage."""
    kind = request.param
    if kind == "file":
        yield (tmp_path / "results").as_uri(), {}
    elif kind == "memory":
        yield request.getfixturevalue("memory_url"), {}
    else:
        options = request.getfixturevalue("s3_options")
        yield f"s3://{S3_BUCKET}/{uuid.uuid4().hex}", options


# -- run stores: an SQLite file, and a private PostgreSQL server when one can be started ---

RUN_STORE_KINDS = ["sqlite", "postgresql"]


class PostgresServer:
    """A PostgreSQL server of our own on 127.0.0.1, with one fresh database per test."""

    def __init__(self, port: int, password: str) -> None:
        self.port = port
        self.password = password

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            connection.execute(sql)  # type: ignore[arg-type]


def _postgres_bindir() -> Path | None:
    def version(initdb: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in initdb.parent.parent.name.split(".") if p.isdigit())

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    return found[-1].parent if found else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start PostgreSQL from Debian's binaries in a temp folder; skip, saying why, when there are none."""
    import secrets
    import shutil
    import subprocess
    import tempfile

    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): the run store's PostgreSQL "
            "contract tests need them. Fix: apt-get install postgresql (.ci/run installs it)."
        )
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing. Fix: pip install -e '.[test]'")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' user to run initdb as (initdb refuses root)")
    # initdb refuses to run as root: as root, the cluster belongs to the postgres user.
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="daskflow-pg-"))  # not under pytest's 0700 tmp: postgres must reach it
    password = secrets.token_hex(12)
    (root / "pwfile").write_text(password)
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pwfile", "postgres")
    data, log, port = root / "data", root / "server.log", _free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories= "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={root / 'pwfile'}",
             "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options],
            check=True, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        server_log = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{server_log}") from exc
    try:
        yield PostgresServer(port, password)
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "60"],
            capture_output=True, timeout=90,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the private PostgreSQL server."""
    name = f"runs_{uuid.uuid4().hex[:12]}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=RUN_STORE_KINDS)
def run_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty run store of each kind under contract."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("postgres_url"))


def raw_bytes(store: Any, key: str) -> bytes:
    """The bytes of ``key``'s entry file in a result store, as stored."""
    with fsspec.open(store.path(key), "rb", **store.storage_options) as f:
        return bytes(f.read())


def put_raw(store: Any, key: str, data: bytes) -> None:
    """Overwrite ``key``'s entry file with ``data`` (to damage it, or to plant an old one)."""
    with fsspec.open(store.path(key), "wb", **store.storage_options) as f:
        f.write(data)


# -- the order in which xdist hands out files ---------------------------------------------------

# The files that take longest, longest first. `make test` runs pytest-xdist with --dist loadfile
# and --no-loadscope-reorder, which hands whole files to its processes in collection order: started
# first, the long files run beside each other and the many short ones fill in behind them, so both
# processes end at about the same time. (xdist's default order, by number of tests, put these
# files of few but long tests last, and one process then ran them alone for a minute or more.)
# A stale list costs balance only, never a result; the figures are from `pytest --durations`.
LONG_FILES_FIRST = (
    "test_caching_identity.py",
    "test_server.py",
    "test_benchmarks.py",
    "test_server_browser.py",
    "test_server_queue.py",
    "test_notebooks.py",
    "test_service.py",
    "test_results_faults.py",
    "test_caching.py",
    "test_blocks.py",
    "test_examples.py",
    "test_history.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@contextmanager
def service_threads(count: int = 1, **options: Any) -> Iterator[list[Any]]:
    """``count`` scheduling services over the configured run store, each on a thread of this
    process polling every 0.1 s (``options`` go to each), until the block ends."""
    import threading

    from daskflow.deployments.service import DeploymentService

    stop = threading.Event()
    made = [DeploymentService(poll_seconds=0.1, name=f"svc-{i}", **options) for i in range(count)]
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in made]
    for thread in threads:
        thread.start()
    try:
        yield made
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "a service did not stop within 60 s"


def import_flows(folder: Path, monkeypatch: pytest.MonkeyPatch, prefix: str, source: str) -> Any:
    """``source`` written as a module of its own under ``folder/code`` (a unique name starting
    with ``prefix``) and imported, as a user's flows file a deployment's entrypoint names."""
    import importlib
    import textwrap

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    code = folder / "code"
    code.mkdir(exist_ok=True)
    (code / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(code))
    return importlib.import_module(name)


class Opaque:
    """A value only a pickle stores (no JSON or Arrow form), compared by its content."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return type(other) is Opaque and other.n == self.n

    __hash__ = None  # type: ignore[assignment]
