"""The result store: cached task results as Parquet files, one per cache key.

A :class:`ResultStore` keeps each entry at ``<root>/<key>.parquet``. The
entry's facts live in the Parquet footer's key-value metadata, under the key
``daskflow``, as one JSON object::

    {"layout": 3, "key": "...", "task_name": "...", "created": "<ISO, UTC>",
     "expiration": "<ISO, UTC>" | null, "format": "pandas.DataFrame" | ...,
     "codec": {...}, "versions": {"daskflow": ..., "pyarrow": ..., ...},
     "signature": "hmac-sha256:<hex>" | null,
     "version": "<uuid4 hex>", "length": <int> | null,
     "inline_sha256": "<hex>"}   (small values only)

beside Arrow's own ``ARROW:schema`` (the value's exact Arrow schema) and, for
a small value, ``daskflow.inline`` (a copy of it: see :mod:`.batch`). Each
part is in the footer once (see :mod:`.metadata` for layouts 1 and 2, which
are still read), so a hit parses a footer of 1.2 KB for an int (2.3 KB in
layout 2, 6.7 KB in layout 1).

Listing entries reads footers only, and an entry is self-describing: the
entries of one task can be found from the metadata alone. ``version`` names
the data of one write (a rewrite of the key gets a new one) and ``length`` is
the number of items of a stored list or tuple; both came after layout 1 was
fixed, so an older entry may lack them (its version is then ``key@created``).
The inline copy serves batch lookups only; every other read decodes the data
pages.

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

This module is the store and its policy; the footer's metadata is parsed in
:mod:`.metadata` and the Parquet bytes are written and decoded in :mod:`.parquet`.
"""

from __future__ import annotations

import functools
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from daskflow import settings
from daskflow.exceptions import (
    ConfigurationError,
    CorruptResultError,
    ResultError,
    ResultWarning,
    StaleResultError,
    UnsignedResultError,
)
from daskflow.locking import LockManager
from daskflow.results import serializers, signing
from daskflow.results.batch import inline_copy, lookup_many
from daskflow.results.metadata import (
    ENTRY_SUFFIX,
    INLINE_KEY,
    LAYOUT_VERSION,
    METADATA_KEY,
    EntryInfo,
    ParsedFooter,
    describe_versions,
    entry_name,
    footer_metadata,
    key_of,
    library_versions,
    not_parquet,
    parse_metadata,
    signature_digest,
    storage_failed,
    undecodable,
    utc,
    validate_key,
)
from daskflow.results.parquet import (
    conformed,
    frame_parts,
    item_index,
    open_entry,
    read_data,
    write_parquet,
)
from daskflow.results.storage import (
    TEMP_PREFIX,
    Location,
    StoredFile,
    default_storage_url,
    temp_created,
)

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
    "load_libraries",
    "new_version",
    "open_store",
    "validate_key",
]

# A writer slower than this on a temp file loses it to prune; a killed writer's
# temp waits at most this long.
DEFAULT_TEMP_GRACE = timedelta(hours=1)

_SERIALIZERS = ("parquet", "pickle")


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


def load_libraries() -> None:
    """Import pyarrow (and pandas, where installed) once, one thread at a time.

    Threads that import pyarrow for the first time at once can see it half
    initialised ("partially initialized module 'pyarrow' has no attribute
    'Table'": its modules import each other), as when several Dask worker
    threads write their first entries together. One imports; the others wait.
    A writer thread (:mod:`.write_behind`) must not be the first to import them
    either, beside a task thread hashing a DataFrame: its run calls this first.
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


def _without_footer(metadata: dict[bytes, bytes] | None) -> dict[bytes, bytes] | None:
    """A table's schema metadata without the keys of an entry's footer (which a read adds to it)."""
    rest = {k: v for k, v in (metadata or {}).items() if k not in (METADATA_KEY, INLINE_KEY)}
    return rest or None


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


def new_version() -> str:
    """A fresh data version for one write of an entry (random: see :meth:`ResultStore.write`)."""
    return uuid.uuid4().hex


def _default_holder() -> str:
    return f"{os.getpid()}:{threading.get_ident()}"


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
        lock_manager: LockManager | None = None,
    ) -> None:
        if lock_manager is not None and not isinstance(lock_manager, LockManager):
            raise ConfigurationError(
                f"ResultStore(lock_manager={lock_manager!r}): not a lock manager. Fix: pass "
                "daskflow.locking.memory.MemoryLockManager() or daskflow.locking.filesystem.FileSystemLockManager(dir)."
            )
        self.lock_manager = lock_manager
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
        return {"location": self._location, "signing_key": self._explicit_key, "lock_manager": self.lock_manager}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.lock_manager = state.get("lock_manager")
        self._location = state["location"]
        self._explicit_key = state["signing_key"]
        self._key = None
        self._key_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ResultStore({self.url!r})"

    def path(self, key: str) -> str:
        """The URL of the entry for ``key`` (whether or not it exists)."""
        return self._location.display(entry_name(key))

    # -- record locks (Prefect's ResultStore locking, used by SERIALIZABLE keyed transactions) --

    def _locks(self) -> LockManager:
        if self.lock_manager is None:
            raise ConfigurationError(
                f"{self!r} has no lock manager, so it cannot lock a key. Fix: "
                "ResultStore(..., lock_manager=MemoryLockManager()) (or FileSystemLockManager(dir) across processes)."
            )
        return self.lock_manager

    def acquire_lock(
        self,
        key: str,
        holder: str | None = None,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Lock ``key`` for ``holder`` (default: this process and thread); False if ``acquire_timeout`` passed."""
        return self._locks().acquire_lock(key, holder or _default_holder(), acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str | None = None) -> None:
        self._locks().release_lock(key, holder or _default_holder())

    def is_locked(self, key: str) -> bool:
        return self._locks().is_locked(key)

    def is_lock_holder(self, key: str, holder: str | None = None) -> bool:
        return self._locks().is_lock_holder(key, holder or _default_holder())

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return self._locks().wait_for_lock(key, timeout)

    # -- write ---------------------------------------------------------------

    def write(
        self,
        key: str,
        value: Any,
        *,
        task_name: str,
        expiration: datetime | None = None,
        serializer: str = "parquet",
        version: str | None = None,
        report: Callable[[str], None] | None = None,
    ) -> EntryInfo | None:
        """Store ``value`` under ``key``, replacing any entry atomically.

        Returns the new entry's info, or ``None`` with a :class:`ResultWarning`
        when the storage failed (the previous entry, if any, is left intact).
        Raises ``ResultError`` for a bad key, a naive ``expiration``, or a value
        that needs ``serializer="pickle"``; ``ConfigurationError`` for an
        unknown serializer.

        ``version`` names the write (default: a fresh :func:`new_version`): a
        writer that hands the value on before its entry lands (see
        :mod:`.write_behind`) chooses it first, so that runs downstream can key
        by it at once. ``report`` receives the text of a storage failure instead
        of the warning (a background writer has no run's warnings to catch them
        in: ``warnings.catch_warnings`` is not thread-safe).
        """
        load_libraries()
        name = entry_name(key)
        expires = utc(expiration, "expiration")
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
                self._write_failed(key, task_name, path, f"no signing key for the pickle: {exc}", report)
                return None
        created = datetime.now(UTC)
        versions = library_versions()
        # Random, not a hash of the value: it names this write, so a reader that
        # looked up one write never takes another's data for it.
        version = version or new_version()
        length = len(value) if isinstance(value, list | tuple) else None
        fields = {
            "key": key,
            "task_name": task_name,
            "created": created.isoformat(),
            "expiration": expires.isoformat() if expires else None,
            "format": encoded.format,
            "codec": encoded.codec,
            "versions": versions,
            "signature": signature,
            "version": version,
            "length": length,
        }
        # A table read from another entry may carry that entry's footer keys in its schema: not ours to copy.
        table, metadata = encoded.table, encoded.table.schema.metadata
        if metadata and (METADATA_KEY in metadata or INLINE_KEY in metadata):
            table = table.replace_schema_metadata(_without_footer(metadata))
        footer = footer_metadata(fields, table.schema, inline_copy(table, encoded.format))
        writer = functools.partial(write_parquet, table, encoded.row_groups, footer)
        try:
            size = self._location.write_atomic(name, writer)
        except Exception as exc:
            self._write_failed(key, task_name, path, f"{type(exc).__name__}: {exc}", report)
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
        load_libraries()
        name = entry_name(key)
        moment = utc(now, "now") or datetime.now(UTC)
        path = self._location.display(name)
        try:
            data = self._location.read_bytes(name)
        except FileNotFoundError:
            return None
        except Exception as exc:
            self._warn_unusable(key, path, storage_failed(exc))
            return None
        try:
            parquet, parsed = open_entry(data, key, path)
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
        load_libraries()
        name = entry_name(key)
        moment = utc(now, "now") or datetime.now(UTC)
        path = self._location.display(name)
        try:
            parsed = self._read_footer(key, self._location.stat(name), check_schema=True)
            if parsed.info.is_expired(moment):
                return None
            if parsed.info.format == serializers.PICKLE:
                signature_digest(parsed.signature)  # the key itself is checked on load, with the payload
        except FileNotFoundError:
            return None
        except ResultError as exc:
            self._warn_unusable(key, path, str(exc))
            return None
        except Exception as exc:
            self._warn_unusable(key, path, storage_failed(exc))
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
                size = self._location.stat(entry_name(key)).size
            except FileNotFoundError:
                return None
            except Exception:
                size = 0  # let read() say what is wrong with the storage
            if size > defer_above:
                info = self.head(key, now=now)
                return None if info is None else (info, self.NOT_READ)
        found = self.read(key, now=now)
        return None if found is None else (found.info, found.value)

    def lookup_many(
        self, keys: Sequence[str], *, defer_above: int | None = None, list_from: int = 16
    ) -> dict[str, tuple[EntryInfo, Any]]:
        """The clean hits among ``keys`` in one go: key -> ``(info, value)`` as :meth:`lookup` gives,
        except that a small value is an :class:`~.deferred.InlineValue` (``.get()`` decodes it).

        One listing of the folder (from ``list_from`` keys on), one read per
        entry found, small values decoded from the copy their footer carries.
        Quiet: a key that is not a clean hit (absent, expired, unusable) is
        left out without a warning, for the caller to look up again the usual
        way (see :mod:`daskflow.results.batch`).
        """
        load_libraries()
        return lookup_many(self, keys, defer_above=defer_above, list_from=list_from)

    @property
    def strategy(self) -> str:
        """How the storage publishes entries: ``local``, ``put`` or ``rename`` (see :mod:`.storage`)."""
        return self._location.strategy

    @property
    def in_process(self) -> bool:
        """Whether the entries live in this process's memory only (``memory://``)."""
        return self._location.in_process

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
        load_libraries()
        name = entry_name(key)
        path = self._location.display(name)
        data = self._location.read_bytes(name)
        try:
            parquet, parsed = open_entry(data, key, path)
            if parsed.info.version != version:
                raise StaleResultError(
                    f"cached result {key!r} at {path} was rewritten since it was looked up: it holds "
                    f"version {parsed.info.version!r}, not {version!r}. Fix: look the key up again (head)."
                )
            return self._decode(parquet, parsed, item)
        except (CorruptResultError, UnsignedResultError) as exc:
            error = UnsignedResultError if isinstance(exc, UnsignedResultError) else CorruptResultError
            raise error(f"cached result {key!r} at {path} is unusable: {exc}") from exc

    def _decode(self, parquet: Any, parsed: ParsedFooter, item: int | None = None) -> Any:
        """The value of an opened entry (or item ``item`` of it): what ``read`` and ``load`` share."""
        if item is not None:
            return self._decode_item(parquet, parsed, item)
        info = parsed.info
        if info.format == serializers.FRAMES:
            # Frame by frame, from each one's row groups: each reads as in load(item=...).
            tables = [read_data(parquet, parsed, part) for part in frame_parts(parquet, parsed)]
            try:
                value = serializers.decode_frames(tables, parsed.codec)
            except Exception as exc:
                raise undecodable(info, exc) from exc
        elif info.format == serializers.PICKLE:
            value = self._unpickle_verified(info, read_data(parquet, parsed), parsed.signature)
        else:
            table = read_data(parquet, parsed)
            table = table.replace_schema_metadata(_without_footer(table.schema.metadata))
            try:
                value = serializers.decode(table, info.format, parsed.codec)
            except Exception as exc:
                raise undecodable(info, exc) from exc
        if parsed.recorded:
            # The footer is the one part no checksum covers: its length must agree with the data.
            length = len(value) if isinstance(value, list | tuple) else None
            if length != info.length:
                raise CorruptResultError(
                    f"its metadata records length {info.length}, but its value has "
                    f"{'no length' if length is None else length}"
                )
        return value

    def _decode_item(self, parquet: Any, parsed: ParsedFooter, item: int) -> Any:
        info = parsed.info
        if parsed.recorded and info.length is None:
            raise ResultError(
                f"cached result {info.key!r} at {info.path} holds a value of format {info.format!r}, not a list "
                f"or tuple: it has no item {item!r}. Fix: load it without item=."
            )
        if info.format == serializers.FRAMES:
            parts = frame_parts(parquet, parsed)
            index = item_index(item, len(parts), info)
            table = read_data(parquet, parsed, parts[index])
            try:
                return serializers.decode_frame(table, parsed.codec, index)
            except Exception as exc:
                raise undecodable(info, exc) from exc
        if info.length is not None:
            item_index(item, info.length, info)  # out of range: said before the data is read
        value = self._decode(parquet, parsed)
        if not isinstance(value, list | tuple):
            raise ResultError(
                f"cached result {info.key!r} at {info.path} holds a {serializers._qualname(type(value))}, not a list "
                f"or tuple: it has no item {item!r}. Fix: load it without item=."
            )
        return value[item_index(item, len(value), info)]

    def _unpickle_verified(self, info: EntryInfo, table: Any, signature: str | None) -> Any:
        try:
            payload = serializers.pickle_payload(table)
        except Exception as exc:
            raise CorruptResultError(f"its pickle column is malformed ({exc})") from exc
        digest = signature_digest(signature)
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
                f"it was written with {describe_versions(info.versions)}"
            ) from exc

    # -- admin ---------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether an entry file for ``key`` is present (expired or not; not checked for corruption)."""
        return self._location.exists(entry_name(key))

    def delete(self, key: str) -> bool:
        """Remove the entry for ``key``; ``False`` if there was none."""
        return self._location.remove(entry_name(key))

    def info(self, key: str) -> EntryInfo:
        """What the entry for ``key`` says about itself (its footer only, not its value).

        ``FileNotFoundError`` if there is none; ``ResultError`` if it is unreadable.
        """
        name = entry_name(key)
        return self._read_info(key, self._location.stat(name))

    def entries(self) -> Iterator[EntryInfo]:
        """Info of every readable entry (footers only); unreadable ones warn and are skipped."""
        for file in self._location.list():
            key = key_of(file.name)
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
        moment = utc(now, "now") or datetime.now(UTC)
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
                key = key_of(file.name)
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
            if file.name.startswith(TEMP_PREFIX) or key_of(file.name) is not None:
                removed += int(self._location.remove(file.name))
        return removed

    # -- internals -----------------------------------------------------------

    def _read_info(self, key: str, file: StoredFile) -> EntryInfo:
        return self._read_footer(key, file).info

    def _read_footer(self, key: str, file: StoredFile, *, check_schema: bool = False) -> ParsedFooter:
        """The entry's metadata from its footer alone: ranged reads of the file's tail, no data page is decoded.

        With ``check_schema``, the file's columns are also checked against the
        stored schema (as a read would), so a lookup that reads no data still
        sees a table that was swapped under the metadata.
        """
        load_libraries()
        import pyarrow.parquet as pq

        path = self._location.display(file.name)
        if file.size == 0:
            raise CorruptResultError("the file is empty (0 bytes)")
        with self._location.open_read(file.name) as f:
            try:
                metadata = pq.read_metadata(f)
            except Exception as exc:
                raise not_parquet(exc) from exc
        parsed = parse_metadata(metadata.metadata, key, path, file.size)
        if check_schema and parsed.schema is not None:
            try:
                columns = metadata.schema.to_arrow_schema()
            except Exception as exc:
                raise not_parquet(exc) from exc
            conformed(columns.empty_table(), parsed.schema)
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
    def _write_failed(key: str, task_name: str, path: str, why: str, report: Callable[[str], None] | None) -> None:
        text = (
            f"could not cache the result of task {task_name!r} under key {key!r} at {path} ({why}); "
            "the value itself is not lost, but the next run will compute it again"
        )
        if report is not None:
            report(text)
            return
        warnings.warn(ResultWarning(text), stacklevel=3)
