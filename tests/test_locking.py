"""``daskflow.locking`` for real: one contract suite over both lock managers, the file-system one
across real processes, and ``CachePolicy.configure`` making identical runs compute once (Dask worker
processes, a shared lock folder) and serializable inside ``transaction(isolation_level=SERIALIZABLE)``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from daskflow import flow, task
from daskflow.cache_policies import INPUTS, TASK_SOURCE
from daskflow.exceptions import ConfigurationError
from daskflow.locking import FileSystemLockManager, LockManager, MemoryLockManager
from daskflow.task_runners import ThreadPoolTaskRunner
from daskflow.transactions import IsolationLevel, transaction


@pytest.fixture(params=["memory", "filesystem"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> LockManager:
    if request.param == "memory":
        return MemoryLockManager()
    return FileSystemLockManager(tmp_path / "locks")


def key_for(request: pytest.FixtureRequest) -> str:
    # The memory manager is one per process: each test gets keys of its own.
    return f"key-{request.node.name}"


def test_acquire_release_and_who_holds(manager: LockManager, request: pytest.FixtureRequest) -> None:
    key = key_for(request)
    assert not manager.is_locked(key)
    assert manager.acquire_lock(key, "a")
    assert manager.is_locked(key) and manager.is_lock_holder(key, "a") and not manager.is_lock_holder(key, "b")
    assert manager.acquire_lock(key, "a", acquire_timeout=0), "a holder taking its lock again must succeed"
    assert not manager.acquire_lock(key, "b", acquire_timeout=0), "another holder took a held lock"
    with pytest.raises(ValueError, match="not held by 'b'"):
        manager.release_lock(key, "b")
    manager.release_lock(key, "a")
    assert not manager.is_locked(key)
    assert manager.acquire_lock(key, "b", acquire_timeout=0)
    manager.release_lock(key, "b")
    with pytest.raises(ValueError, match="held by nobody"):
        manager.release_lock(key, "b")


def test_a_waiter_gets_the_lock_when_it_is_released(manager: LockManager, request: pytest.FixtureRequest) -> None:
    key = key_for(request)
    assert manager.acquire_lock(key, "first")
    waiting = threading.Event()
    got: list[bool] = []

    def second() -> None:
        waiting.set()
        got.append(manager.acquire_lock(key, "second", acquire_timeout=30))

    thread = threading.Thread(target=second)
    thread.start()
    assert waiting.wait(10)
    assert manager.is_lock_holder(key, "first") and not got
    manager.release_lock(key, "first")
    thread.join(30)
    assert got == [True] and manager.is_lock_holder(key, "second")
    assert not manager.wait_for_lock(key, timeout=0.05), "wait_for_lock returned while the lock was held"
    manager.release_lock(key, "second")
    assert manager.wait_for_lock(key, timeout=0)


def test_hold_timeout_frees_a_lock_whose_holder_went_away(manager: LockManager, request: pytest.FixtureRequest) -> None:
    key = key_for(request)
    assert manager.acquire_lock(key, "gone", hold_timeout=0.2)
    # Waited for by the next holder itself, bounded: the lock frees once its hold_timeout passes.
    assert manager.acquire_lock(key, "next", acquire_timeout=30)
    assert manager.is_lock_holder(key, "next") and not manager.is_lock_holder(key, "gone")
    manager.release_lock(key, "next")


def test_async_forms(manager: LockManager, request: pytest.FixtureRequest) -> None:
    key = key_for(request)

    async def use() -> bool:
        assert await manager.aacquire_lock(key, "x")  # type: ignore[attr-defined]
        manager.release_lock(key, "x")
        return bool(await manager.await_for_lock(key, timeout=1))  # type: ignore[attr-defined]

    assert asyncio.run(use())


def test_bad_timeouts_are_clear_errors(manager: LockManager) -> None:
    with pytest.raises(ConfigurationError, match="acquire_timeout=-1 must be a number of seconds"):
        manager.acquire_lock("k", "h", acquire_timeout=-1)


def test_memory_lock_manager_is_one_per_process() -> None:
    assert MemoryLockManager() is MemoryLockManager()


COUNTER = """
import sys
from pathlib import Path
from daskflow.locking import FileSystemLockManager

locks, counter, me = FileSystemLockManager(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for _ in range(40):
    assert locks.acquire_lock("counter", me, acquire_timeout=60)
    value = int(counter.read_text())      # read, then write: updates are lost without the lock
    counter.write_text(str(value + 1))
    locks.release_lock("counter", me)
"""


def test_file_locks_exclude_other_processes(tmp_path: Path) -> None:
    script = tmp_path / "count.py"
    script.write_text(textwrap.dedent(COUNTER))
    counter = tmp_path / "counter"
    counter.write_text("0")
    processes = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "locks"), str(counter), f"p{i}"])
        for i in range(3)
    ]
    codes = [p.wait(120) for p in processes]
    assert codes == [0, 0, 0]
    assert int(counter.read_text()) == 120, f"{counter.read_text()} of 120 increments: a lost update"
    assert list((tmp_path / "locks").glob("*.lock")) == []


def test_configure_checks_its_arguments_and_keeps_the_key() -> None:
    configured = (INPUTS + TASK_SOURCE).configure(isolation_level="serializable", lock_manager=MemoryLockManager())
    assert configured.isolation_level is IsolationLevel.SERIALIZABLE
    assert configured == INPUTS + TASK_SOURCE, "configuring changed what the key is made of"
    assert (INPUTS + TASK_SOURCE).lock_manager is None, "configure changed the original"
    with pytest.raises(ConfigurationError, match="isolation_level='SOMETIMES'"):
        INPUTS.configure(isolation_level="SOMETIMES")
    with pytest.raises(ConfigurationError, match="a lock manager needs acquire_lock"):
        INPUTS.configure(lock_manager=object())  # type: ignore[arg-type]


def test_serializable_policy_computes_once_across_dask_worker_processes(
    tmp_path: Path, dask_client: Any, executions: Any
) -> None:
    from daskflow.task_runners import DaskTaskRunner

    records = tmp_path / "records"
    policy = INPUTS.configure(
        key_storage=records,
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=FileSystemLockManager(tmp_path / "locks"),
    )

    @task(cache_policy=policy)
    def slow_square(x: int) -> int:
        executions.record("square")
        import time

        time.sleep(0.5)  # the work: long enough for the other worker to ask for the same key meanwhile
        return x * x

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def four_times() -> list[int]:
        futures = [slow_square.submit(7) for _ in range(4)]
        return [future.result() for future in futures]

    state = four_times(return_state=True)
    assert state.result() == [49] * 4
    assert executions.count("square") == 1, f"computed {executions.count('square')} times"
    assert state.flow_run is not None
    assert (state.flow_run.cache_hits, state.flow_run.cache_misses) == (3, 1), state.flow_run.task_run_counts
    assert list(records.rglob("*")), "the entry was not written to the policy's key_storage"
    assert list((tmp_path / "locks").glob("*.lock")) == [], "a lock was left behind"


def test_a_serializable_transaction_locks_through_the_policy_manager(tmp_path: Path) -> None:
    locks = FileSystemLockManager(tmp_path / "locks")
    seen: list[int] = []

    @task(cache_policy=INPUTS.configure(lock_manager=locks))
    def look(x: int) -> int:
        seen.append(len(list((tmp_path / "locks").glob("*.lock"))))  # lock files held while this runs
        return x

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def run(level: str | None, x: int) -> int:
        with transaction(isolation_level=IsolationLevel(level) if level else None):
            return look(x)

    assert run(None, 1) == 1
    assert run("READ_COMMITTED", 2) == 2
    assert run("SERIALIZABLE", 3) == 3
    assert seen == [0, 0, 1], f"lock files seen by each run: {seen}"
    assert list((tmp_path / "locks").glob("*.lock")) == []


# -- Prefect's module paths, and a result store that locks ------------------------------------------


def test_prefect_module_paths_name_the_same_managers() -> None:
    from daskflow.locking.filesystem import FileSystemLockManager as FromFilesystem
    from daskflow.locking.memory import MemoryLockManager as FromMemory
    from daskflow.locking.protocol import LockManager as FromProtocol

    assert (FromFilesystem, FromMemory, FromProtocol) == (FileSystemLockManager, MemoryLockManager, LockManager)


def test_a_result_store_locks_through_its_manager_and_keeps_it_across_pickling(tmp_path: Path) -> None:
    import pickle

    from daskflow.results import ResultStore

    locks = FileSystemLockManager(tmp_path / "locks")
    store = ResultStore(tmp_path.as_uri(), lock_manager=locks)
    assert store.acquire_lock("record", holder="me") and store.is_locked("record")
    again = pickle.loads(pickle.dumps(store))
    assert again.lock_manager == locks and again.is_lock_holder("record", holder="me")
    assert not again.acquire_lock("record", holder="someone else", acquire_timeout=0)
    store.release_lock("record", holder="me")
    assert again.wait_for_lock("record", timeout=5) and not again.is_locked("record")


KEYED_BLOCK = """
import os, sys
from daskflow.locking.filesystem import FileSystemLockManager
from daskflow.results import ResultStore
from daskflow.transactions import IsolationLevel, transaction

store = ResultStore(sys.argv[1], lock_manager=FileSystemLockManager(sys.argv[2]))
with transaction(key="nightly-export", store=store, isolation_level=IsolationLevel.SERIALIZABLE) as txn:
    if not txn.is_committed():
        with open(sys.argv[3], "a") as log:   # the work the record guards
            log.write(f"{os.getpid()}\\n")
        txn.stage(os.getpid())
"""


def test_serializable_keyed_blocks_in_several_processes_do_the_work_once(tmp_path: Path) -> None:
    """Prefect's race-condition example across processes: a shared lock folder and result folder."""
    script = tmp_path / "block.py"
    script.write_text(textwrap.dedent(KEYED_BLOCK))
    log = tmp_path / "work.log"
    args = [(tmp_path / "records").as_uri(), str(tmp_path / "locks"), str(log)]
    processes = [subprocess.Popen([sys.executable, str(script), *args]) for _ in range(3)]
    codes = [p.wait(120) for p in processes]
    assert codes == [0, 0, 0]
    workers = log.read_text().split()
    assert len(workers) == 1, f"{len(workers)} processes did the work: {workers}"
