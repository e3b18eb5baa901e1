"""Reading run history from the command line: which store, which run, which time.

Every ``runs`` and ``artifacts`` command names its run store the same way
(:func:`url_option`: ``--url``, else dask.config ``daskflow.runstore.url``,
else ``<daskflow home>/runs.db``) and opens it with :func:`open_run_store`,
which turns whatever the database does wrong into one :class:`UsageProblem`
line that ends with the fix.

Reading never creates anything: opening a :class:`~daskflow.runstore.RunStore`
creates and migrates the database, so an SQLite file that does not exist yet
is looked for first and reported as "no runs have been recorded yet", with
the path that was looked at. A server database (PostgreSQL) is opened as
given; a wrong one fails to connect, which is reported as unreachable.

Run ids are UUIDs; :func:`find_flow_run` takes a unique prefix, as ``git``
takes a short hash. Times (``--since``/``--until``) are ISO dates or times,
read as UTC when they carry no offset, or ages before now (``30m``, ``2h``,
``3d``, ``1w``): :func:`parse_time`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from daskflow import runstore
from daskflow.cli.output import UsageProblem, echo_json, one_line
from daskflow.exceptions import ConfigurationError
from daskflow.runstore import AmbiguousRunIdError, FlowRunDetail, RunStoreUnavailableError, RunStoreVersionError
from daskflow.runstore.urls import mask_password, resolve_url

if TYPE_CHECKING:
    from daskflow.runstore import RunStore

__all__ = [
    "TIME_FORMS",
    "NoRunStore",
    "find_flow_run",
    "open_run_store",
    "parse_time",
    "resolve_flow_run_id",
    "url_option",
]

_F = TypeVar("_F", bound=Callable[..., Any])

TIME_FORMS = (
    "an ISO date or time, UTC unless it has an offset (2024-05-01, 2024-05-01T14:30, 2024-05-01T14:30+02:00), "
    "or an age before now (30m, 2h, 3d, 1w)"
)

_AGE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[a-z]+)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
}
# sqlite:///relative/path, sqlite:////absolute/path, sqlite+pysqlite:///...; "sqlite://" (in memory) does not match.
_SQLITE_FILE = re.compile(r"^sqlite(?:\+\w+)?:///(?P<path>[^?]+)")

_DRIVER_PACKAGES = frozenset({"sqlalchemy", "sqlite3", "psycopg", "psycopg2", "alembic"})
_ELSEWHERE = "name another run store with --url URL (or the daskflow.runstore.url setting)"


def url_option(command: _F) -> _F:
    """The ``--url`` option every history command takes (declared once here)."""
    return click.option(
        "--url",
        metavar="URL",
        default=None,
        help="SQLAlchemy URL of the run store (sqlite:////path/runs.db, postgresql+psycopg://...). "
        "Default: the daskflow.runstore.url setting, else sqlite:///$DASKFLOW_HOME/runs.db.",
    )(command)


class NoRunStore(UsageProblem):
    """No SQLite file where the run store should be: nothing was recorded there yet.

    A listing command catches it and prints its message as an empty result
    (exit code 0, :meth:`print_as_empty_list`); a command that needs a run lets
    it fail (exit code 2).
    """

    def print_as_empty_list(self, as_json: bool) -> None:
        """An empty listing: ``[]`` for a script (the reason on stderr, for its human), else the reason."""
        if as_json:
            echo_json([])
        click.echo(self.format_message(), err=as_json)


@contextmanager
def open_run_store(url: str | None, *, create: bool = False) -> Iterator[RunStore]:
    """The run store at ``url`` (None: the configured one), open for one command, and closed after.

    An SQLite file that does not exist is not created, unless ``create`` (a
    command that writes, such as ``deployment apply``): that raises
    :class:`NoRunStore`, saying where it looked. Errors of the database, while
    opening or reading, become a one-line :class:`UsageProblem`.
    """
    resolved = resolve_url(url)
    shown = mask_password(resolved)
    missing = None if create else _missing_sqlite_file(resolved)
    if missing is not None:
        raise NoRunStore(_nothing_recorded(missing, given=url is not None))
    with _opening(shown):
        store = runstore.RunStore(resolved)
    try:
        with _reading(shown):
            yield store
    finally:
        store.close()


def _nothing_recorded(path: Path, *, given: bool) -> str:
    where = "" if given else " (the default store; --url URL or the daskflow.runstore.url setting names another)"
    return (
        f"No runs have been recorded yet: there is no run store at {path}{where}. "
        "Fix: run a flow with run history on (daskflow.runstore.enabled, the default), or point at the "
        "store that has them."
    )


def _missing_sqlite_file(url: str) -> Path | None:
    match = _SQLITE_FILE.match(url)
    if match is None:
        return None
    path = Path(match["path"])
    return None if path.exists() else path.absolute()


@contextmanager
def _opening(shown: str) -> Iterator[None]:
    """Turn a failure to open the store into one line that ends with the fix; a driver may raise anything."""
    try:
        with _reading(shown):
            yield
    except UsageProblem:
        raise
    except Exception as exc:
        raise UsageProblem(
            f"cannot read the run store at {shown} ({type(exc).__name__}: {_first_line(str(exc))}). "
            f"Fix: check that the URL names a daskflow run store, or {_ELSEWHERE}."
        ) from exc


@contextmanager
def _reading(shown: str) -> Iterator[None]:
    """Turn the store's failures into one line that ends with the fix.

    Only the store's errors, and those of the database drivers below it
    (SQLAlchemy, sqlite3, psycopg): a bug of the command itself must keep its
    traceback rather than pass for a database problem.
    """
    try:
        yield
    except AmbiguousRunIdError as exc:
        raise UsageProblem(one_line(str(exc))) from exc
    except RunStoreUnavailableError as exc:
        raise UsageProblem(
            f"cannot read the run store at {shown} ({_reason(exc)}). Fix: check that the database is running "
            f"and reachable from here and that no program holds the SQLite file locked, or {_ELSEWHERE}."
        ) from exc
    except (RunStoreVersionError, ConfigurationError) as exc:
        raise UsageProblem(f"{one_line(str(exc))} (run store {shown}; {_ELSEWHERE}).") from exc
    except Exception as exc:
        if type(exc).__module__.partition(".")[0] not in _DRIVER_PACKAGES:
            raise
        raise UsageProblem(
            f"cannot read the run store at {shown} ({type(exc).__name__}: {_first_line(str(exc))}). "
            f"Fix: check that the URL names a daskflow run store, or {_ELSEWHERE}."
        ) from exc


def _reason(exc: BaseException) -> str:
    """The driver's own words for a failure (the first line of them)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    root = getattr(cause, "orig", None) or cause
    return f"{type(root).__name__}: {_first_line(str(root))}"


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def resolve_flow_run_id(store: RunStore, id_or_prefix: str) -> str:
    """The full id of the one flow run ``id_or_prefix`` names; an unknown or ambiguous one is a UsageProblem."""
    run_id = store.resolve_run_id(id_or_prefix) if id_or_prefix.strip() else None
    if run_id is None:
        raise UsageProblem(
            f"no flow run with id {id_or_prefix!r} in the run store at {mask_password(store.url)}. "
            "Fix: copy an id (or its first characters) from `daskflow runs ls`"
            + ("" if store.list_flow_runs(limit=1) else f"; it lists no runs here, so {_ELSEWHERE}")
            + "."
        )
    return run_id


def find_flow_run(store: RunStore, id_or_prefix: str) -> FlowRunDetail:
    """The flow run ``id_or_prefix`` names, with its states and task runs."""
    detail = store.flow_run(resolve_flow_run_id(store, id_or_prefix))
    if detail is None:  # deleted between the two reads
        raise UsageProblem(f"the flow run {id_or_prefix!r} is gone from the run store. Fix: see `daskflow runs ls`.")
    return detail


def parse_time(text: str, option: str, *, now: datetime | None = None) -> datetime:
    """``text`` (an ISO date/time or an age such as ``2h``) as an aware UTC datetime."""
    now = now or datetime.now(UTC)
    age = _AGE.match(text)
    if age is not None and age["unit"].lower() in _UNIT_SECONDS:
        return now - timedelta(seconds=float(age["number"]) * _UNIT_SECONDS[age["unit"].lower()])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageProblem(f"bad {option} {text!r}: not a time. Fix: give {TIME_FORMS}.") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
