"""Cancelling flow runs in flight: from this process, and from another one through the run store.

Every flow run in flight in this process is registered here by its engine
(:func:`register`) with a *canceller*: a function that sets its
``cancel_event``, cancels its runner's futures (the same path Ctrl-C takes:
unstarted task runs never start, running ones end ``Cancelled``, their slots
are released) and interrupts the thread running the flow body. A subflow is
registered under its parent too, so cancelling a flow run cancels the subflow
it is waiting for. :func:`cancel_flow_run` cancels one run by id,
:func:`cancel_runs_in_thread` every run a thread started (``flow.serve`` uses
it to cancel the run in flight when it is stopped).

Another process asks through the run store (``daskflow runs cancel ID`` writes
a row in ``cancel_requests``). When run history is on, one daemon thread per
process — the *watcher* — polls that table every :data:`POLL_SECONDS` for the
ids of the flow runs registered here, in one query for all of them and none
when no flow run is in flight, and cancels those it finds. It opens its own
connection to the store on its own thread, so a flow run pays a dict insert
and removal, nothing more. A store that cannot be read never fails a run: the
first failure of an outage is one :class:`~daskflow.runstore.RunStoreWarning`,
and the watcher keeps trying.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daskflow.runstore import RunStoreWarning
from daskflow.runstore.urls import mask_password

if TYPE_CHECKING:
    from daskflow.runstore.cancellation import CancelRequest
    from daskflow.runstore.store import RunStore

__all__ = [
    "POLL_SECONDS",
    "cancel_flow_run",
    "cancel_runs_in_thread",
    "flow_runs_in_flight",
    "register",
    "unregister",
]

POLL_SECONDS = 0.5  # how often the watcher asks the run store; a request is seen within this
_log = logging.getLogger("daskflow.cancellation")

Canceller = Callable[[str], None]  # called with the reason, from any thread


@dataclass(slots=True)
class _Entry:
    canceller: Canceller
    lineage: tuple[str, ...]  # this run's id, then its parent's, up to the top-level flow run
    thread_id: int
    url: str | None  # the run store polled for it; None when history is off


_lock = threading.Lock()
_entries: dict[str, _Entry] = {}


def register(flow_run_id: str, parent_flow_run_id: str | None, canceller: Canceller, url: str | None) -> None:
    """Make the flow run ``flow_run_id`` cancellable until :func:`unregister`; poll ``url`` for it if given."""
    with _lock:
        parent = _entries.get(parent_flow_run_id) if parent_flow_run_id is not None else None
        lineage = (flow_run_id, *parent.lineage) if parent is not None else (flow_run_id,)
        if url is None and parent is not None:
            url = parent.url  # a subflow is polled where its top-level run is: `runs cancel` may name it
        _entries[flow_run_id] = _Entry(canceller, lineage, threading.get_ident(), url)
    if url is not None:
        _watcher().wake()


def unregister(flow_run_id: str) -> None:
    with _lock:
        _entries.pop(flow_run_id, None)


def flow_runs_in_flight() -> list[str]:
    """The ids of the flow runs in flight in this process, subflows included."""
    with _lock:
        return list(_entries)


def cancel_flow_run(flow_run_id: str, reason: str | None = None) -> bool:
    """Cancel the flow run ``flow_run_id`` in flight here, and its subflows; False if it is not here."""
    with _lock:
        chosen = [entry for entry in _entries.values() if flow_run_id in entry.lineage]
    # Subflows first: the parent's body is waiting for the innermost one to return.
    chosen.sort(key=lambda entry: -len(entry.lineage))
    for entry in chosen:
        _call(entry, reason or "the flow run was cancelled")
    return bool(chosen)


def cancel_runs_in_thread(thread_id: int, reason: str) -> list[str]:
    """Cancel every flow run in flight that the thread ``thread_id`` started; return their ids."""
    with _lock:
        roots = [entry.lineage[-1] for entry in _entries.values() if entry.thread_id == thread_id]
    for root in dict.fromkeys(roots):
        cancel_flow_run(root, reason)
    return list(dict.fromkeys(roots))


def _call(entry: _Entry, reason: str) -> None:
    try:
        entry.canceller(reason)
    except Exception:  # one run's broken cancel must not keep the others running
        _log.exception("cancelling flow run %s failed", entry.lineage[0])


class _Watcher:
    """The daemon thread that polls the run stores for cancel requests; see the module docstring."""

    def __init__(self) -> None:
        self._wakeup = threading.Event()
        self._stores: dict[str, RunStore] = {}
        self._failing: set[str] = set()  # urls in an outage, warned about once
        self._handled: set[str] = set()  # runs already told: a request stays in the table
        self._thread = threading.Thread(target=self._run, name="daskflow-cancel-watcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wakeup.set()

    def _run(self) -> None:
        while True:
            by_url = _polled()
            self._handled.intersection_update(run_id for ids in by_url.values() for run_id in ids)
            if not by_url:
                self._close_unused(set())
                self._wakeup.wait()  # nothing in flight: no queries until a run registers
                self._wakeup.clear()
                continue
            for url, ids in by_url.items():
                self._poll(url, ids)
            self._close_unused(set(by_url))
            self._wakeup.wait(POLL_SECONDS)
            self._wakeup.clear()

    def _poll(self, url: str, ids: list[str]) -> None:
        try:
            store = self._stores.get(url)
            if store is None:
                store = self._stores[url] = _open(url)
            requests = _pending(store, ids)
        except Exception as exc:
            self._outage(url, exc)
            return
        if url in self._failing:
            self._failing.discard(url)
            _log.info("The run store at %s answers again; cancel requests are seen again.", mask_password(url))
        for run_id, request in requests.items():
            if run_id in self._handled:
                continue
            self._handled.add(run_id)
            _log.info("Cancel requested for flow run %s%s", run_id, f": {request.reason}" if request.reason else "")
            cancel_flow_run(run_id, f"cancel requested{': ' + request.reason if request.reason else ''}")

    def _outage(self, url: str, exc: Exception) -> None:
        broken = self._stores.pop(url, None)
        if broken is not None:
            broken.close()
        if url in self._failing:
            return
        self._failing.add(url)
        message = (
            f"cannot read cancel requests from the run store at {mask_password(url)} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
            "the flow runs go on, but `daskflow runs cancel` cannot reach them until it answers again."
        )
        _log.warning("%s", message)
        warnings.warn(message, RunStoreWarning, stacklevel=1)

    def _close_unused(self, used: set[str]) -> None:
        for url in [u for u in self._stores if u not in used]:
            self._stores.pop(url).close()


def _polled() -> dict[str, list[str]]:
    """The ids of the flow runs in flight to poll for, by run store URL.

    A function of its own, so that no entry stays bound in the watcher's frame while it
    waits for the next run: an entry holds its run's engine, and with it the flow run and
    every task run it made (a map of 100,000 items), until another flow run starts.
    """
    by_url: dict[str, list[str]] = {}
    with _lock:
        for run_id, entry in _entries.items():
            if entry.url is not None:
                by_url.setdefault(entry.url, []).append(run_id)
    return by_url


def _open(url: str) -> RunStore:
    # Imported here, on the watcher's thread, as the history writer does: SQLAlchemy and
    # Alembic cost a tenth of a second to import, which `import daskflow` must not pay.
    from daskflow.runstore.store import RunStore

    return RunStore(url)


def _pending(store: RunStore, ids: list[str]) -> dict[str, CancelRequest]:
    from daskflow.runstore.cancellation import pending_cancel_requests  # brings SQLAlchemy: see _open

    return pending_cancel_requests(store, ids)


_watcher_lock = threading.Lock()
_the_watcher: _Watcher | None = None


def _watcher() -> _Watcher:
    global _the_watcher
    if _the_watcher is None:
        with _watcher_lock:
            if _the_watcher is None:
                _the_watcher = _Watcher()
    return _the_watcher
