"""The byte frames every hash is written in, and the helpers that name what cannot be hashed.

Each item of a value is a frame ``tag NUL length payload``, or ``tag NUL
count`` followed by that many child frames, so the stream is prefix-free
(see the package docstring). These are the only functions that write to the
SHA-256 sink; the encoder and the library hashers compose them.
"""

from __future__ import annotations

import datetime as dt
import reprlib
import struct
from typing import Protocol

__all__ = [
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "NAN",
    "Refusal",
    "Sink",
    "float_bytes",
    "int_bytes",
    "open_frame",
    "put",
    "put_str",
    "short",
    "step_text",
    "type_name",
    "tz_identity",
]

FORMAT_VERSION = 1
"""Bumped whenever the encoding changes, so old cache entries stop matching."""

# ~3 Python frames per level: stay well under the default recursion limit of
# 1000 even when called from deep inside the engine.
MAX_DEPTH = 200
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
NAN = _F64.pack(float("nan"))  # one canonical quiet NaN, whatever the payload or sign
short = reprlib.Repr()
short.maxstring = 40
short.maxother = 40


class Sink(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


class Refusal(Exception):
    """Internal: a part of the value cannot be hashed; collects its path on the way out."""

    def __init__(self, obj: object, reason: str) -> None:
        super().__init__(reason)
        self.type_name = type_name(type(obj))
        self.reason = reason
        self.path: list[str] = []


def type_name(cls: type) -> str:
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


def step_text(step: object) -> str:
    """A step of an error path: ``.attr`` as given, ``[3]`` for an index, ``['k']`` for a key."""
    if isinstance(step, str):
        return step
    if isinstance(step, tuple):
        return f"[{short.repr(step[0])}]"
    return f"[{step}]"


def put(sink: Sink, tag: bytes, payload: bytes | memoryview) -> None:
    sink.update(tag + b"\0" + _U64.pack(len(payload)))
    sink.update(payload)


def open_frame(sink: Sink, tag: bytes, count: int) -> None:
    sink.update(tag + b"\0" + _U64.pack(count))


def put_str(sink: Sink, tag: bytes, text: str) -> None:
    put(sink, tag, text.encode("utf-8", "surrogatepass"))


def int_bytes(n: int) -> bytes:
    return n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)


def float_bytes(x: float) -> bytes:
    # All NaNs are one value to Python code; -0.0 stays distinct from 0.0
    # because a function can tell them apart (1 / x, math.copysign).
    return NAN if x != x else _F64.pack(x)


def tz_identity(tz: dt.tzinfo | None) -> str:
    """A machine-independent name for a time zone ('' for naive)."""
    if tz is None:
        return ""
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        return f"fixed:{offset.total_seconds() if offset is not None else 0}:{tz.tzname(None)}"
    for attr in ("key", "zone"):  # zoneinfo.ZoneInfo, pytz
        name = getattr(tz, attr, None)
        if isinstance(name, str):
            return f"olson:{name}"
    filename = getattr(tz, "_filename", None)  # dateutil's tzfile keeps an absolute path
    if isinstance(filename, str) and "zoneinfo/" in filename:
        return "olson:" + filename.rsplit("zoneinfo/", 1)[1]
    # Unknown tzinfo classes: the offset and name written beside this pin the value.
    return type_name(type(tz))
