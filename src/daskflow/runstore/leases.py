"""Leases on deployment claims: how a run in flight is told apart from a run whose process died.

A claim (:func:`~daskflow.runstore.deployments.claim_run`) made with
``lease_seconds`` carries ``lease_expires``; the process that runs the claimed
time renews it (:func:`renew_leases`, from a heartbeat thread) while the run is
in flight, and the claim gets its final state when the run ends. A claim with no
final state is then one of two things, and the lease tells which:

* **in flight** — its lease has not run out (:func:`live_claims`): its service
  is alive and renewing. A deployment that does not allow concurrent runs starts
  no other run meanwhile, in any service (``claim_run(..., exclusive=True)``);
* **abandoned** — its lease ran out (or it has none: claims made before schema
  0005): the process that held it died, or lost the run store for longer than
  the lease. :func:`reap_expired` takes such claims over, one transaction each,
  so that of several services reaping at once exactly one does it: the claim's
  state becomes ``CRASHED``, and so does its flow run's (a ``Crashed`` state row
  with a message naming the dead service, its host and pid), together with the
  flow run's task runs that had not finished. The deployment's next scheduled
  time then runs as usual, once, through its own claim.

A service whose lease was taken over while it was in fact alive (a pause longer
than the lease) learns it at its next renewal: :func:`renew_leases` returns the
claims it no longer holds. Leases compare the claimants' wall clocks, so the
machines sharing a store should keep their clocks in step (NTP); the lease
length (``daskflow.deployments.lease``, 60 s by default) is the margin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from daskflow.runstore import schema
from daskflow.runstore.deployments import DeploymentRunInfo, live_condition
from daskflow.runstore.records import new_record_id
from daskflow.states import FINAL_TYPE_NAMES

if TYPE_CHECKING:
    from daskflow.runstore.store import RunStore

__all__ = ["FINAL_STATE_TYPES", "crash_message", "live_claims", "reap_expired", "renew_leases"]

FINAL_STATE_TYPES = tuple(sorted(FINAL_TYPE_NAMES))  # for SQL: a sequence, in a stable order


def _writing(store: RunStore) -> sa.Engine:
    return store.engine.execution_options(sqlite_begin="IMMEDIATE")


def renew_leases(store: RunStore, claims: Mapping[str, str | None], lease_seconds: float) -> set[str]:
    """Move the leases of ``claims`` (claim id -> its flow run id, once known) on; return those no longer held.

    A claim is no longer held once it has a final state: its run ended, or
    another service took it for crashed after its lease ran out.
    """
    if not claims:
        return set()
    dr = schema.deployment_runs
    expires = datetime.now(UTC) + timedelta(seconds=lease_seconds)
    lost: set[str] = set()
    with store.database_errors(), _writing(store).begin() as connection:
        for claim_id, flow_run_id in claims.items():
            values: dict[str, object] = {"lease_expires": expires}
            if flow_run_id is not None:
                values["flow_run_id"] = flow_run_id
            result = connection.execute(
                dr.update().where(dr.c.id == claim_id, dr.c.state_type.is_(None)).values(values)
            )
            if result.rowcount == 0:
                lost.add(claim_id)
    return lost


def live_claims(store: RunStore, deployment_id: str) -> list[DeploymentRunInfo]:
    """The claims of a deployment in flight now (no final state, a lease that has not run out)."""
    dr = schema.deployment_runs
    query = sa.select(dr).where(dr.c.deployment_id == deployment_id, *live_condition(datetime.now(UTC)))
    with store.database_errors(), store.engine.connect() as connection:
        return [DeploymentRunInfo(**row._asdict()) for row in connection.execute(query.order_by(dr.c.claimed_at))]


def crash_message(claim: DeploymentRunInfo, reaper: str) -> str:
    """Why a reaped run is ``Crashed``: its service, host and pid, and when its lease ran out."""
    where = f"host {claim.host}, pid {claim.pid}" if claim.host is not None else "a service from before leases"
    if claim.lease_expires is not None:
        lease = f"its lease ran out at {claim.lease_expires.isoformat(timespec='seconds')}"
    else:
        lease = "it had no lease (claimed before leases)"
    return (
        f"The service {claim.claimed_by} ({where}) that ran this flow run stopped renewing its claim: {lease}. "
        f"The process died, or lost the run store for longer than the lease. Marked Crashed by {reaper}."
    )


def reap_expired(store: RunStore, reaper: str, deployment_ids: Sequence[str] | None = None) -> list[DeploymentRunInfo]:
    """Mark the claims whose lease ran out, and their flow runs, ``Crashed``; return the claims reaped."""
    dr = schema.deployment_runs
    now = datetime.now(UTC)
    expired = sa.or_(dr.c.lease_expires.is_(None), dr.c.lease_expires <= now)
    query = sa.select(dr).where(dr.c.state_type.is_(None), expired).order_by(dr.c.claimed_at)
    if deployment_ids is not None:
        if not deployment_ids:
            return []
        query = query.where(dr.c.deployment_id.in_(list(deployment_ids)))
    with store.database_errors(), store.engine.connect() as connection:
        candidates = [DeploymentRunInfo(**row._asdict()) for row in connection.execute(query)]
    reaped = []
    for claim in candidates:
        with store.database_errors(), _writing(store).begin() as connection:
            # Taken only if still abandoned: of several services reaping at once, one wins each claim.
            taken = connection.execute(
                dr.update().where(dr.c.id == claim.id, dr.c.state_type.is_(None), expired).values(state_type="CRASHED")
            ).rowcount
            if taken != 1:
                continue
            if claim.flow_run_id is not None:
                _crash_flow_run(connection, claim, crash_message(claim, reaper), now)
        reaped.append(claim)
    return reaped


def _crash_flow_run(connection: sa.Connection, claim: DeploymentRunInfo, message: str, now: datetime) -> None:
    fr, tr, st, dp = schema.flow_runs, schema.task_runs, schema.states, schema.deployments
    flow_run_id = claim.flow_run_id
    crashed = {
        "state_type": "CRASHED",
        "state_name": "Crashed",
        "state_message": message,
        "end_time": now,
        "updated": now,
    }
    exists = connection.execute(sa.select(fr.c.id).where(fr.c.id == flow_run_id)).first() is not None
    if exists:
        connection.execute(
            fr.update().where(fr.c.id == flow_run_id, fr.c.state_type.not_in(FINAL_STATE_TYPES)).values(crashed)
        )
    else:
        # Its process died before its history reached the store (it may still come, from a spool:
        # an older snapshot then, which does not undo this one, the newest).
        flow_name = connection.execute(sa.select(dp.c.flow_name).where(dp.c.id == claim.deployment_id)).scalar()
        connection.execute(
            fr.insert().values(
                id=flow_run_id,
                name=flow_run_id,
                flow_name=flow_name or "?",
                run_count=1,
                created=claim.claimed_at,
                **crashed,
            )
        )
    connection.execute(
        tr.update().where(tr.c.flow_run_id == flow_run_id, tr.c.state_type.not_in(FINAL_STATE_TYPES)).values(crashed)
    )
    connection.execute(
        st.insert().values(
            run_id=flow_run_id, run_kind="flow", type="CRASHED", name="Crashed", message=message,
            timestamp=now, uid=new_record_id(),
        )
    )  # fmt: skip
