"""Retry delays: how long to wait before retry number *n*.

``retry_delay_seconds`` is a number (the same delay every time), a list (one
delay per retry; the last repeats if retries outnumber it) or a function of
the retry count returning either, such as :func:`exponential_backoff`.
``retry_jitter_factor`` spreads each delay uniformly over
``[d * (1 - j), d * (1 + j)]`` so that many runs failing together do not
retry together.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

from daskflow.exceptions import ConfigurationError

__all__ = ["exponential_backoff", "retry_delay"]


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """Delays that double each retry: ``backoff_factor * 2**n`` for retry ``n`` (from 0).

    Use as ``@task(retries=3, retry_delay_seconds=exponential_backoff(10))``
    for waits of 10, 20 and 40 seconds.
    """
    if isinstance(backoff_factor, bool) or not isinstance(backoff_factor, Real) or backoff_factor < 0:
        raise ConfigurationError(f"exponential_backoff: backoff_factor must be a number >= 0, got {backoff_factor!r}")
    factor = float(backoff_factor)

    def delays(retries: int) -> list[float]:
        return [factor * 2**n for n in range(retries)]

    delays.__qualname__ = f"exponential_backoff({backoff_factor!r})"
    return delays


def retry_delay(
    setting: float | Sequence[float] | Callable[[int], Any],
    retries: int,
    retry_number: int,
    jitter: float | None = None,
    where: str = "task",
) -> float:
    """Seconds to wait before retry ``retry_number`` (0 for the first retry)."""
    value: Any = setting(retries) if callable(setting) else setting
    if isinstance(value, (list, tuple)):
        value = value[min(retry_number, len(value) - 1)] if value else 0.0
    if isinstance(value, bool) or not isinstance(value, Real) or value < 0:
        raise ConfigurationError(
            f"{where}: retry_delay_seconds gave {value!r} for retry {retry_number + 1}; "
            "it must give numbers of seconds >= 0"
        )
    delay = float(value)
    if jitter:
        delay = max(0.0, random.uniform(delay * (1 - jitter), delay * (1 + jitter)))
    return delay
