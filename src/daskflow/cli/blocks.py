"""``daskflow block ls | show NAME | create KIND NAME | delete NAME``: the saved blocks.

The commands are thin shells over :mod:`daskflow.blocks`. A block is named by
its name alone when that is unique across kinds, else as ``KIND/NAME``
(``secret/warehouse``). ``show`` prints the stored fields with every secret as
``***``: it reads the row as stored, so it needs no key and never decrypts.
``create`` takes ``--value`` (a Secret's or JSON block's value) and/or
``--field k=v`` (read as JSON when it parses, else as text); a Secret without
``--value`` is asked for at a prompt that does not echo, which keeps it out of
the shell history. A bad name, kind or field is one line on stderr (exit 2).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any

import click

from daskflow.blocks import Block, Secret, block_class, validate_name
from daskflow.cli.history import url_option
from daskflow.cli.output import print_table, usage_problems, when
from daskflow.exceptions import BlockError
from daskflow.runstore import blocks as rows
from daskflow.runstore.store import RunStore

__all__ = ["block", "redacted_fields"]

REDACTED = "***"


@click.group()
def block() -> None:
    """Blocks: named configuration (secrets, JSON, storage, connections) kept in the run store."""


def _problems() -> AbstractContextManager[None]:
    return usage_problems(BlockError)


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _find(store: RunStore, ref: str) -> rows.BlockRow:
    """The row ``ref`` names: ``KIND/NAME``, or a ``NAME`` unique across kinds."""
    kind, _, name = ref.rpartition("/")
    validate_name(name)
    found = rows.list_blocks(store, kind or None, name)
    if not found:
        raise BlockError(f"No block named {ref!r} in the run store at {store.display_url}. Fix: see daskflow block ls.")
    if len(found) > 1:
        refs = ", ".join(f"{row.kind}/{row.name}" for row in found)
        raise BlockError(f"{len(found)} blocks are named {name!r} ({refs}). Fix: name one as KIND/NAME.")
    return found[0]


def redacted_fields(row: rows.BlockRow) -> dict[str, Any]:
    """A stored block's fields, with every encrypted one (a ``{"$fernet": ...}`` value) as ``***``."""
    data = json.loads(row.data)
    return {k: REDACTED if isinstance(v, dict) and set(v) == {"$fernet"} else v for k, v in data.items()}


@block.command("ls")
@click.option("--kind", default=None, help="Only blocks of this kind (secret, json, remote-storage, ...).")
@url_option
def ls(kind: str | None, url: str | None) -> None:
    """List the saved blocks: kind, name, last saved."""
    with _problems(), RunStore(url) as store:
        found = rows.list_blocks(store, kind)
    if not found:
        click.echo("No blocks saved.")
        return
    print_table(["KIND", "NAME", "UPDATED"], [[r.kind, r.name, when(r.updated)] for r in found], set(), shrink=1)


@block.command("show")
@click.argument("ref", metavar="NAME")
@url_option
def show(ref: str, url: str | None) -> None:
    """Show a block's fields, secrets as ***. NAME is NAME or KIND/NAME."""
    with _problems(), RunStore(url) as store:
        row = _find(store, ref)
    click.echo(f"{row.kind}/{row.name}  (created {when(row.created)}, updated {when(row.updated)})")
    for key, value in sorted(redacted_fields(row).items()):
        click.echo(f"  {key}: {json.dumps(value) if not isinstance(value, str) else value}")


@block.command("create")
@click.argument("kind")
@click.argument("name")
@click.option("--value", default=None, help="The value of a secret or json block (a secret is asked for if omitted).")
@click.option("--field", "fields", multiple=True, metavar="K=V", help="A field, read as JSON when it parses.")
@click.option("--overwrite", is_flag=True, help="Replace a block of this kind and name.")
@url_option
def create(kind: str, name: str, value: str | None, fields: tuple[str, ...], overwrite: bool, url: str | None) -> None:
    """Save a block of KIND (secret, json, remote-storage, sqlalchemy-connector) as NAME."""
    with _problems():
        cls = block_class(kind)
        validate_name(name)
        data: dict[str, Any] = {}
        for item in fields:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise BlockError(f"--field {item!r} is not K=V. Fix: e.g. --field url=s3://bucket/prefix.")
            data[key] = _parse(text)
        if value is None and issubclass(cls, Secret) and "value" not in data:
            value = click.prompt("Secret value", hide_input=True, confirmation_prompt=True)
        if value is not None:
            if kind == "json":
                try:
                    data["value"] = json.loads(value)
                except ValueError as exc:
                    raise BlockError(
                        f"--value is not JSON: {exc}. Fix: quote strings, e.g. --value '\"text\"'."
                    ) from None
            else:
                parsed = _parse(value)
                data["value"] = parsed if isinstance(parsed, dict) else value
        try:
            instance: Block = cls.model_validate(data)
        except ValueError as exc:  # pydantic's ValidationError
            raise BlockError(f"Invalid {kind} block: {exc}".replace("\n", "; ")) from None
        instance.save(name, overwrite=overwrite, url=url)
    click.echo(f"Saved {kind}/{name}.")


@block.command("delete")
@click.argument("ref", metavar="NAME")
@url_option
def delete(ref: str, url: str | None) -> None:
    """Delete a block. NAME is NAME or KIND/NAME."""
    with _problems(), RunStore(url) as store:
        row = _find(store, ref)
        rows.delete_block(store, row.kind, row.name)
    click.echo(f"Deleted {row.kind}/{row.name}.")
