"""The result store: cached task results as Parquet files, one per cache key.

A :class:`ResultStore` keeps each entry at ``<root>/<key>.parquet``. The
entry's facts live in the Parquet footer's key-value metadata, under the key
``daskflow``, as one JSON object::

    {"layout": 1, "key": "...", "task_name": "...", "created": "<ISO, UTC>",
     "expiration": "<ISO, UTC>" | null, "format": "pandas.DataFrame" | ...,
     "codec": {...}, "schema": "<base64 Arrow IPC schema>",
     "versions": {"daskflow": ..., "pyarrow": ..., ...},
     "signature": "hmac-sha256:<hex>" | null,
     "version": "<uuid4 hex>", "length": <int> | null}

so listing entries reads footers only, and an entry is self-describing: the
entries of one task can be found from the metadata alone. ``version`` names
the data of one write (a rewrite of the key gets a new one) and ``length`` is
the number of items of a stored list or tuple; both came after layout 1 was
fixed, so an older entry lacks them (its version is then ``key@created``).

A lookup can be split in two: :meth:`ResultStore.head` reads the footer
alone (is there a live entry, which version, how many items), and
:meth:`ResultStore.load` reads the value later, of that version only, all of
it or one item of a list. ``read`` does both at once.

What goes wrong is answered in one of three ways, chosen so that the engine
never loses a computed value and never crashes on a bad cache:

* **The caller's mistake raises** ``ResultError`` (or ``ConfigurationError``):
  a key that is not a safe file name, a naive datetime, an unknown serializer,
  a value that needs ``result_serializer="pickle"``.
* **The storage's trouble warns** with :class:`ResultWarning` and carries on:
  ``write`` returns ``None`` when the entry could not be stored (the caller
  still holds the value); ``read`` returns ``None`` — a miss — for an entry
  that is corrupt, truncated, of the wrong schema, written by a newer layout,
  or pickled without a valid signature, naming the key, the path and why.
  An absent or expired entry is a plain miss, without a warning. ``head``
  does the same from the footer alone.
* **``load`` raises**: it comes after a ``head`` that found the entry, so a
  miss can no longer be quiet. ``FileNotFoundError`` when the entry is gone,
  :class:`StaleResultError` when it was rewritten since, and
  ``CorruptResultError`` / ``UnsignedResultError`` with the text ``read``
  would have warned.

The admin operations (``entries``, ``prune``, ``clear``, ``delete``,
``exists``) raise ``OSError`` when the storage itself fails: whoever calls
them wants to know. A pickled entry is never unpickled before its signature
is checked (see :mod:`.signing`).
"""

from __future__ import annotations

import bisect
import functools
import importlib.metadata
import itertools
import json
import operator
import platform
import re
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from daskflow import settings
from daskflow._version import __version__
from daskflow.exceptions import ConfigurationError, CorruptResultError, ResultError, UnsignedResultError
from daskflow.results import serializers, signing
from daskflow.results.storage import TEMP_PREFIX, Location, StoredFile, default_storage_url, temp_created

__all__ = [
    "DEFAULT_TEMP_GRACE",
    "ENTRY_SUFFIX",
    "LAYOUT_VERSION",
    "METADATA_KEY",
    "EntryInfo",
    "PruneReport",
    "ResultStore",
    "ResultWarning",
    "StaleResultError",
    "StoredResult",
    "open_store",
    "validate_key",
]

ENTRY_SUFFIX = ".parquet"
METADATA_KEY = b"daskflow"
LAYOUT_VERSION = 1
# A writer slower than this on a temp file loses it to prune; a killed writer's
# temp waits at most this long.
DEFAULT_TEMP_GRACE = timedelta(hours=1)

_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_SERIALIZERS = ("parquet", "pickle")


class ResultWarning(UserWarning):
    """A cached result could not be written, or an entry could not be used and counts as a miss."""


class StaleResultError(ResultError):
    """The entry was rewritten since it was looked up: it holds another version than the one asked for.

    The key is the same, the data may not be (a refresh, an expired value
    computed again, another writer): look the key up again.
    """


@dataclass(frozen=True)
class EntryInfo:
    """What an entry's metadata says about it, plus its size and path.

    ``version`` names the data of one write: a rewrite of the key, even with
    an equal value, has another, so a version looked up once still names the
    same data later (see :meth:`ResultStore.load`). Entries written before
    versions were recorded get ``"<key>@<created, ISO>"``. ``length`` is the
    number of items of a stored list or tuple, ``None`` for other values (and
    for entries written before lengths were recorded). Not to be confused
    with ``versions``, the libraries that wrote the entry.
    """

    key: str
    task_name: str
    created: datetime
    expiration: datetime | None
    format: str
    size: int
    path: str
    version: str
    versions: Mapping[str, str] = field(default_factory=dict, hash=False)
    signed: bool = False
    length: int | None = None

    def is_expired(self, now: datetime | None = None) -> bool:
        """Whether the entry's expiration has been reached at ``now`` (default: now)."""
        moment = _utc(now, "now") or datetime.now(UTC)
        return self.expiration is not None and moment >= self.expiration


@dataclass(frozen=True)
class StoredResult:
    """A value read back from the store, with its entry's metadata."""

    value: Any
    info: EntryInfo


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`ResultStore.prune` removed and what it left.

    ``expired``: keys of expired entries removed. ``orphans``: paths of temp
    files past the grace period removed (left by killed writers).
    ``unreadable``: paths of entries whose metadata could not be read, left in
    place (a read treats them as a miss; the next write replaces them).
    ``failed``: paths that could not be removed. ``bytes_freed``: their total.
    """

    expired: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    bytes_freed: int = 0


_libraries_loaded = False
_libraries_lock = threading.Lock()


def _load_libraries() -> None:
    """Import pyarrow (and pandas, where installed) once, one thread at a time.

    Threads that import pyarrow for the first time at once can see it half
    initialised ("partially initialized module 'pyarrow' has no attribute
    'Table'": its modules import each other), as when several Dask worker
    threads write their first entries together. One imports; the others wait.
    """
    global _libraries_loaded
    if _libraries_loaded:
        return
    with _libraries_lock:
        if not _libraries_loaded:
            import pyarrow.parquet  # noqa: F401  (imports pyarrow)

            try:
                import pandas  # noqa: F401
            except ImportError:
                pass
            _libraries_loaded = True


def open_store(storage: Any) -> ResultStore:
    """The store a ``result_storage`` setting names: a store, an fsspec URL, an object with
    ``url`` (and ``storage_options``), or ``None`` for the configured default."""
    if isinstance(storage, ResultStore):
        return storage
    if storage is None or isinstance(storage, str):
        return ResultStore(storage)
    url = getattr(storage, "url", None)
    if isinstance(url, str):
        return ResultStore(url, getattr(storage, "storage_options", None))
    raise ResultError(
        f"result_storage must be an fsspec URL such as 's3://bucket/prefix', a ResultStore, or an object "
        f"with a url, got {type(storage).__name__}"
    )


def validate_key(key: str) -> str:
    """Return ``key`` if it can name an entry file, else raise ``ResultError``."""
    if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
        raise ResultError(
            f"invalid result key {key!r}: a key names a file, so it must be 1 to 128 letters, "
            "digits, '_', '-' or '.', not starting with '.' (no path separators). Keys from "
            "daskflow's cache policies are hex digests. Fix: hash a custom key, e.g. "
            "hashlib.sha256(key.encode()).hexdigest()."
        )
    return key


class ResultStore:
    """Cached task results as Parquet files in one fsspec folder.

    ``url`` is any fsspec URL (``file://``, ``memory://``, ``s3://bucket/prefix``,
    or a plain path); ``None`` means the ``daskflow.results.storage`` setting, or
    ``file://<daskflow home>/results``. ``storage_options`` go to fsspec;
    ``None`` means ``daskflow.results.storage_options``. ``signing_key`` signs
    pickled entries; ``None`` means the ``daskflow.results.signing_key`` setting
    or the key file ``<daskflow home>/results.key``.

    Picklable: it travels to Dask workers as its URL, options and explicit
    signing key, and opens the filesystem again there. Safe to share between
    threads.
    """

    def __init__(
        self,
        url: str | None = None,
        storage_options: dict[str, Any] | None = None,
        *,
        signing_key: bytes | str | None = None,
    ) -> None:
        if storage_options is None:
            storage_options = dict(settings.get("results.storage_options", None) or {})
        self._location = Location(url or default_storage_url(), storage_options)
        self._explicit_key = signing_key
        self._key: bytes | None = None
        self._key_lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._location.url

    @property
    def storage_options(self) -> dict[str, Any]:
        return dict(self._location.storage_options)

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self._location, "signing_key": self._explicit_key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._location = state["location"]
        self._explicit_key = state["signing_key"]
        self._key = None
        self._key_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ResultStore({self.url!r})"

    def path(self, key: str) -> str:
        """The URL of the entry for ``key`` (whether or not it exists)."""
        return self._location.display(_entry_name(key))

    # -- write ---------------------------------------------------------------

    def write(
        self,
        key: str,
        value: Any,
        *,
        task_name: str,
        expiration: datetime | None = None,
        serializer: str = "parquet",
    ) -> EntryInfo | None:
        """Store ``value`` under ``key``, replacing any entry atomically.

        Returns the new entry's info, or ``None`` with a :class:`ResultWarning`
        when the storage failed (the previous entry, if any, is left intact).
        Raises ``ResultError`` for a bad key, a naive ``expiration``, or a value
        that needs ``serializer="pickle"``; ``ConfigurationError`` for an
        unknown serializer.
        """
        _load_libraries()
        name = _entry_name(key)
        expires = _utc(expiration, "expiration")
        if serializer not in _SERIALIZERS:
            raise ConfigurationError(
                f"unknown result serializer {serializer!r} for task {task_name!r}. "
                f"Fix: use one of {', '.join(map(repr, _SERIALIZERS))}."
            )
        encoded = serializers.encode(
            value, allow_pickle=serializer == "pickle", subject=f"the result of task {task_name!r}"
        )
        path = self._location.display(name)
        signature = None
        if encoded.pickled is not None:
            try:
                signature = f"{signing.SIGNATURE_SCHEME}:{signing.sign(self._signing_key(), key, encoded.pickled)}"
            except (OSError, ConfigurationError) as exc:
                self._warn_write_failed(key, task_name, path, f"no signing key for the pickle: {exc}")
                return None
        created = datetime.now(UTC)
        versions = _library_versions()
        # Random, not a hash of the value: it names this write, so a reader that
        # looked up one write never takes another's data for it.
        version = uuid.uuid4().hex
        length = len(value) if isinstance(value, list | tuple) else None
        metadata = {
            "layout": LAYOUT_VERSION,
            "key": key,
            "task_name": task_name,
            "created": created.isoformat(),
            "expiration": expires.isoformat() if expires else None,
            "format": encoded.format,
            "codec": encoded.codec,
            "schema": serializers.schema_text(encoded.table),
            "versions": versions,
            "signature": signature,
            "version": version,
            "length": length,
        }
        table = encoded.table
        schema_metadata = dict(table.schema.metadata or {})
        schema_metadata[METADATA_KEY] = json.dumps(metadata, separators=(",", ":")).encode()
        table = table.replace_schema_metadata(schema_metadata)
        try:
            size = self._location.write_atomic(name, functools.partial(_write_parquet, table, encoded.row_groups))
        except Exception as exc:
            self._warn_write_failed(key, task_name, path, f"{type(exc).__name__}: {exc}")
            return None
        return EntryInfo(
            key=key,
            task_name=task_name,
            created=created,
            expiration=expires,
            format=encoded.format,
            size=size,
            path=path,
            version=version,
            versions=versions,
            signed=signature is not None,
            length=length,
        )

    # -- read ----------------------------------------------------------------

    def read(self, key: str, *, now: datetime | None = None) -> StoredResult | None:
        """The stored value for ``key``, or ``None`` for a miss.

        A miss is an absent or expired entry, or one that cannot be used; the
        last also warns with :class:`ResultWarning` naming the key, the path and
        why. Only a bad key raises (``ResultError``).
        """
        _load_libraries()
        name = _entry_name(key)
        moment = _utc(now, "now") or datetime.now(UTC)
        path = self._location.display(name)
        try:
            data = self._location.read_bytes(name)
        except FileNotFoundError:
            return None
        except Exception as exc:
            self._warn_unusable(key, path, _storage_failed(exc))
            return None
        try:
            parquet, parsed = _open_entry(data, key, path)
            if parsed.info.is_expired(moment):
                return None
            value = self._decode(parquet, parsed)
        except ResultError as exc:
            self._warn_unusable(key, path, str(exc))
            return None
        return StoredResult(value=value, info=parsed.info)

    def head(self, key: str, *, now: datetime | None = None) -> EntryInfo | None:
        """The info of the live entry for ``key`` from its footer alone, or ``None`` for a miss.

        As :meth:`read` without the value: the data pages are not read, so a
        lookup costs the footer, however large the value. The misses are
        those of ``read`` that the footer shows (absent, expired, not Parquet,
        bad metadata, a pickle without a usable signature), with the same
        warnings; damage to the data shows only when it is loaded. Pass the
        info's ``version`` to :meth:`load` to read the value.
        """
        _load_libraries()
        name = _entry_name(key)
        moment = _utc(now, "now") or datetime.now(UTC)
        path = self._location.display(name)
        try:
            parsed = self._read_footer(key, self._location.stat(name), check_schema=True)
            if parsed.info.is_expired(moment):
                return None
            if parsed.info.format == serializers.PICKLE:
                _signature_digest(parsed.signature)  # the key itself is checked on load, with the payload
        except FileNotFoundError:
            return None
        except ResultError as exc:
            self._warn_unusable(key, path, str(exc))
            return None
        except Exception as exc:
            self._warn_unusable(key, path, _storage_failed(exc))
            return None
        return parsed.info

    NOT_READ: Any = object()
    """What :meth:`lookup` gives in place of a value it left in storage."""

    def lookup(
        self, key: str, *, defer_above: int | None = None, now: datetime | None = None
    ) -> tuple[EntryInfo, Any] | None:
        """A cache lookup: ``(info, value)`` for a hit, ``None`` for a miss (as :meth:`read`).

        An entry larger than ``defer_above`` bytes is not read: only its footer
        is (as :meth:`head`), and the value is :attr:`NOT_READ`, for
        :meth:`load` later if it is needed at all. A smaller one is read whole
        in one request, which costs less than a second look.
        """
        if defer_above is not None:
            try:
                size = self._location.stat(_entry_name(key)).size
            except FileNotFoundError:
                return None
            except Exception:
                size = 0  # let read() say what is wrong with the storage
            if size > defer_above:
                info = self.head(key, now=now)
                return None if info is None else (info, self.NOT_READ)
        found = self.read(key, now=now)
        return None if found is None else (found.info, found.value)

    def load(self, key: str, version: str, *, item: int | None = None) -> Any:
        """The value of version ``version`` of the entry for ``key``: all of it, or item ``item`` of a list.

        For a value found by :meth:`head` and wanted later, or elsewhere: the
        version makes sure the value is the one looked up, not what a rewrite
        of the key left since. Expiry is not checked again. Everything
        ``read`` checks is checked, but nothing is a quiet miss any more:

        * ``FileNotFoundError``: the entry is gone (deleted, pruned);
        * :class:`StaleResultError`: it now holds another version;
        * ``CorruptResultError`` / ``UnsignedResultError``: it cannot be
          used, with the reason ``read`` would warn, naming the key and path.

        ``item`` picks one item of a stored list or tuple, negative as in
        Python: of a list of DataFrames only that frame's row groups are
        decoded; other lists are decoded whole first. ``IndexError`` for an
        item out of range, ``ResultError`` when the value is not a list or tuple.
        """
        _load_libraries()
        name = _entry_name(key)
        path = self._location.display(name)
        data = self._location.read_bytes(name)
        try:
            parquet, parsed = _open_entry(data, key, path)
            if parsed.info.version != version:
                raise StaleResultError(
                    f"cached result {key!r} at {path} was rewritten since it was looked up: it holds "
                    f"version {parsed.info.version!r}, not {version!r}. Fix: look the key up again (head)."
                )
            return self._decode(parquet, parsed, item)
        except (CorruptResultError, UnsignedResultError) as exc:
            error = UnsignedResultError if isinstance(exc, UnsignedResultError) else CorruptResultError
            raise error(f"cached result {key!r} at {path} is unusable: {exc}") from exc

    def _decode(self, parquet: Any, parsed: _Parsed, item: int | None = None) -> Any:
        """The value of an opened entry (or item ``item`` of it): what ``read`` and ``load`` share."""
        if item is not None:
            return self._decode_item(parquet, parsed, item)
        info = parsed.info
        if info.format == serializers.FRAMES:
            # Frame by frame, from each one's row groups: each reads as in load(item=...).
            tables = [_read_data(parquet, parsed, part) for part in _frame_parts(parquet, parsed)]
            try:
                value = serializers.decode_frames(tables, parsed.codec)
            except Exception as exc:
                raise _undecodable(info, exc) from exc
        elif info.format == serializers.PICKLE:
            value = self._unpickle_verified(info, _read_data(parquet, parsed), parsed.signature)
        else:
            table = _read_data(parquet, parsed)
            rest = {k: v for k, v in (table.schema.metadata or {}).items() if k != METADATA_KEY}
            table = table.replace_schema_metadata(rest or None)
            try:
                value = serializers.decode(table, info.format, parsed.codec)
            except Exception as exc:
                raise _undecodable(info, exc) from exc
        if parsed.recorded:
            # The footer is the one part no checksum covers: its length must agree with the data.
            length = len(value) if isinstance(value, list | tuple) else None
            if length != info.length:
                raise CorruptResultError(
                    f"its metadata records length {info.length}, but its value has "
                    f"{'no length' if length is None else length}"
                )
        return value

    def _decode_item(self, parquet: Any, parsed: _Parsed, item: int) -> Any:
        info = parsed.info
        if parsed.recorded and info.length is None:
            raise ResultError(
                f"cached result {info.key!r} at {info.path} holds a value of format {info.format!r}, not a list "
                f"or tuple: it has no item {item!r}. Fix: load it without item=."
            )
        if info.format == serializers.FRAMES:
            parts = _frame_parts(parquet, parsed)
            index = _item_index(item, len(parts), info)
            table = _read_data(parquet, parsed, parts[index])
            try:
                return serializers.decode_frame(table, parsed.codec, index)
            except Exception as exc:
                raise _undecodable(info, exc) from exc
        if info.length is not None:
            _item_index(item, info.length, info)  # out of range: said before the data is read
        value = self._decode(parquet, parsed)
        if not isinstance(value, list | tuple):
            raise ResultError(
                f"cached result {info.key!r} at {info.path} holds a {serializers._qualname(type(value))}, not a list "
                f"or tuple: it has no item {item!r}. Fix: load it without item=."
            )
        return value[_item_index(item, len(value), info)]

    def _unpickle_verified(self, info: EntryInfo, table: Any, signature: str | None) -> Any:
        try:
            payload = serializers.pickle_payload(table)
        except Exception as exc:
            raise CorruptResultError(f"its pickle column is malformed ({exc})") from exc
        digest = _signature_digest(signature)
        try:
            key_bytes = self._signing_key()
        except (OSError, ConfigurationError) as exc:
            raise UnsignedResultError(f"no signing key is available to check its signature ({exc})") from exc
        if not signing.verify(key_bytes, info.key, payload, digest):
            raise UnsignedResultError(
                "its signature does not match the configured signing key (signed with another key, "
                "or tampered with); it was not unpickled"
            )
        try:
            return serializers.unpickle(payload)
        except Exception as exc:
            raise CorruptResultError(
                f"its signed pickle does not load ({type(exc).__name__}: {exc}); "
                f"it was written with {_describe_versions(info.versions)}"
            ) from exc

    # -- admin ---------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether an entry file for ``key`` is present (expired or not; not checked for corruption)."""
        return self._location.exists(_entry_name(key))

    def delete(self, key: str) -> bool:
        """Remove the entry for ``key``; ``False`` if there was none."""
        return self._location.remove(_entry_name(key))

    def info(self, key: str) -> EntryInfo:
        """What the entry for ``key`` says about itself (its footer only, not its value).

        ``FileNotFoundError`` if there is none; ``ResultError`` if it is unreadable.
        """
        name = _entry_name(key)
        return self._read_info(key, self._location.stat(name))

    def entries(self) -> Iterator[EntryInfo]:
        """Info of every readable entry (footers only); unreadable ones warn and are skipped."""
        for file in self._location.list():
            key = _key_of(file.name)
            if key is None:
                continue
            try:
                yield self._read_info(key, file)
            except FileNotFoundError:
                continue  # deleted since the listing
            except ResultError as exc:
                self._warn_unusable(key, self._location.display(file.name), str(exc))

    def prune(self, now: datetime | None = None, *, temp_grace: timedelta = DEFAULT_TEMP_GRACE) -> PruneReport:
        """Remove expired entries, and temp files older than ``temp_grace`` (orphans of killed writers).

        Temp files younger than ``temp_grace`` may belong to a writer still at
        work and are kept. An expired entry rewritten between the listing and
        the removal can be removed too: that costs a recompute, never a wrong value.
        """
        moment = _utc(now, "now") or datetime.now(UTC)
        expired: list[str] = []
        orphans: list[str] = []
        unreadable: list[str] = []
        failed: list[str] = []
        freed = 0
        for file in self._location.list():
            path = self._location.display(file.name)
            if file.name.startswith(TEMP_PREFIX):
                created = temp_created(file.name)
                if created is None or moment - created < temp_grace:
                    continue
                bucket, label = orphans, path
            else:
                key = _key_of(file.name)
                if key is None:
                    continue
                try:
                    info = self._read_info(key, file)
                except FileNotFoundError:
                    continue
                except ResultError:
                    unreadable.append(path)
                    continue
                if not info.is_expired(moment):
                    continue
                bucket, label = expired, key
            try:
                self._location.remove(file.name)
            except OSError:
                failed.append(path)
                continue
            bucket.append(label)
            freed += file.size
        return PruneReport(tuple(expired), tuple(orphans), tuple(unreadable), tuple(failed), freed)

    def clear(self) -> int:
        """Remove every entry and temp file of this store (other files are left); return how many."""
        removed = 0
        for file in self._location.list():
            if file.name.startswith(TEMP_PREFIX) or _key_of(file.name) is not None:
                removed += int(self._location.remove(file.name))
        return removed

    # -- internals -----------------------------------------------------------

    def _read_info(self, key: str, file: StoredFile) -> EntryInfo:
        return self._read_footer(key, file).info

    def _read_footer(self, key: str, file: StoredFile, *, check_schema: bool = False) -> _Parsed:
        """The entry's metadata from its footer alone: ranged reads of the file's tail, no data page is decoded.

        With ``check_schema``, the file's columns are also checked against the
        stored schema (as a read would), so a lookup that reads no data still
        sees a table that was swapped under the metadata.
        """
        _load_libraries()
        import pyarrow.parquet as pq

        path = self._location.display(file.name)
        if file.size == 0:
            raise CorruptResultError("the file is empty (0 bytes)")
        with self._location.open_read(file.name) as f:
            try:
                metadata = pq.read_metadata(f)
            except Exception as exc:
                raise _not_parquet(exc) from exc
        parsed = _parse_metadata(metadata.metadata, key, path, file.size)
        if check_schema and parsed.schema is not None:
            try:
                columns = metadata.schema.to_arrow_schema()
            except Exception as exc:
                raise _not_parquet(exc) from exc
            _conformed(columns.empty_table(), parsed.schema)
        return parsed

    def _signing_key(self) -> bytes:
        with self._key_lock:
            if self._key is None:
                self._key = signing.resolve_signing_key(self._explicit_key)
            return self._key

    @staticmethod
    def _warn_unusable(key: str, path: str, why: str) -> None:
        warnings.warn(
            ResultWarning(f"cached result {key!r} at {path} is unusable and is treated as a cache miss: {why}"),
            stacklevel=3,
        )

    @staticmethod
    def _warn_write_failed(key: str, task_name: str, path: str, why: str) -> None:
        warnings.warn(
            ResultWarning(
                f"could not cache the result of task {task_name!r} under key {key!r} at {path} ({why}); "
                "the value itself is not lost, but the next run will compute it again"
            ),
            stacklevel=3,
        )


def _write_parquet(table: Any, row_groups: tuple[int, ...] | None, sink: IO[bytes]) -> None:
    import pyarrow.parquet as pq

    # Page checksums make a flipped bit in the data a detected error, not a wrong
    # value. Non-"compliant" nesting keeps Arrow's own list field names ("item").
    options: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True, "use_compliant_nested_type": False}
    if row_groups is None:
        pq.write_table(table, sink, **options)
        return
    with pq.ParquetWriter(sink, table.schema, **options) as writer:
        start = 0
        for rows in row_groups:
            # An empty slice may write an empty row group or none: readers go by the codec's row counts.
            writer.write_table(table.slice(start, rows), row_group_size=max(rows, 1))
            start += rows


def _open_parquet(data: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not data:
        raise CorruptResultError("the file is empty (0 bytes)")
    try:
        return pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
    except Exception as exc:
        raise _not_parquet(exc) from exc


def _open_entry(data: bytes, key: str, path: str) -> tuple[Any, _Parsed]:
    """The entry in ``data``, opened (its footer read and checked, its data pages not yet)."""
    parquet = _open_parquet(data)
    return parquet, _parse_metadata(parquet.metadata.metadata, key, path, len(data))


def _read_data(parquet: Any, parsed: _Parsed, part: _Part | None = None) -> Any:
    """The entry's table with its stored schema: all of it, or the rows of ``part`` only.

    Only the row groups read have their page checksums checked: damage
    elsewhere in the file does not spoil a part that is whole.
    """
    try:
        if part is None:
            table = parquet.read()
        elif part.groups:
            table = parquet.read_row_groups(part.groups).slice(part.first, part.rows)
        else:
            table = parquet.schema_arrow.empty_table()
    except Exception as exc:
        raise CorruptResultError(f"its data pages do not read back ({type(exc).__name__}: {exc})") from exc
    if parsed.schema is not None:
        table = _conformed(table, parsed.schema)
    return table


def _conformed(table: Any, schema: str) -> Any:
    """``table`` cast to the stored ``schema``; ``CorruptResultError`` when its columns do not match."""
    try:
        return serializers.conform(table, schema)
    except Exception as exc:
        raise CorruptResultError(f"its schema does not match the stored one: {exc}") from exc


@dataclass(frozen=True)
class _Part:
    """Where one frame of a frames entry lies: ``rows`` rows from row ``first`` of row groups ``groups``."""

    groups: list[int]
    first: int
    rows: int


def _frame_parts(parquet: Any, parsed: _Parsed) -> list[_Part]:
    """Where each frame of a frames entry lies, from the frames' row counts and the row groups' own.

    The writer puts each frame in a row group of its own, but nothing here
    relies on it (an empty frame may have an empty row group or none): the
    frames' rows are laid end to end over the row groups' rows.
    """
    try:
        rows = serializers.frame_rows(parsed.codec)
    except Exception as exc:
        raise CorruptResultError(f"its {parsed.info.format} codec is malformed ({exc})") from exc
    if len(rows) != parsed.info.length:
        raise CorruptResultError(f"its metadata records length {parsed.info.length}, but its codec {len(rows)} frames")
    metadata = parquet.metadata
    counts = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
    if sum(counts) != sum(rows):
        raise CorruptResultError(f"its row groups hold {sum(counts)} rows, but its frames {sum(rows)}")
    ends = list(itertools.accumulate(counts))
    parts, start = [], 0
    for count in rows:
        if count:
            first, last = bisect.bisect_right(ends, start), bisect.bisect_left(ends, start + count)
            groups = [group for group in range(first, last + 1) if counts[group]]
            parts.append(_Part(groups, start - (ends[first] - counts[first]), count))
        else:
            parts.append(_Part([], 0, 0))
        start += count
    return parts


def _signature_digest(signature: str | None) -> str:
    """The digest of a pickled entry's signature; ``UnsignedResultError`` if it has none of a known scheme."""
    scheme, _, digest = (signature or "").partition(":")
    if not digest:
        raise UnsignedResultError("it is a pickled entry without a signature; it was not unpickled")
    if scheme != signing.SIGNATURE_SCHEME:
        raise UnsignedResultError(f"its signature scheme {scheme!r} is unknown; it was not unpickled")
    return digest


def _item_index(item: int, length: int, info: EntryInfo) -> int:
    index = operator.index(item)
    if not -length <= index < length:
        raise IndexError(
            f"item {item} is out of range: cached result {info.key!r} at {info.path} holds {length} items"
        )
    return index + length if index < 0 else index


def _not_parquet(exc: Exception) -> CorruptResultError:
    return CorruptResultError(f"it is not a readable Parquet file: truncated or damaged ({type(exc).__name__}: {exc})")


def _storage_failed(exc: Exception) -> str:
    return f"it could not be read from the storage ({type(exc).__name__}: {exc})"


def _undecodable(info: EntryInfo, exc: Exception) -> CorruptResultError:
    return CorruptResultError(
        f"its {info.format} data does not decode ({type(exc).__name__}: {exc}); "
        f"it was written with {_describe_versions(info.versions)}"
    )



@dataclass(frozen=True)
class _Parsed:
    """An entry's metadata, checked: the info plus what decoding needs.

    ``recorded``: the entry records its version and length (it was written
    since they exist), so a ``None`` length means "not a list or tuple".
    """

    info: EntryInfo
    codec: dict[str, Any]
    schema: str | None
    signature: str | None
    recorded: bool = True


def _parse_metadata(raw: Mapping[bytes, bytes] | None, key: str, path: str, size: int) -> _Parsed:
    blob = (raw or {}).get(METADATA_KEY)
    if blob is None:
        raise CorruptResultError("it has no daskflow metadata (the wrong schema, or not a daskflow entry)")
    try:
        meta = json.loads(blob)
        layout = int(meta["layout"])
        if layout > LAYOUT_VERSION:
            raise CorruptResultError(
                f"it uses entry layout {layout}, newer than this daskflow's {LAYOUT_VERSION} "
                f"(written with {_describe_versions(meta.get('versions', {}))})"
            )
        if meta["key"] != key:
            raise CorruptResultError(f"its metadata names key {meta['key']!r}, not {key!r}")
        if meta["format"] not in serializers.FORMATS:
            raise CorruptResultError(f"its format {meta['format']!r} is unknown")
        expiration = meta["expiration"]
        created = datetime.fromisoformat(meta["created"])
        version, length = meta.get("version"), meta.get("length")
        if version is not None and (not isinstance(version, str) or not version):
            raise ValueError(f"version {version!r} is not a non-empty string")
        if length is not None and (type(length) is not int or length < 0):
            raise ValueError(f"length {length!r} is not a count")
        info = EntryInfo(
            key=key,
            task_name=str(meta["task_name"]),
            created=created,
            expiration=datetime.fromisoformat(expiration) if expiration else None,
            format=meta["format"],
            size=size,
            path=path,
            # Entries from before versions: stable, and new for every rewrite unless two share a microsecond.
            version=f"{key}@{created.isoformat()}" if version is None else version,
            versions={str(k): str(v) for k, v in dict(meta.get("versions") or {}).items()},
            signed=bool(meta.get("signature")),
            length=length,
        )
        codec = dict(meta.get("codec") or {})
        schema, signature = meta.get("schema"), meta.get("signature")
    except ResultError:
        raise
    except Exception as exc:
        raise CorruptResultError(f"its daskflow metadata is malformed ({type(exc).__name__}: {exc})") from exc
    return _Parsed(
        info=info,
        codec=codec,
        schema=None if schema is None else str(schema),
        signature=None if signature is None else str(signature),
        recorded=version is not None,
    )


def _entry_name(key: str) -> str:
    return validate_key(key) + ENTRY_SUFFIX


def _key_of(name: str) -> str | None:
    if not name.endswith(ENTRY_SUFFIX) or name.startswith(TEMP_PREFIX):
        return None
    key = name[: -len(ENTRY_SUFFIX)]
    return key if _KEY_PATTERN.fullmatch(key) else None


def _utc(moment: datetime | None, what: str) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ResultError(
            f"{what} must be a timezone-aware datetime, got naive {moment!r}; a naive time is "
            f"ambiguous across machines. Fix: datetime.now(datetime.UTC) or .replace(tzinfo=...)."
        )
    return moment.astimezone(UTC)


@functools.cache
def _versions_cached() -> tuple[tuple[str, str], ...]:
    import pyarrow

    versions = {"daskflow": __version__, "pyarrow": str(pyarrow.__version__), "python": platform.python_version()}
    for dist in ("pandas", "numpy", "cloudpickle"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(versions.items())


def _library_versions() -> dict[str, str]:
    return dict(_versions_cached())


def _describe_versions(versions: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items()) or "unknown versions"
