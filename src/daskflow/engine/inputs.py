"""Task inputs: finding upstream runs in arguments, and resolving them to values.

Arguments may hold futures and states of upstream runs, directly or inside
lists, tuples, sets and dicts. Before a task runs, each is replaced by its
run's value; an upstream run that did not complete stops the task with
:class:`~daskflow.exceptions.UpstreamFailedError`, unless the argument is
wrapped in ``allow_failure``, in which case it receives the upstream's
exception. ``quote`` hands a value over untouched, ``unmapped`` is unwrapped.

A task that caches resolves its inputs in two steps: first with each
versioned upstream value kept as its reference (a
:class:`~daskflow.states.DeferredData`, which a cache key hashes by version,
not content), then, only if the key misses, with the values themselves
(:func:`materialize`). A stored value that cannot be read then stops the task
as an upstream failure saying why.
Containers are only rebuilt when something inside them changed, so a large
list of plain values costs one type check per item and no copy.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from daskflow.annotations import BaseAnnotation, allow_failure, quote
from daskflow.exceptions import ResultError, UpstreamFailedError
from daskflow.futures import DaskflowFuture
from daskflow.states import DeferredData, State

__all__ = [
    "UNCHANGED",
    "StateHandler",
    "find_upstream_runs",
    "iter_upstreams",
    "materialize",
    "object_fields",
    "resolve_inputs",
    "resolve_runs",
    "transform",
    "wait_for_all",
]

_ATOMS = (str, bytes, int, float, bool, type(None), complex)
_CONTAINERS = (list, tuple, set, frozenset, dict)


def iter_upstreams(value: Any) -> Iterable[DaskflowFuture[Any]]:
    """Every future found in ``value`` (recursing into containers, not into ``quote``)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _ATOMS):
            continue
        if isinstance(item, DaskflowFuture):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            stack.extend(item)
        elif isinstance(item, BaseAnnotation) and not isinstance(item, quote):
            stack.append(item.value)
        elif (fields := object_fields(item)) is not None:
            stack.extend(value for _, value in fields)


def find_upstream_runs(values: Iterable[Any]) -> tuple[str, ...]:
    """The ids of the task runs whose futures appear in ``values``."""
    ids: dict[str, None] = {}
    for value in values:
        if isinstance(value, _ATOMS):
            continue
        for future in iter_upstreams(value):
            ids[future.task_run_id] = None
    return tuple(ids)


StateHandler = Callable[[State, bool], Any]


def object_fields(value: Any) -> list[tuple[str, Any]] | None:
    """The fields of a dataclass instance or a pydantic model, where futures may hide; None for anything else.

    Prefect looks inside both for futures and states (its ``visit_collection``),
    so a future in a dataclass reaches the task as its value, not as a pending future.
    """
    cls = type(value)
    if hasattr(cls, "__dataclass_fields__") and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    model_fields = getattr(cls, "model_fields", None)
    if isinstance(model_fields, dict) and hasattr(value, "model_copy") and not isinstance(value, type):
        return [(name, getattr(value, name, None)) for name in model_fields]
    return None


def _with_fields(value: Any, changed: dict[str, Any]) -> Any:
    """A copy of the dataclass or pydantic model ``value`` with ``changed`` fields replaced (no validation)."""
    if hasattr(type(value), "__dataclass_fields__"):
        new = copy.copy(value)
        for name, item in changed.items():
            object.__setattr__(new, name, item)  # frozen dataclasses too: the copy is ours
        return new
    return value.model_copy(update=changed)


def _unreadable(where: str, argument: str, exc: Exception) -> UpstreamFailedError:
    return UpstreamFailedError(
        f"{where}: argument {argument!r} comes from a cached value that could not be read: {exc}"
    )


def _upstream_value(where: str, argument: str, kept: list[DeferredData] | None = None) -> StateHandler:
    def on_state(state: State, allowed: bool) -> Any:
        if state.is_completed():
            if kept is not None:
                deferred = state.deferred
                if deferred is not None:
                    kept.append(deferred)
                    return deferred
            try:
                return state.data
            except ResultError as exc:
                raise _unreadable(where, argument, exc) from exc
        if allowed:
            return state.result(raise_on_failure=False)
        raise UpstreamFailedError(
            f"{where}: argument {argument!r} comes from a run that ended {state.name}"
            f"{': ' + state.message if state.message else ''}; the task did not run. "
            "Wrap the argument in allow_failure(...) to run it anyway."
        )

    return on_state


Visitor = Callable[[Any, bool], Any]
_UNCHANGED: Any = object()
UNCHANGED = _UNCHANGED  # what a visitor returns to keep a leaf


def transform(value: Any, visit: Visitor, allowed: bool = False, unwrap: bool = True) -> tuple[Any, bool]:
    """Rebuild ``value`` with the leaves ``visit`` replaces; the one walker over arguments.

    ``visit(leaf, allowed)`` returns the replacement, or ``_UNCHANGED`` to keep
    the leaf and look inside it. ``allowed`` is True under ``allow_failure``.
    With ``unwrap``, annotations are replaced by their (transformed) contents;
    without, they are kept around them (for arguments that travel elsewhere).
    Returns the new value and whether anything changed; unchanged containers
    are returned as they are, not copied.
    """
    if isinstance(value, _ATOMS):
        return value, False
    new = visit(value, allowed)
    if new is not _UNCHANGED:
        return new, True
    if isinstance(value, BaseAnnotation):
        if isinstance(value, quote):
            return (value.value, True) if unwrap else (value, False)
        inner, changed = transform(value.value, visit, allowed or isinstance(value, allow_failure), unwrap)
        if unwrap:
            return inner, True
        return (type(value)(inner), True) if changed else (value, False)
    if isinstance(value, dict):
        changed = False
        out = {}
        for key, item in value.items():
            new, did = transform(item, visit, allowed, unwrap)
            out[key] = new
            changed |= did
        if not changed:
            return value, False
        return (out if type(value) is dict else type(value)(out)), True
    if isinstance(value, _CONTAINERS):
        items = []
        changed = False
        for item in value:
            new, did = transform(item, visit, allowed, unwrap)
            items.append(new)
            changed |= did
        if not changed:
            return value, False
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items), True
        return type(value)(items), True
    fields = object_fields(value)
    if fields:
        changed_fields = {}
        for name, item in fields:
            new, did = transform(item, visit, allowed, unwrap)
            if did:
                changed_fields[name] = new
        if changed_fields:
            return _with_fields(value, changed_fields), True
    return value, False


def resolve_runs(value: Any, on_state: StateHandler) -> tuple[Any, bool]:
    """``value`` with every future (waited for) and state replaced by ``on_state(state, allowed)``."""

    def visit(leaf: Any, allowed: bool) -> Any:
        if isinstance(leaf, DaskflowFuture):
            leaf.wait()
            return on_state(leaf.state, allowed)
        if isinstance(leaf, State):
            return on_state(leaf, allowed)
        return _UNCHANGED

    return transform(value, visit)


def resolve_inputs(parameters: dict[str, Any], where: str, kept: list[DeferredData] | None = None) -> dict[str, Any]:
    """``parameters`` with futures, states and annotations replaced by values.

    Waits for upstream futures. Raises ``UpstreamFailedError`` naming ``where``
    and the argument when an upstream run did not complete. Given a ``kept``
    list, a versioned upstream value stays a reference (see the module
    docstring), appended to ``kept``; :func:`materialize` then gives the values.
    """
    resolved = parameters
    for name, value in parameters.items():
        new, changed = resolve_runs(value, _upstream_value(where, name, kept))
        if changed:
            if resolved is parameters:
                resolved = dict(parameters)
            resolved[name] = new
    return resolved


def materialize(parameters: dict[str, Any], where: str) -> dict[str, Any]:
    """``parameters`` (from ``resolve_inputs(..., keep_versions=True)``) with every reference loaded."""
    resolved = parameters
    for name, value in parameters.items():

        def visit(leaf: Any, allowed: bool, argument: str = name) -> Any:
            if isinstance(leaf, DeferredData):
                try:
                    return leaf.get()
                except ResultError as exc:
                    raise _unreadable(where, argument, exc) from exc
            return _UNCHANGED

        new, changed = transform(value, visit)
        if changed:
            if resolved is parameters:
                resolved = dict(parameters)
            resolved[name] = new
    return resolved


def wait_for_all(wait_for: Iterable[Any], where: str) -> None:
    """Wait for the ``wait_for`` runs; a failed one stops the task (unless allow_failure)."""
    for item in wait_for:
        resolve_runs(item, _upstream_value(where, "wait_for"))
