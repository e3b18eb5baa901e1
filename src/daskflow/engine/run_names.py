"""Run names: the name a flow run or task run is shown and recorded under.

Without a template a flow run gets a name a person can say aloud
(``"swift-otter"``) and a task run its task's name with a counter (given by the
caller). With ``flow_run_name`` / ``task_run_name`` the name comes from the
template, as in Prefect: a format string over the run's parameters
(``"etl-{day}"``), or a function of no arguments (which may read
``daskflow.runtime`` to see the parameters). The flow engine, the task engine
and ``daskflow.compile`` all name runs through :func:`format_run_name`, so a
template means the same everywhere and a broken one fails with the same words.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RunNameError", "format_run_name", "generate_run_name"]

_ADJECTIVES = (
    "amber azure bold brave bright calm clever coral crimson daring eager fancy gentle golden "
    "happy jolly keen lively lucky merry nimble noble olive quick quiet rapid ruby silver "
    "smart steady sunny swift teal tidy vivid wise witty zesty"
).split()
_ANIMALS = (
    "badger bear beaver bison cheetah cobra condor coyote crane dingo dolphin eagle falcon ferret "
    "finch fox gecko heron ibis jaguar koala lemur lynx marten moose otter owl panda puffin "
    "raven seal stork tapir tiger toucan walrus wombat yak zebra"
).split()


class RunNameError(Exception):
    """A run name template that could not be formed; ``cause`` is what the template raised.

    Not a :class:`~daskflow.exceptions.DaskflowError`: it never reaches the user
    as such. The engines turn it into the run's ``Failed`` state (whose exception
    is ``cause``), ``daskflow.compile`` into a ``CompileError``.
    """

    def __init__(self, message: str, cause: Exception) -> None:
        super().__init__(message)
        self.cause = cause


def generate_run_name() -> str:
    """A name a person can say aloud, e.g. ``"swift-otter"``."""
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_ANIMALS)}"


def format_run_name(
    template: str | Callable[[], Any],
    parameters: Mapping[str, Any],
    where: str,
    option: str,
) -> str:
    """The run's name from ``template`` (a format string over ``parameters``, or a function).

    ``where`` names the owner (``"flow 'etl'"``) and ``option`` the option
    (``"flow_run_name"``) for the error, a :class:`RunNameError` saying both.
    """
    try:
        return template.format(**parameters) if isinstance(template, str) else str(template())
    except Exception as exc:
        raise RunNameError(
            f"{where}: {option} {template!r} could not be formed: {type(exc).__name__}: {exc}", exc
        ) from exc
