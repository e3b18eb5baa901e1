"""Entry versions and lengths, the frames format, and the footer-only lookup (head) with its deferred load.

Every test runs on ``file://`` (a tmp_path) and ``memory://`` (a fresh prefix,
removed afterwards), against real Parquet files: damage is done to the bytes
of an entry, never by mocking the reader.
"""

from __future__ import annotations

import datetime as dt
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import put_raw, raw_bytes
from daskflow.exceptions import CorruptResultError, ResultError, UnsignedResultError
from daskflow.results import (
    EntryInfo,
    ResultStore,
    ResultWarning,
    StaleResultError,
    serializers,
)
from daskflow.results.entries import LAYOUT_VERSION
from entry_files import footer_json, rewrite_entry

pytestmark = pytest.mark.timeout(60)

UTC = dt.UTC
NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
FRAMES = "pandas.DataFrame[]"


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    if request.param == "file":
        return ResultStore((tmp_path / "results").as_uri(), {}, signing_key=b"test-key")
    return ResultStore(request.getfixturevalue("memory_url"), {}, signing_key=b"test-key")


def rewrite_metadata(store: ResultStore, key: str, drop: tuple[str, ...] = (), **changes: Any) -> None:
    """Rewrite the entry's daskflow metadata (one row group, as the entries of older daskflows)."""
    put_raw(store, key, rewrite_entry(raw_bytes(store, key), drop=drop, **changes))


def warned(call: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if issubclass(w.category, ResultWarning)]


def assert_frames_equal(actual: Any, expected: Any, case: str) -> None:
    assert type(actual) is type(expected) and len(actual) == len(expected), (
        f"{case}: got {type(actual).__name__} of {len(actual)}, wanted {type(expected).__name__} of {len(expected)}"
    )
    for position, (got, wanted) in enumerate(zip(actual, expected)):
        assert type(got) is pd.DataFrame, f"{case}[{position}]: got {type(got)}"
        pd.testing.assert_frame_equal(got, wanted, check_exact=True, check_freq=True, check_column_type=True)


# -- versions and lengths -----------------------------------------------------------------


def test_version_is_new_per_write_and_the_same_everywhere(store: ResultStore) -> None:
    first = store.write("k", [1, 2], task_name="t")
    second = store.write("k", [1, 2], task_name="t")  # the same value again: still a new write
    assert first is not None and second is not None
    assert first.version != second.version, "a rewrite of a key must get a new version"
    assert len(second.version) == 32 and int(second.version, 16) >= 0, f"not a uuid4 hex: {second.version!r}"
    head, read, info = store.head("k"), store.read("k"), store.info("k")
    listed = [e for e in store.entries() if e.key == "k"]
    assert head is not None and read is not None and len(listed) == 1
    seen = {head.version, read.info.version, info.version, listed[0].version}
    assert seen == {second.version}, f"versions seen {seen}, written {second.version}"
    assert head == read.info == info == listed[0], "head, read, info and entries must agree on the whole info"
    assert other_store_of(store).head("k") == head, "another store on the same URL must see the same version"


def other_store_of(store: ResultStore) -> ResultStore:
    return ResultStore(store.url, store.storage_options, signing_key=b"test-key")


def test_metadata_records_layout_version_and_length(store: ResultStore) -> None:
    info = store.write("k", (1, 2, 3), task_name="t")
    assert info is not None
    meta = footer_json(raw_bytes(store, "k"))
    assert LAYOUT_VERSION == 3 and meta["layout"] == 3, f"metadata {meta}"
    assert (meta["version"], meta["length"]) == (info.version, 3), f"metadata {meta}"


def test_unknown_metadata_fields_are_ignored(store: ResultStore) -> None:
    info = store.write("k", {"a": 1}, task_name="t")
    assert info is not None
    rewrite_metadata(store, "k", added_by_a_newer_daskflow={"x": 1})
    result = store.read("k")
    assert result is not None and result.value == {"a": 1} and result.info.version == info.version


def test_entry_without_version_or_length_gets_the_fallback(store: ResultStore) -> None:
    store.write("old", [10, 20, 30], task_name="t")
    rewrite_metadata(store, "old", drop=("version", "length"))
    info = store.info("old")
    expected = f"old@{info.created.isoformat()}"
    assert info.version == expected and info.length is None, f"info {info.version!r} {info.length!r}"
    head = store.head("old")
    assert head is not None and head.version == expected and store.head("old") == head, "fallback must be stable"
    read = store.read("old")
    assert read is not None and read.value == [10, 20, 30] and read.info.version == expected
    assert store.load("old", expected) == [10, 20, 30]
    assert store.load("old", expected, item=-1) == 30, "an old list is decoded whole and indexed"

    store.write("old-dict", {"a": 1}, task_name="t")
    rewrite_metadata(store, "old-dict", drop=("version", "length"))
    version = store.info("old-dict").version
    with pytest.raises(ResultError, match="not a list or tuple") as excinfo:
        store.load("old-dict", version, item=0)
    assert not isinstance(excinfo.value, CorruptResultError | StaleResultError)


class Opaque:
    def __init__(self, n: int) -> None:
        self.n = n


@pytest.mark.parametrize(
    ("value", "length", "serializer"),
    [
        ([1, "a", None], 3, "parquet"),
        ((1, (2, 3)), 2, "parquet"),
        ([], 0, "parquet"),
        ([pd.DataFrame({"a": [1]})] * 4, 4, "parquet"),
        ([Opaque(1), Opaque(2)], 2, "pickle"),
        ({"a": [1, 2]}, None, "parquet"),
        ("abc", None, "parquet"),
        (pd.DataFrame({"a": [1, 2]}), None, "parquet"),
        (np.arange(5), None, "parquet"),
        (Opaque(3), None, "pickle"),
    ],
    ids=["list", "tuple", "empty-list", "frames", "pickled-list", "dict", "str", "frame", "array", "pickled-object"],
)
def test_length_is_recorded_for_lists_and_tuples(
    store: ResultStore, value: Any, length: int | None, serializer: str
) -> None:
    written = store.write("k", value, task_name="t", serializer=serializer)
    head = store.head("k")
    assert written is not None and head is not None
    assert written.length == head.length == store.info("k").length == length, (
        f"lengths written {written.length}, head {head.length}, wanted {length}"
    )


# -- the frames format --------------------------------------------------------------------


def _frames_cases() -> dict[str, Any]:
    hours = pd.date_range("2024-03-30", periods=4, freq="h", tz="Europe/Paris", name="t")
    return {
        "list-of-one": [pd.DataFrame({"a": [1, 2, 3]})],
        "tuple-of-three": tuple(pd.DataFrame({"a": np.arange(n), "b": np.arange(n) * 0.5}) for n in (1, 2, 3)),
        "empty-frame-among-them": [
            pd.DataFrame({"n": [1, 2], "s": ["x", "y"]}),
            pd.DataFrame({"n": pd.Series([], dtype="int64"), "s": pd.Series([], dtype="str")}),
            pd.DataFrame({"n": [3], "s": ["z"]}),
        ],
        "only-empty": [pd.DataFrame({"n": pd.Series([], dtype="int64")})] * 2,
        "range-indexes": [
            pd.DataFrame({"v": [1.0, 2.0]}),
            pd.DataFrame({"v": [3.0, 4.0, 5.0]}, index=pd.RangeIndex(10, 25, 5, name="r")),
            pd.DataFrame({"v": [6.0]}, index=pd.RangeIndex(7, 6, -1)),
        ],
        "datetime-index-with-and-without-freq": [
            pd.DataFrame({"v": [1, 2, 3, 4]}, index=hours),
            pd.DataFrame({"v": [5, 6]}, index=hours[[0, 3]]),
        ],
        "categorical-and-tz": [
            pd.DataFrame(
                {
                    "c": pd.Categorical(["b", "a", "b"], categories=["c", "b", "a"], ordered=True),
                    "when": pd.date_range("2024-01-01", periods=3, freq="D", tz="America/New_York").as_unit("ns"),
                    "x": pd.array([1, None, 3], dtype="Int64"),
                }
            ),
            pd.DataFrame(
                {
                    "c": pd.Categorical(["z"], categories=["z", "y"], ordered=True),
                    "when": pd.DatetimeIndex(["2020-02-29 12:00"], tz="America/New_York").as_unit("ns"),
                    "x": pd.array([None], dtype="Int64"),
                }
            ),
        ],
        "multiindex": [
            pd.DataFrame(
                {"v": [1.0, 2.0]},
                index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["letter", "number"]),
            ),
            pd.DataFrame({"v": [3.0]}, index=pd.MultiIndex.from_tuples([("c", 3)], names=["letter", "number"])),
        ],
        "range-columns": [pd.DataFrame(np.arange(6).reshape(3, 2)), pd.DataFrame(np.arange(2).reshape(1, 2))],
    }


FRAMES_CASES = _frames_cases()


@pytest.mark.parametrize("case", sorted(FRAMES_CASES))
def test_frames_round_trip(store: ResultStore, case: str) -> None:
    value = FRAMES_CASES[case]
    info = store.write("frames", value, task_name="t")
    assert info is not None and info.format == FRAMES and info.length == len(value), f"{case}: wrote {info}"
    result = store.read("frames")
    assert result is not None, f"{case}: read missed"
    assert_frames_equal(result.value, value, case)
    for position in range(len(value)):
        alone = store.load("frames", info.version, item=position)
        pd.testing.assert_frame_equal(alone, result.value[position], check_exact=True, check_freq=True)
    parquet = pq.ParquetFile(io.BytesIO(raw_bytes(store, "frames")))
    counts = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    assert [c for c in counts if c] == [len(frame) for frame in value if len(frame)], f"{case}: row groups {counts}"


def test_each_frame_reads_as_its_own_dataframe_entry(store: ResultStore) -> None:
    # An empty categorical frame loses its categories in a DataFrame entry too: a frame
    # of a list must come back exactly as that entry does, not with a neighbour's.
    frames = [
        pd.DataFrame({"c": pd.Categorical(["b", "a"], categories=["c", "b", "a"]), "v": [1, 2]}),
        pd.DataFrame({"c": pd.Categorical([], categories=["q"]), "v": pd.Series([], dtype="int64")}),
        pd.DataFrame({"c": pd.Categorical(["x"], categories=["x", "y"]), "v": [3]}, index=pd.RangeIndex(5, 6)),
    ]
    info = store.write("frames", frames, task_name="t")
    result = store.read("frames")
    assert info is not None and info.format == FRAMES and result is not None
    for position, frame in enumerate(frames):
        store.write("single", frame, task_name="t")
        single = store.read("single")
        assert single is not None
        for got in (result.value[position], store.load("frames", info.version, item=position)):
            pd.testing.assert_frame_equal(got, single.value, check_exact=True, check_categorical=True)
            assert got["c"].cat.categories.equals(single.value["c"].cat.categories), f"frame {position}"


def test_frames_decode_from_one_table() -> None:
    # serializers.decode takes the frames' rows as one table (as pq.read_table gives them).
    for case, value in FRAMES_CASES.items():
        encoded = serializers.encode(value, allow_pickle=False)
        assert encoded.format == FRAMES and encoded.row_groups == tuple(len(frame) for frame in value), case
        assert_frames_equal(serializers.decode(encoded.table, FRAMES, encoded.codec), value, case)


@pytest.mark.parametrize(
    "frames",
    [
        [pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [1.5]})],
        [pd.DataFrame({"a": [1]}), pd.DataFrame({"b": [1]})],
        [pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [1]}, index=pd.Index([7]))],  # a column for the index
        [pd.DataFrame({"c": pd.Categorical(["x"], ordered=True)}), pd.DataFrame({"c": pd.Categorical(["x"])})],
    ],
    ids=["int-vs-float", "other-column", "range-vs-stored-index", "ordered-vs-not"],
)
def test_frames_of_different_schemas_still_need_pickle(store: ResultStore, frames: list[pd.DataFrame]) -> None:
    with pytest.raises(ResultError) as excinfo:
        store.write("mixed", frames, task_name="t")
    message = str(excinfo.value)
    assert 'result_serializer="pickle"' in message and "differ in columns or types" in message, message
    assert not store.exists("mixed"), "a refused value must leave no entry"
    info = store.write("mixed", frames, task_name="t", serializer="pickle")
    result = store.read("mixed")
    assert info is not None and info.format == "pickle" and info.length == 2 and result is not None
    assert_frames_equal(result.value, frames, "pickled")
    pd.testing.assert_frame_equal(store.load("mixed", info.version, item=1), frames[1])


def test_frames_that_are_not_exactly_dataframes_are_not_frames(store: ResultStore) -> None:
    class Sub(pd.DataFrame):
        pass

    with pytest.raises(ResultError, match='result_serializer="pickle"'):
        store.write("sub", [pd.DataFrame({"a": [1]}), Sub({"a": [2]})], task_name="t")
    with pytest.raises(ResultError, match="'lists'"):  # an inexact frame is named, as alone
        store.write("lists", [pd.DataFrame({"lists": [[1], [2]]})], task_name="t")
    store.write("mixed", [pd.DataFrame({"a": [1]}), 3], task_name="t", serializer="pickle")
    assert store.info("mixed").format == "pickle"


# -- load -----------------------------------------------------------------------------------


def _big_frames() -> list[pd.DataFrame]:
    rng = np.random.default_rng(0)  # random floats: the pages are the data, not a few repeated values
    return [pd.DataFrame({"x": rng.random(400), "y": rng.random(400)}) for _ in range(3)]


def _flip_in_row_group(data: bytes, group: int) -> bytes:
    column = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(group).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    damaged = bytearray(data)
    damaged[start + column.total_compressed_size // 2] ^= 0xFF
    return bytes(damaged)


def test_load_item_reads_only_its_frame(store: ResultStore) -> None:
    frames = _big_frames()
    info = store.write("frames", frames, task_name="t")
    assert info is not None and info.format == FRAMES
    whole = store.load("frames", info.version)
    assert_frames_equal(whole, frames, "load")
    pd.testing.assert_frame_equal(store.load("frames", info.version, item=-1), frames[2], check_exact=True)
    put_raw(store, "frames", _flip_in_row_group(raw_bytes(store, "frames"), 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # load raises, it never warns
        for position in (1, 2):
            pd.testing.assert_frame_equal(store.load("frames", info.version, item=position), frames[position])
        with pytest.raises(CorruptResultError, match="data pages do not read back") as excinfo:
            store.load("frames", info.version, item=0)
    assert "'frames'" in str(excinfo.value) and store.path("frames") in str(excinfo.value), str(excinfo.value)


def test_load_item_out_of_range_or_of_a_non_sequence(store: ResultStore) -> None:
    frames = store.write("frames", [pd.DataFrame({"a": [1]})] * 2, task_name="t")
    plain = store.write("plain", [1, 2, 3], task_name="t")
    scalar = store.write("scalar", {"a": 1}, task_name="t")
    assert frames is not None and plain is not None and scalar is not None
    assert store.load("plain", plain.version, item=1) == 2 and store.load("plain", plain.version, item=-3) == 1
    for key, version, item in (
        ("frames", frames.version, 2),
        ("plain", plain.version, 3),
        ("plain", plain.version, -4),
    ):
        with pytest.raises(IndexError, match=f"item {item} is out of range: cached result '{key}' .* holds"):
            store.load(key, version, item=item)
    with pytest.raises(ResultError, match="not a list or tuple") as excinfo:
        store.load("scalar", scalar.version, item=0)
    assert type(excinfo.value) is ResultError and store.path("scalar") in str(excinfo.value)


def test_load_of_a_rewritten_entry_is_stale(store: ResultStore) -> None:
    old = store.write("k", [pd.DataFrame({"a": [1]})], task_name="t")
    new = store.write("k", [pd.DataFrame({"a": [2]})], task_name="t")
    assert old is not None and new is not None
    with pytest.raises(StaleResultError) as excinfo:
        store.load("k", old.version)
    message = str(excinfo.value)
    assert "'k'" in message and store.path("k") in message and old.version in message, message
    with pytest.raises(StaleResultError):
        store.load("k", old.version, item=0)
    assert isinstance(excinfo.value, ResultError)
    assert store.load("k", new.version)[0]["a"].tolist() == [2]


def test_load_of_a_deleted_entry_raises_file_not_found(store: ResultStore) -> None:
    info = store.write("k", [1], task_name="t")
    assert info is not None and store.delete("k")
    with pytest.raises(FileNotFoundError):
        store.load("k", info.version)
    with pytest.raises(FileNotFoundError):
        store.load("never-written", "0" * 32)
    with pytest.raises(ResultError, match="invalid result key"):
        store.load("../x", info.version)


def test_load_ignores_expiry(store: ResultStore) -> None:
    info = store.write("k", [1, 2], task_name="t", expiration=NOW)
    assert info is not None
    assert store.head("k", now=NOW - dt.timedelta(seconds=1)) == info
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # expired is a quiet miss
        assert store.head("k", now=NOW) is None and store.head("absent") is None
    assert store.load("k", info.version) == [1, 2], "the value looked up while live is still that value"


class Trap:
    """Unpickling this creates a marker file: proof that the bytes were unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.marker).touch, ())


def test_load_verifies_the_pickle_signature(store: ResultStore, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    writer = ResultStore(store.url, store.storage_options, signing_key=b"attacker")
    info = writer.write("p", [Trap(str(marker))], task_name="t", serializer="pickle")
    assert info is not None and info.signed
    head = store.head("p")  # well formed: only the payload can show the key is wrong
    assert head is not None and head.version == info.version
    with pytest.raises(UnsignedResultError, match="does not match the configured signing key"):
        store.load("p", info.version)
    with pytest.raises(UnsignedResultError):
        store.load("p", info.version, item=0)
    assert not marker.exists(), "a wrongly signed pickle was unpickled"
    ours = store.write("q", [Opaque(1), Opaque(2)], task_name="t", serializer="pickle")
    assert ours is not None and store.load("q", ours.version, item=1).n == 2


# -- head: the footer only -------------------------------------------------------------------


def _frames_entry(store: ResultStore, key: str) -> EntryInfo:
    info = store.write(key, _big_frames(), task_name="t")
    assert info is not None and info.format == FRAMES
    return info


def test_head_never_reads_data_pages(store: ResultStore) -> None:
    info = _frames_entry(store, "k")
    put_raw(store, "k", _flip_in_row_group(raw_bytes(store, "k"), 1))
    head, messages = warned(lambda: store.head("k"))
    assert not messages and head == info, f"head must not see damage in the data: {head} {messages}"
    with pytest.raises(CorruptResultError, match="data pages do not read back") as excinfo:
        store.load("k", info.version)
    assert "'k'" in str(excinfo.value) and store.path("k") in str(excinfo.value)
    result, messages = warned(lambda: store.read("k"))
    assert result is None and len(messages) == 1 and "data pages do not read back" in messages[0], messages


def _flip(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0xFF
    return bytes(damaged)


def _foreign_parquet(good: bytes) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": [1, 2]}), buffer)
    return buffer.getvalue()


BROKEN_FILES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "zero-bytes": (lambda good: b"", "the file is empty (0 bytes)"),
    "truncated": (lambda good: good[: len(good) // 2], "not a readable Parquet file"),
    "truncated-footer": (lambda good: good[:-3], "not a readable Parquet file"),
    "flipped-magic": (lambda good: _flip(good, len(good) - 1), "not a readable Parquet file"),
    "garbage": (lambda good: np.random.default_rng(0).bytes(len(good)), "not a readable Parquet file"),
    "not-daskflow": (_foreign_parquet, "no daskflow metadata"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_FILES))
def test_head_and_load_of_a_broken_file(store: ResultStore, broken: str) -> None:
    mutate, reason = BROKEN_FILES[broken]
    info = _frames_entry(store, "c0ffee")
    put_raw(store, "c0ffee", mutate(raw_bytes(store, "c0ffee")))
    _assert_unusable(store, "c0ffee", info.version, reason, CorruptResultError)


BAD_METADATA: dict[str, tuple[dict[str, Any], str, type[Exception]]] = {
    "newer-layout": ({"layout": 4}, "entry layout 4, newer than", CorruptResultError),
    "bad-version": ({"version": 5}, "metadata is malformed", CorruptResultError),
    "bad-length": ({"length": "3"}, "metadata is malformed", CorruptResultError),
    "unknown-format": ({"format": "pandas.Panel"}, "format 'pandas.Panel' is unknown", CorruptResultError),
}


@pytest.mark.parametrize("bad", sorted(BAD_METADATA))
def test_head_and_load_of_bad_metadata(store: ResultStore, bad: str) -> None:
    changes, reason, error = BAD_METADATA[bad]
    info = store.write("k", [1, 2], task_name="t")
    assert info is not None
    rewrite_metadata(store, "k", **changes)
    _assert_unusable(store, "k", info.version, reason, error)


def test_head_and_load_of_an_entry_under_another_key(store: ResultStore) -> None:
    info = store.write("original", [1], task_name="t")
    assert info is not None
    put_raw(store, "copy", raw_bytes(store, "original"))
    _assert_unusable(store, "copy", info.version, "names key 'original'", CorruptResultError)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [(None, "pickled entry without a signature"), ("md5:00", "scheme 'md5' is unknown")],
)
def test_head_and_load_of_a_pickle_without_a_usable_signature(
    store: ResultStore, tmp_path: Path, signature: str | None, reason: str
) -> None:
    info = store.write("p", Opaque(1), task_name="t", serializer="pickle")
    assert info is not None
    rewrite_metadata(store, "p", signature=signature)
    _assert_unusable(store, "p", info.version, reason, UnsignedResultError)


def _assert_unusable(store: ResultStore, key: str, version: str, reason: str, error: type[Exception]) -> None:
    """head and read: one warning naming key, path and reason, and a miss; load: ``error`` saying as much."""
    for name, call in (("head", lambda: store.head(key)), ("read", lambda: store.read(key))):
        result, messages = warned(call)
        assert result is None, f"{name} of an unusable entry must miss, got {result}"
        assert len(messages) == 1, f"{name}: expected one ResultWarning, got {messages}"
        text = messages[0]
        assert key in text and store.path(key) in text and reason in text, f"{name} warned: {text}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(error) as excinfo:
            store.load(key, version)
    text = str(excinfo.value)
    assert type(excinfo.value) is error, f"load raised {type(excinfo.value).__name__}: {text}"
    assert key in text and store.path(key) in text and reason in text, f"load raised: {text}"
