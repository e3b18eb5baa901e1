"""Named concurrency limits and rate limits, in one process or across a Dask cluster.

See :mod:`.limits` for which limits a task run is under, :mod:`.local` and
:mod:`.cluster` for the two places they live, and :mod:`.api` for
``concurrency(name)`` and ``rate_limit(name)``.
"""

from __future__ import annotations

from daskflow.concurrency.api import (
    ConcurrencySlotTimeoutError,
    ConcurrencyWarning,
    concurrency,
    coordination_here,
    rate_limit,
)
from daskflow.concurrency.limits import Limit, flow_limit_sizes, limit_size, limits_for_task
from daskflow.concurrency.local import LOCAL, LocalCoordination

__all__ = [
    "LOCAL",
    "ConcurrencySlotTimeoutError",
    "ConcurrencyWarning",
    "Limit",
    "LocalCoordination",
    "concurrency",
    "coordination_here",
    "flow_limit_sizes",
    "limit_size",
    "limits_for_task",
    "rate_limit",
]
