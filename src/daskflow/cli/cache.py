"""``daskflow cache``: list, clear and prune the result cache, over the library's own store.

Each command opens the store the library itself would use (``--storage`` and
``--storage-option`` override it), makes one call on it, and reports what it
found or did: a table in a terminal, plain aligned text when piped. Exit codes:
0 done; 1 declined at a prompt, or files left that could not be removed; 2 bad
input or a storage that cannot be opened or reached (:class:`UsageProblem`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
import yaml
from dask.utils import format_bytes, parse_timedelta

from daskflow.cli.output import UsageProblem, count, one_line, print_table, when
from daskflow.exceptions import ConfigurationError
from daskflow.results import DEFAULT_TEMP_GRACE, EntryInfo, ResultStore, ResultWarning
from daskflow.results.storage import default_storage_url

__all__ = ["cache"]

_F = TypeVar("_F", bound=Callable[..., Any])

_STORAGE_FIX = (
    "Fix: check the URL and that the storage is reachable from here, and its --storage-option "
    "values (credentials, endpoint)."
)


@click.group()
def cache() -> None:
    """The result cache: list its entries, clear it, prune what has expired.

    The store is the one tasks use: --storage URL, else the
    daskflow.results.storage setting (DASK_DASKFLOW__RESULTS__STORAGE),
    else file://$DASKFLOW_HOME/results.
    """


def _storage_params(command: _F) -> _F:
    """The options every cache command takes to choose its store (declared once here)."""
    command = click.option(
        "--storage-option",
        "storage_options",
        metavar="KEY=VALUE",
        multiple=True,
        help="An fsspec option of the storage, repeatable; VALUE is read as YAML (anon=true is a bool; "
        "quote a number that must stay a string: token='0123'). Replaces daskflow.results.storage_options.",
    )(command)
    return click.option(
        "--storage",
        metavar="URL",
        default=None,
        help="fsspec URL of the result store (file://, memory://, s3://bucket/prefix or a path). "
        "Default: the daskflow.results.storage setting, else file://$DASKFLOW_HOME/results.",
    )(command)


@cache.command("ls")
@_storage_params
@click.option("--task", "task_name", metavar="NAME", default=None, help="Only the entries of this task.")
@click.option("--expired", is_flag=True, help="Only the entries past their expiration (what prune removes).")
def cache_ls(storage: str | None, storage_options: tuple[str, ...], task_name: str | None, expired: bool) -> None:
    """List the entries: key, task, created, expires, format and size, with a total."""
    store = _open_store(storage, storage_options)
    with _reaching(store.url):
        entries, _ = _list_entries(store)
    now = datetime.now(UTC)
    shown = sorted(
        (
            entry
            for entry in entries
            if (task_name is None or entry.task_name == task_name) and (not expired or entry.is_expired(now))
        ),
        key=lambda entry: (entry.created, entry.key),
    )
    if not shown:
        click.echo(_nothing_listed(store.url, storage, len(entries), task_name, expired))
        return
    headers = ("key", "task", "created (UTC)", "expires (UTC)", "format", "size")
    rows = [
        (
            entry.key,
            entry.task_name,
            when(entry.created),
            _expires(entry, now),
            entry.format,
            format_bytes(entry.size),
        )
        for entry in shown
    ]
    print_table(headers, rows, right_aligned={len(headers) - 1})
    total = sum(entry.size for entry in shown)
    click.echo(f"{count(len(shown), 'entry', 'entries')}, {format_bytes(total)} total, in {store.url}")


@cache.command("clear")
@_storage_params
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(storage: str | None, storage_options: tuple[str, ...], yes: bool) -> None:
    """Remove every entry and temp file of the store (other files are left)."""
    store = _open_store(storage, storage_options)
    with _reaching(store.url):
        entries, unreadable = _list_entries(store, show_unreadable=False)
    size = sum(entry.size for entry in entries)
    if not yes:
        found = count(len(entries), "entry", "entries") + f" ({format_bytes(size)})"
        if unreadable:
            found += f", {count(unreadable, 'unreadable entry', 'unreadable entries')}"
        click.confirm(f"Remove {found} and any temp files from {store.url}?", abort=True)
    with _reaching(store.url):
        removed = store.clear()
    if removed == 0:
        click.echo(f"Nothing to clear in {store.url}.")
        return
    # Only readable entries report a size: the store measures nothing else it removes.
    others = removed - len(entries)
    if others > 0:
        click.echo(
            f"Removed {count(len(entries), 'entry', 'entries')} and "
            f"{count(others, 'temp or unreadable file', 'temp or unreadable files')} from {store.url}, "
            f"freeing {format_bytes(size)} plus the size of those files."
        )
    else:
        click.echo(f"Removed {count(removed, 'entry', 'entries')} from {store.url}, freeing {format_bytes(size)}.")


@cache.command("prune")
@_storage_params
@click.option(
    "--grace",
    metavar="DURATION",
    default=None,
    help="Keep temp files younger than this: a writer may still be at work on them. "
    f"E.g. 30m, 1h, 2d; a bare number is seconds. [default: {DEFAULT_TEMP_GRACE}]",
)
@click.pass_context
def cache_prune(ctx: click.Context, storage: str | None, storage_options: tuple[str, ...], grace: str | None) -> None:
    """Remove expired entries and orphan temp files (left by killed writers) older than --grace."""
    temp_grace = DEFAULT_TEMP_GRACE if grace is None else _parse_duration(grace, "--grace")
    store = _open_store(storage, storage_options)
    with _reaching(store.url):
        report = store.prune(temp_grace=temp_grace)
    click.echo(
        f"Pruned {store.url}: removed {count(len(report.expired), 'expired entry', 'expired entries')} and "
        f"{count(len(report.orphans), 'orphan temp file', 'orphan temp files')}, "
        f"freeing {format_bytes(report.bytes_freed)}."
    )
    if report.unreadable:
        click.echo(
            f"Left {count(len(report.unreadable), 'unreadable entry', 'unreadable entries')} (a read treats "
            "it as a miss and the next write replaces it; `daskflow cache clear` removes it):"
        )
        for path in report.unreadable:
            click.echo(f"  {path}")
    if report.failed:
        click.echo(f"Could not remove {count(len(report.failed), 'file', 'files')}:", err=True)
        for path in report.failed:
            click.echo(f"  {path}", err=True)
        ctx.exit(1)


# -- helpers -------------------------------------------------------------------


def _open_store(url: str | None, raw_options: Sequence[str]) -> ResultStore:
    options = _parse_storage_options(raw_options) if raw_options else None
    with _reaching(url or default_storage_url()):
        try:
            return ResultStore(url, options)
        except ConfigurationError as exc:
            raise UsageProblem(one_line(str(exc))) from exc


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    """Turn a storage failure into a one-line error: an fsspec backend may raise anything."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:
        raise UsageProblem(
            f"cannot reach result storage {url} ({type(exc).__name__}: {one_line(str(exc))}). {_STORAGE_FIX}"
        ) from exc


def _parse_storage_options(raw: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in raw:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageProblem(
                f"bad --storage-option {item!r}: expected KEY=VALUE, KEY an option name of the storage's "
                "fsspec filesystem. Fix: write one option per flag, e.g. --storage-option anon=true"
            )
        options[key] = _yaml_scalar(text)
    return options


def _yaml_scalar(text: str) -> Any:
    """``text`` read as a YAML scalar (true, 3, 1.5, null); anything else stays the string given."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, str | int | float | bool) else text


def _parse_duration(text: str, option: str) -> timedelta:
    try:
        seconds = parse_timedelta(text, default="seconds")
    except (ValueError, KeyError, TypeError, IndexError):
        seconds = -1
    if seconds < 0:
        raise UsageProblem(
            f"bad {option} {text!r}: not a duration. Fix: a number and a unit, e.g. 30m, 1h or 2d "
            "(a bare number is seconds)."
        )
    return timedelta(seconds=seconds)


def _list_entries(store: ResultStore, *, show_unreadable: bool = True) -> tuple[list[EntryInfo], int]:
    """Every readable entry, and how many were unreadable.

    Each unreadable entry is one "warning:" line on stderr (when
    ``show_unreadable``) rather than a Python warning with its source line.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultWarning)
        entries = list(store.entries())
    unreadable = 0
    for warning in caught:
        if not issubclass(warning.category, ResultWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            continue
        unreadable += 1
        if show_unreadable:
            click.echo(f"warning: {warning.message}", err=True)
    return entries, unreadable


def _nothing_listed(url: str, storage: str | None, total: int, task_name: str | None, expired: bool) -> str:
    if total == 0:
        hint = "" if storage else " (the default store; choose another with --storage URL)"
        return f"No cache entries in {url}{hint}."
    wanted = ("expired entries" if expired else "entries") + (f" of task {task_name!r}" if task_name else "")
    return f"No {wanted} among the {count(total, 'entry', 'entries')} in {url}."


def _expires(entry: EntryInfo, now: datetime) -> str:
    if entry.expiration is None:
        return "never"
    return when(entry.expiration) + (" (expired)" if entry.is_expired(now) else "")
