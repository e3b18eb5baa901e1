"""The run store's spool and idempotent writes, with real files, real SQLite and a real killed process.

What must hold: a batch written twice is kept once (states and logs by their uid,
artifacts by id, snapshots by id and time); every record kind survives the spool's
encoder and decoder unchanged; a torn or damaged line never spoils the records
around it; past its bound the spool drops, counts and warns; a record the
database refuses is left out alone, not its batch; and a writer SIGKILLed with
records in its spool leaves them to the next writer of the same store.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daskflow.runstore import (
    ArtifactRecord,
    FlowRunRecord,
    LogEntry,
    RunStoreWarning,
    RunStoreWriter,
    StateRecord,
    TaskRunRecord,
)
from daskflow.runstore import spool as spool_module
from daskflow.runstore import store as store_module
from daskflow.runstore.records import encode_parameters
from daskflow.runstore.spool import FrameError, SpoolFile, adopt_orphans, decode_frame, encode_frame
from daskflow.runstore.store import RunStore

T0 = 1_700_000_000.0


def _all_kinds(tag: str = "a") -> list[Any]:
    return [
        FlowRunRecord(
            id=f"f-{tag}", name="bold-fox", flow_name="etl", state_type="COMPLETED", state_name="Completed",
            parameters={"day": datetime(2024, 5, 1, tzinfo=UTC), "ids": {1, 2}, "note": "é\nline"},
            start_time=T0, end_time=T0 + 2, run_count=1, updated=T0 + 2, created=T0,
        ),
        TaskRunRecord(
            id=f"t-{tag}", flow_run_id=f"f-{tag}", name="load-0", task_name="load", state_type="FAILED",
            state_name="Failed", state_message="boom", map_index=0, start_time=T0, end_time=T0 + 1, run_count=2,
            cache_key="k", cache_hit=False, worker="tcp://127.0.0.1:1", slot_wait=0.25, traceback="Traceback...",
            upstream_ids=("u1", "u2"), updated=T0 + 1, created=T0,
        ),
        StateRecord(run_id=f"t-{tag}", run_kind="task", type="FAILED", name="Failed", message="boom", timestamp=T0 + 1),
        LogEntry(flow_run_id=f"f-{tag}", task_run_id=f"t-{tag}", logger="daskflow.task_runs", level=logging.ERROR,
                 message="row 7 \x00 failed \u2603", created=T0 + 1, exception="ValueError: row 7"),
        ArtifactRecord(type="markdown", data="# hi", key="report", description="d", flow_run_id=f"f-{tag}",
                       created=T0 + 2),
    ]  # fmt: skip


@pytest.fixture
def store(run_store_url: str) -> Any:
    with RunStore(run_store_url) as opened:
        yield opened


def _counts(store: RunStore, flow_run_id: str, task_run_id: str) -> tuple[int, int, int, int]:
    detail = store.flow_run(flow_run_id)
    assert detail is not None
    return (
        len(detail.task_runs),
        len(store.states(task_run_id)),
        len(store.logs(flow_run_id)),
        len(store.artifacts(flow_run_id=flow_run_id)),
    )


def _safe(records: list[Any]) -> list[Any]:
    # PostgreSQL text refuses NUL; the NUL case has a test of its own below.
    for record in records:
        if isinstance(record, LogEntry):
            record.message = record.message.replace("\x00", "")
    return records


def test_writing_a_batch_twice_keeps_every_record_once(store: RunStore) -> None:
    records = _safe(_all_kinds())
    store.write(records)
    store.write(records)  # a retry after a commit whose answer was lost, or a replay
    store.write(records[2:4])
    assert _counts(store, "f-a", "t-a") == (1, 1, 1, 1)


def test_the_portable_path_is_as_idempotent(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_NATIVE_UPSERT", ())
    records = _safe(_all_kinds("p"))
    store.write(records + records[2:])  # duplicates inside one batch too
    store.write(records)
    assert _counts(store, "f-p", "t-p") == (1, 1, 1, 1)


def test_every_record_kind_comes_back_from_a_frame_unchanged() -> None:
    for record in _all_kinds():
        frame = encode_frame(record)
        assert frame.endswith(b"\n") and frame.count(b"\n") == 1 and frame.isascii(), frame
        back = decode_frame(frame)
        if isinstance(record, FlowRunRecord):
            # Parameters travel as the JSON the store keeps: what JSON cannot hold, as the store would write it.
            assert back.parameters == json.loads(encode_parameters(record.parameters) or "null")
            back.parameters = record.parameters
        assert back == record, (back, record)


def test_bad_frames_are_refused_with_the_reason() -> None:
    good = encode_frame(_all_kinds()[2])
    cases = {
        good[:-5]: "no end",
        good.replace(b"Failed", b"Faile!", 1): "checksum",
        b"zzzzzzzz {}\n": "checksum",
        encode_frame(_all_kinds()[2]).replace(b'"v":1', b'"v":9'): "checksum",
    }
    for line, reason in cases.items():
        with pytest.raises(FrameError, match=reason):
            decode_frame(line)
    future = spool_module._frame({"v": 9, "k": "state"})
    with pytest.raises(FrameError, match="version 9, which this daskflow"):
        decode_frame(future)
    with pytest.raises(FrameError, match="unknown record kind 'event'"):
        decode_frame(spool_module._frame({"v": 1, "k": "event"}))


def test_a_torn_tail_and_a_damaged_line_spoil_nothing_else(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = SpoolFile.create(tmp_path, "sqlite:///x.db")
    records = _all_kinds()
    spool.append(b"".join(encode_frame(r) for r in records[:3]))
    spool.append(b'0badc0de {"v":1}\n')  # a damaged line between good ones
    spool.append(b"".join(encode_frame(r) for r in records[3:]))
    spool.close()
    with spool.path.open("ab") as f:
        f.write(encode_frame(records[0])[:40])  # a writer killed mid-append
    (adopted,) = adopt_orphans(tmp_path)
    with caplog.at_level(logging.WARNING, "daskflow.runstore"):
        result = adopted.read(100)
    adopted.close()
    assert [encode_frame(r) for r in result.records] == [encode_frame(r) for r in records]
    assert result.at_end and result.damaged == 2, result
    assert "checksum does not match" in caplog.text and "ends in a partial record (40 bytes" in caplog.text


def test_a_live_writers_spool_is_not_adopted(tmp_path: Path) -> None:
    live = SpoolFile.create(tmp_path, "sqlite:///x.db")
    assert adopt_orphans(tmp_path) == []  # its lock is held by this process (another open file)
    live.close()
    (orphan,) = adopt_orphans(tmp_path)
    assert orphan.path == live.path and adopt_orphans(tmp_path) == []  # now held by the adopter
    orphan.remove()
    assert not live.path.exists()


def test_past_its_bound_the_spool_drops_counts_and_warns_once(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = RunStore(f"sqlite:///{path}", busy_timeout=0.1)
    frame = len(
        encode_frame(StateRecord(run_id="r-0000", run_kind="flow", type="RUNNING", name="Running", timestamp=T0))
    )
    writer = RunStoreWriter(store, interval=30, spool_folder=tmp_path / "spool", spool_max_bytes=200 + 10 * frame)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(30):
                writer.put(
                    StateRecord(run_id=f"r-{i:04d}", run_kind="flow", type="RUNNING", name="Running", timestamp=T0)
                )
            assert writer.flush(timeout=30)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    kept = writer.spooled
    assert 5 <= kept <= 10 and writer.dropped == 30 - kept, (kept, writer.dropped)
    messages = [str(w.message) for w in caught if w.category is RunStoreWarning]
    assert len(messages) == 1 and "reached its bound" in messages[0] and "spool.max_bytes" in messages[0], messages
    assert writer.flush(timeout=30)
    with store.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT count(*) FROM states").scalar()
    assert stored == kept and writer.replayed == kept
    writer.close()
    store.close()


def test_a_record_the_database_refuses_is_left_out_alone(postgres_url: str) -> None:
    with RunStore(postgres_url) as store:
        writer = RunStoreWriter(store, batch_size=100_000, interval=30)
        good = [LogEntry(flow_run_id="f", message=f"line {i}", created=T0 + i) for i in range(99)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for entry in good[:50]:
                writer.put(entry)
            writer.put(LogEntry(flow_run_id="f", message="has a NUL \x00 in it"))  # PostgreSQL text refuses NUL
            for entry in good[50:]:
                writer.put(entry)
            assert writer.close(timeout=60)
        assert sorted(log.message for log in store.logs("f")) == sorted(e.message for e in good)
        assert writer.dropped == 1 and writer.spooled == 0, writer
        messages = [str(w.message) for w in caught if w.category is RunStoreWarning]
        assert len(messages) == 1 and "1 record dropped" in messages[0], messages


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from daskflow.runstore import FlowRunRecord, LogEntry, StateRecord, TaskRunRecord, RunStoreWriter
    url, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    writer = RunStoreWriter(url, spool_folder=folder, busy_timeout=0.2, batch_size=500)
    writer.put(FlowRunRecord(id="killed", name="killed", flow_name="etl", state_type="RUNNING", state_name="Running"))
    for i in range(n):
        tid = f"killed-{i}"
        writer.put(TaskRunRecord(id=tid, flow_run_id="killed", name=tid, task_name="t", map_index=i,
                                 state_type="COMPLETED", state_name="Completed"))
        writer.put(StateRecord(run_id=tid, run_kind="task", type="RUNNING", name="Running"))
        writer.put(StateRecord(run_id=tid, run_kind="task", type="COMPLETED", name="Completed"))
        writer.put(LogEntry(flow_run_id="killed", task_run_id=tid, message=f"item {i}"))
    assert writer.flush(timeout=60)
    print(f"spooled {writer.spooled} written {writer.written} dropped {writer.dropped}", flush=True)
    time.sleep(600)  # until the test kills it
    """
)


_NEXT_WRITER = textwrap.dedent(
    """
    import sys
    from daskflow.runstore import RunStoreWriter
    writer = RunStoreWriter(sys.argv[1], spool_folder=sys.argv[2])
    assert writer.flush(timeout=60) and writer.close(timeout=60)
    print(writer.replayed, writer.dropped)
    """
)


@pytest.mark.slow
def test_a_writer_killed_with_records_in_its_spool_leaves_them_to_the_next(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    RunStore(url).close()
    folder = tmp_path / "spool"
    n = 1_000
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the database does not answer: everything goes to the spool
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, url, str(folder), str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child flushed: its records are in its spool
        assert line.strip() == f"spooled {1 + 4 * n} written 0 dropped 0", (line, child.stderr)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        locker.execute("ROLLBACK")
        locker.close()
    (left,) = folder.glob("*.spool")
    assert f"-{child.pid}-" in left.name
    with left.open("ab") as f:  # and it was killed mid-append of one more record
        f.write(encode_frame(LogEntry(flow_run_id="killed", message="torn"))[:30])

    # The next process to open a writer on the same store, with nothing of its own to write, replays it.
    nxt = subprocess.run(
        [sys.executable, "-c", _NEXT_WRITER, url, str(folder)], capture_output=True, text=True, timeout=120
    )  # fmt: skip
    assert nxt.returncode == 0, nxt.stderr
    replayed, dropped = map(int, nxt.stdout.split())
    assert "ends in a partial record (30 bytes" in nxt.stderr, nxt.stderr
    with RunStore(url) as store:
        detail = store.flow_run("killed")
        assert detail is not None and len(detail.task_runs) == n
        with store.engine.connect() as connection:
            states = connection.exec_driver_sql("SELECT count(*), count(DISTINCT uid) FROM states").one()
        logs = [log.message for log in store.logs("killed")]
    assert tuple(states) == (2 * n, 2 * n), states
    assert sorted(logs) == sorted(f"item {i}" for i in range(n)), len(logs)
    assert (replayed, dropped) == (1 + 4 * n, 1), (replayed, dropped)  # the torn record is the one dropped
    assert not list(folder.glob("*.spool")), "a replayed spool is removed"
