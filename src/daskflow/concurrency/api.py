"""``concurrency(names)`` and ``rate_limit(names)``: named limits inside a task's code.

``concurrency`` is a context manager holding slots for the block;
``rate_limit`` is a call that waits for its turn and returns (as in Prefect;
``with rate_limit(...):`` works too, taking the tokens once). Both take one
name or a list of names and use the coordination of where the code runs: the
cluster's semaphores on a Dask worker, this process's otherwise. The size of
``concurrency("db")`` comes from the flow run (``@flow(concurrency_limit=...)``)
or dask.config ``daskflow.concurrency.limits``; the rate of ``rate_limit("api")``
from its ``per_second`` argument or dask.config
``daskflow.concurrency.rate_limits``.

A name with no size behaves as in Prefect, where a limit that was never
created does not limit: the code runs at once, with a warning naming the
limit and how to size it; ``strict=True`` makes it an error instead.
``timeout_seconds`` bounds the wait for slots (a ``TimeoutError`` naming the
limits when it passes; the coordinations notice it within their polling step
of 0.5 s). Time spent waiting is added to the task run's ``slot_wait``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from daskflow import settings
from daskflow.concurrency.limits import Limit, flow_limit_sizes, limit_size
from daskflow.concurrency.local import LOCAL
from daskflow.context import get_flow_run_context, get_task_run_context, wait_deadline
from daskflow.exceptions import (
    CancelledRunError,
    ConcurrencyLimitError,
    ConcurrencySlotTimeoutError,
    ConcurrencyWarning,
)

__all__ = ["ConcurrencySlotTimeoutError", "ConcurrencyWarning", "concurrency", "coordination_here", "rate_limit"]

_log = logging.getLogger("daskflow.concurrency")


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


def _names(names: str | Sequence[str], what: str) -> list[str]:
    listed = [names] if isinstance(names, str) else list(names)
    if not listed or not all(isinstance(n, str) and n for n in listed):
        raise ConcurrencyLimitError(f"{what}(): give a limit's name or a list of names, got {names!r}")
    return sorted(dict.fromkeys(listed))  # one global order: two holders can never wait for each other


def _check_timeout(timeout_seconds: float | None, what: str) -> None:
    if timeout_seconds is not None and (
        isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int | float) or timeout_seconds < 0
    ):
        raise ConcurrencyLimitError(
            f"{what}: timeout_seconds must be a number of seconds >= 0, got {timeout_seconds!r}"
        )


def _unsized(what: str, missing: list[str], fix: str, measure: str = "size") -> None:
    # Prefect runs code under a limit that was never created without limiting it; so do we, loudly.
    names = f"{', '.join(map(repr, missing))} {'has' if len(missing) == 1 else 'have'}"
    _log.warning(
        "%s: %s no %s, so the code runs without limit (strict=True makes this an error). %s", what, names, measure, fix
    )


@contextmanager
def concurrency(
    names: str | Sequence[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    *,
    strict: bool = False,
    max_retries: int | None = None,
    lease_duration: float | None = None,
) -> Iterator[None]:
    """Hold ``occupy`` slots of each limit in ``names`` for the duration of the block.

    ``max_retries`` and ``lease_duration`` are accepted for Prefect code: slots
    here are leases of ``distributed.Semaphore`` (their timeout is dask.config
    ``distributed.scheduler.locks.lease-timeout``) and a wait is bounded by
    ``timeout_seconds`` alone.
    """
    listed = _names(names, "concurrency")
    what = f"concurrency({names!r})"
    _check_timeout(timeout_seconds, what)
    sizes = _sizes_here()
    missing = [name for name in listed if name not in sizes]
    if missing:
        if strict:
            limit_size(missing[0], sizes, occupy)  # raises the error that names the limit and the fix
        _unsized(
            what,
            missing,
            f"Size it with @flow(concurrency_limit={{{missing[0]!r}: 5}}) or dask.config daskflow.concurrency.limits.",
        )
    limits: tuple[Limit, ...] = tuple(limit_size(name, sizes, occupy) for name in listed if name in sizes)
    if not limits:
        yield
        return
    started = time.monotonic()
    try:
        with wait_deadline(timeout_seconds):
            release = coordination_here().acquire(limits, occupy)
    except CancelledRunError:
        # The coordinations give up on a cancel and on our deadline alike: tell them apart.
        if timeout_seconds is not None and not _run_cancelled_for_real():
            raise ConcurrencySlotTimeoutError(
                f"{what}: no slot within timeout_seconds={timeout_seconds:g} "
                f"(limits {', '.join(f'{lim.name}={lim.size}' for lim in limits)}); raise the timeout or the limit's size"
            ) from None
        raise
    finally:
        _count_wait(started)
    try:
        yield
    finally:
        warning = release()
        if warning:
            warnings.warn(warning, ConcurrencyWarning, stacklevel=3)


def _run_cancelled_for_real() -> bool:
    ctx = get_task_run_context()
    event = ctx.cancel_event if ctx is not None else None
    return event is not None and event.is_set()


class _Taken:
    """What ``rate_limit`` returns: its tokens are already taken; ``with`` around it changes nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def rate_limit(
    names: str | Sequence[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    *,
    strict: bool = False,
    per_second: float | None = None,
) -> _Taken:
    """Wait until ``occupy`` more starts are allowed under each rate limit in ``names``, then return.

    At most ``per_second`` starts per second pass, across every worker of the
    cluster on Dask. The tokens are never given back: a rate limits how often
    work starts, not how much runs at once. Call it before the work, as in
    Prefect (``rate_limit("api")``); ``with rate_limit("api"):`` works as well.
    ``timeout_seconds`` is accepted for Prefect code; a token bucket's wait is
    at most one period, known in advance.
    """
    listed = _names(names, "rate_limit")
    what = f"rate_limit({names!r})"
    _check_timeout(timeout_seconds, what)
    if isinstance(occupy, bool) or not isinstance(occupy, int) or occupy < 1:
        raise ConcurrencyLimitError(f"{what}, occupy={occupy!r}: occupy must be a whole number >= 1")
    configured = settings.get("concurrency.rate_limits") or {}
    rates: list[tuple[str, float]] = []
    for name in listed:
        rate = per_second if per_second is not None else configured.get(name)
        if rate is None:
            if strict:
                raise ConcurrencyLimitError(
                    f"rate_limit({name!r}): no rate is set for it. Pass per_second=..., or set dask.config "
                    f"daskflow.concurrency.rate_limits: {{{name!r}: 10}}"
                )
            _unsized(
                what,
                [name],
                f"Pass per_second=... or set dask.config daskflow.concurrency.rate_limits: {{{name!r}: 10}}.",
                "rate",
            )
            continue
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ConcurrencyLimitError(f"rate_limit({name!r}): the rate must be a number > 0 per second, got {rate!r}")
        rates.append((name, float(rate)))
    started = time.monotonic()
    coordination = coordination_here()
    for name, rate in rates:
        coordination.take_tokens(name, rate, occupy)
    _count_wait(started)
    return _Taken()
