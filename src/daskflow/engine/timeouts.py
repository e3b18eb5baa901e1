"""Timeouts and interrupts for code we cannot otherwise stop.

A synchronous function cannot be stopped from outside; what we can do is stop
*waiting* for it on time, and ask it to stop. :func:`call_with_timeout` runs
the function in a helper thread (with the caller's context) and waits at most
``timeout`` seconds: on time the caller raises ``RunTimeoutError`` — so the
run is marked ``TimedOut`` when its time is up, not when the function happens
to return — and the helper thread is sent the same exception asynchronously,
which ends it at its next Python bytecode (code blocked inside C, such as a
long ``time.sleep``, ends when that call returns). ``interrupt_thread`` is the
same mechanism, used to cancel running task threads.
"""

from __future__ import annotations

import contextvars
import ctypes
import threading
from collections.abc import Callable
from typing import Any

from daskflow.exceptions import CancelledRunError, RunTimeoutError

__all__ = ["call_with_timeout", "interrupt_thread"]


def interrupt_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in the thread ``thread_id`` at its next bytecode; True if sent."""
    sent = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    if sent > 1:  # more than one thread state was hit: undo, as the C API asks
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return bool(sent)


def call_with_timeout(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float, where: str
) -> Any:
    """``fn(*args, **kwargs)``, or ``RunTimeoutError`` after ``timeout`` seconds."""
    context = contextvars.copy_context()
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the waiting thread as is
            outcome["error"] = exc
        finally:
            finished.set()

    helper = threading.Thread(target=target, name=f"daskflow-timeout-{where}", daemon=True)
    helper.start()
    try:
        in_time = finished.wait(timeout)
    except BaseException:  # KeyboardInterrupt while waiting: stop the helper too
        if helper.ident is not None:
            interrupt_thread(helper.ident, CancelledRunError)
        raise
    if not in_time:
        if helper.ident is not None:
            interrupt_thread(helper.ident, RunTimeoutError)
        raise RunTimeoutError(
            f"{where} did not finish within timeout_seconds={timeout:g}; it was marked TimedOut "
            "(raise timeout_seconds if the work needs longer)"
        )
    if "error" in outcome:
        error: BaseException = outcome["error"]
        raise error
    return outcome.get("value")
