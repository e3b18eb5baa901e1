"""Deployments in the run store: their rows, and the claims that make each scheduled time run once.

Two tables (schema 0003). ``deployments`` holds one row per deployment name: the
flow by import path, its schedule, parameters, tags, work pool and catchup
setting as JSON text, and a paused flag. :func:`save_deployment` upserts by
name, so applying the same deployment twice updates it and keeps its id.

``deployment_runs`` holds one row per scheduled time that something decided to
run: a scheduling service, a backfill, or a person asking for a manual run.
The row *is* the claim. Its unique key on (deployment, scheduled time) lets the
database arbitrate between processes that never talk to each other: each one
simply inserts, and the one whose insert fails with an integrity error knows
another got there first (:func:`claim_run` returns None). No read-then-write,
no lock table, no clock agreement needed, on SQLite and PostgreSQL alike. The
row is completed with the flow run's id and final state type when the run ends
(:func:`finish_run`); a row whose state stays NULL is a run that was claimed
and has not finished (or whose process died). Since schema 0005 a claim also
carries a lease, renewed by its process while the run is in flight, which tells
the two apart (:mod:`.leases`); and a claim may be *exclusive*, refused while
another run of the deployment is in flight (:class:`RunInFlightError`), so that
a deployment's runs do not overlap whichever services start them.

These are plain functions over :attr:`RunStore.engine`, in the store's
conventions: times through :class:`~.schema.UTCDateTime`, JSON in text
columns, and database failures raised as
:class:`~daskflow.runstore.errors.RunStoreUnavailableError`.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from daskflow.exceptions import RunInFlightError
from daskflow.runstore import schema
from daskflow.runstore.errors import RunStoreUnavailableError

if TYPE_CHECKING:
    from daskflow.runstore.store import RunStore

__all__ = [
    "RUN_KINDS",
    "RunInFlightError",
    "DeploymentRecord",
    "DeploymentRunInfo",
    "claim_run",
    "claimant",
    "live_condition",
    "delete_deployment",
    "finish_run",
    "get_deployment",
    "last_runs",
    "last_scheduled_time",
    "list_deployments",
    "list_runs",
    "save_deployment",
    "renew_served",
    "set_paused",
]

RUN_KINDS = ("scheduled", "backfill", "manual")


@dataclass(frozen=True)
class DeploymentRecord:
    """One row of ``deployments``, its JSON columns decoded."""

    id: str
    name: str
    flow_name: str
    entrypoint: str
    schedule: dict[str, Any] | None
    parameters: dict[str, Any]
    tags: tuple[str, ...]
    description: str | None
    work_pool: dict[str, Any] | None
    catchup: str
    paused: bool
    created: datetime
    updated: datetime
    allow_concurrent_runs: bool = False  # runs may overlap (0005); off: one in flight, across services
    triggers: tuple[dict[str, Any], ...] = ()  # event triggers, as DeploymentEventTrigger fields (0008)
    # (0009) registered by flow.serve: the serving process, and until when it serves (None: it stopped)
    served_by: str | None = None
    served_until: datetime | None = None

    def served(self, now: datetime) -> bool:
        """Whether a serving process holds it now (its lease is live)."""
        return self.served_by is not None and self.served_until is not None and self.served_until > now


@dataclass(frozen=True)
class DeploymentRunInfo:
    """One claimed scheduled time of a deployment, and how its run ended (None while unknown)."""

    id: str
    deployment_id: str
    scheduled_time: datetime
    kind: str
    flow_run_id: str | None
    state_type: str | None
    claimed_by: str
    claimed_at: datetime
    lease_expires: datetime | None = None  # renewed by the claiming service while the run is in flight (0005)
    host: str | None = None  # the claiming process (0005); None for claims made before leases
    pid: int | None = None


def claimant() -> str:
    """Who is claiming, for ``claimed_by``: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _writing(store: RunStore) -> sa.Engine:
    # SQLite: take the write lock at BEGIN (see store.py), so two writers queue instead of deadlocking.
    return store.engine.execution_options(sqlite_begin="IMMEDIATE")


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _load(text: str | None) -> Any:
    return None if not text else json.loads(text)


def _record(row: sa.Row[Any]) -> DeploymentRecord:
    values = row._asdict()
    values["schedule"] = _load(values["schedule"])
    values["parameters"] = _load(values["parameters"]) or {}
    values["tags"] = tuple(_load(values["tags"]) or ())
    values["work_pool"] = _load(values["work_pool"])
    values["paused"] = bool(values["paused"])
    values["allow_concurrent_runs"] = bool(values["allow_concurrent_runs"])
    values["triggers"] = tuple(_load(values.get("triggers")) or ())
    return DeploymentRecord(**values)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"a scheduled time must be timezone-aware, got {moment!r}")
    return moment.astimezone(UTC)


# -- deployments ---------------------------------------------------------------------------


def save_deployment(
    store: RunStore,
    *,
    name: str,
    flow_name: str,
    entrypoint: str,
    schedule: Mapping[str, Any] | None,
    parameters: Mapping[str, Any],
    tags: Sequence[str],
    description: str | None,
    work_pool: Mapping[str, Any] | None,
    catchup: str,
    paused: bool,
    allow_concurrent_runs: bool = False,
    triggers: Sequence[Mapping[str, Any]] = (),
    served_by: str | None = None,
    served_until: datetime | None = None,
) -> str:
    """Create the deployment ``name``, or update it if it exists; return its id (kept on update).

    ``served_by``/``served_until`` mark it as served by that process (flow.serve) until then; a
    deployment saved without them (``flow.deploy``, ``deployment apply``) is fired by any service.
    """
    dp = schema.deployments
    now = datetime.now(UTC)
    values = {
        "flow_name": flow_name,
        "entrypoint": entrypoint,
        "schedule": _dump(None if schedule is None else dict(schedule)),
        "parameters": _dump(dict(parameters)),
        "tags": _dump(list(tags)),
        "description": description,
        "work_pool": _dump(None if work_pool is None else dict(work_pool)),
        "catchup": catchup,
        "paused": bool(paused),
        "allow_concurrent_runs": bool(allow_concurrent_runs),
        "triggers": _dump([dict(t) for t in triggers]) if triggers else None,
        "served_by": served_by,
        "served_until": None if served_until is None else _utc(served_until),
        "updated": now,
    }
    for _ in range(2):  # a second pass only when another process inserted the same name meanwhile
        with store.database_errors():
            try:
                with _writing(store).begin() as connection:
                    existing = connection.execute(sa.select(dp.c.id).where(dp.c.name == name)).scalar()
                    if existing is not None:
                        connection.execute(dp.update().where(dp.c.id == existing).values(values))
                        return str(existing)
                    new_id = str(uuid.uuid4())
                    connection.execute(dp.insert().values(id=new_id, name=name, created=now, **values))
                    return new_id
            except sa.exc.IntegrityError:
                continue
    raise RunStoreUnavailableError(f"could not save deployment {name!r}: its row changed under every attempt")


def get_deployment(store: RunStore, name_or_id: str) -> DeploymentRecord | None:
    """The deployment with this name (or, failing that, this id); None if there is none."""
    dp = schema.deployments
    with store.database_errors(), store.engine.connect() as connection:
        row = connection.execute(sa.select(dp).where(dp.c.name == name_or_id)).first()
        if row is None:
            row = connection.execute(sa.select(dp).where(dp.c.id == name_or_id)).first()
    return None if row is None else _record(row)


def list_deployments(store: RunStore) -> list[DeploymentRecord]:
    """Every deployment, by name."""
    dp = schema.deployments
    with store.database_errors(), store.engine.connect() as connection:
        return [_record(row) for row in connection.execute(sa.select(dp).order_by(dp.c.name))]


def delete_deployment(store: RunStore, name: str) -> bool:
    """Delete the deployment ``name`` and its claims; False if there was none."""
    dp, dr = schema.deployments, schema.deployment_runs
    with store.database_errors(), _writing(store).begin() as connection:
        found = connection.execute(sa.select(dp.c.id).where(dp.c.name == name)).scalar()
        if found is None:
            return False
        # Its claims go too: a deployment re-applied under the name gets a new id and a fresh start.
        connection.execute(dr.delete().where(dr.c.deployment_id == found))
        connection.execute(dp.delete().where(dp.c.id == found))
    return True


def set_paused(store: RunStore, name: str, paused: bool) -> bool:
    """Pause or resume the deployment ``name``; False if there is none."""
    dp = schema.deployments
    with store.database_errors(), _writing(store).begin() as connection:
        result = connection.execute(
            dp.update().where(dp.c.name == name).values(paused=bool(paused), updated=datetime.now(UTC))
        )
    return bool(result.rowcount)


def renew_served(store: RunStore, deployment_ids: Sequence[str], served_by: str, until: datetime | None) -> int:
    """Renew (or with ``until=None`` end) the serving of these deployments by ``served_by``; how many rows.

    A deployment saved since by someone else (another serve, a deploy) is left alone.
    """
    if not deployment_ids:
        return 0
    dp = schema.deployments
    with store.database_errors(), _writing(store).begin() as connection:
        result = connection.execute(
            dp.update()
            .where(dp.c.id.in_(list(deployment_ids)), dp.c.served_by == served_by)
            .values(served_until=None if until is None else _utc(until))
        )
    return int(result.rowcount)


# -- claims ----------------------------------------------------------------------------------


def claim_run(
    store: RunStore,
    deployment_id: str,
    scheduled_time: datetime,
    kind: str,
    claimed_by: str | None = None,
    *,
    lease_seconds: float | None = None,
    exclusive: bool = False,
) -> str | None:
    """Claim ``scheduled_time`` of a deployment for one run; the claim's id, or None if already claimed.

    Atomic across processes and machines: the insert either creates the one row
    for (deployment, time) or fails on the unique key, in which case someone
    else holds the claim. Nothing is read first, so there is no window between
    looking and claiming.

    ``lease_seconds`` gives the claim a lease that its process must renew
    (:func:`~daskflow.runstore.leases.renew_leases`) while the run is in flight;
    past it, another service takes the run for crashed. ``exclusive`` refuses
    the claim, raising :class:`~daskflow.runstore.errors.RunInFlightError`, while
    another claim of the deployment is in flight under a live lease: runs of a
    deployment that does not allow concurrent runs never overlap, whichever
    services start them. The check and the insert are one transaction, serialised
    per deployment (SQLite's write lock; a row lock on the deployment elsewhere).
    """
    if kind not in RUN_KINDS:
        raise ValueError(f"claim kind {kind!r} is not one of {', '.join(RUN_KINDS)}")
    claim_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    row = {
        "id": claim_id,
        "deployment_id": deployment_id,
        "scheduled_time": _utc(scheduled_time),
        "kind": kind,
        "claimed_by": claimed_by or claimant(),
        "claimed_at": now,
        "lease_expires": None if lease_seconds is None else now + timedelta(seconds=lease_seconds),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    dr, dp = schema.deployment_runs, schema.deployments
    with store.database_errors():
        try:
            with _writing(store).begin() as connection:
                if exclusive:
                    connection.execute(sa.select(dp.c.id).where(dp.c.id == deployment_id).with_for_update())
                    live = connection.execute(
                        sa.select(dr).where(dr.c.deployment_id == deployment_id, *live_condition(now)).limit(1)
                    ).first()
                    if live is not None:
                        info = DeploymentRunInfo(**live._asdict())
                        if info.scheduled_time == row["scheduled_time"]:
                            return None  # this very time, claimed by another: the usual race, lost
                        raise RunInFlightError(
                            f"the run for {info.scheduled_time.isoformat()} is in flight "
                            f"(claimed by {info.claimed_by}, lease until "
                            f"{info.lease_expires.isoformat(timespec='seconds') if info.lease_expires else '?'})",
                            info,
                        )
                connection.execute(dr.insert().values(row))
        except sa.exc.IntegrityError:
            return None
    return claim_id


def live_condition(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """The claims in flight at ``now``: no final state yet, and a lease that has not run out."""
    dr = schema.deployment_runs
    return (dr.c.state_type.is_(None), dr.c.lease_expires > now)


def finish_run(store: RunStore, claim_id: str, flow_run_id: str | None, state_type: str | None) -> None:
    """Record the flow run that a claim started, and its final state type."""
    dr = schema.deployment_runs
    with store.database_errors(), _writing(store).begin() as connection:
        connection.execute(
            dr.update().where(dr.c.id == claim_id).values(flow_run_id=flow_run_id, state_type=state_type)
        )


def list_runs(
    store: RunStore,
    deployment_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    kinds: Sequence[str] | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[DeploymentRunInfo]:
    """A deployment's claimed times, in time order: ``since <= scheduled_time <= until``."""
    dr = schema.deployment_runs
    order = dr.c.scheduled_time.desc() if newest_first else dr.c.scheduled_time
    query = sa.select(dr).where(dr.c.deployment_id == deployment_id).order_by(order)
    if since is not None:
        query = query.where(dr.c.scheduled_time >= _utc(since))
    if until is not None:
        query = query.where(dr.c.scheduled_time <= _utc(until))
    if kinds is not None:
        query = query.where(dr.c.kind.in_(list(kinds)))
    if limit is not None:
        query = query.limit(limit)
    with store.database_errors(), store.engine.connect() as connection:
        return [DeploymentRunInfo(**row._asdict()) for row in connection.execute(query)]


def last_scheduled_time(
    store: RunStore, deployment_id: str, kinds: Sequence[str] = ("scheduled", "backfill")
) -> datetime | None:
    """The latest time claimed for a deployment by its schedule (a service or a backfill), if any.

    Manual runs are left out by default: they run "now", off the schedule, and
    must not make a service believe the schedule's missed times were done.
    """
    dr = schema.deployment_runs
    query = sa.select(sa.func.max(dr.c.scheduled_time)).where(
        dr.c.deployment_id == deployment_id, dr.c.kind.in_(list(kinds))
    )
    with store.database_errors(), store.engine.connect() as connection:
        value = connection.execute(query).scalar()
    # max() loses the column type on some backends: parse what comes back the way UTCDateTime does.
    return schema.UTCDateTime().process_result_value(value, store.engine.dialect)


def last_runs(store: RunStore, deployment_ids: Sequence[str]) -> dict[str, DeploymentRunInfo]:
    """The most recently claimed run of each deployment that has one (for ``deployment ls``)."""
    dr = schema.deployment_runs
    latest = (
        sa.select(dr.c.deployment_id, sa.func.max(dr.c.claimed_at).label("claimed_at"))
        .where(dr.c.deployment_id.in_(list(deployment_ids)))
        .group_by(dr.c.deployment_id)
        .subquery()
    )
    query = sa.select(dr).join(
        latest, sa.and_(dr.c.deployment_id == latest.c.deployment_id, dr.c.claimed_at == latest.c.claimed_at)
    )
    found: dict[str, DeploymentRunInfo] = {}
    if not deployment_ids:
        return found
    with store.database_errors(), store.engine.connect() as connection:
        for row in connection.execute(query):
            info = DeploymentRunInfo(**row._asdict())
            current = found.get(info.deployment_id)
            if current is None or info.scheduled_time > current.scheduled_time:
                found[info.deployment_id] = info
    return found
