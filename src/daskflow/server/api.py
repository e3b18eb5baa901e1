"""The REST API under ``/api``: the UI's own source of data, so whatever the UI shows or does, a script can.

JSON in and out; times in ISO 8601 (UTC). Flow run ids accept a unique prefix,
as the CLI does; an ambiguous one is a 400 that lists the matches, an unknown
one a 404. Lists are paged on the server (``limit``, ``offset``) and say
whether more follow (``has_more``), so no page ever loads a whole history.

State-changing routes (cancel, retry, run a deployment, pause/resume) are
added only when the server is not read-only (:func:`build_router`); the
security middleware refuses them anyway (405), so a read-only server serves
no route that changes anything. The OpenAPI document is at
``/openapi.json``, and ``/docs`` lists the routes with a page of our own,
since FastAPI's default docs page loads its script from a CDN.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from daskflow import settings
from daskflow._version import __version__
from daskflow.deployments import Deployment
from daskflow.deployments.queue import queue_deployment_run
from daskflow.exceptions import DaskflowError
from daskflow.runstore import deployments as deployment_rows
from daskflow.runstore.errors import AmbiguousRunIdError
from daskflow.runstore.history import FlowRunDetail
from daskflow.runstore.queries import flow_run_header, flow_run_page, logs_after, task_run_page, task_state_counts
from daskflow.runstore.store import RunStore
from daskflow.server import actions
from daskflow.server.concurrency import limit_rows
from daskflow.server.events import EventHub, sse_stream
from daskflow.states import FINAL_TYPE_NAMES

__all__ = ["build_router", "find_run", "jsonable", "parse_since", "resolve"]

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_log = logging.getLogger("daskflow.server")


def jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and tuples as JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def parse_since(text: str | None, name: str) -> datetime | None:
    """An ISO time (UTC unless it has an offset) or an age before now (``30m``, ``2h``, ``7d``)."""
    if not text:
        return None
    match = _AGE.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            400, f"{name}={text!r} is not an ISO time (2024-05-01T14:30) or an age (30m, 2h, 7d)."
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _store(request: Request) -> RunStore:
    store: RunStore = request.app.state.store
    return store


def resolve(store: RunStore, id_or_prefix: str) -> str:
    """The flow run id an id or unique prefix names; 404/400 with the fix otherwise."""
    try:
        run_id = store.resolve_run_id(id_or_prefix)
    except AmbiguousRunIdError as exc:
        raise HTTPException(400, str(exc)) from None
    if run_id is None:
        raise HTTPException(404, f"No flow run with id {id_or_prefix!r}. Fix: copy an id from GET /api/flow-runs.")
    return run_id


def find_run(store: RunStore, id_or_prefix: str) -> FlowRunDetail:
    """The flow run an id or unique prefix names, without its task runs; 404/400 with the fix otherwise."""
    run = flow_run_header(store, resolve(store, id_or_prefix))
    if run is None:
        raise HTTPException(404, f"No flow run with id {id_or_prefix!r}. Fix: copy an id from GET /api/flow-runs.")
    return run


def _deployment(store: RunStore, name: str) -> deployment_rows.DeploymentRecord:
    record = deployment_rows.get_deployment(store, name)
    if record is None:
        raise HTTPException(404, f"No deployment named {name!r}. Fix: see GET /api/deployments.")
    return record


def _deployment_json(record: deployment_rows.DeploymentRecord, upcoming: int = 5) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(record)
    deployment = Deployment.from_record(record)
    try:
        times = deployment.upcoming_times(upcoming)
    except DaskflowError:
        times = []
    data["next_times"] = [t.isoformat() for t in times]
    return data


def build_router(read_only: bool) -> APIRouter:
    """The API routes; the state-changing ones only when not ``read_only``."""
    router = APIRouter(prefix="/api")

    @router.get("/health")
    def health(request: Request) -> dict[str, Any]:
        """Liveness, and the event poller's counts (answered without touching the database)."""
        hub: EventHub = request.app.state.hub
        return {
            "status": "ok",
            "version": __version__,
            "read_only": read_only,
            "store": _store(request).display_url,
            "event_clients": len(hub.subscribers),
            "event_polls": hub.polls,
            "event_poll_statements": hub.statements,
            "service": request.app.state.service_name,
        }

    @router.get("/flow-runs")
    def list_flow_runs(
        request: Request,
        flow: str | None = None,
        state: list[str] = Query(default=[]),
        deployment: str | None = None,
        tag: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = Query(default=50, ge=1, le=500),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        """Flow runs newest first, with task runs counted by state; filters combine.

        ``deployment`` and ``tag`` select the runs that a deployment (with that tag) started.
        """
        store = _store(request)
        deployment_ids: list[str] | None = None
        if deployment:
            deployment_ids = [_deployment(store, deployment).id]
        if tag:
            tagged = {d.id for d in deployment_rows.list_deployments(store) if tag in d.tags}
            deployment_ids = [d for d in deployment_ids if d in tagged] if deployment_ids is not None else list(tagged)
        page = flow_run_page(
            store,
            flow_name=flow,
            states=[s for s in state if s],
            deployment_ids=deployment_ids,
            since=parse_since(since, "since"),
            until=parse_since(until, "until"),
            limit=limit,
            offset=offset,
        )
        runs = [
            {**jsonable(run), "duration": run.duration, "task_counts": page.counts.get(run.id, {})} for run in page.runs
        ]
        return {"flow_runs": runs, "limit": limit, "offset": offset, "has_more": page.has_more}

    @router.get("/flow-runs/{run_id}")
    def get_flow_run(request: Request, run_id: str) -> dict[str, Any]:
        """One flow run: header, parameters, states, and its task runs counted by state."""
        store = _store(request)
        run = find_run(store, run_id)
        data: dict[str, Any] = jsonable(run)
        data.pop("task_runs")
        data["duration"] = run.duration
        data["task_counts"] = task_state_counts(store, run.id)
        data["task_runs_total"] = sum(data["task_counts"].values())
        data["is_final"] = run.state_type in FINAL_TYPE_NAMES  # the page's buttons follow it: one list, in states.py
        return data

    @router.get("/flow-runs/{run_id}/task-runs")
    def get_task_runs(
        request: Request,
        run_id: str,
        state: list[str] = Query(default=[]),
        name: str | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        """A page of a flow run's task runs in creation order, filtered by state and name."""
        store = _store(request)
        run_id = resolve(store, run_id)
        runs, more = task_run_page(store, run_id, states=[s for s in state if s], name=name, limit=limit, offset=offset)
        rows = [{**jsonable(r), "duration": r.duration, "retries": r.retries} for r in runs]
        return {"task_runs": rows, "limit": limit, "offset": offset, "has_more": more}

    @router.get("/flow-runs/{run_id}/logs")
    def get_logs(
        request: Request,
        run_id: str,
        after: int = Query(default=0, ge=0),
        level: int | None = Query(default=None, ge=0),
        limit: int = Query(default=500, ge=1, le=5000),
    ) -> dict[str, Any]:
        """Log records with ids above ``after``, oldest first: poll with the last id to tail."""
        store = _store(request)
        records = logs_after(store, resolve(store, run_id), after=after, min_level=level, limit=limit)
        rows = [{**jsonable(r), "level_name": r.level_name} for r in records]
        return {"logs": rows, "last_id": records[-1].id if records else after}

    @router.get("/deployments")
    def get_deployments(request: Request) -> dict[str, Any]:
        """Every deployment with its schedule and next 5 times."""
        return {"deployments": [_deployment_json(r) for r in deployment_rows.list_deployments(_store(request))]}

    @router.get("/concurrency")
    def get_concurrency(request: Request) -> dict[str, Any]:
        """Each limit of ``daskflow.concurrency.limits``: size, and the task runs holding and waiting now (by name or tag)."""
        sizes = dict(settings.get("concurrency.limits", None) or {})
        rates = dict(settings.get("concurrency.rate_limits", None) or {})
        return {"limits": limit_rows(_store(request), sizes), "rate_limits": rates}

    @router.get("/events")
    async def events(request: Request, flow_run_id: str | None = None) -> StreamingResponse:
        """Server-sent events: ``state`` (any run entering a state) and ``log`` (a log line)."""
        hub: EventHub = request.app.state.hub
        subscriber = await hub.subscribe(flow_run_id)
        return StreamingResponse(
            sse_stream(hub, subscriber, request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    if not read_only:
        _add_actions(router)
    return router


def _add_actions(router: APIRouter) -> None:
    @router.post("/flow-runs/{run_id}/cancel", status_code=202)
    def cancel(request: Request, run_id: str) -> dict[str, Any]:
        """Ask a running flow run to stop; it ends Cancelled within seconds."""
        store = _store(request)
        run = find_run(store, run_id)
        try:
            actions.cancel_flow_run(store, run)
        except actions.ActionError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"flow_run_id": run.id, "cancel_requested": True}

    @router.post("/flow-runs/{run_id}/retry", status_code=201)
    def retry(request: Request, run_id: str) -> dict[str, Any]:
        """A new run of the same flow with the same parameters (its cached tasks hit)."""
        store = _store(request)
        run = find_run(store, run_id)
        try:
            plan = actions.retry_plan(store, run)
        except actions.ActionError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"flow_run_id": actions.retry_in_background(store, plan), "retry_of": run.id}

    @router.post("/flow-runs/{run_id}/resume", response_model=None)
    def resume_run(
        request: Request, run_id: str, body: dict[str, Any] = Body(default_factory=dict)
    ) -> dict[str, Any] | JSONResponse:
        """Resume a run paused for input with ``{"run_input": {...}}``; an input that does not fit is a 422 naming the field."""
        store = _store(request)
        run = find_run(store, run_id)
        try:
            problems = actions.resume_with(store, run, body.get("run_input"))
        except actions.ActionError as exc:
            raise HTTPException(409, str(exc)) from None
        if problems:
            detail = [{"parameter": p.parameter, "message": p.message} for p in problems]
            return JSONResponse({"detail": detail}, status_code=422)
        return {"flow_run_id": run.id, "resumed": True}

    @router.post("/deployments/{name}/runs", status_code=201, response_model=None)
    def run_deployment(
        request: Request, name: str, body: dict[str, Any] = Body(default_factory=dict)
    ) -> dict[str, Any] | JSONResponse:
        """Queue a run of a deployment now with ``{"parameters": {...}}``; a bad parameter is a 422 naming it.

        The new flow run exists at once (``Scheduled``); a scheduling service starts it within its poll interval.
        """
        store = _store(request)
        record = _deployment(store, name)
        overrides = body.get("parameters", {})
        if not isinstance(overrides, dict):
            raise HTTPException(422, 'the body must be {"parameters": {"name": value, ...}}')
        deployment = Deployment.from_record(record)
        try:
            flow = deployment.load_flow()
        except DaskflowError as exc:
            raise HTTPException(409, f"deployment {name!r}: its flow cannot be imported here: {exc}") from None
        problems = actions.validate_parameters(flow, {**deployment.parameters, **overrides})
        given = {**deployment.parameters, **overrides}
        problems += [
            actions.ParameterProblem(field["name"], "a value is required")
            for field in actions.parameter_fields(flow, deployment.parameters)
            if field["required"] and field["name"] not in given
        ]
        if problems:
            detail = [{"parameter": p.parameter, "message": p.message} for p in problems]
            return JSONResponse({"detail": detail}, status_code=422)
        try:
            run_id = queue_deployment_run(deployment, store, overrides)
        except DaskflowError as exc:
            return JSONResponse({"detail": [{"parameter": None, "message": str(exc)}]}, status_code=422)
        # Queued, not run here: a scheduling service (this server's, or a `daskflow serve`) starts it.
        return {"flow_run_id": run_id, "deployment": record.name, "state": "Scheduled"}

    @router.post("/cache/{task_name}/clear")
    def clear_cache(task_name: str) -> dict[str, Any]:
        """Delete every result cache entry of one task (its next runs miss and recompute)."""
        from daskflow.results import ResultStore

        results = ResultStore()
        keys = [entry.key for entry in results.entries() if entry.task_name == task_name]
        deleted = sum(1 for key in keys if results.delete(key))
        return {"task_name": task_name, "deleted": deleted, "storage": results.url}

    @router.post("/deployments/{name}/pause")
    def pause(request: Request, name: str) -> dict[str, Any]:
        """Stop the scheduling service from firing it (manual runs still work)."""
        _deployment(_store(request), name)
        deployment_rows.set_paused(_store(request), name, True)
        return {"deployment": name, "paused": True}

    @router.post("/deployments/{name}/resume")
    def resume(request: Request, name: str) -> dict[str, Any]:
        """Let the scheduling service fire it again."""
        _deployment(_store(request), name)
        deployment_rows.set_paused(_store(request), name, False)
        return {"deployment": name, "paused": False}
