"""Flows: ``@flow`` and the :class:`Flow` it makes.

A flow is the function that orchestrates tasks. Calling it starts a flow
run: parameters are bound and checked against the type hints, the body runs
with a fresh copy of the flow's task runner, and the call returns the body's
value (or raises its error); ``return_state=True`` returns the final state
instead. A flow called inside another flow is a subflow, a child run of it.
``async def`` flows return a coroutine to await. ``my_flow.serve(cron=...)``
runs it on a schedule in this process until stopped
(:mod:`daskflow.engine.serving`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from daskflow import settings
from daskflow.engine import run_flow_async, run_flow_sync
from daskflow.engine.serving import Clock, serve_flow
from daskflow.exceptions import ConfigurationError, ScheduleError
from daskflow.options import FlowOptions, build_options, with_changes
from daskflow.parameters import Binder, ParameterSchema
from daskflow.schedules import Schedule, construct_schedule
from daskflow.states import State
from daskflow.task_runners import SequentialTaskRunner, TaskRunner, ThreadPoolTaskRunner

__all__ = ["SERVE_OPTIONS_IGNORED", "Flow", "ServedDeployment", "flow", "serve"]

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
        if len(deployment.schedules) == 1:
            return deployment.serve_here(on_stop=on_stop, limit=limit, clock=clock, stop=stop)
        states = serve(deployment, on_stop=on_stop, limit=limit, clock=clock, stop=stop)
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
        **prefect_options: Any,
    ) -> ServedDeployment:
        """This flow with a schedule, parameters and tags, to serve with others: ``serve(a.to_deployment(...), ...)``."""
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
        chosen: list[Schedule] = []
        if given and schedules:
            raise ScheduleError(f"{where}: give schedules=[...] or one of cron=/interval=/rrule=/schedule=, not both.")
        if schedules:
            chosen = [construct_schedule(schedule=one) if not isinstance(one, Schedule) else one for one in schedules]
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
        if parameters is not None:  # a misspelled parameter fails now, not at the first scheduled time
            self.bind_parameters((), dict(parameters))
        tag_list = [tags] if isinstance(tags, str) else list(tags or ())
        if not all(isinstance(t, str) and t for t in tag_list):
            raise ConfigurationError(f"{where}: tags must be a list of non-empty strings, got {tags!r}")
        return ServedDeployment(self, name or self.name, chosen, dict(parameters or {}), frozenset(tag_list))

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
    "description",
    "version",
    "paused",
    "pause_on_shutdown",
    "print_starter",
    "webserver",
    "global_limit",
    "triggers",
    "enforce_parameter_schema",
    "entrypoint_type",
    "concurrency_limit",
    "job_variables",
)


@dataclass(frozen=True)
class ServedDeployment:
    """A flow with its schedules, parameters and tags, served in this process (Prefect's ``RunnerDeployment``)."""

    flow: Flow[Any, Any]
    name: str
    schedules: list[Schedule]
    parameters: dict[str, Any]
    tags: frozenset[str]

    def serve_here(
        self,
        schedule: Schedule | None = None,
        *,
        on_stop: str = "finish",
        limit: int | None = None,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
    ) -> list[State]:
        """Serve one of its schedules (the first by default) in this thread until stopped."""
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
        )


def serve(
    *deployments: ServedDeployment,
    on_stop: str = "finish",
    limit: int | None = None,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
    **prefect_options: Any,
) -> dict[str, list[State]]:
    """Serve several deployments (``flow.to_deployment(...)``) in this process until stopped, as Prefect's ``serve``.

    Each schedule of each deployment is served on its own thread; SIGINT or
    SIGTERM (or ``stop``) stops them all, each finishing (or cancelling, with
    ``on_stop="cancel"``) its run in flight. ``limit`` stops each schedule after
    that many runs. Returns the runs' final states by deployment name.
    Prefect's ``print_starter``/``webserver`` and the like are accepted, unused.
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
        for one in d.schedules
    ]
    with _stop_on_signals(stop):
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # in steps: the main thread must stay free to take a signal
                thread.join(0.2)
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
