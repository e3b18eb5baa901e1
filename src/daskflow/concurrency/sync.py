"""Prefect's ``prefect.concurrency.sync`` path: ``concurrency`` and ``rate_limit`` for synchronous code.

The same objects as :mod:`daskflow.concurrency`; this module exists so that
``from prefect.concurrency.sync import concurrency`` keeps working with the
import changed to ``daskflow``.
"""

from __future__ import annotations

from daskflow.concurrency.api import ConcurrencySlotTimeoutError, concurrency, rate_limit

__all__ = ["ConcurrencySlotTimeoutError", "concurrency", "rate_limit"]
