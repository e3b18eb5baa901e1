"""``daskflow runs resume ID [--input JSON]``: resume a flow run paused by ``pause_flow_run``.

The input is validated by the paused run against its model; a refused input
is one line on stderr (exit 2) with the validation error, and the run keeps
waiting for a better one.
"""

from __future__ import annotations

import json

import click

from daskflow.cli.history import url_option
from daskflow.cli.output import UsageProblem, usage_problems
from daskflow.pausing import PauseError, resume_flow_run

__all__ = ["runs_resume"]


@click.command("resume")
@url_option
@click.argument("run_id")
@click.option("--input", "input_text", metavar="JSON", default=None, help="The input the run waits for, as JSON.")
@click.option(
    "--wait",
    metavar="SECONDS",
    type=float,
    default=10.0,
    show_default=True,
    help="How long to wait for the run to take it.",
)
def runs_resume(url: str | None, run_id: str, input_text: str | None, wait: float) -> None:
    """Resume the paused flow run RUN_ID (an id or a unique prefix), giving it --input."""
    try:
        value = json.loads(input_text) if input_text is not None else None
    except ValueError as exc:
        raise UsageProblem(
            f"--input is not JSON: {exc}. Fix: quote it, e.g. --input '{{\"approved\": true}}'."
        ) from None
    with usage_problems(PauseError):
        resume_flow_run(run_id, value, wait=wait, url=url)
    click.echo(f"Resumed flow run {run_id}.")
