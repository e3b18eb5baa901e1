"""``daskflow artifacts``: what runs published — markdown reports, tables, links — listed and shown.

An artifact is kept in the run store against the flow run (and task run) that
made it, as text: markdown as written, a table as a JSON list of row objects,
a link as a JSON object ``{"link": url, "link_text": text}``. Artifacts that
share a key are versions of one thing, newest first; ``artifacts show KEY``
shows the latest version, ``artifacts show ID`` one version by its id (or a
unique prefix of it, as ``artifacts ls`` prints it).

``show`` renders each type for a reader: markdown through rich's renderer,
a table as a table, a link as its URL. Data that does not have the expected
shape (written by hand, or by a newer daskflow) is printed as stored rather
than refused: the point is to see it.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markdown import Markdown

from daskflow.cli.history import NoRunStore, open_run_store, resolve_flow_run_id, url_option
from daskflow.cli.output import (
    Cell,
    UsageProblem,
    count,
    echo_json,
    is_terminal,
    jsonable,
    make_console,
    one_line,
    print_table,
    short_ids,
    when,
)
from daskflow.runstore import ArtifactInfo

if TYPE_CHECKING:
    from daskflow.runstore import RunStore

__all__ = ["artifacts"]

_PIPED_MARKDOWN_WIDTH = 100


@click.group()
def artifacts() -> None:
    """Artifacts that runs published (markdown, tables, links), from the run store.

    The run store is --url URL, else the daskflow.runstore.url setting, else
    sqlite:///$DASKFLOW_HOME/runs.db. Times are shown in UTC.
    """


@artifacts.command("ls")
@url_option
@click.option("--key", metavar="KEY", default=None, help="Only the versions of this key.")
@click.option("--run", "run_id", metavar="ID", default=None, help="Only the artifacts of this flow run (id or prefix).")
@click.option(
    "--limit", metavar="N", type=click.IntRange(min=1), default=20, show_default=True, help="At most N, the newest."
)
@click.option("--json", "as_json", is_flag=True, help="Print the artifacts, data included, as a JSON list.")
def artifacts_ls(url: str | None, key: str | None, run_id: str | None, limit: int, as_json: bool) -> None:
    """List artifacts, newest first.

    Columns: id, key, type, description, run (flow run id / task run name), created.
    """
    try:
        with open_run_store(url) as store:
            flow_run_id = resolve_flow_run_id(store, run_id) if run_id is not None else None
            found = store.artifacts(key=key, flow_run_id=flow_run_id, limit=limit)
            task_names = _task_run_names(store, found)
            where = store.display_url
    except NoRunStore as exc:
        exc.print_as_empty_list(as_json)
        return
    if as_json:
        echo_json([{**jsonable(a), "task_run_name": task_names.get(a.task_run_id or "")} for a in found])
        return
    if not found:
        wanted = " and ".join(
            part for part in (f"key {key!r}" if key else "", f"flow run {run_id!r}" if run_id else "") if part
        )
        click.echo(f"No artifacts{' of ' + wanted if wanted else ''} in {where}.")
        return
    headers = ("id", "key", "type", "description", "run", "created (UTC)")
    short = short_ids([artifact.id for artifact in found])
    rows: list[list[Cell]] = [
        [
            short[artifact.id],
            artifact.key or "-",
            artifact.type,
            one_line(artifact.description or "") or "-",
            _run_label(artifact, task_names),
            when(artifact.created),
        ]
        for artifact in found
    ]
    print_table(headers, rows, right_aligned=set(), shrink=3)
    more = f" (the newest {limit}; --limit N shows more)" if len(found) == limit else ""
    click.echo(f"{count(len(found), 'artifact', 'artifacts')}, newest first{more}, in {where}")


def _task_run_names(store: RunStore, found: list[ArtifactInfo]) -> dict[str, str]:
    """Task run id -> name, for the runs that made ``found`` (one read per flow run)."""
    names: dict[str, str] = {}
    for flow_run_id in {a.flow_run_id for a in found if a.task_run_id and a.flow_run_id}:
        names.update((t.id, t.name) for t in store.task_runs(flow_run_id))
    return names


def _run_label(artifact: ArtifactInfo, task_names: dict[str, str]) -> str:
    if artifact.flow_run_id is None:
        return "-"  # made outside any flow run
    label = artifact.flow_run_id  # whole: flow run ids of one process share their first 24 characters
    if artifact.task_run_id:
        label += " / " + task_names.get(artifact.task_run_id, artifact.task_run_id[:8])
    return label


@artifacts.command("show")
@url_option
@click.argument("ref", metavar="KEY-OR-ID")
def artifacts_show(url: str | None, ref: str) -> None:
    """Show an artifact, rendered.

    KEY-OR-ID is a key (its latest version is shown) or an artifact id, or a
    prefix of one, as `daskflow artifacts ls` prints it.
    """
    with open_run_store(url) as store:
        artifact = _find(store, ref)
        task_names = _task_run_names(store, [artifact])
    title = artifact.key or artifact.id
    console = make_console()
    console.print(f"Artifact {title} ({artifact.type})", style="bold", markup=False, highlight=False)
    if artifact.description:
        console.print(artifact.description, markup=False, soft_wrap=True)
    console.print(
        f"id {artifact.id}, run {_run_label(artifact, task_names)}, created {when(artifact.created)} UTC",
        markup=False,
        style="dim",
        soft_wrap=True,
    )
    click.echo()
    _render(artifact)


def _find(store: RunStore, ref: str) -> ArtifactInfo:
    latest = store.artifacts(key=ref, limit=1)
    if latest:
        return latest[0]
    # Not a key: an id or a prefix of one (six are enough to say it is ambiguous).
    matches = store.artifacts(id_prefix=ref, limit=6) if ref else []
    if not matches:
        raise UsageProblem(
            f"no artifact with key or id {ref!r} in the run store at {store.display_url}. "
            "Fix: copy a key or an id (or its first characters) from `daskflow artifacts ls`."
        )
    if len(matches) > 1:
        shown = ", ".join(a.id for a in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise UsageProblem(
            f"the artifact id prefix {ref!r} matches several artifacts ({shown}). Fix: give more of the id."
        )
    return matches[0]


def _render(artifact: ArtifactInfo) -> None:
    if artifact.type == "markdown":
        _render_markdown(artifact.data)
    elif artifact.type == "table":
        _render_table(artifact.data)
    elif artifact.type == "link":
        _render_link(artifact.data)
    else:
        click.echo(artifact.data)


def _render_markdown(text: str) -> None:
    if is_terminal():
        make_console().print(Markdown(text))
        return
    # Piped: a page width fit for prose, and no trailing blanks, which rich pads every line with.
    buffer = io.StringIO()
    Console(file=buffer, width=_PIPED_MARKDOWN_WIDTH, color_system=None).print(Markdown(text))
    for line in buffer.getvalue().splitlines():
        click.echo(line.rstrip())


def _render_table(data: str) -> None:
    rows = _json(data)
    if isinstance(rows, dict) and rows and all(isinstance(column, list) for column in rows.values()):
        # Columns ({"name": [...], ...}) rather than rows: turn them round.
        length = max(len(column) for column in rows.values())
        rows = [{name: column[i] if i < len(column) else None for name, column in rows.items()} for i in range(length)]
    if not isinstance(rows, list) or not all(isinstance(row, (dict, list)) for row in rows):
        click.echo(data)
        return
    if not rows:
        click.echo("(an empty table)")
        return
    if all(isinstance(row, dict) for row in rows):  # rows as objects, the shape the artifact API writes
        headers: list[str] = []
        for row in rows:  # every key of every row, in the order first seen: rows may differ
            headers.extend(str(name) for name in row if str(name) not in headers)
        cells = [[_cell(row.get(name)) for name in headers] for row in rows]
    elif all(isinstance(row, list) for row in rows):  # rows as lists, without headers
        width = max(len(row) for row in rows)
        headers = [str(i) for i in range(width)]
        cells = [[_cell(row[i]) if i < len(row) else "" for i in range(width)] for row in rows]
    else:
        click.echo(data)
        return
    numeric = {
        index
        for index in range(len(headers))
        if all(isinstance(row, dict) and isinstance(row.get(headers[index]), (int, float)) for row in rows)
    }
    print_table(headers, cells, right_aligned=numeric)


def _render_link(data: str) -> None:
    link = _json(data)
    if isinstance(link, dict) and isinstance(link.get("link"), str):
        text = link.get("link_text")
        click.echo(f"{text}: {link['link']}" if text else link["link"])
    else:
        click.echo(data)  # a bare URL


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
