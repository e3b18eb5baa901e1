"""Work pools: where a deployment's runs execute, a named Dask cluster.

A :class:`WorkPool` is one of three things, each a way to reach a Dask cluster
through :class:`~daskflow.task_runners.dask.DaskTaskRunner`:

* ``address`` — a running scheduler (``tcp://scheduler:8786``) to connect to;
* ``cluster_class`` — a cluster class by import path (``distributed.LocalCluster``,
  ``dask_jobqueue.SLURMCluster``, ``dask_kubernetes.operator.KubeCluster``) with
  ``cluster_kwargs``, started for the runs and closed after, scaled adaptively
  between ``adapt_minimum`` and ``adapt_maximum`` workers when either is given;
* nothing but ``cluster_kwargs``/adapt bounds — a ``LocalCluster`` with them.

Pools are named in dask config, so each machine says what its names mean::

    daskflow:
      work_pools:
        gpu:   {address: "tcp://10.0.0.5:8786"}
        batch: {cluster_class: dask_jobqueue.SLURMCluster, cluster_kwargs: {cores: 8, memory: 16GB},
                adapt: {minimum: 0, maximum: 20}}

or spelled out in the deployment itself (a deployment file's ``work_pool:``
with an ``address`` or ``cluster_class``), which then needs no config.

The default pool — ``work_pool_name=None``, or ``"default"`` /
``"default-agent-pool"`` (the seed's name) when config does not define it — is
the flow's own task runner: whatever its ``@flow(task_runner=...)`` says, else
``daskflow.task_runner``. That keeps a deployment of a small flow as cheap as
calling it, and lets config turn the seed's pool into a real cluster later.
Names are resolved when a run starts, not when a deployment is applied: the
seed applies ``default-agent-pool`` on a laptop, and only the machine that
runs it needs to know the name. An unknown name is then an error listing the
known ones.

:func:`pool_runner` opens a pool once for any number of runs (a backfill runs
many at once): one client, one cluster, shared by every run's task runner.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from daskflow import settings
from daskflow.exceptions import DeploymentError
from daskflow.task_runners import TaskRunner

__all__ = ["DEFAULT_POOL_NAMES", "WorkPool", "configured_pools", "pool_runner", "resolve_work_pool"]

DEFAULT_POOL_NAMES = ("default", "default-agent-pool")
_KEYS = ("name", "address", "cluster_class", "cluster_kwargs", "adapt", "adapt_minimum", "adapt_maximum")


def _class_path(cluster_class: type | str | None) -> str | None:
    if cluster_class is None or isinstance(cluster_class, str):
        return cluster_class
    return f"{cluster_class.__module__}.{cluster_class.__qualname__}"


@dataclass(frozen=True, init=False)
class WorkPool:
    """A named Dask cluster for a deployment's runs; see the module docstring."""

    name: str | None = None
    address: str | None = None
    cluster_class: str | None = None
    cluster_kwargs: dict[str, Any] = field(default_factory=dict)
    adapt_minimum: int | None = None
    adapt_maximum: int | None = None

    def __init__(
        self,
        name: str | None = None,
        address: str | None = None,
        cluster_class: type | str | None = None,
        cluster_kwargs: Mapping[str, Any] | None = None,
        adapt_minimum: int | None = None,
        adapt_maximum: int | None = None,
    ) -> None:
        where = f"work pool {name!r}" if name else "work pool"
        if address is not None and cluster_class is not None:
            raise DeploymentError(f"{where}: give address={address!r} or cluster_class=..., not both.")
        if address is not None and (cluster_kwargs or adapt_minimum is not None or adapt_maximum is not None):
            raise DeploymentError(f"{where}: cluster_kwargs and adapt bounds start a cluster; an address has one.")
        for label, bound in (("adapt_minimum", adapt_minimum), ("adapt_maximum", adapt_maximum)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 0):
                raise DeploymentError(f"{where}: {label}={bound!r} must be a whole number >= 0.")
        if adapt_minimum is not None and adapt_maximum is not None and adapt_minimum > adapt_maximum:
            raise DeploymentError(f"{where}: adapt_minimum={adapt_minimum} is above adapt_maximum={adapt_maximum}.")
        if cluster_kwargs is not None and not isinstance(cluster_kwargs, Mapping):
            raise DeploymentError(f"{where}: cluster_kwargs must be a mapping, got {cluster_kwargs!r}.")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "cluster_class", _class_path(cluster_class))
        object.__setattr__(self, "cluster_kwargs", dict(cluster_kwargs or {}))
        object.__setattr__(self, "adapt_minimum", adapt_minimum)
        object.__setattr__(self, "adapt_maximum", adapt_maximum)

    @property
    def defines_cluster(self) -> bool:
        """Whether this pool says where to run by itself (else its name must be looked up)."""
        bounds = self.adapt_minimum is not None or self.adapt_maximum is not None
        return bool(self.address or self.cluster_class or self.cluster_kwargs or bounds)

    @property
    def is_default(self) -> bool:
        """The flow's own task runner: no cluster of its own, and a default name (or none)."""
        return not self.defines_cluster and (self.name is None or self.name in DEFAULT_POOL_NAMES)

    def describe(self) -> str:
        """One line for a table: the name, else the address or cluster class."""
        if self.name:
            return self.name
        return self.address or self.cluster_class or ("LocalCluster" if self.defines_cluster else "default")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the run store (only what is set)."""
        data: dict[str, Any] = {}
        for key in ("name", "address", "cluster_class"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.cluster_kwargs:
            data["cluster_kwargs"] = dict(self.cluster_kwargs)
        adapt = {k: v for k, v in (("minimum", self.adapt_minimum), ("maximum", self.adapt_maximum)) if v is not None}
        if adapt:
            data["adapt"] = adapt
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "work pool") -> WorkPool:
        """A pool from its dict form (``to_dict``'s, a config entry's or a deployment file's)."""
        if not isinstance(data, Mapping):
            raise DeploymentError(f"{where}: expected a mapping such as {{address: 'tcp://host:8786'}}, got {data!r}.")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise DeploymentError(f"{where}: unknown key(s) {unknown}; a work pool takes {list(_KEYS)}.")
        adapt = data.get("adapt") or {}
        if not isinstance(adapt, Mapping) or set(adapt) - {"minimum", "maximum"}:
            raise DeploymentError(f"{where}: adapt must be {{minimum: N, maximum: M}}, got {adapt!r}.")
        try:
            return cls(
                name=data.get("name"),
                address=data.get("address"),
                cluster_class=data.get("cluster_class"),
                cluster_kwargs=data.get("cluster_kwargs"),
                adapt_minimum=data.get("adapt_minimum", adapt.get("minimum")),
                adapt_maximum=data.get("adapt_maximum", adapt.get("maximum")),
            )
        except DeploymentError as exc:
            raise DeploymentError(f"{where}: {exc}") from None


def configured_pools() -> dict[str, Any]:
    """The pools dask config names (``daskflow.work_pools``), by name."""
    pools = settings.get("work_pools", None) or {}
    if not isinstance(pools, Mapping):
        raise DeploymentError(f"dask config daskflow.work_pools must map pool names to pools, got {pools!r}.")
    return dict(pools)


def resolve_work_pool(stored: WorkPool | Mapping[str, Any] | str | None) -> WorkPool:
    """The pool a deployment's runs use, its name looked up in config if it defines no cluster itself."""
    if stored is None:
        return WorkPool()
    if isinstance(stored, WorkPool):
        pool = stored
    elif isinstance(stored, str):
        pool = WorkPool(stored)
    else:
        pool = WorkPool.from_dict(stored)
    if pool.defines_cluster or pool.name is None:
        return pool
    pools = configured_pools()
    if pool.name in pools:
        found = WorkPool.from_dict(pools[pool.name], where=f"dask config daskflow.work_pools.{pool.name}")
        return WorkPool(pool.name, found.address, found.cluster_class, found.cluster_kwargs,
                        found.adapt_minimum, found.adapt_maximum)  # fmt: skip
    if pool.name in DEFAULT_POOL_NAMES:
        return pool
    known = sorted({*pools, *DEFAULT_POOL_NAMES})
    raise DeploymentError(
        f"unknown work pool {pool.name!r}; known here: {', '.join(known)}. Fix: define it in dask config, e.g. "
        f"daskflow.work_pools.{pool.name}: {{address: 'tcp://scheduler:8786'}}, or re-apply the deployment "
        "with a known work pool."
    )


@contextmanager
def pool_runner(pool: WorkPool) -> Iterator[TaskRunner | None]:
    """A task runner on ``pool``'s cluster, open for the block; None for the default pool.

    The cluster is reached (or started) once, and every run in the block gets a
    runner on the same client: a backfill of a month starts one cluster, not thirty.
    """
    if pool.is_default:
        yield None
        return
    # Imported here, as in flows.py: the Dask runner imports distributed, which a
    # deployment on the default pool (and ``import daskflow``) never needs.
    from daskflow.task_runners.dask import DaskTaskRunner

    adapt = {k: v for k, v in (("minimum", pool.adapt_minimum), ("maximum", pool.adapt_maximum)) if v is not None}
    if pool.address is None and pool.cluster_class is None:
        # A LocalCluster, never a default client that happens to be active in this process.
        cluster_class: str | None = "distributed.LocalCluster"
        cluster_kwargs = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **pool.cluster_kwargs}
    else:
        cluster_class, cluster_kwargs = pool.cluster_class, dict(pool.cluster_kwargs)
    owner = DaskTaskRunner(
        address=pool.address, cluster_class=cluster_class, cluster_kwargs=cluster_kwargs or None,
        adapt_kwargs=adapt or None,
    )  # fmt: skip
    owner.start()
    try:
        yield DaskTaskRunner(client=owner.client)
    finally:
        owner.shutdown()  # closes the client it opened, and the cluster it started
