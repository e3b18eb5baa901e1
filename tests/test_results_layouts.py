"""Entry layouts: layout 2 says each thing once in its footer, and layout-1 entries still read.

Layout 1 kept its JSON in the Arrow schema's metadata (so the footer held it twice) with a
base64 Arrow schema and a base64 inline copy inside it. The entries in
``tests/data/entries_layout1`` were written by daskflow before layout 2, with
``ResultStore(url, signing_key=b"test-key").write(key, value, task_name="t",
expiration=2100-01-01)`` for the values of :data:`VALUES` ("pickle" with
``serializer="pickle"``), and "expired" (7) with an expiration in 2000. Every way of reading
an entry is checked on them: ``read``, ``head``, ``load``, ``lookup_many``, ``entries``,
``prune``.
"""

from __future__ import annotations

import base64
import datetime as dt
import fractions
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import put_raw, raw_bytes
from daskflow.exceptions import CorruptResultError
from daskflow.results import ResultStore, parquet
from daskflow.results.deferred import InlineValue
from daskflow.results.metadata import LAYOUT_VERSION
from entry_files import LAYOUT1, footer_json, footer_keys


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": [1, 2, 3],
            "b": pd.array(["x", None, "z"], dtype="string"),
            "c": pd.to_datetime(["2024-01-01", "2024-01-02", None]).tz_localize("Europe/Paris"),
        },
        index=pd.Index([10, 20, 30], name="i", dtype="int32"),
    )


VALUES: dict[str, Any] = {
    "int": 41,
    "tuple": (1, "a", None, 2.5, [True]),
    "dict": {"a": 1, "b": [1, 2]},
    "frame": _frame(),
    "frames": [_frame(), _frame().iloc[:1]],
    "ndarray": np.arange(1000, dtype="int64"),
    "pickle": fractions.Fraction(1, 3),
}


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected, check_exact=True)
        return True
    if isinstance(expected, list) and expected and isinstance(expected[0], pd.DataFrame):
        return type(actual) is list and len(actual) == len(expected) and all(map(_same, expected, actual))
    if isinstance(expected, np.ndarray):
        return bool(actual.dtype == expected.dtype and actual.shape == expected.shape and (actual == expected).all())
    return bool(type(actual) is type(expected) and repr(actual) == repr(expected))


def _store_holding(entries: Path, request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    """A store (a folder, or memory:// as ``request.param`` says) holding the entry files of ``entries``, as written."""
    if request.param == "file":
        folder = tmp_path / "results"
        shutil.copytree(entries, folder)
        return ResultStore(folder.as_uri(), {}, signing_key=b"test-key")
    store = ResultStore(request.getfixturevalue("memory_url"), {}, signing_key=b"test-key")
    for path in sorted(entries.iterdir()):
        put_raw(store, path.stem, path.read_bytes())
    return store


@pytest.fixture(params=["file", "memory"])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    """A store holding the layout-1 entries, as written."""
    return _store_holding(LAYOUT1, request, tmp_path)


def test_the_fixtures_are_layout_1(old_store: ResultStore) -> None:
    for key in [*VALUES, "expired"]:
        data = raw_bytes(old_store, key)
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(footer_keys(data)[b"ARROW:schema"])))
        meta = footer_json(data)
        assert meta["layout"] == 1 and b"daskflow" in (schema.metadata or {}), f"{key}: not a layout-1 entry"


def _read_head_and_load_as_written(store: ResultStore, layout: int) -> dict[str, Any]:
    """Each of :data:`VALUES` read, headed and loaded from ``store``'s entries of ``layout``; their infos."""
    infos = {}
    for key, value in VALUES.items():
        found = store.read(key)
        assert found is not None, f"{key}: a layout-{layout} entry is a miss"
        assert _same(value, found.value), f"{key}: read gave {found.value!r}"
        head = store.head(key)
        assert head == found.info, f"{key}: head {head} and read {found.info} disagree"
        assert _same(value, store.load(key, head.version)), f"{key}: load"
        infos[key] = found.info
    return infos


def test_layout_1_entries_read_head_and_load_as_written(old_store: ResultStore) -> None:
    for key, info in _read_head_and_load_as_written(old_store, 1).items():
        assert info.signed == (key == "pickle")
    assert old_store.read("expired") is None and old_store.head("expired") is None
    assert old_store.load("tuple", old_store.info("tuple").version, item=-1) == [True]
    frames = old_store.load("frames", old_store.info("frames").version, item=1)
    pd.testing.assert_frame_equal(frames, _frame().iloc[:1], check_exact=True)


def test_layout_1_entries_in_a_batch_lookup(old_store: ResultStore) -> None:
    keys = [*VALUES, "expired", "absent"]
    for list_from in (1, 1000):
        found = old_store.lookup_many(keys, list_from=list_from)
        assert sorted(found) == sorted(VALUES), f"list_from={list_from}: hits {sorted(found)}"
        for key, value in VALUES.items():
            info, got = found[key]
            assert info == old_store.head(key), key
            if isinstance(got, InlineValue):  # the small ones, from their base64 stream
                assert got.version == info.version
                got = got.get()
            assert _same(value, got), f"{key}: the batch gave {got!r}"
        assert isinstance(found["int"][1], InlineValue), "a layout-1 inline copy is not used"


def test_layout_1_entries_are_listed_pruned_and_rewritten_in_the_current_layout(old_store: ResultStore) -> None:
    listed = {info.key: info for info in old_store.entries()}
    assert sorted(listed) == sorted([*VALUES, "expired"]), sorted(listed)
    assert listed["tuple"].length == 5 and listed["frames"].length == 2
    report = old_store.prune(now=dt.datetime(2050, 1, 1, tzinfo=dt.UTC))
    assert report.expired == ("expired",) and not report.unreadable, report
    old_size = len(raw_bytes(old_store, "int"))
    info = old_store.write("int", 41, task_name="t")
    assert info is not None and footer_json(raw_bytes(old_store, "int"))["layout"] == LAYOUT_VERSION
    assert info.size < old_size / 2, f"layout 2 took {info.size} bytes for an int, layout 1 {old_size}"
    assert old_store.lookup_many(["int"], list_from=1)["int"][1].get() == 41


@pytest.mark.parametrize("key", ["int", "frame", "ndarray", "pickle"])
def test_layout_2_footer_says_each_thing_once(tmp_path: Path, key: str) -> None:
    store = ResultStore(tmp_path.as_uri(), {}, signing_key=b"test-key")
    store.write(key, VALUES[key], task_name="t", serializer="pickle" if key == "pickle" else "parquet")
    data = raw_bytes(store, key)
    keys = footer_keys(data)
    arrow_schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(keys[b"ARROW:schema"])))
    assert b"daskflow" not in (arrow_schema.metadata or {}), "the JSON is inside Arrow's schema again"
    assert data.count(b'"task_name"') == 1, "the JSON is in the file more than once"
    meta = json.loads(keys[b"daskflow"])
    assert "schema" not in meta and "inline" not in meta, f"a base64 copy in the JSON: {sorted(meta)}"
    assert (b"daskflow.inline" in keys) == (key in ("int", "frame")), f"inline copy: {sorted(keys)}"
    # The whole footer of an int, Arrow's part included: it was 6.7 KB in layout 1.
    footer = int.from_bytes(data[-8:-4], "little")
    assert key != "int" or footer < 2500, f"an int's footer is {footer} bytes"
    found = store.lookup_many([key], list_from=1)[key][1]
    assert _same(VALUES[key], found.get() if isinstance(found, InlineValue) else found)


def test_the_footer_is_parsed_alone_as_a_reader_would(tmp_path: Path) -> None:
    """Pins pyarrow's private footer parser that ``results.parquet.footer_keys`` uses (with a fallback)."""
    assert parquet._footer_reader() is not None, "pyarrow._parquet._reconstruct_filemetadata is gone: lookups slow"
    store = ResultStore(tmp_path.as_uri(), {}, signing_key=b"test-key")
    for key, value in VALUES.items():
        store.write(key, value, task_name="t", serializer="pickle" if key == "pickle" else "parquet")
        data = raw_bytes(store, key)
        assert parquet.footer_keys(data) == footer_keys(data), key
    for damaged in (data[:-1], data[4:], data[:-8] + (len(data)).to_bytes(4, "little") + b"PAR1", b"PAR1" * 3):
        with pytest.raises(CorruptResultError, match="not a readable Parquet file"):
            parquet.footer_keys(damaged)


def _floats() -> pd.DataFrame:
    tiny = np.finfo(np.float64).smallest_subnormal
    return pd.DataFrame(
        {
            "f64": [-0.0, np.inf, -np.inf, tiny, np.finfo(np.float64).max, np.nan],
            "f32": np.array([-0.0, 1e-45, np.nan, 3.5, -np.inf, 7.0], dtype="float32"),
            "f16": np.array([0.5, -0.0, 2.0, np.nan, 1.0, 6e-8], dtype="float16"),
            "n": [1, 2, 3, 4, 5, 6],
            "s": pd.array(["a", None, "b", "a", "a", "c"], dtype="string"),
        }
    )


def test_float_columns_are_byte_stream_split_and_read_back_bit_exact(tmp_path: Path) -> None:
    """Float columns skip dictionary encoding (see ``parquet._column_encodings``); the rest keep it.

    The values come back bit for bit (the sign of -0.0, subnormals, infinities; a NaN
    is stored as a null, as before), through daskflow and through a plain Parquet reader.
    """
    import pyarrow.parquet as pq

    store = ResultStore(tmp_path.as_uri(), {}, signing_key=b"test-key")
    frame = _floats()
    for key, value in (("frame", frame), ("frames", [frame, frame.iloc[2:]])):
        store.write(key, value, task_name="t")
        metadata = pq.ParquetFile(tmp_path / f"{key}.parquet").metadata
        encodings = {
            metadata.schema.column(i).name: metadata.row_group(0).column(i).encodings
            for i in range(metadata.num_columns)
        }
        split = sorted(name for name, used in encodings.items() if "BYTE_STREAM_SPLIT" in used)
        assert split == ["f32", "f64"], f"{key}: encodings {encodings}"
        assert all("RLE_DICTIONARY" in encodings[name] for name in ("f16", "n", "s")), f"{key}: {encodings}"
        result = store.read(key)
        assert result is not None, f"{key}: read missed"
        back = result.value if key == "frame" else result.value[0]
        pd.testing.assert_frame_equal(back, frame, check_exact=True)
        for name in ("f64", "f32", "f16"):
            kept = frame[name].notna().to_numpy()
            got, wanted = back[name].to_numpy()[kept], frame[name].to_numpy()[kept]
            assert got.tobytes() == wanted.tobytes(), f"{key}: {name} bits changed: {got!r} != {wanted!r}"
    plain = pd.read_parquet(tmp_path / "frame.parquet")
    pd.testing.assert_frame_equal(plain, frame, check_exact=True, check_dtype=False)


def test_nested_or_dotted_columns_keep_dictionary_encoding(tmp_path: Path) -> None:
    """Parquet names a column by a dotted path: a table it would misname is written with the defaults."""
    import pyarrow.parquet as pq

    store = ResultStore(tmp_path.as_uri(), {}, signing_key=b"test-key")
    values = {
        "dotted": pd.DataFrame({"a.b": [1.5, 2.5], "c": [0.5, 0.5]}),
        "nested": pa.table({"l": [[1.5], [2.5, 3.5]], "f": [0.5, 1.5]}),
    }
    for key, value in values.items():
        store.write(key, value, task_name="t")
        metadata = pq.ParquetFile(tmp_path / f"{key}.parquet").metadata
        used = [metadata.row_group(0).column(i).encodings for i in range(metadata.num_columns)]
        assert all("RLE_DICTIONARY" in encodings for encodings in used), f"{key}: {used}"
        result = store.read(key)
        assert result is not None and _same(value, result.value) if key == "dotted" else result.value.equals(value)


# -- layout 3: a python node table holds the columns its nodes use, and layout-2 entries still read --

LAYOUT2 = Path(__file__).parent / "data" / "entries_layout2"
"""Entries written by daskflow's layout 2 (seven-column node tables), as :data:`LAYOUT1`'s were made."""


@pytest.fixture(params=["file", "memory"])
def layout2_store(request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    """A store holding the layout-2 entries, as written."""
    return _store_holding(LAYOUT2, request, tmp_path)


def _columns(data: bytes) -> list[str]:
    return list(parquet.open_parquet(data).schema_arrow.names)


def test_the_layout_2_fixtures_are_layout_2_with_seven_column_node_tables(layout2_store: ResultStore) -> None:
    for key in [*VALUES, "expired"]:
        data = raw_bytes(layout2_store, key)
        assert footer_json(data)["layout"] == 2, f"{key}: not a layout-2 entry"
    for key in ("int", "tuple", "dict", "expired"):
        assert _columns(raw_bytes(layout2_store, key)) == ["kind", "n", "i", "f", "s", "b", "t"], key


def test_layout_2_entries_read_head_load_and_hit_in_a_batch_as_written(layout2_store: ResultStore) -> None:
    _read_head_and_load_as_written(layout2_store, 2)
    assert layout2_store.read("expired") is None and layout2_store.head("expired") is None
    assert layout2_store.load("tuple", layout2_store.info("tuple").version, item=-1) == [True]
    for list_from in (1, 1000):
        found_many = layout2_store.lookup_many([*VALUES, "expired", "absent"], list_from=list_from)
        assert sorted(found_many) == sorted(VALUES), f"list_from={list_from}: hits {sorted(found_many)}"
        for key, value in VALUES.items():
            info, got = found_many[key]
            assert info == layout2_store.head(key), key
            got = got.get() if isinstance(got, InlineValue) else got
            assert _same(value, got), f"{key}: the batch gave {got!r}"
        assert isinstance(found_many["int"][1], InlineValue), "a layout-2 inline copy is not used"


NODE_COLUMNS: dict[str, tuple[Any, list[str]]] = {
    "int": (41, ["kind", "i"]),
    "none": (None, ["kind"]),
    "str": ("x", ["kind", "s"]),
    "bytes": (b"\x00", ["kind", "b"]),
    "bool-float": ((True, 2.5), ["kind", "n", "i", "f"]),
    "datetime": (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), ["kind", "i", "s", "t"]),
    "mixed": ({"a": [1, 2.5, b"b", None, np.float32(1.5)]}, ["kind", "n", "i", "f", "s", "b", "t"]),
}


@pytest.mark.parametrize("name", sorted(NODE_COLUMNS))
def test_layout_3_node_tables_hold_only_the_columns_their_nodes_use(tmp_path: Path, name: str) -> None:
    value, columns = NODE_COLUMNS[name]
    store = ResultStore(tmp_path.as_uri(), {}, signing_key=b"test-key")
    assert store.write("k", value, task_name="t") is not None
    data = raw_bytes(store, "k")
    assert footer_json(data)["layout"] == LAYOUT_VERSION == 3
    assert _columns(data) == columns, f"{name}: columns {_columns(data)}"
    found = store.read("k")
    assert found is not None and _same(value, found.value), f"{name}: read gave {found}"
    info, got = store.lookup_many(["k"], list_from=1)["k"]
    assert _same(value, got.get() if isinstance(got, InlineValue) else got), f"{name}: the batch gave {got!r}"
    assert _same(value, store.load("k", info.version)), f"{name}: load"


def test_an_int_entry_of_layout_3_has_a_smaller_footer_than_layout_2s(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), {}, signing_key=b"test-key")
    store.write("int", VALUES["int"], task_name="t")
    new = raw_bytes(store, "int")
    old = (LAYOUT2 / "int.parquet").read_bytes()
    footer_new, footer_old = (int.from_bytes(data[-8:-4], "little") for data in (new, old))
    assert footer_new < footer_old * 0.65, f"layout 3's footer {footer_new} bytes, layout 2's {footer_old}"


def _node_table(**columns: Any) -> Any:
    types = {"kind": pa.string(), "n": pa.int64(), "i": pa.int64(), "s": pa.large_string(), "b": pa.large_binary()}
    return pa.table({name: pa.array(data, types[name]) for name, data in columns.items()})


@pytest.mark.parametrize(
    ("table", "why"),
    [
        (lambda: _node_table(i=[1]), "schema"),  # no kind
        (lambda: _node_table(i=[1], kind=["int"]), "schema"),  # kind not first
        (lambda: _node_table(kind=["list", "int"], i=[None, 1], n=[1, None]), "schema"),  # out of order
        (lambda: _node_table(kind=["int"], i=[1]).append_column("x", pa.array([1])), "schema"),  # unknown
        (lambda: _node_table(kind=["int"]).append_column("i", pa.array(["1"])), "schema"),  # of another type
        (lambda: _node_table(kind=["int"], s=["1"]), "required node field is null"),  # its column left out
        (lambda: _node_table(kind=["list"], i=[1]), "bad child count"),
    ],
)
def test_a_node_table_short_of_what_its_nodes_need_does_not_decode(table: Any, why: str) -> None:
    from daskflow.results.values import decode_value

    with pytest.raises(ValueError, match=why):
        decode_value(table())


def test_a_layout_3_entry_whose_table_lacks_a_column_its_nodes_need_is_a_miss(tmp_path: Path) -> None:
    """Even with a schema digest that matches (a forger's), a node short of its data is corruption, not a value."""
    import hashlib

    from daskflow.results import ResultWarning
    from entry_files import rewrite_entry

    store = ResultStore(tmp_path.as_uri(), {}, signing_key=b"test-key")
    store.write("k", 41, task_name="t")
    table = _node_table(kind=["int"])
    digest = hashlib.sha256(base64.b64encode(table.schema.serialize().to_pybytes())).hexdigest()
    put_raw(store, "k", rewrite_entry(raw_bytes(store, "k"), table=table, schema_sha256=digest))
    with pytest.warns(ResultWarning, match="does not decode"):
        assert store.read("k") is None
