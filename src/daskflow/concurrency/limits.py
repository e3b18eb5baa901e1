"""Which named limits a task run is under, and how big each is.

A limit is a name and a size: at most ``size`` slots of it are held at once.
A task run is under the limits that name it: its task's own
``concurrency_limit`` (named ``task:<task name>``), and every limit of its flow
run whose key is the task's name or one of its tags — the flow's
``concurrency_limit={"db": 10}`` first, then dask.config
``daskflow.concurrency.limits`` as set where the flow runs. The same sizes
serve ``concurrency(name)`` inside a task. Pure functions: no I/O, no locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from daskflow import settings
from daskflow.exceptions import ConcurrencyLimitError

__all__ = ["Limit", "flow_limit_sizes", "limit_size", "limits_for_task"]


@dataclass(frozen=True, slots=True)
class Limit:
    """A named limit: at most ``size`` slots held at once."""

    name: str
    size: int


def flow_limit_sizes(flow_limits: Mapping[str, int] | None) -> dict[str, int]:
    """The sizes a flow run knows: dask.config ``daskflow.concurrency.limits``, then the flow's own."""
    sizes = {
        str(name): _size(size, str(name), "dask.config daskflow.concurrency.limits")
        for name, size in (settings.get("concurrency.limits") or {}).items()
    }
    for name, size in (flow_limits or {}).items():
        sizes[name] = _size(size, name, "the flow's concurrency_limit")
    return sizes


def limits_for_task(
    task_name: str, tags: Iterable[str], own: int | None, sizes: Mapping[str, int]
) -> tuple[Limit, ...]:
    """The limits a run of ``task_name`` with ``tags`` is under, in a fixed order (by name).

    Acquiring in one global order means two runs needing the same two limits can
    never each hold one and wait for the other.
    """
    found = {name: Limit(name, sizes[name]) for name in (task_name, *tags) if name in sizes}
    if own is not None:
        found[f"task:{task_name}"] = Limit(f"task:{task_name}", own)
    return tuple(found[name] for name in sorted(found))


def limit_size(name: str, sizes: Mapping[str, int], occupy: int) -> Limit:
    """The limit ``name`` for ``concurrency(name, occupy)``: known, and at least ``occupy`` big."""
    if not isinstance(name, str) or not name:
        raise ConcurrencyLimitError(f"concurrency(): the limit's name must be a non-empty string, got {name!r}")
    size = sizes.get(name)
    if size is None:
        known = ", ".join(sorted(sizes)) or "none"
        raise ConcurrencyLimitError(
            f"concurrency({name!r}): no limit of that name has a size (known: {known}). Give it one in the "
            f"flow, @flow(concurrency_limit={{{name!r}: 5}}), or in dask.config daskflow.concurrency.limits"
        )
    if isinstance(occupy, bool) or not isinstance(occupy, int) or occupy < 1:
        raise ConcurrencyLimitError(f"concurrency({name!r}, occupy={occupy!r}): occupy must be a whole number >= 1")
    if occupy > size:
        raise ConcurrencyLimitError(
            f"concurrency({name!r}, occupy={occupy}): the limit has only {size} slots, so this would wait forever; "
            "occupy fewer slots or raise the limit"
        )
    return Limit(name, size)


def _size(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConcurrencyLimitError(f"{where}: the limit {name!r} must be a whole number >= 1, got {value!r}")
    return value
