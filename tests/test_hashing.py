"""daskflow.hashing: every supported type, (in)equality, refusals, and identity across processes."""

from __future__ import annotations

import ast
import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import io
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import uuid
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pydantic
import pytest

from daskflow import hashing
from daskflow.exceptions import UnhashableInputError
from daskflow.hashing import function_source_hash, hash_objects, stable_hash


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: list[int]


@dataclasses.dataclass(frozen=True)
class OtherPoint:
    x: int
    y: list[int]


class Model(pydantic.BaseModel):
    a: int
    when: dt.datetime
    tags: list[str] = []


class Pair(NamedTuple):
    a: int
    b: int


class Plain:
    def __init__(self, a: int) -> None:
        self.a = a


class Slotted:
    __slots__ = ("a",)

    def __init__(self, a: int) -> None:
        self.a = a


class ValueLike:
    """No state, but value equality: every instance is the same value."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValueLike)

    __hash__ = object.__hash__


class NamedSecret:
    """Shaped like the future daskflow.secrets.Secret: hashed by name through the hook."""

    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value

    def __daskflow_hash__(self) -> str:
        return self.name


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": np.arange(4, dtype="int64"),
            "f": [0.5, np.nan, -0.0, 2.0],
            "s": ["a", None, "c", "d"],
            "t": pd.date_range("2024-03-30", periods=4, freq="D", tz="Europe/Paris"),
            "c": pd.Categorical(["x", "y", "x", "z"]),
            "n": pd.array([1, None, 3, 4], dtype="Int64"),
            "o": [{"k": 1}, (1, 2), None, 3.5],
        },
        index=pd.Index(["w", "x", "y", "z"], name="key"),
    )


# Each factory builds its value afresh, so equal hashes mean equal content, not identity.
SUPPORTED: dict[str, Any] = {
    "none": lambda: None,
    "bool": lambda: True,
    "int": lambda: 10**40,
    "negative int": lambda: -7,
    "float": lambda: 1.5,
    "nan": lambda: float("nan"),
    "inf": lambda: float("-inf"),
    "negative zero": lambda: -0.0,
    "complex": lambda: 1 + 2j,
    "str": lambda: "héllo \udcff",
    "bytes": lambda: b"\x00\xff",
    "bytearray": lambda: bytearray(b"ab"),
    "tuple": lambda: (1, "a", None),
    "list": lambda: [1, [2, [3]]],
    "dict": lambda: {"b": 2, "a": [1], 3: None},
    "set": lambda: {3, "x", (1, 2)},
    "frozenset": lambda: frozenset({1, 2}),
    "ordered dict": lambda: collections.OrderedDict(a=1, b=2),
    "namedtuple": lambda: Pair(1, 2),
    "dataclass": lambda: Point(1, [2, 3]),
    "pydantic": lambda: Model(a=1, when=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
    "enum": lambda: Color.RED,
    "int enum": lambda: Level.LOW,
    "datetime naive": lambda: dt.datetime(2024, 1, 2, 3, 4, 5, 6),
    "datetime zoneinfo": lambda: dt.datetime(2024, 1, 2, 3, tzinfo=ZoneInfo("Europe/Paris")),
    "datetime fixed": lambda: dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    "date": lambda: dt.date(2024, 2, 29),
    "time": lambda: dt.time(12, 30, tzinfo=dt.UTC),
    "timedelta": lambda: dt.timedelta(days=1, microseconds=5),
    "decimal": lambda: decimal.Decimal("1.10"),
    "fraction": lambda: fractions.Fraction(1, 3),
    "uuid": lambda: uuid.UUID(int=42),
    "path": lambda: pathlib.Path("/data/in.csv"),
    "windows path": lambda: pathlib.PureWindowsPath("C:/data/in.csv"),
    "range": lambda: range(1, 10, 2),
    "slice": lambda: slice(1, None, 2),
    "regex": lambda: re.compile(r"a+", re.I),
    "ellipsis": lambda: ...,
    "numpy array": lambda: np.arange(12, dtype="float32").reshape(3, 4),
    "numpy strings": lambda: np.array(["a", "bc"]),
    "numpy datetimes": lambda: np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"),
    "numpy structured": lambda: np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
    "numpy objects": lambda: np.array([1, "a", None], dtype=object),
    "numpy masked": lambda: np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
    "numpy scalar": lambda: np.float32(1.5),
    "numpy dtype": lambda: np.dtype("int16"),
    "numpy ufunc": lambda: np.log,
    "pandas frame": _frame,
    "pandas series": lambda: pd.Series([1.0, None], name="s", index=["a", "b"]),
    "pandas index": lambda: pd.Index([3, 1, 2], name="n"),
    "pandas range index": lambda: pd.RangeIndex(0, 10, 2),
    "pandas multiindex": lambda: pd.MultiIndex.from_tuples([(1, "a"), (2, "b")], names=["n", "s"]),
    "pandas timestamp": lambda: pd.Timestamp("2024-01-01 00:00:00.000000001", tz="UTC"),
    "pandas timedelta": lambda: pd.Timedelta(1, "ns"),
    "pandas period": lambda: pd.Period("2024-01", freq="M"),
    "pandas interval": lambda: pd.Interval(0, 1, closed="left"),
    "pandas NaT": lambda: pd.NaT,
    "pandas NA": lambda: pd.NA,
    "pandas categorical": lambda: pd.Categorical(["a", "b", "a"], ordered=True),
    "arrow table": lambda: pa.table({"a": [1, None], "s": ["x", None]}),
    "arrow batch": lambda: pa.record_batch({"a": [1, 2]}),
    "arrow array": lambda: pa.array([1.5, None]),
    "arrow timestamps": lambda: pa.array([1, None], pa.timestamp("ns", tz="UTC")),
    "arrow nested": lambda: pa.array([[1, 2], None, []]),
    "arrow scalar": lambda: pa.scalar("x"),
    "arrow schema": lambda: pa.schema([("a", pa.int8())]),
    "plain object": lambda: Plain(3),
    "slotted object": lambda: Slotted(3),
    "stateless value object": ValueLike,
    "function": lambda: _frame,
    "builtin": lambda: len,
    "bound builtin": lambda: "abc".upper,
    "partial": lambda: functools.partial(int, base=2),
    "class": lambda: Point,
    "module": lambda: json,
    "hook": lambda: NamedSecret("db-password", "hunter2"),
}


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_supported_type_hashes_alike_when_rebuilt(name: str) -> None:
    first, second = stable_hash(SUPPORTED[name]()), stable_hash(SUPPORTED[name]())
    assert first == second, f"{name}: two builds of one value hash to {first} and {second}"
    assert re.fullmatch(r"[0-9a-f]{64}", first), f"{name}: not a sha256 hex digest: {first!r}"


def test_supported_types_all_hash_differently() -> None:
    digests = {name: stable_hash(make()) for name, make in SUPPORTED.items()}
    assert len(set(digests.values())) == len(digests), (
        f"{len(digests) - len(set(digests.values()))} collisions among {len(digests)} values"
    )


def test_type_tags_keep_lookalikes_apart() -> None:
    lookalikes = [
        1,
        1.0,
        "1",
        True,
        b"1",
        [1],
        (1,),
        {1},
        frozenset({1}),
        {1: None},
        None,
        0,
        False,
        0.0,
        -0.0,
        "",
        b"",
        bytearray(),
        [],
        (),
        {},
        set(),
        frozenset(),
        np.int64(1),
        np.float64(1.0),
        decimal.Decimal(1),
        Level.LOW,
        Pair(1, 2),
        (1, 2),
        Point(1, [2]),
        OtherPoint(1, [2]),
        "None",
        [[]],
        [(), ()],
        [[], []],
    ]
    digests = [stable_hash(v) for v in lookalikes]
    clashes = len(digests) - len(set(digests))
    assert clashes == 0, f"{clashes} collisions among {len(lookalikes)} look-alike values"


def test_dicts_and_sets_ignore_order() -> None:
    keys = [f"k{i}" for i in range(50)]
    forward = {k: i for i, k in enumerate(keys)}
    backward = {k: forward[k] for k in reversed(keys)}
    assert stable_hash(forward) == stable_hash(backward), "dict hash depends on insertion order"
    assert stable_hash(set(keys)) == stable_hash(set(reversed(keys))), "set hash depends on order"
    nested_a = {"x": {1: {"b", "a"}}, "y": [frozenset({(1, 2), "z"})]}
    nested_b = {"y": [frozenset({"z", (1, 2)})], "x": {1: {"a", "b"}}}
    assert stable_hash(nested_a) == stable_hash(nested_b), "nested containers depend on order"
    ordered = (collections.OrderedDict(a=1, b=2), collections.OrderedDict(b=2, a=1))
    assert stable_hash(ordered[0]) != stable_hash(ordered[1]), "OrderedDict order was ignored"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"a": 1}, {"a": 2}),
        ([1, 2], [2, 1]),
        ((1, 2), [1, 2]),
        (0.0, -0.0),
        (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
        (Color.RED, Color.GREEN),
        (Point(1, [2]), Point(1, [3])),
        (Point(1, [2]), OtherPoint(1, [2])),
        (Plain(1), Plain(2)),
        (Model(a=1, when=dt.datetime(2024, 1, 1)), Model(a=2, when=dt.datetime(2024, 1, 1))),
        (dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
        (
            dt.datetime(2024, 1, 1, 12, tzinfo=ZoneInfo("Europe/Paris")),
            dt.datetime(2024, 1, 1, 11, tzinfo=dt.UTC),
        ),  # one instant, two zones
        (
            dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris")),
            dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Berlin")),
        ),
        (dt.date(2024, 1, 1), dt.datetime(2024, 1, 1)),
        (pathlib.PurePosixPath("a/b"), pathlib.PureWindowsPath("a/b")),
        (np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2)),
        (np.arange(3, dtype="int32"), np.arange(3, dtype="int64")),
        (np.array([1.0]), np.array([1.0], dtype="float32")),
        (pd.Series([1, 2]), pd.Series([1, 2], index=[1, 0])),
        (pd.Series([1, 2]), pd.Series([1, 2], name="x")),
        (pd.Series([1, 2]), pd.Series([1.0, 2.0])),
        (pd.Series([1, None], dtype="Int64"), pd.Series([1, 0], dtype="Int64")),
        (pd.DataFrame({"a": [1], "b": [2]}), pd.DataFrame({"b": [2], "a": [1]})),
        (pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-01")),
        (pa.array([1, None]), pa.array([1, 0])),
        (pa.array([1], pa.int32()), pa.array([1], pa.int64())),
        (pa.table({"a": [1]}), pa.record_batch({"a": [1]})),
        (functools.partial(int, base=2), functools.partial(int, base=8)),
    ],
    ids=lambda v: type(v).__name__,
)
def test_different_values_hash_differently(a: Any, b: Any) -> None:
    ha, hb = stable_hash(a), stable_hash(b)
    assert ha != hb, f"{a!r} and {b!r} share the hash {ha}"


def test_equal_content_in_different_layouts_hashes_alike() -> None:
    base = np.arange(20, dtype="float64").reshape(4, 5)
    with np.errstate(invalid="ignore"):
        negative_nan = np.array([0.0]) * -np.inf  # the sign bit set: another NaN bit pattern
    cases = {
        "fortran order": (base, np.asfortranarray(base)),
        "strided view": (base[:, ::2].copy(), base[:, ::2]),
        "big endian": (base, base.astype(">f8")),
        "nan bit patterns": (np.array([np.nan]), negative_nan),
        "float nan objects": (float("nan"), float("-nan")),
        "arrow chunking": (pa.chunked_array([[1, 2, 3]]), pa.chunked_array([[1], [2, 3]])),
        "arrow slice": (pa.array([2, None]), pa.array([1, 2, None])[1:]),
        "frame copy": (_frame(), _frame().copy(deep=True)),
        "frame from dict order": (pd.DataFrame({"a": [1], "b": [2]}), pd.DataFrame([[1, 2]], columns=["a", "b"])),
        "numpy scalar vs 0-d": (np.float64(2.0), np.float64(np.array([2.0])[0])),
        "arrow strings chunked": (pa.array(["a", None, "bcd", ""]), pa.chunked_array([["a"], [None, "bcd", ""]])),
        "arrow strings sliced": (pa.array([None, "bcd"]), pa.array(["zz", None, "bcd", "x"])[1:3]),
        "arrow binary sliced": (pa.array([b"\x00\x01", b""]), pa.array([b"q", b"\x00\x01", b""])[1:]),
        "pandas arrow strings": (
            pd.Series(["x", None, "yz"], dtype="string[pyarrow]"),
            pd.Series(["w", "x", None, "yz"], dtype="string[pyarrow]").iloc[1:].reset_index(drop=True),
        ),
    }
    for name, (a, b) in cases.items():
        ha, hb = stable_hash(a), stable_hash(b)
        assert ha == hb, f"{name}: equal content hashed to {ha} and {hb}"


def test_string_arrays_tell_their_values_apart() -> None:
    # Lengths are hashed with the bytes: moving a boundary between values changes the hash.
    assert stable_hash(pa.array(["ab", "c"])) != stable_hash(pa.array(["a", "bc"]))
    assert stable_hash(pa.array(["", "a"])) != stable_hash(pa.array(["a", ""]))
    assert stable_hash(pa.array([None, "a"])) != stable_hash(pa.array(["", "a"]))  # the mask counts
    assert stable_hash(pa.array(["a"])) != stable_hash(pa.array(["a"], pa.large_string()))
    assert stable_hash(pa.array(["a"])) != stable_hash(pa.array([b"a"]))
    frame = pd.DataFrame({"s": pd.Series(["x", "y"], dtype="string[pyarrow]")})
    assert stable_hash(frame) != stable_hash(frame.assign(s=pd.Series(["x", "z"], dtype="string[pyarrow]")))


def test_masked_values_under_nulls_do_not_leak() -> None:
    data = np.array([1, 2, 3], dtype="int64")
    a = pd.arrays.IntegerArray(data.copy(), np.array([False, True, False]))
    data[1] = 999_999  # the hidden slot differs, the value does not
    b = pd.arrays.IntegerArray(data, np.array([False, True, False]))
    assert stable_hash(a) == stable_hash(b), "bytes under a pandas NA changed the hash"
    masked = np.ma.masked_array([1, 2], mask=[0, 1]), np.ma.masked_array([1, 7], mask=[0, 1])
    assert stable_hash(masked[0]) == stable_hash(masked[1]), "bytes under a numpy mask leaked"


def test_hook_replaces_the_value() -> None:
    a, b = NamedSecret("db", "one"), NamedSecret("db", "two")
    assert stable_hash(a) == stable_hash(b), "the secret's value reached the hash"
    assert stable_hash(a) != stable_hash(NamedSecret("other", "one")), "name ignored"
    assert stable_hash(a) != stable_hash("db"), "hooked value collides with its bare name"


def _refusal(value: Any) -> str:
    with pytest.raises(UnhashableInputError) as info:
        stable_hash(value, label="arg")
    assert isinstance(info.value, TypeError), "UnhashableInputError must be a TypeError"
    return str(info.value)


def test_refuses_live_state_naming_type_and_reason(tmp_path: pathlib.Path) -> None:
    sock = socket.socket()
    handle = open(tmp_path / "f.txt", "w")  # noqa: SIM115
    try:
        cases = {
            "lock": (threading.Lock(), "_thread.lock", "lock"),
            "rlock": (threading.RLock(), "_thread.RLock", "lock"),
            "event": (threading.Event(), "threading.Event", "lock"),
            "socket": (sock, "socket.socket", "connection"),
            "file": (handle, "_io.TextIOWrapper", "open file"),
            "bytes stream": (io.BytesIO(b"x"), "_io.BytesIO", "stream"),
            "generator": ((i for i in range(3)), "generator", "consume"),
            "iterator": (iter([1, 2]), "list_iterator", "consume"),
            "bare object": (object(), "object", "id()"),
        }
        for name, (value, type_name, why) in cases.items():
            message = _refusal(value)
            assert f"(type {type_name})" in message, f"{name}: type missing from {message!r}"
            assert why in message, f"{name}: reason {why!r} missing from {message!r}"
    finally:
        sock.close()
        handle.close()


def test_refusal_names_where_the_culprit_sits() -> None:
    message = _refusal({"pool": [1, Point(1, [threading.Lock()])]})  # type: ignore[list-item]
    assert "arg['pool'][1].y[0] (type _thread.lock)" in message, message
    message = _refusal(Plain(threading.Lock()))  # type: ignore[arg-type]
    assert "arg<pickle state>['a'] (type _thread.lock)" in message, message


def test_self_reference_is_a_clear_error_not_recursion() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert "contains itself" in _refusal(loop)
    table: dict[str, Any] = {}
    table["me"] = {"again": table}
    message = _refusal(table)
    assert "arg['me']['again'] (type dict)" in message and "contains itself" in message, message
    shared = [1, 2]
    assert stable_hash([shared, shared]) == stable_hash([[1, 2], [1, 2]]), "sharing is not a cycle"


def test_deep_nesting_is_a_clear_error_not_recursion() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    message = _refusal(deep)
    assert "nested more than" in message and "more)" in message, message
    assert len(message) < 400, f"message of {len(message)} chars: the path was not shortened"


def test_hash_objects_is_positional() -> None:
    assert hash_objects(1, 2) != hash_objects(2, 1), "argument order ignored"
    assert hash_objects(1, 2) != hash_objects((1, 2)), "args collide with a tuple of them"
    assert hash_objects(1) != stable_hash(1), "hash_objects(x) collides with stable_hash(x)"
    with pytest.raises(UnhashableInputError, match=r"objs\[1\] \(type _thread.lock\)"):
        hash_objects(1, threading.Lock())


# -- functions -----------------------------------------------------------------


def _exec_function(body: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(f"def task_fn(x):\n    {body}\n", "<no-source>", "exec"), namespace)
    return namespace["task_fn"]


def test_function_source_hash_follows_wrapped_and_is_cached() -> None:
    def original(x: int) -> int:
        return x + 1

    @functools.wraps(original)
    def wrapper(x: int) -> int:
        return original(x)

    assert function_source_hash(wrapper) == function_source_hash(original), "__wrapped__ ignored"
    assert function_source_hash(original) == function_source_hash(original)
    assert function_source_hash(len) != function_source_hash(abs), "builtins share a hash"


def test_function_without_source_falls_back_to_code() -> None:
    a1, a2, b = _exec_function("return x + 1"), _exec_function("return x + 1"), _exec_function("return x + 2")
    ha1, ha2, hb = function_source_hash(a1), function_source_hash(a2), function_source_hash(b)
    assert ha1 == ha2, f"same exec'd code hashed to {ha1} and {ha2}"
    assert ha1 != hb, f"different exec'd code shared {ha1}"
    nested = _exec_function("return [lambda y: y * k for k in range(x)]")
    assert function_source_hash(nested) != function_source_hash(a1), "nested code ignored"


def test_lambdas_on_one_line_are_told_apart() -> None:
    double, triple = lambda x: x * 2, lambda x: x * 3  # noqa: E731
    assert function_source_hash(double) != function_source_hash(triple), "same-line lambdas clash"


def test_functions_as_values_include_closures_and_defaults() -> None:
    def make(k: Any) -> Any:
        return lambda x: x * k

    assert stable_hash(make(2)) == stable_hash(make(2)), "same closure hashed differently"
    assert stable_hash(make(2)) != stable_hash(make(3)), "closure value ignored"
    message = _refusal(make(threading.Lock()))
    assert "arg<closure k> (type _thread.lock)" in message, message

    def outer() -> Any:
        def recurse(n: int) -> int:
            return recurse(n - 1) if n else 0

        return recurse

    assert stable_hash(outer()) == stable_hash(outer()), "a recursive closure hashed differently"


# -- laziness and identity across processes -------------------------------------------


def test_module_imports_no_heavy_library() -> None:
    tree = ast.parse(pathlib.Path(hashing.__file__).read_text(encoding="utf-8"))
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    heavy = top & {"numpy", "pandas", "pyarrow", "pydantic", "dask", "distributed"}
    assert not heavy, f"hashing imports {sorted(heavy)} at module top"
    script = (
        "import sys; heavy = ('numpy', 'pandas', 'pyarrow', 'pydantic');"
        "from daskflow.hashing import stable_hash; before = {m for m in heavy if m in sys.modules};"
        "stable_hash({'a': [1, 2.5, None], 'b': {'x'}});"
        "print(sorted({m for m in heavy if m in sys.modules} - before))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"hashing plain data imported {out.stdout.strip()}"


CROSS_PROCESS_VALUES = r"""
import dataclasses, datetime as dt, decimal, uuid, pathlib, enum
from zoneinfo import ZoneInfo
import numpy as np, pandas as pd, pyarrow as pa, pydantic

@dataclasses.dataclass
class Row:
    name: str
    tags: set

class Cfg(pydantic.BaseModel):
    n: int
    opts: dict[str, float]
    at: dt.datetime

class Mode(enum.Enum):
    FAST = "fast"

values = {
    "dict": {f"k{i}": i for i in range(100)},
    "set": {f"s{i}" for i in range(100)},
    "frozenset of tuples": frozenset((i, str(i)) for i in range(50)),
    "nested": {"a": [{"b": {1, 2, 3}}, ("x", None)], "c": {"d": b"e"}},
    "dataclass": Row("r", {"x", "y", "z"}),
    "pydantic": Cfg(n=1, opts={"b": 2.0, "a": 1.0}, at=dt.datetime(2024, 5, 1, tzinfo=ZoneInfo("UTC"))),
    "enum": Mode.FAST,
    "numpy": np.arange(1000, dtype="float64").reshape(10, 100) / 7,
    "numpy objects": np.array([{"a": {1, 2}}, "s", None], dtype=object),
    "pandas": pd.DataFrame({"i": range(5), "s": list("abcde"), "o": [{1, 2}, None, "x", 1.5, (1,)],
                            "t": pd.date_range("2024-01-01", periods=5, tz="America/New_York"),
                            "c": pd.Categorical(list("xyxyx"))}),
    "series": pd.Series({"b": 1.5, "a": None}),
    "arrow": pa.table({"a": [1, None, 3], "s": ["x", None, "z"]}),
    "datetimes": [dt.datetime(2024, 3, 31, 2, 30, tzinfo=ZoneInfo("Europe/Paris")),
                  dt.datetime(2024, 1, 1), dt.date(2024, 1, 1), dt.time(1, 2, 3),
                  dt.timedelta(hours=5), pd.Timestamp("2024-01-01T00:00:00.000000001")],
    "misc": [decimal.Decimal("3.14"), uuid.UUID(int=7), pathlib.PurePosixPath("/x/y"), 1 + 2j],
}
"""

CROSS_PROCESS_SCRIPT = (
    CROSS_PROCESS_VALUES
    + r"""
import json
from daskflow.hashing import stable_hash
print(json.dumps({name: stable_hash(value) for name, value in values.items()}))
"""
)


def test_hashes_identical_across_processes_and_hash_seeds() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(CROSS_PROCESS_VALUES, "<values>", "exec"), namespace)
    here = {name: stable_hash(value) for name, value in namespace["values"].items()}
    seeds = ["0", "1", "random"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CROSS_PROCESS_SCRIPT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in seeds
    ]
    for seed, proc in zip(seeds, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"PYTHONHASHSEED={seed}: exit {proc.returncode}: {err}"
        there = json.loads(out)
        differ = sorted(name for name in here if here[name] != there.get(name))
        assert not differ, f"PYTHONHASHSEED={seed}: {len(differ)} of {len(here)} differ: {differ}"


def test_a_failing_hook_is_reported_where_it_sits() -> None:
    class Broken:
        def __daskflow_hash__(self) -> str:
            raise RuntimeError("no name yet")

    with pytest.raises(UnhashableInputError) as info:
        stable_hash({"secret": Broken()}, label="arg")
    message = str(info.value)
    assert "arg['secret']" in message and "RuntimeError: no name yet" in message, message
    assert isinstance(info.value.__cause__, RuntimeError), f"cause is {info.value.__cause__!r}"
