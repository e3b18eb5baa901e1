"""``daskflow variable ls | get NAME | set NAME VALUE | unset NAME``: the stored variables.

Thin shells over :mod:`daskflow.variables`. ``set`` reads VALUE as JSON when
it parses (``500``, ``true``, ``'{"a": 1}'``) and as text otherwise
(``s3://bucket``); ``--overwrite`` replaces an existing one. ``get`` prints the
value as JSON. A bad name or a missing variable is one line on stderr (exit 2).
"""

from __future__ import annotations

import json
from typing import Any

import click

from daskflow.cli.history import url_option
from daskflow.cli.output import UsageProblem, echo_json, print_table, usage_problems, when
from daskflow.variables import Variable, VariableError

__all__ = ["variable"]


@click.group()
def variable() -> None:
    """Variables: named JSON values that flows read with Variable.get (kept in the run store)."""


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@variable.command("ls")
@url_option
@click.option("--limit", metavar="N", type=click.IntRange(min=1), default=None, help="At most N, by name.")
@click.option("--json", "as_json", is_flag=True, help="Print the variables as a JSON list.")
def variable_ls(url: str | None, limit: int | None, as_json: bool) -> None:
    """List the variables: name, value, tags, last update."""
    with usage_problems(VariableError):
        found = Variable.list(url=url, limit=limit)
    if as_json:
        echo_json([v.model_dump(mode="json") for v in found])
        return
    if not found:
        click.echo("No variables. Set one with: daskflow variable set NAME VALUE")
        return
    rows = [(v.name, _short(json.dumps(v.value)), ", ".join(v.tags), when(v.updated)) for v in found]
    print_table(("name", "value", "tags", "updated"), rows, set(), shrink=1)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


@variable.command("get")
@url_option
@click.argument("name")
def variable_get(url: str | None, name: str) -> None:
    """Print the value of NAME as JSON."""
    with usage_problems(VariableError):
        found = Variable.read(name, url=url)
    if found is None:
        raise UsageProblem(f"No variable named {name!r}. Fix: see daskflow variable ls, or set it first.")
    click.echo(json.dumps(found.value, indent=2))


@variable.command("set")
@url_option
@click.argument("name")
@click.argument("value")
@click.option("--tag", "tags", metavar="TAG", multiple=True, help="A tag for the variable; repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace the variable if it exists.")
def variable_set(url: str | None, name: str, value: str, tags: tuple[str, ...], overwrite: bool) -> None:
    """Set NAME to VALUE (JSON if it parses as JSON, else text)."""
    with usage_problems(VariableError):
        Variable.set(name, _parse(value), tags=list(tags), overwrite=overwrite, url=url)
    click.echo(f"Set variable {name!r}.")


@variable.command("unset")
@url_option
@click.argument("name")
def variable_unset(url: str | None, name: str) -> None:
    """Delete NAME."""
    with usage_problems(VariableError):
        existed = Variable.unset(name, url=url)
    if not existed:
        raise UsageProblem(f"No variable named {name!r}. Fix: see daskflow variable ls.")
    click.echo(f"Unset variable {name!r}.")
