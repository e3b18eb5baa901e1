"""The Dask runner: a flow's task runs become tasks of a Dask cluster.

``.submit`` and ``.map`` turn their calls into one ``client.map`` each: one
round trip per map, keys named after the task (``extract-table-<run id>``) so
the dashboard reads like the flow. A future passed to another task becomes a
dependency of that Dask task, resolved on the cluster: values move between
workers, never through the client unless someone asks for them. The task
object and the flow's facts go once per flow run as a task of their own
(:func:`.dask_values.shared_value`) when inlining them would cost more, so a
map of 10,000 items does not pickle the function 10,000 times.

One ``.map``, end to end (each step in one place):

1. Client, here: :meth:`DaskTaskRunner.submit_batch` groups the calls by task;
   :meth:`~DaskTaskRunner._submit_group` ships the user's code if the cluster
   lacks it (:mod:`.dask_shipping`) and the task object with the flow's facts once
   if that is cheaper (:meth:`~DaskTaskRunner._shared`); :meth:`~DaskTaskRunner._submit_window`
   makes one :class:`~.dask_futures.DaskFuture` and one :class:`~.dask_protocol.RunSpec` per
   call, registers the futures with the event router, and sends them all in one
   ``client.map`` of :func:`.dask_worker.run_on_worker`.
2. Worker: :func:`.dask_worker.run_on_worker` rebuilds the run from its spec
   and runs it through the same engine as every runner. Its states, logs and
   artifacts go back as typed events (:mod:`.dask_protocol`) in batches on the
   ``daskflow`` topic; the run's final state goes last, from the task's own
   thread, ahead of the Dask task's end. The task's result is the final state
   with its value, which stays on the worker.
3. Client, :mod:`.dask_events`: the router applies each event to this
   process's run record and, on the final state, settles the run's
   :class:`~.dask_futures.DaskFuture`. That is the one path for a final state a worker
   reached; the value (or the error) comes from the Dask task's result only
   when someone asks for it (``DaskFuture._final_state``, :mod:`.dask_values`).
4. Client, waiting (``DaskFuture.wait``, :meth:`DaskTaskRunner.shutdown`):
   wait for the Dask tasks; one that finished has been reported
   (:meth:`~DaskTaskRunner.await_reports` checks, bounded); one that erred or
   was cancelled is a crash, which the runner reports to the engine (below).

Failures: the engine decides, the runner reports. A worker that dies under a
task is one attempt of its run. When Dask gives up on the task
(``KilledWorker``) the runner starts the run again at once as a new Dask task
that carries the crash's cause, and the worker's engine judges it by the
task's policy (retries, delays, jitter, ``retry_condition_fn``, cancel) and
waits the delay there, so runs that crashed together wait together; when the
scheduler re-runs the task by itself, the death count it keeps reaches the
engine through the task's annotations (see
:mod:`daskflow.concurrency.distributed_compat`). Recovery happens when a
future is waited for, in the waiting thread, never in Dask's callback thread,
and never blocks. A run that reported its end and whose value was then lost
with its worker is computed again by Dask itself while the flow holds its
future: the event router records that as one more attempt of the run
(:mod:`.dask_events`), and the flow run waits for it before it ends.

Every wait ends: by the run's final state, by cancellation, or after
``daskflow.dask.lost_timeout`` when the run cannot go on (the scheduler does
not know its task, no worker can take it, or the value of a completed run can
no longer be fetched), which ends it ``Crashed``. A flow whose body raised
does not wait for its runs: it cancels those still going and releases every
Dask task it made, so that nothing of it stays on a shared cluster.

The runner is written in layers, one module each, every one a base class of the
next: connecting to a cluster (:mod:`.dask_connect`), submitting calls
(:mod:`.dask_submit`), recovering failed and lost runs (:mod:`.dask_recovery`),
and waiting, draining and releasing at the end of a flow run
(:mod:`.dask_ending`). :class:`DaskTaskRunner` here is the last: its
constructor, which sets the state of every layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from distributed import Client

from daskflow.task_runners.dask_cluster import Cluster, PathLike, PerformanceReport, check_sources
from daskflow.task_runners.dask_ending import DaskEnding
from daskflow.task_runners.dask_events import RELEASED_PARAMETERS
from daskflow.task_runners.dask_futures import DaskFuture, MapItem
from daskflow.task_runners.dask_protocol import Definition

__all__ = ["RELEASED_PARAMETERS", "DaskFuture", "DaskTaskRunner", "MapItem"]


class DaskTaskRunner(DaskEnding):
    """Runs task runs on a Dask cluster.

    Where the cluster comes from, as prefect-dask's ``DaskTaskRunner`` takes it:

    * nothing given: a ``LocalCluster`` (loopback only, Dask's own worker shape for
      this machine) is started for the flow run and closed after — unless a default
      client is already active, as in a notebook, which is then used and left open;
    * ``cluster_class`` (a class or its import path) with ``cluster_kwargs``: that
      cluster is started for the flow run and closed after (work pools use this);
    * ``address``: a running scheduler is connected to; ``cluster``: a cluster
      object you started (it may also be the first positional argument), used and
      left open; ``client``: a ``distributed.Client`` of yours, used as it is.

    ``adapt_kwargs`` makes the cluster adaptive (``cluster.adapt(**adapt_kwargs)``);
    ``client_kwargs`` go to the ``distributed.Client`` the runner opens
    (``set_as_default`` is False unless given); ``performance_report_path`` writes
    Dask's performance report (``distributed.performance_report``, an HTML file;
    the scheduler needs ``bokeh``) of each flow run to that path, replacing the
    previous run's, as prefect-dask does.

    **Settings of the clusters daskflow starts.** Dask's default queuing
    (``distributed.scheduler.worker-saturation: 1.1``) holds tasks back on the
    scheduler until a worker thread is about free, which costs about 4x on the
    small tasks orchestration is made of with 1-thread workers. A cluster daskflow
    starts itself (nothing given, ``cluster_class``, work pools) therefore starts
    under the dask.config of :data:`STARTED_CLUSTER_CONFIG`: worker-saturation
    ``inf`` (every ready task goes to a worker at once) and work stealing off
    (moving small tasks between workers cost more than it saved: about 2.5x on
    W1); each worker imports daskflow's worker side in the background as it
    starts (:data:`~.dask_cluster.WORKER_PRELOAD`). A key you set yourself in
    dask.config to other than Dask's default wins over daskflow's choice; dask.config ``daskflow.dask.cluster_config`` replaces
    the whole choice (``{}``: Dask's defaults; put work stealing back for maps
    whose items differ widely in duration). A cluster, client or address you
    pass keeps its own settings: daskflow never changes them.
    """

    def __init__(
        self,
        address: str | Cluster | None = None,
        cluster_class: type | Callable[..., Any] | str | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        adapt_kwargs: dict[str, Any] | None = None,
        client: Client | None = None,
        cluster: Cluster | None = None,
        client_kwargs: dict[str, Any] | None = None,
        performance_report_path: PathLike | None = None,
    ) -> None:
        if isinstance(address, Cluster) and cluster is None:  # DaskTaskRunner(cluster), prefect-dask's first argument
            address, cluster = None, address
        check_sources(address, cluster_class, cluster_kwargs, adapt_kwargs, client, cluster, client_kwargs)
        super().__init__(
            address=address,
            cluster_class=cluster_class,
            cluster_kwargs=cluster_kwargs,
            adapt_kwargs=adapt_kwargs,
            client=client,
            cluster=cluster,
            client_kwargs=client_kwargs,
            performance_report_path=performance_report_path,
        )
        self.address = address
        self.cluster_class = cluster_class
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.adapt_kwargs = adapt_kwargs
        self.client_kwargs = dict(client_kwargs or {})
        self.performance_report_path = performance_report_path
        # One per flow run: each run's runner is a fresh duplicate().
        self._report = None if performance_report_path is None else PerformanceReport(performance_report_path)
        self._given_client = client
        self._given_cluster = cluster
        self.client: Client | None = None
        self.cluster: Any = None
        self._owns_client = False
        self._futures: list[DaskFuture] = []
        self._shared_objects: dict[int, tuple[Any, Any, int]] = {}
        self._flow_infos: dict[tuple[str | None, bool, frozenset[str], bool], dict[str, Any]] = {}
        self._definitions: dict[tuple[int, int], Definition] = {}
        self._cancelled = False
        self._recovery_lock = threading.Lock()
        self._recovering: dict[int, threading.Event] = {}
        self._lost_timeout = 180.0  # daskflow.dask.lost_timeout, read when the runner starts
        self._unknown_since: dict[Any, float] = {}  # Dask key -> when the scheduler was first found not to know it
        self._resubmits = 0
