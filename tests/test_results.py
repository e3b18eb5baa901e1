"""Contract tests of daskflow.results.ResultStore, run over every storage.

Each test runs on ``file://`` (a tmp_path), ``memory://`` (a fresh prefix,
removed afterwards) and ``s3://`` on a moto server bound to 127.0.0.1 and
started by this module. Faults that need a filesystem of their own (failing
writes, killed writers, other processes) and the bit-flip sweep are in
test_results_faults.py.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import os
import pickle
import stat
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cloudpickle
import dask.config
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import put_raw, raw_bytes
from daskflow.exceptions import ConfigurationError, ResultError
from daskflow.results import PruneReport, ResultStore, ResultWarning, StoredResult
from entry_files import rewrite_entry

pytestmark = pytest.mark.timeout(60)

UTC = dt.UTC
NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


# -- storages ------------------------------------------------------------------------


@pytest.fixture
def store(location: tuple[str, dict[str, Any]]) -> ResultStore:
    url, options = location
    return ResultStore(url, options, signing_key=b"test-key")


@pytest.fixture(autouse=True)
def daskflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DASKFLOW_HOME", str(home))
    return home


def read_expecting_warning(store: ResultStore, key: str, reason: str) -> str:
    with pytest.warns(ResultWarning) as record:
        result = store.read(key)
    assert result is None, f"unusable entry {key} must be a miss, read returned {type(result.value).__name__}"
    messages = [str(w.message) for w in record if issubclass(w.category, ResultWarning)]
    assert len(messages) == 1, f"expected one ResultWarning, got {len(messages)}: {messages}"
    text = messages[0]
    assert key in text and store.path(key) in text, f"warning must name key and path: {text}"
    assert reason in text, f"warning must say {reason!r}: {text}"
    return text


# -- round trips ---------------------------------------------------------------------


def _frames() -> dict[str, Any]:
    tz_index = pd.date_range("2024-03-30", periods=4, freq="D", tz="Europe/Paris", name="day")
    return {
        "frame-kitchen-sink": pd.DataFrame(
            {
                "category": pd.Categorical(["b", "a", "b", "c"], categories=["c", "b", "a"], ordered=True),
                "when": pd.date_range("2024-01-01", periods=4, freq="h", tz="America/New_York"),
                "nullable": pd.array([1, None, 3, -(2**62)], dtype="Int64"),
                "text": pd.array(["x", None, "z", "é"], dtype="string"),
                "flag": pd.array([True, None, False, True], dtype="boolean"),
                "f32": np.array([0.5, -0.0, np.inf, np.nan], dtype="float32"),
                "seconds": pd.to_datetime(["2020-01-01"] * 4).as_unit("s"),
                "delta": pd.to_timedelta([1, 2, 3, 4], unit="ms"),
            },
            index=tz_index,
        ),
        "frame-multiindex": pd.DataFrame(
            {"v": [1.0, 2.0, 3.0]},
            index=pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["letter", "number"]),
        ),
        "frame-range-columns": pd.DataFrame(np.arange(6).reshape(3, 2)),
        "frame-object-strings": pd.DataFrame({"s": pd.Series(["a", None, "c"], dtype=object)}),
        "frame-empty": pd.DataFrame(),
        "series-named": pd.Series([1.5, 2.5], name="price", index=pd.Index(["x", "y"], name="sku")),
        "series-int-name": pd.Series(pd.array([1, None], dtype="Int64"), name=7),
        "series-unnamed": pd.Series(pd.Categorical(["p", "q"])),
        "index-datetime": pd.DatetimeIndex(["2024-01-01", "2024-01-02"], tz="UTC", name="d"),
        "index-multi": pd.MultiIndex.from_arrays([["a", "b"], [1, 2]], names=["k", None]),
    }


def _arrays() -> dict[str, Any]:
    return {
        "array-fortran-int32": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        "array-bigendian": np.arange(5, dtype=">f8"),
        "array-complex-3d": (np.arange(8) + 1j).reshape(2, 2, 2),
        "array-datetime": np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"),
        "array-day-unit": np.array(["2024-01-01"], dtype="datetime64[D]"),
        "array-unicode": np.array(["ab", "c"]),
        "array-bool-0d": np.array(True),
        "array-empty": np.empty((0, 3), dtype=np.uint16),
        "array-float16": np.array([1.5, -2.0], dtype=np.float16),
    }


def _plain() -> dict[str, Any]:
    paris = ZoneInfo("Europe/Paris")
    return {
        "int": 42,
        "bigint": -(10**40),
        "float": -0.0,
        "bool": True,
        "none": None,
        "str": "grüße \x00 ✓",
        "bytes": b"\x00\xff",
        "list": [1, "a", None],
        "tuple": (1, (2, (3,))),
        "set": {1, "a", (2, 3)},
        "frozenset": frozenset({b"x"}),
        "dict-nonstr-keys": {1: "int", (1, 2): "tuple", None: "none", 2.5: "float", frozenset({1}): "fs"},
        "datetimes": [
            dt.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
            dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30), "X")),
            dt.datetime(2024, 1, 1, 12, 0, 0, 123456),
            dt.datetime(2024, 6, 1, tzinfo=paris),
            dt.datetime(2024, 6, 1, tzinfo=UTC),
            dt.date(1, 1, 1),
            dt.time(23, 59, 59, 999999),
            dt.timedelta(days=-3, seconds=5, microseconds=7),
        ],
        "decimal": [decimal.Decimal("1.10"), decimal.Decimal("-0"), decimal.Decimal("NaN"), decimal.Decimal("1E+30")],
        "nested": {"rows": [{"id": 1, "tags": ("a", "b"), "score": 0.25}], "meta": {"ok": True, "n": None}},
        "misc": [bytearray(b"ab"), 1 + 2j, uuid.UUID(int=7), float("inf")],
        "numpy-in-dict": {"mean": np.float64(1.5), "count": np.int32(3), "weights": np.ones((2, 2), order="F")},
        "object-array": np.array([1, "a", None], dtype=object),
    }


CASES = {**_frames(), **_arrays(), **_plain()}


def assert_same(expected: Any, actual: Any, case: str) -> None:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected, check_exact=True, check_freq=True, check_column_type=True)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(actual, expected, check_exact=True)
        assert type(actual.name) is type(expected.name), f"{case}: name type {type(actual.name)}"
    elif isinstance(expected, pd.Index):
        pd.testing.assert_index_equal(actual, expected, exact=True, check_exact=True)
    elif isinstance(expected, np.ndarray):
        assert type(actual) is np.ndarray, f"{case}: got {type(actual)}"
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), (
            f"{case}: dtype/shape {actual.dtype}{actual.shape} != {expected.dtype}{expected.shape}"
        )
        assert actual.flags.f_contiguous == expected.flags.f_contiguous, f"{case}: memory order changed"
        assert actual.flags.c_contiguous == expected.flags.c_contiguous, f"{case}: memory order changed"
        assert actual.tobytes() == expected.tobytes() or expected.dtype == object and list(actual) == list(expected)
    else:
        assert _typed(actual) == _typed(expected), f"{case}: {actual!r} != {expected!r}"


def _typed(value: Any) -> Any:
    """The value with every type spelled out, so 1 != True and a list != a tuple."""
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, set | frozenset):
        return (type(value).__name__, sorted(repr(_typed(v)) for v in value))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_typed(v) for v in value])
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.flags.f_contiguous, value.tobytes())
    if isinstance(value, float) and value != value:
        return (type(value).__name__, "nan")
    if isinstance(value, decimal.Decimal) and value.is_nan():
        return ("Decimal", "NaN")
    tz = getattr(value, "tzinfo", None)
    return (type(value).__name__, repr(value), repr(tz), getattr(value, "fold", None))


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_exact(store: ResultStore, case: str) -> None:
    value = CASES[case]
    info = store.write("k" + uuid.uuid4().hex, value, task_name=f"task-{case}")
    assert info is not None, f"{case}: write failed"
    result = store.read(info.key)
    assert isinstance(result, StoredResult), f"{case}: read missed"
    assert_same(value, result.value, case)
    assert result.info.format == info.format and result.info.size == info.size == len(raw_bytes(store, info.key)), (
        f"{case}: info {result.info} vs written {info}"
    )


def test_formats_recorded(store: ResultStore) -> None:
    formats = {
        "df": (pd.DataFrame({"a": [1]}), "pandas.DataFrame"),
        "s": (pd.Series([1]), "pandas.Series"),
        "i": (pd.Index([1]), "pandas.Index"),
        "t": (pa.table({"a": [1]}), "arrow.Table"),
        "n": (np.zeros(3), "numpy.ndarray"),
        "p": ({"a": 1}, "python"),
    }
    got = {key: store.write(key, value, task_name="t") for key, (value, _) in formats.items()}
    wrong = {k: (i.format if i else None) for k, i in got.items() if not i or i.format != formats[k][1]}
    assert not wrong, f"formats recorded wrongly: {wrong}"


def test_arrow_table_keeps_schema_and_metadata(store: ResultStore) -> None:
    # Types Parquet itself reads back as a relative (seconds, date64, time32, large dictionaries).
    table = pa.table(
        {
            "a": pa.array([1, None], pa.int16()),
            "b": pa.array([["x"], []], pa.list_(pa.string())),
            "t": pa.array([1, 2], pa.timestamp("s", tz="Asia/Tokyo")),
            "d": pa.array([0, 86_400_000], pa.date64()),
            "h": pa.array([1, 2], pa.time32("s")),
            "c": pa.array(["u", "v"], pa.large_string()).dictionary_encode(),
            "m": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64())),
        }
    ).replace_schema_metadata({"owner": "me"})
    store.write("arrow", table, task_name="t")
    result = store.read("arrow")
    assert result is not None and result.value.equals(table, check_metadata=True), (
        f"schema came back as {result.value.schema if result else None}"
    )


# -- refusals: the caller's mistakes raise -----------------------------------------------


class Opaque:
    def __init__(self, n: int) -> None:
        self.n = n


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (Opaque(1), "Opaque"),
        ({"a": [1, Opaque(2)]}, "value['a'][1]"),
        (pd.DataFrame({"lists": [[1], [2, 3]]}), "'lists'"),
        (lambda: 1, "function"),
    ],
)
def test_unstorable_value_without_pickle_is_a_clear_error(store: ResultStore, value: Any, named: str) -> None:
    with pytest.raises(ResultError) as excinfo:
        store.write("x", value, task_name="t")
    message = str(excinfo.value)
    assert named in message and 'result_serializer="pickle"' in message, message
    assert not store.exists("x"), "a refused value must leave no entry"


@pytest.mark.parametrize("key", ["", "../escape", "a/b", "a\\b", ".tmp-1-2", ".hidden", "x" * 129, "sp ace"])
def test_bad_keys_are_refused(store: ResultStore, key: str) -> None:
    for call in (
        lambda: store.write(key, 1, task_name="t"),
        lambda: store.read(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ResultError, match="invalid result key"):
            call()


def test_naive_datetimes_and_unknown_serializer_are_refused(store: ResultStore) -> None:
    with pytest.raises(ResultError, match="timezone-aware"):
        store.write("k", 1, task_name="t", expiration=dt.datetime(2030, 1, 1))
    with pytest.raises(ResultError, match="timezone-aware"):
        store.read("k", now=dt.datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="'parquet', 'pickle'"):
        store.write("k", 1, task_name="t", serializer="json")


# -- expiration, listing, pruning -------------------------------------------------------


def test_expiration_bounds_a_hit(store: ResultStore) -> None:
    expires = NOW + dt.timedelta(hours=1)
    store.write("exp", [1, 2], task_name="t", expiration=expires.astimezone(ZoneInfo("Asia/Tokyo")))
    hit = store.read("exp", now=NOW)
    assert hit is not None and hit.info.expiration == expires, f"hit {hit}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an expired entry is a quiet miss
        assert store.read("exp", now=expires) is None, "read at the expiration instant must miss"
    assert store.exists("exp"), "read must not delete an expired entry"


def test_entries_list_metadata_without_values(store: ResultStore) -> None:
    store.write("a1", pd.DataFrame({"x": [1]}), task_name="extract")
    store.write("a2", {"k": 1}, task_name="extract", expiration=NOW)
    store.write("b1", Opaque(3), task_name="train", serializer="pickle")
    found = {info.key: info for info in store.entries()}
    assert sorted(found) == ["a1", "a2", "b1"], f"entries: {sorted(found)}"
    extract = sorted(k for k, i in found.items() if i.task_name == "extract")
    assert extract == ["a1", "a2"], f"entries of task 'extract': {extract}"
    assert found["a2"].expiration == NOW and found["a1"].expiration is None
    assert found["b1"].format == "pickle" and found["b1"].signed and not found["a1"].signed
    for info in found.values():
        assert info.size == len(raw_bytes(store, info.key)), f"{info.key}: size {info.size}"
        assert {"daskflow", "pyarrow", "pandas"} <= set(info.versions), f"versions {info.versions}"
        assert info.created.tzinfo is not None and abs(info.created - dt.datetime.now(UTC)) < dt.timedelta(minutes=5), (
            f"created {info.created}"
        )


def test_prune_removes_expired_and_keeps_the_rest(store: ResultStore) -> None:
    store.write("old", 1, task_name="t", expiration=NOW - dt.timedelta(seconds=1))
    store.write("fresh", 2, task_name="t", expiration=NOW + dt.timedelta(days=1))
    store.write("forever", 3, task_name="t")
    put_raw(store, "broken", b"not parquet")
    report = store.prune(now=NOW)
    assert isinstance(report, PruneReport)
    assert report.expired == ("old",), f"expired removed: {report.expired}"
    assert report.unreadable == (store.path("broken"),), f"unreadable: {report.unreadable}"
    assert report.bytes_freed > 0 and not report.failed, f"report {report}"
    assert [store.exists(k) for k in ("old", "fresh", "forever", "broken")] == [False, True, True, True]


def test_delete_exists_clear(store: ResultStore) -> None:
    assert not store.exists("a") and store.delete("a") is False
    store.write("a", 1, task_name="t")
    store.write("b", 2, task_name="t")
    assert store.exists("a") and store.delete("a") is True and not store.exists("a")
    assert store.clear() == 1 and list(store.entries()) == []
    assert store.read("b") is None


# -- corruption: a warning and a miss, never an exception -------------------------------


def _good_entry(store: ResultStore, key: str) -> bytes:
    store.write(key, pd.DataFrame({"x": np.arange(1000), "y": np.arange(1000) * 0.5}), task_name="t")
    return raw_bytes(store, key)


def _flip(data: bytes, position: int) -> bytes:
    mutable = bytearray(data)
    mutable[position] ^= 0xFF
    return bytes(mutable)


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "zero-bytes": (lambda good: b"", "the file is empty (0 bytes)"),
    "truncated": (lambda good: good[: len(good) // 2], "not a readable Parquet file"),
    "truncated-footer": (lambda good: good[:-3], "not a readable Parquet file"),
    "flipped-footer-length": (lambda good: _flip(good, len(good) - 6), "not a readable Parquet file"),
    "flipped-magic": (lambda good: _flip(good, len(good) - 1), "not a readable Parquet file"),
    "flipped-data-page": (lambda good: _flip(good, 200), "data pages do not read back"),
    "random-bytes": (lambda good: np.random.default_rng(0).bytes(len(good)), "not a readable Parquet file"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_entry_is_a_warning_and_a_miss(store: ResultStore, corruption: str) -> None:
    mutate, reason = CORRUPTIONS[corruption]
    put_raw(store, "c0ffee", mutate(_good_entry(store, "c0ffee")))
    read_expecting_warning(store, "c0ffee", reason)
    assert store.write("c0ffee", [1], task_name="t") is not None, "a corrupt entry must be overwritable"
    assert store.read("c0ffee") is not None


def test_wrong_schema_is_a_warning_and_a_miss(store: ResultStore) -> None:
    foreign = io.BytesIO()
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    put_raw(store, "foreign", foreign.getvalue())
    read_expecting_warning(store, "foreign", "no daskflow metadata")

    # Right metadata, wrong table: a numpy entry whose column was replaced.
    store.write("swapped", np.arange(4), task_name="t")
    put_raw(store, "swapped", rewrite_entry(raw_bytes(store, "swapped"), table=pa.table({"other": ["a"]})))
    read_expecting_warning(store, "swapped", "its schema does not match the stored one")
    # A lookup that leaves a large value in storage reads only the footer, and still sees it.
    for look in (lambda: store.head("swapped"), lambda: store.lookup("swapped", defer_above=0)):
        with pytest.warns(ResultWarning, match="its schema does not match the stored one"):
            assert look() is None


def test_entry_under_another_key_or_newer_layout_is_a_miss(store: ResultStore) -> None:
    store.write("original", 1, task_name="t")
    put_raw(store, "copy", raw_bytes(store, "original"))
    read_expecting_warning(store, "copy", "names key 'original'")

    _rewrite_metadata(store, "original", layout=99)
    read_expecting_warning(store, "original", "entry layout 99, newer than")


def _rewrite_metadata(store: ResultStore, key: str, **changes: Any) -> None:
    put_raw(store, key, rewrite_entry(raw_bytes(store, key), **changes))


# -- pickles: only read when signed with the configured key -----------------------------


class Trap:
    """Unpickling this creates a marker file: proof that the bytes were unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.marker).touch, ())


def test_signed_pickle_round_trips(store: ResultStore) -> None:
    info = store.write("p", Opaque(5), task_name="t", serializer="pickle")
    assert info is not None and info.format == "pickle" and info.signed
    result = store.read("p")
    assert result is not None and isinstance(result.value, Opaque) and result.value.n == 5
    native = store.write("q", {"a": 1}, task_name="t", serializer="pickle")
    assert native is not None and native.format == "python", "pickle is only the fallback for Parquet-able values"


def test_pickle_signed_with_another_key_is_refused(location: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, options = location
    writer = ResultStore(url, options, signing_key=b"attacker")
    marker = tmp_path / "unpickled"
    writer.write("p", Trap(str(marker)), task_name="t", serializer="pickle")
    reader = ResultStore(url, options, signing_key=b"ours")
    read_expecting_warning(reader, "p", "does not match the configured signing key")
    assert not marker.exists(), "a wrongly signed pickle was unpickled"


@pytest.mark.parametrize("tampering", ["unsigned", "payload-swapped", "other-scheme"])
def test_unsigned_or_tampered_pickle_is_refused(store: ResultStore, tmp_path: Path, tampering: str) -> None:
    marker = tmp_path / "unpickled"
    store.write("p", Opaque(1), task_name="t", serializer="pickle")
    if tampering == "unsigned":
        _replace_payload(store, "p", cloudpickle.dumps(Trap(str(marker))))
        _rewrite_metadata(store, "p", signature=None)
        reason = "without a signature"
    elif tampering == "payload-swapped":
        _replace_payload(store, "p", cloudpickle.dumps(Trap(str(marker))))
        reason = "does not match the configured signing key"
    else:
        _rewrite_metadata(store, "p", signature="md5:00")
        reason = "scheme 'md5' is unknown"
    read_expecting_warning(store, "p", reason)
    assert not marker.exists(), f"{tampering}: the pickle was unpickled"


def _replace_payload(store: ResultStore, key: str, payload: bytes) -> None:
    forged = pa.table({"pickle": pa.array([payload], pa.large_binary())})  # the schema written: the sha256 holds
    put_raw(store, key, rewrite_entry(raw_bytes(store, key), table=forged))


def test_key_file_is_created_once_owner_only(location: tuple[str, dict[str, Any]], daskflow_home: Path) -> None:
    url, options = location
    first = ResultStore(url, options)
    first.write("p", Opaque(2), task_name="t", serializer="pickle")
    key_file = daskflow_home / "results.key"
    mode = stat.S_IMODE(key_file.stat().st_mode)
    assert mode == 0o600, f"key file mode is {mode:o}"
    content = key_file.read_bytes()
    second = ResultStore(url, options)  # a new process would resolve the key the same way
    result = second.read("p")
    assert result is not None and result.value.n == 2
    assert key_file.read_bytes() == content, "the key file was rewritten"
    assert [p.name for p in daskflow_home.iterdir()] == ["results.key"], "temp files left in the home"


def test_signing_key_setting_is_used(location: tuple[str, dict[str, Any]], daskflow_home: Path) -> None:
    url, options = location
    with dask.config.set({"daskflow.results.signing_key": "from-settings"}):
        ResultStore(url, options).write("p", Opaque(3), task_name="t", serializer="pickle")
    assert not (daskflow_home / "results.key").exists(), "a configured key must not create a key file"
    result = ResultStore(url, options, signing_key="from-settings").read("p")
    assert result is not None and result.value.n == 3


# -- configuration and travel -----------------------------------------------------------


def test_default_url_is_under_the_home(daskflow_home: Path) -> None:
    assert ResultStore().url == (daskflow_home / "results").as_uri()
    with dask.config.set({"daskflow.results.storage": "memory://configured"}):
        assert ResultStore().url == "memory://configured"
    assert ResultStore("~/x").url.startswith("file:///"), "a bare path is a local folder"
    with pytest.raises(ConfigurationError, match="nosuchproto"):
        ResultStore("nosuchproto://x")


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_store_pickles_as_url_options_and_key(store: ResultStore, dumps: Callable[[Any], bytes]) -> None:
    store.write("p", Opaque(4), task_name="t", serializer="pickle")
    blob = dumps(store)
    assert len(blob) < 4096, f"a pickled store should be its URL and options, got {len(blob)} bytes"
    clone = pickle.loads(blob)
    result = clone.read("p")
    assert result is not None and result.value.n == 4
    assert clone.write("q", [1], task_name="t") is not None and store.read("q") is not None


def test_importing_results_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, daskflow.results; print(sorted(m for m in ('pandas', 'pyarrow', 'distributed') if m in sys.modules))"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True)
    assert out.stdout.strip() == "[]", f"import daskflow.results imported {out.stdout.strip()}"


# -- concurrency within a process -------------------------------------------------------


def _frame_of(writer: int, rows: int = 20_000) -> pd.DataFrame:
    return pd.DataFrame({"writer": np.full(rows, writer), "x": np.arange(rows)})


def _check_frame(value: Any, writers: int, rows: int = 20_000) -> int:
    assert isinstance(value, pd.DataFrame) and len(value) == rows, f"partial frame: {type(value)} {len(value)}"
    ids = set(value["writer"].unique())
    assert len(ids) == 1 and 0 <= next(iter(ids)) < writers, f"mixed writers {ids}"
    assert (value["x"].to_numpy() == np.arange(rows)).all(), "rows out of order"
    return int(next(iter(ids)))


def test_sixteen_threads_writing_one_key_leave_one_valid_entry(store: ResultStore) -> None:
    writers, frames = 16, [_frame_of(i) for i in range(16)]
    barrier = threading.Barrier(writers + 2)
    done = threading.Event()
    failures: list[str] = []
    reads = {"hits": 0, "misses": 0}

    def write(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            if store.write("shared", frames[i], task_name="t") is None:
                failures.append(f"writer {i}: write returned None")
        except Exception as exc:
            failures.append(f"writer {i}: {exc!r}")

    def read() -> None:
        barrier.wait(timeout=10)
        while not done.is_set():
            try:
                result = store.read("shared")
                if result is None:
                    reads["misses"] += 1
                else:
                    _check_frame(result.value, writers)
                    reads["hits"] += 1
            except BaseException as exc:
                failures.append(f"reader: {exc!r}")
                return

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        readers = [threading.Thread(target=read) for _ in range(2)]
        for thread in threads + readers:
            thread.start()
        for thread in threads:
            thread.join(timeout=50)
        done.set()
        for thread in readers:
            thread.join(timeout=10)
    assert not failures, f"{len(failures)} failures: {failures[:3]}"
    result_warnings = [str(w.message) for w in caught if issubclass(w.category, ResultWarning)]
    assert not result_warnings, f"{len(result_warnings)} warnings: {result_warnings[:2]}"
    final = store.read("shared")
    assert final is not None, "no entry after 16 writes"
    winner = _check_frame(final.value, writers)
    entries = list(store.entries())
    assert [e.key for e in entries] == ["shared"], f"{len(entries)} entries left: {entries}"
    assert reads["hits"] + reads["misses"] > 0, f"readers ran {reads}; winner was writer {winner}"
