"""The thread pool runner: task runs execute concurrently in threads of this process.

The default runner. Good for I/O-bound tasks (databases, HTTP, object
stores); CPU-bound work belongs on Dask. A call is handed to a thread only
when every future among its arguments and ``wait_for`` is done, so waiting for
upstream runs never occupies a thread, and a long chain of dependent tasks
cannot starve the pool.

The pool is our own rather than ``concurrent.futures.ThreadPoolExecutor``
because cancellation needs to know which thread runs which call: on Ctrl-C,
queued calls are cancelled without running, and running ones are interrupted
(see :func:`daskflow.engine.interrupt_thread`). A run that waits for a
concurrency slot or a lock lends its thread's place meanwhile (see
:func:`daskflow.context.waiting`): another thread starts for the queued calls,
so waiting runs never starve unrelated ones. Its threads are daemons, so a
task stuck in a C call cannot keep the interpreter from exiting after an
interrupt; a normal flow exit still waits for every run.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from daskflow import settings
from daskflow.context import set_wait_hook
from daskflow.engine import TaskCall, interrupt_thread, iter_upstreams, run_task_sync
from daskflow.exceptions import CancelledRunError, ConfigurationError
from daskflow.futures import DaskflowFuture, LocalFuture
from daskflow.states import Cancelled, Crashed, State
from daskflow.task_runners.base import TaskRunner

__all__ = ["ConcurrentTaskRunner", "ThreadPoolTaskRunner"]

_CANCEL_GRACE_SECONDS = 2.0


class _Job:
    __slots__ = ("call", "future", "context", "thread_id")

    def __init__(self, call: TaskCall) -> None:
        self.call = call
        self.future: concurrent.futures.Future[State] = concurrent.futures.Future()
        self.context = contextvars.copy_context()
        self.thread_id: int | None = None


class ThreadPoolTaskRunner(TaskRunner):
    """Runs task runs concurrently on up to ``max_workers`` threads.

    ``max_workers`` defaults to dask.config ``daskflow.task_runners.thread_pool.max_workers``,
    else ``min(32, cores + 4)``.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigurationError(
                f"ThreadPoolTaskRunner: max_workers must be a whole number >= 1, got {max_workers!r}"
            )
        super().__init__(max_workers=max_workers)
        configured = max_workers or settings.get("task_runners.thread_pool.max_workers")
        self.max_workers: int = int(configured) if configured else min(32, (os.cpu_count() or 1) + 4)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._outstanding = 0
        self._idle = 0
        self._running: set[_Job] = set()
        self._lent = 0  # threads waiting for a slot or a lock, whose place other runs may use
        self._cancelled = False

    def submit_batch(self, calls: Sequence[TaskCall]) -> list[DaskflowFuture[Any]]:
        futures: list[DaskflowFuture[Any]] = []
        with self._lock:
            self._outstanding += len(calls)
        for call in calls:
            job = _Job(call)
            futures.append(LocalFuture(call.task_run, job.future))
            upstream = [f for f in iter_upstreams((call.parameters, call.wait_for)) if not f.done()]
            if not upstream:
                self._enqueue(job)
            else:
                self._enqueue_when_done(job, upstream)
        return futures

    def _enqueue_when_done(self, job: _Job, upstream: list[DaskflowFuture[Any]]) -> None:
        remaining = [len(upstream)]
        lock = threading.Lock()

        def one_done(_: DaskflowFuture[Any]) -> None:
            with lock:
                remaining[0] -= 1
                ready = remaining[0] == 0
            if ready:
                self._enqueue(job)

        for future in upstream:
            future.add_done_callback(one_done)

    def _enqueue(self, job: _Job) -> None:
        if self._cancelled:
            self._complete(job, self._cancel_state(job))
            return
        self._queue.put(job)
        with self._lock:
            if self._idle == 0 and len(self._threads) - self._lent < self.max_workers:
                self._start_thread()
            else:
                self._idle -= 1

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"daskflow-task-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    @contextmanager
    def _lend(self) -> Iterator[None]:
        """While this thread waits (for a slot, a lock), let another thread run queued calls."""
        with self._lock:
            self._lent += 1
            if self._idle < 0 and len(self._threads) - self._lent < self.max_workers:
                self._idle += 1  # a queued call has no thread: this one takes it
                self._start_thread()
        try:
            yield
        finally:
            with self._lock:
                self._lent -= 1

    def _work(self) -> None:
        set_wait_hook(self._lend)
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._cancelled:
                self._complete(job, self._cancel_state(job))
            else:
                job.thread_id = threading.get_ident()
                with self._lock:
                    self._running.add(job)
                try:
                    state = job.context.run(run_task_sync, job.call)
                except BaseException as exc:  # an interrupt that landed outside the engine's own handling
                    state = job.call.task_run.state
                    if not state.is_final():
                        state = (
                            Cancelled(exception=exc) if isinstance(exc, CancelledRunError) else Crashed(exception=exc)
                        )
                        job.call.task_run.set_state(state)
                with self._lock:
                    self._running.discard(job)
                self._complete(job, state)
            with self._lock:
                if len(self._threads) - self._lent > self.max_workers and self._idle >= 0:
                    # One too many since a waiting thread came back: this one leaves.
                    self._threads.remove(threading.current_thread())
                    return
                self._idle += 1

    def _cancel_state(self, job: _Job) -> State:
        run = job.call.task_run
        if not run.state.is_final():
            run.set_state(Cancelled("the flow run was cancelled before this task started"))
        return run.state

    def _complete(self, job: _Job, state: State) -> None:
        job.future.set_result(state)
        with self._lock:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._drained.notify_all()

    def wait_for_runs(self) -> None:
        with self._lock:
            while self._outstanding > 0 and not self._cancelled:
                self._drained.wait()

    def shutdown(self) -> None:
        with self._lock:
            while self._outstanding > 0:
                if self._cancelled:
                    # Interrupted runs end at their next bytecode; one stuck in a C call may not.
                    # Do not hang the interrupt on it: its run is ended as Cancelled here.
                    if not self._drained.wait(_CANCEL_GRACE_SECONDS):
                        for job in self._running:
                            if not job.call.task_run.state.is_final():
                                job.call.task_run.set_state(Cancelled("interrupted; the thread did not stop in time"))
                        break
                else:
                    self._drained.wait()
            for _ in self._threads:
                self._queue.put(None)
            self._threads = []
            self._idle = 0
        super().shutdown()

    def cancel_all(self) -> None:
        self._cancelled = True
        with self._lock:
            running = list(self._running)
        for job in running:
            if job.thread_id is not None:
                interrupt_thread(job.thread_id, CancelledRunError)


ConcurrentTaskRunner = ThreadPoolTaskRunner
