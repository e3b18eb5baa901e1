"""Where a flow run comes from: its flow's import path, and an id fixed before the run exists.

Both serve running a flow again from another process. Every flow run records
:func:`import_path` — ``package.module:flow`` when that name imports this very
file in a fresh process, else ``/path/to/file.py:flow`` (a script, or a module
loaded by path) — so ``daskflow runs retry`` and the server's Retry can import
the flow of a run that no deployment started. And whoever starts a run for
someone waiting on an answer (the server's Run and Retry) fixes its id first
with :func:`preset_flow_run_id`, so it can answer with the id at once; the next
top-level flow run started in that context takes it (:func:`take_preset_run_id`),
its subflows get ids of their own.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["import_path", "preset_flow_run_id", "take_preset_run_id"]

_preset_run_id: ContextVar[str | None] = ContextVar("daskflow_preset_flow_run_id", default=None)
_import_paths: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


@contextmanager
def preset_flow_run_id(run_id: str) -> Iterator[None]:
    """Give the next top-level flow run started in this context the id ``run_id``."""
    token = _preset_run_id.set(run_id)
    try:
        yield
    finally:
        _preset_run_id.reset(token)


def take_preset_run_id() -> str | None:
    """The id preset for the next top-level flow run, once: the flow engine calls it for such a run."""
    preset = _preset_run_id.get()
    if preset is not None:
        _preset_run_id.set(None)
    return preset


def _finds_by_name(name: str, file: str | None) -> bool:
    """Whether ``import <name>`` in a fresh process finds ``file`` (not so for a module loaded by path)."""
    parent, _, last = name.rpartition(".")
    search = None
    if parent:
        search = getattr(sys.modules.get(parent), "__path__", None)
        if search is None:
            return False
    try:  # the path finder, not importlib.util.find_spec: that one answers from sys.modules
        spec = importlib.machinery.PathFinder.find_spec(last, search)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    return file is None or spec.origin is None or os.path.realpath(spec.origin) == os.path.realpath(file)


def import_path(fn: Any) -> str | None:
    """Where a flow's function imports from (``module:name``, or ``/path/file.py:name``); None if nowhere.

    Worked out once per function (a lookup on disk) and remembered while the function lives.
    """
    try:
        return _import_paths[fn]
    except (KeyError, TypeError):
        pass
    qualname = getattr(fn, "__qualname__", "")
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = None
    if module is not None and qualname.isidentifier():  # "<locals>" or a method: nothing to import
        file = getattr(module, "__file__", None)
        if module.__name__ != "__main__" and _finds_by_name(module.__name__, file):
            path = f"{module.__name__}:{qualname}"
        elif file:
            path = f"{os.path.abspath(file)}:{qualname}"
    try:
        _import_paths[fn] = path
    except TypeError:  # not weakly referenceable: work it out again next time
        pass
    return path
