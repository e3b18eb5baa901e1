"""The canonical encoder: builtins, containers, class instances and functions.

One :class:`Encoder` walks a value, writing frames (:mod:`.frames`) for
builtins by exact type, then for subclasses of builtins, then through the
library hashers (:mod:`.libraries`, only for libraries the caller already
imported), then hooks, dataclasses, functions and plain instances. Function
hashing lives here too: a function is hashed by its source, and where there is
no source by its code object, whose constants are encoded by this encoder
(while the encoder hashes functions it meets inside values by their source):
the two call each other, so they share a module.
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
import sys
import types
import uuid
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

from daskflow.exceptions import UnhashableInputError
from daskflow.hashing.flat import SCALARS, flat_frame
from daskflow.hashing.frames import (
    FORMAT_VERSION,
    MAX_DEPTH,
    Refusal,
    Sink,
    int_bytes,
    open_frame,
    put,
    put_str,
    step_text,
    type_name,
    tz_identity,
)
from daskflow.hashing.libraries import LIBRARIES

__all__ = ["Encoder", "function_source_hash", "hash_objects", "stable_hash"]


class Encoder:
    """One hashing pass; tracks the containers being walked to catch cycles."""

    def __init__(self) -> None:
        self._active: set[int] = set()

    def child(self, obj: object, sink: Sink, depth: int, step: object) -> None:
        try:
            if depth > MAX_DEPTH:
                raise Refusal(obj, f"it is nested more than {MAX_DEPTH} levels deep")
            handler = _EXACT.get(type(obj))
            if handler is not None:
                handler(self, obj, sink, depth)
            else:
                self.other(obj, sink, depth)
        except Refusal as refusal:
            if step is not None:
                refusal.path.insert(0, step_text(step))
            raise
        except RecursionError:
            raise
        except Exception as exc:  # a hook, model_dump or library call failed: say where
            failure = Refusal(obj, f"hashing it raised {type(exc).__name__}: {exc}")
            if step is not None:
                failure.path.insert(0, step_text(step))
            raise failure from exc

    def enter(self, obj: object) -> None:
        if id(obj) in self._active:
            raise Refusal(obj, "it contains itself, and a self-referential value has no finite encoding")
        self._active.add(id(obj))

    def leave(self, obj: object) -> None:
        self._active.discard(id(obj))

    def sequence(self, tag: bytes, items: Any, sink: Sink, depth: int) -> None:
        open_frame(sink, tag, len(items))
        flat_fits = depth + 2 <= MAX_DEPTH  # a flat item is at most one level deep
        for i, item in enumerate(items):
            frame = flat_frame(item) if flat_fits else None
            if frame is not None:  # the bytes child() would write, without its calls (see .flat)
                sink.update(frame)
            else:
                self.child(item, sink, depth + 1, i)

    def unordered(self, tag: bytes, pairs: Any, sink: Sink, depth: int) -> None:
        """Items with no meaningful order: hash each alone, then sort the digests."""
        digests = []
        for key, value, step in pairs:
            sub = hashlib.sha256()
            self.child(key, sub, depth + 1, "<key>" if value is not _NOTHING else "<member>")
            if value is not _NOTHING:
                self.child(value, sub, depth + 1, step)
            digests.append(sub.digest())
        digests.sort()
        open_frame(sink, tag, len(digests))
        sink.update(b"".join(digests))

    # -- builtins --------------------------------------------------------
    def list_(self, obj: list[Any] | tuple[Any, ...], sink: Sink, depth: int) -> None:
        self.enter(obj)
        try:
            self.sequence(b"list" if isinstance(obj, list) else b"tuple", obj, sink, depth)
        finally:
            self.leave(obj)

    def dict_(self, obj: dict[Any, Any], sink: Sink, depth: int) -> None:
        self.enter(obj)
        try:
            if isinstance(obj, collections.OrderedDict):  # its equality is order-sensitive
                open_frame(sink, b"odict", len(obj))
                for key, value in obj.items():
                    self.child(key, sink, depth + 1, "<key>")
                    self.child(value, sink, depth + 1, (key,))
            else:
                self.unordered(b"dict", ((k, v, (k,)) for k, v in obj.items()), sink, depth)
        finally:
            self.leave(obj)

    def set_(self, obj: set[Any] | frozenset[Any], sink: Sink, depth: int) -> None:
        self.enter(obj)
        try:
            tag = b"frozenset" if isinstance(obj, frozenset) else b"set"
            self.unordered(tag, ((m, _NOTHING, None) for m in obj), sink, depth)
        finally:
            self.leave(obj)

    def datetime_(self, obj: dt.datetime, sink: Sink, depth: int) -> None:
        # Wall-clock fields + offset + zone: the same instant in two zones is two
        # values, because a function can observe the zone (formatting, DST arithmetic).
        offset = obj.utcoffset()
        put_str(
            sink,
            b"datetime",
            f"{obj.replace(tzinfo=None).isoformat()}|{obj.fold}|{tz_identity(obj.tzinfo)}|{offset}|{obj.tzname()}",
        )

    def time_(self, obj: dt.time, sink: Sink, depth: int) -> None:
        put_str(
            sink,
            b"time",
            f"{obj.replace(tzinfo=None).isoformat()}|{obj.fold}|{tz_identity(obj.tzinfo)}|{obj.utcoffset()}",
        )

    # -- everything that is not an exact builtin ----------------------------
    def other(self, obj: Any, sink: Sink, depth: int) -> None:
        cls = type(obj)
        if not isinstance(obj, type) and callable(getattr(cls, "__daskflow_hash__", None)):
            self.enter(obj)
            try:
                value = obj.__daskflow_hash__()
                # A family of classes that stand for the same thing may share one name.
                put_str(sink, b"hook", getattr(cls, "__daskflow_hash_name__", None) or type_name(cls))
                frame = flat_frame(value) if depth + 3 <= MAX_DEPTH else None
                if frame is not None:  # e.g. a data version's ("daskflow.data_version", version)
                    sink.update(frame)
                else:
                    self.child(value, sink, depth + 1, ".__daskflow_hash__()")
            finally:
                self.leave(obj)
            return
        if isinstance(obj, enum.Enum):
            put_str(sink, b"enum", type_name(cls))
            self.child(obj.name if obj.name is not None else obj.value, sink, depth + 1, ".name")
            return
        for module, encode in LIBRARIES:
            if module in sys.modules and encode(self, obj, sink, depth):
                return
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self.enter(obj)
            try:
                fields = dataclasses.fields(obj)
                put_str(sink, b"dataclass", type_name(cls))
                open_frame(sink, b"fields", len(fields))
                for field in fields:
                    put_str(sink, b"field", field.name)
                    self.child(getattr(obj, field.name), sink, depth + 1, f".{field.name}")
            finally:
                self.leave(obj)
            return
        for base, encode_base in _SUBCLASSABLE:
            if isinstance(obj, base):
                if cls is not base:
                    put_str(sink, b"subclass", type_name(cls))
                encode_base(self, obj, sink, depth)
                return
        if isinstance(
            obj,
            (
                types.FunctionType,
                types.BuiltinFunctionType,
                types.MethodType,
                functools.partial,
                type,
                types.ModuleType,
            ),
        ):
            self.callable_(obj, sink, depth)
            return
        self.instance(obj, sink, depth)

    def callable_(self, obj: Any, sink: Sink, depth: int) -> None:
        if isinstance(obj, types.ModuleType):
            put_str(sink, b"module", obj.__name__)
        elif isinstance(obj, type):
            put_str(sink, b"class", type_name(obj))
        elif isinstance(obj, functools.partial):
            open_frame(sink, b"partial", 3)
            self.child(obj.func, sink, depth + 1, ".func")
            self.child(obj.args, sink, depth + 1, ".args")
            self.child(obj.keywords, sink, depth + 1, ".keywords")
        elif isinstance(obj, types.MethodType):
            open_frame(sink, b"method", 2)
            self.child(obj.__self__, sink, depth + 1, ".__self__")
            self.child(obj.__func__, sink, depth + 1, ".__func__")
        elif isinstance(obj, types.BuiltinFunctionType):
            put_str(sink, b"builtin", f"{obj.__module__}.{obj.__qualname__}")
            owner = obj.__self__
            if owner is not None and not isinstance(owner, types.ModuleType):
                self.child(owner, sink, depth + 1, ".__self__")
        elif id(obj) in self._active:  # recursive closures are legitimate: refer back by name
            put_str(sink, b"function-ref", f"{obj.__module__}.{obj.__qualname__}")
        else:
            self.enter(obj)
            try:
                put_str(sink, b"function", f"{obj.__module__}.{obj.__qualname__}")
                put_str(sink, b"source", function_source_hash(obj))
                self.child(obj.__defaults__, sink, depth + 1, ".__defaults__")
                self.child(obj.__kwdefaults__, sink, depth + 1, ".__kwdefaults__")
                cells = obj.__closure__ or ()
                open_frame(sink, b"closure", len(cells))
                for name, cell in zip(obj.__code__.co_freevars, cells, strict=True):
                    try:
                        value = cell.cell_contents
                    except ValueError:  # an empty cell: a name not yet bound
                        value = _NOTHING
                    self.child(value, sink, depth + 1, f"<closure {name}>")
            finally:
                self.leave(obj)

    def instance(self, obj: Any, sink: Sink, depth: int) -> None:
        """Plain objects: class + pickle state, refusing what has no value of its own."""
        reason = _refusal_reason(obj)
        if reason is not None:
            raise Refusal(obj, reason)
        try:
            reduced = obj.__reduce_ex__(4)
        except Exception as exc:
            raise Refusal(obj, f"it has no data a hash could read ({exc})") from exc
        if isinstance(reduced, str):  # pickled by reference to a module-level name
            put_str(sink, b"global", f"{type(obj).__module__}.{reduced}")
            return
        parts = tuple(reduced) + (None,) * (5 - len(reduced))
        rebuild, args, state, list_items, dict_items = parts[:5]
        stateless = (
            state is None
            and list_items is None
            and dict_items is None
            and isinstance(args, tuple)
            and (args == () or (len(args) == 1 and args[0] is type(obj)))
        )
        cls: Any = type(obj)
        if stateless and cls.__eq__ is object.__eq__:
            raise Refusal(
                obj,
                "it holds no data and compares by identity, so its only "
                "identity is its id(), which differs in every process",
            )
        self.enter(obj)
        try:
            put_str(sink, b"object", type_name(type(obj)))
            name = getattr(rebuild, "__qualname__", None)
            put_str(sink, b"rebuild", f"{getattr(rebuild, '__module__', '')}.{name}")
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
_LIVE_STATE_MODULES = (
    "_thread",
    "threading",
    "asyncio",
    "multiprocessing",
    "concurrent",
    "queue",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "sqlite3",
    "_queue",
)


def _refusal_reason(obj: object) -> str | None:
    module = type(obj).__module__ or ""
    if module.split(".")[0] in _LIVE_STATE_MODULES:
        return f"it is live process state from {module!r} (a lock, thread, queue or connection), not data"
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
    def encode(enc: Encoder, obj: Any, sink: Sink, depth: int) -> None:
        put(sink, tag, to_bytes(obj))

    return encode


def _encode_slice(enc: Encoder, obj: slice, sink: Sink, depth: int) -> None:
    enc.sequence(b"slice", (obj.start, obj.stop, obj.step), sink, depth)


def _encode_pattern(enc: Encoder, obj: re.Pattern[Any], sink: Sink, depth: int) -> None:
    put(sink, b"pattern-flags", int_bytes(obj.flags))
    enc.child(obj.pattern, sink, depth + 1, ".pattern")


_BuiltinEncoder = Callable[[Encoder, Any, Sink, int], None]

_EXACT: dict[type, _BuiltinEncoder] = {cls: _encode_scalar(tag, to_bytes) for cls, (tag, to_bytes) in SCALARS.items()}
_EXACT.update(
    {
        list: Encoder.list_,
        tuple: Encoder.list_,
        dict: Encoder.dict_,
        collections.OrderedDict: Encoder.dict_,
        set: Encoder.set_,
        frozenset: Encoder.set_,
        dt.datetime: Encoder.datetime_,
        dt.time: Encoder.time_,
        slice: _encode_slice,
        re.Pattern: _encode_pattern,
    }
)


_TZINFO: _BuiltinEncoder = _encode_scalar(b"tzinfo", lambda o: tz_identity(o).encode())


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
_SUBCLASSABLE += [
    (t, _EXACT[t])
    for t in (
        str,
        bytes,
        bytearray,
        int,
        float,
        complex,
        tuple,
        list,
        dict,
        frozenset,
        set,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
    )
]


def _fail(refusal: Refusal, root: str, cause: BaseException | None = None) -> NoReturn:
    path = refusal.path
    if len(path) > 12:
        path = [*path[:6], f"...({len(path) - 9} more)...", *path[-3:]]
    raise UnhashableInputError(
        f"cannot hash {root}{''.join(path)} (type {refusal.type_name}) deterministically: {refusal.reason}"
    ) from (cause or refusal.__cause__)


def _header() -> Any:
    sink = hashlib.sha256()
    put(sink, b"daskflow-hash", int_bytes(FORMAT_VERSION))
    return sink


_HEADER = _header()  # copied for each digest: the same first frame every time


def _digest(objs: tuple[Any, ...], root: str, single: bool, fast: bool = True) -> str:
    if fast:  # flat values in one go, the very bytes the encoder would write (see .flat)
        frames = [flat_frame(obj) for obj in objs]
        flat = [frame for frame in frames if frame is not None]
        if len(flat) == len(frames):
            sink = _HEADER.copy()
            if not single:
                open_frame(sink, b"objects", len(objs))
            sink.update(b"".join(flat))
            return str(sink.hexdigest())
    sink = _header()
    enc = Encoder()
    try:
        if single:
            enc.child(objs[0], sink, 0, None)
        else:
            enc.sequence(b"objects", objs, sink, -1)
    except Refusal as refusal:
        _fail(refusal, root)
    except RecursionError as exc:
        _fail(Refusal(objs[0] if single else objs, "it is nested too deeply to walk"), root, exc)
    return str(sink.hexdigest())


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
    put(sink, b"daskflow-source", int_bytes(FORMAT_VERSION))
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
        put_str(sink, b"source", source.replace("\r\n", "\n"))
    if code is not None and (source is None or getattr(target, "__name__", "") == "<lambda>"):
        _encode_code(code, sink)
    elif source is None:
        if not isinstance(target, (types.BuiltinFunctionType, type)):
            raise UnhashableInputError(
                f"cannot hash the code of {fn!r} (type {type_name(type(fn))}): "
                "it has neither source text nor a code object"
            )
        put_str(sink, b"builtin", f"{target.__module__}.{target.__qualname__}")
    digest = sink.hexdigest()
    try:
        _SOURCE_CACHE[target] = digest
    except TypeError:  # not weak-referenceable: just do not cache
        pass
    return digest


def _encode_code(code: types.CodeType, sink: Sink) -> None:
    # Not co_filename or line numbers: moving a function must not change it.
    put_str(sink, b"co_name", code.co_name)
    put(
        sink,
        b"co_shape",
        b"%d|%d|%d|%d" % (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags),
    )
    put(sink, b"co_code", code.co_code)
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        put_str(sink, b"names", "\0".join(names))
    open_frame(sink, b"co_consts", len(code.co_consts))
    enc = Encoder()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _encode_code(const, sink)
        else:
            try:
                enc.child(const, sink, 0, None)
            except Refusal as refusal:
                _fail(refusal, f"a constant of {code.co_name}")
