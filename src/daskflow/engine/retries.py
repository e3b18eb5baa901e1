"""Retries: whether a failed attempt runs again, and how long it waits first.

:func:`judge_attempt` is the one decision every run makes when an attempt
ends badly, whatever the cause (an exception, a timeout, a crash the runner
reports) and whatever the run (a task run or a flow run): retries left, the
``retry_condition_fn`` if the run has one, then the delay. Task runs and flow
runs share it, so "this attempt failed: retry or final state" is defined once.

How long to wait before retry number *n*:

``retry_delay_seconds`` is a number (the same delay every time), a list (one
delay per retry; the last repeats if retries outnumber it) or a function of
the retry count returning either, such as :func:`exponential_backoff`.
``retry_jitter_factor`` spreads each delay uniformly over
``[d * (1 - j), d * (1 + j)]`` so that many runs failing together do not
retry together.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

from daskflow.exceptions import ConfigurationError
from daskflow.states import AwaitingRetry, State

__all__ = ["exponential_backoff", "judge_attempt", "retry_delay"]


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """Delays that double each retry: ``backoff_factor * 2**n`` for retry ``n`` (from 0).

    Use as ``@task(retries=3, retry_delay_seconds=exponential_backoff(10))``
    for waits of 10, 20 and 40 seconds.
    """
    if isinstance(backoff_factor, bool) or not isinstance(backoff_factor, Real) or backoff_factor < 0:
        raise ConfigurationError(f"exponential_backoff: backoff_factor must be a number >= 0, got {backoff_factor!r}")
    factor = float(backoff_factor)

    def delays(retries: int) -> list[float]:
        return [factor * 2**n for n in range(retries)]

    delays.__qualname__ = f"exponential_backoff({backoff_factor!r})"
    return delays


def retry_delay(
    setting: float | Sequence[float] | Callable[[int], Any],
    retries: int,
    retry_number: int,
    jitter: float | None = None,
    where: str = "task",
) -> float:
    """Seconds to wait before retry ``retry_number`` (0 for the first retry)."""
    value: Any = setting(retries) if callable(setting) else setting
    if isinstance(value, (list, tuple)):
        value = value[min(retry_number, len(value) - 1)] if value else 0.0
    if isinstance(value, bool) or not isinstance(value, Real) or value < 0:
        raise ConfigurationError(
            f"{where}: retry_delay_seconds gave {value!r} for retry {retry_number + 1}; "
            "it must give numbers of seconds >= 0"
        )
    delay = float(value)
    if jitter:
        delay = max(0.0, random.uniform(delay * (1 - jitter), delay * (1 + jitter)))
    return delay


def judge_attempt(
    run: Any,
    options: Any,
    owner: Any,
    where: str,
    logger: Any,
    make_state: Callable[[bool], State],
    exc: BaseException | None,
) -> tuple[State, float | None]:
    """Judge the attempt that just ended badly: ``(state, seconds to wait)`` or ``(final state, None)``.

    ``run`` is the task run or flow run (its ``run_count`` counts the attempts so
    far), ``options`` its task's or flow's options: ``retries`` and
    ``retry_delay_seconds``, and where they exist (tasks) ``retry_jitter_factor``
    and ``retry_condition_fn``, called as ``fn(owner, run, state)``.
    ``make_state(with_traceback)`` builds the attempt's failed state: formatting a
    traceback costs about 100 µs, so an attempt that will be retried is judged on
    a state without one and only the final failure keeps it.

    On a retry the run is left ``AwaitingRetry`` (after its ``Crashed`` state,
    when the attempt crashed, so the history shows the crash); on a final
    failure nothing is set: the caller finishes the run (and runs its hooks).
    """
    retries: int = options.retries
    if run.run_count <= retries:
        state = make_state(False)
        if _should_retry(getattr(options, "retry_condition_fn", None), owner, run, state, logger):
            retry_number = run.run_count - 1
            jitter = getattr(options, "retry_jitter_factor", None)
            delay = retry_delay(options.retry_delay_seconds, retries, retry_number, jitter, where)
            logger.warning(
                "Attempt %d failed with %s; retry %d of %d in %.3g s",
                run.run_count,
                state.message,
                retry_number + 1,
                retries,
                delay,
            )
            cause = ""
            if state.is_crashed():
                # The history shows the crash, then the wait (runners carry it as a state the run went on from).
                run.set_state(state)
                cause = f" after a crash: {state.message}"
            run.set_state(AwaitingRetry(f"retry {retry_number + 1} of {retries} in {delay:.3g} s{cause}"))
            return state, delay
    state = make_state(True)
    retried = f" after {run.run_count - 1} retries" if run.run_count > 1 else ""
    logger.error("Finished in state %s%s: %s", state.name, retried, state.message, exc_info=exc or state.exception)
    return state, None


def _should_retry(condition: Callable[..., Any] | None, owner: Any, run: Any, state: State, logger: Any) -> bool:
    if condition is None:
        return True
    try:
        return bool(condition(owner, run, state))
    except Exception:
        logger.exception("retry_condition_fn raised; not retrying")
        return False
