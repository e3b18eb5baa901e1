"""Firing a schedule's runs: the loop behind ``flow.serve`` and, later, the ``daskflow serve`` service.

:func:`run_schedule` is the loop. It asks the schedule for the first time
strictly after "now", waits for it on a :class:`Clock` (so tests inject a
fake one on which a day passes in milliseconds), fires it by calling
``fire(ScheduledRun)``, and repeats from the time it just fired, never from
"now": the next time comes from the schedule alone, so the loop never drifts
however long a wait overslept or a run took, and each time is fired once, in
order. ``fire`` runs one scheduled time to its end; the loop does not overlap
runs. A run that outlasts the next scheduled time(s) makes them *missed*:
they are skipped, each named in one warning, and the loop waits for the first
time still ahead — running them late, back to back, would pile up behind a
slow run and hand every one of them stale data. The loop returns when the
``stop`` event is set (at once while waiting, after the run in flight
otherwise), after ``limit`` runs, or when the schedule ends.

:func:`render_parameters` fills the ``{{ scheduled_time }}``,
``{{ data_interval_start }}`` and ``{{ data_interval_end }}`` templates of a
run's parameters; :func:`render_templates`, the walk over one value that it
uses, is pure and shared with deployments and backfills.
:func:`serve_flow` puts both around one flow in this process: each run in
a thread of its own, so that the main thread stays free for SIGINT/SIGTERM.
The first signal stops the loop; the run in flight then finishes
(``on_stop="finish"``) or is cancelled (``on_stop="cancel"``, through
:mod:`daskflow.engine.cancellation`, as ``daskflow runs cancel`` does). A
second signal cancels the run in flight and returns without waiting for it.

**The deployments seam.** ``flow.deploy(...)``, ``flow.serve()`` with no
schedule and ``serve(..., triggers=...)`` need the run store's deployments,
which live in a layer *above* flows (``daskflow.deployments`` imports
``daskflow.flows``, so the reverse import would be a cycle the layer rules
forbid). :func:`deployment_backend` is the one sanctioned way down-to-up: it
returns the :class:`DeploymentBackend` that :mod:`daskflow.deployments.flow_api`
installs with :func:`install_deployment_backend` when it is imported, and
imports that module by name (:data:`DEPLOYMENT_BACKEND_MODULE`) the first time
it is asked, so ``import daskflow`` stays free of the deployments' imports. A
test pins that this is the only place that names an upper layer.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from daskflow.context import ScheduledRunInfo, starting_scheduled_run
from daskflow.engine.cancellation import cancel_runs_in_thread
from daskflow.exceptions import ConfigurationError
from daskflow.logging import configure_console_logging
from daskflow.runs import DeploymentRef
from daskflow.states import Cancelled, Crashed, State

if TYPE_CHECKING:
    from daskflow.schedules import Schedule

__all__ = [
    "DEPLOYMENT_BACKEND_MODULE",
    "ON_STOP",
    "TEMPLATE",
    "TEMPLATE_NAMES",
    "Clock",
    "DeploymentBackend",
    "ScheduledRun",
    "StoreServing",
    "SystemClock",
    "deployment_backend",
    "install_deployment_backend",
    "render_parameters",
    "render_templates",
    "run_schedule",
    "serve_flow",
]

T = TypeVar("T")
_log = logging.getLogger("daskflow.serve")

TEMPLATE_NAMES = ("scheduled_time", "data_interval_start", "data_interval_end")
# {{ name }} or {{ name | strftime format }}
TEMPLATE = re.compile(r"\{\{\s*(?P<name>[A-Za-z_][\w.]*)\s*(?:\|\s*(?P<format>[^}]*?)\s*)?\}\}")
# How a caller words an unknown template: (where, the template as written, the text it is in) -> error.
UnknownTemplate = Callable[[str, "re.Match[str]", str], Exception]
_MISSED_SHOWN = 5  # missed times named in the warning; the rest are counted
_LONGEST_NAP = 60.0  # seconds the system clock sleeps before looking at the wall clock again
ON_STOP = ("finish", "cancel")
# While stopping with on_stop="cancel", how often the cancel is sent again: the run may not have
# reached the point where it can be cancelled (registered with its engine) the first time.
_RECANCEL_SECONDS = 0.5


class Clock(Protocol):
    """What the loop needs of time: the current instant, and a wait that a stop event cuts short."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def wait_until(self, moment: datetime, stop: threading.Event) -> bool:
        """Return at ``moment``, or as soon as ``stop`` is set; True if ``stop`` is set."""
        ...


class SystemClock:
    """The real clock: waits by wall-clock time, so a suspended laptop or a clock change is caught up."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait_until(self, moment: datetime, stop: threading.Event) -> bool:
        while True:
            remaining = (moment - self.now()).total_seconds()
            if remaining <= 0:
                return stop.is_set()
            # Event.wait counts monotonic seconds; a short nap re-reads the wall clock, which may jump.
            if stop.wait(min(remaining, _LONGEST_NAP)):
                return True


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """One time to fire: the scheduled time and the schedule's time before it (its data interval)."""

    scheduled_time: datetime
    previous_time: datetime | None
    index: int  # 0 for the first run this loop fired

    @property
    def data_interval(self) -> tuple[datetime, datetime]:
        """(previous scheduled time, this one); empty (both this one) when the schedule has no earlier time."""
        start = self.previous_time if self.previous_time is not None else self.scheduled_time
        return start, self.scheduled_time


def render_parameters(
    parameters: Mapping[str, Any] | None, scheduled_time: datetime, previous_time: datetime | None
) -> dict[str, Any]:
    """``parameters`` with every ``{{ name }}`` template in its strings replaced by a time.

    ``scheduled_time`` and ``data_interval_end`` are ``scheduled_time``;
    ``data_interval_start`` is ``previous_time`` (the schedule's time before
    it), or ``scheduled_time`` again when there is none. Times become ISO 8601
    strings in the schedule's own zone, offset included
    (``2024-03-31T03:00:00+02:00``), also when the template is the whole
    value: parameters travel as JSON (the run store, a deployment), and a
    parameter annotated ``datetime`` is parsed back by the flow's parameter
    validation; ``{{ name | %Y-%m-%d }}`` formats with strftime instead.
    Strings inside lists, tuples and dicts are rendered too; other values pass
    through unchanged. An unknown ``{{ name }}`` is an error naming the
    parameter, so a typo does not reach the flow as text.
    """
    start = previous_time if previous_time is not None else scheduled_time
    times = {"scheduled_time": scheduled_time, "data_interval_start": start, "data_interval_end": scheduled_time}
    return {name: render_templates(value, times, name, _unknown) for name, value in (parameters or {}).items()}


def _unknown(where: str, match: re.Match[str], text: str) -> Exception:
    return ConfigurationError(
        f"parameter {where!r}: unknown template {match.group(0)!r} in {text!r}. "
        f"Fix: use one of {', '.join('{{ ' + n + ' }}' for n in TEMPLATE_NAMES)}."
    )


def render_templates(value: Any, times: Mapping[str, datetime], where: str, unknown: UnknownTemplate) -> Any:
    """``value`` with each template in its strings (and in nested lists, tuples, dicts) filled from ``times``.

    A template renders as ISO 8601, or through the strftime format after its
    bar; one whose name ``times`` lacks raises ``unknown(where, match, text)``,
    ``where`` naming the place (``day``, ``d['k']``, ``rows[2]``).
    """
    if isinstance(value, str):
        if "{{" not in value:
            return value

        def one(match: re.Match[str]) -> str:
            moment = times.get(match["name"])
            if moment is None:
                raise unknown(where, match, value)
            return moment.strftime(match["format"]) if match["format"] else moment.isoformat()

        return TEMPLATE.sub(one, value)
    if isinstance(value, Mapping):
        return {key: render_templates(item, times, f"{where}[{key!r}]", unknown) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        rendered = [render_templates(item, times, f"{where}[{i}]", unknown) for i, item in enumerate(value)]
        return rendered if isinstance(value, list) else tuple(rendered)
    return value


def run_schedule(
    schedule: Schedule,
    fire: Callable[[ScheduledRun], T],
    *,
    stop: threading.Event,
    clock: Clock | None = None,
    limit: int | None = None,
    name: str = "schedule",
    on_missed: Callable[[list[datetime], int], None] | None = None,
) -> list[T]:
    """Fire ``schedule``'s times with ``fire`` until ``stop`` is set; return what each call returned.

    See the module docstring. ``limit`` stops after that many runs; ``name``
    labels the log lines; ``on_missed(shown, count)`` is told about times
    skipped because a run outlasted them (after the warning is logged).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(f"{name}: limit={limit!r} must be a positive int (or None: run until stopped)")
    clock = clock or SystemClock()
    results: list[T] = []
    upcoming = schedule.next_times(1, start=clock.now())
    if not upcoming:
        _log.info("%s: the schedule %r has no time ahead; nothing to run", name, schedule)
        return results
    due = upcoming[0]
    previous = schedule.previous_time(due)
    _log.info("%s: waiting for %s (%r)", name, due.isoformat(), schedule)
    for index in itertools.count():
        if clock.wait_until(due, stop):
            break
        ahead = schedule.next_times(1, start=due)
        _log.info(
            "%s: firing the run scheduled for %s; the next is at %s",
            name, due.isoformat(), ahead[0].isoformat() if ahead else "(none: the schedule ends)",
        )  # fmt: skip
        results.append(fire(ScheduledRun(due, previous, index)))
        if stop.is_set() or (limit is not None and len(results) >= limit) or not ahead:
            break
        previous, due = due, ahead[0]
        now = clock.now()
        if due <= now:
            previous, following = _skip_missed(schedule, due, now, name, on_missed)
            if following is None:
                break
            due = following
    return results


def _skip_missed(
    schedule: Schedule,
    first_missed: datetime,
    now: datetime,
    name: str,
    on_missed: Callable[[list[datetime], int], None] | None,
) -> tuple[datetime, datetime | None]:
    """Skip the times up to ``now`` that a long run overlapped; return (last skipped, next ahead)."""
    shown: list[datetime] = []
    count = 0
    last = first_missed
    for moment in schedule.times_between(first_missed, now):
        count += 1
        last = moment
        if len(shown) < _MISSED_SHOWN:
            shown.append(moment)
    more = f" and {count - len(shown)} more" if count > len(shown) else ""
    ahead = schedule.next_times(1, start=now)
    _log.warning(
        "%s: the previous run outlasted %d scheduled time(s), skipped: %s%s. Runs never overlap; the next "
        "is at %s. If runs often take longer than the interval, make the schedule sparser.",
        name, count, ", ".join(t.isoformat() for t in shown), more,
        ahead[0].isoformat() if ahead else "(none: the schedule ends)",
    )  # fmt: skip
    if on_missed is not None:
        on_missed(shown, count)
    return last, ahead[0] if ahead else None


def serve_flow(
    flow: Any,
    schedule: Schedule,
    *,
    name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    on_stop: str = "finish",
    limit: int | None = None,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
    tags: frozenset[str] = frozenset(),
    deployment_id: str | None = None,
) -> list[State]:
    """Run ``flow`` at each time of ``schedule`` in this process until stopped; return the runs' final states.

    See the module docstring. ``stop`` is an event another thread may set to
    stop as SIGINT/SIGTERM would; signal handlers are installed only when
    this is the main thread, and restored on return. ``deployment_id`` (the
    deployment registered in the run store for it) is recorded on its runs.
    """
    if on_stop not in ON_STOP:
        raise ConfigurationError(f"serve: on_stop={on_stop!r}; use 'finish' (let the run in flight end) or 'cancel'")
    label = f"serve {name or flow.name!r}"
    render_parameters(parameters, datetime.now(UTC), None)  # an unknown template fails now, not at the first run
    session = _ServeSession(flow, dict(parameters or {}), on_stop, label, stop or threading.Event())
    session.deployment_name = name
    session.deployment_id = deployment_id
    session.tags = frozenset(tags)
    configure_console_logging()
    with session.signals():
        return run_schedule(schedule, session.fire, stop=session.stop, clock=clock, limit=limit, name=label)


class _ServeSession:
    """One ``serve_flow``: its stop flags, its signal handlers, and the run in flight."""

    def __init__(self, flow: Any, parameters: dict[str, Any], on_stop: str, label: str, stop: threading.Event) -> None:
        self.flow = flow
        self.parameters = parameters
        self.on_stop = on_stop
        self.label = label
        self.stop = stop
        self.force = threading.Event()  # the second signal: cancel and stop waiting
        self.wake = threading.Event()  # the waiting main thread looks at the flags again
        self.signals_seen = 0
        self.deployment_name: str | None = None  # serve(name=...): what daskflow.runtime.deployment.name says
        self.deployment_id: str | None = None  # its row in the run store, when registered there
        self.tags: frozenset[str] = frozenset()  # serve(tags=...): every run's tags

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop this session while inside; only the main thread can take signals."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self.on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def on_signal(self, signum: int, frame: object) -> None:
        # A signal handler: only set flags (the main thread acts on them, outside the handler).
        self.signals_seen += 1
        if self.signals_seen > 1:
            self.force.set()
        self.stop.set()
        self.wake.set()

    def fire(self, slot: ScheduledRun) -> State:
        parameters = render_parameters(self.parameters, slot.scheduled_time, slot.previous_time)
        outcome: dict[str, State] = {}
        finished = threading.Event()

        name = self.deployment_name
        deployment = DeploymentRef(self.deployment_id, name, parameters) if name else None
        info = ScheduledRunInfo(scheduled_start_time=slot.scheduled_time, deployment=deployment, tags=self.tags)

        def run() -> None:
            try:
                with starting_scheduled_run(info):  # the run knows when it was due (daskflow.runtime)
                    outcome["state"] = self.flow(**parameters, return_state=True)
            except BaseException as exc:  # a bad parameter call, an interrupt: keep serving, report the run
                _log.exception("%s: the run for %s raised", self.label, slot.scheduled_time.isoformat())
                outcome["state"] = Crashed(f"{type(exc).__name__}: {exc}", exc)
            finally:
                finished.set()
                self.wake.set()

        thread = threading.Thread(target=run, name=f"daskflow-serve-{slot.index}", daemon=True)
        thread.start()
        announced = False
        while not finished.is_set():
            cancelling = self.force.is_set() or (self.stop.is_set() and self.on_stop == "cancel")
            self.wake.wait(_RECANCEL_SECONDS if cancelling else None)
            self.wake.clear()
            if finished.is_set():
                break
            if self.stop.is_set() and not announced:
                announced = True
                what = "cancelling" if self.on_stop == "cancel" or self.force.is_set() else "letting it finish"
                _log.warning("%s: stopping; a run is in flight, %s (a second signal cancels it)", self.label, what)
            if self.force.is_set() or (self.stop.is_set() and self.on_stop == "cancel"):
                assert thread.ident is not None
                cancel_runs_in_thread(thread.ident, f"{self.label} was stopped")
            if self.force.is_set():
                _log.warning("%s: stopped without waiting for the run in flight", self.label)
                break
        state = outcome.get("state")
        if state is None:  # forced out: the run is being cancelled, in its thread
            state = Cancelled(f"{self.label} stopped without waiting for this run to end")
        flow_run = getattr(state, "flow_run", None)
        _log.info(
            "%s: the run for %s ended %s%s",
            self.label, slot.scheduled_time.isoformat(), state.name,
            f" (flow run {flow_run.name!r}, id {flow_run.id})" if flow_run is not None else "",
        )  # fmt: skip
        return state


# -- the deployments seam (see the module docstring) --------------------------------------------

DEPLOYMENT_BACKEND_MODULE = "daskflow.deployments.flow_api"


@dataclass(frozen=True, slots=True)
class StoreServing:
    """The run store's half of serving: the deployments registered (name -> id), and ``serve(stop, cancel)``,
    which starts their queued runs and trigger firings in this process until ``stop`` is set (the runs in
    flight then end, cancelled if ``cancel`` is set) and returns their final states by name; None when
    nothing was registered."""

    ids: Mapping[str, str]
    serve: Callable[[threading.Event, threading.Event | None], dict[str, list[State]]] | None


class DeploymentBackend(Protocol):
    """What flows need of the deployments layer; ``served`` are ``daskflow.flows.ServedDeployment``s."""

    def deploy(self, served: Any, options: Mapping[str, Any]) -> str:
        """Register ``served`` in the run store for ``daskflow serve``; return the deployment's id."""
        ...

    def load_flow(self, entrypoint: str) -> Any:
        """The flow at ``entrypoint`` (``/path/file.py:name`` or ``module:name``), imported."""
        ...

    def serve_from_store(self, served: Sequence[Any], *, poll_seconds: float | None) -> StoreServing:
        """Register ``served`` now, as served by this process (a scheduled one that cannot be registered
        is skipped with a warning; one that needs the store raises); return the store's half of serving."""
        ...


_backend: DeploymentBackend | None = None
_backend_lock = threading.Lock()


def install_deployment_backend(backend: DeploymentBackend) -> None:
    """Called by :mod:`daskflow.deployments.flow_api` when it is imported."""
    global _backend
    _backend = backend


def deployment_backend() -> DeploymentBackend:
    """The deployments layer's backend, imported on first use (see the module docstring)."""
    with _backend_lock:
        if _backend is None:
            importlib.import_module(DEPLOYMENT_BACKEND_MODULE)  # it installs itself on import
        if _backend is None:  # pragma: no cover - the module above always installs it
            raise ConfigurationError(
                f"{DEPLOYMENT_BACKEND_MODULE} did not install a deployment backend; reinstall daskflow."
            )
        return _backend
