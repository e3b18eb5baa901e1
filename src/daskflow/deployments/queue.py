"""Queueing a deployment run for a scheduling service, and starting a queued run there.

:func:`queue_deployment_run` is how a run of a deployment is asked for by
someone who does not run it: the server's **Run** button and
``POST /api/deployments/{name}/runs`` (and Prefect's
``run_deployment(name, parameters=, timeout=)``, which then waits on the id).
It checks the parameters against the flow's signature (a bad one is a
:class:`~daskflow.exceptions.DeploymentError` and nothing is queued), writes the
flow run ``Scheduled`` for now with an id fixed here
(:mod:`daskflow.runstore.queued`) and returns that id at once: the run is in
the store, with its parameters and deployment, before any service looks.

A scheduling service (:class:`~.service.DeploymentService`) takes the queued
runs at its polls, exactly one service each, and starts them with
:func:`start_queued`: the same claim, render and run as a manual run
(:func:`~.running.run_once`, kind ``"manual"``, for the time it was queued),
the flow run taking the queued id. A run queued as a subflow (Prefect's
``run_deployment(..., as_subflow=True)`` inside a flow) is started as the
child of the flow run that asked for it: the flow run takes the queued
parent as its ``parent_flow_run_id`` at its first state, before its body
runs, so ``daskflow.runtime`` and the history both show the link. So with ``daskflow server --no-service`` a
separate ``daskflow serve`` over the same store runs what the server queued.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from daskflow.deployments.running import run_once
from daskflow.deployments.templates import check_parameters
from daskflow.engine.run_origin import preset_flow_run_id
from daskflow.exceptions import DaskflowError, DeploymentError
from daskflow.runs import FlowRun, TaskRun, add_state_listener, new_run_id, remove_state_listener
from daskflow.runstore.queued import QueuedRun, fail_queued, queue_flow_run
from daskflow.states import State

if TYPE_CHECKING:
    from daskflow.deployments.deployment import Deployment
    from daskflow.runstore.store import RunStore

__all__ = ["queue_deployment_run", "start_queued"]

_log = logging.getLogger("daskflow.deployments")


def queue_deployment_run(
    deployment: Deployment,
    store: RunStore,
    parameters: Mapping[str, Any] | None = None,
    *,
    flow_run_id: str | None = None,
    parent_flow_run_id: str | None = None,
) -> str:
    """Queue one run of ``deployment`` now with ``parameters`` over its own; the new flow run's id.

    The flow is imported here to check the parameters (a :class:`DeploymentError`
    names a bad one; nothing is queued then). A scheduling service over ``store``
    starts the run within its poll interval. ``parent_flow_run_id`` queues it
    as a subflow of that flow run.
    """
    if deployment.id is None:
        raise DeploymentError(
            f"deployment {deployment.name!r} was not applied, so no scheduling service knows it. Fix: call "
            ".apply() (or daskflow deployment apply) first."
        )
    merged = {**deployment.parameters, **(parameters or {})}
    flow = deployment.load_flow()
    check_parameters(deployment.name, flow, merged, None)
    run_id = flow_run_id or new_run_id()
    queue_flow_run(
        store, run_id, deployment_id=deployment.id, deployment_name=deployment.name, flow_name=flow.name,
        parameters=merged, tags=tuple(deployment.tags), entrypoint=deployment.entrypoint,
        parent_flow_run_id=parent_flow_run_id,
    )  # fmt: skip
    return run_id


def start_queued(deployment: Deployment, store: RunStore, queued: QueuedRun, claimed_by: str | None) -> State | None:
    """Run a queued run (taken already, :func:`~daskflow.runstore.queued.take_queued`) under its own id.

    A run that cannot start ends ``Failed`` with the reason; the exception is raised on.
    """
    try:
        with preset_flow_run_id(queued.flow_run_id), _child_of(queued.flow_run_id, queued.parent_flow_run_id):
            state = run_once(deployment, store, queued.queued_at, "manual", queued.parameters, claimed_by)
    except DaskflowError as exc:
        fail_queued(store, queued.flow_run_id, f"the run could not start: {exc}")
        raise
    if state is None:
        fail_queued(store, queued.flow_run_id, f"the time {queued.queued_at.isoformat()} was claimed already")
    return state


@contextmanager
def _child_of(flow_run_id: str, parent_flow_run_id: str | None) -> Iterator[None]:
    """Inside the block, flow run ``flow_run_id`` started by this thread becomes a subflow of the parent.

    The flow engine links a run to a parent it finds in this process; the parent of
    a queued run is in another one, so it is set on the run at its first state
    (before its body, its history records and its task runs read it).
    """
    if parent_flow_run_id is None:
        yield
        return
    starter = threading.get_ident()

    def adopt(run: TaskRun | FlowRun, state: State) -> None:
        # A state listener: quick, never raises.
        if isinstance(run, FlowRun) and run.id == flow_run_id and threading.get_ident() == starter:
            run.parent_flow_run_id = parent_flow_run_id

    add_state_listener(adopt)
    try:
        yield
    finally:
        remove_state_listener(adopt)
