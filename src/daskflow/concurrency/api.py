"""``concurrency(name)`` and ``rate_limit(name)``: named limits inside a task's code.

Both are context managers for code running in a task (or a flow body, or a
plain script). They use the coordination of where the code runs: the
cluster's semaphores on a Dask worker, this process's otherwise. The size of
``concurrency("db")`` comes from the flow run (``@flow(concurrency_limit=...)``)
or dask.config ``daskflow.concurrency.limits``; the rate of ``rate_limit("api")``
from its ``per_second`` argument or dask.config
``daskflow.concurrency.rate_limits``. A name with no size is a clear error,
never an unlimited limit. Time spent waiting is added to the task run's
``slot_wait``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from daskflow import settings
from daskflow.concurrency.limits import flow_limit_sizes, limit_size
from daskflow.concurrency.local import LOCAL
from daskflow.context import get_flow_run_context, get_task_run_context
from daskflow.exceptions import ConcurrencyLimitError, ConcurrencyWarning

__all__ = ["ConcurrencyWarning", "concurrency", "coordination_here", "rate_limit"]


def coordination_here() -> Any:
    """The coordination of where this code runs: the cluster's on a Dask worker, else this process's."""
    ctx = get_task_run_context()
    if ctx is not None and ctx.coordination is not None:
        return ctx.coordination
    return LOCAL


def _sizes_here() -> dict[str, int]:
    task_ctx = get_task_run_context()
    if task_ctx is not None:
        return task_ctx.concurrency_limits or flow_limit_sizes(None)
    flow_ctx = get_flow_run_context()
    return flow_limit_sizes(flow_ctx.concurrency_limits if flow_ctx is not None else None)


def _count_wait(started: float) -> None:
    ctx = get_task_run_context()
    if ctx is not None:
        ctx.task_run.slot_wait += time.monotonic() - started


@contextmanager
def concurrency(name: str, occupy: int = 1) -> Iterator[None]:
    """Hold ``occupy`` slots of the limit ``name`` for the duration of the block."""
    limit = limit_size(name, _sizes_here(), occupy)
    started = time.monotonic()
    release = coordination_here().acquire((limit,), occupy)
    _count_wait(started)
    try:
        yield
    finally:
        warning = release()
        if warning:
            warnings.warn(warning, ConcurrencyWarning, stacklevel=3)


@contextmanager
def rate_limit(name: str, occupy: int = 1, *, per_second: float | None = None) -> Iterator[None]:
    """Wait until ``occupy`` more starts are allowed under the rate limit ``name``, then go on.

    At most ``per_second`` starts per second pass, across every worker of the
    cluster on Dask. The tokens are not given back at the end of the block: a
    rate limits how often work starts, not how much runs at once.
    """
    rate = per_second if per_second is not None else (settings.get("concurrency.rate_limits") or {}).get(name)
    if rate is None:
        raise ConcurrencyLimitError(
            f"rate_limit({name!r}): no rate is set for it. Pass per_second=..., or set dask.config "
            f"daskflow.concurrency.rate_limits: {{{name!r}: 10}}"
        )
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
        raise ConcurrencyLimitError(f"rate_limit({name!r}): the rate must be a number > 0 per second, got {rate!r}")
    if isinstance(occupy, bool) or not isinstance(occupy, int) or occupy < 1:
        raise ConcurrencyLimitError(f"rate_limit({name!r}, occupy={occupy!r}): occupy must be a whole number >= 1")
    started = time.monotonic()
    coordination_here().take_tokens(name, float(rate), occupy)
    _count_wait(started)
    yield
