"""The UI's pages: Jinja2 templates over the run store, made live by ``static/app.js``.

Each page is rendered on the server with what does not change while one
watches it (a deployment's schedule, a run's parameters, its artifacts); the
parts that do change — the runs list, a run's state and counts, its task runs
table and its log tail — are filled by ``app.js`` from the JSON API and
refreshed on the server-sent events, so a page never reloads to stay current.
Whatever a user's code wrote reaches the page either through Jinja2's
autoescaping or through ``textContent`` in the script, never as markup; the
only HTML that is not escaped here is what :mod:`daskflow.report` already
made safe (the graph and timeline SVG, rendered artifacts). A page's script
finds its parameters in ``data-`` attributes, not in inline script, which the
Content-Security-Policy forbids.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from daskflow import settings
from daskflow.deployments import Deployment
from daskflow.exceptions import DaskflowError
from daskflow.report.artifact_html import render_artifact, safe_href
from daskflow.report.layout import layout_graph, layout_timeline
from daskflow.report.model import STATE_STYLES, format_duration, format_time, group_edges, group_task_runs
from daskflow.report.sections import badge
from daskflow.report.svg import graph_svg, timeline_svg
from daskflow.runstore import deployments as deployment_rows
from daskflow.runstore.blocks import list_blocks
from daskflow.runstore.queries import (
    started_by,
    task_run,
    task_runs_by_id,
    task_runs_for_drawing,
    task_state_counts,
)
from daskflow.runstore.store import RunStore
from daskflow.server import actions
from daskflow.server.api import find_run
from daskflow.server.concurrency import limit_rows
from daskflow.server.pools import pool_rows
from daskflow.server.security import COOKIE_NAME, ServerAccess, session_value

__all__ = ["build_pages"]

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every {{ value }} is escaped; only Markup from the report's safe renderers is not
    undefined=jinja2.StrictUndefined,
)
_TEMPLATES.filters["when"] = format_time
_TEMPLATES.filters["duration"] = format_duration
_TEMPLATES.filters["badge"] = lambda run: Markup(badge(run.state_type, run.state_name))
_TEMPLATES.filters["tojson_text"] = lambda value: json.dumps(value, indent=2, default=str, sort_keys=True)
_TEMPLATES.filters["urlpart"] = lambda value: quote(str(value), safe="")
_NAV = (
    ("/", "Runs"),
    ("/deployments", "Deployments"),
    ("/work-pools", "Work pools"),
    ("/concurrency", "Concurrency limits"),
    ("/artifacts", "Artifacts"),
    ("/cache", "Cache"),
    ("/blocks", "Blocks"),
    ("/docs", "API"),
)
_LEVELS = (("DEBUG", 10), ("INFO", 20), ("WARNING", 30), ("ERROR", 40), ("CRITICAL", 50))


def _store(request: Request) -> RunStore:
    store: RunStore = request.app.state.store
    return store


def _page(request: Request, template: str, page: str, **values: Any) -> HTMLResponse:
    html = _TEMPLATES.get_template(template).render(
        nav=_NAV,
        page=page,
        path=request.url.path,
        read_only=request.app.state.read_only,
        signed_in=request.app.state.token_required,
        state_styles=STATE_STYLES,
        **values,
    )
    return HTMLResponse(html)


def _dashboard(link: str | None, state_type: str) -> str | None:
    """The Dask dashboard to link to: while the run has not ended (a cluster it started ends with
    it), and only a web address (a stored ``javascript:`` is no link)."""
    if link is None or state_type in actions.FINAL_TYPES:
        return None
    return safe_href(link) if link.lower().startswith(("http://", "https://")) else None


def build_pages(read_only: bool) -> APIRouter:
    """The HTML routes (the buttons on them call the API, so read-only needs nothing removed here)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def runs_page(request: Request) -> HTMLResponse:
        records = deployment_rows.list_deployments(_store(request))
        flows = sorted({d.flow_name for d in records})
        tags = sorted({t for d in records for t in d.tags})
        return _page(
            request, "runs.html", "runs", flows=flows, deployments=[d.name for d in records], tags=tags,
            params=dict(request.query_params),
        )  # fmt: skip

    @router.get("/flow-runs/{run_id}")
    def flow_run_page(request: Request, run_id: str) -> Response:
        store = _store(request)
        run = find_run(store, run_id)
        if run.id != run_id:
            return RedirectResponse(f"/flow-runs/{run.id}", status_code=307)
        artifacts = sorted(store.artifacts(flow_run_id=run.id, limit=200), key=lambda a: (a.created, a.id))
        rendered = [(a, Markup(render_artifact(a))) for a in artifacts]
        subflows = store.list_flow_runs(parent_flow_run_id=run.id, limit=100)
        parent = None if run.parent_flow_run_id is None else store.resolve_run_id(run.parent_flow_run_id)
        pause = actions.pause_of(store, run)
        resume = None if pause is None else actions.resume_fields(pause.schema)
        return _page(
            request, "flow_run.html", "flow-run", run=run, artifacts=rendered, subflows=subflows,
            parent=parent, levels=_LEVELS, started_by=started_by(store, run.id),
            dashboard=_dashboard(run.dashboard_link, run.state_type), resume=resume,
            field_values={f["name"]: _field_value(f) for f in resume or []},
        )  # fmt: skip

    @router.get("/flow-runs/{run_id}/graph.svg")
    def graph(request: Request, run_id: str) -> Response:
        return _drawing(_store(request), run_id, "graph")

    @router.get("/flow-runs/{run_id}/timeline.svg")
    def timeline(request: Request, run_id: str) -> Response:
        return _drawing(_store(request), run_id, "timeline")

    @router.get("/task-runs/{task_run_id}")
    def task_run_page(request: Request, task_run_id: str) -> HTMLResponse:
        store = _store(request)
        found = task_run(store, task_run_id)
        if found is None:
            raise HTTPException(404, f"No task run with id {task_run_id!r}.")
        logs = store.logs(found.flow_run_id, task_run_id=found.id, limit=1000) if found.flow_run_id else []
        return _page(
            request, "task_run.html", "task-run", run=found, states=store.states(found.id), logs=logs,
            upstream=task_runs_by_id(store, found.upstream_ids),
        )  # fmt: skip

    @router.get("/deployments")
    def deployments_page(request: Request) -> HTMLResponse:
        store = _store(request)
        records = deployment_rows.list_deployments(store)
        rows = []
        for record in records:
            deployment = Deployment.from_record(record)
            try:
                upcoming = deployment.upcoming_times(5)
            except DaskflowError:
                upcoming = []
            recent = deployment_rows.list_runs(store, record.id, limit=5, newest_first=True)
            rows.append((record, deployment, upcoming, recent))
        return _page(request, "deployments.html", "deployments", rows=rows)

    @router.get("/deployments/{name}")
    def deployment_page(request: Request, name: str) -> HTMLResponse:
        store = _store(request)
        record = deployment_rows.get_deployment(store, name)
        if record is None:
            raise HTTPException(404, f"No deployment named {name!r}.")
        deployment = Deployment.from_record(record)
        problem, fields = None, []
        try:
            fields = actions.parameter_fields(deployment.load_flow(), deployment.parameters)
        except DaskflowError as exc:
            problem = str(exc)
        recent = deployment_rows.list_runs(store, record.id, limit=20, newest_first=True)
        return _page(
            request, "deployment.html", "deployment", record=record, deployment=deployment, fields=fields,
            problem=problem, recent=recent, field_values={f["name"]: _field_value(f) for f in fields},
        )  # fmt: skip

    @router.get("/work-pools")
    def work_pools_page(request: Request) -> HTMLResponse:
        rows = pool_rows(deployment_rows.list_deployments(_store(request)))
        return _page(request, "work_pools.html", "work-pools", rows=rows)

    @router.get("/concurrency")
    def concurrency_page(request: Request) -> HTMLResponse:
        limits = limit_rows(_store(request), dict(settings.get("concurrency.limits", None) or {}))
        rates = dict(settings.get("concurrency.rate_limits", None) or {})
        return _page(request, "concurrency.html", "concurrency", limits=limits, rates=rates)

    @router.get("/artifacts")
    def artifacts_page(request: Request, key: str | None = None) -> HTMLResponse:
        store = _store(request)
        found = store.artifacts(key=key or None, limit=200)
        by_key: dict[str, list[Any]] = {}
        for artifact in found:
            by_key.setdefault(artifact.key or "(no key)", []).append(artifact)
        latest = [(k, v, Markup(render_artifact(v[0]))) for k, v in by_key.items()]
        return _page(request, "artifacts.html", "artifacts", latest=latest, key=key)

    @router.get("/cache")
    def cache_page(request: Request) -> HTMLResponse:
        from daskflow.results import ResultStore

        problem: str | None = None
        per_task: dict[str, tuple[int, int, Any]] = {}
        try:
            results = ResultStore()
            for entry in results.entries():
                count, size, newest = per_task.get(entry.task_name, (0, 0, entry.created))
                per_task[entry.task_name] = (count + 1, size + entry.size, max(newest, entry.created))
            where = results.url
        except (DaskflowError, OSError) as exc:
            problem, where = str(exc), ""
        return _page(request, "cache.html", "cache", per_task=sorted(per_task.items()), where=where, problem=problem)

    @router.get("/blocks")
    def blocks_page(request: Request) -> HTMLResponse:
        # Names and kinds only: a block's data never leaves the server, encrypted or not.
        blocks = [(b.kind, b.name, b.updated) for b in list_blocks(_store(request))]
        return _page(request, "blocks.html", "blocks", blocks=blocks)

    @router.get("/docs")
    def docs_page(request: Request) -> HTMLResponse:
        routes = sorted(
            (path, method.upper(), (op.get("summary") or ""), (op.get("description") or "").split("\n")[0])
            for path, ops in request.app.openapi()["paths"].items()
            for method, op in ops.items()
        )
        return _page(request, "docs.html", "docs", routes=routes)

    @router.get("/login")
    def login_page(request: Request, next: str = "/", failed: bool = False) -> HTMLResponse:
        return _page(request, "login.html", "login", next=next if next.startswith("/") else "/", failed=failed)

    @router.post("/login")
    def login(request: Request, token: str = Form(...), next: str = Form("/")) -> Response:
        configured: str | None = request.app.state.token
        if configured is None or not ServerAccess(configured).token_matches(token):
            return RedirectResponse(f"/login?failed=1&next={quote(next)}", status_code=303)
        # Only a path of this server: "//host" and "/\\host" are other sites to a browser.
        target = next if next.startswith("/") and not next.startswith(("//", "/\\")) else "/"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE_NAME, session_value(configured), httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path="/",
        )  # fmt: skip
        return response

    return router


def _field_value(field: dict[str, Any]) -> str:
    value = field["default"]
    if value is None:
        return ""
    if field["input"] == "json" or isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


# The drawings of the last few runs looked at, by run id, with what they were drawn from: the
# run's state and its task runs' counts by state. A finished run is drawn once, however often it
# is viewed; a running one again when a count moved. The page asks for the graph and the timeline
# at once: both are drawn from one read, the second request waiting for the first. Only a cache:
# every entry is checked against the database, so servers sharing a store still agree.
_DRAWINGS: OrderedDict[str, tuple[Any, dict[str, str]]] = OrderedDict()
_DRAWINGS_KEPT = 16
_drawing_lock = threading.Lock()


def _drawing(store: RunStore, run_id: str, kind: str) -> Response:
    run = find_run(store, run_id)
    fingerprint = (run.updated, run.state_name, tuple(sorted(task_state_counts(store, run.id).items())))
    with _drawing_lock:
        cached = _DRAWINGS.get(run.id)
        if cached is None or cached[0] != fingerprint:
            runs = task_runs_for_drawing(store, run.id)
            groups = group_task_runs(runs)
            edges = group_edges(groups)
            starts = [r.start_time for r in runs if r.start_time is not None]
            origin = min([m for m in (run.start_time, *starts) if m is not None], default=run.created)
            drawn = {
                "graph": graph_svg(groups, edges, layout_graph(len(groups), list(edges))),
                "timeline": timeline_svg(layout_timeline(runs, origin)),
            }
            cached = _DRAWINGS[run.id] = (fingerprint, drawn)
            while len(_DRAWINGS) > _DRAWINGS_KEPT:
                _DRAWINGS.popitem(last=False)
        _DRAWINGS.move_to_end(run.id)
    return Response(_as_svg(cached[1][kind]), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


def _as_svg(drawing: str) -> str:
    """The drawing, or the report's note for nothing to draw (HTML: a broken image in an <img>) as an SVG line."""
    if drawing.lstrip().startswith("<svg"):
        return drawing
    text = escape(Markup(drawing).striptags())
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{8 * len(text) + 16}" height="28" font-family="sans-serif" '
        f'font-size="13"><text x="4" y="18" fill="#6b7280">{text}</text></svg>'
    )
