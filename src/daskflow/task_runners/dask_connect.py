"""Where the Dask runner's client comes from: the first layer of :class:`~.dask.DaskTaskRunner`.

A runner is given a client, a cluster, a scheduler address, a cluster class to
start, or nothing (a notebook's default client if one is up, else a
``LocalCluster`` on loopback). :class:`DaskConnecting` turns that choice into a
client when the runner starts, and knows whether the runner owns (and so
closes) what it opened. A cluster it starts itself starts under daskflow's
settings (:func:`.dask_cluster.started_cluster_settings`); one it is given is
never reconfigured. Every wait on Dask futures goes through
:meth:`DaskConnecting.wait_dask`, on this client, which need not be the default.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import logging
from collections.abc import Callable
from typing import Any

import distributed
from dask.utils import parse_timedelta
from distributed import Client

from daskflow import settings
from daskflow.exceptions import ConfigurationError, SchedulerUnreachableError
from daskflow.task_runners.base import TaskRunner
from daskflow.task_runners.dask_cluster import Cluster, PathLike, PerformanceReport, started_cluster_settings
from daskflow.task_runners.dask_events import EventRouter, router_for

__all__ = ["DaskConnecting"]

_log = logging.getLogger("daskflow.dask")


class DaskConnecting(TaskRunner):
    """The runner's connection to its cluster (set by :meth:`.dask.DaskTaskRunner.__init__`)."""

    address: str | Cluster | None
    cluster_class: type | Callable[..., Any] | str | None
    cluster_kwargs: dict[str, Any]
    adapt_kwargs: dict[str, Any] | None
    client_kwargs: dict[str, Any]
    performance_report_path: PathLike | None
    client: Client | None
    cluster: Any
    _report: PerformanceReport | None
    _given_client: Client | None
    _given_cluster: Cluster | None
    _owns_client: bool
    _router: EventRouter
    _lost_timeout: float  # daskflow.dask.lost_timeout, read when the runner starts

    def start(self) -> None:
        super().start()
        self._lost_timeout = float(parse_timedelta(settings.get("dask.lost_timeout")))
        self.client, self.cluster, self._owns_client = self._connect()
        self._router = router_for(self.client)
        if self._report is not None:
            try:
                self._report.start(self.client)
            except BaseException:
                self._report = None
                self.shutdown()  # closes what _connect opened
                raise

    @property
    def dashboard_link(self) -> str | None:
        """The cluster's dashboard URL while the runner is started; None if it serves none."""
        if self.client is None:
            return None
        try:
            # "" (a cluster object) or a KeyError (a bare scheduler) when the dashboard is not served.
            return self.client.dashboard_link or None
        except Exception:
            return None

    def _new_client(self, target: Any, **defaults: Any) -> Client:
        # prefect-dask's rule: the runner's client is not the process's default unless asked.
        return Client(target, **{"set_as_default": False, **defaults, **self.client_kwargs})

    def _connect(self) -> tuple[Client, Any, bool]:
        if self._given_client is not None:
            return self._given_client, None, False
        if self._given_cluster is not None:
            if self.adapt_kwargs:  # asked for explicitly, as prefect-dask does; nothing else is changed
                self._given_cluster.adapt(**self.adapt_kwargs)
            # Our client, their cluster: shutdown closes the client only (self.cluster stays None).
            return self._new_client(self._given_cluster), None, True
        timeout = parse_timedelta(settings.get("dask.connect_timeout"))
        if self.address is not None:
            try:
                return self._new_client(self.address, timeout=timeout), None, True
            except (OSError, TimeoutError) as exc:
                raise SchedulerUnreachableError(
                    f"no Dask scheduler answered at {self.address} within {timeout:g} s ({type(exc).__name__}: {exc}); "
                    "check that the scheduler is running and the address is right, or raise "
                    "dask.config daskflow.dask.connect_timeout"
                ) from None
        if self.cluster_class is None and not self.cluster_kwargs and not self.adapt_kwargs:
            # Nothing said about a cluster: the process's default client (a notebook's) if it is up.
            # One that is closing or closed (its close failed, or another thread's is in progress)
            # is still the default until it is gone, and would fail every call: start one instead.
            try:
                client = distributed.default_client()
            except ValueError:
                client = None
            if client is not None and client.status == "running":
                return client, None, False
        cluster = self._make_cluster()
        try:
            client = self._new_client(cluster)
        except BaseException:
            cluster.close()
            raise
        _log.info("Started a Dask cluster for the flow run; dashboard: %s", client.dashboard_link)
        return client, cluster, True

    def _make_cluster(self) -> Any:
        cls = self.cluster_class
        if isinstance(cls, str):
            module_name, _, name = cls.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module_name), name)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ConfigurationError(
                    f"DaskTaskRunner: cluster_class {self.cluster_class!r} cannot be imported: {exc}; "
                    "give the import path of a cluster class, e.g. 'distributed.LocalCluster'"
                ) from None
        kwargs = dict(self.cluster_kwargs)
        if cls is None:
            cls = distributed.LocalCluster
            kwargs.setdefault("host", "127.0.0.1")  # never listen beyond this machine by default
            kwargs.setdefault("dashboard_address", "127.0.0.1:0")
        if not callable(cls):
            raise ConfigurationError(
                f"DaskTaskRunner: cluster_class must be a cluster class or its import path, got {cls!r}"
            )
        with started_cluster_settings():  # daskflow's choice for the clusters it owns (dask_cluster.py)
            cluster = cls(**kwargs)
        if self.adapt_kwargs:
            cluster.adapt(**self.adapt_kwargs)
        return cluster

    def wait_dask(self, futures: list[distributed.Future], timeout: float | None = None) -> None:
        """``distributed.wait`` on this runner's client (which need not be the default one)."""
        client = self.client or self._given_client
        if client is None:
            raise RuntimeError("the Dask runner of this future is closed; its result can no longer be fetched")
        with client.as_current():
            try:
                distributed.wait(futures, timeout=timeout)
            except concurrent.futures.CancelledError:
                # Some were cancelled or forgotten at the scheduler (distributed raises for that
                # since 2024): they are done for our purpose, and recovery gives each its state.
                pass
