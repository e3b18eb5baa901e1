"""The client side of the Dask runner's event stream: worker events applied to run records.

Workers send their runs' state changes, log records and artifacts in batches
on the ``daskflow`` topic (see :mod:`.dask_worker`). One :class:`EventRouter`
per client applies them here: a state to the run record of this process (so
``future.state``, the console and the run history look as on the local
runners), a record re-emitted through this process's loggers, an artifact
published for the run history. A run's final state from its latest attempt
also tells the runner that everything the run reported has arrived, and lets
the client drop what it kept to resubmit the run.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from distributed import Client

from daskflow.concurrency.distributed_compat import install_crash_counter
from daskflow.engine import TaskCall
from daskflow.states import FINAL_TYPE_NAMES
from daskflow.task_runners.dask_worker import EVENT_TOPIC, decode_state, mark_client_process, replay_artifact

__all__ = ["RELEASED_PARAMETERS", "EventRouter", "router_for"]

_log = logging.getLogger("daskflow.dask")
# The parameters of a call that ended on the cluster, once the client has let them go.
RELEASED_PARAMETERS: dict[str, Any] = {}


class EventRouter:
    """Applies the ``daskflow`` events of one client to this process's run records."""

    def __init__(self, client: Client) -> None:
        self.runs: dict[str, TaskCall] = {}
        self.changed = threading.Condition()
        self.synced: dict[str, int] = {}
        self.interim: set[str] = set()  # runs whose last state is a crash they went on from
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
        interim = False
        if len(encoded) > 5:  # facts that ride with the state: a folded start time, the cache key
            extras = encoded[5]
            if run.start_time is None:
                run.start_time = extras.get("start")
            run.cache_key = extras.get("key", run.cache_key)
            interim = bool(extras.get("interim"))  # a crash the run went on from: not its end
        final = encoded[0] in _FINAL_TYPES and not interim
        run.run_count = max(run.run_count, run_count)
        run.worker = run.worker or worker
        # Else the client ended it first (from the result it fetched), unless that was a crash it went on from.
        if not run.state.is_final() or run_id in self.interim:
            run.worker = worker
            run.set_state(decode_state(encoded))
            if interim:
                self.interim.add(run_id)
            else:
                self.interim.discard(run_id)
        if final and run_count >= run.run_count:  # the latest attempt's end, not a stale one
            # Done on the cluster, which keeps its own graph for recomputing a lost value:
            # what the client kept to resubmit the run is dead weight (a map of 100,000 items).
            # The marker also tells the runner that this run's records have all arrived.
            del self.runs[run_id]
            call.parameters = RELEASED_PARAMETERS
            call.wait_for = ()


_FINAL_TYPES = FINAL_TYPE_NAMES


def _emit_record(item: list[Any]) -> None:
    (_, run_id, name, level, message, created, exc_text, run_name, task_name, flow_run_id, flow_run_name, flow_name) = (
        item
    )
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


_routers: dict[int, tuple[Client, EventRouter]] = {}
_routers_lock = threading.Lock()


def router_for(client: Client) -> EventRouter:
    mark_client_process()
    with _routers_lock:
        for key, (known, _) in list(_routers.items()):
            if known.status in ("closed", "closing"):  # forget closed clients (their ids get reused)
                del _routers[key]
        entry = _routers.get(id(client))
        if entry is None or entry[0] is not client:
            entry = _routers[id(client)] = (client, EventRouter(client))
        return entry[1]
