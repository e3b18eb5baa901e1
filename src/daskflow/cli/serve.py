"""``daskflow serve``: run the scheduling service in the foreground until stopped.

A thin shell over :class:`~daskflow.deployments.service.DeploymentService`:
it resolves the run store (``--url``, else the configured one), makes the flow
runs record their history in that same store, turns the console log on (one
line per run that ends, and a startup summary), and maps signals to the
service's two events. The first SIGINT/SIGTERM stops firing and waits for the
runs in flight; the second cancels them (they end ``Cancelled``). A clean
stop exits 0. A run store that cannot be opened is one line on stderr, exit 2.
``--lease`` sets how long a run's claim outlives a service that died.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import dask.config

from daskflow.cli.history import url_option
from daskflow.cli.output import UsageProblem, one_line
from daskflow.deployments import DEFAULT_MAX_CONCURRENT_RUNS, DEFAULT_POLL_SECONDS, DeploymentService
from daskflow.exceptions import DaskflowError
from daskflow.logging import configure_console_logging
from daskflow.runstore import RunStoreUnavailableError
from daskflow.runstore.urls import resolve_url

__all__ = ["serve"]


@contextmanager
def _signals(stop: threading.Event, cancel: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM: the first sets ``stop``, the next ``cancel``; the old handlers come back after."""

    def on_signal(signum: int, frame: Any) -> None:
        # In a signal handler: only set flags; the service acts on them from its own loop.
        if stop.is_set():
            cancel.set()
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@click.command()
@url_option
@click.option(
    "--max-concurrent", type=click.IntRange(min=1), default=DEFAULT_MAX_CONCURRENT_RUNS, show_default=True,
    help="Runs in flight at once, all deployments together.",
)  # fmt: skip
@click.option(
    "--poll", "poll_seconds", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_POLL_SECONDS,
    show_default=True, metavar="SECONDS", help="How often to re-read the deployments (new, changed, paused).",
)  # fmt: skip
@click.option(
    "--lease", "lease_seconds", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    help="How long a run's claim outlives this service if it dies (default: daskflow.deployments.lease, 60 s).",
)  # fmt: skip
def serve(url: str | None, max_concurrent: int, poll_seconds: float, lease_seconds: float | None) -> None:
    """Fire every due run of every deployment in the run store, until SIGINT/SIGTERM.

    Each scheduled time runs at most once, even with several services on one
    run store, and a deployment's runs never overlap (unless it allows
    concurrent runs). Missed times after downtime follow each deployment's
    catchup setting. A service that dies leaves its runs to be marked Crashed
    by another one once their lease runs out. The first signal waits for the
    runs in flight; a second cancels them.
    """
    resolved = resolve_url(url)
    stop, cancel = threading.Event(), threading.Event()
    # The flow runs record their history beside the deployments, so `runs show` finds them.
    settings: dict[str, object] = {"daskflow.runstore.url": resolved}
    if lease_seconds is not None:
        settings["daskflow.deployments.lease"] = f"{lease_seconds}s"
    configure_console_logging()
    try:
        with dask.config.set(settings), _signals(stop, cancel):
            service = DeploymentService(resolved, poll_seconds=poll_seconds, max_concurrent_runs=max_concurrent)
            service.run(stop, cancel)
    except (RunStoreUnavailableError, DaskflowError) as exc:
        raise UsageProblem(one_line(str(exc))) from exc
