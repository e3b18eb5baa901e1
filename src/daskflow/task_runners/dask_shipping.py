"""Code shipping for the Dask runner: the user's own modules go to the cluster by value.

A task defined in a notebook or a project folder refers to modules a remote
cluster does not have. Before a task's first submission, :func:`ship_code`
asks the workers and the scheduler (which unpickles graphs too) whether they
can import the task's module and the user modules its function refers to;
those they lack are registered with cloudpickle to travel by value. A worker
that joins later and lacks one fails its task with ``ModuleNotFoundError``:
:func:`ship_missing` then ships it, and the runner starts the task again.
Installed modules (standard library, site-packages) never travel: a cluster
without them gets a message naming them and the fix (:func:`code_missing_message`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import site
import sys
import sysconfig
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import cloudpickle
from distributed import Client

from daskflow.exceptions import UnserializableInputError

if TYPE_CHECKING:
    # For the annotations only: the workers import this module to run _importable, and
    # dask_events would bring the run store (SQLAlchemy) into every worker, about 0.25 s
    # of CPU each at start-up, for nothing a worker uses.
    from daskflow.engine import TaskCall
    from daskflow.task_runners.dask_events import EventRouter

__all__ = ["code_missing_message", "ship_code", "ship_missing", "unserializable"]

_log = logging.getLogger("daskflow.dask")


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths["stdlib"], paths["purelib"], paths["platlib"]}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    return tuple(root for root in roots if root)


def _user_module(module: ModuleType) -> bool:
    """True for a module of the user's own code (not the standard library, not installed)."""
    path = getattr(module, "__file__", None)
    if not path or module.__name__ == "__main__":
        return False
    if module.__name__.partition(".")[0] == "daskflow":
        # The workers run daskflow itself (run_on_worker), so it is there, even where it is a source
        # checkout (an editable install): asking would only import its packages on every worker.
        return False
    return not path.startswith(_installed_roots())


def ship_code(client: Client, router: EventRouter, task: Any) -> None:
    """Send the user's own modules that the task needs by value, if the workers lack them.

    The candidates are the task's module and the user modules its function
    refers to (imported modules, functions and classes in its globals): the
    code of a notebook or a project folder, which a remote cluster does not have.
    """
    fn = task.fn
    names = {getattr(fn, "__module__", "") or ""}
    for value in getattr(fn, "__globals__", {}).values():
        if isinstance(value, ModuleType):
            names.add(value.__name__)
        elif callable(value) and isinstance(getattr(value, "__module__", None), str):
            names.add(value.__module__)
    unchecked = names - router.checked_modules
    if not unchecked:
        return
    candidates = [
        name for name in sorted(unchecked) if (module := sys.modules.get(name)) is not None and _user_module(module)
    ]
    if not candidates:
        router.checked_modules.update(unchecked)
        return
    # One check at a time, and a module counts as checked only once it is registered: a flow
    # running alongside must not submit by reference what is about to go by value (the
    # scheduler cannot unpickle such a graph, and its tasks would never start).
    with router.ship_lock:
        candidates = [name for name in candidates if name not in router.checked_modules]
        if candidates:
            # The scheduler unpickles the graph too: it needs the modules as much as the workers.
            # A worker that dies meanwhile (a broadcast to it fails) is left out: if its
            # replacement lacks a module, ship_missing ships it when a task fails for it.
            found = list(client.run(_importable, candidates, on_error="ignore").values())
            found.append(client.run_on_scheduler(_importable, candidates))
            for name in candidates:
                if not all(found_on.get(name, False) for found_on in found):
                    cloudpickle.register_pickle_by_value(sys.modules[name])
                    _log.debug("module %s is shipped to the cluster by value", name)
        router.checked_modules.update(unchecked)


def ship_missing(name: str | None) -> bool:
    """A worker lacked module ``name`` (it joined after the check): ship it by value if we can."""
    module = sys.modules.get(name or "")
    if module is None or not _user_module(module) or name in cloudpickle.list_registry_pickle_by_value():
        return False
    cloudpickle.register_pickle_by_value(module)
    _log.debug("module %s was missing on a worker; it is shipped by value from now on", name)
    return True


def _importable(names: list[str]) -> dict[str, bool]:
    """On a worker: which of these modules it can import."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found[name] = False
    return found


def code_missing_message(task: Any, exc: BaseException) -> str:
    """Why a task could not be loaded on the cluster, the modules it needs, and the fix."""
    fn = task.fn
    modules = {getattr(fn, "__module__", None)}
    modules.update(
        value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        for value in getattr(fn, "__globals__", {}).values()
        if isinstance(value, ModuleType) or callable(value)
    )
    needed = sorted(
        name
        for name in modules
        if name
        and (module := sys.modules.get(name)) is not None
        and not _stdlib(module)
        and name.split(".")[0] != "daskflow"
    )
    missing = getattr(exc, "name", None)
    what = f"module {missing!r} is missing there" if missing else str(exc).splitlines()[0]
    return (
        f"task {task.name!r} could not be loaded on the Dask cluster: {what}. The scheduler and the "
        f"workers import what the task is defined in and refers to ({', '.join(needed) or 'its module'}). "
        "Install module(s) there with the same versions as here, or keep the code in your own "
        "project's modules, which daskflow ships by value."
    )


def _stdlib(module: ModuleType) -> bool:
    path = getattr(module, "__file__", None)
    return path is None or path.startswith(sysconfig.get_paths()["stdlib"])


def unserializable(calls: Sequence[TaskCall]) -> UnserializableInputError:
    """Find the argument that cannot be pickled and say so: task, parameter, type."""
    for call in calls:
        for name, value in call.parameters.items():
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                return UnserializableInputError(
                    f"task {call.task.name!r}: argument {name!r} of type {type(value).__module__}.{type(value).__qualname__} "
                    f"cannot be sent to the Dask workers ({type(exc).__name__}: {exc}). Locks, sockets, open files, "
                    "connections and generators cannot travel: create the object inside the task, or pass what "
                    "is needed to make it (a URL, a path, a config)."
                )
    return UnserializableInputError(
        f"task {calls[0].task.name!r}: its arguments or its function cannot be sent to the Dask workers"
    )
