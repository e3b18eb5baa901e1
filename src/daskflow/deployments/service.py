"""The scheduling service behind ``daskflow serve``: fire every due run of every deployment.

One loop, on one thread, and one thread per run in flight. The loop reads the
deployment list from the run store (one query) at start and then every
``poll_seconds``, so deployments applied, edited, paused, resumed or deleted
while it runs are picked up without a restart; :class:`~.planner.Planner`
turns that list and the clock into the times that are due (catch-up after
downtime, schedule changes, and the one-run-at-a-time rule are its). The loop
starts each due time on a thread of its own, at most
``max_concurrent_runs`` at once (a run mostly waits on its work pool's
cluster, not on this process), and then sleeps on the injectable
:class:`~daskflow.engine.serving.Clock` until the earliest next due time or
the next poll, whichever comes first, or until a run ends (a queued time may
start then). A fake clock therefore drives a day of schedules in seconds.

Each run goes through :func:`~.running.run_once` with kind ``"scheduled"``:
its time is claimed in the run store before it starts, one row per
(deployment, time), so however many services run against one store, each
time runs once. The service that loses the claim skips the time, logged at
DEBUG only: that is the normal state of affairs with two services.

**Stopping.** ``run(stop, cancel)`` returns once ``stop`` is set and the runs
in flight have ended; setting ``cancel`` too cancels them through the flow
engine (:func:`~daskflow.engine.cancellation.cancel_runs_in_thread`, as
``daskflow runs cancel`` does), so they end ``Cancelled`` and their claims say
so. ``daskflow serve`` maps the first SIGINT/SIGTERM to ``stop`` and the
second to ``cancel``.

**Leases: runs left by a dead service, and no overlap across services.** A
claim carries a lease that its process renews while the run is in flight
(:mod:`.running`; ``daskflow.deployments.lease``). At start and at every poll
the service looks for claims whose lease ran out — their process was killed,
or its machine lost — and marks them and their flow runs ``Crashed``, with a
message naming the dead service's host and pid (:func:`~daskflow.runstore.leases.reap_expired`;
of several services, one does it). Their times are not run again (a flow that
half ran may not be safe to repeat blindly; run the deployment by hand,
``daskflow deployment run NAME``, to redo one); the deployment's next time runs
as scheduled, once. Claims with a live lease are runs in flight in another
service (listed at start): a deployment that does not allow concurrent runs
starts no run of its own meanwhile — the time is skipped with a warning, as a
time that comes due during this service's own run is.

**Queued runs.** At start and at every poll the service also takes the runs
queued for now (the server's Run button, :mod:`.queue`), oldest first, each
taken by exactly one service (:func:`~daskflow.runstore.queued.take_queued`),
and starts them as manual runs under their queued ids, within
``max_concurrent_runs`` too.

**Triggers.** Before that, at start and at every poll, the deployments'
event triggers are matched against the events written since the last poll
(:mod:`.triggers`): each matching event queues one run, once across every
service on the store, which then starts as any queued run.

**A served flow's service.** ``flow.serve()`` runs a service limited to its
own deployments (``flows=``, name -> the flow object, used as is rather than
imported again), which leaves the store's other deployments to their services.

Flow runs record their history in the configured run store
(``daskflow.runstore.url``); keep it the same as ``store_url``
(``daskflow serve --url`` does that for you).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from daskflow.deployments.deployment import Deployment
from daskflow.deployments.planner import DeploymentPlan, Planner
from daskflow.deployments.queue import start_queued
from daskflow.deployments.running import lease_seconds, run_once
from daskflow.deployments.triggers import TriggerWatcher
from daskflow.engine.cancellation import cancel_runs_in_thread
from daskflow.engine.serving import Clock, SystemClock
from daskflow.exceptions import ConfigurationError, DaskflowError
from daskflow.flows import Flow
from daskflow.runstore import deployments as rows
from daskflow.runstore.deployments import DeploymentRecord, RunInFlightError
from daskflow.runstore.errors import RunStoreUnavailableError
from daskflow.runstore.leases import crash_message, reap_expired
from daskflow.runstore.queued import QueuedRun, fail_queued, queued_runs, take_queued
from daskflow.runstore.store import RunStore
from daskflow.states import State

__all__ = [
    "DEFAULT_MAX_CONCURRENT_RUNS",
    "DEFAULT_POLL_SECONDS",
    "DeploymentService",
    "unfinished_claims",
]

DEFAULT_POLL_SECONDS = 5.0
DEFAULT_MAX_CONCURRENT_RUNS = 10
_RECANCEL_SECONDS = 0.5  # a run may not be registered with its engine yet the first time it is cancelled
_CANCEL_GRACE_SECONDS = 30.0  # after cancelling, how long to wait for the runs before leaving them
_BRIDGE_SECONDS = 1.0  # how soon the stop-event bridge notices that run() has returned
_log = logging.getLogger("daskflow.service")


def unfinished_claims(store: RunStore, deployment_ids: list[str]) -> list[rows.DeploymentRunInfo]:
    """The claimed times of these deployments that have no final state, oldest first."""
    found = [claim for dep in deployment_ids for claim in rows.list_runs(store, dep) if claim.state_type is None]
    return sorted(found, key=lambda claim: claim.claimed_at)


class DeploymentService:
    """Fire the due runs of every deployment in a run store until stopped; see the module docstring.

    ``store_url`` is the run store (None: the configured one); ``clock`` the
    time source (tests pass a fake one); ``poll_seconds`` how often the
    deployment list is read again; ``max_concurrent_runs`` how many runs, of
    all deployments together, may be in flight at once (a due time waits for
    a free slot); ``name`` what the claims record as ``claimed_by``;
    ``flows`` limits the service to the deployments it names, run with those
    flow objects (``flow.serve``'s service).
    """

    def __init__(
        self,
        store_url: str | None = None,
        *,
        clock: Clock | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS,
        name: str | None = None,
        flows: Mapping[str, Flow[Any, Any]] | None = None,
    ) -> None:
        if isinstance(poll_seconds, bool) or not isinstance(poll_seconds, (int, float)) or poll_seconds <= 0:
            raise ConfigurationError(f"serve: poll_seconds={poll_seconds!r} must be a number of seconds > 0, e.g. 5.")
        if isinstance(max_concurrent_runs, bool) or not isinstance(max_concurrent_runs, int) or max_concurrent_runs < 1:
            raise ConfigurationError(
                f"serve: max_concurrent_runs={max_concurrent_runs!r} must be an int >= 1, e.g. 10."
            )
        self.store_url = store_url
        self.clock: Clock = clock or SystemClock()
        self.poll = timedelta(seconds=poll_seconds)
        self.max_concurrent_runs = max_concurrent_runs
        self.id = name or f"serve@{rows.claimant()}"
        self.lease = lease_seconds()  # checked now: a bad daskflow.deployments.lease is an error at start
        self._lock = threading.Condition()  # guards the plans' `running` and `_runs`; notified as runs end
        self._runs: dict[threading.Thread, tuple[str, datetime]] = {}
        self._wake = threading.Event()  # set by `stop` (through the bridge) and by every run that ends
        self._store_failing = False
        self._flows = dict(flows or {})
        self._only = set(self._flows) if flows is not None else None
        self._final: list[tuple[str, State]] = []  # (deployment name, final state) of the runs started here
        self._triggers = TriggerWatcher(datetime.now(UTC), self.id)
        self.trigger_polls = 0  # how many times the events were matched against triggers (tests wait on it)

    def final_states(self) -> dict[str, list[State]]:
        """The final states of the runs this service started, by deployment name, in the order they ended."""
        with self._lock:
            found: dict[str, list[State]] = {name: [] for name in self._only or ()}
            for name, state in self._final:
                found.setdefault(name, []).append(state)
            return found

    def _mine(self, records: list[DeploymentRecord]) -> list[DeploymentRecord]:
        return records if self._only is None else [r for r in records if r.name in self._only]

    def _bind_flows(self, planner: Planner) -> None:
        # Plans are rebuilt from the store when a deployment changes: give each the flow object again.
        for plan in planner.plans.values():
            flow = self._flows.get(plan.name)
            if flow is not None and plan.deployment.flow is None:
                plan.deployment.flow = flow

    def _fire_triggers(self, store: RunStore, planner: Planner) -> None:
        try:
            self._triggers.fire(store, [plan.deployment for plan in planner.plans.values()], datetime.now(UTC))
        except RunStoreUnavailableError as exc:
            _log.warning("%s; events are matched against triggers again at the next poll", exc)
        self.trigger_polls += 1

    def __repr__(self) -> str:
        return f"DeploymentService({self.id!r}, max_concurrent_runs={self.max_concurrent_runs})"

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, cancel: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set, then wait for the runs in flight (cancelled if ``cancel`` is set)."""
        cancel = cancel or threading.Event()
        with RunStore(self.store_url) as store, self._stop_wakes(stop):
            planner = Planner(lambda deployment_id: rows.last_scheduled_time(store, deployment_id))
            now = self.clock.now()
            with self._lock:
                planner.refresh(self._mine(rows.list_deployments(store)), now)
                self._bind_flows(planner)
            self._reap(store, planner)
            self._report_unfinished(store, planner)
            self._summary(store, planner, now)
            self._fire_triggers(store, planner)
            with self._lock:
                self._start_queued(store, planner)
            next_poll = now + self.poll
            while not stop.is_set():
                self._wake.clear()  # before looking: a run that ends after this wakes the next wait
                now = self.clock.now()
                with self._lock:
                    if now >= next_poll:
                        self._poll(store, planner, now)
                        self._fire_triggers(store, planner)
                        self._start_queued(store, planner)
                        next_poll = now + self.poll
                    planner.advance(now)
                    self._start_runs(store, planner)
                    due = planner.next_due()
                self.clock.wait_until(next_poll if due is None else min(due, next_poll), self._wake)
            self._drain(cancel)
        _log.info("%s stopped", self.id)

    @contextmanager
    def _stop_wakes(self, stop: threading.Event) -> Iterator[None]:
        # The clock waits on one event, ours; the caller's `stop` is another. A small thread joins
        # them, so that a stop cuts a wait short at once (a run ending sets ours directly).
        returned = threading.Event()

        def bridge() -> None:
            while not returned.is_set():
                if stop.wait(_BRIDGE_SECONDS):
                    self._wake.set()
                    return

        threading.Thread(target=bridge, name="daskflow-serve-stop", daemon=True).start()
        try:
            yield
        finally:
            returned.set()

    def _poll(self, store: RunStore, planner: Planner, now: datetime) -> None:
        try:
            records = rows.list_deployments(store)
        except RunStoreUnavailableError as exc:
            # A blip of the database must not end the service: keep the plans it has, try again.
            if not self._store_failing:
                _log.warning("%s; serving the deployments known so far until it answers again", exc)
            self._store_failing = True
            return
        if self._store_failing:
            _log.info("the run store at %s answers again", store.display_url)
            self._store_failing = False
        planner.refresh(self._mine(records), now)
        self._bind_flows(planner)
        try:
            self._reap(store, planner)
        except RunStoreUnavailableError as exc:
            _log.warning("%s; runs left by dead services are looked for again at the next poll", exc)

    def _reap(self, store: RunStore, planner: Planner, deployment_ids: list[str] | None = None) -> None:
        names = {plan.record.id: plan.name for plan in planner.plans.values()}
        if deployment_ids is None and self._only is not None:
            deployment_ids = list(names)
        for claim in reap_expired(store, self.id, deployment_ids):
            _log.warning(
                "deployment %r: the run for %s%s was left without a final state; marked Crashed. %s Its time is "
                "not run again; the next time runs as scheduled.",
                names.get(claim.deployment_id, claim.deployment_id), claim.scheduled_time.isoformat(),
                f" (flow run {claim.flow_run_id})" if claim.flow_run_id else "", crash_message(claim, self.id),
            )  # fmt: skip

    def _start_runs(self, store: RunStore, planner: Planner) -> None:
        for plan, at in planner.startable():
            if len(self._runs) >= self.max_concurrent_runs:
                _log.debug("%d runs in flight (max_concurrent_runs): %r waits for a slot", len(self._runs), plan.name)
                return
            if not plan.record.allow_concurrent_runs:
                # A claim whose lease ran out since the last poll's reap is no longer in flight to
                # the claim's check: reap it first, so that it ends Crashed before the next time
                # starts, not beside it (one query per run started).
                try:
                    self._reap(store, planner, [plan.record.id])
                except RunStoreUnavailableError as exc:
                    _log.warning("%s; runs left by dead services are looked for again at the next poll", exc)
            plan.pending.popleft()
            plan.running = at
            thread = threading.Thread(
                target=self._run_one, args=(store, plan, at), name=f"daskflow-serve-{plan.name}", daemon=True
            )
            self._runs[thread] = (plan.name, at)
            thread.start()

    def _start_queued(self, store: RunStore, planner: Planner) -> None:
        free = self.max_concurrent_runs - len(self._runs)
        if free <= 0:
            return
        try:
            # Limited to some deployments: look further, past the runs queued for the others.
            waiting = queued_runs(store, limit=free if self._only is None else free + 500)
        except RunStoreUnavailableError as exc:
            _log.warning("%s; queued runs are looked for again at the next poll", exc)
            return
        plans = {plan.record.id: plan for plan in planner.plans.values()}
        if self._only is not None:
            waiting = [queued for queued in waiting if queued.deployment_id in plans][:free]
        for queued in waiting:
            if not take_queued(store, queued.flow_run_id, self.id):
                continue  # another service took it: it runs there
            plan = plans.get(queued.deployment_id)
            # Applied since this service last read the list: read it now rather than wait a poll.
            record = plan.record if plan is not None else rows.get_deployment(store, queued.deployment_id)
            if record is None:
                fail_queued(store, queued.flow_run_id, f"deployment {queued.deployment_name!r} no longer exists")
                continue
            deployment = plan.deployment if plan is not None else Deployment.from_record(record)
            thread = threading.Thread(
                target=self._run_queued, args=(store, deployment, queued), name=f"daskflow-serve-{record.name}",
                daemon=True,
            )  # fmt: skip
            self._runs[thread] = (record.name, queued.queued_at)
            thread.start()

    def _run_queued(self, store: RunStore, deployment: Deployment, queued: QueuedRun) -> None:
        name = deployment.name
        _log.info("deployment %r: starting queued flow run %s", name, queued.flow_run_id)
        try:
            state = start_queued(deployment, store, queued, self.id)
        except DaskflowError as exc:
            _log.error("deployment %r: queued flow run %s could not start: %s", name, queued.flow_run_id, exc)
        except BaseException:
            _log.exception("deployment %r: queued flow run %s raised", name, queued.flow_run_id)
        else:
            if state is not None:
                _log.info("deployment %r: queued flow run %s ended %s", name, queued.flow_run_id, state.name)
                with self._lock:
                    self._final.append((name, state))
        finally:
            with self._lock:
                self._runs.pop(threading.current_thread(), None)
                self._wake.set()
                self._lock.notify_all()

    def _run_one(self, store: RunStore, plan: DeploymentPlan, at: datetime) -> None:
        name = plan.name
        _log.debug("deployment %r: starting the run for %s", name, at.isoformat())
        exclusive = not plan.record.allow_concurrent_runs
        try:
            state = run_once(plan.deployment, store, at, "scheduled", None, self.id, exclusive=exclusive)
        except RunInFlightError as exc:
            _log.warning(
                "deployment %r: its time %s is skipped: %s. Runs of one deployment never overlap, across "
                "services too (unless it allows concurrent runs); the next is at %s.",
                name, at.isoformat(), exc, plan.next_time.isoformat() if plan.next_time else "(none)",
            )  # fmt: skip
        except DaskflowError as exc:  # a flow that no longer imports, an unknown work pool: the user's to fix
            _log.error("deployment %r: the run for %s could not start: %s", name, at.isoformat(), exc)
        except BaseException:  # anything else must not take the service down with it
            _log.exception("deployment %r: the run for %s raised", name, at.isoformat())
        else:
            if state is None:
                _log.debug("deployment %r: %s was claimed by another service; skipped", name, at.isoformat())
            else:
                with self._lock:
                    self._final.append((name, state))
                flow_run = getattr(state, "flow_run", None)
                _log.info(
                    "deployment %r: the run for %s ended %s%s",
                    name, at.isoformat(), state.name, f" (flow run {flow_run.id})" if flow_run is not None else "",
                )  # fmt: skip
        finally:
            with self._lock:
                self._runs.pop(threading.current_thread(), None)
                if plan.running == at:
                    plan.running = None
                # Woken before notified: whoever waited for this run to end finds the loop's wake set.
                self._wake.set()
                self._lock.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no run is in flight; False if ``timeout`` seconds passed first.

        A fake clock calls it before moving time on, to model runs that take no
        time; it is also a way for an embedding program to drain the service.
        """
        with self._lock:
            return self._lock.wait_for(lambda: not self._runs, timeout)

    # -- stopping ---------------------------------------------------------------------------

    def _drain(self, cancel: threading.Event) -> None:
        announced = False
        deadline: float | None = None
        while True:
            with self._lock:
                in_flight = dict(self._runs)
                if not in_flight:
                    return
                if not announced:
                    announced = True
                    _log.warning(
                        "stopping: waiting for %d run(s) in flight to end (a second signal cancels them): %s",
                        len(in_flight), ", ".join(f"{n!r} for {t.isoformat()}" for n, t in in_flight.values()),
                    )  # fmt: skip
                # A poll, not only a notification: signals set `cancel` and cannot notify a condition.
                self._lock.wait(_RECANCEL_SECONDS)
            if not cancel.is_set():
                continue
            if deadline is None:
                deadline = time.monotonic() + _CANCEL_GRACE_SECONDS
                _log.warning("cancelling %d run(s) in flight", len(in_flight))
            for thread in in_flight:
                if thread.ident is not None:
                    cancel_runs_in_thread(thread.ident, f"the scheduling service {self.id} was stopped")
            if time.monotonic() > deadline:
                _log.error(
                    "%d run(s) did not end within %.0f s of being cancelled; leaving them (their claims stay "
                    "without a final state, and the next start lists them)", len(in_flight), _CANCEL_GRACE_SECONDS,
                )  # fmt: skip
                return

    # -- reports ----------------------------------------------------------------------------

    def _report_unfinished(self, store: RunStore, planner: Planner) -> None:
        names = {plan.record.id: plan.name for plan in planner.plans.values()}
        unfinished = unfinished_claims(store, list(names))
        if not unfinished:
            return
        listed = "; ".join(
            f"{names[c.deployment_id]!r} at {c.scheduled_time.isoformat()} ({c.kind}, claimed by {c.claimed_by}, "
            f"lease until {c.lease_expires.isoformat(timespec='seconds') if c.lease_expires else '?'})"
            for c in unfinished[:20]
        )
        more = f"; and {len(unfinished) - 20} more" if len(unfinished) > 20 else ""
        _log.info(
            "%d run(s) in flight in other processes, under live leases: %s%s. Their deployments start no other "
            "run meanwhile unless they allow concurrent runs.", len(unfinished), listed, more,
        )  # fmt: skip

    def _summary(self, store: RunStore, planner: Planner, now: datetime) -> None:
        plans = sorted(planner.plans.values(), key=lambda plan: plan.name)
        _log.info(
            "serving %d deployment(s) from %s as %s (at most %d runs at once; deployments re-read every %s s; "
            "claims leased for %s s)",
            len(plans), store.display_url, self.id, self.max_concurrent_runs, f"{self.poll.total_seconds():g}",
            f"{self.lease:g}",
        )  # fmt: skip
        for plan in plans:
            if plan.record.paused:
                status = "paused"
            elif plan.schedule is None:
                status = "no schedule (manual runs only)"
            elif plan.record.served_by is not None:
                status = f"its schedule fires in the process serving it ({plan.record.served_by}, flow.serve)"
            else:
                catching_up = f", {len(plan.pending)} missed time(s) to catch up" if plan.pending else ""
                status = f"next at {plan.next_time.isoformat() if plan.next_time else '(none)'}{catching_up}"
            _log.info("  %s: %s", plan.name, status)
