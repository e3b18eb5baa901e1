"""``daskflow server``: the web UI and REST API over the run store, and by default the scheduling service.

A thin shell over :func:`daskflow.server.create_app` on uvicorn. It resolves
the run store (``--url``, else the configured one), makes the flow runs that
the server starts (Retry, a deployment's Run) record their history in that same
store, and refuses to bind a non-loopback address without a token
(:func:`daskflow.server.security.check_bind`), saying how to make one. Unless
``--no-service``, the scheduling service (:class:`~daskflow.deployments.DeploymentService`)
runs on a thread of the same process and stops with the server; a team with
several servers over one PostgreSQL store runs it once, apart.

The server's packages are imported only when the command runs (the ``server``
extra), so the rest of the CLI works without them.
"""

from __future__ import annotations

import threading

import click
import dask.config

from daskflow.cli.history import url_option
from daskflow.cli.output import UsageProblem
from daskflow.deployments import DEFAULT_POLL_SECONDS
from daskflow.runstore.urls import mask_password, resolve_url

__all__ = ["server"]

_SERVICE_STOP_SECONDS = 30.0
_GRACEFUL_SECONDS = 2  # how long the server waits for the service's runs in flight after a stop


@click.command()
@url_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; any but loopback needs a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=4200, show_default=True, help="Port (0: any free one).")
@click.option(
    "--token-file", metavar="PATH", default=None,
    help="File whose first line is the token that API calls (Bearer) and browsers (sign-in) must give. "
    "Default: $DASKFLOW_SERVER_TOKEN, else none (loopback only).",
)  # fmt: skip
@click.option("--read-only", is_flag=True, help="Serve no state-changing route: no cancel, retry, run or pause.")
@click.option("--no-service", is_flag=True, help="Do not run the scheduling service in this process.")
@click.option(
    "--poll", "poll_seconds", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_POLL_SECONDS,
    show_default=True, metavar="SECONDS", help="How often the scheduling service re-reads the deployments.",
)  # fmt: skip
@click.option(
    "--event-interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True, metavar="SECONDS",
    help="How often the server reads what changed, for the live pages (once per server, whatever the clients).",
)  # fmt: skip
def server(
    url: str | None,
    host: str,
    port: int,
    token_file: str | None,
    read_only: bool,
    no_service: bool,
    poll_seconds: float,
    event_interval: float,
) -> None:
    """Serve the web UI and the REST API (http://127.0.0.1:4200) over the run store.

    Pages: flow runs (live), a flow run with its graph, timeline, task runs and
    log tail, deployments with a Run form, work pools, concurrency limits,
    artifacts, cache and blocks. The API is under /api (see /docs). Stop with
    Ctrl-C.
    """
    try:
        import uvicorn

        from daskflow.server import ServerConfig, create_app
        from daskflow.server.security import check_bind, read_token
    except ImportError as exc:
        raise UsageProblem(
            f"daskflow server needs the server extra ({exc.name} is missing). Fix: pip install 'daskflow[server]'."
        ) from None
    try:
        token = read_token(token_file)
        check_bind(host, token)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    resolved = resolve_url(url)
    stop = threading.Event()
    service_thread: threading.Thread | None = None
    service_name: str | None = None
    with dask.config.set({"daskflow.runstore.url": resolved}):
        if not no_service:
            from daskflow.deployments import DeploymentService

            service = DeploymentService(resolved, poll_seconds=poll_seconds)
            service_name = service.id
            service_thread = threading.Thread(target=service.run, args=(stop,), name="daskflow-service", daemon=True)
            service_thread.start()
        config = ServerConfig(
            store_url=resolved, host=host, token=token, read_only=read_only, event_interval=event_interval,
            service_name=service_name,
        )  # fmt: skip
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        click.echo(
            f"daskflow server on http://{shown}:{port} over {mask_password(resolved)}"
            + ("" if no_service else ", with the scheduling service")
            + (", read-only" if read_only else "")
            + (", token required" if token else ""),
            err=True,
        )
        try:
            # Event streams never end on their own: a stop gives them a moment, then closes them.
            uvicorn.run(
                create_app(config), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=_GRACEFUL_SECONDS,
            )  # fmt: skip
        finally:
            stop.set()
            if service_thread is not None:
                service_thread.join(_SERVICE_STOP_SECONDS)
