"""The flow engine: everything around one flow run, written once.

A flow run binds and validates its parameters (a bad one ends the run before
any task starts), then runs the body inside a fresh task runner and a flow-run
context, so tasks called in the body know their flow. The run's final state
follows from the body, as in Prefect: an exception fails it; a returned
State, or a run's future, is the final state; a returned generator is
consumed into the list it yields (inside the run and its timeout); otherwise
futures in the value are waited for, and when the value is a collection of
runs only, any of them that did not complete fails the flow (a failed run
beside other values is just part of the value); else it completes. The final
state is a :class:`~daskflow.runs.FlowRunState`, which knows its run.

Before the final state, the runner is drained of cache writes: cached runs
write their entries behind their values (:mod:`daskflow.results.write_behind`),
so the run waits for every run, then for every entry they write, wherever they
ran, and says in its log which could not be written. A run is never
``Completed`` with its entries still on their way (Ctrl-C alone does not wait).

A failed attempt (an exception, a timeout, a failed return value, or a
crash-like ``BaseException``) is judged by the same code as a task's
(:func:`~daskflow.engine.retries.judge_attempt`): a retry reruns the body
after its delay, which a cancel cuts short.

Ctrl-C cancels the run: tasks not yet started never start,
running ones are interrupted, every run is left in a final state. A cancel
from elsewhere (``daskflow runs cancel``, ``flow.serve`` stopping, see
:mod:`daskflow.engine.cancellation`) takes the same path from another thread:
it cancels the runner's futures, which wakes a body waiting for them, and
interrupts a body still busy a moment later; the run ends ``Cancelled``
whatever the body then raises or returns.

:class:`FlowRunEngine` holds that state machine; :func:`run_flow_sync` and
:func:`run_flow_async` are the thin drivers, as for tasks.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from daskflow.concurrency import flow_limit_sizes
from daskflow.context import (
    FlowRunContext,
    get_current_tags,
    get_flow_run_context,
    get_task_run_context,
    scheduled_run_info,
    tags,
    use_flow_run_context,
)
from daskflow.engine.cancellation import register as register_cancellable
from daskflow.engine.cancellation import unregister as unregister_cancellable
from daskflow.engine.history import recorder as history_recorder
from daskflow.engine.hooks import hooks_for, run_state_hooks
from daskflow.engine.inputs import iter_upstreams, resolve_runs
from daskflow.engine.progress import ProgressDisplay, show_progress
from daskflow.engine.retries import judge_attempt
from daskflow.engine.run_names import RunNameError, format_run_name, generate_run_name
from daskflow.engine.run_origin import import_path, take_preset_run_id
from daskflow.engine.task_engine import split_arguments
from daskflow.engine.timeouts import call_with_timeout, interrupt_thread
from daskflow.exceptions import CancelledRunError, ParameterValidationError, RunTimeoutError
from daskflow.futures import DaskflowFuture, fetch_all
from daskflow.logging import RunLoggerAdapter, configure_console_logging, install_print_capture, run_logger_for
from daskflow.results import write_behind
from daskflow.results.write_behind import WriteReport
from daskflow.runs import FlowRun, FlowRunState, new_run_id
from daskflow.states import (
    Cancelled,
    Completed,
    Crashed,
    Failed,
    Retrying,
    Running,
    State,
    TimedOut,
    is_state_iterable,
)

__all__ = [
    "INTERRUPT_GRACE_SECONDS",
    "FlowRunEngine",
    "ReturnValue",
    "run_flow_async",
    "run_flow_sync",
]

# How long a cancelled body may take to notice (its futures were cancelled) before its thread
# is interrupted: an exception thrown into a thread may land anywhere, so it is the last resort.
INTERRUPT_GRACE_SECONDS = 1.0


def _close_task_runs(flow_run: FlowRun, state: State) -> None:
    """Give every task run of a flow run that ends a final state, so the history keeps none open.

    By now the runner has waited for every run it could; a run that is still not
    final never started (it ends ``Cancelled``, saying so) or its end never came
    back from where it ran (it ends ``Crashed``).
    """
    for task_run in flow_run.task_runs:
        current = task_run.state
        if current.is_final():
            continue
        if current.is_pending():
            task_run.set_state(Cancelled(f"never started: the flow run ended {state.name} first"))
        else:
            task_run.set_state(
                Crashed(f"the flow run ended {state.name} while this run was {current.name}; its end never came back")
            )


class FlowRunEngine:
    """The state machine of one flow run (see the module docstring)."""

    def __init__(self, flow: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.flow = flow
        self.options = flow.options
        # A call that does not fit the signature is the caller's bug: raise before any run exists.
        self.parameters: dict[str, Any] = flow.bind_parameters(args, kwargs)
        parent = get_flow_run_context()
        parent_task = get_task_run_context()
        parent_id = parent.flow_run.id if parent is not None else (parent_task.flow_run_id if parent_task else None)
        self.parent = parent
        preset = take_preset_run_id() if parent is None and parent_task is None else None
        # A scheduler (daskflow serve, flow.serve) says when this run was due and for which deployment.
        scheduled = scheduled_run_info() if parent is None and parent_task is None else None
        self.run = FlowRun(
            id=preset or new_run_id(),
            name=generate_run_name(),
            flow_name=self.options.name,
            parameters=self.parameters,
            parent_flow_run_id=parent_id,
            entrypoint=import_path(flow.fn),  # recorded so that the run can be retried
            tags=get_current_tags() | scheduled.tags if scheduled is not None else get_current_tags(),
            scheduled_start_time=(scheduled and scheduled.scheduled_start_time) or datetime.now(UTC),
            deployment=scheduled.deployment if scheduled is not None else None,
        )
        self.context: FlowRunContext | None = None
        self._logger: RunLoggerAdapter | None = None
        self.progress: ProgressDisplay | None = None
        # Set (once) by a cancel from another thread; then the run ends Cancelled, whatever the body does.
        self.cancel_reason: str | None = None
        self._cancel_lock = threading.Lock()
        self._cancelled = threading.Event()
        self._runner: Any = None
        self._body_thread: int | None = None
        self._body_task: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
        self._store_url: str | None = None  # where cancel requests for this run are polled (history on)
        configure_console_logging()
        if parent is None and parent_task is None:
            recording = history_recorder()  # starts recording this process's runs (once), if history is on
            self._store_url = recording.url if recording is not None else None
            self.progress = show_progress(self.run)  # stopped in finish(), which every run reaches

    @property
    def logger(self) -> RunLoggerAdapter:
        if self._logger is None:
            self._logger = run_logger_for(
                flow_run_id=self.run.id, flow_run_name=self.run.name, flow_name=self.run.flow_name
            )
        return self._logger

    @property
    def state(self) -> State:
        return self.run.state

    def prepare(self) -> State | None:
        """Validate parameters and name the run. Returns the final state if the run cannot start."""
        options = self.options
        if options.validate_parameters:
            try:
                self.parameters = self.flow.validate_parameters(self.parameters)
            except ParameterValidationError as exc:
                self.logger.error("%s", exc)
                return self.finish(Failed(str(exc), exc))
            self.run.parameters = self.parameters
        template = options.flow_run_name
        if template is not None:
            # Named inside a context of this run: a naming function may read daskflow.runtime's
            # flow_run.parameters and flow_name, as Prefect's docs show.
            naming = FlowRunContext(flow=self.flow, flow_run=self.run, task_runner=None, parameters=self.parameters)
            try:
                with use_flow_run_context(naming):
                    self.run.name = format_run_name(template, self.parameters, options.where(), "flow_run_name")
            except RunNameError as exc:
                return self.finish(Failed(str(exc), exc.cause))
            self._logger = None
        if options.log_prints:
            install_print_capture()
        return None

    def begin_attempt(self) -> None:
        run = self.run
        run.run_count += 1
        if run.run_count == 1:
            self.logger.info("Beginning flow run %r for flow %r", run.name, run.flow_name)
            run.set_state(Running())
        else:
            run.set_state(Retrying(f"attempt {run.run_count}"))
        if self.options.on_running:
            run_state_hooks(self.options, self.flow, run, run.state, self.logger)

    def new_runner(self) -> Any:
        runner = self.options.task_runner
        if runner is None:
            runner = self.flow.default_task_runner()
        return runner.duplicate()

    @contextmanager
    def running(self, runner: Any) -> Iterator[FlowRunContext]:
        """Enter the task runner and the flow-run context for one attempt."""
        log_prints = bool(self.options.log_prints)
        if log_prints:
            install_print_capture()
        limits = flow_limit_sizes(self.options.concurrency_limit)
        drained = False
        try:
            with runner:
                yield from self._attempt(runner, log_prints, limits)
                # The body returned: the run may not end before the entries its runs write have landed.
                self._drain(runner)
                drained = True
        except KeyboardInterrupt:
            drained = True  # Ctrl-C is not held up: the writes go on, and finish before this process exits
            raise
        finally:
            if not drained:  # the body raised: what this process writes still lands before the run ends
                self._drain(runner)

    def _drain(self, runner: Any) -> None:
        try:
            report = runner.drain_writes(self.run.id)
        except Exception as exc:  # the cluster went away meanwhile: its writes went with it, never in part
            self.logger.warning("could not wait for this flow run's cache writes: %s: %s", type(exc).__name__, exc)
            return
        self.report_writes(report)

    def report_writes(self, report: WriteReport) -> None:
        """Say in the flow run's log what went wrong with the cache entries its runs wrote behind their values.

        The run's state is not changed: every value was passed on and returned
        as computed; only a later run pays, by computing again what was not stored.
        """
        if report.failed:
            self.logger.warning(
                "%d of %d cache entries of this flow run could not be written (%s); their values were used as "
                "computed, and the next run computes them again. Each task run's log says why.",
                len(report.failed),
                report.total,
                "; ".join(report.failed[:5]) + ("; ..." if len(report.failed) > 5 else ""),
            )
        if report.unfinished:
            self.logger.warning(
                "%d cache entries of this flow run were still being written after %g s "
                "(dask.config daskflow.results.write_behind.drain_timeout); the run ends without them: each lands "
                "later or not at all, never in part",
                report.unfinished,
                write_behind.drain_timeout(),
            )

    def _attempt(self, runner: Any, log_prints: bool, limits: Any) -> Iterator[FlowRunContext]:
        """The flow-run context around the body, inside the started runner (see :meth:`running`)."""
        self.run.dashboard_link = getattr(runner, "dashboard_link", None)
        ctx = FlowRunContext(
            flow=self.flow,
            flow_run=self.run,
            task_runner=runner,
            parameters=self.parameters,
            log_prints=log_prints,
            concurrency_limits=limits,
        )
        self.context = ctx
        self._runner = runner
        register_cancellable(self.run.id, self.run.parent_flow_run_id, self.cancel_from_outside, self._store_url)
        try:
            # The run's tags (a deployment's among them) go to every task run it starts.
            with use_flow_run_context(ctx), tags(*self.run.tags):
                self._enter_body()
                yield ctx
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, CancelledRunError, asyncio.CancelledError)):
                ctx.cancel_event.set()
                runner.cancel_all()
            raise
        finally:
            self._leave_body()  # still cancellable until finish(): a cancel while waiting to retry ends the run

    def _enter_body(self) -> None:
        with self._cancel_lock:
            if self.flow.isasync:
                task = asyncio.current_task()
                if task is not None:
                    self._body_task = (asyncio.get_running_loop(), task)
            else:
                self._body_thread = threading.get_ident()
            cancelled = self.cancel_reason is not None
        if cancelled:  # asked before the body began: it never does
            raise CancelledRunError(f"flow run {self.run.name!r} was cancelled: {self.cancel_reason}")

    def _leave_body(self) -> None:
        with self._cancel_lock:
            self._body_thread = None
            self._body_task = None
            self._runner = None  # closed with the attempt: a cancel now has no futures to cancel

    def cancel_from_outside(self, reason: str) -> None:
        """Cancel this run from another thread (see the module docstring); later calls do nothing."""
        with self._cancel_lock:
            if self.cancel_reason is not None or self.run.state.is_final():
                return
            self.cancel_reason = reason
            self._cancelled.set()  # wakes a wait before a retry
            context, runner, task = self.context, self._runner, self._body_task
        self.logger.warning("Cancelling: %s", reason)
        if context is not None:
            context.cancel_event.set()
        if runner is not None:
            runner.cancel_all()  # a body waiting for its futures wakes up to Cancelled states
        if task is not None:
            loop, body = task
            loop.call_soon_threadsafe(body.cancel)
            return
        timer = threading.Timer(INTERRUPT_GRACE_SECONDS, self._interrupt_body)
        timer.daemon = True
        timer.start()

    def _interrupt_body(self) -> None:
        # Under the lock: the body cannot leave (and its thread go on to other work) meanwhile.
        with self._cancel_lock:
            if self._body_thread is not None:
                interrupt_thread(self._body_thread, CancelledRunError)

    def call_body(self) -> Any:
        args, kwargs = split_arguments(self.flow.fn, self.parameters)
        timeout = self.options.timeout_seconds
        if timeout is None:
            return _consumed(self.flow.fn(*args, **kwargs))
        body = _consuming(self.flow.fn)
        return call_with_timeout(body, args, kwargs, timeout, f"flow run {self.run.name!r}")

    def collect_return(self, value: Any) -> ReturnValue:
        """Wait for the futures in the body's return value and take their values (see :class:`ReturnValue`)."""
        ret = ReturnValue()
        if isinstance(value, DaskflowFuture):
            value.wait()
            value = value.state
        if isinstance(value, State):
            ret.returned = value
            return ret
        # As in Prefect, only a collection of runs alone decides the flow's state; a failed run
        # next to other values (``("bar", failed_state)``) is part of a completed return value.
        ret.decides = is_state_iterable(value) or (
            isinstance(value, (list, tuple, set, frozenset))
            and bool(value)
            and all(isinstance(v, (State, DaskflowFuture)) for v in value)
        )
        fetch_all(iter_upstreams(value))  # a returned map's values in one round trip, not one each
        ret.data, _ = resolve_runs(value, ret.on_state)
        return ret

    def handle_return(self, ret: ReturnValue) -> float | None:
        """Decide the final state from the body's return value, once the runner is drained."""
        if self.cancel_reason is not None:
            self.cancel(self.cancel_reason)
            return None
        if ret.returned is not None:
            return self._returned_state(ret.returned)
        if not ret.failed:
            self.finish(Completed(ret.data, "All states completed."))
            return None
        first = ret.failed[0]
        state = Failed(f"{len(ret.failed)}/{ret.total} states failed: {first.message}", first.exception)
        state.data = ret.data
        return self._failed_attempt(state)

    def _returned_state(self, returned: State) -> float | None:
        """A body that returned a state (or a run's future) ends in that state, as in Prefect."""
        if not returned.is_final():
            message = (
                f"flow {self.options.name!r} returned the state {returned.name}, which is not final; return a final "
                "state (Completed, Failed, ...), a value, or the run's future"
            )
            return self._failed_attempt(Failed(message))
        state = returned.copy()
        if state.is_failed():
            return self._failed_attempt(state)
        self.finish(state)
        return None

    def handle_exception(self, exc: BaseException) -> float | None:
        if self.cancel_reason is not None:  # whatever the cancelled body raised on its way out
            self.cancel(self.cancel_reason)
            return None
        if isinstance(exc, (KeyboardInterrupt, CancelledRunError, asyncio.CancelledError)):
            self.cancel(f"cancelled: {type(exc).__name__}")
            return None
        make_state: Callable[..., State]
        if isinstance(exc, RunTimeoutError):
            make_state = TimedOut
        elif isinstance(exc, Exception):
            make_state = Failed
        else:  # SystemExit and friends: the process, not the flow's code, gave up (judged as for a task)
            make_state = functools.partial(Crashed, f"{type(exc).__name__} raised inside the flow")
        return self._judge(lambda traceback: make_state(exception=exc, with_traceback=traceback), exc)

    def _failed_attempt(self, state: State) -> float | None:
        return self._judge(lambda traceback: state, None)

    def _judge(self, make_state: Callable[[bool], State], exc: BaseException | None) -> float | None:
        """The one retry decision tasks make too (:func:`~daskflow.engine.retries.judge_attempt`)."""
        where = f"flow {self.options.name!r}"
        state, delay = judge_attempt(self.run, self.options, self.flow, where, self.logger, make_state, exc)
        if delay is None:
            self.finish(state)
        return delay

    def wait_before_retry(self, delay: float) -> bool:
        """Wait ``delay`` seconds before the next attempt; False if the run was cancelled meanwhile."""
        if self._cancelled.wait(delay) or self.cancel_reason is not None:
            self.cancel(self.cancel_reason or "cancelled while waiting to retry")
            return False
        return True

    def cancel(self, message: str) -> None:
        """End the run and every task run of it that is not final as Cancelled."""
        if self.context is not None:
            self.context.cancel_event.set()
        for task_run in self.run.task_runs:
            if not task_run.state.is_final():
                task_run.set_state(Cancelled("the flow run was cancelled"))
        self.finish(Cancelled(message))

    def finish(self, state: State) -> State:
        run = self.run
        unregister_cancellable(run.id)
        _close_task_runs(run, state)
        # The final state knows its run: what the caller of return_state=True reaches it by.
        state = FlowRunState.of(state, run)
        run.set_state(state)
        if self.progress is not None:  # final counts drawn before the "Finished" line below
            self.progress.stop()
            self.progress = None
        if state.is_completed():
            hits = run.cache_hits
            # The state as text: a handler that keeps its records (a notebook's, pytest's) must not keep
            # the flow run's value, its task runs and their states alive with it.
            if hits or run.cache_misses:
                self.logger.info("Finished in state %s; cache: %d hits, %d misses", repr(state), hits, run.cache_misses)
            else:
                self.logger.info("Finished in state %s", repr(state))
        if hooks_for(self.options, state):
            # Inside the run's context again, so a hook's print under log_prints is logged as the run's.
            with use_flow_run_context(self.context) if self.context is not None else nullcontext():
                run_state_hooks(self.options, self.flow, run, state, self.logger)
        return state

    def outcome(self, return_state: bool) -> Any:
        state = self.run.state
        if return_state:
            return state  # a FlowRunState: state.flow_run is the run (see finish)
        return state.result()


def _consumed(value: Any) -> Any:
    """A returned generator as the list of what it yields, as Prefect documents (a run's value is kept and
    stored, which a generator cannot be); consumed inside the run, so tasks it calls belong to the run."""
    if isinstance(value, types.GeneratorType):
        return list(value)
    return value


def _consuming(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose returned generator is consumed where it runs (under the flow's timeout)."""

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        return _consumed(fn(*args, **kwargs))

    return body


async def _consumed_async(value: Any) -> Any:
    """As :func:`_consumed`, and an async generator (returned by an ``async def`` flow) too."""
    if isinstance(value, types.AsyncGeneratorType):
        return [item async for item in value]
    return _consumed(value)


class ReturnValue:
    """A flow body's return value with its runs resolved, and which of them failed."""

    def __init__(self) -> None:
        self.data: Any = None
        self.failed: list[State] = []
        self.total = 0
        self.returned: State | None = None  # the body returned a state, or a run's future: the flow's state
        self.decides = True  # whether the runs in the value decide the flow's state (see collect_return)

    def on_state(self, state: State, allowed: bool) -> Any:
        self.total += 1
        if state.is_completed():
            return state.data
        if not self.decides:
            return state  # kept as the state, as Prefect keeps it
        self.failed.append(state)
        return state.result(raise_on_failure=False)


def run_flow_sync(flow: Any, args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool = False) -> Any:
    """Run a flow to its final state in this thread; returns its value (or its state)."""
    engine = FlowRunEngine(flow, args, kwargs)
    if engine.prepare() is not None:
        return engine.outcome(return_state)
    while True:
        engine.begin_attempt()
        try:
            with engine.running(engine.new_runner()):
                ret = engine.collect_return(engine.call_body())
            delay = engine.handle_return(ret)
        except KeyboardInterrupt as exc:
            engine.handle_exception(exc)
            raise
        except BaseException as exc:
            delay = engine.handle_exception(exc)
        if delay is None or not engine.wait_before_retry(delay):
            break
    return engine.outcome(return_state)


async def run_flow_async(flow: Any, args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool = False) -> Any:
    """Run an ``async def`` flow to its final state; returns its value (or its state)."""
    engine = FlowRunEngine(flow, args, kwargs)
    if engine.prepare() is not None:
        return engine.outcome(return_state)
    timeout = engine.options.timeout_seconds
    while True:
        engine.begin_attempt()
        try:
            with engine.running(engine.new_runner()):
                args_, kwargs_ = split_arguments(flow.fn, engine.parameters)
                try:
                    async with asyncio.timeout(timeout) as deadline:
                        value = await _consumed_async(await flow.fn(*args_, **kwargs_))
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    raise RunTimeoutError(
                        f"flow run {engine.run.name!r} did not finish within timeout_seconds={timeout:g}; "
                        "it was marked TimedOut (raise timeout_seconds if the work needs longer)"
                    ) from None
                ret = await asyncio.to_thread(engine.collect_return, value)
            delay = engine.handle_return(ret)
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            engine.handle_exception(exc)
            if engine.cancel_reason is None or isinstance(exc, KeyboardInterrupt):
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # our own cancel from outside: the run is over, the caller's task goes on
            break
        except BaseException as exc:
            delay = engine.handle_exception(exc)
        if delay is None or not await asyncio.to_thread(engine.wait_before_retry, delay):
            break
    return engine.outcome(return_state)
