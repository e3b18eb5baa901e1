"""Storage faults injected for real: failing writes, killed writers, many processes, flipped bytes.

The failing writes go through ``faultfs://`` (tests/faultfs.py), a local
folder whose files fail on purpose; the killed writer and the concurrent
processes are real subprocesses over ``file://``. After each fault: the
previous good entry is still readable, no partial *final* file exists, and
the only leftovers are temp files that ``prune`` removes.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import faultfs
from conftest import Opaque
from daskflow.results import ResultStore, ResultWarning
from daskflow.results.signing import load_or_create_key_file

pytestmark = pytest.mark.timeout(90)

SRC = Path(__file__).resolve().parents[1] / "src"
OLD = pd.DataFrame({"generation": ["old"] * 3, "v": [1, 2, 3]})


@pytest.fixture(autouse=True)
def daskflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DASKFLOW_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def fault_counts() -> Iterator[Any]:
    faultfs.FaultFileSystem.injected.clear()
    yield faultfs.FaultFileSystem.injected


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-")) if folder.exists() else []


def subprocess_env(home: Path) -> dict[str, str]:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "DASKFLOW_HOME": str(home)}


# -- faultfs: failing writes keep the previous entry -------------------------------------


@pytest.mark.parametrize(
    ("fault", "options", "reason"),
    [
        ("fail_after_bytes", {"fail_after_bytes": 300}, "storage failed after 300 bytes"),
        ("truncate_on_close", {"truncate_on_close": True}, "not publishing it"),
        ("rename", {"fail_rename": True}, "rename of"),
    ],
)
def test_failed_write_keeps_previous_entry(
    tmp_path: Path, fault_counts: Any, fault: str, options: dict[str, Any], reason: str
) -> None:
    folder = tmp_path / "faulty"
    url = f"faultfs://{folder}"
    healthy = ResultStore(url, {})
    faulty = ResultStore(url, options)
    assert healthy.write("k1", OLD, task_name="t") is not None
    before = (folder / "k1.parquet").read_bytes()

    new = pd.DataFrame({"generation": ["new"] * 5000, "v": np.arange(5000)})
    with pytest.warns(ResultWarning) as record:
        info = faulty.write("k1", new, task_name="load")
    assert info is None, "a failed write must return None"
    assert fault_counts[fault] == 1, f"fault {fault} fired {fault_counts[fault]} times"
    text = str(record[0].message)
    assert all(part in text for part in ("'load'", "'k1'", str(folder), "not lost", reason)), text

    assert (folder / "k1.parquet").read_bytes() == before, "the previous entry was changed"
    result = healthy.read("k1")
    assert result is not None, "the previous entry is no longer readable"
    pd.testing.assert_frame_equal(result.value, OLD)
    assert temp_files(folder) == [], f"temp files left: {temp_files(folder)}"

    # First write of a key failing: no final file at all.
    with pytest.warns(ResultWarning):
        assert faulty.write("k2", new, task_name="load") is None
    assert not (folder / "k2.parquet").exists(), "a failed first write left a final file"
    assert sorted(p.name for p in folder.iterdir()) == ["k1.parquet"], list(folder.iterdir())


def test_faultfs_uses_the_rename_strategy(tmp_path: Path) -> None:
    # The fault tests above only mean something if writes go through fs.open + fs.mv.
    store = ResultStore(f"faultfs://{tmp_path}", {})
    assert store._location.strategy == "rename"
    assert ResultStore(tmp_path.as_uri())._location.strategy == "local"


def test_unreadable_storage_is_a_warned_miss(tmp_path: Path, fault_counts: Any) -> None:
    url = f"faultfs://{tmp_path}"
    ResultStore(url, {}).write("k", [1, 2], task_name="t")
    with pytest.warns(ResultWarning, match="'k' .* could not be read from the storage .*injected: reading"):
        assert ResultStore(url, {"fail_read": True}).read("k") is None
    assert fault_counts["read"] == 1, f"read fault fired {fault_counts['read']} times"


def test_unwritable_storage_is_a_warning_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = ResultStore((blocker / "results").as_uri())
    with pytest.warns(ResultWarning, match="could not cache the result of task 'extract'"):
        assert store.write("k", {"rows": 3}, task_name="extract") is None


# -- a writer killed mid-write -----------------------------------------------------------

WRITER = """
import sys
import numpy as np, pandas as pd
from daskflow.results import ResultStore
url, key, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
frame = pd.DataFrame({"generation": "new", "a": rng.random(rows), "b": rng.integers(0, 2**62, rows),
                      "c": rng.random(rows), "d": rng.random(rows)})
print("ready", flush=True)
ResultStore(url).write(key, frame, task_name="big")
print("written", flush=True)
"""


def wait_for(predicate: Any, timeout: float, interval: float = 0.001) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; bounded, never a bare sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_old_entry_and_an_orphan(tmp_path: Path, daskflow_home: Path) -> None:
    folder = tmp_path / "killed"
    store = ResultStore(folder.as_uri())
    store.write("big", OLD, task_name="big")
    attempts: list[str] = []
    for rows in (2_000_000, 4_000_000, 8_000_000):  # a bigger frame if the kill came too late
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, folder.as_uri(), "big", str(rows)],
            stdout=subprocess.PIPE,
            env=subprocess_env(daskflow_home),
        )
        try:
            seen = wait_for(lambda: temp_files(folder) or proc.poll() is not None, timeout=60)
            if temp_files(folder):
                os.kill(proc.pid, signal.SIGKILL)
            returncode = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            assert proc.stdout is not None
            proc.stdout.close()
        result = store.read("big")
        assert result is not None, f"no readable entry after the kill (rows={rows}, rc={returncode})"
        generation = result.value["generation"].iloc[0]
        attempts.append(f"rows={rows} seen={seen} rc={returncode} entry={generation} temps={len(temp_files(folder))}")
        if returncode == -signal.SIGKILL and generation == "old":
            break
        store.write("big", OLD, task_name="big")  # the kill came after the rename: try again, bigger
    else:
        pytest.fail(f"never killed a writer mid-write: {attempts}")

    pd.testing.assert_frame_equal(result.value, OLD)
    orphans = temp_files(folder)
    assert len(orphans) == 1, f"expected the killed writer's temp file, found {orphans} ({attempts})"
    assert [e.key for e in store.entries()] == ["big"], "the orphan must not show as an entry"
    kept = store.prune()
    assert kept.orphans == () and temp_files(folder) == orphans, f"a fresh temp file was pruned: {kept}"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    report = store.prune(now=later)
    assert report.orphans == (store._location.display(orphans[0]),), f"prune report {report}"
    assert sorted(p.name for p in folder.iterdir()) == ["big.parquet"], list(folder.iterdir())
    assert store.read("big") is not None


# -- sixteen writers in four processes, readers in this one -------------------------------

PROCESS_WRITER = """
import sys, threading
import numpy as np, pandas as pd
from daskflow.results import ResultStore
url, key, process = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = ResultStore(url)
frames = [pd.DataFrame({"writer": np.full(20_000, process * 4 + t), "x": np.arange(20_000)}) for t in range(4)]
print("ready", flush=True)
sys.stdin.readline()
barrier, failures = threading.Barrier(4), []
def write(t):
    barrier.wait(timeout=30)
    try:
        if store.write(key, frames[t], task_name="w") is None:
            failures.append("none")
    except BaseException as exc:
        failures.append(repr(exc))
threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join(timeout=60)
print("done", len(failures), failures[:1], flush=True)
"""


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"process {proc.pid} said nothing within {timeout}s"
    return proc.stdout.readline().decode().strip()


def test_sixteen_writers_in_four_processes(tmp_path: Path, daskflow_home: Path) -> None:
    folder = tmp_path / "shared"
    store = ResultStore(folder.as_uri())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_WRITER, folder.as_uri(), "shared", str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=subprocess_env(daskflow_home),
        )
        for i in range(4)
    ]
    failures: list[str] = []
    reads = {"hits": 0, "misses": 0}
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                result = store.read("shared")
                if result is None:
                    reads["misses"] += 1
                    continue
                frame = result.value
                writers = set(frame["writer"].unique())
                assert len(frame) == 20_000 and len(writers) == 1 and (frame["x"].to_numpy() == np.arange(20_000)).all()
                reads["hits"] += 1
            except BaseException as exc:
                failures.append(f"reader: {exc!r}")
                return

    try:
        assert [read_line(p, 60) for p in procs] == ["ready"] * 4
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            readers = [threading.Thread(target=reader) for _ in range(2)]
            for thread in readers:
                thread.start()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
            outcomes = [read_line(p, 60) for p in procs]
            done.set()
            for thread in readers:
                thread.join(timeout=30)
    finally:
        done.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
    assert outcomes == ["done 0 []"] * 4, f"writer processes reported {outcomes}"
    assert not failures, f"{len(failures)} reader failures: {failures[:3]}"
    warned = [str(w.message) for w in caught if issubclass(w.category, ResultWarning)]
    assert not warned, f"readers saw {len(warned)} unusable entries: {warned[:2]}"
    final = store.read("shared")
    assert final is not None and len(set(final.value["writer"])) == 1, "no single valid final entry"
    assert sorted(p.name for p in folder.iterdir()) == ["shared.parquet"], (
        f"files left: {sorted(p.name for p in folder.iterdir())}; reads {reads}"
    )


# -- damage anywhere in an entry --------------------------------------------------------


def test_no_flipped_byte_gives_a_wrong_value(tmp_path: Path) -> None:
    """Flip bytes all over real entries: each read is the right value or a warned miss."""
    folder = tmp_path / "flips"
    store = ResultStore(folder.as_uri(), signing_key=b"k")
    values: dict[str, Any] = {
        "frame": pd.DataFrame(
            {"x": np.arange(50), "s": [f"s{i}" for i in range(50)], "c": pd.Categorical(["a", "b"] * 25)}
        ),
        "plain": {"a": [1, 2.5, "x"], "b": (None, True), "d": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
        "array": np.arange(40.0).reshape(4, 10),
        "pickle": Opaque(7),
    }
    outcomes = {"same": 0, "warned-miss": 0, "wrong": 0}
    wrong: list[str] = []
    for key, value in values.items():
        store.write(key, value, task_name="t", serializer="pickle")
        path = folder / f"{key}.parquet"
        good = path.read_bytes()
        for position in range(0, len(good), 5):  # every fifth byte keeps this to a second or two
            damaged = bytearray(good)
            damaged[position] ^= 0xFF
            path.write_bytes(bytes(damaged))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = store.read(key)
            if result is None:
                outcomes["warned-miss" if caught else "wrong"] += 1
            elif _same(value, result.value):
                outcomes["same"] += 1
            else:
                outcomes["wrong"] += 1
                wrong.append(f"{key}@{position}")
    assert outcomes["wrong"] == 0, f"flips giving a wrong value or a silent miss: {wrong[:10]}; outcomes {outcomes}"
    assert outcomes["warned-miss"] > 10 * outcomes["same"], f"outcomes {outcomes}"


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, pd.DataFrame):
        try:
            pd.testing.assert_frame_equal(actual, expected, check_exact=True)
        except AssertionError:
            return False
        return True
    if isinstance(expected, np.ndarray):
        return (
            bool(type(actual) is np.ndarray and actual.dtype == expected.dtype and actual.shape == expected.shape)
            and actual.tobytes() == expected.tobytes()
        )
    if isinstance(expected, Opaque):
        return bool(actual == expected)
    # repr tells apart what == does not: 1 and True, a naive and an aware datetime.
    return bool(type(actual) is type(expected) and repr(actual) == repr(expected) and actual == expected)


def test_concurrent_key_file_creation_agrees(tmp_path: Path) -> None:
    path = tmp_path / "k" / "results.key"
    barrier = threading.Barrier(8)
    keys: list[bytes] = []

    def create() -> None:
        barrier.wait(timeout=10)
        keys.append(load_or_create_key_file(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(keys) == 8 and len(set(keys)) == 1, f"{len(set(keys))} distinct keys from {len(keys)} creators"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.key"], "temp key files left behind"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names an open file through /proc/self/fd")
def test_a_local_entry_is_flushed_to_disk_before_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once per entry, and before the rename: a power loss then leaves the old name or the whole
    # new entry. The folder is not flushed after the rename (a lost rename is the old state).
    folder = tmp_path / "store"
    store = ResultStore(folder.as_uri())
    store.write("first", 1, task_name="t")  # the folder exists: only the entry's own flushes below
    flushes: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushes.append((os.readlink(f"/proc/self/fd/{fd}"), (folder / "k.parquet").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert store.write("k", 41, task_name="t") is not None
    assert len(flushes) == 1, f"a write flushed {len(flushes)} times: {flushes}"
    [(flushed, published)] = flushes
    assert Path(flushed).name.startswith(".tmp-") and not published, f"flushed {flushed}, published before: {published}"
    found = store.read("k")
    assert found is not None and found.value == 41
