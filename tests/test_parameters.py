"""Binding calls to signatures: the fast path agrees with inspect, and errors name the callee."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from daskflow.parameters import Binder


def plain(a: int, b: int = 2, c: str = "x") -> None: ...


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, 5), {}), ((1, 5, "y"), {}), ((), {"a": 1}), ((1,), {"c": "z"}), ((), {"c": "z", "a": 3, "b": 4})],
)
def test_fast_binding_agrees_with_inspect(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    expected = inspect.signature(plain).bind(*args, **kwargs)
    expected.apply_defaults()
    bound = Binder(plain, "task 'plain'").bind(args, kwargs)
    assert bound == dict(expected.arguments)
    assert list(bound) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing a required argument: 'a'"),
        ((1, 2, 3, 4), {}, "too many positional arguments"),
        ((1,), {"a": 2}, "multiple values for argument 'a'"),
        ((1,), {"zzz": 2}, "got an unexpected keyword argument 'zzz'"),
    ],
)
def test_bad_calls_name_the_callee_and_signature(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError) as info:
        Binder(plain, "task 'plain'").bind(args, kwargs)
    text = str(info.value)
    assert text.startswith("task 'plain': ") and message in text and "the signature is plain(" in text, text
