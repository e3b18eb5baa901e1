"""Deployments: a flow stored by import path with its schedule, parameters and work pool.

A deployment lets a flow run without its author: anything that reads the run
store (a scheduling service, ``daskflow deployment run``, a backfill) can import
the flow, render its parameters for a scheduled time and run it on the
deployment's Dask cluster, each scheduled time at most once.

* :mod:`.deployment` — :class:`Deployment` (build, apply, load, list, delete,
  pause, run, backfill) and :func:`run_deployment_here` (in this process);
* :mod:`.flow_api` — Prefect 3's calls: ``flow.deploy`` and ``serve()``'s store
  half, and :func:`run_deployment`, which queues a run for a scheduling service;
* :mod:`.triggers` — firing event triggers, once per matching event;
* :mod:`.templates` — ``{{ scheduled_time }}`` and data-interval templates, and
  checking parameters against the flow;
* :mod:`.entrypoints` — a flow's import path, and importing it again;
* :mod:`.work_pools` — :class:`WorkPool`, a named Dask cluster;
* :mod:`.running` — claim, render, run; backfills; the catchup rule;
* :mod:`.files` — deployment YAML files.

The rows themselves live in :mod:`daskflow.runstore.deployments`.
"""

from __future__ import annotations

from daskflow.deployments.deployment import DEFAULT_CATCHUP, Deployment, run_deployment_here
from daskflow.deployments.entrypoints import entrypoint_of, load_flow
from daskflow.deployments.files import apply_deployment_file, load_deployment_file
from daskflow.deployments.flow_api import DeploymentFlowRun, run_deployment
from daskflow.deployments.running import CATCHUP, BackfillStates, missed_times
from daskflow.deployments.service import (
    DEFAULT_MAX_CONCURRENT_RUNS,
    DEFAULT_POLL_SECONDS,
    DeploymentService,
    unfinished_claims,
)
from daskflow.deployments.templates import TEMPLATE_NAMES, TemplateTimes, render_parameters, template_times
from daskflow.deployments.work_pools import DEFAULT_POOL_NAMES, WorkPool, resolve_work_pool
from daskflow.events import DeploymentEventTrigger

__all__ = [
    "CATCHUP",
    "DEFAULT_CATCHUP",
    "DEFAULT_MAX_CONCURRENT_RUNS",
    "DEFAULT_POLL_SECONDS",
    "DEFAULT_POOL_NAMES",
    "TEMPLATE_NAMES",
    "BackfillStates",
    "Deployment",
    "DeploymentEventTrigger",
    "DeploymentFlowRun",
    "DeploymentService",
    "TemplateTimes",
    "WorkPool",
    "apply_deployment_file",
    "entrypoint_of",
    "load_deployment_file",
    "load_flow",
    "missed_times",
    "render_parameters",
    "resolve_work_pool",
    "run_deployment",
    "run_deployment_here",
    "template_times",
    "unfinished_claims",
]
