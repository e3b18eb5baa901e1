"""Pausing a flow run for input (Prefect's ``pause_flow_run`` / ``resume_flow_run``).

::

    class Approval(pydantic.BaseModel):
        approved: bool
        reviewer: str

    @flow
    def publish(report: str):
        answer = pause_flow_run(wait_for_input=Approval, timeout=3600)
        if answer.approved:
            ...

The flow's body stops at ``pause_flow_run``: its run enters the ``Paused``
state (kept in the run history, so ``daskflow runs ls`` shows it) and a row in
the run store's ``paused_runs`` table says it waits. Another process resumes
it with ``resume_flow_run(flow_run_id, run_input={...})`` or
``daskflow runs resume ID --input '{...}'``. The run validates the input
against its model itself, so the rules are exactly pydantic's: a good input is
returned by ``pause_flow_run`` as a model instance and the run is ``Running``
again; a bad one is refused, the resumer gets the validation error (a
:class:`PauseError`, exit 2 on the command line) and the run keeps waiting.
Without ``wait_for_input`` any resume continues the run and ``pause_flow_run``
returns None. When ``timeout`` passes first, :class:`PausedRunTimeoutError` is
raised in the flow's body (the run fails, unless the body catches it), as in
Prefect. A cancelled flow run stops waiting at once.

The run store is the meeting point, so pausing needs run history on
(``daskflow.runstore.enabled``). ``suspend_flow_run`` is the same wait here:
daskflow has no infrastructure that could end the process and start the run
again later (README: Coming from Prefect).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from daskflow import settings
from daskflow.context import CANCEL_POLL_SECONDS, get_flow_run_context, get_task_run_context
from daskflow.exceptions import CancelledRunError, DaskflowError
from daskflow.states import Paused, Running, Suspended

__all__ = ["PauseError", "PausedRunTimeoutError", "pause_flow_run", "resume_flow_run", "suspend_flow_run"]

if TYPE_CHECKING:  # pydantic is imported when a run pauses: `import daskflow` stays light
    import pydantic

M = TypeVar("M", bound="pydantic.BaseModel")


class PauseError(DaskflowError, ValueError):
    """A pause or resume that cannot be done: not in a flow, not paused, an input that does not fit."""


class PausedRunTimeoutError(DaskflowError, TimeoutError):
    """A paused flow run was not resumed within its timeout."""


def pause_flow_run(
    wait_for_input: type[M] | type[Any] | None = None,
    timeout: float = 3600,
    poll_interval: float | None = None,
    key: str | None = None,
    *,
    _suspend: bool = False,
) -> Any:
    """Pause the flow run this body belongs to until it is resumed; return the input (a ``wait_for_input`` model).

    In an ``async`` flow body (a running event loop on this thread) it returns a coroutine to
    ``await``, as Prefect's does there; the wait then runs off the loop's thread.
    """
    if _running_loop():
        return asyncio.to_thread(_pause, wait_for_input, timeout, poll_interval, key, _suspend)
    return _pause(wait_for_input, timeout, poll_interval, key, _suspend)


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _input_model(wait_for_input: Any) -> tuple[Any, bool]:
    """The pydantic model the input is validated against, and whether it wraps a plain type.

    A plain type (``str``, ``int``, ``list[str]``...) is wrapped, as Prefect does, in a model
    with one field ``value``: the resumer sends ``{"value": ...}`` and the body gets the value.
    """
    import pydantic

    if isinstance(wait_for_input, type) and issubclass(wait_for_input, pydantic.BaseModel):
        return wait_for_input, False
    try:
        wrapped = pydantic.create_model(
            f"{getattr(wait_for_input, '__name__', 'Value')}Input", value=(wait_for_input, ...)
        )
    except (TypeError, pydantic.PydanticSchemaGenerationError) as exc:
        raise PauseError(
            f"wait_for_input must be a pydantic model class or a type pydantic can validate (str, int, "
            f"list[str], ...), got {wait_for_input!r}: {exc}"
        ) from None
    return wrapped, True


def _pause(wait_for_input: Any, timeout: float, poll_interval: float | None, key: str | None, _suspend: bool) -> Any:
    ctx = get_flow_run_context()
    if ctx is None or get_task_run_context() is not None:
        raise PauseError(
            "pause_flow_run() pauses a flow run from its flow's body; it was called "
            f"{'inside a task' if get_task_run_context() is not None else 'outside any flow run'}. "
            "Fix: call it in the @flow function (a task cannot pause its flow)."
        )
    if not settings.get("runstore.enabled", True):
        raise PauseError(
            "pause_flow_run() needs the run history, where the run waits to be resumed, but "
            "daskflow.runstore.enabled is off. Fix: turn it on (it is on by default)."
        )
    import pydantic  # as the runstore modules below: only when a run pauses

    wrapped = False
    if wait_for_input is not None:
        wait_for_input, wrapped = _input_model(wait_for_input)
    # Here, not at the top: `import daskflow` (which re-exports this module) stays free of SQLAlchemy.
    from daskflow.runstore import pausing as rows
    from daskflow.runstore.store import RunStore

    run = ctx.flow_run
    schema = json.dumps(wait_for_input.model_json_schema()) if wait_for_input is not None else None
    expires = datetime.now(UTC) + timedelta(seconds=timeout)
    step = CANCEL_POLL_SECONDS if poll_interval is None else max(0.05, float(poll_interval))
    with RunStore() as store:
        rows.mark_paused(store, run.id, schema, expires)
        run.set_state((Suspended if _suspend else Paused)(f"waiting for input {key}" if key else None))
        deadline = time.monotonic() + timeout
        while True:
            found = rows.read_paused(store, run.id)
            if found is not None and found.input is not None:
                try:
                    value = json.loads(found.input)
                    taken = wait_for_input.model_validate(value) if wait_for_input is not None else None
                except (ValueError, pydantic.ValidationError) as exc:
                    rows.refuse_input(store, run.id, str(exc))
                else:
                    rows.take_input(store, run.id)
                    run.set_state(Running("resumed"))
                    return taken.value if wrapped and taken is not None else taken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                run.set_state(Running("the pause timed out"))
                raise PausedRunTimeoutError(
                    f"flow run {run.name!r} was paused for {timeout:g} s and nobody resumed it. Resume a paused run with "
                    f"daskflow runs resume {run.id} (or resume_flow_run), or give pause_flow_run a longer timeout."
                )
            if ctx.cancel_event.wait(min(step, remaining)):
                raise CancelledRunError(f"flow run {run.name!r} was cancelled while paused")


def suspend_flow_run(
    wait_for_input: type[M] | type[Any] | None = None, timeout: float = 3600, key: str | None = None, **_: Any
) -> Any:
    """Prefect's suspend: here the same wait as :func:`pause_flow_run`, in the ``Suspended`` state."""
    return pause_flow_run(wait_for_input, timeout, key=key, _suspend=True)


def resume_flow_run(flow_run_id: str, run_input: Any = None, *, wait: float = 10.0, url: str | None = None) -> None:
    """Resume a paused flow run, giving it ``run_input`` (a dict for its model, or None).

    Waits up to ``wait`` seconds for the run to take the input; raises
    :class:`PauseError` with the validation error if it refused it, or if the
    run is not waiting to be resumed.
    """
    try:
        text = json.dumps(run_input.model_dump(mode="json") if hasattr(run_input, "model_dump") else run_input)
    except (TypeError, ValueError) as exc:
        raise PauseError(f"the input for flow run {flow_run_id} must be JSON: {exc}") from None
    from daskflow.runstore import pausing as rows  # as above: only when used
    from daskflow.runstore.store import RunStore

    with RunStore(url) as store:
        run_id = rows.resolve_paused(store, flow_run_id) or store.resolve_run_id(flow_run_id) or flow_run_id
        if not rows.set_input(store, run_id, text):
            raise PauseError(
                f"flow run {flow_run_id} is not paused (or was resumed already). Fix: check it with "
                f"daskflow runs show {flow_run_id}."
            )
        deadline = time.monotonic() + wait
        while True:
            found = rows.read_paused(store, run_id)
            if found is None or found.resumed_at is not None:
                return
            if found.input_error is not None:
                raise PauseError(
                    f"flow run {flow_run_id} refused the input {text}: {found.input_error}. "
                    f"It keeps waiting; the input must fit: {found.schema or 'no model'}"
                )
            if time.monotonic() >= deadline:
                raise PauseError(
                    f"flow run {flow_run_id} did not take the input within {wait:g} s: its process may be gone. "
                    "The input stays; the run takes it if it is still waiting."
                )
            time.sleep(0.1)  # a poll of another process's progress, bounded by `wait`
