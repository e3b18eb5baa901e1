"""The run store: every flow run and task run, their states, logs and artifacts, in one SQL database.

A :class:`RunStore` is a SQLAlchemy engine over the run store's tables (see
:mod:`.schema`), opened at a URL: by default an SQLite file ``runs.db`` in the
daskflow home, or any SQLAlchemy URL through ``daskflow.runstore.url``
(PostgreSQL is tested). Opening it migrates an older database to this code's
schema under a lock (:mod:`.migrations`).

Writing takes plain records (:mod:`.records`) and writes any mix of them in
one transaction with :meth:`RunStore.write`: run snapshots are upserted, the
latest ``updated`` time winning, so writing is idempotent and order-proof;
states, logs and artifacts are appended. The engine does not call it
directly: :class:`~daskflow.runstore.writer.RunStoreWriter` batches records
off the hot path. Reading returns frozen dataclasses (:mod:`.history`).

SQLite is set up for many writers in many processes: WAL journal (readers
never wait for the writer), a busy timeout (a writer waits its turn instead of
failing), and write transactions that take the file's write lock at ``BEGIN``
(``BEGIN IMMEDIATE``), so two transactions never deadlock upgrading a read
lock, which SQLite would fail at once without waiting.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from daskflow.exceptions import ConfigurationError
from daskflow.runstore import schema
from daskflow.runstore.errors import AmbiguousRunIdError, RunStoreUnavailableError
from daskflow.runstore.history import ArtifactInfo, FlowRunDetail, FlowRunSummary, LogInfo, StateInfo, TaskRunInfo
from daskflow.runstore.migrations import upgrade_to_head
from daskflow.runstore.records import (
    ArtifactRecord,
    FlowRunRecord,
    LogEntry,
    Record,
    StateRecord,
    TaskRunRecord,
    Timestamp,
)
from daskflow.runstore.rows import (
    ARTIFACT_COLUMNS,
    FLOW_RUN_COLUMNS,
    LOG_COLUMNS,
    STATE_COLUMNS,
    TASK_RUN_COLUMNS,
    artifact_row,
    decode_tags,
    flow_run_row,
    log_row,
    remembering,
    state_row,
    task_run_row,
)
from daskflow.runstore.urls import mask_password, resolve_url

__all__ = ["DEFAULT_BUSY_TIMEOUT", "RunStore"]

DEFAULT_BUSY_TIMEOUT = 5.0  # seconds an SQLite writer waits for another one before giving up
_IN_CHUNK = 500  # ids per IN (...) list: far below every backend's limit on bound parameters
# Dialects written through RunStore._statement's INSERT ... ON CONFLICT DO UPDATE; others go
# through SQLAlchemy Core and read, then insert or update.
_NATIVE_UPSERT = ("sqlite", "postgresql")
_UPSERT = "upsert"  # how RunStore.write keeps run snapshots: by id, the latest `updated` winning
# Each written table's columns, in the order of the rows .rows builds (a test checks them against .schema).
_COLUMNS = {
    "flow_runs": FLOW_RUN_COLUMNS,
    "task_runs": TASK_RUN_COLUMNS,
    "states": STATE_COLUMNS,
    "logs": LOG_COLUMNS,
    "artifacts": ARTIFACT_COLUMNS,
}


def _to_datetime(value: Timestamp) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(value, UTC)


def _epoch(value: Timestamp) -> float:
    return value.timestamp() if isinstance(value, datetime) else value


def _decode_parameters(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"<unreadable>": text}
    return value if isinstance(value, dict) else {"<value>": value}


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # pysqlite's own BEGIN handling is off: _sqlite_on_begin emits BEGIN so DDL is
    # transactional and writes can say IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: sa.Connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _create_engine(url: sa.URL, busy_timeout: float, connect_timeout: float) -> sa.Engine:
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database
        if not database or database == ":memory:":
            raise ConfigurationError(
                f"The run store needs an SQLite file, not {url.render_as_string()!r}: an in-memory database "
                "is private to one connection. Fix: give a path, e.g. 'sqlite:////tmp/runs.db', or leave "
                "daskflow.runstore.url unset for <daskflow home>/runs.db."
            )
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = max(2, round(connect_timeout))
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)


class RunStore:
    """The run history at ``url``; see the module docstring.

    ``url`` is any SQLAlchemy URL; None means ``daskflow.runstore.url``, else
    ``sqlite:///<daskflow home>/runs.db``. ``busy_timeout`` is how long an SQLite
    write waits for another writer; ``connect_timeout`` how long a server
    connection may take. Opening migrates the database (raising
    :class:`~daskflow.runstore.errors.RunStoreVersionError` for a newer one, and
    :class:`~daskflow.runstore.errors.RunStoreUnavailableError` when it cannot be reached).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = resolve_url(url)
        self.display_url = mask_password(self.url)
        try:
            parsed = sa.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise ConfigurationError(
                f"daskflow.runstore.url {self.display_url!r} is not a database URL: {exc}"
            ) from None
        self.engine = _create_engine(parsed, busy_timeout, connect_timeout)
        self._write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._statements: dict[str, str] = {}  # table name -> its INSERT for the driver (_statement)
        try:
            with self.database_errors():
                self.schema_version = self._upgrade(busy_timeout)
        except BaseException:
            self.engine.dispose()
            raise

    def _upgrade(self, busy_timeout: float) -> str:
        """Migrate to head, retrying SQLite's "database is locked" that skips the busy handler.

        SQLite answers BUSY at once, without waiting, in a few cases (a journal-mode
        switch on a file that others just opened, a snapshot that another writer
        moved on): processes opening a new file together meet them. They are retried
        until the busy timeout; other errors, and other databases, are not.
        """
        deadline = time.monotonic() + busy_timeout
        pause = 0.01
        while True:
            try:
                return upgrade_to_head(self.engine, display_url=self.display_url)
            except sa.exc.OperationalError as exc:
                locked = self.engine.dialect.name == "sqlite" and "locked" in str(exc.orig or exc)
                if not locked or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # a backoff, not synchronisation: SQLite offers nothing to wait on here
            pause = min(pause * 2, 0.2)

    def __repr__(self) -> str:
        return f"RunStore({self.display_url!r})"

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store's connections."""
        self.engine.dispose()

    @contextmanager
    def database_errors(self) -> Iterator[None]:
        """Around a use of the database: a locked or unreachable one becomes a RunStoreUnavailableError."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0]
            raise RunStoreUnavailableError(
                f"The run store at {self.display_url} could not be used: {reason}. Fixes:\n"
                "  1. check that the database is running and reachable from here, or that no other "
                "program holds the SQLite file locked, or\n"
                "  2. point daskflow.runstore.url at another database."
            ) from exc

    # -- writing ------------------------------------------------------------------------

    def write(self, records: Iterable[Record]) -> int:
        """Write ``records`` (any mix of kinds) in one transaction; return how many were given.

        Run snapshots are upserted per id, the one with the latest ``updated``
        winning (within the batch and against the database); the others are
        appended, once per id: a state or log record whose ``uid`` (an artifact
        whose ``id``) the store holds already is left out. Writing a batch twice
        therefore changes nothing, which is what makes the writer's retries and
        spool replays safe.
        """
        flows: dict[str, FlowRunRecord] = {}
        tasks: dict[str, TaskRunRecord] = {}
        first_seen: dict[str, Timestamp] = {}
        states: list[StateRecord] = []
        logs: list[LogEntry] = []
        artifacts: list[ArtifactRecord] = []
        count = 0
        for record in records:
            count += 1
            if isinstance(record, TaskRunRecord):
                _keep_latest(tasks, first_seen, record)
            elif isinstance(record, StateRecord):
                states.append(record)
            elif isinstance(record, LogEntry):
                logs.append(record)
            elif isinstance(record, FlowRunRecord):
                _keep_latest(flows, first_seen, record)
            elif isinstance(record, ArtifactRecord):
                artifacts.append(record)
            else:
                raise TypeError(f"RunStore.write got a {type(record).__name__}, not a run store record: {record!r}")
        fast = self.engine.dialect.name in _NATIVE_UPSERT
        # The fast path hands rows to the driver as they are stored: SQLite's times as text.
        ts = remembering(schema.sqlite_text if fast and self.engine.dialect.name == "sqlite" else _to_datetime)
        # What makes a row the same row: a run snapshot's id (the latest `updated` wins); an
        # appended record's own id, so that a batch written twice (retried, replayed) is kept once.
        tables = (
            (schema.flow_runs, [flow_run_row(r, first_seen[r.id], ts) for r in flows.values()], _UPSERT),
            (schema.task_runs, [task_run_row(r, first_seen[r.id], ts) for r in tasks.values()], _UPSERT),
            (schema.states, [state_row(r, ts) for r in states], "uid"),
            (schema.logs, [log_row(r, ts) for r in logs], "uid"),
            (schema.artifacts, [artifact_row(r, ts) for r in artifacts], "id"),
        )
        with self.database_errors(), self._write_engine.begin() as connection:
            for table, values, key in tables:
                if not values:
                    continue
                if fast:
                    connection.exec_driver_sql(self._statement(table, key), values)
                    continue
                columns = _COLUMNS[table.name]
                as_dicts = [dict(zip(columns, row, strict=True)) for row in values]
                if key == _UPSERT:
                    _upsert_portably(connection, table, as_dicts)
                else:
                    _insert_new_portably(connection, table, key, as_dicts)
        return count

    def _statement(self, table: sa.Table, key: str) -> str:
        """``INSERT`` (or upsert) SQL for the driver, taking the rows of :mod:`.rows` as they are.

        SQLAlchemy's executemany spends more time per row preparing parameters than
        SQLite spends storing them, all of it holding the GIL that the flow's own
        threads need, and the writer writes several rows per task run; so the SQL is
        built once here and the driver gets the tuples :mod:`.rows` builds. SQLite and
        PostgreSQL share the ``ON CONFLICT ... DO UPDATE ... excluded`` and ``ON
        CONFLICT ... DO NOTHING`` syntax. ``key`` is :data:`_UPSERT` for run
        snapshots, else the column whose value, met again, makes the row a duplicate
        to leave out.
        """
        cached = self._statements.get(table.name)
        if cached is not None:
            return cached
        dialect = self.engine.dialect
        quote = dialect.identifier_preparer.quote
        columns = _COLUMNS[table.name]
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        name = quote(table.name)
        sql = f"INSERT INTO {name} ({', '.join(map(quote, columns))}) VALUES ({', '.join([mark] * len(columns))})"
        if key == _UPSERT:
            updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in ("id", "created"))
            sql += f" ON CONFLICT (id) DO UPDATE SET {updates} WHERE {name}.updated <= excluded.updated"
        else:
            sql += f" ON CONFLICT ({quote(key)}) DO NOTHING"
        self._statements[table.name] = sql
        return sql

    # -- reading --------------------------------------------------------------------------

    def list_flow_runs(
        self,
        *,
        flow_name: str | None = None,
        state: str | Sequence[str] | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        parent_flow_run_id: str | None = None,
        limit: int | None = 50,
        tag: str | Sequence[str] | None = None,
    ) -> list[FlowRunSummary]:
        """Flow runs, newest first, with their task run and cache hit counts (``runs ls``).

        ``state`` matches a state type (``"completed"`` includes cached runs) or a
        state name (``"Cached"``), case-insensitively; several may be given.
        ``since``/``until`` bound when a run started (or was created, if it never
        started): ``since <= start < until``. ``tag`` keeps the runs that have
        that tag (every one of them, when several are given).
        """
        fr = schema.flow_runs
        query = sa.select(
            fr.c.id, fr.c.name, fr.c.flow_name, fr.c.state_type, fr.c.state_name,
            fr.c.start_time, fr.c.end_time, fr.c.created, fr.c.parent_flow_run_id,
        ).order_by(schema.started.desc(), fr.c.id.desc())  # fmt: skip
        if flow_name is not None:
            query = query.where(fr.c.flow_name == flow_name)
        if state is not None:
            wanted = [state] if isinstance(state, str) else list(state)
            query = query.where(
                sa.or_(
                    fr.c.state_type.in_([s.upper() for s in wanted]),
                    sa.func.lower(fr.c.state_name).in_([s.lower() for s in wanted]),
                )
            )
        if since is not None:
            query = query.where(schema.started >= _to_datetime(since))
        if until is not None:
            query = query.where(schema.started < _to_datetime(until))
        if parent_flow_run_id is not None:
            query = query.where(fr.c.parent_flow_run_id == parent_flow_run_id)
        for one in [tag] if isinstance(tag, str) else list(tag or ()):
            # The column is a sorted JSON list of strings: the tag's JSON form appears in it as is.
            pattern = json.dumps(one).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(fr.c.tags.like(f"%{pattern}%", escape="\\"))
        if limit is not None:
            query = query.limit(limit)
        with self.database_errors(), self.engine.connect() as connection:
            rows = connection.execute(query).all()
            counts = self._task_counts(connection, [row.id for row in rows])
        summaries = []
        for row in rows:
            task_runs, cache_hits = counts.get(row.id, (0, 0))
            summaries.append(FlowRunSummary(**row._asdict(), task_runs=task_runs, cache_hits=cache_hits))
        return summaries

    def _task_counts(self, connection: sa.Connection, ids: list[str]) -> dict[str, tuple[int, int]]:
        tr = schema.task_runs
        counts: dict[str, tuple[int, int]] = {}
        hits = sa.func.sum(sa.case((tr.c.cache_hit, 1), else_=0))
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            query = sa.select(tr.c.flow_run_id, sa.func.count(), hits).where(tr.c.flow_run_id.in_(chunk))
            query = query.group_by(tr.c.flow_run_id)
            for run_id, n, cached in connection.execute(query):
                counts[run_id] = (int(n), int(cached or 0))
        return counts

    def resolve_run_id(self, id_or_prefix: str) -> str | None:
        """The flow run id that is ``id_or_prefix`` or uniquely starts with it; None if no run matches."""
        fr = schema.flow_runs
        with self.database_errors(), self.engine.connect() as connection:
            if connection.execute(sa.select(fr.c.id).where(fr.c.id == id_or_prefix)).first() is not None:
                return id_or_prefix
            query = sa.select(fr.c.id).where(fr.c.id.startswith(id_or_prefix, autoescape=True)).limit(6)
            matches = list(connection.execute(query).scalars())
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise AmbiguousRunIdError(
                f"The run id prefix {id_or_prefix!r} matches several flow runs ({shown}). Fix: give more of the id."
            )
        return matches[0] if matches else None

    def flow_run(self, id_or_prefix: str) -> FlowRunDetail | None:
        """One flow run with its states and task runs (``runs show``); None if there is none."""
        run_id = self.resolve_run_id(id_or_prefix)
        if run_id is None:
            return None
        fr = schema.flow_runs
        with self.database_errors(), self.engine.connect() as connection:
            row = connection.execute(sa.select(fr).where(fr.c.id == run_id)).first()
            if row is None:
                return None
            states = self._states(connection, run_id)
            task_runs = self._task_runs(connection, run_id)
        values = row._asdict()
        values["parameters"] = _decode_parameters(values["parameters"])
        values["tags"] = decode_tags(values["tags"])
        return FlowRunDetail(**values, states=tuple(states), task_runs=tuple(task_runs))

    def task_runs(self, flow_run_id: str) -> list[TaskRunInfo]:
        """The task runs of a flow run, in the order they were created."""
        with self.database_errors(), self.engine.connect() as connection:
            return self._task_runs(connection, flow_run_id)

    def _task_runs(self, connection: sa.Connection, flow_run_id: str) -> list[TaskRunInfo]:
        tr = schema.task_runs
        query = sa.select(*(c for c in tr.c if c.name != "updated")).where(tr.c.flow_run_id == flow_run_id)
        query = query.order_by(tr.c.created, tr.c.map_index, tr.c.id)
        runs = []
        for row in connection.execute(query):
            values = row._asdict()
            values["upstream_ids"] = tuple(json.loads(values["upstream_ids"])) if values["upstream_ids"] else ()
            values["tags"] = decode_tags(values["tags"])
            runs.append(TaskRunInfo(**values))
        return runs

    def states(self, run_id: str) -> list[StateInfo]:
        """Every state a flow run or task run entered, oldest first."""
        with self.database_errors(), self.engine.connect() as connection:
            return self._states(connection, run_id)

    def _states(self, connection: sa.Connection, run_id: str) -> list[StateInfo]:
        st = schema.states
        query = sa.select(st.c.run_id, st.c.run_kind, st.c.type, st.c.name, st.c.message, st.c.timestamp)
        query = query.where(st.c.run_id == run_id).order_by(st.c.timestamp, st.c.id)
        return [StateInfo(**row._asdict()) for row in connection.execute(query)]

    def logs(
        self,
        flow_run_id: str,
        *,
        task_run_id: str | None = None,
        min_level: int | None = None,
        limit: int | None = None,
    ) -> list[LogInfo]:
        """A flow run's log records (its task runs' included), oldest first (``runs logs``)."""
        lg = schema.logs
        query = (
            sa.select(*(c for c in lg.c if c.name != "uid"))
            .where(lg.c.flow_run_id == flow_run_id)
            .order_by(lg.c.created, lg.c.id)
        )
        if task_run_id is not None:
            query = query.where(lg.c.task_run_id == task_run_id)
        if min_level is not None:
            query = query.where(lg.c.level >= min_level)
        if limit is not None:
            query = query.limit(limit)
        with self.database_errors(), self.engine.connect() as connection:
            return [LogInfo(**row._asdict()) for row in connection.execute(query)]

    def artifacts(
        self,
        *,
        key: str | None = None,
        flow_run_id: str | None = None,
        task_run_id: str | None = None,
        id_prefix: str | None = None,
        limit: int | None = None,
    ) -> list[ArtifactInfo]:
        """Artifacts, newest first, optionally of one key, one run or ids starting with ``id_prefix``."""
        ar = schema.artifacts
        query = sa.select(ar).order_by(ar.c.created.desc(), ar.c.id)
        if key is not None:
            query = query.where(ar.c.key == key)
        if id_prefix is not None:  # the primary key's index serves a prefix match
            query = query.where(ar.c.id.startswith(id_prefix, autoescape=True))
        if flow_run_id is not None:
            query = query.where(ar.c.flow_run_id == flow_run_id)
        if task_run_id is not None:
            query = query.where(ar.c.task_run_id == task_run_id)
        if limit is not None:
            query = query.limit(limit)
        with self.database_errors(), self.engine.connect() as connection:
            return [ArtifactInfo(**row._asdict()) for row in connection.execute(query)]


def _keep_latest(
    latest: dict[str, Any], first_seen: dict[str, Timestamp], record: FlowRunRecord | TaskRunRecord
) -> None:
    current = latest.get(record.id)
    if current is None:
        latest[record.id] = record
        first_seen[record.id] = record.updated
    elif _epoch(record.updated) >= _epoch(current.updated):
        latest[record.id] = record


def _upsert_portably(connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """An upsert for databases without ``INSERT ... ON CONFLICT``: read, then insert or update."""
    existing: dict[str, datetime] = {}
    ids = [row["id"] for row in rows]
    for start in range(0, len(ids), _IN_CHUNK):
        query = sa.select(table.c.id, table.c.updated).where(table.c.id.in_(ids[start : start + _IN_CHUNK]))
        existing.update({run_id: updated for run_id, updated in connection.execute(query)})
    new = [row for row in rows if row["id"] not in existing]
    newer = [
        {**row, "b_id": row["id"]} for row in rows if row["id"] in existing and row["updated"] >= existing[row["id"]]
    ]
    if new:
        connection.execute(table.insert(), new)
    if newer:
        columns: dict[str, Any] = {c.name: sa.bindparam(c.name) for c in table.c if c.name not in ("id", "created")}
        connection.execute(table.update().where(table.c.id == sa.bindparam("b_id")).values(columns), newer)


def _insert_new_portably(connection: sa.Connection, table: sa.Table, key: str, rows: list[dict[str, Any]]) -> None:
    """Insert the rows whose ``key`` the table does not hold yet (``ON CONFLICT DO NOTHING``, portably)."""
    column = table.c[key]
    unique = list({row[key]: row for row in rows}.values())
    keys = [row[key] for row in unique]
    existing: set[Any] = set()
    for start in range(0, len(keys), _IN_CHUNK):
        query = sa.select(column).where(column.in_(keys[start : start + _IN_CHUNK]))
        existing.update(connection.execute(query).scalars())
    new = [row for row in unique if row[key] not in existing]
    if new:
        connection.execute(table.insert(), new)
