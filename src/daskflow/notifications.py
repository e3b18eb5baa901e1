"""Notifiers: ready-made ``on_failure`` / ``on_completion`` hooks that tell someone.

A notifier is a small frozen object that is itself a hook: the engine calls
``notifier(flow, flow_run, state)`` for a flow and ``notifier(task, task_run,
state)`` for a task, and the notifier turns that into a message::

    @flow(on_failure=[WebhookNotifier("https://hooks.example.com/etl")])
    def etl(): ...

Every notifier goes through the same two steps. :func:`build_payload` first
describes the run as plain JSON data (names, ids, state, timings, parameters,
for a flow its task runs by state and the failed ones with their errors, the
host, and the ``daskflow runs show`` command that inspects it); a webhook posts
that payload, an e-mail renders it with :func:`format_text`. Then the payload is
delivered with a few retries and a short backoff on errors that may pass
(connection refused, time-outs, HTTP 5xx/429, SMTP 4xx).

A notification must never change the run it reports on: a notifier catches
everything, and an undeliverable message is one WARNING record on the
``daskflow.notifications`` logger naming the destination (credentials and
tokens redacted) and the reason. The record carries the run's ids, so the run
history keeps it and, on a Dask worker, it is forwarded to the client.

Task hooks run where the task ran, which on Dask is a worker process: notifiers
hold only plain data (and a ``body`` callable, which cloudpickle carries), so
they pickle, and they look up nothing on the client. Delivery is synchronous
in the hook, so the run's final state is reported after its notification was
sent or given up on: the worst case is ``(retries + 1) * timeout`` seconds plus
the backoff.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import smtplib
import socket
import ssl as tls
import string
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from enum import Enum
from pathlib import PurePath
from typing import Any

from daskflow._version import __version__
from daskflow.context import get_task_run_context
from daskflow.exceptions import ConfigurationError
from daskflow.runs import FlowRun, TaskRun
from daskflow.states import State

__all__ = [
    "PAYLOAD_KEYS",
    "EmailNotifier",
    "Notifier",
    "WebhookNotifier",
    "build_payload",
    "format_text",
    "json_safe",
    "redact_url",
    "text_body",
]

_log = logging.getLogger("daskflow.notifications")

# Every key build_payload returns; a subject template may use any of them.
PAYLOAD_KEYS = (
    "kind",
    "name",
    "flow_name",
    "flow_run_name",
    "flow_run_id",
    "parent_flow_run_id",
    "task_name",
    "run_name",
    "run_id",
    "state",
    "state_type",
    "message",
    "start",
    "end",
    "duration_seconds",
    "attempts",
    "parameters",
    "task_run_counts",
    "failed_task_runs",
    "worker",
    "host",
    "inspect",
    "traceback",
)
_MAX_FAILED_LISTED = 20  # a map of 10,000 failed items must not become a 10,000-line message
_MAX_REPR = 300
_MAX_TRACEBACK = 8000


def build_payload(obj: Any, run: FlowRun | TaskRun, state: State) -> dict[str, Any]:
    """The facts of a finished flow run or task run as JSON-safe data.

    ``obj`` is the flow or task, ``run`` its run record and ``state`` the state
    the run ended in: the three arguments of a hook.
    """
    kind = "flow" if isinstance(run, FlowRun) else "task"
    payload: dict[str, Any] = dict.fromkeys(PAYLOAD_KEYS)
    payload.update(
        kind=kind,
        name=getattr(obj, "name", None) or getattr(run, "flow_name", None) or getattr(run, "task_name", None),
        run_name=run.name,
        run_id=run.id,
        state=state.name,
        state_type=state.type.value,
        message=state.message,
        start=_iso(run.start_time),
        end=_iso(run.end_time if run.end_time is not None else state.epoch),
        duration_seconds=round(run.duration, 3) if run.duration is not None else None,
        attempts=run.run_count,
        host=socket.gethostname(),
    )
    if isinstance(run, FlowRun):
        failed = [r for r in run.task_runs if r.state.is_failed() or r.state.is_crashed()]
        payload.update(
            flow_name=run.flow_name,
            flow_run_name=run.name,
            flow_run_id=run.id,
            parent_flow_run_id=run.parent_flow_run_id,
            parameters=json_safe(run.parameters),
            task_run_counts=run.task_run_counts(),
            failed_task_runs=[
                {"name": r.name, "task_name": r.task_name, "state": r.state.name, "message": r.state.message}
                for r in failed[:_MAX_FAILED_LISTED]
            ],
        )
        if len(failed) > _MAX_FAILED_LISTED:
            payload["failed_task_runs"].append({"name": f"... and {len(failed) - _MAX_FAILED_LISTED} more"})
    else:
        payload.update(task_name=run.task_name, flow_run_id=run.flow_run_id, worker=run.worker)
        # Inside the task's own context (where the engine calls its hooks) the flow's
        # names and the task's arguments are known, on a worker too.
        ctx = get_task_run_context()
        if ctx is not None and ctx.task_run is run:
            payload.update(
                flow_name=ctx.flow_name, flow_run_name=ctx.flow_run_name, parameters=json_safe(ctx.parameters)
            )
    if payload["flow_run_id"]:
        payload["inspect"] = f"daskflow runs show {payload['flow_run_id']}"
    if state.traceback:
        payload["traceback"] = state.traceback[-_MAX_TRACEBACK:]
    return payload


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON data: containers and scalars kept, anything else its (short) repr."""
    # `type(...) in` rather than isinstance: a str or dict subclass (a secret wrapper, say)
    # is shown through its own repr, which is where such types hide what they hold.
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if depth < 6:
        if kind is dict:
            return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
        if kind in (list, tuple, set, frozenset):
            items = sorted(value, key=repr) if kind in (set, frozenset) else value
            return [json_safe(v, depth + 1) for v in items]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Enum):
        return json_safe(value.value, depth + 1)
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not lose the notification
        text = f"<{kind.__name__}>"
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def format_text(payload: Mapping[str, Any]) -> str:
    """A plain-text report of a payload, as an e-mail body or a chat message."""
    lines = [f"{_headline(payload)}."]
    if payload.get("message"):
        lines.append(f"  {payload['message']}")
    lines.append("")
    for label, value in _facts(payload):
        lines.append(f"  {label:<12}{value}")
    failed = payload.get("failed_task_runs") or []
    if failed:
        lines += ["", "Failed task runs:"]
        lines += [f"  - {_failed_line(item)}" for item in failed]
    if payload.get("inspect"):
        lines += ["", "Inspect it with:", f"  {payload['inspect']}"]
    if payload.get("traceback"):
        lines += ["", "Traceback:", str(payload["traceback"]).rstrip()]
    return "\n".join(lines) + "\n"


def text_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``{"text": ...}``: a ``body`` for Slack, Mattermost and Teams incoming webhooks."""
    text = format_text({**payload, "traceback": None})
    return {"text": text}


def _headline(payload: Mapping[str, Any]) -> str:
    if payload["kind"] == "flow":
        return f"Flow run {payload['run_name']!r} of flow {payload['name']!r} ended {payload['state']}"
    where = f" in flow run {payload['flow_run_name']!r}" if payload.get("flow_run_name") else ""
    return f"Task run {payload['run_name']!r} of task {payload['name']!r}{where} ended {payload['state']}"


def _facts(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    facts = [("state", f"{payload['state']} ({payload['state_type']})")]
    for label, key in (("started", "start"), ("ended", "end")):
        if payload.get(key):
            facts.append((label, str(payload[key])))
    if payload.get("duration_seconds") is not None:
        facts.append(("duration", f"{payload['duration_seconds']:.3f} s"))
    if (payload.get("attempts") or 0) > 1:
        facts.append(("attempts", str(payload["attempts"])))
    if payload.get("parameters"):
        facts.append(("parameters", json.dumps(payload["parameters"], sort_keys=True)))
    counts = payload.get("task_run_counts")
    if counts:
        facts.append(("task runs", ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))))
    for label, key in (("run id", "run_id"), ("flow run id", "flow_run_id"), ("worker", "worker"), ("host", "host")):
        if payload.get(key) and not (key == "flow_run_id" and payload["kind"] == "flow"):
            facts.append((label, str(payload[key])))
    return facts


def _failed_line(item: Mapping[str, Any]) -> str:
    if "task_name" not in item:
        return str(item.get("name"))
    return f"{item['name']} ({item['task_name']}) {item['state']}: {item.get('message') or ''}".rstrip(": ")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat()


class _Permanent(Exception):
    """A delivery error that retrying will not fix (HTTP 4xx, a refused login)."""


@dataclass(frozen=True, eq=False, kw_only=True)
class Notifier:
    """Base of the notifiers: a hook that builds the payload and delivers it, never raising.

    Subclasses implement :meth:`deliver` (raise :class:`_Permanent` for errors
    not worth retrying; any other exception is retried) and :meth:`destination`.
    """

    timeout: float = 10.0
    retries: int = 2
    backoff_seconds: float = 0.5

    def __post_init__(self) -> None:
        where = type(self).__name__
        if not _is_number(self.timeout) or self.timeout <= 0:
            raise ConfigurationError(f"{where}: timeout must be a number of seconds > 0, got {self.timeout!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"{where}: retries must be a whole number >= 0, got {self.retries!r}")
        if not _is_number(self.backoff_seconds) or self.backoff_seconds < 0:
            raise ConfigurationError(f"{where}: backoff_seconds must be a number >= 0, got {self.backoff_seconds!r}")

    def __call__(self, obj: Any, run: FlowRun | TaskRun, state: State) -> None:
        try:
            payload = build_payload(obj, run, state)
            attempts = self._send(payload)
        except Exception as exc:  # a notifier must never fail or change the run it reports on
            self._warn(run, state, f"{type(exc).__name__}: {exc}", None)
            return
        if attempts is not None:
            self._warn(run, state, *attempts)

    def deliver(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def destination(self) -> str:
        raise NotImplementedError

    def _send(self, payload: dict[str, Any]) -> tuple[str, int] | None:
        """Deliver with retries; None once delivered, else (the last reason, attempts made)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                self.deliver(payload)
                return None
            except _Permanent as exc:
                return str(exc), attempt
            except Exception as exc:
                if attempt > self.retries:
                    return _reason(exc), attempt
            # Doubling from a short start: a restarting endpoint gets a moment, a run little delay.
            time.sleep(min(self.backoff_seconds * 2 ** (attempt - 1), 30.0))

    def _warn(self, run: FlowRun | TaskRun, state: State, reason: str, attempts: int | None) -> None:
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        kind = "flow" if isinstance(run, FlowRun) else "task"
        _log.warning(
            "could not send the %s notification of %s run %r to %s%s: %s",
            state.name,
            kind,
            run.name,
            self.destination(),
            tries,
            reason,
            extra=_record_extra(run),
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _record_extra(run: FlowRun | TaskRun) -> dict[str, Any]:
    # The ids a run logger would stamp: the run history files the record under the
    # run, and a Dask worker forwards it to the client (records without them stay local).
    if isinstance(run, FlowRun):
        return {
            "flow_run_id": run.id,
            "flow_run_name": run.name,
            "flow_name": run.flow_name,
            "task_run_id": None,
            "run_label": f"Flow run {run.name!r}",
        }
    ctx = get_task_run_context()
    in_ctx = ctx is not None and ctx.task_run is run
    return {
        "flow_run_id": run.flow_run_id,
        "flow_run_name": ctx.flow_run_name if in_ctx and ctx is not None else None,
        "flow_name": ctx.flow_name if in_ctx and ctx is not None else None,
        "task_run_id": run.id,
        "task_run_name": run.name,
        "task_name": run.task_name,
        "run_label": f"Task run {run.name!r}",
    }


def redact_url(url: str) -> str:
    """``url`` fit for a log: no user or password, no query values, no long path tokens."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = ("***@" if "@" in parts.netloc else "") + host + (f":{port}" if port else "")
    # Slack, Teams and Discord put the secret in the path: long segments are tokens.
    path = "/".join("***" if len(seg) >= 16 else seg for seg in parts.path.split("/"))
    query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, ""))


def _split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@`` part, and that part as a Basic auth header."""
    # urllib would take "user:password@host" for the host name; curl and requests send Basic auth.
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=hostport)), f"Basic {token}"


@dataclass(frozen=True, eq=False)
class WebhookNotifier(Notifier):
    """POST the run's payload as JSON to ``url``.

    A ``user:password@`` in the URL is sent as HTTP Basic auth. ``headers`` are
    added to the request (e.g. an ``Authorization`` token);
    ``body``, a function of the payload, reshapes it for the endpoint
    (:func:`text_body` suits Slack and Teams). Connection errors, time-outs
    and HTTP 5xx/429 answers are retried ``retries`` times.
    """

    url: str
    _: KW_ONLY
    headers: Mapping[str, str] | None = None
    body: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = urllib.parse.urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"WebhookNotifier: url must be an http:// or https:// URL with a host, "
                f"got {redact_url(self.url) if isinstance(self.url, str) else self.url!r}"
            )
        headers = dict(self.headers or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ConfigurationError("WebhookNotifier: headers must map header names to string values")
        object.__setattr__(self, "headers", headers)  # a private copy: the notifier stays as built
        if self.body is not None and not callable(self.body):
            raise ConfigurationError(
                f"WebhookNotifier: body must be a function of the payload returning the JSON to send, "
                f"e.g. daskflow.notifications.text_body; got {type(self.body).__name__}"
            )

    def destination(self) -> str:
        return redact_url(self.url)

    def deliver(self, payload: dict[str, Any]) -> None:
        try:
            document = payload if self.body is None else self.body(payload)
        except Exception as exc:  # a bug in `body` fails the same way on every attempt
            name = getattr(self.body, "__name__", self.body)
            raise _Permanent(f"body {name!r} raised {type(exc).__name__}: {exc}") from None
        data = json.dumps(document, default=repr).encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"daskflow/{__version__}"}
        url, basic = _split_credentials(self.url)
        if basic is not None:
            headers["Authorization"] = basic
        headers.update(self.headers or {})
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise
            detail = exc.read(200).decode("utf-8", "replace").strip()
            raise _Permanent(f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, tls.SSLCertVerificationError):
                raise _Permanent(f"TLS certificate not trusted: {exc.reason}") from None
            raise

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.destination()!r}, retries={self.retries}, timeout={self.timeout})"


@dataclass(frozen=True, eq=False)
class EmailNotifier(Notifier):
    """Send the run's report by e-mail through an SMTP server.

    ``port`` defaults to 465 with ``ssl=True``, else 587 with ``starttls=True``,
    else 25. ``starttls=None`` upgrades the connection when the server offers
    it; ``True`` requires it, ``False`` never tries. ``subject`` is a format
    string over the payload's keys (:data:`PAYLOAD_KEYS`), e.g.
    ``"ETL {state}: {message}"``. The password never appears in the repr.
    """

    smtp_host: str
    _: KW_ONLY
    from_addr: str
    to_addrs: Sequence[str]
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool | None = None
    ssl: bool = False
    subject: str | None = None
    html: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        where = "EmailNotifier"
        if not isinstance(self.smtp_host, str) or not self.smtp_host.strip():
            raise ConfigurationError(f"{where}: smtp_host must be a host name, got {self.smtp_host!r}")
        recipients = [self.to_addrs] if isinstance(self.to_addrs, str) else list(self.to_addrs or ())
        if not recipients:
            raise ConfigurationError(
                f"{where}: to_addrs is empty; give at least one address, e.g. to_addrs=['ops@example.com']"
            )
        for address in (self.from_addr, *recipients):
            if not isinstance(address, str) or "@" not in address or any(c in address for c in "\r\n"):
                raise ConfigurationError(f"{where}: {address!r} is not an e-mail address like 'ops@example.com'")
        object.__setattr__(self, "to_addrs", tuple(recipients))
        if self.ssl and self.starttls:
            raise ConfigurationError(
                f"{where}: ssl=True and starttls=True exclude each other: use ssl=True for implicit TLS "
                "(usually port 465) or starttls=True to upgrade a plain connection (usually port 587)"
            )
        if self.port is None:
            object.__setattr__(self, "port", 465 if self.ssl else 587 if self.starttls else 25)
        elif isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigurationError(f"{where}: port must be a whole number from 1 to 65535, got {self.port!r}")
        if self.password is not None and not self.username:
            raise ConfigurationError(f"{where}: a password was given without a username; give username=... too")
        if self.subject is not None:
            unknown = [n for _, n, _, _ in string.Formatter().parse(self.subject) if n and n not in PAYLOAD_KEYS]
            if unknown:
                raise ConfigurationError(
                    f"{where}: subject {self.subject!r} refers to {{{unknown[0]}}}, which is not a payload key; "
                    f"use one of: {', '.join(PAYLOAD_KEYS)}"
                )

    def destination(self) -> str:
        return f"smtp://{self.smtp_host}:{self.port} (to {', '.join(self.to_addrs)})"

    def message(self, payload: Mapping[str, Any]) -> EmailMessage:
        """The e-mail for ``payload``: plain text, with an HTML alternative unless ``html=False``."""
        msg = EmailMessage()
        if self.subject is not None:
            subject = self.subject.format(**payload)
        else:
            subject = f"[daskflow] {payload['kind']} {payload['name']!r} run {payload['run_name']!r} {payload['state']}"
        msg["Subject"] = " ".join(subject.split())  # a newline in a header would end it
        msg["From"] = self.from_addr
        msg["To"] = ", ".join(self.to_addrs)
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=str(payload.get("host") or "daskflow"))
        if payload.get("flow_run_id"):
            msg["X-Daskflow-Flow-Run-Id"] = str(payload["flow_run_id"])
        text = format_text(payload)
        msg.set_content(text)
        if self.html:
            msg.add_alternative(_html(payload), subtype="html")
        return msg

    def deliver(self, payload: dict[str, Any]) -> None:
        msg = self.message(payload)
        context = tls.create_default_context()
        port = self.port or 25
        smtp: smtplib.SMTP
        try:
            if self.ssl:
                smtp = smtplib.SMTP_SSL(self.smtp_host, port, timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.smtp_host, port, timeout=self.timeout)
            with smtp:
                smtp.ehlo()
                if not self.ssl and (self.starttls or (self.starttls is None and smtp.has_extn("starttls"))):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(msg, self.from_addr, list(self.to_addrs))
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                raise  # a temporary refusal (greylisting, busy): worth another try
            raise _Permanent(f"SMTP {exc.smtp_code}: {_smtp_text(exc.smtp_error)}") from None
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPNotSupportedError, tls.SSLCertVerificationError) as exc:
            raise _Permanent(f"{type(exc).__name__}: {exc}") from None
        if refused:
            _log.warning("the SMTP server refused some recipients of a notification: %s", ", ".join(refused))

    def __repr__(self) -> str:
        auth = f", username={self.username!r}, password=***" if self.username else ""
        return f"EmailNotifier({self.smtp_host!r}, port={self.port}, to_addrs={list(self.to_addrs)!r}{auth})"


def _smtp_text(error: bytes | str) -> str:
    return error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)


def _html(payload: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th align='left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        for label, value in _facts(payload)
    )
    parts = [f"<p><b>{html.escape(_headline(payload))}</b></p>"]
    if payload.get("message"):
        parts.append(f"<p>{html.escape(str(payload['message']))}</p>")
    parts.append(f"<table>{rows}</table>")
    failed = payload.get("failed_task_runs") or []
    if failed:
        items = "".join(f"<li>{html.escape(_failed_line(item))}</li>" for item in failed)
        parts.append(f"<p>Failed task runs:</p><ul>{items}</ul>")
    if payload.get("inspect"):
        parts.append(f"<p>Inspect it with <code>{html.escape(str(payload['inspect']))}</code></p>")
    if payload.get("traceback"):
        parts.append(f"<pre>{html.escape(str(payload['traceback']))}</pre>")
    return f"<html><body>{''.join(parts)}</body></html>"
