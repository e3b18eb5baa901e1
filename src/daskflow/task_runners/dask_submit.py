"""How the Dask runner submits calls: the second layer of :class:`~.dask.DaskTaskRunner`.

A batch of calls is grouped by task; each group ships the user's code if the
cluster lacks it (:mod:`.dask_shipping`), and the task object with the flow's
facts as one :class:`~.dask_protocol.Definition`, inline in each Dask task or,
when that would cost more, once as a task of its own (:meth:`DaskSubmitting._shared`).
Each call becomes a :class:`~.dask_protocol.RunSpec` whose futures are replaced
by references to the Dask task's dependencies, and a window of calls goes in one
``client.map`` of :func:`.dask_worker.run_on_worker`: one round trip per window.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import cloudpickle
import distributed
from dask.base import annotate
from dask.utils import parse_bytes

from daskflow import settings
from daskflow.annotations import BaseAnnotation
from daskflow.concurrency.distributed_compat import MARK_ANNOTATION, pickling_failed
from daskflow.engine import UNCHANGED, TaskCall, transform
from daskflow.engine.calls import TransactionSnapshot
from daskflow.engine.inputs import iter_upstreams
from daskflow.engine.prefetch import end_hit, hits_usable_here, reach_of
from daskflow.futures import DaskflowFuture
from daskflow.states import State, item_state
from daskflow.task_runners.dask_connect import DaskConnecting
from daskflow.task_runners.dask_futures import NO_UPSTREAMS, DaskFuture, MapItem, MappedList
from daskflow.task_runners.dask_protocol import Definition, RunSpec
from daskflow.task_runners.dask_shipping import ship_code, unserializable
from daskflow.task_runners.dask_values import length_and_worker, shared_value
from daskflow.task_runners.dask_worker import ItemRef, UpstreamRef, look_up_on_worker, run_on_worker
from daskflow.task_runners.sequential import submit_misses

if TYPE_CHECKING:
    from daskflow.task_runners.dask import DaskTaskRunner

__all__ = ["DaskSubmitting"]

_INLINE_BYTES = 2 << 20  # bytes of a shared object over all the tasks of one submission
_ON_WORKERS_FROM = 16  # fewer runs to look up on the workers than this: each looks itself up


def _worker_threads(client: distributed.Client) -> dict[str, int]:
    """The threads of every worker: from the cluster object the client was made with, which Dask
    keeps up to date from the scheduler's stream of worker changes (no round trip), else asked.

    Not ``client.scheduler_info()``: it is a round trip too, and some versions list 5 workers.
    """
    workers = getattr(getattr(client, "cluster", None), "scheduler_info", {}).get("workers")
    if workers:
        return {address: int(info.get("nthreads") or 1) for address, info in workers.items()}
    return dict(client.nthreads())


def _map_items(call: TaskCall) -> list[MapItem]:
    """The items of maps over futures among a call's arguments (as ``.map`` puts them: wrapped at most once)."""
    found = []
    for value in call.parameters.values():
        if isinstance(value, BaseAnnotation) and not isinstance(value, MapItem):
            value = value.value
        if isinstance(value, MapItem):
            found.append(value)
    return found


class DaskSubmitting(DaskConnecting):
    """Submission of calls as Dask tasks (state set by :meth:`.dask.DaskTaskRunner.__init__`)."""

    _futures: list[DaskFuture]  # every run submitted, in order
    # The Dask tasks made besides the runs' own (the items of a .map over a future), released with them.
    _made: tuple[distributed.Future, ...] = ()
    _shared_objects: dict[int, tuple[Any, Any, int]]
    _flow_infos: dict[tuple[str | None, bool, frozenset[str], bool], dict[str, Any]]
    _definitions: dict[tuple[int, int], Definition]
    _next_place = 0  # the worker thread the next run over a future's items is asked for on (_places)

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
        whole: list[bool],
        index: dict[Any, int] | None = None,
    ) -> RunSpec:
        """The call as its Dask task gets it; ``whole`` gets an entry for each item it takes out of a
        whole list (its item's own task is gone: a crash retry), which then travels to the run.
        ``index``: the position in ``deps`` of each Dask key, when several specs share ``deps``."""
        if index is None:
            index = {}

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
                if item is not None and item.status not in ("error", "cancelled") and _current(leaf):
                    return UpstreamRef(ref(leaf.value, item))
                whole.append(True)
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
            hits = self._look_up_on_workers(group)
            if hits is None:
                futures.extend(self._submit_group(group))
            else:
                futures.extend(submit_misses(group, hits, self._submit_group))
        if len(by_task) > 1:  # keep the caller's order
            order = {id(call.task_run): i for i, call in enumerate(calls)}
            futures.sort(key=lambda f: order[id(f.task_run)])
        return futures

    def _look_up_on_workers(self, calls: Sequence[TaskCall]) -> list[State | None] | None:
        """Look up the runs whose keys need values only the cluster holds, a task per worker; each
        run's final ``Cached`` state if found (ended here, in the history), else None; or None when
        none was looked up.

        A run whose key the client could not compute (:mod:`daskflow.engine.prefetch`: its
        upstream's value is on a worker and not versioned, or its policy reads what the workers
        see) would look itself up in a Dask task of its own: 10,000 tasks for a map of 10,000
        hits. Instead, the runs whose upstreams have all ended are looked up in one Dask task per
        worker holding their upstream values (:func:`.dask_worker.look_up_on_worker`), and only the
        misses are submitted, with the keys found there. Only for a map's worth of such runs
        (:data:`_ON_WORKERS_FROM`), since it costs a round trip first, and only where a hit found
        there may be ended here: a store the client sees as the workers do.
        """
        task = calls[0].task
        if len(calls) < _ON_WORKERS_FROM or not hits_usable_here(task, reach_of(self)):
            return None
        groups: dict[str | None, list[int]] = {}
        for position, call in enumerate(calls):
            if call.known_key is not None or call.crash is not None:
                continue  # looked up on the client already, or a crash retry (its run judges it)
            where: str | None = None
            for future in iter_upstreams((call.parameters, call.wait_for)):
                if not future.done():
                    break
                if where is None and isinstance(future, DaskFuture):
                    where = future.task_run.worker
            else:
                groups.setdefault(where, []).append(position)
        if sum(len(positions) for positions in groups.values()) < _ON_WORKERS_FROM:
            return None
        assert self.client is not None
        ship_code(self.client, self._router, task)
        definition = self._shared(self._definition(task, self._flow_info(calls[0])), len(calls))
        lookups = []
        for where, positions in groups.items():
            specs: list[RunSpec] = []
            deps: list[distributed.Future] = []
            index: dict[Any, int] = {}
            for position in positions:
                call = calls[position]
                specs.append(self._spec(call, deps, [], call.task_run.run_count, None, [], index))
            lookups.append(
                self.client.submit(
                    look_up_on_worker, definition, specs, deps,
                    key=f"{task.name}-lookup-{uuid.uuid4().hex}", pure=False,
                    workers=[where] if where else None, allow_other_workers=True,
                )
            )  # fmt: skip
        try:
            answers = self.client.gather(lookups)
        except Exception:  # a lookup lost with its worker, say: each run looks itself up, as before
            return None
        hits: list[State | None] = [None] * len(calls)
        for positions, answer in zip(groups.values(), answers):
            for position, (hit, key, entry) in zip(positions, answer):
                call = calls[position]
                call.known_key = key
                if hit is not None:
                    call.task_run.cache_key = entry
                    hits[position] = end_hit(call, hit)
        return hits

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
        made = (
            into if into is not None else DaskFuture.many(cast("DaskTaskRunner", self), calls)
        )  # the only kind of runner this layer is a base of
        items = [_map_items(call) for call in calls] if _map_items(calls[0]) else None
        if items is not None:
            self._take_items([item for some in items for item in some])
        # Where each run is asked for: nowhere in particular, but for a map over a future's items that
        # moves each item to its run. Not with resources: Dask drops a loose wish for a worker that
        # lacks them with the resources.
        spread: list[int] = []
        for position, (call, future) in enumerate(zip(calls, made)):
            deps: list[distributed.Future] = []
            ups: list[DaskFuture] = []
            attempts, crash = resume[position] if resume else (call.task_run.run_count, None)
            whole: list[bool] = []
            specs.append(self._spec(call, deps, ups, attempts, crash, whole))
            if items is not None and items[position] and not whole:
                spread.append(position)
            deps_lists.append(deps)
            future.upstreams = ups or NO_UPSTREAMS
            future.attempts = attempts
            # Before Dask has the task: its worker's report may come back before client.map returns.
            runs[call.task_run.id] = future
        if keys is None:
            prefix = f"{task.name}-"
            keys = [prefix + call.task_run.id.replace("-", "") for call in calls]
        count = len(calls)
        places = (self._places(spread, count) if spread and not task.options.resources else None) or {
            None: range(count)
        }
        dask_futures: list[Any] = [None] * count
        try:
            with annotate(**{MARK_ANNOTATION: True}):  # a daskflow task: its worker deaths are counted
                for place, positions in places.items():
                    every = len(positions) == count
                    placed = self.client.map(
                        run_on_worker,
                        [definition] * len(positions),
                        specs if every else [specs[i] for i in positions],
                        deps_lists if every else [deps_lists[i] for i in positions],
                        key=keys if every else [keys[i] for i in positions],
                        pure=False,
                        resources=task.options.resources,
                        workers=None if place is None else [place],
                        allow_other_workers=place is not None,
                    )
                    for i, dask_future in zip(positions, placed):
                        dask_futures[i] = dask_future
        except BaseException as exc:
            for call in calls:
                runs.pop(call.task_run.id, None)
            if isinstance(exc, TypeError) and pickling_failed(exc):
                raise unserializable(calls) from None
            raise
        for future, dask_future in zip(made, dask_futures):
            future.dask_future = dask_future
        return made

    def _places(self, spread: Sequence[int], count: int) -> dict[str | None, Sequence[int]] | None:
        """Where runs ``spread`` of ``count`` (those of a map over a future's items) go: the workers'
        threads in turn; the others anywhere (``None``).

        The items are taken out of the list where it lives (:meth:`expand_future`), so all of
        them are on one worker, and Dask runs a task where its dependencies are: every run of
        the map would go to that worker, one at a time, while the others idle (W7's twelve
        months ran on one of two workers). Each run is asked for on a worker in turn, by
        threads, so its item (not the whole list) moves to it. The wish is loose: a worker
        that is gone leaves the choice to Dask, and work stealing may still move a run.
        """
        assert self.client is not None
        threads = _worker_threads(self.client)
        if len(threads) < 2:
            return None
        slots = [address for address, n in sorted(threads.items()) for _ in range(max(1, n))]
        start, self._next_place = self._next_place, self._next_place + len(spread)
        places: dict[str | None, list[int]] = {}
        for turn, i in enumerate(spread):
            places.setdefault(slots[(start + turn) % len(slots)], []).append(i)
        if len(spread) < count:
            chosen = set(spread)
            places[None] = [i for i in range(count) if i not in chosen]
        return cast("dict[str | None, Sequence[int]]", places)

    def _take_items(self, wanted: Sequence[MapItem]) -> None:
        """Make the tasks that take the ``wanted`` items out of their lists, next to each list.

        Made when their runs are submitted, not when the map is made: a run found cached on
        the client (its key computed from the list's data version) needs no item.
        """
        assert self.client is not None
        by_list: dict[int, list[MapItem]] = {}
        for leaf in wanted:
            if leaf.item is None and _current(leaf):
                by_list.setdefault(id(leaf.source), []).append(leaf)
        for leaves in by_list.values():
            source = leaves[0].source
            assert source is not None
            made = self.client.map(
                item_state,
                [leaves[0].value.dask_future] * len(leaves),
                [leaf.index for leaf in leaves],
                key=[f"{source.prefix}-{leaf.index}" for leaf in leaves],
                pure=False,
                workers=[source.where] if source.where else None,
                allow_other_workers=True,
            )
            self._made += tuple(made)
            for leaf, item in zip(leaves, made):
                leaf.item = item

    def call(self, call: TaskCall) -> State:
        """A direct task call runs on the cluster too; its value comes back here."""
        [future] = self.submit_batch([call])
        future.wait()
        return future.state

    def expand_future(self, future: DaskflowFuture[Any]) -> list[Any]:
        """The items of a future's list value for ``.map``, without moving the list here.

        A cached upstream's worker reported its value's version and length: nothing is asked,
        and each item's cache key can be computed here. Otherwise the cluster is asked for the
        list's length and where it is, next to the list, and sends the list itself if it is smaller
        than dask.config ``daskflow.dask.map_fetch_below``: one transfer of a list of paths or ids
        costs far less than a Dask task per item to take each out of it.
        """
        if not isinstance(future, DaskFuture):
            return super().expand_future(future)
        assert self.client is not None
        future.wait()
        known = future.known_state()
        deferred = None if known is None else known.deferred
        length: int | None
        if deferred is not None and deferred.length is not None:
            length, where = deferred.length, future.task_run.worker
        else:
            below = int(parse_bytes(settings.get("dask.map_fetch_below")))
            length, where, small = self.client.submit(length_and_worker, future.dask_future, below, pure=False).result()
            if small is not None:  # a small list comes here: its values go with the runs, and key them here
                return list(small)
        if length is None:  # did not complete (each item fails as its downstream), or not items by position
            return list(future.result())
        run = future.task_run
        # Grouped as <task>-item on the dashboard; the items' tasks are made as their runs are submitted.
        source = MappedList(future.dask_future.key, where, known, f"{run.task_name}-item-{run.id.replace('-', '')}")
        return [MapItem(future, i, source) for i in range(length)]


def _current(leaf: MapItem) -> bool:
    """Whether the list is still the one the item was made for (a crash retry gives it another key)."""
    return leaf.source is not None and leaf.source.key == leaf.value.dask_future.key
