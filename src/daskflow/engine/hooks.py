"""Calling a run's hooks, and the committed transaction a task's ``on_commit`` hooks receive.

A hook that raises is logged on the run's logger and never changes the run's
state. A task run that completes outside a ``transaction()`` block commits at
once (its cache entry is written before its state is final), so its
``on_commit`` hooks get an already committed :class:`~daskflow.context.Transaction`
keyed by the run's cache key; inside a block they are called when the block
commits (:mod:`daskflow.transactions`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from daskflow.context import Transaction, TransactionState

__all__ = ["call_hooks", "commit_of"]


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
