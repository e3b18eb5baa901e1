"""Prefect's ``prefect.concurrency.asyncio`` path: ``async with concurrency(...)`` and ``await rate_limit(...)``.

The waits are the synchronous ones of :mod:`daskflow.concurrency.api`, run in
a thread (``asyncio.to_thread`` copies the run context along), so the event
loop goes on while a slot or a token is awaited. Slots are taken and released
under the same coordination as in synchronous code: an async task and a sync
task under one limit share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from daskflow.concurrency import api
from daskflow.concurrency.api import ConcurrencySlotTimeoutError

__all__ = ["ConcurrencySlotTimeoutError", "concurrency", "rate_limit"]


@asynccontextmanager
async def concurrency(
    names: str | Sequence[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    *,
    strict: bool = False,
    **options: Any,
) -> AsyncIterator[None]:
    """Hold ``occupy`` slots of each limit in ``names`` for the ``async with`` block (see :func:`api.concurrency`)."""
    held = api.concurrency(names, occupy, timeout_seconds, strict=strict, **options)
    await asyncio.to_thread(held.__enter__)
    try:
        yield
    except BaseException as exc:
        if not held.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        held.__exit__(None, None, None)


async def rate_limit(
    names: str | Sequence[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    *,
    strict: bool = False,
    per_second: float | None = None,
) -> None:
    """Wait, without blocking the event loop, until ``occupy`` more starts are allowed (see :func:`api.rate_limit`)."""
    await asyncio.to_thread(api.rate_limit, names, occupy, timeout_seconds, strict=strict, per_second=per_second)
