"""The Work pools page's data: every pool this server knows, what it runs on, and its workers now.

A pool is named in the ``daskflow.work_pools`` setting, or stored with the
deployments that use it. A pool with a scheduler ``address`` is a cluster that
lives on its own, so the page asks that scheduler how many workers it has, with
a short timeout, all pools at once on threads: an unreachable one says so
instead of holding the page. A pool that starts a cluster per run
(``cluster_class``) has no workers between runs, and the default pool is the
flow's own task runner.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from daskflow.deployments.work_pools import WorkPool, configured_pools, resolve_work_pool
from daskflow.exceptions import DaskflowError
from daskflow.runstore.deployments import DeploymentRecord

__all__ = ["PoolRow", "pool_rows"]

_CONNECT_TIMEOUT = "2s"  # a scheduler that does not answer by then is shown as unreachable


@dataclass
class PoolRow:
    """One line of the page: a pool, where its runs execute, its workers now, who uses it."""

    name: str
    runs_on: str
    workers: str = ""
    deployments: list[str] = field(default_factory=list)
    address: str | None = None


def _describe(pool: WorkPool) -> str:
    if pool.address:
        return f"the Dask cluster at {pool.address}"
    if pool.cluster_class or pool.defines_cluster:
        return f"a {pool.cluster_class or 'LocalCluster'} started for each run"
    return "the flow's own task runner"


def _workers(address: str) -> str:
    # distributed is imported here only: the rest of the server never needs it.
    distributed: Any = importlib.import_module("distributed")
    try:
        with distributed.Client(address, timeout=_CONNECT_TIMEOUT, set_as_default=False) as client:
            # nthreads() names every worker; scheduler_info()["workers"] is capped at 5 by some versions.
            count = len(client.nthreads())
    except Exception as exc:  # unreachable, refused, TLS required, ...: the page says so
        return f"unreachable ({type(exc).__name__})"
    return f"{count} worker{'s' if count != 1 else ''}"


def pool_rows(records: list[DeploymentRecord]) -> list[PoolRow]:
    """The configured pools and those the deployments name, each with its live worker count."""
    rows: dict[str, PoolRow] = {}
    try:
        configured = configured_pools()
    except DaskflowError as exc:
        configured = {}
        rows["(daskflow.work_pools)"] = PoolRow("(daskflow.work_pools)", f"a configuration error: {exc}")
    for name, data in configured.items():
        try:
            pool = WorkPool.from_dict(data, where=f"daskflow.work_pools.{name}")
            rows[name] = PoolRow(name, _describe(pool), address=pool.address)
        except DaskflowError as exc:
            rows[name] = PoolRow(name, f"a configuration error: {exc}")
    for record in records:
        try:
            pool = resolve_work_pool(record.work_pool)
        except DaskflowError as exc:
            wanted = str((record.work_pool or {}).get("name") or "?")
            rows.setdefault(wanted, PoolRow(wanted, f"unknown here: {exc}")).deployments.append(record.name)
            continue
        label = pool.describe()
        rows.setdefault(label, PoolRow(label, _describe(pool), address=pool.address)).deployments.append(record.name)
    reachable = [row for row in rows.values() if row.address]
    if reachable:
        with ThreadPoolExecutor(min(len(reachable), 8), "daskflow-server-pools") as threads:
            for row, workers in zip(reachable, threads.map(_workers, [r.address for r in reachable]), strict=True):
                row.workers = workers
    return sorted(rows.values(), key=lambda row: row.name)
