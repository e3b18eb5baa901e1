"""Task calls: one task run, described completely enough to run anywhere.

A :class:`TaskCall` is what a task runner receives: the task, its run record,
its arguments (which may still hold futures of upstream runs) and the few
facts about the flow run that the task run needs. It carries no live flow
object, so the same call runs in a thread of this process or, pickled, on a
Dask worker. :func:`make_calls` turns one ``submit``/``map`` into calls,
naming each run and linking it to its flow run.

A call started inside a ``transaction()`` block carries the block: in this
process the live :class:`~daskflow.context.Transaction`, elsewhere a
:class:`TransactionSnapshot` of it (its key, state, isolation level and the
values set on it when the call was submitted), which a worker enters so that
``get_transaction()`` in the task gives the block there too. What a task sets
on a snapshot stays in its process: the block's hooks run in the flow's
process, on the live transaction (README: Coming from Prefect).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from daskflow.concurrency import flow_limit_sizes
from daskflow.context import (
    FlowRunContext,
    FlowRunFacts,
    TaskRunContext,
    Transaction,
    TransactionState,
    get_current_tags,
    get_flow_run_context,
    get_task_run_context,
    get_transaction,
)
from daskflow.engine.history import record_submitted
from daskflow.engine.inputs import find_upstream_runs
from daskflow.exceptions import MissingContextError
from daskflow.runs import TaskRun, new_run_id
from daskflow.states import Pending

__all__ = ["TaskCall", "TransactionSnapshot", "make_calls", "with_producers"]

_log = logging.getLogger("daskflow.transactions")


class TransactionSnapshot(Transaction):
    """A copy of a ``transaction()`` block that travels with a task call to another process.

    It answers what a task asks of its block (``key``, ``state``,
    ``isolation_level``, ``commit_mode``, ``get``, ``is_committed()`` ...). It
    tracks no runs: the block in the flow's process commits or rolls back the
    runs it started. ``set`` changes this copy only, said once per copy in a
    warning, since hooks that read it run on the live block.
    """

    def __init__(self, key: str | None = None, **options: Any) -> None:
        super().__init__(key, **options)
        self._warned = False

    @classmethod
    def of(cls, txn: Transaction) -> TransactionSnapshot:
        """The snapshot of ``txn`` now (a snapshot is its own: it is copied when pickled)."""
        if isinstance(txn, TransactionSnapshot):
            return txn
        copy = cls(
            txn.key,
            value=txn.value,
            state=txn.state,
            isolation_level=txn.isolation_level,
            commit_mode=txn.commit_mode,
        )
        copy._values = dict(txn._values)
        return copy

    def mirrors(self, txn: Transaction) -> bool:
        """Whether this snapshot still shows ``txn`` (so a runner may send it again)."""
        try:
            return bool(
                self.key == txn.key
                and self.state is txn.state
                and self.isolation_level == txn.isolation_level
                and self._values == txn._values
            )
        except Exception:  # values that cannot be compared: take a new snapshot
            return False

    def set(self, name: str, value: Any) -> None:
        if not self._warned:
            self._warned = True
            _log.warning(
                "transaction %s: %r was set in a task running in another process than its flow; "
                "the value stays in that process (the block's on_commit/on_rollback hooks run in the "
                "flow's process and do not see it). Fix: set shared values on the transaction in the flow, "
                "inside the `with transaction() as txn:` block, before the task is submitted.",
                self.key or "(no key)",
                name,
            )
        super().set(name, value)

    def track(self, task: Any, runs: list[TaskRun]) -> None:
        """Nothing: runs started from a task in another process are not the block's to commit."""

    def stage(self, value: Any) -> None:
        """Refused: the block's record is written where the block runs, in the flow's process."""
        raise MissingContextError(
            f"transaction {self.key or '(no key)'}: stage() was called in a task running in another process than "
            "its flow (a Dask worker), where only a copy of the block is; the record it stages would be lost. "
            "Fix: return the value from the task and call txn.stage(value) in the flow, inside the block."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        options = (self.value, self.state, self.isolation_level, self.commit_mode)
        return (_rebuild_snapshot, (self.key, options, self._values))


def _rebuild_snapshot(
    key: str | None, options: tuple[Any, TransactionState, Any, Any], values: dict[str, Any]
) -> TransactionSnapshot:
    value, state, isolation_level, commit_mode = options
    copy = TransactionSnapshot(key, value=value, state=state, isolation_level=isolation_level, commit_mode=commit_mode)
    copy._values = values
    return copy


@dataclass(eq=False, slots=True)
class TaskCall:
    """One task run to execute: the task, its record, its arguments, its flow's facts."""

    task: Any
    task_run: TaskRun
    parameters: dict[str, Any]
    wait_for: tuple[Any, ...] = ()
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    flow_name: str | None = None
    flow_parameters: dict[str, Any] = field(default_factory=dict)
    log_prints: bool = False
    # Set when the flow run is cancelled; a local flag, not sent to workers.
    cancel_event: threading.Event | None = None
    # Sizes of the named limits the flow run knows (its own, then dask.config's).
    concurrency_limits: dict[str, int] = field(default_factory=dict)
    # Where limits and locks live when not in this process (the cluster's, on Dask workers).
    coordination: Any = None
    # The flow run's tags, scheduled time, attempt and deployment, for daskflow.runtime.
    flow_facts: FlowRunFacts | None = None
    # The run's tags when its record is rebuilt elsewhere (a Dask worker); task_run.tags here.
    run_tags: frozenset[str] | None = None
    # Started inside a transaction() block: its on_commit hooks wait for the block to commit.
    in_transaction: bool = False
    # That block: the live one here, a TransactionSnapshot of it when the call travels.
    transaction: Transaction | None = None
    # Why the run's previous attempt ended with its process (a worker died under it), when the
    # runner starts the run again: the engine judges that crash by the task's policy first.
    crash: str | None = None
    # The policy's key of this run, when the client computed it before submitting and found no
    # entry (engine.prefetch): the engine uses it instead of hashing the same inputs again.
    known_key: str | None = None

    def run_context(self, parameters: dict[str, Any]) -> TaskRunContext:
        """The context this run executes in, with its arguments resolved to ``parameters``
        (the engine's, and the client's when it computes a cache key before submitting)."""
        return TaskRunContext(
            task=self.task,
            task_run=self.task_run,
            parameters=parameters,
            flow_run_id=self.flow_run_id,
            flow_run_name=self.flow_run_name,
            flow_name=self.flow_name,
            flow_parameters=self.flow_parameters,
            log_prints=self.log_prints,
            concurrency_limits=self.concurrency_limits,
            coordination=self.coordination,
            cancel_event=self.cancel_event,
            flow_facts=self.flow_facts,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self.__slots__}
        state["cancel_event"] = None
        state["coordination"] = None
        if self.transaction is not None:  # the live block holds a lock and the runs: a copy travels
            state["transaction"] = TransactionSnapshot.of(self.transaction)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)


_orphan_counters: dict[str, Iterator[int]] = {}
_orphan_lock = threading.Lock()


def _orphan_index(task_name: str) -> int:
    counter = _orphan_counters.get(task_name)
    if counter is None:
        with _orphan_lock:
            counter = _orphan_counters.setdefault(task_name, itertools.count())
    return next(counter)


def with_producers(
    upstream: tuple[str, ...], values: Iterable[Any], produced: dict[int, tuple[str, Any]]
) -> tuple[str, ...]:
    """``upstream`` and the runs whose returned values are among ``values`` (direct calls in a flow body)."""
    found = [entry[0] for value in values if (entry := produced.get(id(value))) is not None and entry[1] is value]
    return tuple(dict.fromkeys((*upstream, *found))) if found else upstream


def make_calls(
    task: Any,
    parameter_sets: Sequence[dict[str, Any]],
    wait_for: Iterable[Any] = (),
    *,
    mapped: bool = False,
    sources: tuple[str, ...] = (),
) -> list[TaskCall]:
    """Calls for ``task``, one per parameter set, inside the current flow run if any.

    ``sources`` are runs whose results reached the parameters as plain values (a
    map over a future's list): they are upstream of every call, for the record.
    """
    flow_ctx: FlowRunContext | None = get_flow_run_context()
    task_ctx: TaskRunContext | None = get_task_run_context()
    options = task.options
    name = task.name
    wait = tuple(wait_for)
    wait_ids = find_upstream_runs(wait) if wait else ()
    if sources:
        wait_ids = tuple(dict.fromkeys((*sources, *wait_ids)))
    if flow_ctx is not None:
        flow_run = flow_ctx.flow_run
        flow_fields: dict[str, Any] = {
            "flow_run_id": flow_run.id,
            "flow_run_name": flow_run.name,
            "flow_name": flow_run.flow_name,
            "flow_parameters": flow_ctx.parameters,
            "cancel_event": flow_ctx.cancel_event,
            "concurrency_limits": flow_ctx.concurrency_limits,
            "flow_facts": flow_ctx.facts(),
        }
        default_prints = flow_ctx.log_prints
        index = flow_ctx.next_index
        runs_list: list[TaskRun] | None = flow_run.task_runs
    elif task_ctx is not None:  # a task started from inside another task
        flow_fields = {
            "flow_run_id": task_ctx.flow_run_id,
            "flow_run_name": task_ctx.flow_run_name,
            "flow_name": task_ctx.flow_name,
            "flow_parameters": task_ctx.flow_parameters,
            "concurrency_limits": task_ctx.concurrency_limits,
            "flow_facts": task_ctx.flow_facts,
        }
        default_prints = task_ctx.log_prints
        index = _orphan_index
        runs_list = None
    else:
        flow_fields = {"concurrency_limits": flow_limit_sizes(None)}
        default_prints = False
        index = _orphan_index
        runs_list = None
    log_prints = default_prints if options.log_prints is None else options.log_prints
    current_tags = get_current_tags()  # from enclosing `with tags(...)` blocks (and the flow run's own)
    run_tags = options.tags | current_tags if current_tags else options.tags
    flow_run_id = flow_fields.get("flow_run_id")
    calls = []
    pending = Pending()  # one shared record: the runs of a batch became pending together
    produced = flow_ctx.produced if flow_ctx is not None else None
    for map_index, params in enumerate(parameter_sets):
        upstream = find_upstream_runs(params.values())
        if produced:
            upstream = with_producers(upstream, params.values(), produced)
        run = TaskRun(
            id=new_run_id(),
            name=f"{name}-{index(name)}",
            task_name=name,
            flow_run_id=flow_run_id,
            map_index=map_index if mapped else None,
            tags=run_tags,
            upstream_ids=tuple(dict.fromkeys(upstream + wait_ids)) if wait_ids else upstream,
            state=pending,
        )
        calls.append(TaskCall(task, run, params, wait, log_prints=log_prints, **flow_fields))
    if runs_list is not None:
        runs_list.extend(call.task_run for call in calls)
        record_submitted([call.task_run for call in calls])
    txn = get_transaction()
    if txn is not None:  # the block commits or rolls these runs back together (daskflow.transactions)
        txn.track(task, [call.task_run for call in calls])
        # A snapshot's block is in another process: those runs commit on their own, as outside a block.
        live = not isinstance(txn, TransactionSnapshot)
        for call in calls:
            call.transaction = txn
            call.in_transaction = live
    return calls
