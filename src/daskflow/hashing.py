"""Deterministic content hashes: the same value gives the same key everywhere.

A cache key must name a value identically in every process, on every machine
and in every Python session, so nothing here touches ``hash()`` (salted per
process by ``PYTHONHASHSEED``), ``id()``, ``repr()`` of arbitrary objects or
pickle bytes. Instead each value is written as a canonical byte stream into a
SHA-256: every item is a *frame* ``tag NUL length payload`` (or ``tag NUL
count`` followed by that many child frames), so the stream is prefix-free and
``1``, ``1.0``, ``"1"``, ``True``, ``[1]`` and ``(1,)`` cannot collide. Where a
value has no order of its own (dict items, set members) each member is hashed
on its own and the digests are sorted, which makes the result independent of
insertion order and of the salted iteration order of sets. Arrays are written
as dtype, shape and little-endian C-order bytes; pandas and Arrow data column
by column, with null masks, so bytes hidden under nulls never leak in. We do
not use ``dask.base.tokenize`` (its output depends on which optional hashers
are installed), nor pandas' ``hash_pandas_object`` (64 bits a row, no dtypes,
and ``str()`` of object cells, which embeds memory addresses), nor Arrow IPC
bytes (they carry library versions in the schema metadata).

What cannot be named by content is refused with ``UnhashableInputError``
saying the type, where it sits in the value, and why: locks, sockets, open
files, generators and iterators, self-referential containers, and plain
objects with no data whose equality is their ``id()``. Ordinary class
instances are hashed by class and pickle state (as Prefect does, minus the
pickle bytes); functions, lambdas included, by qualified name, source,
defaults and closure values — not by the globals they read. A type that knows
better defines ``__daskflow_hash__(self)`` returning plain data to hash in its
place (and may name itself with ``__daskflow_hash_name__``, where several
classes stand for the same thing: the data versions of cached values); ``daskflow.blocks.Secret`` uses it to be hashed by name, never value.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import hashlib
import inspect
import io
import pathlib
import re
import reprlib
import struct
import sys
import types
import uuid
import weakref
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from daskflow.exceptions import UnhashableInputError

__all__ = ["FORMAT_VERSION", "function_source_hash", "hash_objects", "stable_hash"]

FORMAT_VERSION = 1
"""Bumped whenever the encoding changes, so old cache entries stop matching."""

# ~3 Python frames per level: stay well under the default recursion limit of
# 1000 even when called from deep inside the engine.
_MAX_DEPTH = 200
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_NAN = _F64.pack(float("nan"))  # one canonical quiet NaN, whatever the payload or sign
_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40


class _Sink(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


class _Refusal(Exception):
    """Internal: a part of the value cannot be hashed; collects its path on the way out."""

    def __init__(self, obj: object, reason: str) -> None:
        super().__init__(reason)
        self.type_name = _type_name(type(obj))
        self.reason = reason
        self.path: list[str] = []


def _type_name(cls: type) -> str:
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


def _step_text(step: object) -> str:
    """A step of an error path: ``.attr`` as given, ``[3]`` for an index, ``['k']`` for a key."""
    if isinstance(step, str):
        return step
    if isinstance(step, tuple):
        return f"[{_short.repr(step[0])}]"
    return f"[{step}]"


def _put(sink: _Sink, tag: bytes, payload: bytes | memoryview) -> None:
    sink.update(tag + b"\0" + _U64.pack(len(payload)))
    sink.update(payload)


def _open(sink: _Sink, tag: bytes, count: int) -> None:
    sink.update(tag + b"\0" + _U64.pack(count))


def _put_str(sink: _Sink, tag: bytes, text: str) -> None:
    _put(sink, tag, text.encode("utf-8", "surrogatepass"))


def _int_bytes(n: int) -> bytes:
    return n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)


def _float_bytes(x: float) -> bytes:
    # All NaNs are one value to Python code; -0.0 stays distinct from 0.0
    # because a function can tell them apart (1 / x, math.copysign).
    return _NAN if x != x else _F64.pack(x)


def _tz_identity(tz: dt.tzinfo | None) -> str:
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
    return _type_name(type(tz))


class _Encoder:
    """One hashing pass; tracks the containers being walked to catch cycles."""

    def __init__(self) -> None:
        self._active: set[int] = set()

    def child(self, obj: object, sink: _Sink, depth: int, step: object) -> None:
        try:
            if depth > _MAX_DEPTH:
                raise _Refusal(obj, f"it is nested more than {_MAX_DEPTH} levels deep")
            handler = _EXACT.get(type(obj))
            if handler is not None:
                handler(self, obj, sink, depth)
            else:
                self.other(obj, sink, depth)
        except _Refusal as refusal:
            if step is not None:
                refusal.path.insert(0, _step_text(step))
            raise
        except RecursionError:
            raise
        except Exception as exc:  # a hook, model_dump or library call failed: say where
            failure = _Refusal(obj, f"hashing it raised {type(exc).__name__}: {exc}")
            if step is not None:
                failure.path.insert(0, _step_text(step))
            raise failure from exc

    def enter(self, obj: object) -> None:
        if id(obj) in self._active:
            raise _Refusal(
                obj, "it contains itself, and a self-referential value has no finite encoding"
            )
        self._active.add(id(obj))

    def leave(self, obj: object) -> None:
        self._active.discard(id(obj))

    def sequence(self, tag: bytes, items: Any, sink: _Sink, depth: int) -> None:
        _open(sink, tag, len(items))
        for i, item in enumerate(items):
            self.child(item, sink, depth + 1, i)

    def unordered(self, tag: bytes, pairs: Any, sink: _Sink, depth: int) -> None:
        """Items with no meaningful order: hash each alone, then sort the digests."""
        digests = []
        for key, value, step in pairs:
            sub = hashlib.sha256()
            self.child(key, sub, depth + 1, "<key>" if value is not _NOTHING else "<member>")
            if value is not _NOTHING:
                self.child(value, sub, depth + 1, step)
            digests.append(sub.digest())
        digests.sort()
        _open(sink, tag, len(digests))
        sink.update(b"".join(digests))

    # -- builtins --------------------------------------------------------
    def list_(self, obj: list[Any] | tuple[Any, ...], sink: _Sink, depth: int) -> None:
        self.enter(obj)
        try:
            self.sequence(b"list" if isinstance(obj, list) else b"tuple", obj, sink, depth)
        finally:
            self.leave(obj)

    def dict_(self, obj: dict[Any, Any], sink: _Sink, depth: int) -> None:
        self.enter(obj)
        try:
            if isinstance(obj, collections.OrderedDict):  # its equality is order-sensitive
                _open(sink, b"odict", len(obj))
                for key, value in obj.items():
                    self.child(key, sink, depth + 1, "<key>")
                    self.child(value, sink, depth + 1, (key,))
            else:
                self.unordered(b"dict", ((k, v, (k,)) for k, v in obj.items()), sink, depth)
        finally:
            self.leave(obj)

    def set_(self, obj: set[Any] | frozenset[Any], sink: _Sink, depth: int) -> None:
        self.enter(obj)
        try:
            tag = b"frozenset" if isinstance(obj, frozenset) else b"set"
            self.unordered(tag, ((m, _NOTHING, None) for m in obj), sink, depth)
        finally:
            self.leave(obj)

    def datetime_(self, obj: dt.datetime, sink: _Sink, depth: int) -> None:
        # Wall-clock fields + offset + zone: the same instant in two zones is two
        # values, because a function can observe the zone (formatting, DST arithmetic).
        offset = obj.utcoffset()
        _put_str(sink, b"datetime", f"{obj.replace(tzinfo=None).isoformat()}|{obj.fold}|"
                 f"{_tz_identity(obj.tzinfo)}|{offset}|{obj.tzname()}")

    def time_(self, obj: dt.time, sink: _Sink, depth: int) -> None:
        _put_str(sink, b"time", f"{obj.replace(tzinfo=None).isoformat()}|{obj.fold}|"
                 f"{_tz_identity(obj.tzinfo)}|{obj.utcoffset()}")

    # -- everything that is not an exact builtin ----------------------------
    def other(self, obj: Any, sink: _Sink, depth: int) -> None:
        cls = type(obj)
        if not isinstance(obj, type) and callable(getattr(cls, "__daskflow_hash__", None)):
            self.enter(obj)
            try:
                value = obj.__daskflow_hash__()
                # A family of classes that stand for the same thing may share one name.
                _put_str(sink, b"hook", getattr(cls, "__daskflow_hash_name__", None) or _type_name(cls))
                self.child(value, sink, depth + 1, ".__daskflow_hash__()")
            finally:
                self.leave(obj)
            return
        if isinstance(obj, enum.Enum):
            _put_str(sink, b"enum", _type_name(cls))
            self.child(obj.name if obj.name is not None else obj.value, sink, depth + 1, ".name")
            return
        for module, encode in _LIBRARIES:
            if module in sys.modules and encode(self, obj, sink, depth):
                return
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self.enter(obj)
            try:
                fields = dataclasses.fields(obj)
                _put_str(sink, b"dataclass", _type_name(cls))
                _open(sink, b"fields", len(fields))
                for field in fields:
                    _put_str(sink, b"field", field.name)
                    self.child(getattr(obj, field.name), sink, depth + 1, f".{field.name}")
            finally:
                self.leave(obj)
            return
        for base, encode_base in _SUBCLASSABLE:
            if isinstance(obj, base):
                if cls is not base:
                    _put_str(sink, b"subclass", _type_name(cls))
                encode_base(self, obj, sink, depth)
                return
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                            functools.partial, type, types.ModuleType)):
            self.callable_(obj, sink, depth)
            return
        self.instance(obj, sink, depth)

    def callable_(self, obj: Any, sink: _Sink, depth: int) -> None:
        if isinstance(obj, types.ModuleType):
            _put_str(sink, b"module", obj.__name__)
        elif isinstance(obj, type):
            _put_str(sink, b"class", _type_name(obj))
        elif isinstance(obj, functools.partial):
            _open(sink, b"partial", 3)
            self.child(obj.func, sink, depth + 1, ".func")
            self.child(obj.args, sink, depth + 1, ".args")
            self.child(obj.keywords, sink, depth + 1, ".keywords")
        elif isinstance(obj, types.MethodType):
            _open(sink, b"method", 2)
            self.child(obj.__self__, sink, depth + 1, ".__self__")
            self.child(obj.__func__, sink, depth + 1, ".__func__")
        elif isinstance(obj, types.BuiltinFunctionType):
            _put_str(sink, b"builtin", f"{obj.__module__}.{obj.__qualname__}")
            owner = obj.__self__
            if owner is not None and not isinstance(owner, types.ModuleType):
                self.child(owner, sink, depth + 1, ".__self__")
        elif id(obj) in self._active:  # recursive closures are legitimate: refer back by name
            _put_str(sink, b"function-ref", f"{obj.__module__}.{obj.__qualname__}")
        else:
            self.enter(obj)
            try:
                _put_str(sink, b"function", f"{obj.__module__}.{obj.__qualname__}")
                _put_str(sink, b"source", function_source_hash(obj))
                self.child(obj.__defaults__, sink, depth + 1, ".__defaults__")
                self.child(obj.__kwdefaults__, sink, depth + 1, ".__kwdefaults__")
                cells = obj.__closure__ or ()
                _open(sink, b"closure", len(cells))
                for name, cell in zip(obj.__code__.co_freevars, cells, strict=True):
                    try:
                        value = cell.cell_contents
                    except ValueError:  # an empty cell: a name not yet bound
                        value = _NOTHING
                    self.child(value, sink, depth + 1, f"<closure {name}>")
            finally:
                self.leave(obj)

    def instance(self, obj: Any, sink: _Sink, depth: int) -> None:
        """Plain objects: class + pickle state, refusing what has no value of its own."""
        reason = _refusal_reason(obj)
        if reason is not None:
            raise _Refusal(obj, reason)
        try:
            reduced = obj.__reduce_ex__(4)
        except Exception as exc:
            raise _Refusal(obj, f"it has no data a hash could read ({exc})") from exc
        if isinstance(reduced, str):  # pickled by reference to a module-level name
            _put_str(sink, b"global", f"{type(obj).__module__}.{reduced}")
            return
        parts = tuple(reduced) + (None,) * (5 - len(reduced))
        rebuild, args, state, list_items, dict_items = parts[:5]
        stateless = (state is None and list_items is None and dict_items is None
                     and isinstance(args, tuple)
                     and (args == () or (len(args) == 1 and args[0] is type(obj))))
        cls: Any = type(obj)
        if stateless and cls.__eq__ is object.__eq__:
            raise _Refusal(obj, "it holds no data and compares by identity, so its only "
                           "identity is its id(), which differs in every process")
        self.enter(obj)
        try:
            _put_str(sink, b"object", _type_name(type(obj)))
            name = getattr(rebuild, "__qualname__", None)
            _put_str(sink, b"rebuild", f"{getattr(rebuild, '__module__', '')}.{name}")
            self.child(args, sink, depth + 1, "<pickle args>")
            self.child(state, sink, depth + 1, "<pickle state>")
            self.child(list(list_items or ()), sink, depth + 1, "<pickle items>")
            self.child(dict(dict_items or ()), sink, depth + 1, "<pickle items>")
        finally:
            self.leave(obj)


class _Nothing:
    """Marker for 'no value': the missing value of a set member, an empty closure cell."""

    def __daskflow_hash__(self) -> str:
        return "<nothing>"


_NOTHING = _Nothing()


# Modules whose objects are live process state: threads, locks, queues, loops, connections.
_LIVE_STATE_MODULES = ("_thread", "threading", "asyncio", "multiprocessing", "concurrent",
                       "queue", "socket", "ssl", "selectors", "subprocess", "sqlite3", "_queue")


def _refusal_reason(obj: object) -> str | None:
    module = type(obj).__module__ or ""
    if module.split(".")[0] in _LIVE_STATE_MODULES:
        return (f"it is live process state from {module!r} (a lock, thread, queue or "
                "connection), not data")
    if isinstance(obj, io.IOBase):
        return "it is an open file or stream; its data is not part of it and changes as it is read"
    if isinstance(obj, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
        return "it is a generator or coroutine; hashing it would consume it"
    if hasattr(type(obj), "__next__"):
        return "it is an iterator; hashing it would consume it"
    if isinstance(obj, (weakref.ref, types.FrameType, types.TracebackType)):
        return "it refers to live interpreter state, not to data"
    return None


def _encode_scalar(tag: bytes, to_bytes: Callable[[Any], bytes]) -> Callable[..., None]:
    def encode(enc: _Encoder, obj: Any, sink: _Sink, depth: int) -> None:
        _put(sink, tag, to_bytes(obj))

    return encode


def _encode_slice(enc: _Encoder, obj: slice, sink: _Sink, depth: int) -> None:
    enc.sequence(b"slice", (obj.start, obj.stop, obj.step), sink, depth)


def _encode_pattern(enc: _Encoder, obj: re.Pattern[Any], sink: _Sink, depth: int) -> None:
    _put(sink, b"pattern-flags", _int_bytes(obj.flags))
    enc.child(obj.pattern, sink, depth + 1, ".pattern")


_BuiltinEncoder = Callable[[_Encoder, Any, _Sink, int], None]

_EXACT: dict[type, _BuiltinEncoder] = {
    type(None): _encode_scalar(b"none", lambda o: b""),
    type(...): _encode_scalar(b"ellipsis", lambda o: b""),
    bool: _encode_scalar(b"bool", lambda o: b"\1" if o else b"\0"),
    int: _encode_scalar(b"int", _int_bytes),
    float: _encode_scalar(b"float", _float_bytes),
    complex: _encode_scalar(b"complex", lambda o: _float_bytes(o.real) + _float_bytes(o.imag)),
    str: _encode_scalar(b"str", lambda o: o.encode("utf-8", "surrogatepass")),
    bytes: _encode_scalar(b"bytes", bytes),
    bytearray: _encode_scalar(b"bytearray", bytes),
    memoryview: _encode_scalar(b"memoryview", lambda o: o.tobytes()),
    list: _Encoder.list_,
    tuple: _Encoder.list_,
    dict: _Encoder.dict_,
    collections.OrderedDict: _Encoder.dict_,
    set: _Encoder.set_,
    frozenset: _Encoder.set_,
    dt.datetime: _Encoder.datetime_,
    dt.date: _encode_scalar(b"date", lambda o: _int_bytes(o.toordinal())),
    dt.time: _Encoder.time_,
    dt.timedelta: _encode_scalar(
        b"timedelta", lambda o: b"%d|%d|%d" % (o.days, o.seconds, o.microseconds)
    ),
    decimal.Decimal: _encode_scalar(b"decimal", lambda o: str(o).encode()),
    fractions.Fraction: _encode_scalar(
        b"fraction", lambda o: b"%d/%d" % (o.numerator, o.denominator)
    ),
    uuid.UUID: _encode_scalar(b"uuid", lambda o: o.bytes),
    range: _encode_scalar(b"range", lambda o: b"%d:%d:%d" % (o.start, o.stop, o.step)),
    slice: _encode_slice,
    re.Pattern: _encode_pattern,
}
_PATH_TYPES: dict[type, bytes] = {
    pathlib.PurePosixPath: b"posix-path", pathlib.PosixPath: b"posix-path",
    pathlib.PureWindowsPath: b"windows-path", pathlib.WindowsPath: b"windows-path",
}
_EXACT.update({t: _encode_scalar(tag, lambda o: str(o).encode()) for t, tag in _PATH_TYPES.items()})


_TZINFO: _BuiltinEncoder = _encode_scalar(b"tzinfo", lambda o: _tz_identity(o).encode())


# Subclasses of builtins (namedtuples, int subclasses, pendulum datetimes, ...):
# the class name is written first, then the value as its base. Order matters:
# datetime before date, OrderedDict before dict.
_SUBCLASSABLE: list[tuple[type, _BuiltinEncoder]] = [
    (dt.datetime, _EXACT[dt.datetime]),
    (dt.date, _EXACT[dt.date]),
    (dt.time, _EXACT[dt.time]),
    (dt.timedelta, _EXACT[dt.timedelta]),
    (dt.tzinfo, _TZINFO),
    (pathlib.PureWindowsPath, _EXACT[pathlib.PureWindowsPath]),
    (pathlib.PurePath, _EXACT[pathlib.PurePosixPath]),
    (collections.OrderedDict, _EXACT[collections.OrderedDict]),
]
_SUBCLASSABLE += [(t, _EXACT[t]) for t in (str, bytes, bytearray, int, float, complex, tuple,
                                          list, dict, frozenset, set, decimal.Decimal,
                                          fractions.Fraction, uuid.UUID)]


# Library types, looked up only when the caller has already imported the
# library: hashing never imports numpy, pandas, pyarrow or pydantic itself.
def _dtype_name(dtype: Any) -> str:
    return repr(dtype.descr) if dtype.fields is not None else str(dtype.str)


def _ndarray(enc: _Encoder, a: Any, sink: _Sink, depth: int) -> None:
    np: Any = sys.modules["numpy"]
    shape = a.shape
    if type(a) is not np.ndarray:
        _put_str(sink, b"ndarray-class", _type_name(type(a)))
    if a.dtype.hasobject:
        enc.enter(a)
        try:
            _put_str(sink, b"ndarray-objects", f"{_dtype_name(a.dtype)}|{shape}")
            enc.sequence(b"items", a.reshape(-1).tolist(), sink, depth)
        finally:
            enc.leave(a)
        return
    # Little-endian on every machine, so a big-endian host names the same values alike.
    if sys.byteorder == "big" or not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.dtype.kind in "fc":  # NaN has many bit patterns (0 * -inf sets the sign bit)
        nan = np.isnan(a)
        if nan.any():
            a = np.where(nan, np.nan, a)
    a = np.ascontiguousarray(a)
    _put_str(sink, b"ndarray", f"{_dtype_name(a.dtype)}|{shape}")
    _put(sink, b"ndbytes", memoryview(a.reshape(-1).view(np.uint8)))


def _numpy(enc: _Encoder, obj: Any, sink: _Sink, depth: int) -> bool:
    np: Any = sys.modules["numpy"]
    ma: Any = sys.modules.get("numpy.ma")
    if ma is not None and isinstance(obj, ma.MaskedArray):
        _put_str(sink, b"masked-array", _type_name(type(obj)))
        _ndarray(enc, np.asarray(ma.getmaskarray(obj)), sink, depth)
        _ndarray(enc, np.asarray(obj.filled()), sink, depth)  # hides bytes under the mask
    elif isinstance(obj, np.ndarray):
        _ndarray(enc, obj, sink, depth)
    elif isinstance(obj, np.generic):
        _put(sink, b"numpy-scalar", b"")
        _ndarray(enc, np.asarray(obj), sink, depth)
    elif isinstance(obj, np.dtype):
        _put_str(sink, b"numpy-dtype", _dtype_name(obj))
    elif isinstance(obj, np.ufunc):
        _put_str(sink, b"numpy-ufunc", obj.__name__)
    else:
        return False
    return True


def _labelled(step: str, encode: Callable[[], None]) -> None:
    try:
        encode()
    except _Refusal as refusal:
        refusal.path.insert(0, step)
        raise


def _pandas_values(enc: _Encoder, values: Any, sink: _Sink, depth: int) -> None:
    np: Any = sys.modules["numpy"]
    pd: Any = sys.modules["pandas"]
    dtype = values.dtype
    if isinstance(dtype, np.dtype) or isinstance(values, pd.arrays.NumpyExtensionArray):
        _ndarray(enc, np.asarray(values), sink, depth)
    elif isinstance(dtype, pd.CategoricalDtype):
        _put(sink, b"pd-categorical", b"\1" if dtype.ordered else b"\0")
        enc.child(dtype.categories, sink, depth + 1, ".categories")
        _ndarray(enc, np.asarray(values.codes), sink, depth)
    elif isinstance(dtype, pd.DatetimeTZDtype):
        _put_str(sink, b"pd-datetimetz", f"{dtype.unit}|{_tz_identity(dtype.tz)}")
        _ndarray(enc, np.asarray(values.tz_convert(None)), sink, depth)
    elif isinstance(values, (pd.arrays.IntegerArray, pd.arrays.FloatingArray,
                             pd.arrays.BooleanArray)):
        # Masked arrays keep arbitrary bytes under NA: write the mask, zero the rest.
        _put_str(sink, b"pd-masked", dtype.name)
        _ndarray(enc, np.asarray(values.isna()), sink, depth)
        zero = False if dtype.kind == "b" else 0
        _ndarray(enc, values.to_numpy(dtype=dtype.numpy_dtype, na_value=zero), sink, depth)
    elif isinstance(dtype, pd.ArrowDtype) or getattr(dtype, "storage", None) == "pyarrow":
        # Arrow-backed (pandas 3's default str columns among them): hashed from Arrow's buffers.
        import pyarrow as pa

        _put_str(sink, b"pd-arrow", dtype.name)
        _arrow_values(enc, pa.array(values), sink, depth)  # zero-copy, through __arrow_array__
    else:  # Python strings, periods, intervals, sparse: cell by cell
        _put_str(sink, b"pd-extension", dtype.name)
        _ndarray(enc, np.asarray(values, dtype=object), sink, depth)


def _pandas_index(enc: _Encoder, idx: Any, sink: _Sink, depth: int) -> None:
    pd: Any = sys.modules["pandas"]
    _put_str(sink, b"pd-index", _type_name(type(idx)))
    enc.child(list(idx.names), sink, depth + 1, ".names")
    if isinstance(idx, pd.RangeIndex):
        _put(sink, b"range", b"%d:%d:%d" % (idx.start, idx.stop, idx.step))
    elif isinstance(idx, pd.MultiIndex):  # level values, not levels+codes: unused levels vary
        _open(sink, b"levels", idx.nlevels)
        for i in range(idx.nlevels):
            values = idx.get_level_values(i).array
            _labelled(f".levels[{i}]", lambda: _pandas_values(enc, values, sink, depth + 1))
    else:
        _pandas_values(enc, idx.array, sink, depth + 1)


def _pandas(enc: _Encoder, obj: Any, sink: _Sink, depth: int) -> bool:
    pd: Any = sys.modules["pandas"]
    if isinstance(obj, pd.DataFrame):
        enc.enter(obj)
        try:
            _put_str(sink, b"pd-frame", _type_name(type(obj)))
            enc.child(obj.columns, sink, depth + 1, ".columns")
            enc.child(obj.index, sink, depth + 1, ".index")
            _open(sink, b"pd-columns", obj.shape[1])
            for i in range(obj.shape[1]):  # by position: labels may repeat
                values = obj.iloc[:, i].array
                _labelled(f"[{_short.repr(obj.columns[i])}]",
                          lambda: _pandas_values(enc, values, sink, depth + 1))
        finally:
            enc.leave(obj)
    elif isinstance(obj, pd.Series):
        enc.enter(obj)
        try:
            _put_str(sink, b"pd-series", _type_name(type(obj)))
            enc.child(obj.name, sink, depth + 1, ".name")
            enc.child(obj.index, sink, depth + 1, ".index")
            _pandas_values(enc, obj.array, sink, depth + 1)
        finally:
            enc.leave(obj)
    elif isinstance(obj, pd.Index):
        _pandas_index(enc, obj, sink, depth)
    elif isinstance(obj, pd.api.extensions.ExtensionArray):
        _put_str(sink, b"pd-array", _type_name(type(obj)))
        _pandas_values(enc, obj, sink, depth)
    elif obj is pd.NaT or obj is pd.NA:
        _put(sink, b"pd-nat" if obj is pd.NaT else b"pd-na", b"")
    elif isinstance(obj, pd.Timestamp):
        _put_str(sink, b"pd-timestamp", f"{obj.value}|{obj.unit}|{_tz_identity(obj.tzinfo)}")
    elif isinstance(obj, pd.Timedelta):
        _put_str(sink, b"pd-timedelta", f"{obj.value}|{obj.unit}")
    elif isinstance(obj, pd.Period):
        _put_str(sink, b"pd-period", f"{obj.ordinal}|{obj.freqstr}")
    elif isinstance(obj, pd.Interval):
        _put_str(sink, b"pd-interval", obj.closed)
        enc.sequence(b"bounds", (obj.left, obj.right), sink, depth)
    else:
        return False
    return True


def _arrow_values(enc: _Encoder, arr: Any, sink: _Sink, depth: int) -> None:
    pa: Any = sys.modules["pyarrow"]
    import numpy  # noqa: F401  (Arrow's to_numpy needs it; a daskflow dependency)
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):  # chunking is layout, not value
        arr = arr.combine_chunks()
    typ, is_ = arr.type, pa.types
    _put_str(sink, b"arrow-values", f"{typ}|{len(arr)}")
    if arr.null_count:  # the mask, then values with zeros under nulls (their bytes are undefined)
        _ndarray(enc, arr.is_valid().to_numpy(zero_copy_only=False), sink, depth)
    temporal = (is_.is_timestamp(typ) or is_.is_date(typ) or is_.is_time(typ)
                or is_.is_duration(typ))
    if temporal or is_.is_integer(typ) or is_.is_floating(typ) or is_.is_boolean(typ):
        if temporal:
            arr = arr.view(pa.int32() if typ.bit_width == 32 else pa.int64())
        if arr.null_count:
            arr = pc.fill_null(arr, pa.scalar(False if is_.is_boolean(typ) else 0, arr.type))
        _ndarray(enc, arr.to_numpy(zero_copy_only=False), sink, depth)
    elif is_.is_string(typ) or is_.is_large_string(typ) or is_.is_binary(typ) or is_.is_large_binary(typ):
        _arrow_bytes(arr, sink)
    else:  # decimals, nested, dictionary: as Python values
        enc.sequence(b"arrow-items", arr.to_pylist(), sink, depth)


def _arrow_bytes(arr: Any, sink: _Sink) -> None:
    """A string or binary array by its buffers: each value's length, then all the bytes.

    About a hundred times faster than value by value. The layout is made canonical
    first: nulls filled with empty values (the mask is hashed apart), offsets taken
    from where this slice starts, so a slice, a re-chunked copy and a fresh array
    of the same values hash alike.
    """
    np: Any = sys.modules["numpy"]
    pa: Any = sys.modules["pyarrow"]
    import pyarrow.compute as pc

    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(b"" if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type) else "", arr.type))
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    _, offsets_buffer, data_buffer = arr.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype="<i8" if large else "<i4")[arr.offset : arr.offset + len(arr) + 1]
    lengths = np.diff(offsets).astype("<i8")
    _put(sink, b"lengths", memoryview(lengths.view(np.uint8)))
    start, end = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
    data = memoryview(data_buffer)[start:end] if data_buffer is not None else memoryview(b"")
    _put(sink, b"bytes", data)


def _arrow_schema(schema: Any, sink: _Sink) -> None:
    # Metadata left out on purpose: pandas and pyarrow write their versions there.
    _open(sink, b"arrow-schema", len(schema))
    for field in schema:
        _put_str(sink, b"arrow-field", f"{field.name}|{field.type}|{field.nullable}")


def _pyarrow(enc: _Encoder, obj: Any, sink: _Sink, depth: int) -> bool:
    pa: Any = sys.modules["pyarrow"]
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        _put(sink, b"arrow-table" if isinstance(obj, pa.Table) else b"arrow-batch", b"")
        _arrow_schema(obj.schema, sink)
        _put(sink, b"rows", _int_bytes(obj.num_rows))
        for name, column in zip(obj.schema.names, obj.columns, strict=True):
            _labelled(f"[{_short.repr(name)}]",
                      lambda: _arrow_values(enc, column, sink, depth + 1))
    elif isinstance(obj, (pa.Array, pa.ChunkedArray)):
        _put(sink, b"arrow-array", b"")
        _arrow_values(enc, obj, sink, depth)
    elif isinstance(obj, pa.Scalar):
        _put_str(sink, b"arrow-scalar", str(obj.type))
        enc.child(obj.as_py(), sink, depth + 1, ".as_py()")
    elif isinstance(obj, pa.Schema):
        _arrow_schema(obj, sink)
    elif isinstance(obj, pa.DataType):
        _put_str(sink, b"arrow-type", str(obj))
    else:
        return False
    return True


def _pydantic(enc: _Encoder, obj: Any, sink: _Sink, depth: int) -> bool:
    if not isinstance(obj, sys.modules["pydantic"].BaseModel):
        return False
    enc.enter(obj)
    try:
        _put_str(sink, b"pydantic", _type_name(type(obj)))
        enc.child(obj.model_dump(), sink, depth + 1, ".model_dump()")
    finally:
        enc.leave(obj)
    return True


_LIBRARIES: list[tuple[str, Callable[[_Encoder, Any, _Sink, int], bool]]] = [
    ("numpy", _numpy),
    ("pandas", _pandas),  # before datetime: pd.Timestamp and pd.NaT subclass datetime
    ("pyarrow", _pyarrow),
    ("pydantic", _pydantic),
]


def _fail(refusal: _Refusal, root: str, cause: BaseException | None = None) -> NoReturn:
    path = refusal.path
    if len(path) > 12:
        path = [*path[:6], f"...({len(path) - 9} more)...", *path[-3:]]
    raise UnhashableInputError(
        f"cannot hash {root}{''.join(path)} (type {refusal.type_name}) deterministically: "
        f"{refusal.reason}"
    ) from (cause or refusal.__cause__)


def _digest(objs: tuple[Any, ...], root: str, single: bool) -> str:
    sink = hashlib.sha256()
    _put(sink, b"daskflow-hash", _int_bytes(FORMAT_VERSION))
    enc = _Encoder()
    try:
        if single:
            enc.child(objs[0], sink, 0, None)
        else:
            enc.sequence(b"objects", objs, sink, -1)
    except _Refusal as refusal:
        _fail(refusal, root)
    except RecursionError as exc:
        _fail(_Refusal(objs[0] if single else objs, "it is nested too deeply to walk"), root, exc)
    return sink.hexdigest()


def hash_objects(*objs: Any) -> str:
    """Hex SHA-256 of the canonical encoding of ``objs`` taken together, in order.

    Raises ``UnhashableInputError`` naming the type, where it sits and why,
    when any part cannot be hashed deterministically.
    """
    return _digest(objs, "objs", single=False)


def stable_hash(obj: Any, *, label: str = "value") -> str:
    """Hex SHA-256 of the canonical encoding of one value.

    ``label`` names the value in error messages, e.g. an argument's name:
    ``cannot hash conn['pool'] (type _thread.lock) deterministically: ...``.
    """
    return _digest((obj,), label, single=True)


_SOURCE_CACHE: weakref.WeakKeyDictionary[Callable[..., Any], str] = weakref.WeakKeyDictionary()


def function_source_hash(fn: Callable[..., Any]) -> str:
    """Hash of a function's source text, following ``__wrapped__`` to the original.

    Where there is no source (``exec``, ``python -c``, some REPLs) the code
    object is hashed instead: bytecode, constants (nested code included),
    names and signature shape — stable across processes of one Python version.
    Lambdas add their code to the source, as two lambdas on one line share it.
    Builtins hash by qualified name. Line endings are normalised so a checkout
    with CRLF gives the same hash. Results are cached per function object, so
    later edits to the file on disk do not change the hash of loaded code.
    """
    target: Any = inspect.unwrap(fn)
    if isinstance(target, (types.MethodType, functools.partial)):
        target = target.__func__ if isinstance(target, types.MethodType) else target.func
    try:
        return _SOURCE_CACHE[target]
    except (KeyError, TypeError):
        pass
    sink = hashlib.sha256()
    _put(sink, b"daskflow-source", _int_bytes(FORMAT_VERSION))
    code = getattr(target, "__code__", None)
    source_of = target
    if code is None and not isinstance(target, (types.BuiltinFunctionType, type)):
        source_of = type(target)  # a callable instance: its class holds the code
        code = getattr(getattr(source_of, "__call__", None), "__code__", None)
    try:
        source: str | None = inspect.getsource(source_of)
    except (OSError, TypeError):
        source = None
    if source is not None:
        _put_str(sink, b"source", source.replace("\r\n", "\n"))
    if code is not None and (source is None or getattr(target, "__name__", "") == "<lambda>"):
        _encode_code(code, sink)
    elif source is None:
        if not isinstance(target, (types.BuiltinFunctionType, type)):
            raise UnhashableInputError(
                f"cannot hash the code of {fn!r} (type {_type_name(type(fn))}): "
                "it has neither source text nor a code object"
            )
        _put_str(sink, b"builtin", f"{target.__module__}.{target.__qualname__}")
    digest = sink.hexdigest()
    try:
        _SOURCE_CACHE[target] = digest
    except TypeError:  # not weak-referenceable: just do not cache
        pass
    return digest


def _encode_code(code: types.CodeType, sink: _Sink) -> None:
    # Not co_filename or line numbers: moving a function must not change it.
    _put_str(sink, b"co_name", code.co_name)
    _put(sink, b"co_shape", b"%d|%d|%d|%d" % (code.co_argcount, code.co_posonlyargcount,
                                               code.co_kwonlyargcount, code.co_flags))
    _put(sink, b"co_code", code.co_code)
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        _put_str(sink, b"names", "\0".join(names))
    _open(sink, b"co_consts", len(code.co_consts))
    enc = _Encoder()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _encode_code(const, sink)
        else:
            try:
                enc.child(const, sink, 0, None)
            except _Refusal as refusal:
                _fail(refusal, f"a constant of {code.co_name}")
