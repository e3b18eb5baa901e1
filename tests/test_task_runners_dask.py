"""The Dask runner on real clusters: how it connects, what it sends, and how it fails.

The contract suite (test_task_runners.py) already runs every behaviour shared
by all runners on the session LocalCluster; this file covers what only the
Dask runner has. Fault tests kill real worker processes with real signals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import distributed
import pytest
from dask.utils import key_split
from distributed import Client, LocalCluster

import daskflow
from conftest import private_client
from daskflow import flow, task
from daskflow.cache_policies import INPUTS
from daskflow.context import get_flow_run_context
from daskflow.exceptions import SchedulerUnreachableError, UnserializableInputError
from daskflow.futures import resolve_futures_to_results
from daskflow.runs import FlowRun
from daskflow.task_runners import DaskTaskRunner, ThreadPoolTaskRunner, dask_shipping, dask_worker
from daskflow.task_runners.dask_futures import MappedList
from daskflow.task_runners.dask_protocol import StateEvent


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def _read_json(path: Path) -> Any:
    """The file's JSON, or None while it is absent or still being written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_with_nothing_given_it_starts_a_loopback_cluster_and_closes_it() -> None:
    seen: dict[str, Any] = {}

    @task
    def where() -> str:
        return socket.gethostname()

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1}))
    def pipeline() -> str:
        ctx = get_flow_run_context()
        assert ctx is not None
        runner = ctx.task_runner
        seen["runner"] = runner
        seen["scheduler"] = runner.client.scheduler.address
        seen["workers"] = list(runner.client.scheduler_info()["workers"])
        return where()

    assert pipeline() == socket.gethostname()
    assert seen["scheduler"].startswith("tcp://127.0.0.1:"), seen["scheduler"]
    assert seen["workers"] and all(w.startswith("tcp://127.0.0.1:") for w in seen["workers"]), seen["workers"]
    assert seen["runner"].client is None and seen["runner"].cluster is None, "the cluster was left open"


def test_an_active_default_client_is_used_and_left_open(dask_cluster: Any) -> None:
    @task
    def one() -> int:
        return 1

    @flow(task_runner=DaskTaskRunner())
    def pipeline() -> str:
        ctx = get_flow_run_context()
        assert ctx is not None
        return str(ctx.task_runner.client.scheduler.address) if one() == 1 else ""

    with Client(dask_cluster) as client:  # becomes the default client, as in a notebook
        assert pipeline() == client.scheduler.address
        assert client.status == "running"
        assert client.submit(lambda: 2).result() == 2


def test_a_closed_default_client_is_not_used(dask_cluster: Any) -> None:
    # A client whose close failed, or is under way in another thread, can still be the current
    # one (distributed.default_client returns it); every call on it fails "ConnectionPool is
    # closed". Seen once in the suite: a runner given nothing must start its own cluster then.
    @task
    def one() -> int:
        return 1

    @flow(task_runner=DaskTaskRunner())
    def pipeline() -> tuple[int, str]:
        ctx = get_flow_run_context()
        assert ctx is not None
        return one(), str(ctx.task_runner.client.scheduler.address)

    closed = Client(dask_cluster, set_as_default=False)
    closed.close()
    with closed.as_current():
        assert distributed.default_client() is closed
        value, address = pipeline()
    assert value == 1
    assert address != dask_cluster.scheduler_address and address.startswith("tcp://127.0.0.1:")


def test_keys_are_named_after_the_task_and_maps_are_one_batch(dask_client: Client) -> None:
    @task(name="extract-table")
    def extract(i: int) -> int:
        return i

    keys: list[str] = []

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> list[int]:
        futures = extract.map(range(5))
        keys.extend(f.dask_future.key for f in futures)  # type: ignore[attr-defined]
        return futures.result()

    assert pipeline() == [0, 1, 2, 3, 4]
    assert {key_split(k) for k in keys} == {"extract-table"}, keys
    assert len(set(keys)) == 5


def test_a_cluster_class_by_name_with_adaptive_scaling_is_started_and_closed() -> None:
    seen: dict[str, Any] = {}

    @task
    def double(i: int) -> int:
        return 2 * i

    runner = DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "processes": False, "dashboard_address": ":0"},
        adapt_kwargs={"minimum": 1, "maximum": 2},
    )

    @flow(task_runner=runner)
    def pipeline() -> list[int]:
        ctx = get_flow_run_context()
        assert ctx is not None
        seen["cluster"] = ctx.task_runner.cluster
        return double.map(range(4)).result()

    assert pipeline() == [0, 2, 4, 6]
    cluster = seen["cluster"]
    assert type(cluster).__name__ == "LocalCluster"
    assert cluster._adaptive is not None, "adapt_kwargs were not applied"
    assert cluster.status.name == "closed", cluster.status


def test_each_flow_run_is_a_dask_span_and_big_maps_go_in_windows(
    dask_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    @task(name="windowed")
    def windowed(i: int) -> int:
        return i

    batches: list[int] = []
    real_map = Client.map

    def counting_map(self: Client, func: Any, *iterables: Any, **kwargs: Any) -> Any:
        batches.append(len(kwargs["key"]))
        return real_map(self, func, *iterables, **kwargs)

    monkeypatch.setattr(Client, "map", counting_map)

    @flow(name="spanned", flow_run_name="span-{n}", task_runner=DaskTaskRunner(client=dask_client))
    def pipeline(n: int) -> list[int]:
        return windowed.map(range(n)).result()

    with dask.config.set({"daskflow.dask.map_window": 4}):
        assert pipeline(10) == list(range(10))
    assert batches == [4, 4, 2], batches

    def span_names(dask_scheduler: Any) -> list[tuple[str, ...]]:
        return [span.name for span in dask_scheduler.extensions["spans"].spans.values()]

    names = dask_client.run_on_scheduler(span_names)
    assert ("flow spanned run span-10",) in names, names


@pytest.fixture
def lists_stay_on_workers() -> Iterator[None]:
    """Lists of any size stay where they are made (a list under daskflow.dask.map_fetch_below comes
    to the client, whose runs then carry their values): for the tests of items taken out there."""
    with dask.config.set({"daskflow.dask.map_fetch_below": 0}):
        yield


def test_a_map_over_a_future_depends_on_its_items_not_the_whole_list(
    dask_client: Client, lists_stay_on_workers: None
) -> None:
    @task(name="discover")
    def discover() -> list[int]:
        return [1, 2, 3]

    @task(name="square")
    def square(x: int) -> int:
        return x * x

    def dependencies(dask_scheduler: Any, keys: list[str]) -> dict[str, list[str]]:
        return {key: [dep.key for dep in dask_scheduler.tasks[key].dependencies] for key in keys}

    seen: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> list[int]:
        found = discover.submit()
        squares = square.map(found)
        values = squares.result()
        keys = [f.dask_future.key for f in squares]  # type: ignore[attr-defined]
        seen["deps"] = dask_client.run_on_scheduler(dependencies, keys=keys)
        seen["source"] = found.task_run.id.replace("-", "")
        return values

    assert pipeline() == [1, 4, 9]
    deps = list(seen["deps"].values())
    assert deps == [[f"discover-item-{seen['source']}-{i}"] for i in range(3)], deps
    assert {key_split(d[0]) for d in deps} == {"discover-item"}


def test_a_small_list_comes_to_the_client_and_its_runs_carry_their_values(dask_client: Client) -> None:
    """A list of paths or ids costs one transfer; taking each item out where the list is costs a
    Dask task per item. Under daskflow.dask.map_fetch_below the list comes here: no item tasks."""

    @task(name="listing")
    def listing() -> list[str]:
        return [f"part-{i}.parquet" for i in range(30)]

    @task(name="size")
    def size(path: str) -> int:
        return len(path)

    def item_tasks(dask_scheduler: Any) -> list[str]:
        return [str(key) for key in dask_scheduler.tasks if key_split(key) == "listing-item"]

    seen: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> list[int]:
        sizes = size.map(listing.submit())
        values = sizes.result()
        seen["items"] = dask_client.run_on_scheduler(item_tasks)
        return values

    assert pipeline() == [len(f"part-{i}.parquet") for i in range(30)]
    assert seen["items"] == [], seen["items"]


def test_the_runs_of_a_map_over_a_future_go_to_every_worker(dask_client: Client, lists_stay_on_workers: None) -> None:
    """The items are taken out of the list where it lives, so they all sit on one worker, and Dask
    runs a task where its dependencies are: unless each run is asked for on a worker in turn, every
    run of the map goes to that one worker and the others idle (W7 cold ran 1.4-1.8x raw Dask)."""

    @task(name="months")
    def months() -> list[int]:
        return list(range(8))

    @task(name="where")
    def where(month: int) -> str:
        return str(distributed.get_worker().address)

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> list[str]:
        return where.map(months.submit()).result()

    ran = pipeline()
    assert sorted(set(ran)) == sorted(dask_client.nthreads()), f"the runs' workers, in map order: {ran}"


def test_a_run_that_takes_its_item_out_of_the_whole_list_is_not_sent_away_from_it(
    dask_client: Client, lists_stay_on_workers: None
) -> None:
    """A crash retry gives the list a new Dask key: a run whose item task belongs to the old one takes
    its item out of the whole list, so it is not asked for on another worker (the whole list would
    travel there); the runs that still have their own item are."""

    @task(name="months")
    def months() -> list[int]:
        return list(range(8))

    @task(name="double")
    def double(month: int) -> int:
        return 2 * month

    def restrictions(dask_scheduler: Any, keys: list[str]) -> list[bool]:
        return [bool(dask_scheduler.tasks[key].worker_restrictions) for key in keys]

    seen: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> list[int]:
        runner = get_flow_run_context().task_runner  # type: ignore[union-attr]
        found = months.submit()
        items = runner.expand_future(found)
        for item in items[4:]:  # as after a crash retry of the list's run
            item.source = MappedList("an-older-key", None, None, item.source.prefix)
        doubled = double.map(items)
        values = doubled.result()  # the client holds the Dask futures: their tasks stay on the scheduler
        keys = [f.dask_future.key for f in doubled]
        seen["restricted"] = dask_client.run_on_scheduler(restrictions, keys=keys)
        return values

    assert pipeline() == [2 * m for m in range(8)]
    assert seen["restricted"] == [True] * 4 + [False] * 4, seen["restricted"]


def test_the_values_of_a_map_come_to_the_client_in_one_round_trip_not_one_each(
    dask_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.map(...).result()`` fetched each run's value with a round trip of its own: 3,000 runs, 3,000
    round trips, seconds of waiting on a cluster's latency. Counted at the client's own gather."""
    fetches: list[int] = []
    gather = dask_client._gather

    async def counted(futures: Any, *args: Any, **kwargs: Any) -> Any:
        fetches.append(len(futures) if isinstance(futures, list) else 1)
        return await gather(futures, *args, **kwargs)

    monkeypatch.setattr(dask_client, "_gather", counted)

    @task(name="square")
    def square(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x * x

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> list[Any]:
        squares = square.map(range(40))
        return squares.result(raise_on_failure=False)

    values = pipeline()
    assert [v for i, v in enumerate(values) if i != 7] == [i * i for i in range(40) if i != 7]
    assert isinstance(values[7], ValueError) and str(values[7]) == "seven"
    assert fetches == [40], f"gathers of the map's values, by size: {fetches}"

    # The same for a flow that returns its map's futures, and for resolve_futures_to_results.
    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def returning() -> Any:
        return square.map(range(10, 30))

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def resolving() -> Any:
        return resolve_futures_to_results({"squares": square.map(range(30, 50))})

    fetches.clear()
    assert returning() == [i * i for i in range(10, 30)]
    assert resolving() == {"squares": [i * i for i in range(30, 50)]}
    assert fetches == [20, 20], f"gathers of the returned and resolved values, by size: {fetches}"


def test_workers_in_the_clients_process_report_only_the_runs_they_execute(
    dask_inprocess_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With workers in the client's process (processes=False), every run of that process changes
    state where their forwarder listens: hits found where the map is submitted, and the runs of a
    local runner, are no worker's to report, and are not sent as events."""

    @task(name="cached-double", cache_policy=INPUTS, result_storage=tmp_path.as_uri())
    def double(x: int) -> int:
        return 2 * x

    @flow(task_runner=DaskTaskRunner(client=dask_inprocess_client))
    def on_dask() -> list[int]:
        return double.map(range(20)).result()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def local() -> list[int]:
        return double.map(range(20, 30)).result()

    assert on_dask() == [2 * x for x in range(20)]  # runs on the workers: their forwarder is installed
    forwarder = dask_worker._forwarder
    assert forwarder is not None
    sent: list[str] = []
    add = forwarder._add

    def counted(item: Any, urgent: bool = False) -> None:
        if isinstance(item, StateEvent):
            sent.append(item.run_id)
        add(item, urgent)

    monkeypatch.setattr(forwarder, "_add", counted)
    assert on_dask() == [2 * x for x in range(20)]  # every run a hit found on the client
    assert local() == [2 * x for x in range(20, 30)]
    assert sent == [], f"{len(sent)} state events of runs no worker executed"


def test_an_unpicklable_argument_is_an_error_at_submit(dask_client: Client) -> None:
    @task(name="load")
    def load(conn: Any) -> None: ...

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> None:
        load.submit(threading.Lock())

    with pytest.raises(UnserializableInputError) as info:
        pipeline()
    message = str(info.value)
    assert "task 'load'" in message and "argument 'conn'" in message and "_thread.lock" in message, message
    assert isinstance(info.value, TypeError)


def test_an_unreachable_scheduler_fails_within_the_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    address = f"tcp://127.0.0.1:{port}"

    @flow(task_runner=DaskTaskRunner(address=address))
    def pipeline() -> None: ...

    started = time.monotonic()
    with dask.config.set({"daskflow.dask.connect_timeout": "1s"}):
        with pytest.raises(SchedulerUnreachableError, match=f"no Dask scheduler answered at {address} within 1 s"):
            pipeline()
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f} s with a 1 s timeout"


class Tracked:
    """A value that notes every process it is unpickled in (to see where data travels)."""

    def __init__(self, size: int, log: str) -> None:
        self.payload = b"x" * size
        self.log = log

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")


def test_intermediate_values_never_pass_through_the_client(dask_client: Client, tmp_path: Path) -> None:
    log = str(tmp_path / "unpickled")

    @task
    def make(i: int, log: str) -> Tracked:
        return Tracked(100_000, log)

    @task
    def grow(t: Tracked) -> Tracked:
        t.payload += b"y"
        return t

    @task
    def total(ts: list[Tracked]) -> int:
        return sum(len(t.payload) for t in ts)

    @task
    def listing(n: int) -> list[int]:
        return list(range(n))

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> tuple[int, int]:
        made = make.map(range(10), log=log)
        grown = grow.map(made)
        doubled = total.submit(grown)
        items = make.map(listing.submit(3), log=log)  # a map over a future's list
        return doubled.result(), len(items)

    assert pipeline() == (10 * 100_001, 3)
    pids = Path(log).read_text().split() if Path(log).exists() else []
    assert str(os.getpid()) not in pids, f"{pids.count(str(os.getpid()))} values were unpickled in the client"


_USER_HELPERS = """
def offset() -> int:
    return 1
"""

_USER_MODULE = """
from daskflow import task
import daskflow_user_helpers

@task(name="shipped-square")
def square(x: int) -> int:
    return x * x

HELPER_OFFSET = 1

@task
def plus_offset(x: int) -> int:
    return x + HELPER_OFFSET + daskflow_user_helpers.offset()
"""


@pytest.fixture
def scheduler_and_workers(tmp_path: Path) -> Any:
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, in a folder of their own."""
    scheduler_file = tmp_path / "scheduler.json"
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The daskflow under test (a worktree's, say), not the one installed: and nothing else of the path.
    env["PYTHONPATH"] = str(Path(daskflow.__file__).resolve().parents[1])
    env["DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"] = "5s"
    dask_cli = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [
        subprocess.Popen(
            [
                *dask_cli,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        _wait_for(lambda: _read_json(scheduler_file) is not None, 30, "the scheduler file")
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        f"w{i}",
                    ],
                    cwd=workdir,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        address = _read_json(scheduler_file)["address"]
        with Client(address, timeout=10, set_as_default=False) as probe:
            probe.wait_for_workers(2, timeout=30)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
def test_separate_scheduler_and_workers_run_tasks_from_a_local_module(
    scheduler_and_workers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "daskflow_user_tasks.py").write_text(_USER_MODULE)
    (package / "daskflow_user_helpers.py").write_text(_USER_HELPERS)
    monkeypatch.syspath_prepend(str(package))
    import daskflow_user_tasks as user  # type: ignore[import-not-found]

    @flow(task_runner=DaskTaskRunner(address=scheduler_and_workers))
    def pipeline() -> tuple[list[int], list[int]]:
        ctx = get_flow_run_context()
        assert ctx is not None
        found = ctx.task_runner.client.run(
            lambda: __import__("importlib.util").util.find_spec("daskflow_user_tasks") is None
        )
        assert all(found.values()), "the workers must not be able to import the user's module"
        return user.square.map(range(4)).result(), user.plus_offset.map([1, 2]).result()

    assert pipeline() == ([0, 1, 4, 9], [3, 4])


@pytest.mark.slow
def test_a_module_the_workers_lack_and_that_cannot_travel_is_named(
    scheduler_and_workers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module that looks installed (under a site-packages root) is not shipped by value:
    # workers without it must fail the run with the module's name and the fix.
    library = tmp_path / "site-packages"
    library.mkdir()
    (library / "daskflow_installed_lib.py").write_text(
        "from daskflow import task\n\n@task\ndef triple(x: int) -> int:\n    return 3 * x\n"
    )
    monkeypatch.syspath_prepend(str(library))
    monkeypatch.setattr(dask_shipping, "_installed_roots", lambda: (str(library),))
    import daskflow_installed_lib as lib  # type: ignore[import-not-found]

    @flow(task_runner=DaskTaskRunner(address=scheduler_and_workers))
    def pipeline() -> tuple[str, str]:
        state = lib.triple.submit(2, return_state=True)
        return state.name, state.message or ""  # not the state: a failed one would fail the flow

    name, message = pipeline()
    assert name == "Failed", (name, message)
    assert "could not be loaded on the Dask cluster" in message, message
    assert "daskflow_installed_lib" in message and "Install" in message, message


def test_a_flow_runs_over_tls_and_plain_tcp_is_refused() -> None:
    from distributed.security import Security

    security = Security.temporary()

    @task
    def double(x: int) -> int:
        return 2 * x

    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls",
        host="127.0.0.1",
        security=security,
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:"), address
        with Client(address, security=security, set_as_default=False) as client:

            @flow(task_runner=DaskTaskRunner(client=client))
            def pipeline() -> list[int]:
                return double.map([1, 2, 3]).result()

            assert pipeline() == [2, 4, 6]
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout=2, set_as_default=False)


@pytest.fixture
def fragile_cluster() -> Any:
    """A cluster where a dead worker fails its task at once, so daskflow's retry policy decides."""
    with private_client(**{"distributed.scheduler.allowed-failures": 0}) as client:
        yield client


@pytest.mark.slow
def test_a_worker_killed_during_a_map_crashes_then_retries_the_item(
    fragile_cluster: Client, tmp_path: Path, flow_runs: list[FlowRun]
) -> None:
    pid_file = tmp_path / "victim.pid"

    @task(retries=2, retry_delay_seconds=0)
    def work(i: int, pid_file: str) -> int:
        if i == 50 and not os.path.exists(pid_file):
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(pid_file + ".tmp", pid_file)
            for _ in range(3000):  # until the test kills this worker
                time.sleep(0.01)
        return i * 2

    def killer() -> None:
        _wait_for(pid_file.exists, 60, "item 50 to start")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()

    @flow(task_runner=DaskTaskRunner(client=fragile_cluster))
    def pipeline() -> list[int]:
        return work.map(range(200), pid_file=str(pid_file)).result()

    assert pipeline() == [i * 2 for i in range(200)]
    thread.join(5)
    runs = {r.name: r for r in flow_runs[-1].task_runs}
    victim = runs["work-50"]
    names = [s.name for s in victim.state_history]
    assert "Crashed" in names, names
    assert names.index("Crashed") < len(names) - 1 and names[-1] == "Completed", names
    assert "died" in (victim.state_history[names.index("Crashed")].message or "")
    assert victim.run_count == 2, (names, victim.run_count)
    others = [r for name, r in runs.items() if name != "work-50"]
    assert all(r.state.is_completed() for r in others), [r.state for r in others if not r.state.is_completed()]


@pytest.mark.slow
def test_a_task_that_kills_its_worker_ends_crashed_and_siblings_complete(fragile_cluster: Client) -> None:
    @task(name="suicidal")
    def suicidal() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @task
    def fine(i: int) -> int:
        return i

    seen: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(client=fragile_cluster))
    def pipeline() -> list[int]:
        seen["crash"] = suicidal.submit(return_state=True)
        return fine.map(range(10)).result()

    started = time.monotonic()
    assert pipeline() == list(range(10))
    state = seen["crash"]
    assert state.is_crashed(), state
    assert "worker running task run 'suicidal-0' died" in (state.message or ""), state.message
    assert time.monotonic() - started < 60


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from daskflow import flow, task
    from daskflow.task_runners import DaskTaskRunner
    from daskflow.context import get_flow_run_context

    marker = Path(sys.argv[1])

    @task
    def busy(i):
        for _ in range(3000):
            time.sleep(0.01)
        return i

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1}))
    def pipeline():
        runner = get_flow_run_context().task_runner
        pids = list(runner.client.run(os.getpid).values())
        futures = busy.map(range(4))
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids))
        os.replace(tmp, marker)  # atomic: the test must never read it half-written
        return futures.result()

    if __name__ == "__main__":  # the cluster's worker processes import this module too
        try:
            pipeline()
        except KeyboardInterrupt:
            print("interrupted")
    """
)


@pytest.mark.slow
def test_sigint_cancels_the_run_and_leaves_no_cluster_behind(tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(_SIGINT_SCRIPT)
    marker = tmp_path / "pids.json"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DASK_DASKFLOW__LOGGING__CONSOLE": "false"},
    )
    try:
        _wait_for(lambda: marker.exists() or proc.poll() is not None, 60, "the flow to start")
        assert proc.poll() is None, proc.communicate()
        worker_pids = json.loads(marker.read_text())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert "interrupted" in out, err[-2000:]
    finally:
        if proc.poll() is None:  # a failed assertion must not leave the flow running
            proc.kill()
            proc.communicate()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie still answers kill(0); it is gone for our purpose once it is not running.
        status = Path(f"/proc/{pid}/status")
        return not status.exists() or "zombie" in status.read_text()

    _wait_for(lambda: all(gone(p) for p in worker_pids), 30, f"worker processes {worker_pids} to exit")


def test_config_makes_dask_the_default_runner(dask_cluster: Any) -> None:
    @flow
    def which() -> tuple[str, str]:
        ctx = get_flow_run_context()
        assert ctx is not None
        return type(ctx.task_runner).__name__, ctx.task_runner.client.scheduler.address

    with Client(dask_cluster) as client, dask.config.set({"daskflow.task_runner": "dask"}):
        assert which() == ("DaskTaskRunner", client.scheduler.address)


def test_a_traceback_from_a_worker_names_the_users_file(dask_client: Any) -> None:
    # A task defined in a function travels by value; cloudpickle drops its file name on the way.
    @task
    def boom(x: int) -> int:
        ratios = [1 / (x - i) for i in range(3)]
        return len(ratios)

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def pipeline() -> int:
        return boom(1)

    state = pipeline(return_state=True)
    traceback = state.flow_run.task_runs[0].state.traceback
    assert f'File "{__file__}"' in traceback and "<dynamic-code>" not in traceback, traceback
    assert "in <listcomp>" in traceback or "in boom" in traceback, traceback


def _tasks_of(client: Client, marker: str) -> list[str]:
    """The keys the scheduler holds whose name contains ``marker``."""

    def keys(dask_scheduler: Any, marker: str) -> list[str]:
        return [str(key) for key in dask_scheduler.tasks if marker in str(key)]

    found: list[str] = client.run_on_scheduler(keys, marker=marker)
    return found


def _wait_released(client: Client, name: str) -> None:
    """Until the scheduler holds no task named after ``name`` and no worker thread runs one."""
    _wait_for(lambda: not _tasks_of(client, name), 10, "the failed flow's Dask tasks to leave the scheduler")

    def threads_free() -> bool:
        busy = client.run(lambda dask_worker: [str(k) for k in dask_worker.active_threads.values()])
        return not any(name in key for keys in busy.values() for key in keys)

    _wait_for(threads_free, 10, "the failed flow's running tasks to stop on the workers")


def _held_task(name: str) -> Any:
    @task(name=name)
    def held(i: int) -> int:
        for _ in range(600):  # 60 s unless interrupted: short sleeps, so a cancel can stop the thread
            time.sleep(0.1)
        return i

    return held


def _count_release_visits(dask_scheduler: Any, start: bool) -> int:
    """Start (``start``) or end counting the keys the scheduler visits to release a client's keys."""
    if start:
        release = type(dask_scheduler)._client_releases_keys
        visits = dask_scheduler._daskflow_test_visits = [0]

        def counting(keys: Any, cs: Any, recommendations: Any) -> None:
            visits[0] += len(keys)
            release(dask_scheduler, keys=keys, cs=cs, recommendations=recommendations)

        dask_scheduler._client_releases_keys = counting
        return 0
    del dask_scheduler._client_releases_keys
    counted: int = dask_scheduler.__dict__.pop("_daskflow_test_visits")[0]
    return counted


def test_releasing_a_big_map_costs_the_scheduler_work_in_proportion_to_it(dask_client: Client) -> None:
    # distributed's cancel visits every key of a call once per key of that call: the 100,000 items
    # of a failed M1 run held the scheduler's event loop for ten minutes. Released in slices, the
    # visits grow with the number of items, not with its square.
    name = f"wide-{os.getpid()}-{time.monotonic_ns()}"
    items = 1_500
    held = _held_task(name)

    @flow(name=f"{name}-flow", task_runner=DaskTaskRunner(client=dask_client))
    def fails() -> None:
        held.map(range(items))
        raise ValueError("the body gives up")

    dask_client.run_on_scheduler(_count_release_visits, start=True)
    try:
        state = fails(return_state=True)
    finally:
        visits = dask_client.run_on_scheduler(_count_release_visits, start=False)
    assert state.is_failed() and "the body gives up" in (state.message or ""), state
    _wait_released(dask_client, name)
    figure = f"the scheduler visited {visits:,} keys to release {items:,} (one cancel call: {items * items:,})"
    print(figure)
    assert items <= visits < items * items / 4, figure


def test_a_flow_whose_body_raised_leaves_no_task_of_its_own_on_the_scheduler(dask_client: Client, history: Any) -> None:
    # The runs still going when the body raises must not outlive the flow: unreleased, they kept
    # the session scheduler busy for later tests, and the runner's wait for them held the exception.
    name = f"held-{os.getpid()}-{time.monotonic_ns()}"
    held = _held_task(name)

    @task(name=f"{name}-list")
    def listing() -> list[int]:
        return list(range(3))

    @flow(name=f"{name}-flow", task_runner=DaskTaskRunner(client=dask_client))
    def fails() -> None:
        # First (the 2 workers have a thread each, which ``held`` then takes): a map over a future,
        # whose items are Dask tasks of their own too.
        held.map(listing.submit())
        held.map(range(21))
        raise ValueError("the body gives up")

    started = time.monotonic()
    state = fails(return_state=True)
    took = time.monotonic() - started
    assert state.is_failed() and "the body gives up" in (state.message or ""), state
    _wait_released(dask_client, name)
    store = history()
    [flow_run] = store.list_flow_runs(flow_name=f"{name}-flow")
    runs = store.task_runs(flow_run.id)
    by_state: dict[str, int] = {}
    for run in runs:
        by_state[run.state_name] = by_state.get(run.state_name, 0) + 1
    figure = f"the flow ended {took:.2f} s after it started; {len(runs)} task runs in the history {by_state}"
    print(figure)
    assert len(runs) == 25 and all(run.state_type in ("COMPLETED", "CANCELLED") for run in runs), figure


def test_a_run_no_worker_can_take_ends_crashed_within_the_bound(dask_client: Client) -> None:
    @task(name="needs-a-gpu", resources={"GPU": 1})  # no worker of the session cluster has one
    def needs_a_gpu() -> int:
        return 1

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def waits() -> int:
        return needs_a_gpu.submit().result()

    started = time.monotonic()
    with dask.config.set({"daskflow.dask.lost_timeout": "2s"}):
        state = waits(return_state=True)
    took = time.monotonic() - started
    assert state.is_failed(), state
    message = state.message or ""
    assert "needs-a-gpu" in message and "no Dask worker could take its task" in message, message
    assert "daskflow.dask.lost_timeout" in message, message
    print(f"the run ended {took:.2f} s after the flow started (bound 2 s)")


def test_a_runs_final_state_is_here_before_dask_says_its_task_finished(dask_client: Client) -> None:
    # One path for a final state: the worker's report settles the run, and it comes ahead of the
    # Dask task's end, so no reader ever finds a finished task whose run is not settled.
    @task
    def quick(i: int) -> int:
        return i

    seen: list[bool] = []

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def many() -> list[int]:
        futures = quick.map(range(60))
        for future in futures:
            # Settled (not merely done: a finished Dask task made a future "done" before), and recorded.
            future.dask_future.add_done_callback(
                lambda _, f=future: seen.append(f._settled is not None and f.task_run.state.is_final())
            )
        return futures.result()

    assert many() == list(range(60))
    _wait_for(lambda: len(seen) == 60, 10, "Dask's callbacks")
    assert all(seen), f"{seen.count(False)} of 60 runs were not settled when Dask said their task finished"


def test_a_run_whose_report_never_arrives_ends_crashed_saying_so(dask_client: Client, tmp_path: Path) -> None:
    gate = tmp_path / "go"

    @task(name="unreported")
    def unreported() -> int:
        deadline = time.monotonic() + 30
        while not gate.exists() and time.monotonic() < deadline:  # until the client stops listening for it
            time.sleep(0.02)
        return 1

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def lost_report() -> int:
        future = unreported.submit()
        runner = get_flow_run_context().task_runner  # type: ignore[union-attr]
        del runner._router.runs[future.task_run.id]  # as if its events were dropped on the way
        gate.touch()
        return future.result()

    state = lost_report(return_state=True)
    message = state.message or ""
    assert state.is_failed() and "unreported" in message and "never reached this client" in message, state


def _has_run_ends_plugin(dask_worker: Any) -> bool:
    return "daskflow-run-ends" in dask_worker.plugins


@pytest.mark.parametrize("cluster", ["processes", "threads"])
def test_run_ends_sent_from_the_workers_event_loop_are_here_before_the_task_ends(
    cluster: str, request: pytest.FixtureRequest
) -> None:
    # After its first daskflow task, a worker hands its runs' ends to a worker plugin that sends
    # them from its event loop as Dask takes each task's end: still ahead of it, on workers with
    # several threads, and with several workers in one process (sharing one event buffer).
    client = request.getfixturevalue("dask_client" if cluster == "processes" else "dask_inprocess_client")

    @task
    def quick(i: int) -> int:
        return i

    seen: list[bool] = []

    @flow(task_runner=DaskTaskRunner(client=client))
    def many(n: int) -> list[int]:
        futures = quick.map(range(n))
        for future in futures:
            future.dask_future.add_done_callback(
                lambda _, f=future: seen.append(f._settled is not None and f.task_run.state.is_final())
            )
        return futures.result()

    assert many(20) == list(range(20))
    plugged = client.run(_has_run_ends_plugin)
    assert plugged and all(plugged.values()), f"workers without the run-ends plugin: {plugged}"
    _wait_for(lambda: len(seen) == 20, 10, "Dask's callbacks")
    seen.clear()
    assert many(300) == list(range(300))
    _wait_for(lambda: len(seen) == 300, 10, "Dask's callbacks")
    assert all(seen), f"{seen.count(False)} of 300 runs were not settled when Dask said their task finished"
