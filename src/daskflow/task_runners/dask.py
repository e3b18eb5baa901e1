"""The Dask runner: a flow's task runs become tasks of a Dask cluster.

``.submit`` and ``.map`` turn their calls into one ``client.map`` each: one
round trip per map, keys named after the task (``extract-table-<run id>``) so
the dashboard reads like the flow. A future passed to another task becomes a
dependency of that Dask task, resolved on the cluster: values move between
workers, never through the client unless someone asks for them. The task
object and the flow's facts are scattered once per flow run and shared by
every call, so a map of 10,000 items does not pickle the function 10,000 times.

Each Dask task runs the engine on its worker (:mod:`.dask_worker`), which
reports states and log records back in batches over Dask's pub-sub. The
client applies them to its run records (so ``future.state`` and the console
look as on the local runners).

Failures as Dask knows them: a worker that dies under a task
(``KilledWorker``) makes that run ``Crashed``; it is resubmitted with a fresh
key while the task's retry policy allows, and its downstream runs are
resubmitted after it. Recovery happens when a future is waited for, in the
waiting thread, never in Dask's callback thread.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import importlib.util
import logging
import os
import site
import sys
import sysconfig
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import cloudpickle
import distributed
from dask.base import annotate
from dask.utils import parse_timedelta
from distributed import Client, KilledWorker

from daskflow import settings
from daskflow.annotations import BaseAnnotation
from daskflow.concurrency.distributed_compat import (
    MARK_ANNOTATION,
    graph_deserialization_failed,
    install_crash_counter,
    killed_worker_address,
    killed_worker_deaths,
    pickling_failed,
    unknown_keys,
)
from daskflow.engine import UNCHANGED, TaskCall, TaskRunEngine, transform
from daskflow.exceptions import ConfigurationError, SchedulerUnreachableError, UnserializableInputError
from daskflow.futures import DaskflowFuture
from daskflow.states import (
    Cancelled,
    Crashed,
    DeferredData,
    Failed,
    LoadedOnce,
    State,
    StateType,
    item_state,
)
from daskflow.task_runners.base import TaskRunner
from daskflow.task_runners.dask_worker import (
    EVENT_TOPIC,
    ItemRef,
    UpstreamRef,
    decode_state,
    flush_events,
    interrupt_runs,
    mark_client_process,
    replay_artifact,
    run_on_worker,
    state_length,
    state_value,
)

__all__ = ["DaskFuture", "DaskTaskRunner", "MapItem"]

_log = logging.getLogger("daskflow.dask")
_EVENT_WAIT_SECONDS = 5.0
_REPORT_WAIT_SECONDS = 0.1  # how long the final states of a flow run's last runs may take to arrive
_INLINE_BYTES = 2 << 20  # bytes of a shared object over all the tasks of one submission
_LOST_CHECKS = 4  # how many times per daskflow.dask.lost_timeout a wait asks the scheduler what it lost
_NO_UPSTREAMS: tuple[DaskFuture, ...] = ()
# The parameters of a call that ended on the cluster, once the client has let them go.
RELEASED_PARAMETERS: dict[str, Any] = {}


class MapItem(BaseAnnotation[Any]):
    """Item ``index`` of the list that an upstream future will hold (a ``.map`` over a future).

    ``item`` is the Dask future of a small task that takes that item out of the list
    where the list lives, so the run that maps over it depends on its item only: the
    scheduler can run it next to its item, and the whole list never travels to every
    worker. ``source_key`` is the upstream's Dask key when ``item`` was made (a crash
    retry gives the upstream a new key; then the item is taken from the list itself).
    """

    __slots__ = ("index", "item", "source_key")

    def __init__(self, value: Any, index: int = 0, item: Any = None, source_key: Any = None) -> None:
        super().__init__(value)
        self.index = index
        self.item = item
        self.source_key = source_key

    def __reduce__(self) -> tuple[Any, ...]:
        return (MapItem, (self.value, self.index))


class DaskFuture(DaskflowFuture[Any]):
    """A task run on a Dask cluster; resolves to its final state."""

    # A map of 100,000 items makes 100,000 of these: no per-future lock or list (recovery
    # claims a future under the runner's lock; a run without upstreams shares one empty tuple).
    # ``attempts``: the attempts the run had made before its current Dask task started.
    __slots__ = ("_runner", "call", "dask_future", "upstreams", "_settled", "attempts")

    def __init__(
        self, runner: DaskTaskRunner, call: TaskCall, dask_future: distributed.Future, upstreams: Sequence[DaskFuture]
    ) -> None:
        super().__init__(call.task_run)
        self._runner = runner
        self.call = call
        self.dask_future = dask_future
        self.upstreams = upstreams
        self._settled: State | None = None
        self.attempts = call.task_run.run_count

    def done(self) -> bool:
        return self._settled is not None or self.dask_future.status == "finished"

    def _final_state(self) -> State | None:
        if self._settled is not None:
            return self._settled
        if self.dask_future.status != "finished":
            return None
        # The value comes to the client: it was asked for (a hit left in storage comes as a reference).
        state: State = _on_client(self.dask_future.result(), self._runner.client, self.dask_future)
        self._settled = state
        if not self.task_run.state.is_final():
            self.task_run.set_state(state)
        return state

    def settle(self, state: State) -> None:
        self._settled = state

    def wait(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._settled is None:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                self._runner.wait_watched([self], timeout=remaining)
            except TimeoutError:
                return
            status = self.dask_future.status
            if status == "finished":
                return
            if status in ("error", "cancelled"):
                self._runner.recover_erred()
                if not self._runner.recover(self):
                    return
            if deadline is not None and time.monotonic() >= deadline:
                return

    def add_done_callback(self, fn: Callable[[DaskflowFuture[Any]], None]) -> None:
        def on_done(_: distributed.Future) -> None:
            if self.dask_future.status == "finished" or self._settled is not None:
                fn(self)
            else:  # recovering may block: never in Dask's single callback thread
                threading.Thread(target=self._wait_then, args=(fn,), daemon=True).start()

        self.dask_future.add_done_callback(on_done)

    def _wait_then(self, fn: Callable[[DaskflowFuture[Any]], None]) -> None:
        self.wait()
        fn(self)


class _EventRouter:
    """Applies the ``daskflow`` events of one client to this process's run records."""

    def __init__(self, client: Client) -> None:
        self.runs: dict[str, TaskCall] = {}
        self.changed = threading.Condition()
        self.synced: dict[str, int] = {}
        # Modules already checked on this client's workers (see DaskTaskRunner._ship_code).
        # A worker that joins later and lacks one is handled when a task fails on it.
        self.checked_modules: set[str] = set()
        self.ship_lock = threading.Lock()
        client.subscribe_topic(EVENT_TOPIC, self.handle)
        install_crash_counter(client)  # once per client: worker deaths the scheduler retries count as attempts

    def handle(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        worker = message.get("worker")
        # A worker thread of this very process already logged its records here.
        local = message.get("pid") == os.getpid()
        for item in message.get("b", ()):
            try:
                if item[0] == "s":
                    self._apply_state(item, worker)
                elif not local:
                    if item[0] == "a":  # an artifact: kept by the run history, not logged
                        replay_artifact(item)
                    else:
                        _emit_record(item)
            except Exception:  # a malformed event must not stop the stream
                _log.exception("could not apply a daskflow event from %s", worker)
        with self.changed:
            token = message.get("sync")
            if token is not None:
                self.synced[token] = self.synced.get(token, 0) + 1
            self.changed.notify_all()

    def _apply_state(self, item: list[Any], worker: str | None) -> None:
        _, run_id, run_count, *encoded = item
        call = self.runs.get(run_id)
        if call is None:
            return
        run = call.task_run
        final = encoded[0] in _FINAL_TYPES
        if len(encoded) > 5:  # facts that ride with the state: a folded start time, the cache key
            extras = encoded[5]
            if run.start_time is None:
                run.start_time = extras.get("start")
            run.cache_key = extras.get("key", run.cache_key)
        run.run_count = max(run.run_count, run_count)
        run.worker = run.worker or worker
        if not run.state.is_final():  # else the client ended it first (from the result it fetched)
            run.worker = worker
            run.set_state(decode_state(encoded))
        if final and run_count >= run.run_count:  # the latest attempt's end, not a stale one
            # Done on the cluster, which keeps its own graph for recomputing a lost value:
            # what the client kept to resubmit the run is dead weight (a map of 100,000 items).
            # The marker also tells the runner that this run's records have all arrived.
            del self.runs[run_id]
            call.parameters = RELEASED_PARAMETERS
            call.wait_for = ()


_FINAL_TYPES = frozenset(t.value for t in (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED))


def _emit_record(item: list[Any]) -> None:
    (_, run_id, name, level, message, created, exc_text, run_name, task_name, flow_run_id, flow_run_name, flow_name) = item
    logger = logging.getLogger(name)
    if not logger.isEnabledFor(level):
        return
    record = logging.makeLogRecord(
        {
            "name": name,
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "msg": message,
            "created": created,
            "msecs": (created % 1) * 1000,
            "exc_text": exc_text,
            "task_run_id": run_id,
            "task_run_name": run_name,
            "task_name": task_name,
            "flow_run_id": flow_run_id,
            "flow_run_name": flow_run_name,
            "flow_name": flow_name,
            "run_label": f"Task run {run_name!r}",
        }
    )
    logger.handle(record)


_routers: dict[int, tuple[Client, _EventRouter]] = {}
_routers_lock = threading.Lock()


def _router_for(client: Client) -> _EventRouter:
    mark_client_process()
    with _routers_lock:
        for key, (known, _) in list(_routers.items()):
            if known.status in ("closed", "closing"):  # forget closed clients (their ids get reused)
                del _routers[key]
        entry = _routers.get(id(client))
        if entry is None or entry[0] is not client:
            entry = _routers[id(client)] = (client, _EventRouter(client))
        return entry[1]


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths["stdlib"], paths["purelib"], paths["platlib"]}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    return tuple(root for root in roots if root)


def _user_module(module: ModuleType) -> bool:
    """True for a module of the user's own code (not the standard library, not installed)."""
    path = getattr(module, "__file__", None)
    if not path or module.__name__ == "__main__":
        return False
    return not path.startswith(_installed_roots())


class DaskTaskRunner(TaskRunner):
    """Runs task runs on a Dask cluster.

    With nothing given it starts a ``LocalCluster`` (loopback only) for the flow
    run and closes it after; ``address`` connects to a running scheduler;
    ``cluster_class`` (a class or its import path) with ``cluster_kwargs`` and
    ``adapt_kwargs`` starts that cluster; ``client`` — or a default client that
    is already active, as in a notebook — is used and left open.
    """

    def __init__(
        self,
        address: str | None = None,
        cluster_class: type | str | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        adapt_kwargs: dict[str, Any] | None = None,
        client: Client | None = None,
    ) -> None:
        if address is not None and (cluster_class is not None or client is not None):
            raise ConfigurationError("DaskTaskRunner: give address, or cluster_class, or client; not several")
        if client is not None and not isinstance(client, Client):
            raise ConfigurationError(f"DaskTaskRunner: client must be a distributed.Client, got {type(client).__name__}")
        super().__init__(
            address=address, cluster_class=cluster_class, cluster_kwargs=cluster_kwargs, adapt_kwargs=adapt_kwargs, client=client
        )
        self.address = address
        self.cluster_class = cluster_class
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.adapt_kwargs = adapt_kwargs
        self._given_client = client
        self.client: Client | None = None
        self.cluster: Any = None
        self._owns_client = False
        self._futures: list[DaskFuture] = []
        self._reported_upto = 0
        self._shared_objects: dict[int, tuple[Any, Any, int]] = {}
        self._flow_infos: dict[tuple[str | None, bool], dict[str, Any]] = {}
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
        self._router = _router_for(self.client)

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

    def _connect(self) -> tuple[Client, Any, bool]:
        if self._given_client is not None:
            return self._given_client, None, False
        timeout = parse_timedelta(settings.get("dask.connect_timeout"))
        if self.address is not None:
            try:
                return Client(self.address, timeout=timeout, set_as_default=False), None, True
            except (OSError, TimeoutError) as exc:
                raise SchedulerUnreachableError(
                    f"no Dask scheduler answered at {self.address} within {timeout:g} s ({type(exc).__name__}: {exc}); "
                    "check that the scheduler is running and the address is right, or raise "
                    "dask.config daskflow.dask.connect_timeout"
                ) from None
        if self.cluster_class is None:
            try:
                return distributed.default_client(), None, False
            except ValueError:
                pass
        cluster = self._make_cluster()
        client = Client(cluster, set_as_default=False)
        _log.info("Started a Dask cluster for the flow run; dashboard: %s", client.dashboard_link)
        return client, cluster, True

    def _make_cluster(self) -> Any:
        cls = self.cluster_class
        if isinstance(cls, str):
            module_name, _, name = cls.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module_name), name)
            except (ImportError, AttributeError) as exc:
                raise ConfigurationError(f"DaskTaskRunner: cluster_class {self.cluster_class!r} cannot be imported: {exc}") from None
        kwargs = dict(self.cluster_kwargs)
        if cls is None:
            cls = distributed.LocalCluster
            kwargs.setdefault("host", "127.0.0.1")  # never listen beyond this machine by default
            kwargs.setdefault("dashboard_address", "127.0.0.1:0")
        assert callable(cls)
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
        if entry is not None and (entry[1] is not obj or entry[2] * count <= _INLINE_BYTES):
            return entry[1]
        assert self.client is not None
        size = entry[2] if entry is not None else len(cloudpickle.dumps(obj))
        shared: Any = obj
        if size * count > _INLINE_BYTES:
            # A task that returns it, not a scattered value: Dask cannot recompute scattered
            # data, so every map task depending on it would fail with its holders. A task's
            # result is computed again on another worker when all its holders die.
            shared = self.client.submit(_shared_value, obj, key=f"daskflow-shared-{uuid.uuid4().hex}", pure=False)
        self._shared_objects[id(obj)] = (obj, shared, size)  # keeps obj alive so its id is not reused
        return shared

    def _ship_code(self, task: Any) -> None:
        """Send the user's own modules that the task needs by value, if the workers lack them.

        The candidates are the task's module and the user modules its function
        refers to (imported modules, functions and classes in its globals): the
        code of a notebook or a project folder, which a remote cluster does not have.
        """
        fn = task.fn
        names = {getattr(fn, "__module__", "") or ""}
        for value in getattr(fn, "__globals__", {}).values():
            if isinstance(value, ModuleType):
                names.add(value.__name__)
            elif callable(value) and isinstance(getattr(value, "__module__", None), str):
                names.add(value.__module__)
        router = self._router
        assert self.client is not None
        unchecked = names - router.checked_modules
        if not unchecked:
            return
        candidates = [
            name for name in sorted(unchecked) if (module := sys.modules.get(name)) is not None and _user_module(module)
        ]
        if not candidates:
            router.checked_modules.update(unchecked)
            return
        # One check at a time, and a module counts as checked only once it is registered: a flow
        # running alongside must not submit by reference what is about to go by value (the
        # scheduler cannot unpickle such a graph, and its tasks would never start).
        with router.ship_lock:
            candidates = [name for name in candidates if name not in router.checked_modules]
            if candidates:
                # The scheduler unpickles the graph too: it needs the modules as much as the workers.
                found = list(self.client.run(_importable, candidates).values())
                found.append(self.client.run_on_scheduler(_importable, candidates))
                for name in candidates:
                    if not all(found_on.get(name, False) for found_on in found):
                        cloudpickle.register_pickle_by_value(sys.modules[name])
                        _log.debug("module %s is shipped to the cluster by value", name)
            router.checked_modules.update(unchecked)

    def _ship_missing(self, name: str | None) -> bool:
        """A worker lacked module ``name`` (it joined after the check): ship it by value if we can."""
        module = sys.modules.get(name or "")
        if module is None or not _user_module(module) or name in cloudpickle.list_registry_pickle_by_value():
            return False
        cloudpickle.register_pickle_by_value(module)
        _log.debug("module %s was missing on a worker; it is shipped by value from now on", name)
        return True

    def _spec(
        self, call: TaskCall, deps: list[distributed.Future], upstreams: list[DaskFuture], attempts: int, crash: str | None
    ) -> tuple[Any, ...]:
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
                if leaf.item is not None and leaf.source_key == leaf.value.dask_future.key:
                    return UpstreamRef(ref(leaf.value, leaf.item))
                return ItemRef(ref(leaf.value), leaf.index)
            if isinstance(leaf, DaskflowFuture):  # from another runner: settle it here
                leaf.wait()
                return leaf.state
            return UNCHANGED

        parameters = transform(call.parameters, visit, unwrap=False)[0]
        wait_for = transform(list(call.wait_for), visit, unwrap=False)[0] if call.wait_for else ()
        run = call.task_run
        return (run.id, run.name, run.map_index, run.upstream_ids, parameters, tuple(wait_for), attempts, crash)

    def _flow_info(self, call: TaskCall) -> dict[str, Any]:
        key = (call.flow_run_id, call.log_prints)
        info = self._flow_infos.get(key)
        if info is None:
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
        record: bool = True,
    ) -> list[DaskFuture]:
        """Submit calls of one task: one ``client.map`` per window of ``daskflow.dask.map_window`` calls.

        A window bounds what a huge map holds at once on the client (the specs, the
        graph message): 100,000 items go as ten messages of 10,000, not one of 100,000.
        """
        assert self.client is not None
        task = calls[0].task
        self._ship_code(task)
        task_ref = self._shared(task, len(calls))
        flow_info = self._flow_info(calls[0])
        flow_ref = self._shared(flow_info, len(calls))
        window = max(1, int(settings.get("dask.map_window")))
        made: list[DaskFuture] = []
        with distributed.span(f"flow {flow_info['flow_name']} run {flow_info['flow_run_name']}"):
            for start in range(0, len(calls), window):
                part = calls[start : start + window]
                made.extend(
                    self._submit_window(
                        task, task_ref, flow_ref, part,
                        keys[start : start + window] if keys else None,
                        resume[start : start + window] if resume else None,
                    )
                )  # fmt: skip
        if record:
            self._futures.extend(made)
        return made

    def _submit_window(
        self,
        task: Any,
        task_ref: Any,
        flow_ref: Any,
        calls: Sequence[TaskCall],
        keys: list[str] | None,
        resume: list[tuple[int, str | None]] | None,
    ) -> list[DaskFuture]:
        assert self.client is not None
        specs, deps_lists, ups_lists = [], [], []
        runs = self._router.runs
        for position, call in enumerate(calls):
            deps: list[distributed.Future] = []
            ups: list[DaskFuture] = []
            attempts, crash = resume[position] if resume else (call.task_run.run_count, None)
            specs.append(self._spec(call, deps, ups, attempts, crash))
            deps_lists.append(deps)
            ups_lists.append(ups or _NO_UPSTREAMS)
            runs[call.task_run.id] = call
        if keys is None:
            prefix = f"{task.name}-"
            keys = [prefix + call.task_run.id.replace("-", "") for call in calls]
        count = len(calls)
        try:
            with annotate(**{MARK_ANNOTATION: True}):  # a daskflow task: its worker deaths are counted
                dask_futures = self.client.map(
                    run_on_worker,
                    [task_ref] * count,
                    [flow_ref] * count,
                    specs,
                    deps_lists,
                    key=keys,
                    pure=False,
                    resources=task.options.resources,
                )
        except TypeError as exc:
            if not pickling_failed(exc):
                raise
            raise _unserializable(calls) from None
        made = [DaskFuture(self, call, dask_future, ups) for call, dask_future, ups in zip(calls, dask_futures, ups_lists)]
        if resume:
            for future, (attempts, _) in zip(made, resume):
                future.attempts = attempts
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
        length, where = self.client.submit(_length_and_worker, future.dask_future, pure=False).result()
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

    def _recover(self, future: DaskFuture) -> bool:
        run = future.task_run
        engine = TaskRunEngine(future.call)
        if self._cancelled or future.dask_future.status == "cancelled":
            engine.finish(Cancelled("the Dask task was cancelled"))
            future.settle(run.state)
            return False
        broken = [up for up in future.upstreams if up.dask_future.status in ("error", "cancelled")]
        if broken:
            for up in broken:
                self.recover(up)
            failed = [up for up in future.upstreams if up._settled is not None and not up._settled.is_completed()]
            if failed:
                engine.finish(Failed(f"upstream task run {failed[0].task_run.name!r} ended {failed[0].state.name}", name="UpstreamFailed"), hooks=False)
                future.settle(run.state)
                return False
            self._resubmit(future)  # on the upstreams' new Dask tasks: not an attempt of this run
            return True
        exc = future.dask_future.exception()
        if isinstance(exc, ModuleNotFoundError) and self._ship_missing(exc.name):
            self._resubmit(future)  # the module goes by value now: not a retry of the task
            return True
        if isinstance(exc, ModuleNotFoundError) or (exc is not None and graph_deserialization_failed(exc)):
            engine.finish(Failed(_code_missing_message(future.call.task, exc), exc))
            future.settle(run.state)
            return False
        if future.call.parameters is RELEASED_PARAMETERS:  # it completed, then its value was lost
            state = Crashed(
                f"task run {run.name!r} completed, then the Dask worker holding its value died and Dask "
                f"could not recompute it ({type(exc).__name__}: {exc})",
                exc,
            )
            run.set_state(state)  # after the Completed whose value is gone
            future.settle(state)
            return False
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
        [fresh] = self._submit_group([future.call], keys=[key], resume=[(future.attempts, crash)], record=False)
        future.dask_future = fresh.dask_future
        future.upstreams = fresh.upstreams

    # -- ending ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        try:
            if not self._cancelled:
                self._wait_all()
                self._sync_records()
        finally:
            if self.client is not None:
                for future in self._futures:
                    self._router.runs.pop(future.task_run.id, None)
            self._futures = []
            self._reported_upto = 0
            self._shared_objects = {}
            self._flow_infos = {}
            if self._owns_client and self.client is not None:
                self.client.close()
                if self.cluster is not None:
                    self.cluster.close()
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
        """Wait for every run: one wait for all, then recovery only where something erred."""
        while True:
            pending = [f for f in self._futures if f._settled is None and f.dask_future.status != "finished"]
            if not pending:
                return
            self.wait_watched(pending)
            self.recover_erred()

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
                self.wait_dask([f.dask_future for f in pending], timeout=step if remaining is None else min(step, remaining))
                return
            except TimeoutError:
                self._end_lost([f for f in pending if f.dask_future.status == "pending"], bound)

    def _end_lost(self, pending: list[DaskFuture], bound: float) -> None:
        """End the runs whose Dask tasks the scheduler has not known for ``bound`` seconds."""
        client = self.client
        if client is None or not pending:
            return
        try:
            unknown = set(client.run_on_scheduler(unknown_keys, keys=[f.dask_future.key for f in pending]))
        except Exception:  # the scheduler does not answer: the connection's own timeouts apply
            _log.debug("could not ask the scheduler which tasks it knows", exc_info=True)
            return
        now = time.monotonic()
        since = self._unknown_since
        for future in pending:
            key = future.dask_future.key
            if key not in unknown:
                since.pop(key, None)
                continue
            first = since.setdefault(key, now)
            if now - first < bound:
                continue
            del since[key]
            run = future.task_run
            message = (
                f"task run {run.name!r} never started: the Dask scheduler has not known its task {key!r} for "
                f"{now - first:.3g} s (the graph did not reach the scheduler or could not be used there, or the "
                "scheduler lost it, e.g. in a restart). See the scheduler's log; the bound is dask.config "
                "daskflow.dask.lost_timeout."
            )
            engine = TaskRunEngine(future.call)
            engine.logger.error("%s", message)
            engine.finish(Crashed(message))
            future.settle(run.state)
            client.cancel([future.dask_future])

    def _all_reported(self) -> bool:
        """True when every run's final state (and so all it logged) has come from its worker."""
        futures = self._futures
        cursor = self._reported_upto
        while cursor < len(futures) and futures[cursor].call.parameters is RELEASED_PARAMETERS:
            cursor += 1
        self._reported_upto = cursor
        return cursor == len(futures)

    def _sync_records(self) -> None:
        """Bring every run record and log up to date before the flow run ends.

        Workers send a run's final state at once, after everything it logged, so
        the usual wait is a few milliseconds for the last ones to arrive. If they
        do not (a worker died, events were dropped), ask every worker to flush
        and wait (bounded) for its sync marker to come back through the same stream.
        """
        if not self._futures or self.client is None:
            return
        router = self._router
        deadline = time.monotonic() + _REPORT_WAIT_SECONDS
        with router.changed:
            while not self._all_reported():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                router.changed.wait(remaining)
            else:
                return
        token = uuid.uuid4().hex
        replies = self.client.run(flush_events, token)
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
        for future in self._futures:
            if not future.task_run.state.is_final():
                future._final_state()  # events were lost (a worker died): take the state itself

    def cancel_all(self) -> None:
        self._cancelled = True
        client = self.client  # once the futures are cancelled, the flow may shut this runner down
        if client is not None and self._futures:
            running = [f.dask_future.key for f in self._futures if not f.task_run.state.is_final()]
            flow_run_id = self._futures[0].task_run.flow_run_id
            try:
                # Told first: a run of this flow must not take a slot that the cancel frees.
                client.run(interrupt_runs, flow_run_id, running, wait=False)
            except Exception:  # the cluster is going away: so are its threads
                _log.debug("could not interrupt the cancelled runs on the workers", exc_info=True)
            client.cancel([f.dask_future for f in self._futures], force=True)
        for future in self._futures:
            if not future.task_run.state.is_final():
                future.task_run.set_state(Cancelled("the flow run was cancelled"))
            future.settle(future.task_run.state)


def _shared_value(obj: Any) -> Any:
    """The task that holds an object shipped once (see ``DaskTaskRunner._shared``)."""
    return obj


def _importable(names: list[str]) -> dict[str, bool]:
    """On a worker: which of these modules it can import."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found[name] = False
    return found


def _code_missing_message(task: Any, exc: BaseException) -> str:
    """Why a task could not be loaded on the cluster, the modules it needs, and the fix."""
    fn = task.fn
    modules = {getattr(fn, "__module__", None)}
    modules.update(
        value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        for value in getattr(fn, "__globals__", {}).values()
        if isinstance(value, ModuleType) or callable(value)
    )
    needed = sorted(
        name
        for name in modules
        if name and (module := sys.modules.get(name)) is not None and not _stdlib(module) and name.split(".")[0] != "daskflow"
    )
    missing = getattr(exc, "name", None)
    what = f"module {missing!r} is missing there" if missing else str(exc).splitlines()[0]
    return (
        f"task {task.name!r} could not be loaded on the Dask cluster: {what}. The scheduler and the "
        f"workers import what the task is defined in and refers to ({', '.join(needed) or 'its module'}). "
        "Install module(s) there with the same versions as here, or keep the code in your own "
        "project's modules, which daskflow ships by value."
    )


def _stdlib(module: ModuleType) -> bool:
    path = getattr(module, "__file__", None)
    return path is None or path.startswith(sysconfig.get_paths()["stdlib"])


def _length_and_worker(state: State) -> tuple[int | None, str | None]:
    """The length of a run's list value, and the worker that holds it (this task runs next to it)."""
    try:
        where: str | None = distributed.get_worker().address
    except ValueError:
        where = None
    return state_length(state), where


class ClusterValue(LoadedOnce):
    """A hit the client received as a reference: read where the cluster keeps it, through Dask.

    The entry may be on a worker's own disk (the default storage is under each
    machine's home), so the client asks the worker that ran the hit to read it;
    once the cluster is gone, it reads the storage itself.
    """

    __slots__ = ("inner", "client", "future")

    def __init__(self, inner: DeferredData, client: Client, future: distributed.Future) -> None:
        super().__init__()
        self.inner = inner
        self.client = client
        self.future = future

    @property
    def version(self) -> str:
        return self.inner.version

    @property
    def length(self) -> int | None:
        return self.inner.length

    def in_memory(self) -> bool:
        return self._loaded or self.inner.in_memory()

    def _load(self) -> Any:
        if self.inner.in_memory() or self.client.status != "running":
            return self.inner.get()
        return self.client.submit(state_value, self.future, pure=False).result()

    def item(self, index: int) -> DeferredData:
        return self.inner.item(index)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_inner_value, (self.inner,))


def _inner_value(inner: DeferredData) -> DeferredData:
    return inner


def _on_client(state: State, client: Client | None, future: distributed.Future) -> State:
    """``state`` as the client keeps it: a hit left in storage is read through the cluster."""
    deferred = state.deferred
    if client is None or deferred is None or deferred.in_memory():
        return state
    # A copy: with workers in this process the state may be the very object the worker holds.
    return State(
        state.type, state.name, state.message, ClusterValue(deferred, client, future), state.exception, state.epoch, state.traceback
    )


def _unserializable(calls: Sequence[TaskCall]) -> UnserializableInputError:
    """Find the argument that cannot be pickled and say so: task, parameter, type."""
    for call in calls:
        for name, value in call.parameters.items():
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                return UnserializableInputError(
                    f"task {call.task.name!r}: argument {name!r} of type {type(value).__module__}.{type(value).__qualname__} "
                    f"cannot be sent to the Dask workers ({type(exc).__name__}: {exc}). Locks, sockets, open files, "
                    "connections and generators cannot travel: create the object inside the task, or pass what "
                    "is needed to make it (a URL, a path, a config)."
                )
    return UnserializableInputError(f"task {calls[0].task.name!r}: its arguments or its function cannot be sent to the Dask workers")
