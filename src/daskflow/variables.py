"""Variables: named JSON values kept in the run store, shared by every flow that reaches it.

The Prefect 3 interface, with the import changed::

    from daskflow.variables import Variable

    Variable.set("batch_size", 500)
    Variable.set("targets", {"eu": "s3://eu", "us": "s3://us"}, tags=["config"])
    Variable.get("batch_size", default=100)   # 500
    Variable.set("batch_size", 1000, overwrite=True)
    Variable.unset("batch_size")              # True; False when there was none

A value is any JSON value (a string, number, bool, None, or lists and dicts
of them), stored as JSON text in the run store's ``variables`` table, so a
Dask worker with the same ``daskflow.runstore.url`` reads the same values. A
name is 1-255 lowercase letters, digits, underscores and dashes. Variables are
plain text: keep secrets in a :class:`~daskflow.blocks.Secret` block instead.
``daskflow variable ls|get|set|unset`` is the command-line side.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pydantic

from daskflow.exceptions import DaskflowError
from daskflow.runstore import variables as rows
from daskflow.runstore.store import RunStore

__all__ = ["Variable", "VariableError", "validate_variable_name"]

_NAME = re.compile(r"^[a-z0-9_-]{1,255}$")


class VariableError(DaskflowError, ValueError):
    """A variable's name or value is not acceptable, or it exists and may not be overwritten."""


def validate_variable_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VariableError(
            f"Invalid variable name {name!r}: use 1 to 255 lowercase letters, digits, underscores and dashes. "
            "Fix: e.g. 'batch_size'."
        )
    return name


def _encode(name: str, value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise VariableError(
            f"Variable {name!r}: its value must be JSON (a string, number, bool, None, or lists and dicts of them), "
            f"got {type(value).__name__}: {exc}. Fix: convert it first, e.g. str(...) or .isoformat() for a time."
        ) from None


@contextmanager
def _open(url: str | None) -> Iterator[RunStore]:
    with RunStore(url) as store:
        yield store


def _in_async_code(sync: bool | None) -> bool:
    """Whether a call comes from async code (a running event loop on this thread) and should be awaited.

    Prefect's ``Variable.get``/``set``/``unset`` are awaited in an ``async def`` and called plainly
    elsewhere (its docs' "contextual behaviour"); ``_sync=True`` forces the plain call, as there.
    """
    if sync is not None:
        return not sync
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Variable(pydantic.BaseModel):
    """A stored variable: ``name``, JSON ``value`` and ``tags``; the class methods read and write them."""

    name: str
    value: Any = None
    tags: builtins.list[str] = pydantic.Field(default_factory=builtins.list)
    created: datetime | None = None
    updated: datetime | None = None

    @classmethod
    def set(
        cls,
        name: str,
        value: Any,
        tags: Sequence[str] | None = None,
        overwrite: bool = False,
        *,
        url: str | None = None,
        _sync: bool | None = None,
    ) -> Any:
        """Store ``value`` as ``name``; an existing variable only with ``overwrite=True`` (else a VariableError).

        Returns the stored :class:`Variable`; in async code, an awaitable of it (see :func:`_in_async_code`).
        """
        if _in_async_code(_sync):
            return cls.aset(name, value, tags, overwrite)
        validate_variable_name(name)
        text = _encode(name, value)
        tag_list = [tags] if isinstance(tags, str) else list(tags or ())
        if not all(isinstance(tag, str) and tag for tag in tag_list):
            raise VariableError(f"Variable {name!r}: tags must be a list of non-empty strings, got {tags!r}")
        with _open(url) as store:
            if not rows.write_variable(store, name, text, tag_list, overwrite=overwrite):
                raise VariableError(
                    f"Variable {name!r} already exists in the run store at {store.display_url}. "
                    f"Fix: Variable.set({name!r}, value, overwrite=True) to replace it, or unset it first."
                )
            row = rows.read_variable(store, name)
        return cls._from_row(row) if row is not None else cls(name=name, value=value, tags=tag_list)

    @classmethod
    def get(cls, name: str, default: Any = None, *, url: str | None = None, _sync: bool | None = None) -> Any:
        """The value of ``name``; ``default`` when there is no such variable (awaitable in async code)."""
        if _in_async_code(_sync):
            return cls.aget(name, default)
        validate_variable_name(name)
        with _open(url) as store:
            row = rows.read_variable(store, name)
        return default if row is None else json.loads(row.value)

    @classmethod
    def unset(cls, name: str, *, url: str | None = None, _sync: bool | None = None) -> Any:
        """Delete ``name``; True if it existed, False if there was nothing to delete (awaitable in async code)."""
        if _in_async_code(_sync):
            return cls.aunset(name)
        validate_variable_name(name)
        with _open(url) as store:
            return rows.delete_variable(store, name)

    @classmethod
    def read(cls, name: str, *, url: str | None = None) -> Variable | None:
        """The whole stored variable (value, tags, times), or None."""
        validate_variable_name(name)
        with _open(url) as store:
            row = rows.read_variable(store, name)
        return None if row is None else cls._from_row(row)

    @classmethod
    def list(cls, *, url: str | None = None, limit: int | None = None) -> builtins.list[Variable]:
        """Every stored variable, by name."""
        with _open(url) as store:
            return [cls._from_row(row) for row in rows.list_variables(store, limit)]

    # Prefect's async spellings: the same operations, off the event loop's thread.
    @classmethod
    async def aset(cls, name: str, value: Any, tags: Sequence[str] | None = None, overwrite: bool = False) -> Variable:
        return await asyncio.to_thread(functools.partial(cls.set, name, value, tags, overwrite, _sync=True))

    @classmethod
    async def aget(cls, name: str, default: Any = None) -> Any:
        return await asyncio.to_thread(functools.partial(cls.get, name, default, _sync=True))

    @classmethod
    async def aunset(cls, name: str) -> bool:
        return await asyncio.to_thread(functools.partial(cls.unset, name, _sync=True))

    @classmethod
    def _from_row(cls, row: rows.VariableRow) -> Variable:
        return cls(
            name=row.name, value=json.loads(row.value), tags=list(row.tags), created=row.created, updated=row.updated
        )
