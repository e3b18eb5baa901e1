"""The clusters the Dask runner starts, the ones it is given, and the performance report.

Orchestration is many small tasks. Dask's defaults are tuned for large graphs
of array and dataframe chunks: its scheduler queues ready tasks until a worker
thread is about free (``distributed.scheduler.worker-saturation: 1.1``), so
that a worker is not handed more chunks than it can hold in memory. For small
tasks on 1-thread workers that queuing makes every task wait a round trip to
the scheduler, about 4x the time of the work itself. A cluster daskflow starts
for a flow run (``DaskTaskRunner()``, ``cluster_class=``, a work pool) is
daskflow's to configure, so it starts under :data:`STARTED_CLUSTER_CONFIG`;
a cluster, client or scheduler address the user passes is theirs, and nothing
here touches its settings.

The choice gives way to the user, key by key: a key the user set in dask.config
(a value that differs from the default Dask ships) is left as they set it, and
dask.config ``daskflow.dask.cluster_config`` replaces the whole choice (``{}``
keeps Dask's defaults).

:class:`PerformanceReport` is prefect-dask's ``performance_report_path``: Dask's
``distributed.performance_report`` around one flow run, written atomically.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.config
import distributed
from distributed import Client
from distributed.deploy.cluster import Cluster

from daskflow import settings
from daskflow.exceptions import ConfigurationError

__all__ = [
    "STARTED_CLUSTER_CONFIG",
    "WORKER_PRELOAD",
    "Cluster",
    "PathLike",
    "PerformanceReport",
    "check_sources",
    "started_cluster_config",
    "started_cluster_settings",
]

_log = logging.getLogger("daskflow.dask")

PathLike = str | os.PathLike[str]

#: The worker preload of the clusters daskflow starts, as source text (Dask runs preload text as a
#: module). Each worker starts loading daskflow's worker side (:mod:`.dask_worker`) in a thread of its
#: own as it starts, so that the import overlaps the rest of the start-up: the other worker, the
#: client connecting, the flow run making its calls. Loaded on the first task instead, it held up
#: that task, and before it the runner's check of which modules the workers can import
#: (:func:`.dask_shipping.ship_code`): the client waited for both workers' imports. Text, not a
#: module name: importing any daskflow module imports the package, in the worker's start itself,
#: which the cluster waits for. The thread is a daemon, and a worker that cannot import daskflow
#: starts all the same: its first daskflow task says what is missing.
WORKER_PRELOAD = """\
# daskflow: load the task runner's worker side in the background while the worker starts
import importlib
import threading


def _load():
    try:
        importlib.import_module("daskflow.task_runners.dask_worker")
    except Exception:
        pass


def dask_setup(worker):
    threading.Thread(target=_load, name="daskflow-preload", daemon=True).start()
"""

#: dask.config under which daskflow starts the clusters it owns (see the module docstring).
#: Work stealing is off: with every ready task sent to a worker at once, the stealing extension
#: keeps moving small tasks between workers, each move a round trip, and its scheduler runs in
#: the client process (LocalCluster). Measured on W1 (N=3,000, 2 workers x 1 thread, started by
#: DaskTaskRunner): 64-71 s with stealing, 23-30 s without, client CPU 4.2-5.1 s against 2.8 s.
#: The price: a map whose items differ widely in duration is not rebalanced once assigned;
#: ``daskflow.dask.cluster_config`` with ``distributed.scheduler.work-stealing: true`` brings it back.
#: The preload is :data:`WORKER_PRELOAD`; a preload list of your own in dask.config replaces it.
STARTED_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.scheduler.worker-saturation": float("inf"),
    "distributed.scheduler.work-stealing": False,
    "distributed.worker.preload": [WORKER_PRELOAD],
}

_MISSING = object()


def _shipped_default(key: str) -> Any:
    """The default Dask (or a library that registered defaults) ships for ``key``."""
    for defaults in reversed(dask.config.defaults):
        value = dask.config.get(key, _MISSING, config=defaults)
        if value is not _MISSING:
            return value
    return _MISSING


def _set_by_user(key: str) -> bool:
    current = dask.config.get(key, _MISSING)
    default = _shipped_default(key)
    if current is _MISSING or default is _MISSING:
        return current is not _MISSING and default is _MISSING
    try:  # "inf" and inf, "1.1" and 1.1 are the same setting
        return float(current) != float(default)
    except (TypeError, ValueError):
        return bool(current != default)


def started_cluster_config() -> dict[str, Any]:
    """The dask.config a cluster daskflow starts is made under, now.

    ``daskflow.dask.cluster_config`` when the user set it (applied as given);
    otherwise :data:`STARTED_CLUSTER_CONFIG` less the keys the user set themselves.
    """
    chosen = settings.get("dask.cluster_config", None)
    if chosen is not None:
        if not isinstance(chosen, dict):
            raise ConfigurationError(
                f"dask.config daskflow.dask.cluster_config must be a mapping of dask.config keys to values, "
                f"got {type(chosen).__name__}; e.g. {{'distributed.scheduler.worker-saturation': 1.1}}, or {{}} "
                "for Dask's defaults"
            )
        return dict(chosen)
    return {key: value for key, value in STARTED_CLUSTER_CONFIG.items() if not _set_by_user(key)}


@contextmanager
def started_cluster_settings() -> Iterator[dict[str, Any]]:
    """Hold :func:`started_cluster_config` while a cluster is made.

    A scheduler reads its settings when it is made (in this process for a
    ``LocalCluster``). ``dask.config.set`` is process-wide, so another thread
    of this process sees these keys for the moment the constructor runs.
    """
    config = started_cluster_config()
    with dask.config.set(config):
        yield config


def check_sources(
    address: Any,
    cluster_class: Any,
    cluster_kwargs: dict[str, Any] | None,
    adapt_kwargs: dict[str, Any] | None,
    client: Any,
    cluster: Any,
    client_kwargs: dict[str, Any] | None,
) -> None:
    """Refuse the combinations prefect-dask refuses (and the ones only daskflow has), saying which."""
    where = "DaskTaskRunner"
    if address is not None and not isinstance(address, str):
        raise ConfigurationError(
            f"{where}: address must be a scheduler address such as 'tcp://127.0.0.1:8786' or a cluster object, "
            f"got {type(address).__name__}"
        )
    if cluster is not None and not isinstance(cluster, Cluster):
        raise ConfigurationError(
            f"{where}: cluster must be a running Dask cluster object (a distributed.deploy.Cluster, such as "
            f"LocalCluster), got {type(cluster).__name__}; for a scheduler address use address=, for a cluster "
            "to start use cluster_class="
        )
    if client is not None and not isinstance(client, Client):
        raise ConfigurationError(f"{where}: client must be a distributed.Client, got {type(client).__name__}")
    given = [name for name, value in (("address", address), ("cluster", cluster), ("client", client)) if value]
    if len(given) > 1:
        raise ConfigurationError(f"{where}: give one of address, cluster and client, not {' and '.join(given)}")
    starts = [n for n, v in (("cluster_class", cluster_class), ("cluster_kwargs", cluster_kwargs)) if v]
    if given and starts:
        raise ConfigurationError(
            f"{where}: {' and '.join(starts)} describe a cluster to start, but {given[0]} names one that exists; "
            f"give {given[0]}, or {' and '.join(starts)}, not both"
        )
    if adapt_kwargs and (address is not None or client is not None):
        raise ConfigurationError(
            f"{where}: adapt_kwargs scale a cluster object, but {given[0]} gives none; pass the cluster "
            "(cluster=...) or a cluster to start (cluster_class=...)"
        )
    if client_kwargs and client is not None:
        raise ConfigurationError(
            f"{where}: client_kwargs configure the client the runner opens; a given client is used as it is"
        )
    for name, kwargs in (("client_kwargs", client_kwargs), ("cluster_kwargs", cluster_kwargs)):
        if kwargs and "asynchronous" in kwargs:
            raise ConfigurationError(f"{where}: {name} cannot set 'asynchronous': the runner's client is synchronous")
    if cluster_class is not None and not (isinstance(cluster_class, str) or callable(cluster_class)):
        raise ConfigurationError(
            f"{where}: cluster_class must be a cluster class or its import path (e.g. 'distributed.LocalCluster'), "
            f"got {cluster_class!r}"
        )


def _scheduler_has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


class PerformanceReport:
    """Dask's performance report of one flow run, written to ``path`` when the run ends.

    The report is drawn on the scheduler, which needs ``bokeh``: that is checked
    when the report starts, so a missing bokeh is a clear error before any task
    runs rather than a lost report after all of them. A local path is written
    atomically (a temporary file beside it, then renamed): a reader never sees
    half a report. Each flow run replaces the previous run's file, as with
    prefect-dask, which does not template the path.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._report: distributed.performance_report | None = None

    def start(self, client: Client) -> None:
        if not client.run_on_scheduler(_scheduler_has_bokeh):  # type: ignore[no-untyped-call]
            raise ConfigurationError(
                f"DaskTaskRunner: performance_report_path={self.path!r} needs bokeh where the Dask scheduler runs, "
                "and it is not installed there; install it (pip install 'bokeh>=3.1') or leave "
                "performance_report_path out"
            )
        report = distributed.performance_report(filename=self.path)  # type: ignore[no-untyped-call]
        with client.as_current():  # performance_report finds its client with get_client()
            report.__enter__()  # type: ignore[no-untyped-call]
        self._report = report

    def finish(self, client: Client) -> None:
        """Write the report; a report that cannot be written is a warning (the run's work stands)."""
        report, self._report = self._report, None
        if report is None:
            return
        local = "://" not in self.path or self.path.startswith("file://")
        final = Path(self.path.removeprefix("file://"))
        if local:  # the same suffixes, so fsspec infers the same compression (.html.gz)
            report.filename = str(final.with_name(f".{uuid.uuid4().hex}.{final.name}"))
        try:
            with client.as_current():
                report.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            if local:
                os.replace(report.filename, final)
        except Exception as exc:
            _log.warning(
                "could not write the Dask performance report to %s: %s: %s", self.path, type(exc).__name__, exc
            )
            if local:
                Path(report.filename).unlink(missing_ok=True)
