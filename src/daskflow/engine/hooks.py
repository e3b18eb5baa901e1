"""Calling a run's hooks: which hooks a state calls, how they are called, and what ``on_commit`` gets.

Task runs and flow runs share one rule (:func:`hooks_for`): ``on_running`` when
an attempt starts; at the end ``on_completion`` for a completed run (cached
too), ``on_failure`` for a failed one, ``on_crashed`` for a crashed one (a task,
which has no ``on_crashed``, calls ``on_failure``: its infrastructure failing is
its failure, as the run store shows it) and ``on_cancellation`` for a
cancelled one (nothing for a task). Each hook is called as ``hook(task_or_flow,
run, state)``. A hook that raises is logged on the run's logger and never
changes the run's state. A task run that completes outside a ``transaction()`` block commits at
once (its cache entry is written before its state is final), so its
``on_commit`` hooks get an already committed :class:`~daskflow.context.Transaction`
keyed by the run's cache key; inside a block they are called when the block
commits (:mod:`daskflow.transactions`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from daskflow.context import Transaction, TransactionState
from daskflow.states import State

__all__ = ["call_hooks", "commit_of", "hooks_for", "run_state_hooks"]

_NONE: tuple[Any, ...] = ()


def commit_of(run: Any, state: Any) -> Transaction:
    """The committed transaction of a task run that just completed: what its ``on_commit`` hooks get."""
    value = state.result(raise_on_failure=False)
    return Transaction(getattr(run, "cache_key", None), value=value, state=TransactionState.COMMITTED)


def call_hooks(hooks: Iterable[Any], args: tuple[Any, ...], logger: Any) -> None:
    """Call each hook with ``args``; a hook that raises is logged and never changes the run."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            logger.exception("hook %s raised; the run's state is unchanged", getattr(hook, "__name__", hook))


def hooks_for(options: Any, state: State) -> tuple[Any, ...]:
    """The hooks of a task's or flow's ``options`` that ``state`` calls (see the module docstring)."""
    if state.is_running():
        hooks: tuple[Any, ...] = options.on_running
    elif state.is_completed():
        hooks = options.on_completion
    elif state.is_failed():
        hooks = options.on_failure
    elif state.is_crashed():
        hooks = getattr(options, "on_crashed", options.on_failure)
    elif state.is_cancelled():
        hooks = getattr(options, "on_cancellation", _NONE)
    else:
        hooks = _NONE
    return hooks


def run_state_hooks(options: Any, owner: Any, run: Any, state: State, logger: Any) -> None:
    """Call the hooks ``state`` calls, each as ``hook(owner, run, state)``: ``owner`` is the task or flow."""
    hooks = hooks_for(options, state)
    if hooks:
        call_hooks(hooks, (owner, run, state), logger)
