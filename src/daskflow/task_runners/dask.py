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
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import cloudpickle
import distributed
from dask.base import annotate
from dask.utils import parse_timedelta
from distributed import Client, KilledWorker

from daskflow import settings
from daskflow.concurrency.distributed_compat import (
    MARK_ANNOTATION,
    NO_WORKER,
    died_waiting,
    graph_deserialization_failed,
    killed_worker_address,
    killed_worker_deaths,
    killed_worker_task,
    pickling_failed,
    stuck_keys,
)
from daskflow.engine import UNCHANGED, TaskCall, TaskRunEngine, transform
from daskflow.engine.calls import TransactionSnapshot
from daskflow.exceptions import ConfigurationError, SchedulerUnreachableError
from daskflow.futures import DaskflowFuture
from daskflow.results import write_behind
from daskflow.results.write_behind import WriteReport
from daskflow.states import (
    Cancelled,
    Crashed,
    Failed,
    NotReady,
    State,
    item_state,
)
from daskflow.task_runners.base import TaskRunner
from daskflow.task_runners.dask_cluster import (
    Cluster,
    PathLike,
    PerformanceReport,
    check_sources,
    started_cluster_settings,
)
from daskflow.task_runners.dask_events import RELEASED_PARAMETERS, forget_crashes, router_for
from daskflow.task_runners.dask_futures import NO_UPSTREAMS, DaskFuture, MapItem
from daskflow.task_runners.dask_protocol import Batch, Definition, RunSpec
from daskflow.task_runners.dask_shipping import code_missing_message, ship_code, ship_missing, unserializable
from daskflow.task_runners.dask_values import length_and_worker, shared_value
from daskflow.task_runners.dask_worker import (
    EVENT_TOPIC,
    ItemRef,
    UpstreamRef,
    drain_writes,
    flush_events,
    interrupt_runs,
    run_on_worker,
)

__all__ = ["RELEASED_PARAMETERS", "DaskFuture", "DaskTaskRunner", "MapItem"]

_log = logging.getLogger("daskflow.dask")
_EVENT_WAIT_SECONDS = 5.0
_REPORT_WAIT_SECONDS = 0.1  # how long the final states of a flow run's last runs may take to arrive
_INLINE_BYTES = 2 << 20  # bytes of a shared object over all the tasks of one submission
_LOST_CHECKS = 4  # how many times per daskflow.dask.lost_timeout a wait asks the scheduler what it lost
_DRAIN_ROUNDS = 5  # at most, in a flow run's drain: one more after each worker death it finds


class DaskTaskRunner(TaskRunner):
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

    # The Dask tasks made besides the runs' own (the items of a .map over a future), released with them.
    _made: tuple[distributed.Future, ...] = ()

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

    # -- connecting ------------------------------------------------------------------------

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

    # -- submitting ------------------------------------------------------------------------

    def _shared(self, obj: Any, count: int) -> Any:
        """``obj`` itself, or a future of it shipped once for this runner.

        An object inside ``client.map`` is pickled into every one of its tasks:
        nothing for a few small tasks, but a 1 KB task object in each of 100,000
        tasks is 100 MB through the scheduler. Past :data:`_INLINE_BYTES` in all,
        it goes once, as a task of its own, at the price of a dependency per task.
        """
        entry = self._shared_objects.get(id(obj))
        if entry is not None and entry[1] is not obj and getattr(entry[1], "status", None) in ("error", "cancelled"):
            entry = None  # what went once is lost for good (its task failed on dying workers): ship it again
        if entry is not None and (entry[1] is not obj or entry[2] * count <= _INLINE_BYTES):
            return entry[1]
        assert self.client is not None
        size = entry[2] if entry is not None else len(cloudpickle.dumps(obj))
        shared: Any = obj
        if size * count > _INLINE_BYTES:
            # A task that returns it, not a scattered value: Dask cannot recompute scattered
            # data, so every map task depending on it would fail with its holders. A task's
            # result is computed again on another worker when all its holders die.
            shared = self.client.submit(shared_value, obj, key=f"daskflow-shared-{uuid.uuid4().hex}", pure=False)
        self._shared_objects[id(obj)] = (obj, shared, size)  # keeps obj alive so its id is not reused
        return shared

    def _definition(self, task: Any, flow_info: dict[str, Any]) -> Definition:
        """The task object and the flow's facts as one value, the same object for the same pair.

        One value, so that when it goes once for a whole map (:meth:`_shared`) each Dask task
        has one dependency more, not two: the task object (about 1.3 KB pickled) and the flow
        info (about 0.4 KB) both cross the inlining bound at a few thousand items, and every
        dependency is bookkeeping per task on the scheduler and the worker.
        """
        key = (id(task), id(flow_info))
        definition = self._definitions.get(key)
        if definition is None or definition.task is not task or definition.flow_info is not flow_info:
            definition = self._definitions[key] = Definition(task, flow_info)  # holds both: ids not reused
        return definition

    def _spec(
        self,
        call: TaskCall,
        deps: list[distributed.Future],
        upstreams: list[DaskFuture],
        attempts: int,
        crash: str | None,
    ) -> RunSpec:
        index: dict[Any, int] = {}

        def ref(future: DaskFuture, dask_future: distributed.Future | None = None) -> int:
            dask_future = dask_future or future.dask_future
            key = dask_future.key
            if key not in index:
                index[key] = len(deps)
                deps.append(dask_future)
                upstreams.append(future)  # what recovery looks at when this dependency breaks
            return index[key]

        def visit(leaf: Any, allowed: bool) -> Any:
            if isinstance(leaf, DaskFuture):
                return UpstreamRef(ref(leaf))
            if isinstance(leaf, MapItem):
                item = leaf.item
                if (
                    item is not None
                    and leaf.source_key == leaf.value.dask_future.key
                    and item.status not in ("error", "cancelled")
                ):
                    return UpstreamRef(ref(leaf.value, item))
                return ItemRef(ref(leaf.value), leaf.index)
            if isinstance(leaf, DaskflowFuture):  # from another runner: settle it here
                leaf.wait()
                return leaf.state
            return UNCHANGED

        parameters = transform(call.parameters, visit, unwrap=False)[0]
        wait_for = transform(list(call.wait_for), visit, unwrap=False)[0] if call.wait_for else ()
        run = call.task_run
        return RunSpec(
            run.id,
            run.name,
            run.map_index,
            run.upstream_ids,
            parameters,
            tuple(wait_for),
            attempts,
            crash,
            call.known_key,
        )

    def _flow_info(self, call: TaskCall) -> dict[str, Any]:
        key = (call.flow_run_id, call.log_prints, call.task_run.tags, call.in_transaction)
        info = self._flow_infos.get(key)
        # Inside a transaction() block: the snapshot sent must show the block as it is now.
        if info is None or (call.transaction is not None and not info["transaction"].mirrors(call.transaction)):
            info = self._flow_infos[key] = self._make_flow_info(call)
        return info

    def _make_flow_info(self, call: TaskCall) -> dict[str, Any]:
        return {
            "flow_run_id": call.flow_run_id,
            "flow_run_name": call.flow_run_name,
            "flow_name": call.flow_name,
            "flow_parameters": call.flow_parameters,
            "log_prints": call.log_prints,
            "concurrency_limits": call.concurrency_limits,
            "flow_facts": call.flow_facts,  # daskflow.runtime on the worker
            "run_tags": call.task_run.tags,  # the task's and those of tags(...) where it was submitted
            "in_transaction": call.in_transaction,  # on_commit hooks wait for the block (daskflow.transactions)
            # get_transaction() in the task on the worker: a copy of the block, entered by run_on_worker.
            "transaction": None if call.transaction is None else TransactionSnapshot.of(call.transaction),
        }

    def submit_batch(self, calls: Sequence[TaskCall]) -> list[DaskflowFuture[Any]]:
        if not self._started or self.client is None:
            raise RuntimeError("DaskTaskRunner.submit_batch called before start(); use the runner inside a flow")
        futures: list[DaskflowFuture[Any]] = []
        by_task: dict[int, list[TaskCall]] = {}
        for call in calls:
            by_task.setdefault(id(call.task), []).append(call)
        for group in by_task.values():
            futures.extend(self._submit_group(group))
        if len(by_task) > 1:  # keep the caller's order
            order = {id(call.task_run): i for i, call in enumerate(calls)}
            futures.sort(key=lambda f: order[id(f.task_run)])
        return futures

    def _submit_group(
        self,
        calls: Sequence[TaskCall],
        keys: list[str] | None = None,
        resume: list[tuple[int, str | None]] | None = None,
        into: list[DaskFuture] | None = None,
    ) -> list[DaskFuture]:
        """Submit calls of one task: one ``client.map`` per window of ``daskflow.dask.map_window`` calls.

        A window bounds what a huge map holds at once on the client (the specs, the
        graph message): 100,000 items go as ten messages of 10,000, not one of 100,000.
        """
        assert self.client is not None
        task = calls[0].task
        ship_code(self.client, self._router, task)
        flow_info = self._flow_info(calls[0])
        definition = self._shared(self._definition(task, flow_info), len(calls))
        window = max(1, int(settings.get("dask.map_window")))
        made: list[DaskFuture] = []
        with distributed.span(f"flow {flow_info['flow_name']} run {flow_info['flow_run_name']}"):
            for start in range(0, len(calls), window):
                part = calls[start : start + window]
                made.extend(
                    self._submit_window(
                        task, definition, part,
                        keys[start : start + window] if keys else None,
                        resume[start : start + window] if resume else None,
                        into[start : start + window] if into else None,
                    )
                )  # fmt: skip
        if into is None:
            self._futures.extend(made)
        return made

    def _submit_window(
        self,
        task: Any,
        definition: Any,
        calls: Sequence[TaskCall],
        keys: list[str] | None,
        resume: list[tuple[int, str | None]] | None,
        into: list[DaskFuture] | None,
    ) -> list[DaskFuture]:
        assert self.client is not None
        specs, deps_lists = [], []
        runs = self._router.runs
        made = into if into is not None else DaskFuture.many(self, calls)
        for position, (call, future) in enumerate(zip(calls, made)):
            deps: list[distributed.Future] = []
            ups: list[DaskFuture] = []
            attempts, crash = resume[position] if resume else (call.task_run.run_count, None)
            specs.append(self._spec(call, deps, ups, attempts, crash))
            deps_lists.append(deps)
            future.upstreams = ups or NO_UPSTREAMS
            future.attempts = attempts
            # Before Dask has the task: its worker's report may come back before client.map returns.
            runs[call.task_run.id] = future
        if keys is None:
            prefix = f"{task.name}-"
            keys = [prefix + call.task_run.id.replace("-", "") for call in calls]
        count = len(calls)
        try:
            with annotate(**{MARK_ANNOTATION: True}):  # a daskflow task: its worker deaths are counted
                dask_futures = self.client.map(
                    run_on_worker,
                    [definition] * count,
                    specs,
                    deps_lists,
                    key=keys,
                    pure=False,
                    resources=task.options.resources,
                )
        except BaseException as exc:
            for call in calls:
                runs.pop(call.task_run.id, None)
            if isinstance(exc, TypeError) and pickling_failed(exc):
                raise unserializable(calls) from None
            raise
        for future, dask_future in zip(made, dask_futures):
            future.dask_future = dask_future
        return made

    def call(self, call: TaskCall) -> State:
        """A direct task call runs on the cluster too; its value comes back here."""
        [future] = self.submit_batch([call])
        future.wait()
        return future.state

    def expand_future(self, future: DaskflowFuture[Any]) -> list[Any]:
        """The items of a future's list value for ``.map``, without moving the list here."""
        if not isinstance(future, DaskFuture):
            return super().expand_future(future)
        assert self.client is not None
        length, where = self.client.submit(length_and_worker, future.dask_future, pure=False).result()
        if length is None:  # did not complete (each item fails as its downstream), or not items by position
            future.wait()
            return list(future.result())
        source = future.dask_future.key
        prefix = f"{future.task_run.task_name}-item-{future.task_run.id.replace('-', '')}"  # grouped as <task>-item
        # Next to the list: what moves is each item to its run, never the whole list to every worker.
        items = self.client.map(
            item_state,
            [future.dask_future] * length,
            range(length),
            key=[f"{prefix}-{i}" for i in range(length)],
            pure=False,
            workers=[where] if where else None,
            allow_other_workers=True,
        )
        self._made += tuple(items)
        return [MapItem(future, i, item, source) for i, item in enumerate(items)]

    # -- failures ----------------------------------------------------------------------------

    def recover(self, future: DaskFuture) -> bool:
        """Handle an erred Dask future. True if it was resubmitted, False if it is settled.

        Never blocks for long: a crashed run is started again at once and its
        worker's engine judges the crash (and waits the retry delay there), so
        runs that crashed together wait their delays together. One thread
        recovers a future; others that find it erred meanwhile wait for that.
        """
        with self._recovery_lock:
            if future._settled is not None or future.dask_future.status not in ("error", "cancelled"):
                return future._settled is None
            claim = self._recovering.get(id(future))
            mine = claim is None
            if claim is None:
                claim = self._recovering[id(future)] = threading.Event()
        if not mine:
            claim.wait()
            return future._settled is None
        try:
            return self._recover(future)
        finally:
            with self._recovery_lock:
                del self._recovering[id(future)]
            claim.set()

    def rerun_lost(self, future: DaskFuture) -> bool:
        """Have Dask compute again the value of a run whose worker reported it ``Completed`` and then
        died before Dask took the value (the report goes first, from the task's thread; the
        scheduler then counts the task as killed with its worker, and it errs).

        True if the value is being computed again (by this call, by another thread's, or by Dask
        itself): fetch it again. False if that does not apply (cancelled, the runner shut down,
        the value fetched already, the run not ``Completed``).

        Dask recomputes the erred key from its own graph (``client.retry``), which still holds
        the run's arguments: the client let its own copy go when the end was reported, so a new
        submission of ``future.call`` would run the task without them. The recompute is the same
        Dask task, so its events are the run's: the event router records it as one more attempt
        (:mod:`.dask_events`, ``AwaitingRecompute`` then ``Retrying`` then its end), and the value
        fetched is that attempt's. It is not a crash of the attempt that reported its end (that
        one ended; its value was lost, as when a worker holding a value dies), so the scheduler's
        count of the deaths under the task is not handed to the recompute.
        """
        client = self.client
        with self._recovery_lock:  # one thread asks for the recompute; the others find it under way
            settled = future._settled
            if (
                self._cancelled
                or client is None
                or settled is None
                or future._fetched
                or not settled.is_completed()
                or future.task_run.id not in self._router.settled  # its re-run could not be recorded
            ):
                return False
            status = future.dask_future.status
            if status != "error":
                return status in ("pending", "lost", "finished")
            key = future.dask_future.key
            client.run_on_scheduler(forget_crashes, key=key)
            client.retry([future.dask_future])
        _log.info("the Dask worker holding the value of task run %r died before Dask took it; "
                  "Dask computes it again (key %r)", future.task_run.name, key)  # fmt: skip
        return True

    def _recover(self, future: DaskFuture) -> bool:
        run = future.task_run
        engine = TaskRunEngine(future.call)
        if self._cancelled or future.dask_future.status == "cancelled":
            engine.finish(Cancelled("the Dask task was cancelled"))
            future.settle(run.state)
            return False
        broken = [up for up in future.upstreams if up.dask_future.status in ("error", "cancelled")]
        if broken:
            keys = [up.dask_future.key for up in broken]
            for up in broken:
                self.recover(up)
            # (``state`` of an upstream that completed and whose task then broke: its value computed
            # again by Dask, see rerun_lost; Crashed if it could not be.)
            failed = [up for up in broken if up._settled is not None and not up.state.is_completed()]
            if failed:
                engine.finish(
                    NotReady(f"upstream task run {failed[0].task_run.name!r} ended {failed[0].state.name}"),
                    hooks=False,
                )
                future.settle(run.state)
                return False
            if all(up.dask_future.key == key and up.dask_future.status != "error" for up, key in zip(broken, keys)):
                # Each was computed again under its own key (Dask's retry), which brings the erred Dask
                # tasks that depend on it back too: this run's own, with its arguments. Resubmitting
                # would run it twice; its client future turns pending when the scheduler's notice comes.
                if self._await_retried(future):
                    return True
            self._resubmit(future)  # on the upstreams' new Dask tasks: not an attempt of this run
            return True
        exc = future.dask_future.exception()
        if isinstance(exc, ModuleNotFoundError) and ship_missing(exc.name):
            self._resubmit(future)  # the module goes by value now: not a retry of the task
            return True
        if isinstance(exc, ModuleNotFoundError) or (exc is not None and graph_deserialization_failed(exc)):
            engine.finish(Failed(code_missing_message(future.call.task, exc), exc))
            future.settle(run.state)
            return False
        if isinstance(exc, KilledWorker) and killed_worker_task(exc) != future.dask_future.key:
            # What it depends on (the definition a submission ships once, an item of a list) was
            # lost with its workers: not an attempt of this run. Started again on fresh dependencies.
            self._resubmit(future)
            return True
        if isinstance(exc, KilledWorker) and self._died_waiting(future):
            # Its worker died while it waited for a slot, a lock or a retry's delay: not an attempt.
            self._resubmit(future)
            return True
        if isinstance(exc, KilledWorker):
            where = killed_worker_address(exc)
            message = f"the Dask worker running task run {run.name!r} died{f' ({where})' if where else ''}; the run crashed with it"
            deaths = killed_worker_deaths(exc)
        else:
            message = f"Dask could not run task run {run.name!r}: {type(exc).__name__}: {exc}"
            deaths = 1
        # Each death is one attempt; the engine judges the crash by the task's policy.
        future.attempts += deaths
        run.run_count = max(run.run_count, future.attempts)
        if future.attempts > future.call.task.options.retries:
            # No retry is left whatever the policy says: the engine ends the run here rather
            # than on a worker (which also ends a fault that strikes before the engine runs).
            engine.handle_crash(message)
            future.settle(run.state)
            return False
        self._resubmit(future, crash=message)  # its worker's engine judges the crash first
        return True

    def _await_retried(self, future: DaskFuture) -> bool:
        """Wait (bounded) for the scheduler's notice that it runs the erred Dask task of ``future``
        again (it sends it when it retries the task's erred dependency); False if none came."""
        deadline = time.monotonic() + self._lost_timeout
        while future.dask_future.status == "error":
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)  # the notice is a message on the client's stream; distributed offers no wait for it
        return True

    def _died_waiting(self, future: DaskFuture) -> bool:
        client = self.client
        if client is None:
            return False
        try:
            return bool(client.run_on_scheduler(died_waiting, key=future.dask_future.key))
        except Exception:  # cannot ask: count the death, as Dask does
            return False

    def recover_erred(self) -> None:
        """Recover every run whose Dask task erred, without waiting for any.

        Called when one erred run is found: the runs that crashed with it (one worker
        death takes all its runs) start again together, not each when it is waited for.
        """
        for future in list(self._futures):
            if future._settled is None and future.dask_future.status in ("error", "cancelled"):
                self.recover(future)

    def _resubmit(self, future: DaskFuture, crash: str | None = None) -> None:
        """Start the run again as a new Dask task, after ``future.attempts`` attempts (the last
        of which crashed, with ``crash`` as its cause, if given)."""
        run = future.task_run
        self._resubmits += 1
        key = f"{run.task_name}-{run.id.replace('-', '')}-r{self._resubmits}"
        self._submit_group([future.call], keys=[key], resume=[(future.attempts, crash)], into=[future])

    # -- ending ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        try:
            if not self._cancelled:
                self._wait_all()
                self.await_reports(self._futures)
        finally:
            if self._report is not None and self.client is not None:
                self._report.finish(self.client)  # before the client closes (perfhist)
            if self.client is not None:
                self._end_recomputes()
                for future in self._futures:
                    self._router.forget(future.task_run.id)
            self._futures = []
            self._made = ()
            self._shared_objects = {}
            self._flow_infos = {}
            self._definitions = {}
            if self._owns_client and self.client is not None:
                try:
                    self.client.close()
                    if self.cluster is not None:
                        self.cluster.close()
                except Exception as exc:
                    # Not over the flow's own outcome (an interrupt, its error): seen on a loaded
                    # machine, a nanny's worker slower to exit than distributed's close timeout.
                    _log.warning("could not close the Dask cluster the flow run started: %s: %s",
                                 type(exc).__name__, exc)  # fmt: skip
            self.client = None
            self.cluster = None
            super().shutdown()

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

    def _wait_all(self) -> None:
        """Wait for every run: one wait for all, then recovery only where something erred; then for
        the values Dask is computing again (:meth:`_wait_recomputes`)."""
        while True:
            pending = [f for f in self._futures if f._settled is None and f.dask_future.status != "finished"]
            if not pending:
                break
            self.wait_watched(pending)
            self.recover_erred()
        self._wait_recomputes()

    def _wait_recomputes(self) -> None:
        """Wait (bounded by ``daskflow.dask.lost_timeout``) until the runs Dask computes again have ended.

        A run that reported its end and whose value was lost with its worker is
        computed again by Dask while this flow holds its future: a new attempt of
        the run, which the event router records (:mod:`.dask_events`). The flow
        run must not end in the middle of it: the history would keep it
        ``Running``, and a body it ran after the flow let go would be recorded
        nowhere. The client learns of the loss (the future turns ``lost``) ahead
        of the recompute's first event, and of its end after its last.
        """
        # "lost": Dask computes it again by itself; "pending": a recompute asked for (rerun_lost).
        lost = [
            f.dask_future
            for f in self._futures
            if f._settled is not None and f.dask_future.status in ("lost", "pending")
        ]
        if not lost:
            return
        try:
            self.wait_dask(lost, timeout=self._lost_timeout)
        except TimeoutError:
            _log.warning(
                "%d values lost with their Dask workers were not computed again within %g s "
                "(dask.config daskflow.dask.lost_timeout)", len(lost), self._lost_timeout,
            )  # fmt: skip

    def _end_recomputes(self) -> None:
        """Give a final state to the runs whose recompute had not ended when the runner shut down."""
        router = self._router
        for future in self._futures:
            run = future.task_run
            settled = future._settled
            if run.id in router.recomputing and settled is not None and not run.state.is_final():
                run.set_state(
                    State(
                        settled.type,
                        settled.name,
                        "the flow run ended while Dask computed this run again; its first outcome stands",
                    )
                )

    def wait_watched(self, futures: Sequence[DaskFuture], timeout: float | None = None) -> None:
        """Wait for runs' Dask tasks; a run whose task the scheduler lost meanwhile ends ``Crashed``.

        A task the scheduler does not know (its graph never arrived or could not be
        used, or the scheduler lost it) would leave its future pending forever. So
        the wait is cut in steps, and after each the scheduler is asked which of the
        pending tasks it knows; a task unknown for ``daskflow.dask.lost_timeout``
        ends its run with a message naming it. Raises ``TimeoutError`` after ``timeout``.
        """
        bound = self._lost_timeout
        step = max(bound / _LOST_CHECKS, 0.05)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pending = [f for f in futures if f._settled is None]
            if not pending:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{len(pending)} runs unfinished after {timeout} s")
            try:
                self.wait_dask(
                    [f.dask_future for f in pending], timeout=step if remaining is None else min(step, remaining)
                )
                return
            except TimeoutError:
                self._end_lost([f for f in pending if f.dask_future.status == "pending"], bound)

    def _end_lost(self, pending: list[DaskFuture], bound: float) -> None:
        """End the runs whose Dask tasks could not make progress for ``bound`` seconds.

        Stuck is what the scheduler says (:func:`~daskflow.concurrency.distributed_compat.stuck_keys`):
        it does not know the task, or no worker can run it (none at all, or none it may go to).
        """
        client = self.client
        if client is None or not pending:
            return
        try:
            stuck = dict(client.run_on_scheduler(stuck_keys, keys=[f.dask_future.key for f in pending]))
        except Exception:  # the scheduler does not answer: the connection's own timeouts apply
            _log.debug("could not ask the scheduler which tasks it knows", exc_info=True)
            return
        now = time.monotonic()
        since = self._unknown_since
        for future in pending:
            key = future.dask_future.key
            why = stuck.get(key)
            if why is None:
                since.pop(key, None)
                continue
            first = since.setdefault(key, now)
            if now - first < bound:
                continue
            del since[key]
            run = future.task_run
            if why == NO_WORKER:
                message = (
                    f"task run {run.name!r} could not run: no Dask worker could take its task {key!r} for "
                    f"{now - first:.3g} s (the cluster has no running worker, e.g. every nanny gave up "
                    "restarting its worker, or none has the resources or restrictions the task asks for). "
                    "Check the workers' logs; the bound is dask.config daskflow.dask.lost_timeout."
                )
            else:
                message = (
                    f"task run {run.name!r} never started: the Dask scheduler has not known its task {key!r} for "
                    f"{now - first:.3g} s (the graph did not reach the scheduler or could not be used there, or "
                    "the scheduler lost it, e.g. in a restart). See the scheduler's log; the bound is dask.config "
                    "daskflow.dask.lost_timeout."
                )
            engine = TaskRunEngine(future.call)
            engine.logger.error("%s", message)
            engine.finish(Crashed(message))
            future.settle(run.state)
            client.cancel([future.dask_future])

    def await_reports(self, futures: Sequence[DaskFuture]) -> None:
        """Settle the runs whose Dask tasks finished: wait (bounded) for their reported final states.

        A worker sends a run's final state, after everything the run logged, ahead of
        its Dask task's end, so it is here already when Dask says the task finished. If
        it is not (a malformed or dropped event), every worker is asked to flush and
        its sync marker waited for (bounded); a run still without its report then ends
        ``Crashed``, saying so: nothing else settles a run that ended on a worker.
        """

        def unreported() -> list[DaskFuture]:
            return [f for f in futures if f._settled is None and f.dask_future.status == "finished"]

        if not unreported() or self.client is None:
            return
        router = self._router
        deadline = time.monotonic() + _REPORT_WAIT_SECONDS
        with router.changed:
            while unreported():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                router.changed.wait(remaining)
            else:
                return
        self._flush_workers()
        for future in unreported():
            run = future.task_run
            message = (
                f"task run {run.name!r} finished on the Dask cluster, but the final state its worker reported "
                "never reached this client (see the log for refused or malformed daskflow events)"
            )
            engine = TaskRunEngine(future.call)
            engine.logger.error("%s", message)
            engine.finish(Crashed(message))
            future.settle(run.state)

    def drain_writes(self, flow_run_id: str) -> WriteReport:
        """Wait for every run, then for the cache entries they write behind their values on the workers
        that wrote any (and in this process, whose own workers share its writer).

        A worker whose writes failed flushed the runs' warnings before answering; they are waited for
        here, so that they are in the history before the flow run ends.
        """
        report = WriteReport()
        client = self.client
        if client is not None and not self._cancelled:
            # Again while a worker died with writes in flight (Dask then computes its values again,
            # and the recomputes write theirs elsewhere), or a recompute started meanwhile.
            for _ in range(_DRAIN_ROUNDS):
                recomputes = self._router.recomputes
                part, lost = self._drain_workers(client, flow_run_id)
                report += part
                if lost:
                    self._await_removal(client, lost)
                    self._sync_scheduler_stream(client)
                elif recomputes == self._router.recomputes:
                    break
        return report + super().drain_writes(flow_run_id)

    def _await_removal(self, client: Client, workers: set[str]) -> None:
        """Wait (bounded) until the scheduler has removed ``workers``, which died: the values it then
        computes again are known to it, and it has told this client (their futures turn ``lost``)."""
        deadline = time.monotonic() + self._lost_timeout
        while workers & set(client.nthreads()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the scheduler is another process; its handling of a death is what is waited for

    def _sync_scheduler_stream(self, client: Client) -> None:
        """Wait (bounded) until what the scheduler sent this client so far has arrived: a marker
        published now comes behind it on the same stream (the notices of values lost included)."""
        router = self._router
        token = uuid.uuid4().hex
        client.log_event(EVENT_TOPIC, Batch.marker(token, os.getpid()).encode())
        deadline = time.monotonic() + _EVENT_WAIT_SECONDS
        with router.changed:
            while not router.synced.get(token):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                router.changed.wait(remaining)
            router.synced.pop(token, None)

    def _drain_workers(self, client: Client, flow_run_id: str) -> tuple[WriteReport, set[str]]:
        """One round of :meth:`drain_writes`: wait for every run, then drain the workers they wrote on.

        Also returns the workers that ran such runs and did not answer: they died, and their
        writes in flight with them (an entry is absent, never partial).
        """
        report = WriteReport()
        self._wait_all()
        self.await_reports(self._futures)
        # A run that completed with a key wrote (or queued) its entry where it ran, or hit one in flight there.
        workers = sorted(
            {
                run.worker
                for run in (f.task_run for f in self._futures)
                if run.worker and run.cache_key and run.state.is_completed()
            }
        )
        intended = set(workers)
        if workers:  # only the live ones: the writes of a dead worker died with it (never in part)
            # Every live worker (scheduler_info() lists only the first 5 in some distributed versions).
            workers = sorted(intended & set(client.nthreads()))
        answered: set[str] = set()
        if workers:
            timeout = write_behind.drain_timeout()
            replies = client.run(drain_writes, flow_run_id, timeout, workers=workers, on_error="ignore")
            for worker, reply in replies.items():
                if isinstance(reply, WriteReport):
                    answered.add(worker)
                    report += reply
            if report.failed:
                self._flush_workers()
        return report, intended - answered

    def _flush_workers(self) -> None:
        """Ask every worker to send what it buffered, and wait (bounded) until it has arrived."""
        assert self.client is not None
        router = self._router
        token = uuid.uuid4().hex
        # A worker that died meanwhile has nothing to send: its runs' states are taken below.
        replies = self.client.run(flush_events, token, on_error="ignore")
        expected = sum(1 for sent in replies.values() if sent)
        deadline = time.monotonic() + _EVENT_WAIT_SECONDS
        with router.changed:
            while router.synced.get(token, 0) < expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _log.warning("some run events did not arrive within %g s; records may lag", _EVENT_WAIT_SECONDS)
                    break
                router.changed.wait(remaining)
            router.synced.pop(token, None)

    def cancel_all(self) -> None:
        self._release("the flow run was cancelled")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt) and not self._cancelled:
            # The body raised (a run's error it let through, its timeout, a test's): nothing will ask
            # for the runs still going, and waiting for them would hold the exception without bound.
            # What this flow holds on the cluster goes now, not when the last reference to it does.
            self._release(f"the flow run's body raised {exc_type.__name__} before this run ended")
        super().__exit__(exc_type, exc, tb)

    def _release(self, reason: str) -> None:
        """Cancel every run not yet finished (Cancelled with ``reason``) and release every Dask
        task this runner made (runs, shared definitions, map items), so none outlives the flow."""
        self._cancelled = True
        client = self.client  # once the futures are cancelled, the flow may shut this runner down
        futures = self._futures
        unfinished = [f for f in futures if f._settled is None and not f.task_run.state.is_final()]
        if client is not None and futures:
            flow_run_id = futures[0].task_run.flow_run_id
            try:
                # Told first: a run of this flow must not take a slot that the cancel frees.
                client.run(interrupt_runs, flow_run_id, [f.dask_future.key for f in unfinished], wait=False)
            except Exception:  # the cluster is going away: so are its threads
                _log.debug("could not interrupt the cancelled runs on the workers", exc_info=True)
        if client is not None:
            made = [*(f.dask_future for f in futures), *self._made]
            made += [shared for _, shared, _ in self._shared_objects.values() if isinstance(shared, distributed.Future)]
            try:
                client.cancel(made, force=True)
            except Exception:  # the client is closing: its futures go with it
                _log.debug("could not cancel the flow run's Dask tasks", exc_info=True)
        for future in futures:
            if not future.task_run.state.is_final():
                future.task_run.set_state(Cancelled(reason))
            future.settle(future.task_run.state)
