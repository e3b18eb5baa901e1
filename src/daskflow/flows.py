"""Flows: ``@flow`` and the :class:`Flow` it makes.

A flow is the function that orchestrates tasks. Calling it starts a flow
run: parameters are bound and checked against the type hints, the body runs
with a fresh copy of the flow's task runner, and the call returns the body's
value (or raises its error); ``return_state=True`` returns the final state
instead. A flow called inside another flow is a subflow, a child run of it.
``async def`` flows return a coroutine to await. ``my_flow.serve(cron=...)``
runs it on a schedule in this process until stopped
(:mod:`daskflow.engine.serving`); it is also registered in the run store, as
served by this process, so that ``run_deployment`` (from anywhere) and events
start it here; with no schedule it runs only so. ``my_flow.deploy(name, ...)``
registers it for ``daskflow serve`` without serving it here. Both reach the
deployments layer (above this one) only through
:func:`daskflow.engine.serving.deployment_backend`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from daskflow import settings
from daskflow.engine import run_flow_async, run_flow_sync
from daskflow.engine.serving import Clock, StoreServing, deployment_backend, serve_flow
from daskflow.exceptions import ConfigurationError, DeploymentError, ScheduleError
from daskflow.options import FlowOptions, build_options, with_changes
from daskflow.parameters import Binder, ParameterSchema
from daskflow.states import State
from daskflow.task_runners import SequentialTaskRunner, TaskRunner, ThreadPoolTaskRunner

if TYPE_CHECKING:  # imported where a flow is served: pydantic and croniter are a quarter of import daskflow
    from daskflow.event_triggers import DeploymentEventTrigger
    from daskflow.schedules import Schedule

__all__ = ["DEPLOY_OPTIONS_REFUSED", "SERVE_OPTIONS_IGNORED", "Flow", "ServedDeployment", "flow", "serve"]

P = ParamSpec("P")
R = TypeVar("R")


def _dask_runner() -> TaskRunner:
    from daskflow.task_runners.dask import DaskTaskRunner  # imports distributed: only when asked for

    return DaskTaskRunner()


_RUNNERS: dict[str, Callable[[], TaskRunner]] = {
    "dask": _dask_runner,
    "threadpool": ThreadPoolTaskRunner,
    "thread_pool": ThreadPoolTaskRunner,
    "concurrent": ThreadPoolTaskRunner,
    "sequential": SequentialTaskRunner,
}


class Flow(Generic[P, R]):
    """A function whose runs are orchestrated. Made by ``@flow``."""

    def __init__(self, fn: Callable[P, R], **options: Any) -> None:
        if not callable(fn):
            raise ConfigurationError(f"@flow must decorate a function, got {type(fn).__name__}")
        self.fn = fn
        self.options: FlowOptions = build_options(FlowOptions, fn, options)
        self.isasync = inspect.iscoroutinefunction(fn)
        self._binder = Binder(fn, self.options.where())
        self._schema = ParameterSchema(fn, self.options.where())
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.options.name

    def __getattr__(self, attr: str) -> Any:
        # flow.retries, flow.task_runner, ...: every option reads as an attribute, as in Prefect.
        options = self.__dict__.get("options")
        if options is not None and attr in options.__dataclass_fields__:
            return getattr(options, attr)
        raise AttributeError(f"{type(self).__name__!s} object has no attribute {attr!r}")

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r}, fn={getattr(self.fn, '__qualname__', self.fn)!r})"

    def bind_parameters(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return self._binder.bind(args, kwargs)

    def validate_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Parameters checked and coerced against the type hints; ``ParameterValidationError`` if bad."""
        return self._schema.validate(parameters)

    def default_task_runner(self) -> TaskRunner:
        """The runner for a flow that names none: dask.config ``daskflow.task_runner``."""
        choice = str(settings.get("task_runner")).lower()
        factory = _RUNNERS.get(choice)
        if factory is None:
            raise ConfigurationError(
                f"dask.config daskflow.task_runner is {choice!r}; use one of {', '.join(sorted(_RUNNERS))}"
            )
        return factory()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the flow; return its value, or its final state with ``return_state=True``."""
        return_state = bool(kwargs.pop("return_state", False))
        if self.isasync:
            return run_flow_async(self, args, kwargs, return_state)  # type: ignore[return-value]
        return run_flow_sync(self, args, kwargs, return_state)  # type: ignore[no-any-return]

    def with_options(self, **changes: Any) -> Flow[P, R]:
        """A copy of this flow with some options changed."""
        new = copy.copy(self)
        new.options = with_changes(self.options, changes, self.fn)
        new._schema = ParameterSchema(self.fn, new.options.where())
        return new

    def serve(
        self,
        name: str | None = None,
        *,
        cron: str | None = None,
        interval: timedelta | float | None = None,
        rrule: str | None = None,
        schedule: Schedule | Mapping[str, Any] | None = None,
        schedules: Sequence[Schedule | Mapping[str, Any]] | None = None,
        timezone: str | None = None,
        anchor_date: datetime | str | None = None,
        parameters: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        on_stop: str = "finish",
        limit: int | None = None,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        poll_seconds: float | None = None,
        **prefect_options: Any,
    ) -> list[State]:
        """Run this flow on a schedule in this process until stopped; return the runs' final states.

        Give one of ``cron``, ``interval`` (seconds or a timedelta, with
        ``anchor_date``), ``rrule`` or ``schedule``, or a list ``schedules``;
        ``timezone`` (default UTC) applies to the first three. ``parameters`` may
        use the templates ``{{ scheduled_time }}``, ``{{ data_interval_start }}``
        (the schedule's previous time) and ``{{ data_interval_end }}``, rendered
        as ISO 8601 strings; ``tags`` go to every run. Runs of one schedule
        never overlap: a time that passes while a run is still going is
        skipped, with a warning naming it. SIGINT/SIGTERM stop serving: the run
        in flight finishes (``on_stop="finish"``) or is cancelled
        (``"cancel"``); a second signal cancels it and returns at once.
        ``limit`` stops after that many runs (per schedule); ``clock`` and
        ``stop`` (an event that stops serving when set) are for tests and
        embedding. Prefect's other serve options are accepted (see
        :data:`SERVE_OPTIONS_IGNORED`); ``name`` is what
        ``daskflow.runtime.deployment.name`` tells the runs.

        The deployment is registered in the run store (with its schedule, as
        served by this process) and this process also runs what
        ``run_deployment("flow/name")`` queues for it, and a run per matching
        event, as Prefect's ``serve`` does. That needs the flow importable
        (defined at the top level of a module or script): with no schedule (or
        with ``triggers=[DeploymentEventTrigger(...)]``) it is an error
        otherwise; a scheduled flow is then served on its schedule only, with
        a warning.
        """
        deployment = self.to_deployment(
            name,
            cron=cron,
            interval=interval,
            rrule=rrule,
            schedule=schedule,
            schedules=schedules,
            timezone=timezone,
            anchor_date=anchor_date,
            parameters=parameters,
            tags=tags,
            **prefect_options,
        )
        if len(deployment.schedules) == 1 and not deployment.needs_store:
            # Served in this thread (signals as serve_flow handles them), the store's half beside it.
            stop = stop or threading.Event()
            store = _StoreHalf([deployment], poll_seconds)
            store.start(stop if on_stop == "cancel" else None)
            try:
                fired = deployment.serve_here(
                    on_stop=on_stop, limit=limit, clock=clock, stop=stop, deployment_id=store.ids.get(deployment.name)
                )
            finally:
                asked = store.finish().get(deployment.name, [])
            return fired + asked  # its schedule's runs, then those run_deployment asked for
        states = serve(deployment, on_stop=on_stop, limit=limit, clock=clock, stop=stop, poll_seconds=poll_seconds)
        return states[deployment.name]

    def to_deployment(
        self,
        name: str | None = None,
        *,
        cron: str | None = None,
        interval: timedelta | float | None = None,
        rrule: str | None = None,
        schedule: Schedule | Mapping[str, Any] | None = None,
        schedules: Sequence[Schedule | Mapping[str, Any]] | None = None,
        timezone: str | None = None,
        anchor_date: datetime | str | None = None,
        parameters: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        triggers: Sequence[DeploymentEventTrigger | Mapping[str, Any]] | None = None,
        description: str | None = None,
        paused: bool | None = None,
        **prefect_options: Any,
    ) -> ServedDeployment:
        """This flow with a schedule, parameters and tags, to serve with others: ``serve(a.to_deployment(...), ...)``.

        No schedule at all is an on-demand deployment (``run_deployment`` and
        ``triggers`` start its runs).
        """
        where = f"flow {self.name!r}"
        unknown = sorted(set(prefect_options) - set(SERVE_OPTIONS_IGNORED))
        if unknown:
            raise ConfigurationError(
                f"{where}: serve()/to_deployment() got unknown option(s) {', '.join(unknown)}; daskflow takes "
                f"name, cron, interval, rrule, schedule, schedules, timezone, anchor_date, parameters, tags and "
                f"Prefect's {', '.join(sorted(SERVE_OPTIONS_IGNORED))} (accepted, no effect here)"
            )
        given = {
            k: v
            for k, v in (("cron", cron), ("interval", interval), ("rrule", rrule), ("schedule", schedule))
            if v is not None
        }
        from daskflow.event_triggers import as_triggers
        from daskflow.schedules import Schedule, construct_schedule

        chosen: list[Schedule] = []
        if given and schedules:
            raise ScheduleError(f"{where}: give schedules=[...] or one of cron=/interval=/rrule=/schedule=, not both.")
        if schedules:
            chosen = [construct_schedule(schedule=one) if not isinstance(one, Schedule) else one for one in schedules]
        elif not given:
            chosen = []  # on demand: run_deployment() and triggers start its runs (Prefect's serve() too)
        elif len(given) == 1:
            chosen = [
                construct_schedule(
                    cron=cron,
                    interval=interval,
                    rrule=rrule,
                    timezone=timezone,
                    anchor_date=anchor_date,
                    schedule=schedule,
                )
            ]
        else:
            what = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "none of them"
            raise ScheduleError(
                f"{where}: serve() needs exactly one of cron=, interval=, rrule= or schedule= (or schedules=[...]); "
                f"got {what}. Fix: e.g. serve(cron='0 6 * * *') or serve(interval=3600)."
            )
        if parameters is not None and chosen:  # a misspelled parameter fails now, not at the first scheduled time
            self.bind_parameters((), dict(parameters))
        elif parameters is not None:  # on demand: run_deployment() may give the rest
            signature = inspect.signature(self.fn)
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
            unknown = sorted(set(parameters) - set(signature.parameters))
            if unknown and not takes_any:
                raise ConfigurationError(
                    f"{where}: has no parameter(s) {', '.join(map(repr, unknown))}; the signature is "
                    f"{self.fn.__name__}{signature}. Fix: rename or drop them."
                )
        tag_list = [tags] if isinstance(tags, str) else list(tags or ())
        if not all(isinstance(t, str) and t for t in tag_list):
            raise ConfigurationError(f"{where}: tags must be a list of non-empty strings, got {tags!r}")
        return ServedDeployment(
            self,
            name or self.name,
            chosen,
            dict(parameters or {}),
            frozenset(tag_list),
            triggers=as_triggers(triggers, where),
            description=description,
            paused=bool(paused),
        )

    @classmethod
    def from_source(cls, source: str | os.PathLike[str], entrypoint: str) -> Flow[Any, Any]:
        """The flow at ``entrypoint`` (``"path/in/source.py:flow_name"``) in the local folder ``source``.

        Prefect's ``flow.from_source(...).deploy(...)``: a scheduling service
        imports the flow from that file. Only local folders: daskflow fetches
        no code (a git URL or a storage block is refused; clone it first).
        """
        text = os.fspath(source) if isinstance(source, os.PathLike) else source
        where = f"Flow.from_source({source!r}, {entrypoint!r})"
        if not isinstance(text, str) or "://" in text or text.startswith("git@"):
            raise DeploymentError(
                f"{where}: daskflow loads flows from local folders only; it does not fetch code from a "
                "repository or storage. Fix: clone or copy the code where the service runs and give that folder."
            )
        folder = Path(text).expanduser().resolve()
        file, sep, attr = entrypoint.rpartition(":")
        if not sep or not file.endswith(".py") or not attr.isidentifier():
            raise DeploymentError(
                f"{where}: the entrypoint must be 'path/to/file.py:flow_name', relative to the folder."
            )
        if not folder.is_dir():
            raise DeploymentError(f"{where}: {folder} is not a folder.")
        loaded: Flow[Any, Any] = deployment_backend().load_flow(f"{folder / file}:{attr}")
        return loaded

    def deploy(
        self,
        name: str,
        work_pool_name: str | None = None,
        image: Any = None,
        build: bool | None = None,
        push: bool | None = None,
        *,
        job_variables: Mapping[str, Any] | None = None,
        concurrency_limit: int | None = None,
        **options: Any,
    ) -> str:
        """Register this flow in the run store as deployment ``name`` for ``daskflow serve``; return its id.

        Prefect 3's ``flow.deploy``: the schedule (``cron``/``interval``/
        ``rrule``/``schedule``, or none: on demand), ``parameters``, ``tags``,
        ``triggers``, ``description``, ``paused`` are those of
        :meth:`to_deployment`; ``work_pool_name`` names a Dask cluster
        (``daskflow.work_pools`` in dask config; none: the flow's own task
        runner). Nothing is built or pushed: a scheduling service imports the
        flow from where it is defined, so ``image``, ``build``/``push=True``
        and ``job_variables`` are refused with what to do instead.
        ``concurrency_limit=1`` (the default here) keeps runs from
        overlapping. Applying again by the same name updates it.
        """
        where = f"flow {self.name!r}: deploy({name!r})"
        refused = {
            "image": image is not None,
            "build": bool(build),
            "push": bool(push),
            "job_variables": bool(job_variables),
        }
        for option, given in refused.items():
            if given:
                raise DeploymentError(f"{where}: {DEPLOY_OPTIONS_REFUSED[option]}")
        if concurrency_limit is not None and concurrency_limit != 1:
            raise DeploymentError(
                f"{where}: concurrency_limit={concurrency_limit!r}; daskflow runs a deployment's runs one at a "
                "time (concurrency_limit=1, the default) or without limit. Fix: leave it out, or pass "
                "allow_concurrent_runs=True to let runs overlap."
            )
        deploy_only = {key: options.pop(key) for key in _DEPLOY_ONLY if key in options}
        served = self.to_deployment(name, **options)
        return deployment_backend().deploy(served, {"work_pool_name": work_pool_name, **deploy_only})

    def _add_hook(self, option: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.options = with_changes(self.options, {option: (*getattr(self.options, option), fn)}, self.fn)
        return fn

    def on_completion(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: add ``fn(flow, flow_run, state)`` as a completion hook."""
        return self._add_hook("on_completion", fn)

    def on_failure(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return self._add_hook("on_failure", fn)

    def on_crashed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return self._add_hook("on_crashed", fn)

    def on_cancellation(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return self._add_hook("on_cancellation", fn)

    def on_running(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: add ``fn(flow, flow_run, state)``, called as each attempt starts running."""
        return self._add_hook("on_running", fn)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """``@flow`` on a method: reading it from an instance (or, for a classmethod, a class) binds it.

        The bound flow is a copy whose function is the bound method, so its
        parameters are the method's without ``self``/``cls``; as in Prefect.
        """
        if instance is None:
            return self
        bound = copy.copy(self)
        bound.fn = self.fn.__get__(instance, owner)  # type: ignore[attr-defined]
        bound._binder = Binder(bound.fn, self.options.where())
        bound._schema = ParameterSchema(bound.fn, self.options.where())
        bound.isasync = self.isasync
        return bound


# Prefect's serve options that have no meaning in one process without a server: accepted, unused.
SERVE_OPTIONS_IGNORED = (
    "version",
    "version_type",
    "pause_on_shutdown",
    "print_starter",
    "print_next_steps",
    "ignore_warnings",
    "webserver",
    "global_limit",
    "work_queue_name",
    "enforce_parameter_schema",
    "entrypoint_type",
    "concurrency_limit",
    "job_variables",
)

# deploy()'s own options, beyond to_deployment()'s: passed to the deployments layer.
_DEPLOY_ONLY = ("catchup", "allow_concurrent_runs")

# What flow.deploy() refuses, and what daskflow does instead.
DEPLOY_OPTIONS_REFUSED = {
    "image": (
        "image= is not supported: daskflow builds no images. A scheduling service (daskflow serve) imports the "
        "flow from its module or file and runs it on the work pool's Dask cluster, so install the code and its "
        "dependencies where the service and the workers run. Fix: leave image out."
    ),
    "build": "build=True is not supported: daskflow builds no images (the service imports the flow). Fix: leave it out.",
    "push": "push=True is not supported: daskflow pushes no images (the service imports the flow). Fix: leave it out.",
    "job_variables": (
        "job_variables are not supported: a work pool is a Dask cluster, configured in dask config "
        "(daskflow.work_pools.<name>: {address: ...} or {cluster_class: ..., cluster_kwargs: {...}}). "
        "Fix: leave job_variables out and put the cluster's settings there."
    ),
}


@dataclass(frozen=True)
class ServedDeployment:
    """A flow with its schedules, parameters and tags, served in this process (Prefect's ``RunnerDeployment``)."""

    flow: Flow[Any, Any]
    name: str
    schedules: list[Schedule]
    parameters: dict[str, Any]
    tags: frozenset[str]
    triggers: tuple[DeploymentEventTrigger, ...] = ()
    description: str | None = None
    paused: bool = False

    @property
    def needs_store(self) -> bool:
        """Whether serving it needs the run store: on demand (no schedule, or paused), or started by events."""
        return not self.schedules or bool(self.triggers) or self.paused

    def serve_here(
        self,
        schedule: Schedule | None = None,
        *,
        on_stop: str = "finish",
        limit: int | None = None,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        deployment_id: str | None = None,
    ) -> list[State]:
        """Serve one of its schedules (the first by default) in this thread until stopped.

        ``deployment_id``: its row in the run store, recorded on its runs.
        """
        return serve_flow(
            self.flow,
            schedule or self.schedules[0],
            name=self.name,
            parameters=self.parameters,
            on_stop=on_stop,
            limit=limit,
            clock=clock,
            stop=stop,
            tags=self.tags,
            deployment_id=deployment_id,
        )


class _StoreHalf:
    """The run store's half of serving: the deployments registered, and a thread starting their queued runs.

    It serves until :meth:`finish`, which waits for the runs it started.
    """

    def __init__(self, deployments: Sequence[ServedDeployment], poll_seconds: float | None) -> None:
        # Registered now: a deployment that needs the store and cannot be (a flow defined in a
        # function) fails before any run.
        self.serving: StoreServing = deployment_backend().serve_from_store(deployments, poll_seconds=poll_seconds)
        self.ids = self.serving.ids
        self.done = threading.Event()
        self.states: dict[str, list[State]] = {}
        self._thread: threading.Thread | None = None

    def start(self, cancel: threading.Event | None) -> None:
        serve_stored = self.serving.serve
        if serve_stored is None:
            return

        def run() -> None:
            self.states = serve_stored(self.done, cancel)

        self._thread = threading.Thread(target=run, name="daskflow-serve-store", daemon=True)
        self._thread.start()

    def finish(self) -> dict[str, list[State]]:
        """Stop serving from the store; the final states of the runs it started, by deployment name."""
        self.done.set()
        if self._thread is not None:
            while self._thread.is_alive():  # in steps: the main thread must stay free to take a signal
                self._thread.join(0.2)
        return self.states


def serve(
    *deployments: ServedDeployment,
    on_stop: str = "finish",
    limit: int | None = None,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
    poll_seconds: float | None = None,
    **prefect_options: Any,
) -> dict[str, list[State]]:
    """Serve several deployments (``flow.to_deployment(...)``) in this process until stopped, as Prefect's ``serve``.

    Each schedule of each deployment is served on its own thread; SIGINT or
    SIGTERM (or ``stop``) stops them all, each finishing (or cancelling, with
    ``on_stop="cancel"``) its run in flight. ``limit`` stops each schedule after
    that many runs. Returns the runs' final states by deployment name.
    Prefect's ``print_starter``/``webserver`` and the like are accepted, unused.

    Every deployment is registered in the run store, with its schedule, as
    served by this process (a scheduled one whose flow cannot be: with a
    warning), and one more thread runs what ``run_deployment`` queues for them
    and what their triggers fire (polling the store every ``poll_seconds``),
    until ``stop`` when some deployment has no schedule (or triggers, or is
    paused), else until the schedules end. Once stopped, they stay listed,
    not served (``daskflow deployment ls``).
    """
    if not deployments:
        raise ConfigurationError(
            "serve() needs at least one deployment: serve(my_flow.to_deployment('name', interval=60), ...)"
        )
    names = [d.name for d in deployments]
    if len(set(names)) != len(names):
        raise ConfigurationError(
            f"serve(): deployment names must differ, got {names}; give each to_deployment() its own name"
        )
    stop = stop or threading.Event()
    states: dict[str, list[State]] = {name: [] for name in names}
    states_lock = threading.Lock()

    def serve_one(deployment: ServedDeployment, schedule: Schedule) -> None:
        done = deployment.serve_here(schedule, on_stop=on_stop, limit=limit, clock=clock, stop=stop)
        with states_lock:
            states[deployment.name].extend(done)

    threads = [
        threading.Thread(target=serve_one, args=(d, one), name=f"daskflow-serve-{d.name}", daemon=True)
        for d in deployments
        if not d.paused  # paused: its schedule does not fire; run_deployment still starts runs
        for one in d.schedules
    ]
    on_demand = any(d.needs_store for d in deployments)
    store = _StoreHalf(deployments, poll_seconds)
    with _stop_on_signals(stop):
        for thread in threads:
            thread.start()
        store.start(stop if on_stop == "cancel" else None)
        try:
            for thread in threads:
                while thread.is_alive():  # in steps: the main thread must stay free to take a signal
                    thread.join(0.2)
            # The schedules ended (stopped, limit, no time ahead); on-demand deployments are served until stop.
            while on_demand and not stop.wait(0.2):
                pass
        finally:
            ended = store.finish()
    for name, done in ended.items():
        states[name].extend(done)
    return states


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` while inside (only the main thread can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(*, name: str | None = None, **options: Any) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(fn: Callable[P, R] | None = None, /, **options: Any) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a flow: ``@flow`` or ``@flow(name=..., task_runner=..., ...)``."""
    if fn is None:
        return lambda f: Flow(f, **options)
    return Flow(fn, **options)
