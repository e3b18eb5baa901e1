"""Compiling a flow ahead of time into a Dask task graph: ``daskflow.compile``.

What a flow body calls, and with what, is only known by running it, so
:func:`compile_flow` runs the body once and *traces* it: inside a flow-run
context whose task runner runs nothing, each direct task call, ``.submit()``
and ``.map()`` item becomes one ``dask.delayed`` node keyed after its task
(``extract-table-<token>``; a map's items share a token, ``...-<token>-<i>``,
so ``dask.base.key_split`` gives the task name), and the body gets stand-ins: a
``Delayed`` for a direct call's value, a traced future for a submitted run.
Stand-ins passed to tasks, also inside lists, dicts, ``unmapped`` and
``allow_failure``, become edges; indexing or arithmetic on a ``Delayed`` makes
a small node of its own, as in ``dask.delayed``. The return value becomes a
last node named after the flow (the :class:`CompiledFlow`), which also waits
for every run nobody consumed, as a flow run does. Computed, a node rebuilds
its call with the upstream values and runs it through the real task engine, so
retries, timeouts, hooks and states behave as in a flow run on any scheduler. A
direct call's node returns the value or raises the task's error (the body
would have raised there); a submitted run's node returns its final state, so
``allow_failure`` and upstream failures behave as in a flow run, and the flow
node raises for failed runs in the return value as a failed flow run does.

What a trace cannot know is a :class:`~daskflow.exceptions.CompileError` naming
the flow, the file and line, what was attempted and the fix: a decision on a
task's value (``if``, ``for``, ``len()``), ``.map()`` over a task's output, the
``.result()`` or state of a traced run, a subflow (its own engine would run it
at once) and an ``async def`` flow. Flow-level retries, timeout and hooks
belong to a flow run and do not apply to a compiled graph; task-level ones do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import linecache
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import dask
from dask.base import annotate, tokenize
from dask.delayed import Delayed, delayed

from daskflow.annotations import BaseAnnotation, quote
from daskflow.context import FlowRunContext, use_flow_run_context
from daskflow.engine import FlowRunEngine, TaskCall, run_task_sync
from daskflow.engine.flow_engine import ReturnValue
from daskflow.engine.inputs import resolve_runs
from daskflow.engine.run_names import RunNameError, format_run_name, generate_run_name
from daskflow.engine.task_engine import split_arguments
from daskflow.exceptions import CompileError
from daskflow.flows import Flow
from daskflow.futures import DaskflowFuture
from daskflow.logging import configure_console_logging
from daskflow.runs import FlowRun, TaskRun, new_run_id
from daskflow.states import Failed, State, StateType
from daskflow.task_runners import TaskRunner
from daskflow.tasks import Task

__all__ = ["CompiledFlow", "compile", "compile_flow"]

_ATOMS = (str, bytes, int, float, bool, type(None), complex)
_CONTAINERS = (list, tuple, set, frozenset, dict)

_KNOWN_LATER = "which is only known when the graph runs"
_FIX_DECIDE = "run the flow normally ({call}), where the body sees real values, or move this decision into a task"
_FIX_RESULT = (
    "pass the future itself to the next task (it becomes a graph edge) instead of waiting on it, "
    "or run the flow normally ({call})"
)
_FIX_MAP = (
    "map over a literal list or a flow parameter, fan out inside one task instead, or run the flow normally ({call})"
)
_FIX_SUBFLOW = (
    "call the subflow's tasks from this flow directly, compile the subflow on its own with "
    "daskflow.compile, or run the flow normally ({call})"
)
_FIX_VALUE = "pass the value to a task, which receives it computed, or run the flow normally ({call})"


class _Refusal(BaseException):
    """Something a trace cannot know. A BaseException so that a body's ``except Exception`` cannot hide it."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix


# -- arguments: stand-ins out at trace time, values back in at compute time ------------------------


class _Slot:
    """The place of an upstream node's value in a detached argument."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _node_of(value: Any) -> Delayed | None:
    if isinstance(value, Delayed):
        return value
    if isinstance(value, (_TracedFuture, _TracedState)):
        return value.node
    return None


class _Upstreams:
    """The upstream nodes of one node, in order; stand-ins in arguments are replaced by slots into it.

    Dask only looks for ``Delayed`` inside plain lists, tuples, sets and dicts,
    not inside ``unmapped``/``allow_failure`` or our traced futures, so the
    arguments are detached here and the nodes handed to Dask as positional
    arguments (a list argument would make Dask re-optimise every element's
    graph: quadratic for a large map). The walk follows the engine's
    ``resolve_runs``: it does not look inside ``quote``.
    """

    def __init__(self) -> None:
        self.nodes: list[Delayed] = []
        self._index: dict[Any, int] = {}

    def detach(self, value: Any) -> tuple[Any, bool]:
        if isinstance(value, _ATOMS):
            return value, False
        node = _node_of(value)
        if node is not None:
            # Keyed by dask key: Delayed overloads ==, so it must never be compared.
            index = self._index.setdefault(node.key, len(self.nodes))
            if index == len(self.nodes):
                self.nodes.append(node)
            return _Slot(index), True
        if isinstance(value, quote):
            return value, False
        if isinstance(value, BaseAnnotation):
            inner, changed = self.detach(value.value)
            return (type(value)(inner) if changed else value), changed
        if isinstance(value, dict):
            pairs = [(key, self.detach(item)) for key, item in value.items()]
            if not any(changed for _, (_, changed) in pairs):
                return value, False
            out = {key: item for key, (item, _) in pairs}
            return (out if type(value) is dict else type(value)(out)), True
        if isinstance(value, _CONTAINERS):
            detached = [self.detach(item) for item in value]
            if not any(changed for _, changed in detached):
                return value, False
            return _rebuild(value, [item for item, _ in detached]), True
        return value, False


def _rebuild(container: Any, items: list[Any]) -> Any:
    if isinstance(container, tuple) and hasattr(container, "_fields"):  # a namedtuple
        return type(container)(*items)
    return type(container)(items)


def _attach(value: Any, values: Sequence[Any]) -> Any:
    """``value`` with each slot replaced by its upstream node's computed value."""
    if isinstance(value, _Slot):
        return values[value.index]
    if isinstance(value, _ATOMS) or isinstance(value, quote):
        return value
    if isinstance(value, BaseAnnotation):
        return type(value)(_attach(value.value, values))
    if isinstance(value, dict):
        out = {key: _attach(item, values) for key, item in value.items()}
        return out if type(value) is dict else type(value)(out)
    if isinstance(value, _CONTAINERS):
        return _rebuild(value, [_attach(item, values) for item in value])
    return value


# -- what the graph's nodes run --------------------------------------------------------------------


class _RunSpec:
    """One node's task run: the traced call with its arguments detached.

    A plain class, not a dataclass, because Dask unpacks dataclass arguments.
    """

    __slots__ = ("call", "detached", "returns_state")

    def __init__(self, call: TaskCall, detached: tuple[str, ...], returns_state: bool) -> None:
        self.call = call
        self.detached = detached
        self.returns_state = returns_state


def _run_traced_call(spec: _RunSpec, *values: Any) -> Any:
    """A node's work: rebuild the call with its upstream values and run it through the engine."""
    template = spec.call
    parameters = template.parameters
    if spec.detached:
        parameters = dict(parameters)
        for name in spec.detached:
            parameters[name] = _attach(parameters[name], values)
    traced = template.task_run
    # A fresh run record per computation: the traced one would carry state from an earlier compute.
    run = TaskRun(
        id=new_run_id(),
        name=traced.name,
        task_name=traced.task_name,
        flow_run_id=traced.flow_run_id,
        map_index=traced.map_index,
        tags=traced.tags,
        upstream_ids=traced.upstream_ids,
    )
    wait_for = tuple(_attach(item, values) for item in template.wait_for)
    call = dataclasses.replace(template, task_run=run, parameters=parameters, wait_for=wait_for)
    state = run_task_sync(call)
    return state if spec.returns_state else state.result()


class _FlowSpec:
    __slots__ = ("returned",)

    def __init__(self, returned: Any) -> None:
        self.returned = returned


def _finish_flow(spec: _FlowSpec, *values: Any) -> Any:
    """The flow node: the body's return value with states resolved, as a flow run's return is.

    ``values`` holds the returned nodes' values, then those of the runs nobody consumed (only waited for).
    """
    ret = ReturnValue()
    ret.data, _ = resolve_runs(_attach(spec.returned, values), ret.on_state)
    if ret.failed:  # the rule of FlowRunEngine.handle_return: raise what the failed flow run would
        first = ret.failed[0]
        raise Failed(f"{len(ret.failed)}/{ret.total} states failed: {first.message}", first.exception).result(
            raise_on_failure=False
        )
    return ret.data


# Wrapped once: every node names its own key, so nothing here needs a token per call.
_RUN_NODE = delayed(_run_traced_call, pure=False)
_FLOW_NODE = delayed(_finish_flow, pure=False)


# -- what the body sees while it is traced ---------------------------------------------------------

_FLOW_ENGINE_INIT = FlowRunEngine.__init__.__code__
# What a state says about how its run ended; `is_*()` too. A trace cannot know any of it.
_UNKNOWN_STATE_FIELDS = frozenset({"type", "name", "data", "exception", "traceback"})


class _TracedState(State):
    """The state of a traced run: unknown until the graph runs, so reading it is refused."""

    __slots__ = ("node", "direct")

    def __init__(self, node: Delayed, direct: bool) -> None:
        super().__init__(StateType.PENDING, "Traced", "traced by daskflow.compile; known when the graph runs")
        self.node = node
        self.direct = direct

    def __getattribute__(self, name: str) -> Any:
        if name == "data" and super().__getattribute__("direct"):
            return super().__getattribute__("node")
        if name.startswith("is_") or name in _UNKNOWN_STATE_FIELDS:
            raise _Refusal(f"the body reads `state.{name}` of a task run, {_KNOWN_LATER}", _FIX_DECIDE)
        return super().__getattribute__(name)

    def __repr__(self) -> str:
        return f"TracedState(key={self.node.key!r})"

    def result(self, raise_on_failure: bool = True) -> Any:
        if self.direct:  # a direct call's value: the node itself stands for it
            return self.node
        raise _Refusal(f"the body calls `.state.result()` on a task's future, {_KNOWN_LATER}", _FIX_RESULT)


class _TracedFuture(DaskflowFuture[Any]):
    """The future of a traced ``.submit()`` or ``.map()`` item: a graph node, never a value."""

    __slots__ = ("node", "_state")

    def __init__(self, task_run: TaskRun, node: Delayed) -> None:
        super().__init__(task_run)
        self.node = node
        self._state = _TracedState(node, direct=False)

    def _final_state(self) -> State | None:
        return self._state

    def wait(self, timeout: float | None = None) -> None:
        return None  # waiting decides nothing; the graph orders runs by their edges

    def add_done_callback(self, fn: Callable[[DaskflowFuture[Any]], None]) -> None:
        fn(self)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        raise _Refusal(f"the body calls `.result()` on a task's future, {_KNOWN_LATER}", _FIX_RESULT)

    def __repr__(self) -> str:
        return f"TracedFuture(task_run={self.task_run.name!r}, key={self.node.key!r})"


class _TraceContext(FlowRunContext):
    """The flow-run context of a trace, which refuses subflows.

    A subflow called in the body runs through its own flow engine and runner, at
    once: nothing of the trace sees its tasks. The one thing its engine reads
    from the trace is the parent's ``flow_run`` (in ``FlowRunEngine.__init__``,
    before any task starts), so reading it from there is the refusal point.
    """

    @property
    def flow_run(self) -> FlowRun:
        caller = sys._getframe(1)
        if caller.f_code is _FLOW_ENGINE_INIT:
            subflow = caller.f_locals.get("flow")
            name = getattr(subflow, "name", subflow)
            raise _Refusal(
                f"the body calls the subflow {name!r}, which would run at once through its own engine "
                "instead of being traced into this graph",
                _FIX_SUBFLOW,
            )
        run: FlowRun = self.__dict__["_trace_flow_run"]
        return run

    @flow_run.setter
    def flow_run(self, run: FlowRun) -> None:
        self.__dict__["_trace_flow_run"] = run


class CompiledFlow(Delayed):
    """A flow compiled into a Dask graph: a ``Delayed`` whose value is the flow's return value.

    Every node of its graph is needed for its value, so there is nothing to cull;
    skipping Dask's low-level optimisation keeps compute-time overhead linear
    (culling a graph of one layer per node costs layers x keys).
    """

    __slots__ = ()
    __dask_optimize__ = None  # dask's documented way to say "no low-level optimisation"

    def __init__(self, key: str, graph: Any) -> None:
        super().__init__(key, graph)  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return f"CompiledFlow({self.key!r}, nodes={len(self.dask)})"


class _TracingRunner(TaskRunner):
    """A task runner that runs nothing: each call becomes a graph node."""

    def __init__(self) -> None:
        super().__init__()
        self._run_keys: set[str] = set()
        # Runs no later node depends on (yet), in trace order: the flow node waits for these.
        self._unconsumed: dict[str, Delayed] = {}

    def call(self, call: TaskCall) -> State:
        node = self._add_node(call, f"{call.task.name}-{tokenize(call.task_run.id)}", returns_state=False)
        return _TracedState(node, direct=True)

    def submit_batch(self, calls: Sequence[TaskCall]) -> list[DaskflowFuture[Any]]:
        if not calls:
            return []
        batch = tokenize(calls[0].task_run.id)
        futures: list[DaskflowFuture[Any]] = []
        for call in calls:
            index = call.task_run.map_index
            suffix = batch if index is None else f"{batch}-{index}"  # one token per map groups its runs
            node = self._add_node(call, f"{call.task.name}-{suffix}", returns_state=True)
            futures.append(_TracedFuture(call.task_run, node))
        return futures

    def _add_node(self, call: TaskCall, key: str, returns_state: bool) -> Delayed:
        upstreams = _Upstreams()
        parameters = dict(call.parameters)
        detached = []
        for name, value in call.parameters.items():
            new, changed = upstreams.detach(value)
            if changed:
                parameters[name] = new
                detached.append(name)
        wait_for = tuple(upstreams.detach(item)[0] for item in call.wait_for)
        template = dataclasses.replace(call, parameters=parameters, wait_for=wait_for, cancel_event=None)
        spec = _RunSpec(template, tuple(detached), returns_state)
        resources = call.task.options.resources
        # Worker resources (e.g. {"GPU": 1}) travel as layer annotations, which the distributed scheduler honours.
        with annotate(resources=dict(resources)) if resources else contextlib.nullcontext():
            node: Delayed = _RUN_NODE(spec, *upstreams.nodes, dask_key_name=key)
        self._consume(upstreams.nodes)
        self._run_keys.add(key)
        self._unconsumed[key] = node
        return node

    def _consume(self, nodes: list[Delayed]) -> None:
        """Mark the runs these nodes depend on as consumed, also through derived nodes (``x["a"]``)."""
        for node in nodes:
            dependencies = getattr(node.__dask_graph__(), "dependencies", {})
            stack = list(node.__dask_layers__())
            seen: set[Any] = set()
            while stack:
                layer = stack.pop()
                if layer in seen:
                    continue
                seen.add(layer)
                if layer in self._run_keys:  # its own upstreams were marked when it was added
                    self._unconsumed.pop(layer, None)
                    continue
                stack.extend(dependencies.get(layer, ()))

    def finish(self, flow: Flow[..., Any], flow_run: FlowRun, returned: Any) -> CompiledFlow:
        upstreams = _Upstreams()
        detached, _ = upstreams.detach(returned)
        self._consume(upstreams.nodes)
        key = f"{flow.name}-{tokenize(flow_run.id)}"
        unconsumed = list(self._unconsumed.values())
        node = _FLOW_NODE(_FlowSpec(detached), *upstreams.nodes, *unconsumed, dask_key_name=key)
        return CompiledFlow(node.key, node.dask)


# -- errors: where in the body, what, and the fix --------------------------------------------------

_DELAYED_USES = {
    "__bool__": (
        f"the body needs the truth value of a task's result (`if`, `while`, `and`/`or`/`not`, `in`, bool()), "
        f"{_KNOWN_LATER}"
    ),
    "__iter__": (
        "the body iterates over or unpacks a task's result (`for`, `a, b = ...`, list()), "
        "whose length is only known when the graph runs"
    ),
    "__len__": f"the body needs len() of a task's result, {_KNOWN_LATER}",
    "__setitem__": "the body assigns into a task's result, which does not exist until the graph runs",
    "__setattr__": "the body assigns into a task's result, which does not exist until the graph runs",
}
_LIBRARY_ROOTS = tuple(
    str(Path(root).resolve())
    for root in (
        Path(__file__).parent,
        Path(dask.__file__).parent,
        sysconfig.get_path("stdlib"),
        sysconfig.get_path("purelib"),
        sysconfig.get_path("platlib"),
    )
)


# A comprehension is a frame of its own, yet it is the line of the body that matters.
_COMPREHENSIONS = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"})


def _frames(tb: TracebackType | None) -> list[tuple[FrameType, int]]:
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    return frames


def _is_user_code(frame: FrameType) -> bool:
    filename = frame.f_code.co_filename
    if filename.startswith("<"):
        return False
    return not str(Path(filename).resolve()).startswith(_LIBRARY_ROOTS)


def _locate(frames: list[tuple[FrameType, int]], body: Any) -> str:
    """Where in the flow body it happened, and in which helper if the body called one."""
    at_body = [i for i, (frame, _) in enumerate(frames) if frame.f_code is body]
    if not at_body:
        return "while the flow body was traced"
    frame, line = frames[at_body[-1]]
    place = f"at {frame.f_code.co_filename}:{line}, in the flow body"
    below = frames[at_body[-1] + 1 :]
    helpers = [(f, n) for f, n in below if _is_user_code(f) and f.f_code.co_name not in _COMPREHENSIONS]
    if helpers:  # the innermost of the user's own functions the body called
        body_place = f"{frame.f_code.co_filename}:{line}"
        frame, line = helpers[-1]
        place = (
            f"at {frame.f_code.co_filename}:{line}, in {frame.f_code.co_name}(), "
            f"called from the flow body at {body_place}"
        )
    source = linecache.getline(frame.f_code.co_filename, line).strip()
    return f"{place}:\n    {source}" if source else place


def _compile_error(flow: Flow[..., Any], what: str, fix: str, exc: BaseException) -> CompileError:
    frames = _frames(exc.__traceback__)
    if any(frame.f_code is Task._expand.__code__ for frame, _ in frames):
        what = "the body maps over a task's output with .map(), but how many runs that makes is only known when the graph runs"
        fix = _FIX_MAP
    where = _locate(frames, flow.fn.__code__)
    return CompileError(
        f"cannot compile flow {flow.name!r} into a Dask graph: {what}.\n  {where}\n"
        f"  Fix: {fix.format(call=f'{flow.fn.__name__}(...)')}."
    )


def _explain(exc: TypeError) -> tuple[str, str] | None:
    """What a TypeError out of the body means, if a ``Delayed`` stand-in caused it (else None)."""
    frames = _frames(exc.__traceback__)
    innermost = frames[-1][0] if frames else None
    if innermost is not None and innermost.f_globals.get("__name__") == "dask.delayed":
        use = _DELAYED_USES.get(innermost.f_code.co_name)
        if use is not None:
            return use, _FIX_DECIDE
    from_dask = any(str(frame.f_globals.get("__name__", "")).startswith("dask.") for frame, _ in frames)
    if from_dask or "Delayed" in str(exc):
        return f"the body uses a task's result as a plain Python value ({exc}), {_KNOWN_LATER}", _FIX_VALUE
    return None


# -- the entry point -------------------------------------------------------------------------------


def _flow_run_name(flow: Flow[..., Any], parameters: dict[str, Any]) -> str:
    template = flow.options.flow_run_name
    if template is None:
        return generate_run_name()
    try:
        return format_run_name(template, parameters, flow.options.where(), "flow_run_name")
    except RunNameError as exc:
        raise CompileError(str(exc)) from exc.cause


def _run_body(flow: Flow[..., Any], context: _TraceContext) -> Any:
    args, kwargs = split_arguments(flow.fn, context.parameters)
    with use_flow_run_context(context):
        return flow.fn(*args, **kwargs)


def _trace(flow: Flow[..., Any], context: _TraceContext) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_body(flow, context)
    # In a running event loop (a notebook), Task.__call__ runs an async task at once instead of
    # asking the runner: trace in a thread that has no loop.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daskflow-compile") as pool:
        return pool.submit(_run_body, flow, context).result()


def compile_flow(flow: Flow[..., Any], /, **params: Any) -> CompiledFlow:
    """Trace ``flow`` with ``params`` into a Dask collection without running any task.

    ``dask.compute(compile_flow(my_flow, x=1))`` gives what ``my_flow(x=1)``
    returns, on any Dask scheduler; ``.visualize()`` draws the graph. Parameters
    are bound and validated as for a flow run (``ParameterValidationError``
    before tracing). A body whose control flow depends on a task's value, that
    maps over a task's output, waits on a result or calls a subflow cannot be
    traced: that is a :class:`~daskflow.exceptions.CompileError` naming the line.
    """
    if not isinstance(flow, Flow):
        raise CompileError(f"daskflow.compile takes a @flow, got {flow!r}; decorate the function with @flow")
    if flow.isasync:
        code = flow.fn.__code__
        raise CompileError(
            f"cannot compile flow {flow.name!r} (defined at {code.co_filename}:{code.co_firstlineno}): it is an "
            "async def flow, and only plain def flow bodies can be traced.\n  Fix: make the flow a plain def "
            f"(its async tasks can stay async), or run it normally with `await {flow.fn.__name__}(...)`."
        )
    parameters = flow.bind_parameters((), params)
    if flow.options.validate_parameters:
        parameters = flow.validate_parameters(parameters)
    configure_console_logging()
    flow_run = FlowRun(
        id=new_run_id(), name=_flow_run_name(flow, parameters), flow_name=flow.name, parameters=parameters
    )
    runner = _TracingRunner()
    context = _TraceContext(
        flow=flow,
        flow_run=flow_run,
        task_runner=runner,
        parameters=parameters,
        log_prints=bool(flow.options.log_prints),
        concurrency_limits=dict(flow.options.concurrency_limit or {}),
    )
    try:
        returned = _trace(flow, context)
    except _Refusal as refusal:
        raise _compile_error(flow, refusal.what, refusal.fix, refusal) from None
    except TypeError as exc:
        explained = _explain(exc)
        if explained is None:
            raise  # the body's own error, as a flow run would raise it
        raise _compile_error(flow, *explained, exc) from exc
    return runner.finish(flow, flow_run, returned)


compile = compile_flow
