"""Flow parameters: binding a call to the signature, and checking it against type hints.

A flow's parameters are checked before any of its tasks run, with pydantic: a
model is built once per flow from its signature (annotations and defaults),
and each call's arguments are validated and coerced through it ("3" becomes
3 for an ``int`` parameter, as Prefect does). Parameters without a hint are
passed through. A failure names the flow, each bad parameter, the value given
and the type expected.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from daskflow.exceptions import ParameterValidationError

__all__ = ["Binder", "ParameterSchema", "bind_arguments"]


class Binder:
    """Binds calls to one function's signature; the common case without ``inspect``.

    ``inspect.Signature.bind`` costs microseconds per call, which is most of a
    task call's overhead. For the usual signature (plain parameters, no
    ``*args``/``**kwargs``/positional-only) a call is bound with a zip and a
    dict; anything unusual, including every call that does not fit, takes the
    ``inspect`` path, which also produces the error message.
    """

    __slots__ = ("_fn", "_where", "_signature", "_names", "_name_set", "_defaults", "_simple")

    def __init__(self, fn: Callable[..., Any], where: str) -> None:
        self._fn = fn
        self._where = where
        self._signature = inspect.signature(fn)
        params = list(self._signature.parameters.values())
        self._names = tuple(p.name for p in params)
        self._name_set = frozenset(self._names)
        self._defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        self._simple = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults applied, in signature order."""
        names = self._names
        if self._simple and len(args) <= len(names):
            if not kwargs and len(args) == len(names):
                return dict(zip(names, args))
            given = dict(zip(names, args))
            for key in kwargs:
                if key in given or key not in self._name_set:
                    return self._bind_slow(args, kwargs)
            given.update(kwargs)
            if len(given) == len(names):
                return {name: given[name] for name in names}
            out = {}
            for name in names:
                if name in given:
                    out[name] = given[name]
                elif name in self._defaults:
                    out[name] = self._defaults[name]
                else:
                    return self._bind_slow(args, kwargs)
            return out
        return self._bind_slow(args, kwargs)

    def _bind_slow(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"{self._where}: {exc}; the signature is {getattr(self._fn, '__name__', '?')}{self._signature}"
            ) from None
        bound.apply_defaults()
        return dict(bound.arguments)


def bind_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults applied (one-off form of :class:`Binder`).

    A call that does not fit the signature is a ``TypeError`` naming ``where``
    (e.g. "flow 'etl'") and the signature.
    """
    return Binder(fn, where).bind(args, kwargs)


_PLAIN_TYPES = frozenset({int, float, str, bool, bytes})


class ParameterSchema:
    """Validates and coerces a function's arguments against its type hints (pydantic).

    A call whose annotated arguments are all exactly of their plain hinted type
    (an ``int`` for ``int``, a ``str`` for ``str``, ...) is valid as it is: it
    skips pydantic, which is then not even imported. Everything else is
    validated and coerced by a model built once per function.
    """

    def __init__(self, fn: Callable[..., Any], where: str) -> None:
        self._fn = fn
        self._where = where
        self._model: Any = None
        self._fields: dict[str, tuple[Any, Any]] | None = None
        self._plain: dict[str, type] = {}
        self._defaults: dict[str, Any] = {}

    def _read_hints(self) -> dict[str, tuple[Any, Any]]:
        try:
            hints = typing.get_type_hints(self._fn)
        except Exception:  # unresolvable forward references: fall back to the raw annotations
            hints = dict(getattr(self._fn, "__annotations__", {}))
        fields: dict[str, Any] = {}
        for name, param in inspect.signature(self._fn).parameters.items():
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            hint = hints.get(name, inspect.Parameter.empty)
            if hint is inspect.Parameter.empty or hint is Any:
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            if default is not ...:
                self._defaults[name] = default
            fields[name] = (hint, default)
        if all(hint in _PLAIN_TYPES for hint, _ in fields.values()):
            self._plain = {name: hint for name, (hint, _) in fields.items()}
        return fields

    def _build(self, fields: dict[str, Any]) -> Any:
        import pydantic  # heavy: imported on the first call that needs it, not at import time

        config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        return pydantic.create_model(f"{self._fn.__name__}_parameters", __config__=config, **fields)

    def validate(self, values: dict[str, Any]) -> dict[str, Any]:
        """Return ``values`` with annotated parameters validated and coerced."""
        fields = self._fields
        if fields is None:
            fields = self._fields = self._read_hints()
        if not fields:
            return values
        # A default is the author's choice, not the caller's input: like pydantic,
        # do not validate it (the seed's `execution_date: str = None` relies on this).
        subset = {
            k: v for k, v in values.items() if k in fields and not (k in self._defaults and v is self._defaults[k])
        }
        plain = self._plain
        if not subset or plain and all(type(v) is plain[k] for k, v in subset.items()):
            return values
        import pydantic

        if self._model is None:
            self._model = self._build(fields)
        try:
            model = self._model.model_validate(subset)
        except pydantic.ValidationError as exc:
            raise ParameterValidationError(self._describe(exc, values)) from None
        coerced = dict(values)
        for name in subset:
            coerced[name] = getattr(model, name)
        return coerced

    def _describe(self, exc: Any, values: Mapping[str, Any]) -> str:
        hints = typing.get_type_hints(self._fn) if self._fields else {}
        lines = [f"{self._where}: invalid parameters, no task was run:"]
        for error in exc.errors():
            loc = error.get("loc", ())
            name = str(loc[0]) if loc else "?"
            where_inside = "".join(f"[{part!r}]" for part in loc[1:])
            given = values.get(name, "<missing>")
            expected = _type_label(hints.get(name, "?"))
            lines.append(
                f"  - parameter {name!r}{where_inside}: got {_short_repr(given)} "
                f"({type(given).__name__}), expected {expected}: {error.get('msg', '')}"
            )
        lines.append("Pass values of the annotated types, or change the type hints.")
        return "\n".join(lines)


def _type_label(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
