"""Cache hits found where runs are submitted, a whole map at once, before anything is sent.

A cached run normally looks its entry up where it executes: on Dask, a Dask
task starts, computes its key on a worker, reads the entry and ends
``Cached``. For a map of 10,000 hits that is 10,000 Dask tasks doing almost
nothing, each costing the scheduler more than the work. Yet the key of a run
often needs nothing the submitting process lacks: its arguments are plain
values, or the states of upstream runs already known here (a versioned value
is keyed by its version, never read). :func:`look_up_calls` computes those
keys here and asks the store for all of them at once: a
:class:`~daskflow.results.batch.BatchLookup` reads and parses the entries of
the keys computed so far on threads while the next keys are computed (one
request per entry, and on remote storage one listing in all), and ends
each hit ``Cached`` on the spot through the engine's own
:meth:`~daskflow.engine.TaskRunEngine.finish`, so its state reaches the run
history like any other; only the misses are handed to the runner.

This is an optimisation, never a second judge: anything other than a clean
hit — an absent, expired, corrupt or foreign entry, a key that cannot be
computed here, an upstream that failed or is not known here — is left to the
run itself, which looks again the usual way, warns about what it finds and
fails or recomputes as it always did. So the guarantees of
:mod:`daskflow.engine.caching` hold unchanged: an entry another task wrote is
never a hit, and a corrupt one is a miss with a warning (from the run).

Which stores are looked up here: those the executing side sees as this
process sees them (:class:`ClientReach`). An object store (``s3://``...) is
the same everywhere; a local folder only when the workers share this
machine; ``memory://`` only when they share this process. Any other store
falls back to the lookup where the run executes, as before.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daskflow import settings
from daskflow.cache_policies import (
    CacheKeyFnPolicy,
    CompoundCachePolicy,
    FlowParameters,
    Inputs,
    NoCache,
    RunId,
    TaskSource,
    task_input_hash,
)
from daskflow.engine.caching import result_store, storage_key
from daskflow.engine.calls import TaskCall
from daskflow.engine.inputs import UNCHANGED, resolve_inputs, transform, wait_for_all
from daskflow.engine.task_engine import TaskRunEngine
from daskflow.exceptions import DaskflowError
from daskflow.futures import DaskflowFuture, FutureItem
from daskflow.results import ResultStore
from daskflow.results.batch import BatchLookup
from daskflow.results.deferred import StoredValue
from daskflow.states import Cached, DeferredData, KnownValue, State

__all__ = ["LOCAL_REACH", "ClientReach", "end_hit", "find_cached", "hits_usable_here", "look_up_calls", "reach_of"]

# Parts of a policy that key a run on what it is given and nothing else (a reference by its
# version): their key is the same wherever it is computed. A cache_key_fn, FileVersions (it
# reads paths that may be the workers') or a policy of the user's own may not be.
_PORTABLE = (Inputs, TaskSource, FlowParameters, RunId, NoCache)
# Fewer keys than this are looked up one by one: a listing of a large folder would cost more.
_LIST_FROM = 16
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_REACH_SECONDS = 5.0  # how long a cluster's answer (where its workers are) is trusted
# Arguments of these exact types hold no future, state or annotation: nothing to resolve before hashing.
_PLAIN = frozenset({str, bytes, int, float, bool, type(None), complex})


@dataclass(frozen=True)
class ClientReach:
    """Which storage the submitting process shares with where runs execute.

    ``same_process``: they execute in this process (``memory://`` is shared);
    ``same_host``: on this machine (a local folder is shared).
    """

    same_process: bool
    same_host: bool


LOCAL_REACH = ClientReach(same_process=True, same_host=True)
_cluster_reach: weakref.WeakKeyDictionary[Any, tuple[float, ClientReach]] = weakref.WeakKeyDictionary()
_reach_lock = threading.Lock()


def reach_of(runner: Any) -> ClientReach:
    """Where ``runner`` executes, as far as storage goes.

    A runner without a Dask ``client`` runs in this process. With one, the
    workers are asked for (once per few seconds per client): in this process
    if every worker is an ``inproc://`` one, on this machine if every worker
    listens on a loopback address.
    """
    client = getattr(runner, "client", None)
    if client is None:
        return LOCAL_REACH
    now = time.monotonic()
    cached = _cluster_reach.get(client)
    if cached is not None and now - cached[0] < _REACH_SECONDS:
        return cached[1]
    try:
        # nthreads() names every worker; scheduler_info()["workers"] is capped at 5 by some versions.
        addresses = list(client.nthreads())
        # inproc:// workers are threads of this process (LocalCluster(processes=False)).
        same_process = bool(addresses) and all(address.startswith("inproc://") for address in addresses)
        hosts = {_host_of(address) for address in addresses}
        same_host = same_process or (bool(hosts) and hosts <= _LOCAL_HOSTS)
    except Exception:  # a scheduler that cannot say: assume the workers see nothing of ours
        same_process = same_host = False
    reach = ClientReach(same_process=same_process, same_host=same_host)
    with _reach_lock:
        _cluster_reach[client] = (now, reach)
    return reach


def _host_of(address: str) -> str:
    rest = address.split("://", 1)[-1]
    host, _, _ = rest.rpartition(":")
    return host or rest


def _reachable(store: ResultStore, reach: ClientReach) -> bool:
    """Whether ``store`` holds the same entries here and where the runs execute."""
    strategy = store.strategy
    if strategy == "local":
        return reach.same_host
    if store.in_process:
        return reach.same_process
    return True  # object stores and network filesystems: one store, whoever asks


def _portable(policy: Any) -> bool:
    if isinstance(policy, CompoundCachePolicy):
        return all(_portable(part) for part in policy.policies)
    if isinstance(policy, CacheKeyFnPolicy):
        return policy.cache_key_fn is task_input_hash  # arguments and code only
    return isinstance(policy, _PORTABLE)


def _task_qualifies(task: Any, reach: ClientReach, portable: bool = True) -> bool:
    """Whether runs of ``task`` may be looked up before they are submitted (before any key is computed).

    ``portable``: only if their keys are the same wherever they are computed (to
    compute them here); a lookup on a worker (:func:`find_cached` with ``anywhere``)
    computes them where the runs would.
    """
    if not getattr(task, "caching", False):
        return False
    options = task.options
    if options.refresh_cache or options.task_run_name is not None:
        return False  # a forced recompute; a run name formed from the values themselves
    if portable and not _portable(task.cache_policy):
        return False
    # A hit ends here and runs its completion hooks here: only where the run would have run them.
    return not (options.on_completion and not reach.same_process)


def _store_here(task: Any, reach: ClientReach | None) -> ResultStore | None:
    """The task's store, if it holds the same entries here and where the runs execute (with ``reach``)."""
    try:
        store = result_store(task.options.result_storage)
    except DaskflowError:
        return None  # a storage that cannot be opened here: the run says why where it runs
    return store if reach is None or _reachable(store, reach) else None


def hits_usable_here(task: Any, reach: ClientReach) -> bool:
    """Whether hits of ``task``'s runs found on a worker may be ended here (their entries are the same
    here and there), though their keys need the worker (:func:`find_cached` with ``anywhere``)."""
    return _task_qualifies(task, reach, portable=False) and _store_here(task, reach) is not None


def look_up_calls(calls: Sequence[TaskCall], reach: ClientReach) -> list[State | None]:
    """For each call, its final ``Cached`` state if its entry was found here, else None (submit it).

    A call whose arguments hold a future (or an item of one) whose final state
    this process does not know (:meth:`~daskflow.futures.DaskflowFuture.known_state`:
    not done, or its value elsewhere and not versioned) is left to its run.
    Hits are ended through the engine (:func:`end_hit`), so they are recorded in
    the history and their hooks run, as for a hit found where the run executes.
    """
    found = find_cached(calls, reach)
    return [None if hit is None else end_hit(call, hit) for call, hit in zip(calls, found)]


def end_hit(call: TaskCall, hit: State) -> State:
    """End ``call``'s run with ``hit`` (from :func:`find_cached`), as its engine ends a hit."""
    return TaskRunEngine(call).finish(hit)


def find_cached(calls: Sequence[TaskCall], reach: ClientReach, anywhere: bool = False) -> list[State | None]:
    """For each call, the ``Cached`` state its run would end in (not ended yet) if its entry was found
    here, else None. A miss whose key was computed gets it as ``known_key``: its run looks it up
    again without hashing the same inputs again.

    ``anywhere``: on a worker, for calls whose hits the client ends (it checked
    :func:`hits_usable_here`): any policy, since the keys are computed where the runs execute.
    A key computed from reported data versions (:class:`~daskflow.states.RemoteValue`) names
    the value the run will be given: the same Dask result; should Dask compute it again after a
    worker is lost, it is the same task's value on the same inputs.
    """
    found: list[State | None] = [None] * len(calls)
    by_task: dict[int, list[int]] = {}
    for position, call in enumerate(calls):
        by_task.setdefault(id(call.task), []).append(position)
    for positions in by_task.values():
        task = calls[positions[0]].task
        if not (anywhere or _task_qualifies(task, reach)):
            continue
        store = _store_here(task, None if anywhere else reach)
        if store is None:
            continue
        keys: dict[int, str] = {}
        defer_above = int(settings.get("results.defer_above"))
        store.lookup_many((), defer_above=defer_above)  # loads pyarrow the store's way, before our threads
        # Keys are computed here while the lookup reads and parses the entries of those before on threads.
        with BatchLookup(store, defer_above=defer_above, list_from=_LIST_FROM) as lookup:
            for position in positions:
                call = calls[position]
                key = _key_here(call)
                if key is not None:
                    call.known_key = key
                    keys[position] = skey = storage_key(task.options.name, key)
                    lookup.add((skey,))
            entries = lookup.hits() if keys else {}
        for position, skey in keys.items():
            hit = entries.get(skey)
            if hit is None or hit[0].task_name != task.options.name:
                continue  # a miss, or another task's entry (the run itself warns and recomputes)
            info, value = hit
            data: DeferredData
            if value is store.NOT_READ:
                data = StoredValue(store, skey, info.version, info.length)
            elif isinstance(value, DeferredData):  # a small value still encoded: decoded if needed
                data = value
            else:
                data = KnownValue(value, info.version)
            calls[position].task_run.cache_key = skey
            found[position] = Cached(data, f"cache hit: {skey}")
    return found


class _NotHere(Exception):
    """An input whose final state this process does not know."""


def _known(leaf: Any, allowed: bool) -> Any:
    if isinstance(leaf, DaskflowFuture | FutureItem):
        state = leaf.known_state()
        if state is None:
            raise _NotHere
        return state
    return UNCHANGED


def _key_here(call: TaskCall) -> str | None:
    """The policy's key of ``call`` if every input it needs is known in this process, else None."""
    if call.crash is not None or (call.cancel_event is not None and call.cancel_event.is_set()):
        return None
    parameters = call.parameters
    plain = not call.wait_for and all(type(value) in _PLAIN for value in parameters.values())
    try:
        if not plain:  # futures, states, annotations or containers: resolved as the run resolves them
            parameters = transform(parameters, _known, unwrap=False)[0]
            where = f"task run {call.task_run.name!r}"
            if call.wait_for:
                wait_for_all(transform(list(call.wait_for), _known, unwrap=False)[0], where)
            parameters = resolve_inputs(parameters, where, [])
        context = call.run_context(parameters)
        key: str | None = call.task.cache_policy.compute_key(context, parameters, call.flow_parameters)
    except Exception:  # not known here, a failed upstream, an unhashable argument: the run ends as it always did
        return None
    return key
