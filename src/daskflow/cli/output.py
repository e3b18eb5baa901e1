"""How every ``daskflow`` command reports: one-line errors, tables, times, durations and JSON.

A command prints for two readers. In a terminal it draws rich tables and
colours states; piped (``| grep``, ``| awk``, a CI log) the same table comes out
as plain aligned text, one line per row, never wrapped at 80 columns, so each
row stays one record for line tools. ``--json`` serves scripts: the records as
they are, datetimes in ISO 8601.

Errors are :class:`UsageProblem`: one line on stderr that says what was wrong
and ends with the fix, exit code 2, never a traceback. Times are shown in UTC
(and the headers say so): a run store is often shared by machines in several
time zones, and one clock keeps their rows comparable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any, Literal

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from daskflow.runs import format_seconds

__all__ = [
    "Cell",
    "UsageProblem",
    "count",
    "echo_json",
    "format_duration",
    "is_terminal",
    "jsonable",
    "make_console",
    "one_line",
    "print_table",
    "short_ids",
    "state_text",
    "when",
    "when_precise",
]

# A key cut shorter than this no longer tells entries apart at a glance.
_MIN_KEY_WIDTH = 12
# Piped output is not wrapped by a terminal; rich would still wrap free text at
# its default 80 columns, cutting tracebacks and markdown mid-line.
_PIPED_WIDTH = 160

# A cell is plain text, or rich Text when it carries a style (a state's colour).
Cell = str | Text

_STATE_STYLES = {
    "COMPLETED": "green",
    "FAILED": "bold red",
    "CRASHED": "bold magenta",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "PENDING": "dim",
    "SCHEDULED": "dim",
}


class UsageProblem(click.ClickException):
    """Bad input, or a store that cannot be opened or reached: one line on stderr, exit code 2."""

    exit_code = 2


@contextmanager
def usage_problems(*errors: type[BaseException]) -> Iterator[None]:
    """Report ``errors`` (the user's to fix) as one line on stderr and exit code 2, not a traceback."""
    try:
        yield
    except errors as exc:
        raise UsageProblem(one_line(str(exc))) from exc


def is_terminal() -> bool:
    return sys.stdout.isatty()


def make_console() -> Console:
    """A console for free text (markdown, panels): the terminal's width, or a wide one when piped."""
    if is_terminal():
        return Console(highlight=False)
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > _PIPED_WIDTH else _PIPED_WIDTH
    return Console(highlight=False, width=width, no_color=True)


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    right_aligned: set[int],
    *,
    shrink: int = 0,
) -> None:
    """A rich table in a terminal, else aligned plain text; either way one line per row.

    In a terminal too narrow for the whole table, the column ``shrink`` (a key,
    a name) is cut with an ellipsis first: rich would shrink every column alike.
    """
    plain = [[_plain(cell) for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *plain, strict=True)]
    if not is_terminal():
        for line in (list(headers), *plain):
            cells = (
                cell.rjust(width) if index in right_aligned else cell.ljust(width)
                for index, (cell, width) in enumerate(zip(line, widths, strict=True))
            )
            click.echo("  ".join(cells).rstrip())
        return
    console = Console(highlight=False)
    spare = console.width - (sum(widths) + 3 * (len(widths) - 1))  # a column gap is 3 wide
    if spare < 0 and widths[shrink] + spare >= _MIN_KEY_WIDTH:
        widths[shrink] += spare
    elif spare < 0:
        # Too wide even so: rich would cut every column, ids included. Draw it whole and
        # let the terminal wrap the lines; nothing is lost, and a wider window fixes it.
        console = Console(highlight=False, width=console.width - spare)
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False, pad_edge=False)
    for index, (header, width) in enumerate(zip(headers, widths, strict=True)):
        justify: Literal["left", "right"] = "right" if index in right_aligned else "left"
        table.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis", width=width)
    for row in rows:
        # Text, not str: a task name like "load[eu]" is not rich markup.
        table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    console.print(table)


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def state_text(state_type: str, state_name: str) -> Text:
    """A run's state name, coloured by its type (colour shows only in a terminal)."""
    return Text(state_name, style=_STATE_STYLES.get(state_type.upper(), ""))


def when(moment: datetime | None) -> str:
    """A time to the second in UTC; "-" for a time not reached (a run not yet started or ended)."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def when_precise(moment: datetime) -> str:
    """A time to the millisecond in UTC: log records of one second need telling apart."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_duration(seconds: float | None) -> str:
    """A duration in a table, "-" while a run has not ended (see :func:`daskflow.runs.format_seconds`)."""
    return format_seconds(seconds, missing="-")


def count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def one_line(text: str) -> str:
    return " ".join(text.split())


def echo_json(value: Any) -> None:
    """``value`` (dataclasses, datetimes and tuples included) as indented JSON on stdout."""
    click.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses as dicts (their fields), datetimes in ISO 8601 (UTC)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def short_ids(ids: list[str], minimum: int = 8) -> dict[str, str]:
    """Each id cut to the shortest prefix (of ``minimum`` or more) that no other listed id shares."""
    short = {}
    for item_id in ids:
        n = minimum
        while n < len(item_id) and any(o != item_id and o.startswith(item_id[:n]) for o in ids):
            n += 1
        short[item_id] = item_id[:n]
    return short
