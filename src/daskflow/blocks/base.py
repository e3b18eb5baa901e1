"""Blocks: named, typed configuration kept in the run store and loaded by name anywhere.

A block is a pydantic model with a *kind* (``secret``, ``json``, ...). Saved
under a name, it is one row of the run store's ``blocks`` table (kind and name
unique together, the fields as JSON), so every flow, every process and every
Dask worker that reaches the same run store can ``Kind.load("name")`` it::

    Secret(value="hunter2").save("db-password")
    password = Secret.load("db-password").get()

Secret fields — the ones a kind lists in ``__secret_fields__`` and every
``pydantic.SecretStr`` field — are encrypted before they reach the store
(:mod:`.crypto`); everything else is plain JSON, readable without the key.

A saved block travels by name: it pickles as its class and name and is loaded
again where it is unpickled, so a secret goes to a Dask worker without its
value and the worker reads it from the run store with its own key. For the
same reason a saved block is part of a cache key by kind and name, never by
value; an unsaved block with secrets refuses to be hashed. Every secret
loaded is also redacted from daskflow's log records (:mod:`.redaction`).
"""

from __future__ import annotations

import builtins
import json
import re
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

import pydantic
from pydantic_core import to_jsonable_python

from daskflow import settings
from daskflow.blocks import crypto, redaction
from daskflow.exceptions import BlockError, BlockNotFoundError, UnhashableInputError
from daskflow.runstore import blocks as rows
from daskflow.runstore.store import RunStore
from daskflow.runstore.urls import DEFAULT_FILE_NAME, mask_password, resolve_url

__all__ = ["Block", "BlockInfo", "block_class", "load_block", "validate_name"]

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_ENCRYPTED = "$fernet"  # {"$fernet": token}: how a secret field is stored
_KINDS: dict[str, type[Block]] = {}


def validate_name(name: str, what: str = "block name") -> str:
    """``name`` if it is 1-64 lowercase letters, digits and inner dashes; else a :class:`BlockError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BlockError(
            f"Invalid {what} {name!r}: use 1 to 64 lowercase letters, digits and dashes, starting and "
            "ending with a letter or digit. Fix: e.g. 'warehouse-password'."
        )
    return name


def _kebab(class_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", class_name).lower()


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """A stored block without its data: what ``Block.list()`` returns."""

    kind: str
    name: str
    created: datetime
    updated: datetime


@contextmanager
def _open(url: str | None) -> Iterator[RunStore]:
    with RunStore(url) as store:
        yield store


def _is_secret_annotation(annotation: Any) -> bool:
    if annotation is pydantic.SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_secret_annotation(arg) for arg in typing.get_args(annotation))
    return False


class Block(pydantic.BaseModel):
    """Base of every block kind; see the module docstring.

    A kind subclasses it with typed fields; its kind name is ``block_kind``, or
    the class name in kebab case (``RemoteStorage`` -> ``remote-storage``). Every
    method that touches the store takes ``url`` (default: ``daskflow.runstore.url``,
    else the SQLite file in the daskflow home).
    """

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)

    block_kind: ClassVar[str] = ""
    __secret_fields__: ClassVar[frozenset[str]] = frozenset()

    _block_name: str | None = pydantic.PrivateAttr(default=None)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "block_kind" not in cls.__dict__:
            cls.block_kind = _kebab(cls.__name__)
        validate_name(cls.block_kind, "block kind")
        _KINDS[cls.block_kind] = cls

    # -- identity -----------------------------------------------------------------------

    @property
    def block_name(self) -> str | None:
        """The name this block was saved under or loaded by; None for a block never saved."""
        return self._block_name

    @classmethod
    def secret_fields(cls) -> frozenset[str]:
        """The fields stored encrypted: ``__secret_fields__`` and every ``SecretStr`` field."""
        typed = {name for name, field in cls.model_fields.items() if _is_secret_annotation(field.annotation)}
        return frozenset(cls.__secret_fields__) | typed

    def _label(self, name: str | None = None) -> str:
        return f"{self.block_kind}/{name or self._block_name or '<unsaved>'}"

    # -- the store ----------------------------------------------------------------------

    def _dump(self) -> str:
        data: dict[str, Any] = {}
        secrets = self.secret_fields()
        for field in type(self).model_fields:
            value = getattr(self, field)
            if field in secrets and value is not None:
                raw = value.get_secret_value() if isinstance(value, pydantic.SecretStr) else value
                data[field] = {_ENCRYPTED: crypto.encrypt(json.dumps(to_jsonable_python(raw)))}
            else:
                data[field] = to_jsonable_python(value)
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    def save(self, name: str, *, overwrite: bool = False, url: str | None = None) -> None:
        """Store this block as ``name`` (of its kind); an existing one only with ``overwrite``."""
        validate_name(name)
        data = self._dump()
        with _open(url) as store:
            if not rows.write_block(store, self.block_kind, name, data, overwrite=overwrite):
                raise BlockError(
                    f"A {self.block_kind} block named {name!r} already exists in the run store at "
                    f"{store.display_url}. Fixes:\n  1. save(..., overwrite=True) to replace it, or\n"
                    f"  2. choose another name, or\n  3. delete it first: {type(self).__name__}.delete({name!r})"
                )
        self._block_name = name

    @classmethod
    def _from_row(cls, row: rows.BlockRow) -> Block:
        kind_cls = block_class(row.kind)
        try:
            data = json.loads(row.data)
        except ValueError:
            raise BlockError(f"The stored block {row.kind}/{row.name} is not valid JSON; save it again.") from None
        for field in kind_cls.secret_fields():
            stored = data.get(field)
            if isinstance(stored, dict) and set(stored) == {_ENCRYPTED}:
                text = crypto.decrypt(
                    stored[_ENCRYPTED], what=f"The secret field {field!r} of block {row.kind}/{row.name}"
                )
                data[field] = json.loads(text)
                redaction.remember_secret(data[field])
        try:
            block = kind_cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise BlockError(
                f"The stored block {row.kind}/{row.name} no longer fits {kind_cls.__name__}: {exc}. "
                "Fix: save it again with the current fields."
            ) from None
        block._block_name = row.name
        return block

    @classmethod
    def load(cls, name: str, *, url: str | None = None) -> Self:
        """The block of this kind saved as ``name``; on ``Block`` itself, the one block of any kind with that name."""
        validate_name(name)
        with _open(url) as store:
            if cls is Block:
                found = rows.list_blocks(store, name=name)
                if len(found) > 1:
                    kinds = ", ".join(row.kind for row in found)
                    raise BlockError(
                        f"{len(found)} blocks are named {name!r} ({kinds}). Fix: load it through its kind, "
                        f"e.g. Secret.load({name!r})."
                    )
                row = found[0] if found else None
            else:
                row = rows.read_block(store, cls.block_kind, name)
            if row is None:
                raise cls._not_found(store, name)
        block = cls._from_row(row)
        assert isinstance(block, cls)
        return block

    @classmethod
    def _not_found(cls, store: RunStore, name: str) -> BlockNotFoundError:
        kind = None if cls is Block else cls.block_kind
        known = [row.name if kind else f"{row.kind}/{row.name}" for row in rows.list_blocks(store, kind)]
        what = f"{kind} block" if kind else "block"
        listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "") if known else "none"
        return BlockNotFoundError(
            f"No {what} named {name!r} in the run store at {store.display_url} (known: {listing}). Fixes:\n"
            f"  1. check the name (daskflow block ls), or\n  2. save it first: {cls.__name__}(...).save({name!r}), or\n"
            "  3. point daskflow.runstore.url at the run store that holds it."
        )

    @classmethod
    def delete(cls, name: str, *, url: str | None = None) -> None:
        """Delete the block of this kind saved as ``name``; a :class:`BlockNotFoundError` if there is none."""
        if cls is Block:
            raise BlockError("Block.delete needs a kind: call it on one, e.g. Secret.delete(name).")
        validate_name(name)
        with _open(url) as store:
            if not rows.delete_block(store, cls.block_kind, name):
                raise cls._not_found(store, name)

    @classmethod
    def list(cls, *, url: str | None = None) -> builtins.list[BlockInfo]:
        """The saved blocks of this kind (of every kind, on ``Block``), ordered by kind and name."""
        with _open(url) as store:
            found = rows.list_blocks(store, None if cls is Block else cls.block_kind)
        return [BlockInfo(row.kind, row.name, row.created, row.updated) for row in found]

    # -- travelling and hashing ---------------------------------------------------------

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self._block_name is None:
            return super().__reduce_ex__(protocol)  # unsaved: by value, like any model
        return (type(self)._unpickle, (self._block_name,))

    @classmethod
    def _unpickle(cls, name: str) -> Block:
        url = resolve_url()
        if not settings.get("runstore.url", None) and not (settings.home() / DEFAULT_FILE_NAME).exists():
            raise BlockError(
                f"The {cls.block_kind} block {name!r} travelled here by name, but this process has no run store "
                f"to load it from (daskflow.runstore.url is unset and {mask_password(url)} does not exist). "
                "Fix: give the workers the run store URL (DASK_DASKFLOW__RUNSTORE__URL=... in their "
                f"environment, or daskflow.runstore.url in their dask config) and, for secrets, {crypto.KEY_ENV_VAR}."
            )
        return cls.load(name)

    def __daskflow_hash__(self) -> dict[str, str]:
        if self._block_name is None:
            if type(self).secret_fields():
                raise UnhashableInputError(
                    f"an unsaved {type(self).__name__} block holds secrets, which never go into a cache key. "
                    f"Fix: save it and pass {type(self).__name__}.load(name) (hashed by kind and name), or "
                    "leave the argument out of the cache key (cache_policy=INPUTS - 'argument_name')."
                )
            return {"kind": self.block_kind, "fields": self._dump()}
        return {"kind": self.block_kind, "name": self._block_name}


def block_class(kind: str) -> type[Block]:
    """The block class of ``kind``; a :class:`BlockError` naming the known kinds if none is imported."""
    found = _KINDS.get(kind)
    if found is None:
        raise BlockError(
            f"Unknown block kind {kind!r} (known in this process: {', '.join(sorted(_KINDS)) or 'none'}). "
            "Fix: import the module that defines it before loading."
        )
    return found


def load_block(kind: str, name: str, *, url: str | None = None) -> Block:
    """The block ``kind``/``name``, for callers that have the kind as text (the CLI)."""
    return block_class(kind).load(name, url=url)
