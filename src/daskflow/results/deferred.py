"""A cache hit that stays in storage until something needs its value.

A hit on a large entry reads only the entry's footer: the run ends ``Cached``
with a :class:`StoredValue` for its data, which names the entry (store, key,
version) and, for a list, its length. Nothing is read unless a downstream run
misses and needs the value, or someone asks for it (``state.result()``); a map
over a stored list gets stored items, and only the item a run needs is read
(one row group of a list of DataFrames). So a warm pipeline whose steps all
hit reads nothing but footers, and moves references instead of data.

The version check on load keeps this honest: the value read must be the one
the hit saw. An entry rewritten meanwhile (a refresh, a recompute after
expiry) raises :class:`~daskflow.results.StaleResultError` rather than hand
over other data under the old version; an entry found damaged when read is
removed, so the next run computes it again, and the error says so.
"""

from __future__ import annotations

from typing import Any

from daskflow.exceptions import CorruptResultError, ResultError, UnreadableValueError
from daskflow.states import DeferredData, GivenVersion, KnownValue, LoadedOnce

__all__ = ["InlineValue", "StoredValue", "UnreadableValueError"]


class StoredValue(LoadedOnce):
    """The value of entry ``key`` (data version ``entry_version``) in ``store``; item ``path`` of it."""

    __slots__ = ("store", "key", "entry_version", "_length", "path")

    def __init__(
        self, store: Any, key: str, entry_version: str, length: int | None = None, path: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        self.store = store
        self.key = key
        self.entry_version = entry_version
        self._length = length
        self.path = path

    @property
    def version(self) -> str:
        return self.entry_version + "".join(f"/{i}" for i in self.path)

    @property
    def length(self) -> int | None:
        return self._length

    def _load(self) -> Any:
        path = self.path
        try:
            value = self.store.load(self.key, self.entry_version, item=path[0] if path else None)
        except CorruptResultError as exc:
            removed = _remove(self.store, self.key)
            raise UnreadableValueError(
                f"the cached value {self.key!r} at {self.store.path(self.key)} could not be read: {exc}"
                + ("; the entry was removed, so the next run computes it again" if removed else "")
            ) from exc
        except FileNotFoundError as exc:
            raise UnreadableValueError(
                f"the cached value {self.key!r} at {self.store.path(self.key)} was deleted after the cache hit that "
                "found it; run the flow again to compute it"
            ) from exc
        except ResultError as exc:
            raise UnreadableValueError(f"the cached value {self.key!r} could not be used: {exc}") from exc
        for index in path[1:]:
            value = value[index]
        return value

    def item(self, index: int) -> DeferredData:
        if self._loaded:
            return KnownValue.of_item(self._value, index, self.version)
        if self.length is not None:
            if not -self.length <= index < self.length:
                raise IndexError(f"item {index} of a stored list of {self.length}")
            index %= self.length
        return StoredValue(self.store, self.key, self.entry_version, None, (*self.path, index))

    def __reduce__(self) -> tuple[Any, ...]:
        # The reference travels, never the value: whoever needs it reads it from the storage.
        return (StoredValue, (self.store, self.key, self.entry_version, self.length, self.path))

    def __repr__(self) -> str:
        where = "".join(f"[{i}]" for i in self.path)
        return f"StoredValue({self.key!r}{where}, version={self.version!r})"


class InlineValue(LoadedOnce, GivenVersion):
    """A small value found by a batch lookup, still in the encoded form its entry's footer carried.

    The copy's digest was checked when it was found, so it is the entry's value;
    decoding it is left until someone needs it, which a hit whose downstream
    hits too never does (see :mod:`daskflow.results.batch`). It travels decoded.
    """

    __slots__ = ("_decode", "_args", "_version", "_length")

    def __init__(self, decode: Any, version: str, length: int | None, args: tuple[Any, ...] = ()) -> None:
        super().__init__()
        # decode(*args) gives the value: no functools.partial, one object fewer per hit of a large map.
        self._decode = decode
        self._args = args
        self._version = version
        self._length = length

    def in_memory(self) -> bool:
        return True  # nothing is read from storage: the copy is here

    def _load(self) -> Any:
        return self._decode(*self._args)

    def item(self, index: int) -> DeferredData:
        return KnownValue.of_item(self.get(), index, self.version)

    def __reduce__(self) -> tuple[Any, ...]:
        return (KnownValue, (self.get(), self.version))

    def __repr__(self) -> str:
        return f"InlineValue(version={self.version!r})"


def _remove(store: Any, key: str) -> bool:
    try:
        return bool(store.delete(key))
    except Exception:
        return False
