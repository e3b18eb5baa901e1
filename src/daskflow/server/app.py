"""The server's application: :func:`create_app` joins the API, the pages, the static files and security.

The app holds no state of its own beyond a connection pool and the event
poller: every answer is read from the run store when it is asked for, so two
servers over one PostgreSQL store serve the same pages, and a restart loses
nothing. Its lifespan opens the store (:class:`~daskflow.runstore.store.RunStore`,
which migrates it) and starts the :class:`~.events.EventHub`; both end with it.

The documentation of the API is ``/openapi.json`` (FastAPI's), and ``/docs``
is a small page of our own that lists the routes from it: FastAPI's default
``/docs`` loads Swagger UI from a CDN, which this server never does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from daskflow._version import __version__
from daskflow.runstore.store import RunStore
from daskflow.server.api import build_router
from daskflow.server.events import DEFAULT_INTERVAL, EventHub
from daskflow.server.pages import build_pages
from daskflow.server.security import SecurityMiddleware, ServerAccess

__all__ = ["ServerConfig", "create_app"]

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What one server serves: the run store's URL, who may use it, and how often events are polled."""

    store_url: str | None = None
    host: str = "127.0.0.1"  # the address bound: without a token, the Host header must name it (or loopback)
    token: str | None = None
    read_only: bool = False
    event_interval: float = DEFAULT_INTERVAL
    service_name: str | None = None  # the scheduling service running in this process, if any


def create_app(config: ServerConfig) -> FastAPI:
    """The ASGI app for ``config`` (``uvicorn.run(create_app(...))``, or a test client)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = RunStore(config.store_url)
        hub = EventHub(store, config.event_interval)
        app.state.store = store
        app.state.hub = hub
        hub.start()
        try:
            yield
        finally:
            await hub.stop()
            store.close()

    app = FastAPI(
        title="daskflow server",
        version=__version__,
        description="Flow runs, task runs, logs, deployments and live events of a daskflow run store.",
        docs_url=None,  # FastAPI's default loads Swagger UI from a CDN; /docs is ours (pages.py)
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service_name = config.service_name
    app.state.read_only = config.read_only
    app.state.token = config.token
    app.state.token_required = config.token is not None
    app.add_middleware(SecurityMiddleware, access=ServerAccess(config.token, config.read_only, config.host))
    app.include_router(build_router(config.read_only))
    app.include_router(build_pages(config.read_only))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
