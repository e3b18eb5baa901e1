"""Wrappers that change how a task treats one argument.

- ``unmapped(x)``: in ``.map()``, pass ``x`` whole to every run instead of
  iterating over it.
- ``allow_failure(future)``: run the task even if that upstream run failed;
  the argument receives the upstream's exception instead of a value.
- ``quote(x)``: hand ``x`` over as it is, without looking inside it for
  futures (useful for a huge list known to hold none).
- ``opaque(x)``: the same as ``quote`` for a task's argument (Prefect's
  newer name for an object that is never looked into).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

__all__ = ["BaseAnnotation", "allow_failure", "opaque", "quote", "unmapped"]

T = TypeVar("T")


class BaseAnnotation(Generic[T]):
    """A wrapper around one argument value."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unwrap(self) -> T:
        return self.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.value == other.value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), id(self.value)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.value,))


class unmapped(BaseAnnotation[T]):
    """Pass the value whole to every run of a ``.map()``."""

    __slots__ = ()

    def __getitem__(self, _: object) -> T:
        return self.value


class allow_failure(BaseAnnotation[T]):
    """Let a downstream task run even if this upstream run did not complete."""

    __slots__ = ()


class quote(BaseAnnotation[T]):
    """Pass the value as it is, without searching it for futures."""

    __slots__ = ()

    def unquote(self) -> T:
        """The wrapped value (Prefect's name for :meth:`unwrap`)."""
        return self.value


class opaque(quote[T]):
    """Pass the value as it is, never looking inside it (for futures or anything else)."""

    __slots__ = ()
