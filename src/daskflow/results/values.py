"""The typed Parquet wrapper: plain Python values as a table of nodes.

A value is walked depth first and each node becomes one row. The ``kind``
column names the node's exact Python type; the node's data sits in the column
of matching Parquet type; a container stores only its number of children,
which follow it. So ``{"a": [1, 2.5]}`` is five rows::

    kind   n     i      f      s      b      t
    dict   1
    str                        "a"
    list   2
    int          1
    float               2.5

Columns: ``n`` (int64, children of a container; a dict's are key, value,
key, value ...), ``i`` (int64), ``f`` (float64), ``s`` (string), ``b``
(binary), ``t`` (string, a type parameter: a timezone, a numpy dtype). Only
``kind`` and the columns some node uses are written (entry layout 3 on): an
int is two columns, ``kind`` and ``i``, not seven, and a reader parses a
footer of two column chunks instead of seven. A column left out reads as all
nulls; the tables of layouts 1 and 2, which have all seven, read as before. Because
the kind is stored, types that JSON would merge come back apart: tuple and
list, set and frozenset, bytes and bytearray, int and bool, a dict with int
keys. Ints beyond int64 and Decimals go through ``s`` as exact decimal text.

Timezones are kept when they can be named again exactly: UTC, fixed offsets,
and ``zoneinfo`` zones. numpy scalars and arrays nested in containers are
stored as raw bytes plus their dtype; arrays of dtype object store their
elements as child nodes. Anything else raises :class:`UnsupportedValueError`
naming where in the value it sits.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

from daskflow.exceptions import UnsupportedValueError

__all__ = ["UnsupportedValueError", "decode_value", "encode_value"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_CONTAINERS: dict[type, str] = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}


class _Nodes:
    """The columns being filled, one entry per node."""

    def __init__(self) -> None:
        self.kind: list[str] = []
        self.n: list[int | None] = []
        self.i: list[int | None] = []
        self.f: list[float | None] = []
        self.s: list[str | None] = []
        self.b: list[bytes | None] = []
        self.t: list[str | None] = []

    def add(
        self,
        kind: str,
        *,
        n: int | None = None,
        i: int | None = None,
        f: float | None = None,
        s: str | None = None,
        b: bytes | None = None,
        t: str | None = None,
    ) -> None:
        self.kind.append(kind)
        self.n.append(n)
        self.i.append(i)
        self.f.append(f)
        self.s.append(s)
        self.b.append(b)
        self.t.append(t)


def encode_value(value: Any) -> Any:
    """The node table (a ``pyarrow.Table``) of ``value``; raises :class:`UnsupportedValueError`."""
    import pyarrow as pa

    nodes = _Nodes()
    try:
        _encode(value, nodes, set())
    except RecursionError:
        raise UnsupportedValueError(type(value).__name__, "", "nested too deeply") from None
    types = _column_types()
    columns = {"kind": pa.array(nodes.kind, types["kind"])}
    try:
        for name in _DATA_COLUMNS:
            data = getattr(nodes, name)
            if any(item is not None for item in data):  # a column no node uses is left out
                columns[name] = pa.array(data, types[name])
        return pa.table(columns)
    except (pa.ArrowException, UnicodeError) as exc:  # e.g. a str with lone surrogates
        raise UnsupportedValueError(type(value).__name__, "", str(exc)) from None


_DATA_COLUMNS = ("n", "i", "f", "s", "b", "t")


@functools.cache
def _column_types() -> dict[str, Any]:
    """Each column's Arrow type, in the order of the table's columns."""
    import pyarrow as pa

    return {
        "kind": pa.string(),
        "n": pa.int64(),
        "i": pa.int64(),
        "f": pa.float64(),
        "s": pa.large_string(),
        "b": pa.large_binary(),
        "t": pa.string(),
    }


def _encode(value: Any, nodes: _Nodes, path: set[int]) -> None:
    cls = type(value)
    if value is None:
        nodes.add("none")
    elif cls is bool:
        nodes.add("bool", i=int(value))
    elif cls is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            nodes.add("int", i=value)
        else:
            nodes.add("bigint", s=str(value))
    elif cls is float:
        nodes.add("float", f=value)
    elif cls is str:
        nodes.add("str", s=value)
    elif cls is bytes:
        nodes.add("bytes", b=value)
    elif cls is bytearray:
        nodes.add("bytearray", b=bytes(value))
    elif cls is complex:
        nodes.add("complex", s=repr(value))
    elif cls is decimal.Decimal:
        nodes.add("decimal", s=str(value))
    elif cls is uuid.UUID:
        nodes.add("uuid", s=str(value))
    elif cls is dt.datetime:
        nodes.add("datetime", s=value.replace(tzinfo=None).isoformat(), i=value.fold, t=_tz_name(value.tzinfo))
    elif cls is dt.date:
        nodes.add("date", s=value.isoformat())
    elif cls is dt.time:
        nodes.add("time", s=value.replace(tzinfo=None).isoformat(), i=value.fold, t=_tz_name(value.tzinfo))
    elif cls is dt.timedelta:
        nodes.add("timedelta", s=f"{value.days},{value.seconds},{value.microseconds}")
    elif cls in _CONTAINERS or cls is dict:
        _encode_container(value, nodes, path)
    elif _is_numpy(value, "ndarray"):
        _encode_array(value, nodes, path)
    elif _is_numpy(value, "generic"):
        _encode_numpy_scalar(value, nodes)
    else:
        raise UnsupportedValueError(_type_name(cls))


def _encode_container(value: Any, nodes: _Nodes, path: set[int]) -> None:
    # Ids of the containers being walked: meeting one again is a reference cycle.
    if id(value) in path:
        raise UnsupportedValueError(type(value).__name__, "", "it contains itself")
    path.add(id(value))
    try:
        if type(value) is dict:
            nodes.add("dict", n=len(value))
            for index, (k, v) in enumerate(value.items()):
                _encode_child(k, nodes, path, f".keys()[{index}]")
                _encode_child(v, nodes, path, f"[{k!r}]")
        else:
            nodes.add(_CONTAINERS[type(value)], n=len(value))
            for index, item in enumerate(value):
                _encode_child(item, nodes, path, f"[{index}]")
    finally:
        path.discard(id(value))


def _encode_child(value: Any, nodes: _Nodes, path: set[int], segment: str) -> None:
    try:
        _encode(value, nodes, path)
    except UnsupportedValueError as exc:
        raise exc.inside(segment) from None


def _encode_array(array: Any, nodes: _Nodes, path: set[int]) -> None:
    dtype = array.dtype
    order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    shape = json.dumps({"shape": list(array.shape), "order": order})
    if dtype.hasobject:
        if dtype.kind != "O":
            raise UnsupportedValueError("numpy.ndarray", "", f"structured dtype {dtype} with objects")
        flat = array.ravel(order=order)
        nodes.add("ndarray", n=len(flat), s=shape, t="object")
        for index, item in enumerate(flat):
            _encode_child(item, nodes, path, f".flat[{index}]")
        return
    if dtype.fields is not None:
        raise UnsupportedValueError("numpy.ndarray", "", f"structured dtype {dtype}")
    nodes.add("ndarray", s=shape, t=dtype.str, b=array.tobytes(order=order))


def _encode_numpy_scalar(value: Any, nodes: _Nodes) -> None:
    import numpy as np

    dtype = value.dtype
    if dtype.hasobject or dtype.fields is not None:
        raise UnsupportedValueError(_type_name(type(value)), "", f"dtype {dtype}")
    nodes.add("npscalar", t=dtype.str, b=np.asarray(value).tobytes())


def decode_value(table: Any) -> Any:
    """The value stored in a node table made by :func:`encode_value`.

    Strict about the table's schema: a damaged footer can turn a string column
    into a binary one, and that must read as corruption, not as other values.
    The columns are ``kind`` and some of the others, in their order, each of
    its own type (all seven in entries of layouts 1 and 2); one left out is all
    nulls, so a node that needs it reads as corruption.
    """
    expected = _column_types()
    actual = {field.name: field.type for field in table.schema}
    names = list(actual)
    if (
        names[:1] != ["kind"]
        or any(actual[name] != expected.get(name) for name in names)
        or names != [name for name in expected if name in actual]
    ):
        raise ValueError(f"node table schema is {actual}, expected {expected} or its kind and some columns after it")
    rows = table.num_rows
    columns = [table.column(name).to_pylist() if name in actual else [None] * rows for name in expected]
    iterator = iter(zip(*columns, strict=True))
    value = _decode(iterator)
    if next(iterator, None) is not None:
        raise ValueError("node table has rows past the end of the value")
    return value


_Row = tuple[str, int | None, int | None, float | None, str | None, bytes | None, str | None]


def _decode(rows: Iterator[_Row]) -> Any:
    kind, n, i, f, s, b, t = next(rows)
    leaf = _LEAVES.get(kind)
    if leaf is not None:
        return leaf(i, f, s, b, t)
    if kind == "dict":
        result = {}
        for _ in range(_count(n)):
            k = _decode(rows)
            result[k] = _decode(rows)
        return result
    if kind in ("list", "tuple", "set", "frozenset"):
        items = [_decode(rows) for _ in range(_count(n))]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
    if kind == "ndarray":
        return _decode_array(rows, n, s, b, t)
    raise ValueError(f"unknown node kind {kind!r}")


def _decode_array(rows: Iterator[_Row], n: int | None, s: str | None, b: bytes | None, t: str | None) -> Any:
    import numpy as np

    layout = json.loads(_need(s))
    shape, order = tuple(layout["shape"]), layout["order"]
    if t == "object":
        flat = np.empty(_count(n), dtype=object)
        for index in range(len(flat)):
            flat[index] = _decode(rows)
        return flat.reshape(shape, order=order)
    # frombuffer gives a read-only view of the bytes; copy to own writable memory.
    flat = np.frombuffer(_need(b), dtype=np.dtype(_need(t))).copy()
    return flat.reshape(shape, order=order)


def _decode_numpy_scalar(b: bytes | None, t: str | None) -> Any:
    import numpy as np

    return np.frombuffer(_need(b), dtype=np.dtype(_need(t)))[0]


def _count(n: int | None) -> int:
    if n is None or n < 0:
        raise ValueError(f"bad child count {n!r}")
    return n


def _need(x: Any) -> Any:
    if x is None:
        raise ValueError("a required node field is null")
    return x


def _decode_datetime(s: str | None, i: int | None, t: str | None) -> dt.datetime:
    value = dt.datetime.fromisoformat(_need(s)).replace(fold=i or 0)
    return value.replace(tzinfo=_tz_from_name(t))


def _decode_time(s: str | None, i: int | None, t: str | None) -> dt.time:
    value = dt.time.fromisoformat(_need(s)).replace(fold=i or 0)
    return value.replace(tzinfo=_tz_from_name(t))


def _decode_timedelta(s: str | None) -> dt.timedelta:
    days, seconds, micros = (int(part) for part in _need(s).split(","))
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


_Leaf = Callable[[int | None, float | None, str | None, bytes | None, str | None], Any]

_LEAVES: dict[str, _Leaf] = {
    "none": lambda i, f, s, b, t: None,
    "bool": lambda i, f, s, b, t: bool(_need(i)),
    "int": lambda i, f, s, b, t: int(_need(i)),
    "bigint": lambda i, f, s, b, t: int(_need(s)),
    "float": lambda i, f, s, b, t: float(_need(f)),
    "str": lambda i, f, s, b, t: str(_need(s)),
    "bytes": lambda i, f, s, b, t: bytes(_need(b)),
    "bytearray": lambda i, f, s, b, t: bytearray(_need(b)),
    "complex": lambda i, f, s, b, t: complex(_need(s)),
    "decimal": lambda i, f, s, b, t: decimal.Decimal(_need(s)),
    "uuid": lambda i, f, s, b, t: uuid.UUID(_need(s)),
    "datetime": lambda i, f, s, b, t: _decode_datetime(s, i, t),
    "date": lambda i, f, s, b, t: dt.date.fromisoformat(_need(s)),
    "time": lambda i, f, s, b, t: _decode_time(s, i, t),
    "timedelta": lambda i, f, s, b, t: _decode_timedelta(s),
    "npscalar": lambda i, f, s, b, t: _decode_numpy_scalar(b, t),
}


def _tz_name(tz: dt.tzinfo | None) -> str | None:
    if tz is None:
        return None
    if tz is dt.UTC:
        return "utc"
    if type(tz) is dt.timezone:
        # __getinitargs__ tells a named fixed offset from an unnamed one.
        args = tz.__getinitargs__()  # type: ignore[attr-defined]
        offset: dt.timedelta = args[0]
        name = args[1] if len(args) > 1 else None
        return "fixed:" + json.dumps([offset.days, offset.seconds, offset.microseconds, name])
    if type(tz) is ZoneInfo and tz.key is not None:
        return "zoneinfo:" + tz.key
    raise UnsupportedValueError(_type_name(type(tz)), "", "only UTC, fixed offsets and zoneinfo zones are kept")


def _tz_from_name(name: str | None) -> dt.tzinfo | None:
    if name is None:
        return None
    if name == "utc":
        return dt.UTC
    scheme, _, rest = name.partition(":")
    if scheme == "fixed":
        days, seconds, micros, tzname = json.loads(rest)
        offset = dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        return dt.timezone(offset, tzname) if tzname is not None else dt.timezone(offset)
    if scheme == "zoneinfo":
        return ZoneInfo(rest)
    raise ValueError(f"unknown timezone {name!r}")


def _is_numpy(value: Any, kind: str) -> bool:
    numpy = sys.modules.get("numpy")  # not imported yet: the value cannot be a numpy object
    if numpy is None:
        return False
    if kind == "ndarray":
        return type(value) is numpy.ndarray
    return isinstance(value, numpy.generic)


def _type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
