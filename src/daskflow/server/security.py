"""Who may use the server, and what every answer carries: the token, sign-in, Origin checks, CSP.

The server has one secret, a token. Bound to a loopback address it may run
without one (only this machine can reach it); bound to any other address it
refuses to start without one (:func:`check_bind`). With a token:

* a script sends ``Authorization: Bearer <token>``;
* a browser signs in once at ``/login`` and then holds a cookie whose value is
  an HMAC of the token (so the cookie never *is* the token), ``HttpOnly`` (page
  script cannot read it) and ``SameSite=Strict`` (no other site's page sends it);
* every comparison is constant-time (:func:`hmac.compare_digest`).

A state-changing request (any method but GET and HEAD) must also come from the
server's own pages: a browser always sends ``Origin`` on such a request, and
an ``Origin`` that is not this server is refused (403), token or not, so no
other site can make a signed-in browser cancel a run. A script sends no
``Origin`` and passes on its token alone. Without a token, a request must also
name this machine in its ``Host`` header, so another site cannot reach the
server by pointing its own DNS name at 127.0.0.1. ``--read-only`` answers 405 to every
state-changing request except signing in.

Every answer carries a Content-Security-Policy that allows script only from
this server's own files (no inline script, no ``eval``), and headers that keep
pages out of frames and stop MIME sniffing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

__all__ = [
    "COOKIE_NAME",
    "CSP",
    "TOKEN_ENV",
    "SecurityMiddleware",
    "ServerAccess",
    "check_bind",
    "is_loopback",
    "read_token",
    "session_value",
]

TOKEN_ENV = "DASKFLOW_SERVER_TOKEN"
COOKIE_NAME = "daskflow_session"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN_PATHS = ("/login", "/static/")  # served to anyone: sign-in needs them
MAKE_TOKEN = (
    "Make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))' > ~/.daskflow/server-token "
    "&& chmod 600 ~/.daskflow/server-token, then pass --token-file ~/.daskflow/server-token "
    f"(or set {TOKEN_ENV})."
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str | None:
    """The token from ``token_file`` (first line), else from ``$DASKFLOW_SERVER_TOKEN``; None if neither."""
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"--token-file {token_file}: cannot be read ({exc.strerror}). {MAKE_TOKEN}") from None
        if len(text) < 16:
            raise ValueError(f"--token-file {token_file}: the token is shorter than 16 characters. {MAKE_TOKEN}")
        return text.splitlines()[0]
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value and len(value) < 16:
        raise ValueError(f"${TOKEN_ENV} is shorter than 16 characters. {MAKE_TOKEN}")
    return value or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token: anyone on the network could cancel runs."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"daskflow server: --host {host} is reachable from other machines, and no token is set, so anyone "
            f"there could read every run and start or cancel flows. {MAKE_TOKEN} Or bind 127.0.0.1."
        )


def session_value(token: str) -> str:
    """The cookie a signed-in browser holds: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"daskflow-server-session", hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ServerAccess:
    """The server's access settings: its token (None: open on loopback) and whether it is read-only."""

    token: str | None = None
    read_only: bool = False
    bind_host: str = "127.0.0.1"

    def host_allowed(self, host_header: str) -> bool:
        """Without a token, only this machine's names: a page of another site that rebinds its
        own DNS name to 127.0.0.1 (DNS rebinding) sends that name, and is refused."""
        if self.token is not None:
            return True
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        name = name.strip("[]")
        return is_loopback(name) or name == self.bind_host

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def authenticated(self, request: Request) -> tuple[bool, bool]:
        """(allowed, by_bearer): whether the request carries the token or a valid session cookie."""
        if self.token is None:
            return True, False
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return self.token_matches(value.strip()), True
        cookie = request.cookies.get(COOKIE_NAME, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(self.token).encode()), False


def _own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


class SecurityMiddleware(BaseHTTPMiddleware):
    """Applies :class:`ServerAccess` to every request and the security headers to every answer."""

    def __init__(self, app: object, access: ServerAccess) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.access = access

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        response = _security_headers(await self._checked(request, call_next))
        # How long the server took to the response's head (the benchmark's "server time").
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response

    async def _checked(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if not self.access.host_allowed(request.headers.get("host", "")):
            return PlainTextResponse(
                "Refused: this server answers only to its own address (Host header). Open it at "
                f"http://127.0.0.1 or http://{self.access.bind_host}.",
                status_code=421,
            )
        changing = request.method not in _SAFE_METHODS
        if changing:
            origin = request.headers.get("origin")
            if origin is not None and origin != _own_origin(request):
                return PlainTextResponse(
                    f"Refused: a {request.method} from origin {origin} (this server is {_own_origin(request)}). "
                    "State-changing requests are accepted only from the server's own pages or from scripts.",
                    status_code=403,
                )
            if self.access.read_only and path != "/login":
                return PlainTextResponse(
                    "This server runs with --read-only: it changes nothing. Use a server started without it.",
                    status_code=405,
                )
        if path.startswith(_OPEN_PATHS) or (path in ("/docs", "/openapi.json") and self.access.token is None):
            return await call_next(request)
        allowed, by_bearer = self.access.authenticated(request)
        if not allowed:
            if path.startswith("/api/") or path == "/openapi.json" or by_bearer:
                return JSONResponse(
                    {"detail": "Unauthorized: send 'Authorization: Bearer <token>' (the server's --token-file)."},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        if changing and not by_bearer and self.access.token is not None and request.headers.get("origin") is None:
            # A signed-in browser always sends Origin on a POST; a cookie without one is not our page.
            return PlainTextResponse("Refused: a state-changing request by cookie without Origin.", status_code=403)
        return await call_next(request)
