"""The run store's contract, over every store kind in conftest.RUN_STORE_KINDS (an SQLite file
and a private PostgreSQL server): migrations, upserts, every reading query, and the writer's
batching, flushing and outages, with the database locked or unreachable for real."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dask.config
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from daskflow.exceptions import ConfigurationError
from daskflow.runstore import (
    AmbiguousRunIdError,
    ArtifactRecord,
    FlowRunRecord,
    LogEntry,
    RunStoreUnavailableError,
    RunStoreVersionError,
    RunStoreWarning,
    RunStoreWriter,
    StateRecord,
    TaskRunRecord,
    log_entry_from_record,
)
from daskflow.runstore import store as store_module
from daskflow.runstore.migrations import HEAD, head_revision, run_migrations, upgrade_to_head
from daskflow.runstore.schema import VERSION_TABLE, metadata
from daskflow.runstore.store import RunStore
from daskflow.runstore.urls import mask_password

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def store(run_store_url: str) -> Iterator[RunStore]:
    with RunStore(run_store_url) as opened:
        yield opened


def flow(
    run_id: str, state: str = "Completed", type_: str = "COMPLETED", *, at: float = T0, **kw: Any
) -> FlowRunRecord:
    fields: dict[str, Any] = {
        "name": f"run-{run_id}",
        "flow_name": "etl",
        "start_time": at,
        "end_time": at + 2.5,
        "run_count": 1,
    }
    fields.update(kw)
    return FlowRunRecord(id=run_id, state_type=type_, state_name=state, updated=fields.pop("updated", at + 3), **fields)


def task(
    run_id: str, flow_run_id: str, *, index: int = 0, cache_hit: bool = False, at: float = T0, **kw: Any
) -> TaskRunRecord:
    fields: dict[str, Any] = {
        "name": f"double-{index}", "task_name": "double", "map_index": index, "state_type": "COMPLETED",
        "state_name": "Cached" if cache_hit else "Completed", "start_time": at, "end_time": at + 0.5, "run_count": 1,
        "cache_hit": cache_hit, "worker": "tcp://127.0.0.1:4000", "created": at, "updated": at + 1,
    }  # fmt: skip
    fields.update(kw)
    return TaskRunRecord(id=run_id, flow_run_id=flow_run_id, **fields)


def count_commits(engine: sa.Engine) -> list[int]:
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda connection: commits.append(1))
    return commits


# -- schema and migrations -------------------------------------------------------------------


def test_an_empty_database_and_one_at_head_open_without_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code = textwrap.dedent(
        f"""
        import sys
        from daskflow.runstore import RunStore
        RunStore({url!r}).close()  # empty: made at head
        made = "alembic" in sys.modules
        RunStore({url!r}).close()  # at head
        print(made, "alembic" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"], f"Alembic imported (making, then opening): {done.stdout}"
    assert RunStore(url).schema_version == HEAD


def test_a_database_made_by_another_opener_while_this_one_waited_opens_without_alembic(tmp_path: Path) -> None:
    """Two openers of a new database (a flow's writer thread and its main thread, two processes):
    both find it empty, one makes it under the lock, and the other, given the lock, finds it at
    head. That one must not go on to the migration scripts (Alembic, Mako and Pygments: 15 MiB of
    a flow's client process)."""
    path = tmp_path / "runs.db"
    sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()  # as the store makes it: readers never wait
    code = textwrap.dedent(
        f"""
        import sys, threading, time
        import sqlalchemy as sa
        from daskflow.runstore import RunStore
        from daskflow.runstore.migrations import _create_at_head, _locked
        from daskflow.runstore.store import _create_engine

        url = "sqlite:///{path}"
        opened = []
        opener = threading.Thread(target=lambda: opened.append(RunStore(url)))

        def waits_for_the_lock() -> bool:
            frame = sys._current_frames().get(opener.ident)
            while frame is not None:
                if frame.f_code.co_name == "_locked":
                    return True
                frame = frame.f_back
            return False

        with _locked(_create_engine(sa.make_url(url), 60.0, 10.0)) as connection:  # the other opener
            _create_at_head(connection)
            opener.start()  # sees no schema (not committed yet), then waits for this lock
            while not waits_for_the_lock():
                time.sleep(0.001)
        opener.join(60)
        print(opened[0].schema_version, "alembic" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [HEAD, "False"], f"head, then whether Alembic was imported: {done.stdout}"


def _schema_of(engine: sa.Engine) -> dict[str, Any]:
    """What a database's tables are, as the inspector reflects them, in an order-free form: columns by
    name (a migration appends the columns it adds), keys, indexes and constraints; SQLite's index SQL too
    (its inspector skips expression indexes)."""
    described: dict[str, Any] = {}
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        for table in inspector.get_table_names():
            described[table] = {
                "columns": sorted(
                    (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                    for c in inspector.get_columns(table)
                ),
                "primary key": inspector.get_pk_constraint(table),
                **{
                    what: sorted(repr(sorted(item.items())) for item in found)
                    for what, found in (
                        ("indexes", inspector.get_indexes(table)),
                        ("unique", inspector.get_unique_constraints(table)),
                        ("foreign keys", inspector.get_foreign_keys(table)),
                        ("checks", inspector.get_check_constraints(table)),
                    )
                },
            }
        if engine.dialect.name == "sqlite":
            described["sqlite indexes"] = sorted(
                map(
                    tuple,
                    connection.exec_driver_sql("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'"),
                )
            )
    return described


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")  # SQLite
def test_an_empty_database_made_at_head_has_the_schema_every_script_builds(run_store_url: str) -> None:
    engine = sa.create_engine(run_store_url)
    try:
        assert upgrade_to_head(engine, display_url="made") == HEAD
        made = _schema_of(engine)
        with engine.begin() as connection:  # empty again, then every script from the first
            metadata.drop_all(connection)
            connection.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
        with engine.connect() as connection:
            assert sa.inspect(connection).get_table_names() == []
        assert run_migrations(engine, display_url="migrated") == HEAD
        migrated = _schema_of(engine)
        with engine.connect() as connection:
            versions = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    finally:
        engine.dispose()
    assert versions == [HEAD]
    differing = {
        name: (made.get(name), migrated.get(name))
        for name in made.keys() | migrated.keys()
        if made.get(name) != migrated.get(name)
    }
    assert not differing, f"made at once vs migrated: {differing}"
    assert len(made) >= len(metadata.tables) + 1, sorted(made)


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")  # SQLite
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_an_empty_database_is_made_at_head_and_matches_the_schema(run_store_url: str) -> None:
    with RunStore(run_store_url) as store:
        assert store.schema_version == head_revision() == HEAD == "0010"
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            diffs = compare_metadata(context, metadata)
            tables = set(sa.inspect(connection).get_table_names())
        store.write([flow("kept")])
    assert not diffs, f"migrations and schema.py disagree: {diffs}"
    assert tables == {
        "flow_runs",
        "task_runs",
        "states",
        "logs",
        "artifacts",
        "deployments",
        "deployment_runs",
        "cancel_requests",
        "blocks",
        "variables",
        "events",
        "paused_runs",
        "trigger_states",
        VERSION_TABLE,
    }
    with RunStore(run_store_url) as reopened:  # a second open finds head and keeps the data
        commits = count_commits(reopened.engine)
        assert RunStore(run_store_url).schema_version == HEAD
        assert [r.id for r in reopened.list_flow_runs()] == ["kept"]
    assert commits == [], "re-opening at head wrote to the database"


def test_stores_opened_at_once_on_an_empty_database_all_migrate_it_once(run_store_url: str) -> None:
    barrier, errors, versions = threading.Barrier(4), [], []

    def open_store() -> None:
        try:
            barrier.wait(timeout=30)
            with RunStore(run_store_url) as opened:
                versions.append(opened.schema_version)
        except Exception as exc:  # reported below with the others
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and versions == [HEAD] * 4, (errors, versions)
    with RunStore(run_store_url) as store, store.engine.connect() as connection:
        rows = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert [tuple(r) for r in rows] == [(HEAD,)]


def test_a_database_at_an_older_version_is_migrated_and_keeps_its_runs(run_store_url: str) -> None:
    from alembic import command

    from daskflow.runstore.migrations import _config

    engine = sa.create_engine(run_store_url)
    with engine.begin() as connection:  # a database as daskflow with schema 0001 left it
        config = _config()
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(sa.text(
            "INSERT INTO task_runs (id, flow_run_id, name, task_name, state_type, state_name, run_count, "
            "cache_hit, slot_wait, created, updated) VALUES ('old', 'f', 'load-0', 'load', 'COMPLETED', "
            "'Completed', 1, false, 0, '2024-05-01 12:00:00.000000', '2024-05-01 12:00:00.000000')"
        ))  # fmt: skip
    engine.dispose()
    with RunStore(run_store_url) as store:
        assert store.schema_version == HEAD
        (old,) = store.task_runs("f")
        store.write([task("new", "f", upstream_ids=("old",))])
        new = next(run for run in store.task_runs("f") if run.id == "new")
    assert (old.id, old.upstream_ids, new.upstream_ids) == ("old", (), ("old",))


def test_a_database_newer_than_this_code_is_refused_naming_both_versions(run_store_url: str) -> None:
    with RunStore(run_store_url) as store, store.engine.begin() as connection:
        connection.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0042'"))
    with pytest.raises(RunStoreVersionError) as info:
        RunStore(run_store_url)
    message = str(info.value)
    assert "0042" in message and HEAD in message and "upgrade daskflow" in message, message
    writer = RunStoreWriter(run_store_url)  # a flow is never failed by it: a warning instead (nothing to wait for)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer.put(flow("lost"))
        assert writer.close(timeout=30)
    assert [str(w.message) for w in caught if w.category is RunStoreWarning][0].count("0042") == 1
    assert writer.dropped == 1


def test_urls_default_to_the_home_and_follow_the_config(daskflow_home: Path, tmp_path: Path) -> None:
    with RunStore() as store:
        assert store.url == f"sqlite:///{daskflow_home / 'runs.db'}" and (daskflow_home / "runs.db").exists()
    configured = f"sqlite:///{tmp_path / 'elsewhere' / 'history.db'}"
    with dask.config.set({"daskflow.runstore.url": configured}), RunStore() as store:
        assert store.url == configured and (tmp_path / "elsewhere" / "history.db").exists()
    with pytest.raises(ConfigurationError, match="in-memory"):
        RunStore("sqlite://")
    assert mask_password("postgresql+psycopg://me:s3cr:et@db:5432/runs") == "postgresql+psycopg://me:***@db:5432/runs"


# -- writing ------------------------------------------------------------------------------------


def test_upserts_are_idempotent_and_the_latest_snapshot_wins(store: RunStore) -> None:
    running = flow("f1", "Running", "RUNNING", end_time=None, updated=T0 + 1, created=T0)
    done = flow("f1", "Completed", "COMPLETED", updated=T0 + 5, traceback=None, parameters={"n": 3})
    store.write([running])
    store.write([done, done])
    store.write([running])  # an old snapshot arriving late changes nothing
    store.write([flow("f2", "Failed", "FAILED", updated=T0 + 9), flow("f2", "Running", "RUNNING", updated=T0 + 2)])
    runs = {r.id: r for r in store.list_flow_runs()}
    assert len(runs) == 2
    assert (runs["f1"].state_name, runs["f2"].state_name) == ("Completed", "Failed")
    detail = store.flow_run("f1")
    assert detail is not None and detail.parameters == {"n": 3}
    assert detail.created == datetime.fromtimestamp(T0, UTC), "created must be the first snapshot's"
    store.write([task("t1", "f1", state_type="RUNNING", state_name="Running", updated=T0 + 2)])
    store.write([task("t1", "f1", run_count=2, updated=T0 + 4), task("t1", "f1", state_name="Running", updated=T0 + 3)])
    (t1,) = store.task_runs("f1")
    assert (t1.state_name, t1.retries) == ("Completed", 1)


def test_the_portable_upsert_behaves_like_on_conflict(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_NATIVE_UPSERT", ())
    store.write([flow("p", "Running", "RUNNING", updated=T0 + 1)])
    store.write([flow("p", "Completed", updated=T0 + 5), flow("q")])
    store.write([flow("p", "Running", "RUNNING", updated=T0 + 2)])
    assert {r.id: r.state_name for r in store.list_flow_runs()} == {"p": "Completed", "q": "Completed"}


def test_write_refuses_what_is_not_a_record(store: RunStore) -> None:
    with pytest.raises(TypeError, match="not a run store record"):
        store.write([{"id": "x"}])  # type: ignore[list-item]


# -- reading ------------------------------------------------------------------------------------


def test_list_flow_runs_filters_and_counts(store: RunStore) -> None:
    store.write([
        flow("a", at=T0, flow_name="etl"),
        flow("b", "Failed", "FAILED", at=T0 + 60, flow_name="etl"),
        flow("c", "Cached", "COMPLETED", at=T0 + 120, flow_name="report"),
        flow("d", "Running", "RUNNING", at=T0 + 180, flow_name="report", end_time=None, parent_flow_run_id="c"),
        flow("e", "Pending", "PENDING", start_time=None, end_time=None, created=T0 + 240, updated=T0 + 240),
        *(task(f"a{i}", "a", index=i, cache_hit=i < 3) for i in range(5)),
        task("b0", "b", state_type="FAILED", state_name="Failed"),
    ])  # fmt: skip
    runs = store.list_flow_runs()
    assert [r.id for r in runs] == ["e", "d", "c", "b", "a"], "newest first, by start (or creation)"
    a = runs[-1]
    assert (a.flow_name, a.task_runs, a.cache_hits, a.duration) == ("etl", 5, 3, 2.5)
    assert runs[1].duration is None and runs[0].start_time is None
    ids = lambda **kw: [r.id for r in store.list_flow_runs(**kw)]  # noqa: E731
    assert ids(flow_name="report") == ["d", "c"]
    assert ids(state="completed") == ["c", "a"], "a state type includes its names (Cached)"
    assert ids(state="Cached") == ["c"] and ids(state="FAILED") == ["b"]
    assert ids(state=["failed", "running"]) == ["d", "b"]
    assert ids(since=T0 + 60, until=T0 + 180) == ["c", "b"]
    assert ids(since=datetime.fromtimestamp(T0 + 200, UTC)) == ["e"]
    assert ids(until=datetime.fromtimestamp(T0, UTC) + timedelta(seconds=1)) == ["a"]
    assert ids(parent_flow_run_id="c") == ["d"]
    assert ids(limit=2) == ["e", "d"]
    assert ids(flow_name="etl", state="completed", since=T0 - 1) == ["a"]
    assert ids(flow_name="nope") == []


def test_flow_run_shows_task_runs_states_and_the_failure(store: RunStore) -> None:
    run_id = str(uuid.uuid4())
    error = 'Traceback (most recent call last):\n  File "etl.py", line 3\nValueError: bad row 7'
    store.write([
        flow(run_id, "Failed", "FAILED", state_message="1/3 task runs failed", parameters={"day": datetime(2024, 5, 1)}),
        StateRecord(run_id=run_id, run_kind="flow", type="PENDING", name="Pending", timestamp=T0 - 1),
        StateRecord(run_id=run_id, run_kind="flow", type="RUNNING", name="Running", timestamp=T0),
        StateRecord(run_id=run_id, run_kind="flow", type="FAILED", name="Failed", message="1/3", timestamp=T0 + 2.5),
        task("t2", run_id, index=2, at=T0 + 0.2, state_type="FAILED", state_name="Failed", run_count=3, traceback=error),
        task("t0", run_id, index=0, cache_hit=True),
        task("t1", run_id, index=1, at=T0 + 0.1, slot_wait=0.25, worker="tcp://127.0.0.1:4001", upstream_ids=("t0",)),
    ])  # fmt: skip
    detail = store.flow_run(run_id[:8])  # a unique prefix is enough
    assert detail is not None and detail.id == run_id
    assert (detail.state_name, detail.state_message, detail.duration) == ("Failed", "1/3 task runs failed", 2.5)
    assert detail.parameters == {"day": "2024-05-01T00:00:00"}
    assert [s.name for s in detail.states] == ["Pending", "Running", "Failed"]
    assert [t.id for t in detail.task_runs] == ["t0", "t1", "t2"], "in creation order"
    t0, t1, t2 = detail.task_runs
    assert (t0.cache_hit, t1.cache_hit, detail.cache_hits) == (True, False, 1)
    assert (t2.retries, t2.duration, t1.worker, t1.slot_wait) == (2, 0.5, "tcp://127.0.0.1:4001", 0.25)
    assert detail.failure_traceback == error and detail.traceback is None
    assert (t0.upstream_ids, t1.upstream_ids) == ((), ("t0",)), "the edges of the task graph"
    assert [s.name for s in store.states(run_id)] == ["Pending", "Running", "Failed"]
    assert store.flow_run("0000-no-such-run") is None
    store.write([flow(run_id[:8] + "-twin")])
    with pytest.raises(AmbiguousRunIdError, match="give more of the id"):
        store.flow_run(run_id[:8])


def test_logs_come_back_in_order(store: RunStore) -> None:
    logger = logging.getLogger("daskflow.task_runs")
    try:
        raise ValueError("row 7")
    except ValueError:
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed %s", ("t1",), sys.exc_info())
    record.flow_run_id, record.task_run_id = "f", "t1"
    entries = [
        LogEntry(flow_run_id="f", logger="daskflow.flow_runs", message=f"line {i}", created=T0 + i // 3)
        for i in range(9)
    ]
    store.write([*entries[:5], LogEntry(flow_run_id="other", message="elsewhere")])
    store.write([*entries[5:], log_entry_from_record(record)])
    logs = store.logs("f")
    assert [x.message for x in logs] == [f"line {i}" for i in range(9)] + ["failed t1"]
    last = logs[-1]
    assert (last.task_run_id, last.level_name, last.created) == (
        "t1",
        "ERROR",
        datetime.fromtimestamp(record.created, UTC),
    )
    assert last.exception is not None and "ValueError: row 7" in last.exception
    assert [x.message for x in store.logs("f", task_run_id="t1")] == ["failed t1"]
    assert [x.message for x in store.logs("f", min_level=logging.WARNING)] == ["failed t1"]
    assert len(store.logs("f", limit=4)) == 4


def test_artifacts_by_key_and_by_run(store: RunStore) -> None:
    store.write([
        ArtifactRecord(type="markdown", data="# v1", key="report", flow_run_id="f1", created=T0),
        ArtifactRecord(type="markdown", data="# v2", key="report", flow_run_id="f2", created=T0 + 10, description="daily"),
        ArtifactRecord(type="table", data=json.dumps([{"a": 1}]), flow_run_id="f2", task_run_id="t9", created=T0 + 5),
        ArtifactRecord(type="link", data="https://example.org", key="docs", flow_run_id="f1", created=T0 + 1, id="ab_1%"),
    ])  # fmt: skip
    assert [a.data for a in store.artifacts()] == ["# v2", '[{"a": 1}]', "https://example.org", "# v1"], "newest first"
    assert [(a.data, a.description) for a in store.artifacts(key="report")] == [("# v2", "daily"), ("# v1", None)]
    assert [a.type for a in store.artifacts(flow_run_id="f1")] == ["link", "markdown"]
    assert [a.type for a in store.artifacts(task_run_id="t9")] == ["table"]
    assert len(store.artifacts(limit=1)) == 1
    assert [a.key for a in store.artifacts(id_prefix="ab_1")] == ["docs"]
    assert store.artifacts(id_prefix="ab%") == [], "a prefix is matched as text, not as a LIKE pattern"


# -- the writer ---------------------------------------------------------------------------------


def _batch_of_runs(n: int, flow_run_id: str) -> list[Any]:
    """What a map of n items sends: per item a Running and a Completed snapshot plus two states."""
    records: list[Any] = []
    for i in range(n):
        tid = f"{flow_run_id}-{i}"
        records += [
            task(tid, flow_run_id, index=i, state_type="RUNNING", state_name="Running", updated=T0 + i),
            StateRecord(run_id=tid, run_kind="task", type="RUNNING", name="Running", timestamp=T0 + i),
            task(tid, flow_run_id, index=i, updated=T0 + i + 0.5),
            StateRecord(run_id=tid, run_kind="task", type="COMPLETED", name="Completed", timestamp=T0 + i + 0.5),
        ]
    return records


def test_puts_are_cheap_and_become_few_transactions(store: RunStore) -> None:
    commits = count_commits(store.engine)
    writer = RunStoreWriter(store)
    records = [flow("big")] + _batch_of_runs(5_000, "big")
    start = time.perf_counter()
    for record in records:
        writer.put(record)
    put_us = (time.perf_counter() - start) / len(records) * 1e6
    assert writer.flush(timeout=60)
    elapsed = time.perf_counter() - start
    writer.close()
    report = (
        f"{len(records)} puts at {put_us:.2f} us each; written in {len(commits)} transactions, "
        f"{len(records) / elapsed:,.0f} records/s end to end ({store.engine.dialect.name})"
    )
    print(report)
    assert writer.written == len(records) and writer.dropped == 0, report
    assert len(commits) <= len(records) // 500, report
    assert put_us < 25, report  # about 1 us on an idle core; generous for a shared machine
    assert store.list_flow_runs()[0].task_runs == 5_000
    assert {t.state_name for t in store.task_runs("big")} == {"Completed"}


def test_flush_waits_for_everything_put_before_it(store: RunStore) -> None:
    writer = RunStoreWriter(store, interval=30)  # the timer never fires: only flush writes
    assert writer.flush(timeout=10), "an empty flush returns at once"
    for i in range(3):
        writer.put(flow(f"r{i}"))
        assert writer.flush(timeout=10)
        assert len(store.list_flow_runs()) == i + 1, "flush returned before its records were written"
    writer.put(flow("last"))
    assert writer.close(timeout=10)
    assert len(store.list_flow_runs()) == 4 and writer.transactions == 4
    writer.put(flow("after-close"))  # ignored and counted, never raised
    assert writer.dropped == 1 and len(store.list_flow_runs()) == 4


def test_convert_builds_records_on_the_writers_thread(store: RunStore) -> None:
    seen: list[str] = []

    def convert(items: list[Any]) -> list[Any]:
        seen.append(threading.current_thread().name)
        if any(item == "poison" for item in items):
            raise ValueError("cannot convert 'poison'")
        latest = {run_id: state for run_id, state in items}  # one snapshot per run per batch
        return [flow(run_id, state, state.upper()) for run_id, state in latest.items()]

    writer = RunStoreWriter(store, convert=convert)
    for state in ("Pending", "Running", "Completed"):
        writer.put(("c1", state))
    assert writer.flush(timeout=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer.put("poison")
        assert writer.close(timeout=10)
    assert seen and set(seen) == {"daskflow-runstore-writer"}
    assert [(r.id, r.state_name) for r in store.list_flow_runs()] == [("c1", "Completed")]
    assert writer.dropped == 1 and "cannot convert 'poison'" in str(caught[0].message)


class _BlockingStore:
    """A store whose writes wait for a gate: the writer's thread stays busy while puts go on."""

    def __init__(self) -> None:
        self.url = "sqlite:///blocked.db"
        self.entered, self.gate = threading.Event(), threading.Event()
        self.written: list[Any] = []

    def write(self, records: list[Any]) -> int:
        self.entered.set()
        assert self.gate.wait(30)
        self.written += records
        return len(records)


def test_the_queue_is_bounded_while_the_database_is_slow() -> None:
    slow = _BlockingStore()
    writer = RunStoreWriter(slow, batch_size=1, max_queue=100)  # type: ignore[arg-type]
    writer.put(flow("first"))
    assert slow.entered.wait(10), "the writer never started writing"
    for i in range(150):
        writer.put(flow(f"r{i}"))
    assert writer.dropped == 50, f"dropped {writer.dropped}, expected 50 past max_queue=100"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slow.gate.set()
        assert writer.close(timeout=30)
    assert len(slow.written) == 101
    messages = [str(w.message) for w in caught if w.category is RunStoreWarning]
    assert len(messages) == 1 and "queue was full" in messages[0] and "50 records" in messages[0], messages


def test_a_locked_sqlite_file_is_spooled_with_one_warning_and_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "runs.db"
    store = RunStore(f"sqlite:///{path}", busy_timeout=0.2)
    writer = RunStoreWriter(store, interval=0.05, spool_folder=tmp_path / "spool")
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, "daskflow.runstore"):
            warnings.simplefilter("always")
            for batch in range(3):  # three batches meet the lock: one outage, one log line, all spooled
                writer.put(flow(f"spooled-{batch}"))
                writer.put(StateRecord(run_id=f"spooled-{batch}", run_kind="flow", type="COMPLETED", name="Completed"))
                assert writer.flush(timeout=30)
            assert writer.spooled == 6 and len(writer.backlog) == 1 and writer.backlog[0].exists()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert not [w for w in caught if w.category is RunStoreWarning], "nothing was lost: no RunStoreWarning"
    outage = [r.message for r in caplog.records if r.name == "daskflow.runstore"]
    assert len(outage) == 1 and "does not answer" in outage[0] and "database is locked" in outage[0], outage
    assert str(path) in outage[0]
    spool_file = writer.backlog[0]
    writer.put(flow("kept"))
    assert writer.flush(timeout=30)  # a flush tries the database at once: the spool goes first
    assert sorted(r.id for r in store.list_flow_runs()) == ["kept", "spooled-0", "spooled-1", "spooled-2"]
    assert [s.name for s in store.states("spooled-1")] == ["Completed"]
    # "kept" came while records waited in the spool: it queued behind them, so order holds.
    assert (writer.spooled, writer.replayed, writer.dropped) == (7, 7, 0)
    assert not spool_file.exists() and writer.backlog == []
    writer.close()
    store.close()


def test_an_unreachable_postgres_is_spooled_never_an_error(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"postgresql+psycopg://daskflow:hunter2@127.0.0.1:{s.getsockname()[1]}/runs"
        with pytest.raises(RunStoreUnavailableError, match=r"daskflow:\*\*\*@127\.0\.0\.1"):
            RunStore(url, connect_timeout=2)
        writer = RunStoreWriter(url, spool_folder=tmp_path / "spool")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            writer.put(flow("kept"))
            writer.put(task("kept-task", "kept"))
            assert writer.close(timeout=30)
    assert not [w for w in caught if w.category is RunStoreWarning]
    assert writer.dropped == 0 and writer.written == 0 and writer.spooled == 2
    (left,) = (tmp_path / "spool").glob("*.spool")  # for the next writer of this store
    text = left.read_text()
    assert "hunter2" not in text and "daskflow:***@127.0.0.1" in text and '"id":"kept-task"' in text


_CHILD = textwrap.dedent(
    """
    import json, sys
    from daskflow.runstore import FlowRunRecord, StateRecord, TaskRunRecord, RunStoreWriter
    url, name = sys.argv[1], sys.argv[2]
    sys.stdin.readline()  # wait for the parent's go, so all children open the fresh file at once
    writer = RunStoreWriter(url, batch_size=50)
    for i in range(200):
        run_id = f"{name}-{i}"
        writer.put(FlowRunRecord(id=run_id, name=run_id, flow_name=name, state_type="COMPLETED", state_name="Completed"))
        writer.put(TaskRunRecord(id=run_id + "-t", flow_run_id=run_id, name="t", task_name="t",
                                 state_type="COMPLETED", state_name="Completed"))
        writer.put(StateRecord(run_id=run_id, run_kind="flow", type="COMPLETED", name="Completed"))
    ok = writer.close(timeout=60)
    print(json.dumps({"ok": ok, "written": writer.written, "dropped": writer.dropped}))
    """
)


def test_many_processes_share_one_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    children = [
        subprocess.Popen(
            [sys.executable, "-W", "error::UserWarning", "-c", _CHILD, url, f"p{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n in range(4)
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert "RunStoreWarning" not in err, err
        reports.append(json.loads(out))
    assert all(r == {"ok": True, "written": 600, "dropped": 0} for r in reports), reports
    with RunStore(url) as store:
        runs = store.list_flow_runs(limit=None)
        assert len(runs) == 800 and all(r.task_runs == 1 for r in runs)
        assert {r.flow_name for r in runs} == {"p0", "p1", "p2", "p3"}


def test_importing_the_runstore_does_not_import_sqlalchemy() -> None:
    code = "import sys, daskflow.runstore; print('sqlalchemy' in sys.modules, 'alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out


def test_the_rows_the_writer_builds_name_every_column_of_their_table() -> None:
    """RunStore.write hands the driver tuples in the order of .rows' column lists: each list is its
    table's columns (all but the autoincremented id), so a column added by a migration is not missed."""
    from daskflow.runstore import rows, schema

    written = {
        schema.flow_runs: rows.FLOW_RUN_COLUMNS,
        schema.task_runs: rows.TASK_RUN_COLUMNS,
        schema.states: rows.STATE_COLUMNS,
        schema.logs: rows.LOG_COLUMNS,
        schema.artifacts: rows.ARTIFACT_COLUMNS,
    }
    for table, columns in written.items():
        assert sorted(columns) == sorted(c.name for c in table.c if c.autoincrement is not True), table.name
        assert store_module._COLUMNS[table.name] == columns


def test_a_batch_writes_each_distinct_time_once_and_reads_back_the_same(store: RunStore) -> None:
    """A run's end is its final state's time and its creation its first snapshot's: the rows share
    one stored form of each, and every time reads back as written."""
    end = T0 + 1.000123
    task_run = task("t-times", "f-times", start_time=T0 + 0.5, end_time=end, updated=end, created=None)
    state = StateRecord(run_id="t-times", run_kind="task", type="COMPLETED", name="Completed", timestamp=end)
    store.write([flow("f-times"), task_run, state])
    [info] = store.task_runs("f-times")
    [state_info] = store.states("t-times")
    assert info.end_time == state_info.timestamp == datetime.fromtimestamp(end, UTC)
    assert info.start_time == datetime.fromtimestamp(T0 + 0.5, UTC) and info.created == info.end_time
