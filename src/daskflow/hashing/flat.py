"""The frames of flat values, built in one go: the encoder's fast path for the commonest cache keys.

Most task arguments are plain scalars (an int of ``range(N)``, a file name),
and a policy's key is a small dict of argument digests. Walking such a value
with an :class:`~daskflow.hashing.encoder.Encoder` costs a few Python calls a
frame (dispatch, cycle bookkeeping, one ``update`` each); here its frames are
joined as bytes and hashed at once. The bytes are exactly those the encoder
writes (SHA-256 of a concatenation equals the digest of its parts fed in
order), so a key never depends on which path computed it: scalars of an exact
built-in type, and lists, tuples and plain dicts of them, up to
:data:`FLAT_MAX_ITEMS` items. Anything else (a subclass, a nested container,
an ``OrderedDict``) is left to the encoder.

:data:`SCALARS` is the one table of how each scalar type is written; the
encoder builds its own handlers for those types from it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import fractions
import hashlib
import pathlib
import uuid
from collections.abc import Callable
from typing import Any

from daskflow.hashing.frames import float_bytes, int_bytes

__all__ = ["FLAT_MAX_ITEMS", "SCALARS", "flat_frame"]

FLAT_MAX_ITEMS = 256
"""Containers up to this many items are joined in memory; larger ones are streamed by the encoder."""

_U64_BYTES = 8

SCALARS: dict[type, tuple[bytes, Callable[[Any], bytes]]] = {
    type(None): (b"none", lambda o: b""),
    type(...): (b"ellipsis", lambda o: b""),
    bool: (b"bool", lambda o: b"\1" if o else b"\0"),
    int: (b"int", int_bytes),
    float: (b"float", float_bytes),
    complex: (b"complex", lambda o: float_bytes(o.real) + float_bytes(o.imag)),
    str: (b"str", lambda o: o.encode("utf-8", "surrogatepass")),
    bytes: (b"bytes", bytes),
    bytearray: (b"bytearray", bytes),
    memoryview: (b"memoryview", lambda o: o.tobytes()),
    dt.date: (b"date", lambda o: int_bytes(o.toordinal())),
    dt.timedelta: (b"timedelta", lambda o: b"%d|%d|%d" % (o.days, o.seconds, o.microseconds)),
    decimal.Decimal: (b"decimal", lambda o: str(o).encode()),
    fractions.Fraction: (b"fraction", lambda o: b"%d/%d" % (o.numerator, o.denominator)),
    uuid.UUID: (b"uuid", lambda o: o.bytes),
    range: (b"range", lambda o: b"%d:%d:%d" % (o.start, o.stop, o.step)),
    pathlib.PurePosixPath: (b"posix-path", lambda o: str(o).encode()),
    pathlib.PosixPath: (b"posix-path", lambda o: str(o).encode()),
    pathlib.PureWindowsPath: (b"windows-path", lambda o: str(o).encode()),
    pathlib.WindowsPath: (b"windows-path", lambda o: str(o).encode()),
}
"""Exact scalar type -> (frame tag, payload bytes). Each is one frame ``tag NUL length payload``."""

# The frame header of each scalar type, with its NUL: one concatenation less per value.
_HEADS = {cls: tag + b"\0" for cls, (tag, _) in SCALARS.items()}
_WRITERS = {cls: to_bytes for cls, (_, to_bytes) in SCALARS.items()}


def _scalar(obj: Any) -> bytes | None:
    cls = type(obj)
    head = _HEADS.get(cls)
    if head is None:
        return None
    payload = _WRITERS[cls](obj)
    return head + len(payload).to_bytes(_U64_BYTES, "big") + payload


def _count(tag: bytes, count: int) -> bytes:
    return tag + b"\0" + count.to_bytes(_U64_BYTES, "big")


def flat_frame(obj: Any) -> bytes | None:
    """The encoder's exact bytes for ``obj`` if it is flat (see the module docstring), else None."""
    frame = _scalar(obj)
    if frame is not None:
        return frame
    cls = type(obj)
    if cls is list or cls is tuple:
        if len(obj) > FLAT_MAX_ITEMS:
            return None
        parts = [_count(b"list" if cls is list else b"tuple", len(obj))]
        for item in obj:
            frame = _scalar(item)
            if frame is None:
                return None
            parts.append(frame)
        return b"".join(parts)
    if cls is dict:
        if len(obj) > FLAT_MAX_ITEMS:
            return None
        # As the encoder's unordered(): each item hashed alone, the digests sorted.
        digests = []
        for key, value in obj.items():
            key_frame, value_frame = _scalar(key), _scalar(value)
            if key_frame is None or value_frame is None:
                return None
            digests.append(hashlib.sha256(key_frame + value_frame).digest())
        digests.sort()
        return _count(b"dict", len(digests)) + b"".join(digests)
    return None
