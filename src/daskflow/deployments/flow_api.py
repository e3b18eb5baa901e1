"""Prefect 3's deployment calls: ``flow.deploy``, a served flow's store half, and ``run_deployment``.

Prefect 3 makes a deployment from the flow object (``my_flow.deploy(name,
work_pool_name=...)``, ``my_flow.serve(name)``) and asks for a run of it by
name from anywhere (``run_deployment("flow/deployment", parameters=...,
timeout=...)``). In daskflow a deployment is a row of the run store
(:class:`~.deployment.Deployment`), so:

* ``Flow.from_source(folder, "file.py:name")`` loads a flow from a local
  folder (:func:`~.entrypoints.load_flow`), to ``.deploy`` it as Prefect code does;
* ``flow.deploy`` builds that row from the flow's :class:`~daskflow.flows.ServedDeployment`
  (its schedule, parameters, tags, triggers) and applies it; a scheduling
  service (``daskflow serve``) then fires it. ``daskflow.flows`` sits below
  this layer, so it reaches this module only through the seam of
  :mod:`daskflow.engine.serving`: importing this module installs
  :data:`backend` there.
* ``flow.serve()`` and ``serve(...)`` register their deployments here, with
  their schedule (the first, when there are several) and ``served_by`` this
  process, under a lease that a thread renews while it serves (ended when it
  stops, so ``deployment ls`` tells "served" from "not served"). The serving
  process fires its own schedules, so a scheduling service never fires the
  schedule of a deployment with ``served_by`` (:mod:`.planner`). The serving
  process also runs a :class:`~.service.DeploymentService` limited to them:
  it starts what :func:`run_deployment` queued for them (from any process or
  ``daskflow deployment run``), and a run per event their triggers match,
  with the flow objects it was given (no import by entrypoint). A scheduled
  deployment whose flow cannot be registered (defined in a function) is
  served on its schedule only, with a warning (and silently when run history
  is off: its runs would not be in the store to follow); one that needs the
  store (no schedule, triggers, paused) is an error then.
* :func:`run_deployment` queues a run (:func:`~.queue.queue_deployment_run`:
  in the store at once, ``Scheduled``) for whichever service serves the
  deployment, and returns a :class:`DeploymentFlowRun` snapshot: at once with
  ``timeout=0``, else when the run reaches a final state or ``timeout``
  seconds passed (``None``: no limit), as Prefect does. ``idempotency_key``
  makes the run's id a function of the key, so asking twice queues once.
  Called inside a flow run (or a task of one) with ``as_subflow=True`` (the
  default, as in Prefect), the queued run is that flow run's child: its
  ``parent_flow_run_id`` is recorded when it is queued and kept when it runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from daskflow import settings
from daskflow.context import get_flow_run_context, get_task_run_context
from daskflow.deployments.deployment import DEFAULT_CATCHUP, Deployment, open_store
from daskflow.deployments.entrypoints import load_flow
from daskflow.deployments.queue import queue_deployment_run
from daskflow.deployments.running import lease_seconds
from daskflow.deployments.service import DEFAULT_POLL_SECONDS, DeploymentService
from daskflow.engine.serving import StoreServing, install_deployment_backend
from daskflow.exceptions import DeploymentError, DeploymentNotFoundError
from daskflow.flows import Flow, ServedDeployment
from daskflow.runstore import deployments as rows
from daskflow.runstore.errors import RunStoreUnavailableError
from daskflow.runstore.history import FlowRunDetail
from daskflow.runstore.queries import flow_run_header
from daskflow.runstore.store import RunStore
from daskflow.states import State, StateType

__all__ = ["FINAL_TYPES", "DeploymentFlowRun", "backend", "run_deployment"]

_log = logging.getLogger("daskflow.serve")
FINAL_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
_IDEMPOTENCY = uuid.UUID("6f1c2b2e-5d0e-4a7c-9b1e-2f9a0d6c4e11")  # namespace of run ids made from keys


@dataclass(frozen=True)
class DeploymentFlowRun:
    """A flow run of a deployment as the run store had it when :func:`run_deployment` returned."""

    id: str
    name: str
    flow_name: str
    deployment_id: str | None
    deployment_name: str | None
    parameters: dict[str, Any]
    state_type: str
    state_name: str
    state_message: str | None
    tags: tuple[str, ...] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    parent_flow_run_id: str | None = None  # the flow run it was queued from, as a subflow

    @property
    def state(self) -> State:
        """The run's state then (no result: read the value from the run's cache or the history)."""
        return State(StateType(self.state_type), self.state_name, self.state_message)

    @property
    def is_final(self) -> bool:
        return self.state_type in FINAL_TYPES

    @classmethod
    def from_detail(cls, detail: FlowRunDetail) -> DeploymentFlowRun:
        return cls(
            id=detail.id, name=detail.name, flow_name=detail.flow_name, deployment_id=detail.deployment_id,
            deployment_name=detail.deployment_name, parameters=dict(detail.parameters),
            state_type=detail.state_type, state_name=detail.state_name, state_message=detail.state_message,
            tags=_tags(detail.tags), start_time=detail.start_time, end_time=detail.end_time,
            parent_flow_run_id=detail.parent_flow_run_id,
        )  # fmt: skip


def _tags(stored: Any) -> tuple[str, ...]:
    # The header reads the column as stored: JSON text of a list, or nothing.
    if not stored:
        return ()
    return tuple(json.loads(stored) if isinstance(stored, str) else stored)


def _find(name: str, store: RunStore) -> Deployment:
    """The deployment ``name``, or ``"flow-name/deployment-name"`` as Prefect names deployments."""
    try:
        return Deployment.load(name, store)
    except DeploymentNotFoundError:
        flow_name, slash, deployment_name = name.partition("/")
        if not slash:
            raise
        found = Deployment.load(deployment_name, store)
        if found.flow_name != flow_name:
            raise DeploymentNotFoundError(
                f"deployment {deployment_name!r} is of flow {found.flow_name!r}, not {flow_name!r} (asked for "
                f"{name!r}). Fix: run_deployment('{found.flow_name}/{deployment_name}')."
            ) from None
        return found


def _refuse(where: str, **given: Any) -> None:
    reasons = {
        "scheduled_time": "runs are queued for now; to run a past or future time use "
        "Deployment.load(name).run(scheduled_time=...) (in this process) or a schedule",
        "flow_run_name": "a queued run is named by the flow engine when it starts; give the flow a "
        "flow_run_name= instead",
        "tags": "a deployment's runs carry its tags; set them with deploy(tags=...)",
        "work_queue_name": "there are no work queues: each deployment's runs go to the services on its store",
        "job_variables": "a work pool is a Dask cluster configured in dask config daskflow.work_pools",
    }
    for option, value in given.items():
        if value is not None:
            raise DeploymentError(f"{where}: {option}= is not supported: {reasons[option]}. Fix: leave it out.")


def run_deployment(
    name: str | Deployment,
    client: Any = None,
    parameters: Mapping[str, Any] | None = None,
    scheduled_time: datetime | None = None,
    flow_run_name: str | None = None,
    timeout: float | None = None,
    poll_interval: float = 5,
    tags: Sequence[str] | None = None,
    idempotency_key: str | None = None,
    work_queue_name: str | None = None,
    as_subflow: bool = True,
    job_variables: Mapping[str, Any] | None = None,
    *,
    store: RunStore | None = None,
) -> DeploymentFlowRun:
    """Queue a run of deployment ``name`` for the service serving it; return the flow run (module docstring).

    ``client`` is Prefect's API client and is not used (the run store is
    ``daskflow.runstore.url``, or ``store``). With ``as_subflow`` (the default)
    the run is a subflow of the flow run this is called in, if any.
    """
    where = f"run_deployment({name if isinstance(name, str) else name.name!r})"
    _refuse(
        where, scheduled_time=scheduled_time, flow_run_name=flow_run_name, tags=tags,
        work_queue_name=work_queue_name, job_variables=job_variables or None,
    )  # fmt: skip
    if parameters is not None and not isinstance(parameters, Mapping):
        raise DeploymentError(f"{where}: parameters must be a dict of the flow's parameters, got {parameters!r}.")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise DeploymentError(f"{where}: timeout={timeout!r} must be seconds >= 0 (0: return at once) or None.")
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)) or poll_interval <= 0:
        raise DeploymentError(f"{where}: poll_interval={poll_interval!r} must be seconds > 0.")
    parent = _calling_flow_run_id() if as_subflow else None
    with open_store(store) as opened:
        deployment = name if isinstance(name, Deployment) else _find(name, opened)
        deployment._ensure_id(opened)
        run_id: str | None = None
        if idempotency_key is not None:
            run_id = str(uuid.uuid5(_IDEMPOTENCY, f"{deployment.id}/{idempotency_key}"))
            if flow_run_header(opened, run_id) is None:
                run_id = _queue(deployment, opened, parameters, run_id, parent)
        else:
            run_id = queue_deployment_run(deployment, opened, parameters, parent_flow_run_id=parent)
        return _wait(opened, run_id, timeout, poll_interval)


def _calling_flow_run_id() -> str | None:
    """The flow run this code runs in (its body, or one of its task runs, on any runner); None outside."""
    flow_ctx = get_flow_run_context()
    if flow_ctx is not None:
        return flow_ctx.flow_run.id
    task_ctx = get_task_run_context()
    return task_ctx.flow_run_id if task_ctx is not None else None


def _queue(
    deployment: Deployment, store: RunStore, parameters: Mapping[str, Any] | None, run_id: str, parent: str | None
) -> str:
    try:
        return queue_deployment_run(deployment, store, parameters, flow_run_id=run_id, parent_flow_run_id=parent)
    except sa.exc.IntegrityError:
        return run_id  # queued by another caller with the same key just now: that run is this one


def _wait(store: RunStore, run_id: str, timeout: float | None, poll_interval: float) -> DeploymentFlowRun:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        detail = flow_run_header(store, run_id)
        if detail is None:  # pragma: no cover - the row was written before this was called
            raise DeploymentError(f"flow run {run_id} vanished from the run store at {store.display_url}")
        run = DeploymentFlowRun.from_detail(detail)
        if run.is_final or timeout == 0:
            return run
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return run  # as Prefect: the run as it is when the time is up, not an error
        time.sleep(poll_interval if remaining is None else min(poll_interval, remaining))


# -- the backend behind Flow.deploy and serve() (daskflow.engine.serving's seam) ----------------


def _build(served: ServedDeployment, schedule: Any, options: Mapping[str, Any]) -> Deployment:
    return Deployment.build_from_flow(
        served.flow, served.name, schedule=schedule, work_pool_name=options.get("work_pool_name"),
        parameters=served.parameters, tags=sorted(served.tags), description=served.description,
        paused=served.paused, catchup=options.get("catchup", DEFAULT_CATCHUP),
        allow_concurrent_runs=bool(options.get("allow_concurrent_runs", False)), triggers=served.triggers,
    )  # fmt: skip


class _Backend:
    """What :mod:`daskflow.flows` asks of deployments, through :func:`~daskflow.engine.serving.deployment_backend`."""

    def deploy(self, served: ServedDeployment, options: Mapping[str, Any]) -> str:
        if len(served.schedules) > 1:
            raise DeploymentError(
                f"deploy({served.name!r}): {len(served.schedules)} schedules given; a daskflow deployment has one. "
                f"Fix: deploy one deployment per schedule (e.g. {served.name}-1, {served.name}-2)."
            )
        deployment = _build(served, served.schedules[0] if served.schedules else None, options)
        return deployment.apply()

    def load_flow(self, entrypoint: str) -> Flow[Any, Any]:
        return load_flow(entrypoint)

    def serve_from_store(self, served: Sequence[ServedDeployment], *, poll_seconds: float | None) -> StoreServing:
        lease = lease_seconds()
        me = rows.claimant()
        built: list[Deployment] = []
        history = bool(settings.get("runstore.enabled", True))
        for one in served:
            if not one.needs_store and not history:
                # Run history off: its runs would not be in the store for run_deployment to follow.
                _log.debug("serve %r: run history is off; served on its schedule only", one.name)
                continue
            try:
                deployment = _build(one, one.schedules[0] if one.schedules else None, {})
            except DeploymentError as exc:
                if one.needs_store:
                    raise
                _log.warning(
                    "serve %r: served on its schedule, but not registered in the run store, so run_deployment "
                    "cannot reach it: %s", one.name, exc,
                )  # fmt: skip
                continue
            # This process fires the schedule (flows.serve's threads): services skip a served deployment's.
            deployment.served_by = me
            built.append(deployment)
        if not built:
            return StoreServing({}, None)
        try:
            with RunStore() as store:
                for deployment in built:
                    deployment.served_until = datetime.now(UTC) + timedelta(seconds=lease)
                    deployment.apply(store)
        except RunStoreUnavailableError as exc:
            if any(one.needs_store for one in served):
                raise
            _log.warning(
                "serve: the deployments were not registered in the run store (%s); serving their schedules", exc
            )
            return StoreServing({}, None)
        ids = {deployment.name: str(deployment.id) for deployment in built}
        flows = {one.name: one.flow for one in served if one.name in ids}

        def serve_stored(stop: threading.Event, cancel: threading.Event | None) -> dict[str, list[State]]:
            service = DeploymentService(
                poll_seconds=poll_seconds or DEFAULT_POLL_SECONDS, name=f"serve@{me}", flows=flows
            )
            renewing = threading.Thread(
                target=_renew_served,
                args=(list(ids.values()), me, lease, stop),
                name="daskflow-serve-lease",
                daemon=True,
            )
            renewing.start()
            try:
                service.run(stop, cancel)
            finally:
                stop.set()
                renewing.join(30)
            return service.final_states()

        return StoreServing(ids, serve_stored)


def _renew_served(ids: list[str], me: str, lease: float, stop: threading.Event) -> None:
    """Renew this process's hold on the served deployments every third of the lease; end it at ``stop``."""
    with RunStore() as store:
        while not stop.wait(lease / 3):
            try:
                rows.renew_served(store, ids, me, datetime.now(UTC) + timedelta(seconds=lease))
            except RunStoreUnavailableError as exc:
                _log.warning("serve: the lease of the served deployments was not renewed (%s); trying again", exc)
        try:
            rows.renew_served(store, ids, me, None)  # listed, no longer served
        except RunStoreUnavailableError as exc:
            _log.warning("serve: the deployments could not be marked as no longer served (%s)", exc)


backend = _Backend()
install_deployment_backend(backend)
