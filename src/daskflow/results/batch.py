"""Many lookups at once, and small values carried in the footer, so that a hit costs little.

A cached map of 10,000 runs asks for 10,000 entries. Asked one by one, each
costs a ``stat`` and a read, and each small value a full Parquet decode
(hundreds of microseconds for one integer: a reader per column, a codec per
page). Two things make the batch cheap:

* **One listing.** :func:`lookup_many` lists the store's folder once and
  reads only the entries that are there; a cold map of misses opens nothing.
  Below ``list_from`` keys it asks for each instead, as a listing of a large
  folder would cost more.
* **Small values inline.** An entry whose value is small (its Arrow table
  under :data:`INLINE_MAX_BYTES` as an IPC stream, not a pickle) also carries
  that stream in its footer's metadata, with its SHA-256 (``"inline"`` and
  ``"inline_sha256"``). The data pages are written as before, so every other
  reader (older daskflow, pandas, ``read``/``load``) sees a normal entry; a
  batch lookup reads the footer alone, checks the stream's digest and hands
  it over undecoded (an :class:`~.deferred.InlineValue`, decoded when the
  value is needed, which a hit whose downstream hits too never is). The digest stands in for the page checksums: a flipped bit in
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
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daskflow.exceptions import CorruptResultError
from daskflow.results import serializers
from daskflow.results.deferred import InlineValue
from daskflow.results.metadata import ParsedFooter, entry_name, signature_digest, utc
from daskflow.results.parquet import open_entry

if TYPE_CHECKING:
    from daskflow.results.entries import EntryInfo, ResultStore

__all__ = ["INLINE_MAX_BYTES", "decode_inline", "inline_fields", "inline_stream", "lookup_many"]

INLINE_MAX_BYTES = 4096
"""The largest Arrow IPC stream of a value that is copied into its entry's footer."""


def inline_fields(table: Any, format: str) -> dict[str, str]:
    """The footer fields that carry ``table`` inline, or none when it is too large or a pickle.

    Pickles stay out: their payload is only ever read after its signature is
    checked, on the one path that checks it.
    """
    if format in (serializers.PICKLE, serializers.FRAMES):
        return {}
    import pyarrow as pa

    if table.nbytes > INLINE_MAX_BYTES:
        return {}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    stream = sink.getvalue().to_pybytes()
    if len(stream) > INLINE_MAX_BYTES:
        return {}
    return {"inline": base64.b64encode(stream).decode("ascii"), "inline_sha256": hashlib.sha256(stream).hexdigest()}


def inline_stream(parsed: ParsedFooter) -> bytes | None:
    """The IPC stream an entry carries in its footer (checked by its digest), or None if it has none."""
    if parsed.inline is None:
        return None
    try:
        stream = base64.b64decode(parsed.inline, validate=True)
    except ValueError as exc:
        raise CorruptResultError(f"its inline copy of the value is not base64 ({exc})") from exc
    if hashlib.sha256(stream).hexdigest() != parsed.inline_sha256:
        raise CorruptResultError("its inline copy of the value does not match its digest")
    return stream


def decode_inline(stream: bytes, format: str, codec: dict[str, Any], length: int | None) -> Any:
    """The value an inline stream holds (its digest checked already)."""
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(stream).read_all()
    except Exception as exc:
        raise CorruptResultError(f"its inline copy of the value does not read ({type(exc).__name__}: {exc})") from exc
    # The stream keeps the written types exactly: no cast back to the stored schema is needed.
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
    location = store._location
    moment = utc(now, "now") or datetime.now(UTC)
    names = {key: entry_name(key) for key in keys}
    sizes: dict[str, int] = {}
    if len(keys) >= list_from:
        try:
            listing = location.sizes()
        except Exception:
            return {}
        sizes = {key: listing[name] for key, name in names.items() if name in listing}
    else:
        for key, name in names.items():
            try:
                sizes[key] = location.stat(name).size
            except Exception:
                continue
    found: dict[str, tuple[EntryInfo, Any]] = {}
    for key, size in sizes.items():
        try:
            hit = _look(store, key, names[key], size, defer_above, moment)
        except Exception:  # whatever it is, the run's own lookup will say it
            continue
        if hit is not None:
            found[key] = hit
    return found


def _look(
    store: ResultStore, key: str, name: str, size: int, defer_above: int | None, moment: datetime
) -> tuple[EntryInfo, Any] | None:
    location = store._location
    if defer_above is not None and size > defer_above:
        info = store.head(key, now=moment)
        return None if info is None else (info, store.NOT_READ)
    data = location.read_bytes(name)
    parquet, parsed = open_entry(data, key, location.display(name))
    info = parsed.info
    if info.is_expired(moment):
        return None
    if info.format == serializers.PICKLE:
        signature_digest(parsed.signature)
        return info, store._decode(parquet, parsed)  # checks the signature before unpickling
    stream = inline_stream(parsed)
    if stream is None:
        return info, store._decode(parquet, parsed)
    # The copy is the value as written (its digest matched): the data pages are not read, and it
    # is decoded only if someone needs the value (a hit whose downstream hits too never does).
    decode = functools.partial(decode_inline, stream, info.format, parsed.codec, info.length)
    return info, InlineValue(decode, info.version, info.length)
