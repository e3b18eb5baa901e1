"""Notifiers as hooks, against real servers: an HTTP server and an SMTP server on loopback.

The HTTP server records every request and answers from a script of status
codes, so retries and refusals are real HTTP exchanges; the SMTP server is an
aiosmtpd ``Controller`` that records messages and checks a login. Hooks run
synchronously before a run reports its final state, so once a flow call
returns, everything its notifiers sent has been received.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import socket
import threading
from collections.abc import Iterator
from datetime import date
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from daskflow import flow, task
from daskflow.exceptions import ConfigurationError
from daskflow.notifications import EmailNotifier, WebhookNotifier, redact_url, text_body
from daskflow.runs import FlowRun
from daskflow.task_runners import DaskTaskRunner


class Webhook:
    """A loopback HTTP server that records POSTs and answers with scripted status codes."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.script: list[int] = []  # status codes to answer with, in order; then 200
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = recorder.script.pop(0) if recorder.script else 200
                recorder.received.put(
                    {"path": self.path, "headers": dict(self.headers), "body": body, "status": status}
                )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no" if status >= 400 else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self) -> list[dict[str, Any]]:
        items = []
        while not self.received.empty():
            items.append(self.received.get_nowait())
        return items

    def payloads(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.requests()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    server = Webhook()
    try:
        yield server
    finally:
        server.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mailbox:
    """An aiosmtpd handler and authenticator that records messages and logins."""

    def __init__(self) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.put(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "content": envelope.original_content or envelope.content,
                "authenticated": session.authenticated,
            }
        )
        return "250 OK"

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            self.logins.append((login, password))
            return AuthResult(success=(login, password) == ("robot", "s3cret"), handled=False)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=mailbox,
        auth_require_tls=False,
        server_hostname="mx.test",
    )
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def _failing_flow(notifier: Any, runs: list[FlowRun]) -> Any:
    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def explode(x: int) -> int:
        raise ValueError(f"boom at {x}")

    @flow(name="nightly-etl", on_failure=[notifier, lambda f, run, s: runs.append(run)])
    def etl(n: int, day: date, opaque: object = None) -> int:
        futures = [double.submit(i) for i in range(n)]
        bad = explode.submit(n)
        return sum(f.result() for f in futures) + bad.result()

    return etl


def test_a_failing_flow_posts_one_payload_naming_the_failed_task(webhook: Webhook) -> None:
    runs: list[FlowRun] = []
    etl = _failing_flow(WebhookNotifier(webhook.url, headers={"Authorization": "Bearer t0ken"}), runs)

    state = etl(3, date(2024, 5, 1), opaque=object(), return_state=True)

    assert state.is_failed(), state
    requests = webhook.requests()
    assert len(requests) == 1, f"expected one POST, got {requests}"
    request = requests[0]
    assert request["headers"]["Content-Type"] == "application/json", request["headers"]
    assert request["headers"]["Authorization"] == "Bearer t0ken", request["headers"]
    payload = json.loads(request["body"])
    run = runs[0]
    expected = {
        "kind": "flow",
        "name": "nightly-etl",
        "flow_name": "nightly-etl",
        "run_name": run.name,
        "run_id": run.id,
        "flow_run_id": run.id,
        "state": "Failed",
        "state_type": "FAILED",
        "host": socket.gethostname(),
        "inspect": f"daskflow runs show {run.id}",
        "task_run_counts": {"Completed": 3, "Failed": 1},
    }
    assert {k: payload.get(k) for k in expected} == expected, payload
    assert payload["parameters"]["n"] == 3 and payload["parameters"]["day"] == "2024-05-01", payload["parameters"]
    assert payload["parameters"]["opaque"].startswith("<object object at"), payload["parameters"]
    failed = payload["failed_task_runs"]
    assert [(f["task_name"], f["state"]) for f in failed] == [("explode", "Failed")], failed
    assert "ValueError: boom at 3" in failed[0]["message"], failed
    assert "boom at 3" in payload["message"] and "ValueError" in (payload["traceback"] or ""), payload
    assert payload["duration_seconds"] >= 0 and payload["start"] <= payload["end"], payload


def test_a_completing_flow_calls_its_completion_notifier_with_a_shaped_body(webhook: Webhook) -> None:
    url = webhook.url.replace("http://", "http://robot:p%40ss@")

    @flow(name="tidy", on_completion=[WebhookNotifier(url, body=text_body)], on_failure=[WebhookNotifier(webhook.url)])
    def tidy(x: int) -> int:
        return x + 1

    assert tidy(41) == 42
    requests = webhook.requests()
    assert [r["headers"].get("Authorization") for r in requests] == ["Basic cm9ib3Q6cEBzcw=="], requests
    payloads = [json.loads(r["body"]) for r in requests]
    assert len(payloads) == 1 and set(payloads[0]) == {"text"}, payloads
    text = payloads[0]["text"]
    assert "of flow 'tidy' ended Completed" in text and '{"x": 41}' in text and "daskflow runs show" in text, text


def test_a_task_notifier_on_the_dask_runner_posts_from_a_worker(webhook: Webhook, dask_client: Any) -> None:
    notifier = WebhookNotifier(webhook.url)

    @task(on_failure=[notifier])
    def load(table: str) -> None:
        raise RuntimeError(f"pid {os.getpid()} cannot load {table}")

    @flow(name="warehouse", task_runner=DaskTaskRunner(client=dask_client))
    def warehouse() -> None:
        load.submit("orders").result()

    state = warehouse(return_state=True)

    assert state.is_failed(), state
    payloads = webhook.payloads()
    assert len(payloads) == 1, payloads
    payload = payloads[0]
    assert (payload["kind"], payload["name"], payload["state"]) == ("task", "load", "Failed"), payload
    assert payload["flow_name"] == "warehouse" and payload["parameters"] == {"table": "orders"}, payload
    assert payload["inspect"] == f"daskflow runs show {payload['flow_run_id']}", payload
    worker_pid = int(payload["message"].split("pid ")[1].split()[0])
    assert worker_pid != os.getpid(), f"the task ran in the client process: {payload}"


def test_a_server_error_is_retried_then_delivered(webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    webhook.script = [500, 503]

    @flow(on_completion=[WebhookNotifier(webhook.url, retries=2, backoff_seconds=0.01)])
    def ok() -> str:
        return "done"

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert ok() == "done"
    requests = webhook.requests()
    assert [r["status"] for r in requests] == [500, 503, 200], requests
    assert len({r["body"] for r in requests}) == 1, "every attempt should send the same payload"
    assert not [r for r in caplog.records if r.name.startswith("daskflow.notifications")], caplog.text


def test_a_client_error_is_not_retried_and_is_a_warning(webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    webhook.script = [404]

    @flow(on_completion=[WebhookNotifier(webhook.url, retries=3, backoff_seconds=0.01)])
    def ok() -> int:
        return 1

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert ok() == 1
    assert [r["status"] for r in webhook.requests()] == [404]
    warnings = [r.getMessage() for r in caplog.records if r.name == "daskflow.notifications"]
    assert len(warnings) == 1 and "HTTP 404" in warnings[0] and "after 1 attempt:" in warnings[0], warnings


def test_an_unreachable_endpoint_is_a_redacted_warning_and_the_run_is_unaffected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()  # nothing listens there any more: connections are refused
    url = f"http://robot:hunter2@127.0.0.1:{port}/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX?token=abc123"
    notifier = WebhookNotifier(url, retries=1, backoff_seconds=0.0, timeout=2)

    @flow(name="steady", on_completion=[notifier])
    def steady() -> int:
        return 42

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        state = steady(return_state=True)

    assert state.is_completed() and state.result() == 42, state
    warnings = [r for r in caplog.records if r.name == "daskflow.notifications"]
    assert len(warnings) == 1, caplog.text
    text = warnings[0].getMessage()
    assert f"127.0.0.1:{port}" in text and "after 2 attempts" in text and "Connection" in text, text
    for secret in ("hunter2", "robot", "abc123", "XXXXXXXXXXXXXXXX"):
        assert secret not in text, f"{secret!r} leaked into the warning: {text}"
    assert getattr(warnings[0], "flow_run_id", None), "the warning should carry the run's id for the run history"


def test_an_email_arrives_with_subject_recipients_body_and_login(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    notifier = EmailNotifier(
        "127.0.0.1",
        port=port,
        from_addr="daskflow@example.com",
        to_addrs=["ops@example.com", "oncall@example.com"],
        username="robot",
        password="s3cret",
        timeout=5,
    )
    runs: list[FlowRun] = []
    etl = _failing_flow(notifier, runs)

    assert etl(2, date(2024, 5, 1), return_state=True).is_failed()

    received = mailbox.messages.get(timeout=10)
    assert mailbox.messages.empty(), "expected exactly one message"
    assert mailbox.logins == [("robot", "s3cret")] and received["authenticated"], (mailbox.logins, received)
    assert received["mail_from"] == "daskflow@example.com", received
    assert received["rcpt_tos"] == ["ops@example.com", "oncall@example.com"], received
    msg = message_from_bytes(received["content"], policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["Subject"] == f"[daskflow] flow 'nightly-etl' run '{runs[0].name}' Failed", msg["Subject"]
    assert msg["To"] == "ops@example.com, oncall@example.com", msg["To"]
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None, msg.as_string()
    text = plain.get_content()
    for expected in (
        "ended Failed",
        "explode-0 (explode) Failed: ValueError: boom at 2",
        "2 Completed, 1 Failed",
        f"daskflow runs show {runs[0].id}",
        "Traceback",
        '"day": "2024-05-01"',
    ):
        assert expected in text, f"{expected!r} not in the body:\n{text}"
    assert "boom at 2" in html.get_content(), html.get_content()


def test_a_refused_login_is_a_warning_not_a_failure(
    smtp_server: tuple[Mailbox, int], caplog: pytest.LogCaptureFixture
) -> None:
    mailbox, port = smtp_server
    notifier = EmailNotifier(
        "127.0.0.1",
        port=port,
        from_addr="daskflow@example.com",
        to_addrs="ops@example.com",
        username="robot",
        password="wrong",
        subject="ETL {state}: {message}",
        retries=2,
        backoff_seconds=0,
    )

    @flow(on_completion=[notifier])
    def ok() -> int:
        return 3

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert ok() == 3
    # smtplib tries each mechanism the server offers (PLAIN, then LOGIN) within one attempt;
    # a refused login is not retried.
    assert mailbox.messages.empty() and set(mailbox.logins) == {("robot", "wrong")}, mailbox.logins
    warnings = [r.getMessage() for r in caplog.records if r.name == "daskflow.notifications"]
    assert len(warnings) == 1, warnings
    assert "SMTP 535" in warnings[0] and "after 1 attempt:" in warnings[0] and "wrong" not in warnings[0], warnings


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: EmailNotifier("mx", from_addr="a@b.c", to_addrs=[]), "to_addrs is empty"),
        (lambda: EmailNotifier("mx", from_addr="a@b.c", to_addrs=["ops"]), "'ops' is not an e-mail address"),
        (
            lambda: EmailNotifier("mx", from_addr="a@b.c", to_addrs=["o@b.c"], ssl=True, starttls=True),
            "exclude each other",
        ),
        (lambda: EmailNotifier("mx", from_addr="a@b.c", to_addrs=["o@b.c"], password="p"), "without a username"),
        (lambda: EmailNotifier("mx", from_addr="a@b.c", to_addrs=["o@b.c"], subject="{flow}"), "refers to {flow}"),
        (lambda: WebhookNotifier("ftp://example.com/x"), "http:// or https:// URL"),
        (lambda: WebhookNotifier("https://example.com", timeout=0), "timeout must be"),
        (lambda: WebhookNotifier("https://example.com", retries=-1), "retries must be"),
        (lambda: WebhookNotifier("https://example.com", body="text"), "body must be a function"),
    ],
)
def test_bad_arguments_are_clear_errors_at_construction(factory: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("{", r"\{").replace("(", r"\(")):
        factory()


def test_notifiers_pickle_and_hide_secrets_in_repr() -> None:
    email = EmailNotifier(
        "mx.example.com", from_addr="a@b.c", to_addrs="o@b.c", username="u", password="p@ss", ssl=True
    )
    hook = WebhookNotifier("https://hooks.example.com/services/T0/B0/abcdefghijklmnopqrstuvwx?sig=xyz", body=text_body)
    assert email.port == 465 and email.to_addrs == ("o@b.c",)
    for notifier in (email, hook):
        copy = pickle.loads(pickle.dumps(notifier))
        assert type(copy) is type(notifier) and repr(copy) == repr(notifier)
    assert "p@ss" not in repr(email) and "password=***" in repr(email), repr(email)
    assert "abcdefghijklmnop" not in repr(hook) and "xyz" not in repr(hook), repr(hook)
    assert EmailNotifier("mx", from_addr="a@b.c", to_addrs="o@b.c", starttls=True).port == 587


def test_redact_url() -> None:
    assert redact_url("https://u:p@h.example:8443/a/b?token=t&x=1") == "https://***@h.example:8443/a/b?token=***&x=***"
    assert redact_url("https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX") == (
        "https://hooks.slack.com/services/T000/B000/***"
    )


def test_an_undeliverable_task_notification_on_a_worker_is_logged_on_the_client(
    dask_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = WebhookNotifier(f"http://127.0.0.1:{_free_port()}/hook", retries=0)

    @task(on_completion=[notifier])
    def noop() -> int:
        return os.getpid()

    @flow(task_runner=DaskTaskRunner(client=dask_client))
    def remote() -> int:
        return noop.submit().result()

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        worker_pid = remote()

    assert worker_pid != os.getpid()
    warnings = [r for r in caplog.records if "could not send" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert getattr(warnings[0], "task_name", None) == "noop", vars(warnings[0])


def test_a_broken_body_function_is_one_warning_and_no_request(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    def shape(payload: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("channel")

    @flow(on_completion=[WebhookNotifier(webhook.url, body=shape, backoff_seconds=0)])
    def ok() -> int:
        return 5

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert ok() == 5
    assert webhook.requests() == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "daskflow.notifications"]
    assert len(warnings) == 1 and "body 'shape' raised KeyError" in warnings[0] and "after 1 attempt" in warnings[0], (
        warnings
    )
