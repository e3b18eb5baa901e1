"""Many lookups at once, and small values carried in the footer, so that a hit costs little.

A cached map of 10,000 runs asks for 10,000 entries. Asked one by one, each
costs a ``stat`` and a read, and each small value a full Parquet decode
(hundreds of microseconds for one integer: a reader per column, a codec per
page). Two things make the batch cheap:

* **Few requests, no wasted parse.** :func:`lookup_many` reads each entry
  whole in one request and parses its footer alone (no ``ParquetFile``, whose
  Python-side setup a lookup never uses). A local folder is read key by key
  with plain system calls: a failed ``open`` is cheaper than a listing that
  asks the size of every file, so a cold map of misses costs one call a key.
  Other storage is listed once (from ``list_from`` keys on; below, each key is
  asked for) and the entries found are fetched in chunks with
  ``cat_ranges``, which an asynchronous filesystem (s3fs...) serves
  concurrently.
* **Small values inline.** An entry whose value is small (its Arrow table
  under :data:`INLINE_MAX_BYTES` as an IPC record batch, not a pickle) also
  carries that batch in its footer, with its SHA-256 (the footer key
  ``daskflow.inline`` and the field ``"inline_sha256"``; layout 1 had a
  base64 IPC stream in the JSON's ``"inline"``). The data pages are written
  as before, so every other reader (pandas, ``read``/``load``) sees a
  normal entry; a batch lookup reads the footer alone (whose parse checks the
  copy's digest, for every reader) and hands it over undecoded (an :class:`~.deferred.InlineValue`,
  decoded when the value is needed, which a hit whose downstream hits too
  never is). The digest stands in for the page checksums: a flipped bit in
  the copy is a miss, never a wrong value. The copy is what a batch lookup
  returns, so damage confined to the data pages (which it does not read)
  does not make it a miss; every other reader still checks them.

A batch lookup is quiet: what is not a clean hit (absent, expired, corrupt,
unreadable storage) is simply left out, with no warning, because its caller
(the engine's prefetch) leaves those runs to look again the usual way, which
warns once, where the run is recorded.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daskflow.exceptions import CorruptResultError
from daskflow.results import serializers
from daskflow.results.deferred import InlineValue
from daskflow.results.metadata import ParsedFooter, entry_name, parse_metadata, signature_digest, utc
from daskflow.results.parquet import footer_keys, open_parquet

if TYPE_CHECKING:
    from daskflow.results.entries import EntryInfo, ResultStore
    from daskflow.results.storage import Location

__all__ = [
    "INLINE_MAX_BYTES",
    "BatchLookup",
    "decode_inline",
    "inline_copy",
    "lookup_many",
    "read_footer",
]

INLINE_MAX_BYTES = 4096
"""The largest Arrow IPC stream of a value that is copied into its entry's footer."""

_CHUNK = 256  # entries read at once: bounded memory (a chunk's bytes), enough in flight on remote storage
_THREADS = 4  # chunks looked up at once
# Non-blocking: a pipe named like an entry must not hang the lookup (it is refused once opened).
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def inline_copy(table: Any, format: str) -> tuple[bytes, str] | None:
    """The copy of ``table`` for its footer and the copy's SHA-256, or None when it is too large or a pickle.

    The copy is one Arrow IPC record batch message without its schema: the
    footer holds that schema already (``ARROW:schema``), and a reader
    rebuilds the batch with it. A table with dictionary columns (a pandas
    categorical) gets no copy, since its dictionaries would need messages of
    their own. Pickles stay out: their payload is only ever read after its
    signature is checked, on the one path that checks it.
    """
    if format in (serializers.PICKLE, serializers.FRAMES):
        return None
    import pyarrow as pa

    if table.nbytes > INLINE_MAX_BYTES or any("dictionary<" in str(field.type) for field in table.schema):
        return None
    columns = [column.combine_chunks() for column in table.columns]
    message = pa.RecordBatch.from_arrays(columns, schema=table.schema).serialize().to_pybytes()
    if len(message) > INLINE_MAX_BYTES:
        return None
    return message, hashlib.sha256(message).hexdigest()


@functools.lru_cache(maxsize=64)
def _schema(text: str) -> Any:
    """The Arrow schema stored as ``text`` (base64 IPC): the entries of one task share it, read it once."""
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))


def decode_inline(
    stream: bytes, format: str, codec: dict[str, Any], length: int | None, schema: str | None = None
) -> Any:
    """The value an inline copy holds (its digest checked already).

    ``schema``: the entry's Arrow schema, for a copy that is a record batch
    message (layout 2); without it, the copy is an IPC stream (layout 1).
    """
    import pyarrow as pa

    try:
        if schema is None:
            table = pa.ipc.open_stream(stream).read_all()
        else:
            table = pa.Table.from_batches([pa.ipc.read_record_batch(pa.py_buffer(stream), _schema(schema))])
    except Exception as exc:
        raise CorruptResultError(f"its inline copy of the value does not read ({type(exc).__name__}: {exc})") from exc
    # The copy keeps the written types exactly: no cast back to the stored schema is needed.
    value = serializers.decode(table, format, codec)
    actual = len(value) if isinstance(value, list | tuple) else None
    if length is not None and actual != length:
        raise CorruptResultError(f"its metadata records length {length}, but its value has {actual}")
    return value


def lookup_many(
    store: ResultStore,
    keys: Sequence[str],
    *,
    defer_above: int | None = None,
    list_from: int = 16,
    now: datetime | None = None,
) -> dict[str, tuple[EntryInfo, Any]]:
    """The clean hits among ``keys``: key -> ``(info, value)``, the value :attr:`~.ResultStore.NOT_READ`
    for an entry over ``defer_above`` bytes (its footer alone is read), an
    :class:`~.deferred.InlineValue` for one carrying its value inline. See the module docstring."""
    with BatchLookup(store, defer_above=defer_above, list_from=list_from, now=now) as lookup:
        lookup.add(keys)
        return lookup.hits()


class BatchLookup:
    """A batch lookup fed its keys as they become known: :func:`lookup_many` in parts.

    Each chunk of :data:`_CHUNK` keys is read and parsed on a thread (reading a
    file and parsing a footer release the GIL) while the caller computes the
    next keys; :meth:`hits` waits for them all. Remote storage is listed once,
    when the first chunk goes. The caller loads pyarrow first, one thread at a
    time, as :meth:`~.ResultStore.lookup_many` does. Use it as a context
    manager: leaving it stops its threads.
    """

    def __init__(
        self, store: ResultStore, *, defer_above: int | None = None, list_from: int = 16, now: datetime | None = None
    ) -> None:
        self.store = store
        self.moment = utc(now, "now") or datetime.now(UTC)
        self.limit = sys.maxsize if defer_above is None else defer_above
        self.list_from = list_from
        self._seen: set[str] = set()
        self._pending: dict[str, str] = {}  # key -> entry name, not yet sent
        self._listing: dict[str, int] | None = None
        self._parts: list[Future[list[tuple[str, tuple[EntryInfo, Any]]]]] = []
        self._pool: ThreadPoolExecutor | None = None

    def add(self, keys: Iterable[str]) -> None:
        """Look these keys up too (a key asked for twice is looked up once)."""
        for key in keys:
            if key in self._seen:
                continue
            name = entry_name(key)  # a bad key raises here, in the caller's thread
            self._seen.add(key)
            self._pending[key] = name
            if len(self._pending) >= _CHUNK:
                self._send()

    def hits(self) -> dict[str, tuple[EntryInfo, Any]]:
        """The clean hits among every key added: key -> ``(info, value)`` as :func:`lookup_many` gives."""
        found: dict[str, tuple[EntryInfo, Any]] = {}
        if self._pending and not self._parts:  # one chunk in all: no thread is worth starting
            found.update(self._look(*self._take()))
        elif self._pending:
            self._send()
        for part in self._parts:
            found.update(part.result())
        return found

    def __enter__(self) -> BatchLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _take(self) -> tuple[dict[str, str], dict[str, int] | None]:
        """The pending keys' names, and their sizes on remote storage (asked here, in the caller's thread,
        so that one listing serves every chunk)."""
        names, self._pending = self._pending, {}
        location = self.store._location
        if location.strategy == "local":
            return names, None
        if self._listing is None and len(names) >= self.list_from:
            try:
                self._listing = location.sizes()
            except Exception:
                self._listing = {}
        if self._listing is None:
            return names, _stat_each(location, names)
        return names, {key: self._listing[name] for key, name in names.items() if name in self._listing}

    def _send(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="daskflow-lookup")
        self._parts.append(self._pool.submit(self._look, *self._take()))

    def _look(self, names: dict[str, str], sizes: dict[str, int] | None) -> list[tuple[str, tuple[EntryInfo, Any]]]:
        location = self.store._location
        if sizes is None:
            fetch = _fetch_local(location.root, names, self.limit)
        else:
            fetch = _fetch_remote(location, names, sizes, self.limit)
        return _look_chunk(self.store, names, fetch, self.moment)


def _look_chunk(
    store: ResultStore, names: dict[str, str], fetch: Iterator[tuple[str, bytes | None]], moment: datetime
) -> list[tuple[str, tuple[EntryInfo, Any]]]:
    found = []
    for key, data in fetch:
        try:
            if data is None:  # larger than defer_above: its footer only, the value when needed
                info = store.head(key, now=moment)
                hit = None if info is None else (info, store.NOT_READ)
            else:
                hit = _look(store, key, names[key], data, moment)
        except Exception:  # whatever it is, the run's own lookup will say it
            continue
        if hit is not None:
            found.append((key, hit))
    return found


def _fetch_local(root: str, names: dict[str, str], limit: int) -> Iterator[tuple[str, bytes | None]]:
    """``(key, bytes)`` of each entry of ``names`` in a local folder, ``(key, None)`` for one over ``limit``.

    Key by key with plain system calls: a failed ``open`` costs less than a
    listing's look at every file of the folder.
    """
    for key, name in names.items():
        try:
            data = _read_local(os.path.join(root, name), limit)
        except OSError:  # absent (a miss), or unreadable: the run's own lookup says which
            continue
        yield key, data


def _stat_each(location: Location, names: dict[str, str]) -> dict[str, int]:
    """The size of each entry of ``names`` that remote storage holds, asked key by key."""
    sizes = {}
    for key, name in names.items():
        try:
            sizes[key] = location.stat(name).size
        except Exception:
            continue
    return sizes


def _fetch_remote(
    location: Location, names: dict[str, str], sizes: dict[str, int], limit: int
) -> Iterator[tuple[str, bytes | None]]:
    """As :func:`_fetch_local` on other storage, for the entries ``sizes`` found: one ``cat_ranges`` for the small."""
    small = [key for key, size in sizes.items() if size <= limit]
    for key, size in sizes.items():
        if size > limit:
            yield key, None
    if not small:
        return
    try:
        fetched = location.fs.cat_ranges([location.path(names[key]) for key in small], None, None, on_error="return")
    except Exception:
        return
    for key, data in zip(small, fetched, strict=True):
        if isinstance(data, bytes | bytearray | memoryview):  # else the error met: left to the run
            yield key, bytes(data)


def _read_local(path: str, limit: int) -> bytes | None:
    """The whole file at ``path``, or None when it holds more than ``limit`` bytes."""
    fd = os.open(path, _READ_FLAGS)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):  # a folder, a pipe...: not an entry (the run's lookup says so)
            raise OSError(f"{path} is not a regular file")
        size = status.st_size
        if size > limit:
            return None
        data = os.read(fd, size + 1)  # one byte more: a file that grew since is read to its end
        if len(data) > size:
            chunks = [data]
            while chunks[-1]:
                chunks.append(os.read(fd, 1 << 16))
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data


def read_footer(data: bytes, key: str, path: str) -> ParsedFooter:
    """The checked metadata of the entry in ``data``, from its Parquet footer alone.

    Only the footer's key-value metadata is parsed (see :func:`~.parquet.footer_keys`),
    not the rest a ``ParquetFile`` sets up, which a lookup never uses; a damaged
    footer is a ``CorruptResultError`` as in :func:`~.parquet.open_entry`.
    """
    return parse_metadata(footer_keys(data), key, path, len(data))


def _look(store: ResultStore, key: str, name: str, data: bytes, moment: datetime) -> tuple[EntryInfo, Any] | None:
    parsed = read_footer(data, key, store._location.display(name))
    info = parsed.info
    if info.is_expired(moment):
        return None
    if info.format == serializers.PICKLE:
        signature_digest(parsed.signature)
        return info, store._decode(open_parquet(data), parsed)  # checks the signature before unpickling
    stream = parsed.inline  # its digest was checked with the rest of the footer
    if stream is None:
        return info, store._decode(open_parquet(data), parsed)
    # The copy is the value as written (its digest matched): the data pages are not read, and it
    # is decoded only if someone needs the value (a hit whose downstream hits too never does).
    if parsed.inline_is_batch and parsed.schema is None:
        raise CorruptResultError("its inline copy of the value has no Arrow schema to be read with")
    schema = parsed.schema if parsed.inline_is_batch else None
    return info, InlineValue(
        decode_inline, info.version, info.length, (stream, info.format, parsed.codec, info.length, schema)
    )
