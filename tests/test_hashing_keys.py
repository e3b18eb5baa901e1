"""Keys that must never change, and the fast path for flat values that must give them.

Cache entries are found by their keys: a hash that changes for a value it
already hashed orphans every entry written under it. The digests below were
taken from the encoder before the flat fast path (:mod:`daskflow.hashing.flat`)
existed; both paths must keep giving them, and must agree on every flat value.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import fractions
import pathlib
import uuid
from typing import Any

import pytest

from daskflow.cache_policies import INPUTS
from daskflow.hashing import hash_objects, stable_hash
from daskflow.hashing.encoder import _digest
from daskflow.hashing.flat import FLAT_MAX_ITEMS, flat_frame
from daskflow.states import KnownValue

VALUES: dict[str, Any] = {
    "int 0": 0,
    "int -1": -1,
    "int big": 2**70,
    "bool": True,
    "none": None,
    "float": 2.5,
    "nan": float("nan"),
    "neg zero": -0.0,
    "str": "h\u00e9llo",
    "empty str": "",
    "bytes": b"\x00\xff",
    "complex": 1 + 2j,
    "date": dt.date(2024, 1, 2),
    "timedelta": dt.timedelta(days=1, seconds=2),
    "decimal": decimal.Decimal("3.14"),
    "fraction": fractions.Fraction(1, 3),
    "uuid": uuid.UUID(int=7),
    "range": range(1, 10, 2),
    "path": pathlib.PurePosixPath("/x/y"),
    "list": [1, "a", None],
    "tuple": (1, 2.0),
    "dict": {"b": 1, "a": "x"},
    "nested": {"a": [1, {"b": 2}]},
    "set": {1, 2},
}

PINNED = {
    "int 0": "acdce4eeb94be7e7077b384c914c89d9a061cb255e3de4388cafd9be1791a5f8",
    "int -1": "ea512dadce94f556e81db946d58003594af335955805e7ff906363078f100fb4",
    "int big": "be76c597b200c087f305a2c079fdcc0398cb4b760f55c0a1f00f4d73deb22339",
    "bool": "fd0ce8618105e991f4e50f65f183ac3fb4d8636ed753ec98e60fb376be19ded8",
    "none": "1f030273f3c5ec94ce4cc4478a019912187ec649ff283e8353e67d46eca7e7cb",
    "float": "0296921669f77d8626262a856d1ef5c971c4032122d67a0dc51d4a09ba6f0cc8",
    "nan": "e612a2fe1e0a3d72b7122f9b8c2ba7615b2d398e0a24ecb78355ab160bd1eccc",
    "neg zero": "a42625de44c4bc0fd30f06b60b60f375f6e478e707f44b77e474ed209b790f26",
    "str": "e56355830c2a2303ca8e1f9a58db7d90d40667f079d50bc7f4a56f7a6af29f4b",
    "empty str": "981e1c24641b74f8782ea947024ee63879fae6c1306e927cce0172e654e61c1e",
    "bytes": "9d5ecce5206b562af9c1c31d29c2a9686192966872377ddd07f1a67430516dcf",
    "complex": "61e57205ee914793e9cfe6b03022159560f0b61972d9559603b6d5647ed1ced4",
    "date": "25bbd6b7eef56f45526c9085263f531abc236ac396b8d9bcda6f8043044c9339",
    "timedelta": "97a5e44390504595d563fbb6c1dcaf7738c968f97e6ce54697c34adcf74ce7a1",
    "decimal": "d61660b84ec94e32b34ee28a3510b36a5857f2ec5385ace138eb93c3400409f9",
    "fraction": "ce57cb82a95e4c70804e0af57fc141bc8162fa58fb7442512df0e81ad76a55ad",
    "uuid": "33725835f86251c020d8f87c4b2bae2d2958ddb124d9dbc75ec552c0c8159fc6",
    "range": "25f467458339decac6e1d2ada4821c424a6379bc3ab6d17b1977b93730fc17c1",
    "path": "a2ef5294a9525e962b7f4cb1f3b21cdd7c8e18d104b2c3586a54cc4055af8768",
    "list": "2cd63dcd9affba53d4c9b5aa65e3e69c0a3d163dd129f1eb58d553bad26925ef",
    "tuple": "a9e2caf5011228d8d51d208652b5762b049ede0afd470845fc33592be327c6fb",
    "dict": "80b8a564326165e9543ce78221c4af7dd3d9d166357612e9e261774c827c1727",
    "nested": "aa3d9e3b55a527aa31108d6976466e4b3bb0a230e29947e1473349d960a6e2b5",
    "set": "476a9184a569cee2e3e7d9812d31c9a97f9505be7a5eef9fab9988d22faddc53",
}
INPUTS_KEY_OF_X_1 = "a884b753cc8a0af0d7dfe86010819703b4e1d058cd4f45d4a0dfdd526ec77821"


class _Task:
    name = "pinned"
    fn = None


class _Context:
    task = _Task()
    task_run_id = "run"
    flow_run_id = None


def test_pinned_digests_do_not_change_on_either_path() -> None:
    fast = {name: stable_hash(value) for name, value in VALUES.items()}
    slow = {name: _digest((value,), "value", single=True, fast=False) for name, value in VALUES.items()}
    assert fast == PINNED, sorted(name for name in PINNED if fast[name] != PINNED[name])
    assert slow == PINNED, sorted(name for name in PINNED if slow[name] != PINNED[name])
    assert INPUTS.compute_key(_Context(), {"x": 1}, {}) == INPUTS_KEY_OF_X_1


FLAT: list[Any] = [
    *range(-300, 300),
    *(2**k for k in range(0, 130, 7)),
    True,
    False,
    None,
    ...,
    0.0,
    -0.0,
    1e300,
    float("inf"),
    float("nan"),
    "",
    "a",
    "\u00e9\U0001f600",
    "\ud800",  # a lone surrogate: written as the encoder writes it
    b"",
    b"1",
    bytearray(b"x"),
    memoryview(b"mv"),
    3j,
    *VALUES.values(),
    [1, 1.0, "1", True, None],
    (),
    [],
    {},
    {"x": "0" * 64, "y": 2},
    {1: "a", "1": "a", 2.5: None},
    list(range(FLAT_MAX_ITEMS)),
]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "slow"])
def test_the_flat_path_writes_the_encoder_s_bytes(fast: bool) -> None:
    hashed = [_digest((value,), "value", single=True, fast=fast) for value in FLAT]
    together = _digest(("inputs", {"x": 1}, [2, "3"]), "objs", single=False, fast=fast)
    expected = [_digest((value,), "value", single=True, fast=False) for value in FLAT]
    assert hashed == expected, [repr(v) for v, a, b in zip(FLAT, hashed, expected, strict=True) if a != b]
    assert together == hash_objects("inputs", {"x": 1}, [2, "3"])


class Number(int):
    pass


def test_what_is_not_flat_is_left_to_the_encoder() -> None:
    not_flat = [
        Number(1),  # a subclass: the encoder writes its class first
        [1, [2]],
        {"a": (1,)},
        collections.OrderedDict(a=1),
        {1, 2},
        list(range(FLAT_MAX_ITEMS + 1)),
        dt.datetime(2024, 1, 1),
    ]
    assert [flat_frame(value) for value in not_flat] == [None] * len(not_flat)
    assert stable_hash(Number(1)) != stable_hash(1)
    assert stable_hash(list(range(FLAT_MAX_ITEMS + 1))) == _digest(
        (list(range(FLAT_MAX_ITEMS + 1)),), "value", single=True, fast=False
    )
    assert len({stable_hash(v) for v in (1, 1.0, "1", True, b"1", [1], (1,), {1: 1})}) == 8


def test_long_lists_and_hooked_values_keep_their_digests() -> None:
    # Longer than the flat path takes whole: the encoder walks them, writing flat items in one go.
    assert stable_hash(list(range(1000))) == "a4f0e478dac28c64ad75f9d7bd63061dbf0271c3242bf2a939bcf97e5da826b6"
    assert (
        stable_hash([[i, str(i)] for i in range(300)])
        == "ea60fa39b369d3c0979aa1c6ffd73411e304d105a3b96a329349b406a2a071e4"
    )
    # Versioned values (a reduce over a map's hits) hash by their hook's flat value.
    assert (
        stable_hash([KnownValue(i, f"v{i}") for i in range(300)])
        == "cef433949d854515680b81e85cc0c15ce7e2352c29bde441d892d3ee1db0863b"
    )
