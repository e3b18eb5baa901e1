"""Batch lookups (``ResultStore.lookup_many``) and the small values entries carry in their footer.

Over every storage under contract (``file://``, ``memory://``, ``s3://`` on moto):
the batch gives exactly the clean hits, with the values a one-by-one ``read``
gives; it is quiet about what it leaves out (the run's own lookup warns); a
damaged inline copy is a miss, never a wrong value; and the listing and the
key-by-key paths agree.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import Opaque, put_raw, raw_bytes
from daskflow.exceptions import ResultError
from daskflow.results import ResultStore, ResultWarning, batch
from daskflow.results.batch import INLINE_MAX_BYTES
from daskflow.results.deferred import InlineValue
from entry_files import footer_keys, rewrite_entry

SMALL: dict[str, Any] = {
    "int": 7,
    "tuple": (1, "two", 3.0, None),
    "dict": {"a": [1, 2.5, "x"], "when": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
    "frame": pd.DataFrame({"x": [1, 2, 3], "s": ["a", "b", "c"]}),
    "array": np.arange(12.0).reshape(3, 4),
}


@pytest.fixture
def store(location: tuple[str, dict[str, Any]]) -> ResultStore:
    url, options = location
    return ResultStore(url, options, signing_key=b"test-key")


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected, check_exact=True)
        return True
    if isinstance(expected, np.ndarray):
        return bool(actual.dtype == expected.dtype and actual.shape == expected.shape and (actual == expected).all())
    return bool(type(actual) is type(expected) and repr(actual) == repr(expected))


def _inline(store: ResultStore, key: str) -> bytes | None:
    """The inline copy of the value in ``key``'s footer, if it has one."""
    return footer_keys(raw_bytes(store, key)).get(b"daskflow.inline")


@pytest.mark.parametrize("list_from", [1, 1000], ids=["listing", "key-by-key"])
def test_the_batch_gives_the_hits_with_the_values_a_read_gives(store: ResultStore, list_from: int) -> None:
    for name, value in SMALL.items():
        store.write(name, value, task_name="t")
    large = np.arange(INLINE_MAX_BYTES)  # 8 bytes an item: too large to ride in the footer
    store.write("large", large, task_name="t")
    keys = [*SMALL, "large", "absent"]
    found = store.lookup_many(keys, list_from=list_from)
    assert sorted(found) == sorted([*SMALL, "large"]), sorted(found)
    for name, value in SMALL.items():
        info, got = found[name]
        assert isinstance(got, InlineValue) and got.version == info.version, (name, got)
        assert _same(value, got.get()), (name, got.get())
        assert _same(value, pickle.loads(pickle.dumps(got)).get()), f"{name} does not travel"
        assert info.version == store.head(name).version  # type: ignore[union-attr]
        assert _inline(store, name) is not None, f"{name}: a small value has no inline copy"
    assert _inline(store, "large") is None
    assert (found["large"][1] == large).all()
    deferred = store.lookup_many(["large"], defer_above=100, list_from=list_from)
    assert deferred["large"][1] is store.NOT_READ


def test_what_is_not_a_clean_hit_is_left_out_without_a_warning(store: ResultStore) -> None:
    for key in ("good", "empty", "truncated", "random", "expired", "foreign"):
        store.write(key, [1, 2, 3], task_name="t")
    good = raw_bytes(store, "good")
    put_raw(store, "empty", b"")
    put_raw(store, "truncated", good[: len(good) // 2])
    put_raw(store, "random", np.random.default_rng(0).bytes(len(good)))
    store.write("expired", 1, task_name="t", expiration=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    foreign = io.BytesIO()
    pq.write_table(pa.table({"x": [1]}), foreign)
    put_raw(store, "foreign", foreign.getvalue())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = store.lookup_many(["good", "empty", "truncated", "random", "expired", "foreign"], list_from=1)
    assert list(found) == ["good"], list(found)
    assert caught == [], [str(w.message) for w in caught]


def test_a_damaged_inline_copy_is_a_miss_never_a_wrong_value(store: ResultStore) -> None:
    store.write("k", {"a": 1}, task_name="t")
    # Another value's copy under this entry's digest: what a flipped bit in the copy amounts to.
    other = ResultStore(store.url, store.storage_options)
    other.write("other", {"a": 2}, task_name="t")
    copy = _inline(other, "other")
    assert copy is not None
    put_raw(store, "k", rewrite_entry(raw_bytes(store, "k"), keys={b"daskflow.inline": copy}))
    assert store.lookup_many(["k"], list_from=1) == {}
    # The footer is the part no page checksum covers: a copy at odds with its digest spoils it for every reader.
    with pytest.warns(ResultWarning, match="inline copy of the value does not match its digest"):
        assert store.read("k") is None


def test_pickled_entries_are_not_inlined_and_still_checked(store: ResultStore) -> None:
    store.write("p", Opaque(3), task_name="t", serializer="pickle")
    assert _inline(store, "p") is None
    [(info, value)] = store.lookup_many(["p"], list_from=1).values()
    assert value == Opaque(3) and info.signed
    stranger = ResultStore(store.url, store.storage_options, signing_key=b"another key")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert stranger.lookup_many(["p"], list_from=1) == {}


@pytest.mark.parametrize("list_from", [1, 1000], ids=["listing", "key-by-key"])
def test_entries_fetched_in_chunks_are_all_found_each_with_its_own_value(
    store: ResultStore, list_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "_CHUNK", 3)  # 11 entries: four chunks, the last one short
    for n in range(10):
        store.write(f"k{n}", n * 10, task_name="t")
    store.write("large", np.random.default_rng(0).random(8000), task_name="t")  # 64 kB that do not compress
    keys = [f"k{n}" for n in range(10)] + ["large", "absent", "also-absent"]
    found = store.lookup_many(keys, defer_above=32_000, list_from=list_from)
    assert sorted(found) == sorted([f"k{n}" for n in range(10)] + ["large"]), sorted(found)
    assert [found[f"k{n}"][1].get() for n in range(10)] == [n * 10 for n in range(10)]
    assert found["large"][1] is store.NOT_READ
    assert all(found[key][0].key == key for key in found), "an entry's info names another key"


def test_keys_fed_in_parts_are_each_looked_up_once_and_remote_storage_listed_once(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "_CHUNK", 2)  # every add sends a chunk to a thread
    for n in range(5):
        store.write(f"k{n}", n, task_name="t")
    location = store._location
    listings: list[int] = []
    real_sizes = location.sizes

    def counted_sizes() -> dict[str, int]:
        listings.append(1)
        return real_sizes()

    monkeypatch.setattr(location, "sizes", counted_sizes)
    with batch.BatchLookup(store, list_from=1) as lookup:
        lookup.add(["k0", "k1", "absent"])
        lookup.add(["k1", "k2"])  # k1 again: looked up once
        lookup.add(["k3", "k4", "k0"])
        with pytest.raises(ResultError, match="invalid result key"):
            lookup.add(["../escape"])  # a bad key fails in the caller's thread, not in a lookup thread
        found = lookup.hits()
    assert {key: value.get() for key, (_, value) in found.items()} == {f"k{n}": n for n in range(5)}
    # A local folder is read key by key, never listed; any other storage is listed once for all chunks.
    assert len(listings) == (0 if store.strategy == "local" else 1), listings


def test_a_folder_or_a_pipe_named_like_an_entry_is_left_out_and_nothing_hangs(tmp_path: Path) -> None:
    store = ResultStore((tmp_path / "results").as_uri(), {}, signing_key=b"test-key")
    store.write("good", 1, task_name="t")
    os.mkfifo(tmp_path / "results" / "pipe.parquet")  # opening it for reading would wait for a writer
    (tmp_path / "results" / "folder.parquet").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = store.lookup_many(["good", "pipe", "folder"], list_from=1)
    assert list(found) == ["good"], list(found)
    assert caught == [], [str(w.message) for w in caught]
