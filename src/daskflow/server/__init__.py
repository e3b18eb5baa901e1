"""The daskflow server: a live web UI and a REST API over the run store (``daskflow server``).

It needs the ``server`` extra (FastAPI, Starlette, uvicorn, Jinja2) and is
never imported by ``import daskflow``: workers and flows do not need it.

* :mod:`.app` — :func:`create_app` and :class:`ServerConfig`: the ASGI app;
* :mod:`.api` — the JSON API under ``/api`` (documented at ``/openapi.json``);
* :mod:`.pages` — the HTML pages, and ``templates/`` and ``static/`` beside them;
* :mod:`.events` — one poller per server feeding every ``/api/events`` stream;
* :mod:`.actions` — cancel, retry, run a deployment, parameter forms;
* :mod:`.security` — the token, sign-in, Origin checks, read-only, CSP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daskflow.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: ``daskflow runs retry`` uses :mod:`.actions` without FastAPI installed.
    if name in __all__:
        from daskflow.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'daskflow.server' has no attribute {name!r}")
