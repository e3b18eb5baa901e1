"""``daskflow events ls``: the events in the run store, newest first (emitted ones and the runs' state changes)."""

from __future__ import annotations

import json

import click

from daskflow.cli.history import url_option
from daskflow.cli.output import echo_json, print_table, usage_problems, when
from daskflow.events import Event, EventError, list_events

__all__ = ["events"]


@click.group()
def events() -> None:
    """Events: what emit_event() recorded, and every flow and task run's state changes."""


@events.command("ls")
@url_option
@click.option("--event", "prefix", metavar="PREFIX", default=None, help="Only events whose name starts with PREFIX.")
@click.option("--resource", "resource_id", metavar="ID", default=None, help="Only events about this resource id.")
@click.option("--no-states", is_flag=True, help="Leave out the runs' state changes.")
@click.option(
    "--limit", metavar="N", type=click.IntRange(min=1), default=50, show_default=True, help="At most N, the newest."
)
@click.option("--json", "as_json", is_flag=True, help="Print the events as a JSON list.")
def events_ls(
    url: str | None, prefix: str | None, resource_id: str | None, no_states: bool, limit: int, as_json: bool
) -> None:
    """List events, newest first: time, event, resource, payload, related resources (role:name)."""
    with usage_problems(EventError):
        found = list_events(prefix=prefix, resource_id=resource_id, limit=limit, states=not no_states, url=url)
    if as_json:
        echo_json([e.model_dump(mode="json") for e in found])
        return
    if not found:
        click.echo("No events.")
        return
    rows = [
        (when(e.occurred), e.event, e.resource_id, json.dumps(e.payload) if e.payload else "", _related(e))
        for e in found
    ]
    print_table(("occurred", "event", "resource", "payload", "related"), rows, set(), shrink=4)


def _related(event: Event) -> str:
    # "flow:etl, deployment:nightly, tag:prod": each related resource by its role and name (or id).
    shown = []
    for labels in event.related:
        named = {key.split(".", 1)[-1]: value for key, value in labels.items()}  # prefect.* and daskflow.* alike
        role, ident = named.get("resource.role", "?"), named.get("resource.id", "")
        # A tag has no name: "daskflow.tag.prod" is shown as "tag:prod".
        short = ident.split(".", 1)[-1].removeprefix(f"{role}.") if "." in ident else ident
        shown.append(f"{role}:{named.get('resource.name') or short}")
    return ", ".join(shown)
