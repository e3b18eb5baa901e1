"""Direct task calls on the lean path: a plain task run, and nothing it does not need.

A task called in a flow's body (``total += inc(i)``) runs at once, in the
caller's thread. The general engine (:mod:`daskflow.engine.task_engine`) is
written for every task: a :class:`~daskflow.engine.calls.TaskCall` that can
travel to a worker, cancellation and limit checks, caching, timeouts, hooks
looked up on every state, a submission record for the run history. Most tasks
use none of it, and for a small body that machinery was the whole cost of the
call (benchmark W6). :func:`run_direct` runs such a call with only what its run
needs: a run record, its context, ``Running`` and a final state.

Which calls take this path is decided before the run starts: from the task's
options (:func:`lean_options`: no cache policy, retries, timeout, hooks,
concurrency limit or run-name template, not ``async``) and from where it is
called (:func:`lean_here`: a flow run's body on a runner that runs direct calls
in this thread, outside any ``transaction()`` block, with no named limits, the
flow run not cancelled, DEBUG logging off). Any other call takes the general
path, exactly as before. Once the body has run, an exception or a returned
``State`` is handed to a :class:`~daskflow.engine.task_engine.TaskRunEngine`
over the same run and context, which judges it as the general path does.

The run history: when the run store's recorder is the only state listener of
this process (no progress display, no deployment watching), ``Running`` is
kept on the run record without telling the recorder, and the run is not
announced at its submission. Its final state, put on the recorder's queue
when the call ends (:func:`~daskflow.engine.history.end_sink`), brings the
run's row (``start_time`` included) and its final state row: the rows the
recorder wrote for such a run anyway, since it drops the ``Pending`` and
``Running`` rows superseded within a batch, for one queue item instead of
three. A state listener added later sees every state again.
"""

from __future__ import annotations

import logging
from typing import Any

from daskflow.context import (
    FlowRunContext,
    TaskRunContext,
    enter_task_run,
    get_current_tags,
    get_transaction,
    leave_task_run,
)
from daskflow.engine.calls import TaskCall, with_producers
from daskflow.engine.history import end_sink
from daskflow.engine.inputs import find_upstream_runs, resolve_inputs
from daskflow.engine.task_engine import TaskRunEngine, not_run, split_arguments
from daskflow.exceptions import UpstreamFailedError
from daskflow.logging import TASK_LOGGER, install_print_capture
from daskflow.runs import TaskRun, new_run_id
from daskflow.states import Completed, Pending, Running, State

__all__ = ["lean_here", "lean_options", "run_direct"]

_task_logger = logging.getLogger(TASK_LOGGER)
_DEBUG = logging.DEBUG


def lean_options(task: Any) -> bool:
    """Whether ``task``'s options leave its direct calls nothing to do beyond running (see the module docstring)."""
    options = task.options
    return not (
        task.isasync
        or getattr(task, "caching", False)
        or options.retries
        or options.timeout_seconds is not None
        or options.task_run_name is not None
        or options.concurrency_limit is not None
        or options.on_running
        or options.on_completion
        or options.on_failure
        or options.on_commit
        or options.on_rollback
    )


def lean_here(flow_ctx: FlowRunContext) -> bool:
    """Whether a direct call of a lean task in ``flow_ctx``'s body may take the lean path now."""
    return not (
        flow_ctx.cancel_event.is_set()  # the general path ends the run Cancelled
        or flow_ctx.concurrency_limits  # named limits may apply by tag
        or get_transaction() is not None  # the block tracks its runs and commits them
        or _task_logger.isEnabledFor(_DEBUG)  # the general path logs each final state
    )


def run_direct(task: Any, flow_ctx: FlowRunContext, parameters: dict[str, Any]) -> TaskRun:
    """Run a direct call of ``task`` (lean: see :func:`lean_options` and :func:`lean_here`); its run, ended."""
    flow_run = flow_ctx.flow_run
    options = task.options
    name = options.name
    values = parameters.values()
    upstream = find_upstream_runs(values)
    produced = flow_ctx.produced
    if produced:  # values returned by earlier direct calls name the runs that made them
        upstream = with_producers(upstream, values, produced)
    current_tags = get_current_tags()
    run = TaskRun(
        id=new_run_id(),
        name=f"{name}-{flow_ctx.next_index(name)}",
        task_name=name,
        flow_run_id=flow_run.id,
        tags=options.tags | current_tags if current_tags else options.tags,
        upstream_ids=upstream,
        state=Pending(),
    )
    flow_run.task_runs.append(run)
    log_prints = flow_ctx.log_prints if options.log_prints is None else options.log_prints
    context = TaskRunContext(
        task,
        run,
        parameters,
        flow_run.id,
        flow_run.name,
        flow_run.flow_name,
        flow_ctx.parameters,
        log_prints,
        flow_ctx.concurrency_limits,
        None,
        flow_ctx.cancel_event,
        flow_ctx.facts(),
    )
    try:
        if upstream or not _plain(values):
            context.parameters = resolve_inputs(parameters, f"task run {run.name!r}")
    except UpstreamFailedError as exc:
        run.set_state(not_run(exc))
        return run
    if log_prints:
        install_print_capture()
    fn = task.fn
    args, kwargs = split_arguments(fn, context.parameters)
    token = enter_task_run(context)
    try:
        running = Running()
        run.run_count = 1
        sink = end_sink()  # None: another listener sees every state; else only the end, put there
        run.set_state(running, notify=sink is None)
        try:
            value = fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _engine(context).handle_exception(exc)
            raise
        except BaseException as exc:
            _engine(context).handle_exception(exc)  # no retries: the attempt's failure is final
            return run
        if isinstance(value, State) or run.state is not running:  # the body said how it ends, or the flow did
            _engine(context).handle_success(value)
        else:
            state = Completed(value)
            run.set_state(state, notify=sink is None)
            if sink is not None:
                sink((run, state))  # the recorder's queue item, as its state listener would have put it
        return run
    finally:
        leave_task_run(token)


# Values that hold no future, state or annotation: the arguments of most direct calls.
_ATOMS = (int, float, str, bool, type(None), bytes)


def _plain(values: Any) -> bool:
    for value in values:
        if type(value) not in _ATOMS:
            return False
    return True


def _engine(context: TaskRunContext) -> TaskRunEngine:
    """The general engine over a lean run that has started: it judges how the run ends."""
    call = TaskCall(
        context.task,
        context.task_run,
        context.parameters,
        flow_run_id=context.flow_run_id,
        flow_run_name=context.flow_run_name,
        flow_name=context.flow_name,
        flow_parameters=context.flow_parameters,
        log_prints=context.log_prints,
        cancel_event=context.cancel_event,
        concurrency_limits=context.concurrency_limits,
        flow_facts=context.flow_facts,
    )
    engine = TaskRunEngine(call)
    engine.context = context
    return engine
