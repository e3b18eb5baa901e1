"""Tasks: ``@task`` and the :class:`Task` it makes.

A task wraps a function with orchestration: retries, a timeout, caching,
concurrency limits, hooks, a state for every run. Calling it inside a flow
runs it and returns its value; ``.submit()`` starts it and returns a future;
``.map()`` starts one run per item of its iterable arguments in one batch.
Outside a flow a call runs the function plainly, with retries and caching
still applied. The Task object only describes and dispatches: the engine runs
it and the flow's task runner decides where.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

from daskflow import runtime
from daskflow.annotations import BaseAnnotation, quote, unmapped
from daskflow.cache_policies import CachePolicy, resolve_cache_policy, task_input_hash, task_source_key
from daskflow.context import get_flow_run_context, get_task_run_context, use_task_run_context
from daskflow.engine import TaskCall, exponential_backoff, make_calls, run_task_async, run_task_sync
from daskflow.engine.caching import caching_enabled
from daskflow.engine.direct import lean_here, lean_options, run_direct
from daskflow.engine.prefetch import LOCAL_REACH, look_up_calls, reach_of
from daskflow.exceptions import ConfigurationError, UnhashableInputError
from daskflow.futures import DaskflowFuture, DaskflowFutureList
from daskflow.options import TaskOptions, build_options, with_changes
from daskflow.parameters import Binder
from daskflow.states import State
from daskflow.task_runners import SequentialTaskRunner, TaskRunner, ThreadPoolTaskRunner
from daskflow.task_runners.sequential import submit_misses

__all__ = ["ResultStorageKey", "Task", "exponential_backoff", "task", "task_input_hash"]

P = ParamSpec("P")
R = TypeVar("R")

# Never iterated by .map (Prefect's rule too); a mapping is iterated over its keys, as in Prefect.
_STATIC_TYPES = (str, bytes, bytearray)
# Values whose identity says nothing of where they came from: equal ones are often one shared object.
_UNTRACKED = (str, bytes, int, float, bool, type(None), complex)
_default_runner: TaskRunner | None = None
# The runners whose direct calls run here, in the caller's thread (TaskRunner.call not overridden).
_RUNS_HERE = TaskRunner.call


def _background_runner() -> TaskRunner:
    """The thread pool used by ``.submit``/``.map`` outside a flow (started once per process)."""
    global _default_runner
    if _default_runner is None:
        runner = ThreadPoolTaskRunner()
        runner.start()
        _default_runner = runner
    return _default_runner


def _looks_up_here(runner: TaskRunner) -> bool:
    """Whether hits are looked up before handing calls to ``runner``: daskflow's own runners only.

    Others (the compiler's tracing runner, a user's) get every call, as they always did.
    """
    if isinstance(runner, SequentialTaskRunner | ThreadPoolTaskRunner):
        return True
    dask_runners = sys.modules.get("daskflow.task_runners.dask")  # loaded once a Dask runner exists
    return dask_runners is not None and isinstance(runner, dask_runners.DaskTaskRunner)


def _cached_here(runner: TaskRunner, call: TaskCall) -> State | None:
    """The run's final state if its cache entry was found here (see daskflow.engine.prefetch)."""
    if not getattr(call.task, "caching", False) or not _looks_up_here(runner):
        return None
    reach = reach_of(runner)
    if reach is LOCAL_REACH:  # a local runner runs it in this process: its engine looks it up as cheaply
        return None
    [hit] = look_up_calls([call], reach)
    return hit


def _submit(runner: TaskRunner, calls: list[TaskCall]) -> list[DaskflowFuture[Any]]:
    """Hand ``calls`` to the runner, all but those whose cache entry was found here: they are done."""
    if not calls or not getattr(calls[0].task, "caching", False) or not _looks_up_here(runner):
        return runner.submit_batch(calls)
    return submit_misses(calls, look_up_calls(calls, reach_of(runner)), runner.submit_batch)


def _handed_on(flow_ctx: Any, run_id: str, state: State) -> Any:
    """A direct call's value, noted as made by its run: a task it is passed to names that run upstream."""
    value = state.result()
    if not isinstance(value, _UNTRACKED):  # small ints and the like are shared objects
        flow_ctx.produced[id(value)] = (run_id, value)
    return value


def _is_mappable(value: Any) -> bool:
    if isinstance(value, _STATIC_TYPES) or not isinstance(value, Iterable):
        return False
    # A DataFrame iterates over its column names: never what a map means.
    return type(value).__name__ != "DataFrame"


class Task(Generic[P, R]):
    """A function with orchestration around it. Made by ``@task``."""

    def __init__(self, fn: Callable[P, R], **options: Any) -> None:
        if not callable(fn):
            raise ConfigurationError(f"@task must decorate a function, got {type(fn).__name__}")
        self.fn = fn
        self.options: TaskOptions = build_options(TaskOptions, fn, options)
        self.cache_policy = _cache_policy(self.options)
        self._set_caching()
        self.isasync = inspect.iscoroutinefunction(fn)
        self._binder = Binder(fn, self.options.where())
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.options.name

    def __getattr__(self, attr: str) -> Any:
        # task.retries, task.tags, ...: every option reads as an attribute, as in Prefect.
        options = self.__dict__.get("options")
        if options is not None and attr in options.__dataclass_fields__:
            return getattr(options, attr)
        raise AttributeError(f"{type(self).__name__!s} object has no attribute {attr!r}")

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, fn={getattr(self.fn, '__qualname__', self.fn)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A task that is an attribute of an importable module travels by reference, like
        # a function: a few bytes instead of its options and code, for every Dask task.
        module_name = getattr(self.fn, "__module__", None)
        name = getattr(self.fn, "__name__", None)
        module = sys.modules.get(module_name or "")
        if (
            module is not None
            and module_name != "__main__"
            and name
            and getattr(module, name, None) is self
            and module_name not in _by_value_modules()
        ):
            return (_task_from_module, (module_name, name))
        code = getattr(self.fn, "__code__", None)
        return (_task_from_state, (type(self), self.__dict__, code.co_filename if code is not None else None))

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return self._binder.bind(args, kwargs)

    # -- running -----------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task now and return its value.

        Two keywords are daskflow's, not the function's: ``return_state=True``
        returns the run's final state instead, ``wait_for=[...]`` waits for
        other runs first.
        """
        return_state = bool(kwargs.pop("return_state", False)) if kwargs else False
        wait_for: Iterable[Any] = (kwargs.pop("wait_for", None) or ()) if kwargs else ()  # type: ignore[assignment]
        flow_ctx = get_flow_run_context()
        if (
            flow_ctx is not None
            and not wait_for
            and self._lean()
            and getattr(type(flow_ctx.task_runner), "call", None) is _RUNS_HERE  # runs direct calls in this thread
            and get_task_run_context() is None
            and lean_here(flow_ctx)
        ):
            run = run_direct(self, flow_ctx, self._bind(args, kwargs))
            if return_state:
                return run.state  # type: ignore[return-value]
            return _handed_on(flow_ctx, run.id, run.state)  # type: ignore[no-any-return]
        [call] = make_calls(self, [self._bind(args, kwargs)], wait_for)
        if self.isasync and _loop_running():
            return self._call_async(call, return_state)  # type: ignore[return-value]
        if flow_ctx is not None and get_task_run_context() is None:
            runner = flow_ctx.task_runner
            hit = _cached_here(runner, call)
            state = runner.call(call) if hit is None else hit
            if return_state:
                return state  # type: ignore[return-value]
            return _handed_on(flow_ctx, call.task_run.id, state)  # type: ignore[no-any-return]
        else:
            state = run_task_sync(call)
        return state if return_state else state.result()  # type: ignore[no-any-return, return-value]

    def _lean(self) -> bool:
        """Whether this task's direct calls may take the lean path (daskflow.engine.direct), by its options."""
        known = self.__dict__.get("_lean_for")
        if known is None or known[0] is not self.options:  # options are replaced, never changed, when they change
            known = self.__dict__["_lean_for"] = (self.options, lean_options(self))
        return known[1]

    async def _call_async(self, call: TaskCall, return_state: bool) -> Any:
        state = await run_task_async(call)
        return state if return_state else state.result()

    def _runner(self) -> TaskRunner:
        flow_ctx = get_flow_run_context()
        if flow_ctx is not None and get_task_run_context() is None:
            runner: TaskRunner = flow_ctx.task_runner
            return runner
        return _background_runner()

    def submit(
        self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None, **kwargs: Any
    ) -> DaskflowFuture[R]:
        """Start the task and return a future of its run."""
        runner = self._runner()
        calls = make_calls(self, [self._bind(args, kwargs)], wait_for or ())
        [future] = _submit(runner, calls)
        if return_state:
            future.wait()
            return future.state  # type: ignore[return-value]
        return future

    def map(
        self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None, **kwargs: Any
    ) -> DaskflowFutureList[R]:
        """Start one run per item of the iterable arguments, in one batch.

        Iterable arguments (lists, tuples, ranges, generators, sets, futures
        whose value is a list) are iterated in step, and a dict over its keys,
        as in Prefect; strings, bytes and DataFrames, and anything wrapped in
        ``unmapped(...)``, go whole to every run.
        """
        runner = self._runner()
        bound = self._bind(args, kwargs)
        parameter_sets, sources = self._expand(bound, runner)
        calls = make_calls(self, parameter_sets, wait_for or (), mapped=True, sources=sources)
        futures: DaskflowFutureList[R] = DaskflowFutureList(_submit(runner, calls))
        if return_state:
            futures.wait()
            return [f.state for f in futures]  # type: ignore[return-value]
        return futures

    def _expand(self, bound: dict[str, Any], runner: TaskRunner) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        """The parameter sets of the runs, and the runs whose futures were expanded into items."""
        static: dict[str, Any] = {}
        mapped: dict[str, list[Any]] = {}
        sources: list[str] = []  # an item taken out of a future's list still came from that run
        for name, value in bound.items():
            wrapper: type[BaseAnnotation[Any]] | None = None
            inner = value
            if isinstance(value, unmapped) or isinstance(value, quote):
                static[name] = value
                continue
            if isinstance(value, BaseAnnotation):
                wrapper, inner = type(value), value.value
            if isinstance(inner, DaskflowFuture):
                sources.append(inner.task_run_id)
                inner = runner.expand_future(inner)
            if _is_mappable(inner):
                items = list(inner)
                mapped[name] = [wrapper(item) for item in items] if wrapper else items
            else:
                static[name] = value
        where = self.options.where()
        if not mapped:
            raise ConfigurationError(
                f"{where}: .map() needs at least one iterable argument, got none "
                f"({', '.join(f'{k}={type(v).__name__}' for k, v in bound.items()) or 'no arguments'}); "
                "pass a list, or call .submit() for a single run"
            )
        lengths = {name: len(items) for name, items in mapped.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(
                f"{name}: {n}{' (a dict: its keys are mapped over)' if isinstance(bound[name], Mapping) else ''}"
                for name, n in lengths.items()
            )
            raise ConfigurationError(
                f"{where}: .map() got iterables of different lengths ({detail}); "
                "give them the same length, or wrap the ones to pass whole in unmapped(...)"
            )
        count = next(iter(lengths.values()))
        parameter_sets = [{**static, **{name: items[i] for name, items in mapped.items()}} for i in range(count)]
        return parameter_sets, tuple(sources)

    # -- options -----------------------------------------------------------------------------

    def with_options(self, **changes: Any) -> Task[P, R]:
        """A copy of this task with some options changed."""
        new = _task_from_state(type(self), dict(self.__dict__))
        new.options = with_changes(self.options, changes, self.fn)
        new.cache_policy = _cache_policy(new.options)
        new._set_caching()
        return new

    def _set_caching(self) -> None:
        self.caching = caching_enabled(self.options)
        if self.caching:
            # Computed here, where the source is, so workers without it compute the same key.
            self.source_key = task_source_key(self.fn)

    def _add_hook(self, option: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        self.options = with_changes(self.options, {option: (*getattr(self.options, option), fn)}, self.fn)
        return fn

    def on_completion(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: add ``fn(task, task_run, state)`` as a completion hook."""
        return self._add_hook("on_completion", fn)

    def on_failure(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: add ``fn(task, task_run, state)`` as a failure hook."""
        return self._add_hook("on_failure", fn)

    def on_running(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: add ``fn(task, task_run, state)``, called as each attempt starts running."""
        return self._add_hook("on_running", fn)

    def on_commit(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: add ``fn(transaction)``, called once the run's result is committed (see daskflow.transactions)."""
        return self._add_hook("on_commit", fn)

    def on_rollback(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: add ``fn(transaction)`` as a rollback hook (see daskflow.transactions)."""
        return self._add_hook("on_rollback", fn)


def _by_value_modules() -> set[str]:
    try:
        import cloudpickle

        return set(cloudpickle.list_registry_pickle_by_value())
    except (ImportError, AttributeError):
        return set()


def _task_from_module(module_name: str, name: str) -> Task[Any, Any]:
    import importlib

    task_obj: Task[Any, Any] = getattr(importlib.import_module(module_name), name)
    return task_obj


def _task_from_state(cls: type[Task[Any, Any]], state: dict[str, Any], filename: str | None = None) -> Task[Any, Any]:
    task_obj = cls.__new__(cls)
    task_obj.__dict__.update(state)
    code = getattr(task_obj.fn, "__code__", None)
    if filename and code is not None and code.co_filename == _PICKLED_FILENAME:
        # cloudpickle ships code by value without its file name (for deterministic pickles);
        # put it back, so that a traceback from a worker names the user's file, not "<dynamic-code>".
        task_obj.fn.__code__ = _with_filename(code, filename)
    return task_obj


_PICKLED_FILENAME = "<dynamic-code>"


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    """``code`` and the code objects nested in it (comprehensions, inner functions) as from ``filename``."""
    consts = tuple(
        _with_filename(c, filename) if isinstance(c, types.CodeType) and c.co_filename == _PICKLED_FILENAME else c
        for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


@dataclasses.dataclass(frozen=True)
class ResultStorageKey(CachePolicy):
    """The cache policy of a task with ``result_storage_key``: the key is the rendered template.

    As in Prefect, the result is stored under that key and a later run whose
    template renders to the same key reads it instead of running. The
    template sees ``parameters`` (the task's arguments), ``flow_run`` and
    ``task_run`` (the :mod:`daskflow.runtime` modules, so ``{flow_run.id}``,
    ``{task_run.name}``...), rendered where the run executes.
    """

    template: str

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any]) -> str | None:
        with use_task_run_context(task_ctx):
            try:
                return self.template.format(
                    parameters=inputs,
                    flow_run=runtime.flow_run,
                    task_run=runtime.task_run,
                    task=runtime.task_run,
                    flow=runtime.flow_run,
                )
            except (KeyError, IndexError, AttributeError) as exc:
                raise UnhashableInputError(
                    f"result_storage_key={self.template!r} could not be rendered: {type(exc).__name__}: {exc}. "
                    "Fix: refer to arguments the task has, as {parameters[name]}, or to runtime facts such as "
                    "{flow_run.id} and {task_run.name}"
                ) from None


def _cache_policy(options: TaskOptions) -> Any:
    if options.result_storage_key is not None:
        return ResultStorageKey(options.result_storage_key)
    try:
        return resolve_cache_policy(options.cache_policy, options.cache_key_fn)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{options.where()}: {exc}") from None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(*, name: str | None = None, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[P, R] | None = None, /, **options: Any) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task: ``@task`` or ``@task(name=..., retries=..., ...)``."""
    if fn is None:
        return lambda f: Task(f, **options)
    return Task(fn, **options)
