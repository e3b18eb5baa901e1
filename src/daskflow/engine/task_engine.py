"""The task engine: everything around one task run, written once.

A task run goes Pending -> Running -> (AwaitingRetry -> Retrying)* -> final.
:class:`TaskRunEngine` holds that state machine: ``prepare`` resolves the
inputs (or ends the run if an upstream failed or the flow was cancelled),
``begin_attempt`` starts an attempt, ``handle_success`` and
``handle_exception`` decide what an attempt's outcome means — a final state,
or a retry after a delay — and ``finish`` records the final state and runs the
hooks. The two drivers, :func:`run_task_sync` and :func:`run_task_async`, only
call the user's function and wait; every runner (in-thread, thread pool, Dask
worker) runs tasks through them, so states, retries, timeouts and hooks
behave the same everywhere.

The sync driver is on the hot path of every task call, so it avoids work that
is not needed: no thread unless ``timeout_seconds`` is set, no logger unless a
record will be emitted, no copies of the arguments unless a future is in them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Any, TypeVar

from daskflow.cache_policies import CompoundCachePolicy, FlowParameters, Inputs, NoCache, RunId, TaskSource
from daskflow.concurrency import LOCAL, Limit, limits_for_task
from daskflow.context import TaskRunContext, get_task_run_context, use_task_run_context, waiting
from daskflow.engine.caching import (
    key_lock,
    read_entry,
    result_store,
    storage_key,
    write_behind_enabled,
    write_entry,
    write_entry_behind,
)
from daskflow.engine.calls import TaskCall
from daskflow.engine.hooks import call_hooks, commit_of, run_state_hooks
from daskflow.engine.inputs import materialize, resolve_inputs, wait_for_all
from daskflow.engine.retries import judge_attempt
from daskflow.engine.run_names import RunNameError, format_run_name
from daskflow.engine.timeouts import call_with_timeout
from daskflow.exceptions import (
    CancelledRunError,
    ResultError,
    RunTimeoutError,
    UnhashableInputError,
    UpstreamFailedError,
)
from daskflow.locking import engine_isolation, policy_lock
from daskflow.logging import TASK_LOGGER, RunLoggerAdapter, install_print_capture, run_logger_for
from daskflow.results import ResultStore
from daskflow.states import (
    Cached,
    Cancelled,
    Completed,
    Crashed,
    DeferredData,
    Failed,
    KnownValue,
    NotReady,
    Retrying,
    Running,
    State,
    TimedOut,
)

__all__ = ["TaskRunEngine", "not_run", "run_coroutine", "run_task_async", "run_task_sync", "split_arguments"]

T = TypeVar("T")
_task_logger = logging.getLogger(TASK_LOGGER)
_CANCELS = (CancelledRunError, KeyboardInterrupt, asyncio.CancelledError)
_VALUE_BLIND = (Inputs, TaskSource, FlowParameters, RunId, NoCache)


def _NOTHING_HELD() -> None:
    return None


_BY_POSITION, _EXTEND, _BY_KEYWORD, _UPDATE = range(4)


@lru_cache(maxsize=4096)
def _signature_plan(fn: Callable[..., Any]) -> tuple[tuple[str, int], ...] | None:
    """How to pass each parameter; None when all go by keyword (the fast, common case)."""
    params = list(inspect.signature(fn).parameters.values())
    if all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
        return None
    has_var_args = any(p.kind is p.VAR_POSITIONAL for p in params)
    plan = []
    for p in params:
        if p.kind is p.POSITIONAL_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and has_var_args):
            plan.append((p.name, _BY_POSITION))  # must go before *args, so by position
        elif p.kind is p.VAR_POSITIONAL:
            plan.append((p.name, _EXTEND))
        elif p.kind is p.VAR_KEYWORD:
            plan.append((p.name, _UPDATE))
        else:
            plan.append((p.name, _BY_KEYWORD))
    return tuple(plan)


def split_arguments(fn: Callable[..., Any], parameters: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` that call ``fn`` with the bound ``parameters``."""
    plan = _signature_plan(fn)
    if plan is None:
        return (), parameters
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, how in plan:
        if name not in parameters:
            continue
        value = parameters[name]
        if how == _BY_POSITION:
            args.append(value)
        elif how == _EXTEND:
            args.extend(value)
        elif how == _UPDATE:
            kwargs.update(value)
        else:
            kwargs[name] = value
    return tuple(args), kwargs


class TaskRunEngine:
    """The state machine of one task run (see the module docstring)."""

    __slots__ = (
        "call",
        "task",
        "options",
        "run",
        "parameters",
        "context",
        "store",
        "key",
        "limits",
        "_logger",
        "_flight",
        "_kept",
        "_shared_flight",
        "_nested",
    )

    def __init__(self, call: TaskCall) -> None:
        self.call = call
        self.task = call.task
        self.options = call.task.options
        self.run = call.task_run
        self.parameters: dict[str, Any] = call.parameters
        self.context: TaskRunContext | None = None
        self.store: ResultStore | None = None
        self.key: str | None = None
        self._logger: RunLoggerAdapter | None = None
        self._flight: AbstractContextManager[None] | None = None
        self.limits: tuple[Limit, ...] = ()
        # The versioned upstream values kept as references while the cache key is computed.
        self._kept: list[DeferredData] | None = None
        self._shared_flight = False  # a single-flight lock other processes wait on is held
        # Started inside another task's run (a task calling a task): its flow run's drain does not
        # know where it ran, so its entry is written before its value goes on.
        self._nested = get_task_run_context() is not None

    @property
    def logger(self) -> RunLoggerAdapter:
        if self._logger is None:
            call = self.call
            self._logger = run_logger_for(
                flow_run_id=call.flow_run_id,
                flow_run_name=call.flow_run_name,
                flow_name=call.flow_name,
                task_run_id=self.run.id,
                task_run_name=self.run.name,
                task_name=self.run.task_name,
            )
        return self._logger

    @property
    def where(self) -> str:
        return f"task run {self.run.name!r}"

    @property
    def state(self) -> State:
        return self.run.state

    def cancelled(self) -> bool:
        event = self.call.cancel_event
        return event is not None and event.is_set()

    def prepare(self) -> State | None:
        """Resolve the inputs. Returns the final state if the task cannot run."""
        call = self.call
        if self.cancelled():
            return self.finish(Cancelled("the flow run was cancelled before this task started"), hooks=False)
        caching = getattr(self.task, "caching", False)
        # A cache key names versioned inputs by their version: they are only read on a miss.
        kept: list[DeferredData] | None = [] if caching else None
        try:
            if call.wait_for:
                wait_for_all(call.wait_for, self.where)
            self.parameters = resolve_inputs(call.parameters, self.where, kept)
            if kept and (self.options.task_run_name is not None or _policy_reads_values(self.task.cache_policy)):
                self.parameters, kept = materialize(self.parameters, self.where), None
        except UpstreamFailedError as exc:
            return self.finish(not_run(exc), hooks=False)
        self._kept = kept or None
        if call.log_prints:
            install_print_capture()
        self.context = call.run_context(self.parameters)
        template = self.options.task_run_name
        if template is not None:
            # Named inside the run's context: a naming function may read daskflow.runtime (as in Prefect's docs).
            try:
                with use_task_run_context(self.context):
                    self.run.name = format_run_name(template, self.parameters, self.options.where(), "task_run_name")
            except RunNameError as exc:
                return self.finish(Failed(str(exc), exc.cause), hooks=False)
        options = self.options
        if options.concurrency_limit is not None or call.concurrency_limits:
            self.limits = limits_for_task(
                options.name, self.run.tags, options.concurrency_limit, call.concurrency_limits
            )
        if caching:
            early = self._look_up_cache()
            if early is not None or not self._kept:
                return early
            try:  # a miss: now the inputs are needed
                self.parameters = self.context.parameters = materialize(self.parameters, self.where)
            except UpstreamFailedError as exc:
                return self.finish(not_run(exc), hooks=False)
            finally:
                self._kept = None
        return None

    def _look_up_cache(self) -> State | None:
        """Compute the cache key; on a hit, end the run as Cached without running it."""
        options = self.options
        try:
            key = self.call.known_key  # computed where the call was made (a prefetch miss), else here
            if key is None:
                key = self.task.cache_policy.compute_key(self.context, self.parameters, self.call.flow_parameters)
        except UnhashableInputError as exc:
            return self.finish(Failed(str(exc), exc), hooks=False)
        if key is None:
            return None
        policy = self.task.cache_policy
        # policy.configure(key_storage=...) keeps this policy's records elsewhere (daskflow.locking).
        self.store = result_store(getattr(policy, "key_storage", None) or options.result_storage)
        self.key = self.run.cache_key = storage_key(options.name, key)
        if options.refresh_cache:
            return None
        entry = read_entry(self.store, self.key, options.name, self.logger, self.call.flow_run_id)
        if entry is None:
            # Single flight: wait while an identical run computes, then look again.
            isolation = engine_isolation(options.cache_isolation, policy)
            flight = policy_lock(policy, self.key, self.run.id)
            # Waiters on a lock other processes share look for the entry itself: it is written before release.
            self._shared_flight = flight is not None or (
                isolation == "serializable" and self.call.coordination is not None
            )
            if flight is None:
                flight = key_lock(isolation, self.key, self.call.coordination)
            if flight is not None:
                flight.__enter__()
                self._flight = flight
                entry = read_entry(self.store, self.key, options.name, self.logger, self.call.flow_run_id)
        if entry is None:
            return None
        return self.finish(Cached(entry, f"cache hit: {self.key}"))

    def release(self) -> None:
        """Let identical runs waiting on this one go (they find its entry, or compute)."""
        flight, self._flight = self._flight, None
        if flight is not None:
            flight.__exit__(None, None, None)

    def acquire_slots(self) -> Callable[[], None] | None:
        """Wait for a slot of every limit this run is under; returns their release (None if none)."""
        if not self.limits:
            return None
        started = time.monotonic()
        coordination = self.call.coordination or LOCAL
        gave_up = False
        try:
            release_slots: Callable[[], str | None] = coordination.acquire(self.limits)
        except CancelledRunError:  # the flow run was cancelled while this run waited: it ends here
            release_slots, gave_up = _NOTHING_HELD, True
        self.run.slot_wait += time.monotonic() - started
        if gave_up or self.cancelled():  # cancelled meanwhile: a slot taken just now goes on to another run
            release_slots()
            self.finish(
                Cancelled("the flow run was cancelled while this run waited for a concurrency slot"), hooks=False
            )
            return None

        def release() -> None:
            warning = release_slots()
            if warning:
                self.logger.warning("%s", warning)

        return release

    def begin_attempt(self) -> None:
        run = self.run
        run.run_count += 1
        run.set_state(Running() if run.run_count == 1 else Retrying(f"attempt {run.run_count}"))
        if self.options.on_running:
            run_state_hooks(self.options, self.task, run, run.state, self.logger)

    def handle_success(self, value: Any) -> State:
        if isinstance(value, State):  # the function said how its run ends, as Prefect allows
            return self._returned_state(value)
        if self.key is not None and self.store is not None:
            version = self._store_entry(self.store, self.key, value)
            if version is not None:  # downstream keys name this value by the entry's version
                return self.finish(Completed(KnownValue(value, version)))
        return self.finish(Completed(value))

    def _store_entry(self, store: ResultStore, key: str, value: Any) -> str | None:
        """Write the run's cache entry, behind the value where that is safe; the entry's version, or None.

        Behind the value (see :mod:`daskflow.results.write_behind`) when a flow
        run will drain the write before it ends, and nothing needs the entry
        before then: not a transaction (its rollback deletes the entry), and not
        a single-flight lock shared across processes (a waiter elsewhere looks
        for the entry as soon as the lock is released), and not a run started
        inside another task's (the drain looks where the flow's own runs ran).
        On a Dask worker too, whose writer the flow's runner drains: a worker
        that dies with a write in flight takes the write with it (the entry is
        absent, never partial), and if Dask then computes the lost value again
        (the run had reported ``Completed``), that recompute runs the body again
        as a recorded re-run of the run (see
        :mod:`daskflow.task_runners.dask_events`), or hits the entry if it had
        landed. The run is ``Completed`` when its value exists; what became of
        its entry is in its log (a failed write is a warning, as it always was)
        and in its flow run's drain.
        """
        call = self.call
        owner = call.flow_run_id
        behind = not (call.in_transaction or self._shared_flight or self._nested)
        if owner is not None and behind and write_behind_enabled():
            version = write_entry_behind(store, key, value, self.options, self.logger, owner, self.run.name)
            if version is not None:
                return version
        return write_entry(store, key, value, self.options, self.logger)

    def _returned_state(self, returned: State) -> State:
        if not returned.is_final():
            return self.finish(
                Failed(
                    f"{self.where} returned the state {returned.name}, which is not final; return a final state "
                    "(Completed, Failed, ...) or a value"
                )
            )
        return self.finish(returned.copy())

    def handle_exception(self, exc: BaseException) -> float | None:
        """Record a failed attempt: seconds to wait before retrying, or None if it was final."""
        if isinstance(exc, _CANCELS):
            self.finish(
                Cancelled(f"cancelled while running: {type(exc).__name__}", exc if isinstance(exc, Exception) else None)
            )
            return None
        if isinstance(exc, RunTimeoutError):
            make_state: Callable[..., State] = TimedOut
        elif isinstance(exc, Exception):
            make_state = Failed
        else:  # SystemExit and friends: the process, not the task, gave up
            make_state = functools.partial(Crashed, f"{type(exc).__name__} raised inside the task")
        return self._judge(lambda traceback: make_state(exception=exc, with_traceback=traceback), exc)

    def handle_crash(self, message: str) -> float | None:
        """Record that the last attempt ended with its process (infrastructure, not the task's code).

        The runner reports it (a Dask worker died under the attempt); it counts as
        one attempt under the task's own policy, like an exception: seconds to wait
        before retrying, or None if the run ended ``Crashed``.
        """
        if self.cancelled():
            self.finish(Cancelled("the flow run was cancelled after an attempt crashed"), hooks=False)
            return None
        return self._judge(lambda traceback: Crashed(message), None)

    def _judge(self, make_state: Callable[[bool], State], exc: BaseException | None) -> float | None:
        """The one retry decision (:func:`~daskflow.engine.retries.judge_attempt`), then the final state."""
        state, delay = judge_attempt(self.run, self.options, self.task, self.where, self.logger, make_state, exc)
        if delay is None:
            self.finish(state)
        return delay

    def wait_before_retry(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; False (and the run Cancelled) if the flow was cancelled meanwhile."""
        event = self.call.cancel_event
        if delay <= 0:
            cancelled = event is not None and event.is_set()
        else:
            # The runner may lend this thread meanwhile (a Dask worker secedes): runs that
            # failed together wait their delays together, not one after another.
            with waiting():
                if event is None:
                    time.sleep(delay)
                    cancelled = False
                else:
                    cancelled = event.wait(delay) or event.is_set()
        if cancelled:
            self.finish(Cancelled("the flow run was cancelled while waiting to retry"))
            return False
        return True

    def finish(self, state: State, hooks: bool = True) -> State:
        if self.run.state.is_final():  # already ended from outside (a cancelled flow run)
            return self.run.state
        self.run.set_state(state)
        if hooks:
            self._run_hooks(state)
        if _task_logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("Finished in state %s", repr(state))  # a record that is kept must not keep the value
        return state

    def _run_hooks(self, state: State) -> None:
        options = self.options
        # A hit's result was committed by its first run; inside a transaction() the block commits.
        if options.on_commit and state.is_completed() and not state.is_cached() and not self.call.in_transaction:
            call_hooks(options.on_commit, (commit_of(self.run, state),), self.logger)
        run_state_hooks(options, self.task, self.run, state, self.logger)


def not_run(exc: UpstreamFailedError) -> State:
    """The final state of a run whose inputs could not be had.

    An input whose run did not complete leaves this run ``NotReady``, as in Prefect
    (see :func:`~daskflow.states.NotReady`); an input whose run completed but whose
    stored value could not be read is this run's own failure (the next run recomputes).
    """
    if isinstance(exc.__cause__, ResultError):
        return Failed(str(exc), exc)
    return NotReady(str(exc), exc)


def _policy_reads_values(policy: Any) -> bool:
    """Whether a cache policy looks at argument values (so versioned references must be loaded first).

    The built-in parts hash what they are given, a reference by its version; a
    ``cache_key_fn``, ``FileVersions`` (it reads the paths) or a policy of the
    user's own is handed the values themselves.
    """
    if isinstance(policy, CompoundCachePolicy):
        return any(_policy_reads_values(part) for part in policy.policies)
    return not isinstance(policy, _VALUE_BLIND)


def run_task_sync(call: TaskCall) -> State:
    """Run one task call to its final state in this thread; returns that state."""
    task = call.task
    if task.isasync:
        return run_coroutine(run_task_async(call))
    engine = TaskRunEngine(call)
    try:
        return _drive_sync(engine, task.fn)
    finally:
        engine.release()


def _drive_sync(engine: TaskRunEngine, fn: Callable[..., Any]) -> State:
    crash = engine.call.crash
    if crash is not None:  # the runner reports that the previous attempt crashed: judged first
        delay = engine.handle_crash(crash)
        if delay is None or not engine.wait_before_retry(delay):
            return engine.state
    early = engine.prepare()
    if early is not None:
        return early
    args, kwargs = split_arguments(fn, engine.parameters)
    timeout = engine.options.timeout_seconds
    assert engine.context is not None
    with use_task_run_context(engine.context):
        while True:
            # Slots are held for an attempt, not across the wait before a retry.
            release = engine.acquire_slots()
            if engine.state.is_final():  # cancelled while waiting for a slot
                break
            try:
                engine.begin_attempt()
                if timeout is None:
                    value = fn(*args, **kwargs)
                else:
                    value = call_with_timeout(fn, args, kwargs, timeout, engine.where)
            except KeyboardInterrupt as exc:
                engine.handle_exception(exc)
                raise
            except BaseException as exc:
                delay = engine.handle_exception(exc)
            else:
                engine.handle_success(value)
                break
            finally:
                if release is not None:
                    release()
            if delay is None or not engine.wait_before_retry(delay):
                break
    return engine.state


async def run_task_async(call: TaskCall) -> State:
    """Run one task call of an ``async def`` task to its final state."""
    engine = TaskRunEngine(call)
    try:
        return await _drive_async(engine, call)
    finally:
        engine.release()


async def _drive_async(engine: TaskRunEngine, call: TaskCall) -> State:
    if call.crash is not None:  # the runner reports that the previous attempt crashed: judged first
        delay = engine.handle_crash(call.crash)
        if delay is None or not await asyncio.to_thread(engine.wait_before_retry, delay):
            return engine.state
    if call.wait_for or engine.run.upstream_ids or getattr(call.task, "caching", False):
        # Waiting on upstream futures or on an identical run's cache lock blocks:
        # keep the event loop free meanwhile.
        early = await asyncio.to_thread(engine.prepare)
    else:
        early = engine.prepare()
    if early is not None:
        return early
    fn = call.task.fn
    args, kwargs = split_arguments(fn, engine.parameters)
    timeout = engine.options.timeout_seconds
    assert engine.context is not None
    with use_task_run_context(engine.context):
        while True:
            # Waiting for a slot blocks: in a thread, so the event loop runs on.
            release = await asyncio.to_thread(engine.acquire_slots) if engine.limits else None
            if engine.state.is_final():  # cancelled while waiting for a slot
                break
            try:
                engine.begin_attempt()
                async with asyncio.timeout(timeout) as deadline:
                    value = await fn(*args, **kwargs)
            except TimeoutError:
                if deadline.expired():
                    exc = RunTimeoutError(
                        f"{engine.where} did not finish within timeout_seconds={timeout:g}; it was marked TimedOut "
                        "(raise timeout_seconds if the work needs longer)"
                    )
                delay = engine.handle_exception(exc)
            except (asyncio.CancelledError, KeyboardInterrupt) as exc:
                engine.handle_exception(exc)
                raise
            except BaseException as exc:
                delay = engine.handle_exception(exc)
            else:
                engine.handle_success(value)
                break
            finally:
                if release is not None:
                    release()
            if delay is None:
                break
            if delay > 0:
                await asyncio.sleep(delay)
            if engine.cancelled():
                engine.finish(Cancelled("the flow run was cancelled while waiting to retry"))
                break
    return engine.state


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # This thread already runs a loop (a notebook, an async flow): use a fresh thread.
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:
            outcome["error"] = exc

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name="daskflow-coroutine", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value
