"""Naming a flow by where it can be imported from, and importing it again by that name.

A deployment outlives the process that applied it: a scheduling service, a
backfill or ``daskflow deployment run`` in another process must find the same
flow. So the run store keeps an *entrypoint*, never the function itself:

* ``package.module:attr`` when the flow's module can be imported by name
  from here (it is on ``sys.path``), as for any installed or project module;
* ``/abs/path/to/file.py:attr`` otherwise: a script run as ``__main__`` (the
  seed's ``python seed_daily_order_etl.py``), or a file loaded by path.

A flow defined inside a function (``<locals>`` in its qualified name) has no
such name, and a flow whose module attribute is not the flow itself (rebound,
or made by ``with_options``) cannot be found again: both are errors at build
time, saying to define the flow at module level.

Loading a file path executes the file as a module of its own (never as
``__main__``, so its ``if __name__ == "__main__":`` block does not run); it is
loaded once per process and file version, and registered in ``sys.modules`` so
that pickling the flow's functions for Dask workers finds it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from daskflow.exceptions import DeploymentError
from daskflow.flows import Flow

__all__ = ["entrypoint_of", "load_flow"]

_FIX = "Fix: define the flow at the top level of a module or script, as `@flow def my_flow(...)`."
_loaded_files: dict[tuple[str, float], ModuleType] = {}
_loading = threading.Lock()  # backfill threads may load one file at once: execute it once
_file_module_names: set[str] = set()  # the names _load_file gave: never importable by name elsewhere


def _importable_by_name(module: ModuleType) -> bool:
    """Whether ``import <module.__name__>`` here finds this very file (not some other module)."""
    name = module.__name__
    # A file loaded here by path has a made-up name that find_spec finds in sys.modules, not on the path.
    if name == "__main__" or name in _file_module_names or sys.modules.get(name) is not module:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    origin = getattr(spec, "origin", None)
    file = getattr(module, "__file__", None)
    if spec is None or origin is None or file is None:
        return spec is not None
    return Path(origin).resolve() == Path(file).resolve()


def entrypoint_of(flow: Flow[Any, Any]) -> str:
    """Where ``flow`` can be imported from: ``module:attr`` or ``/path/file.py:attr``."""
    if not isinstance(flow, Flow):
        raise DeploymentError(f"a deployment needs a @flow, got {type(flow).__name__}: {flow!r}")
    fn = flow.fn
    qualname = getattr(fn, "__qualname__", "")
    module_name = getattr(fn, "__module__", None)
    where = f"flow {flow.name!r} ({module_name}.{qualname})"
    if "<locals>" in qualname or "." in qualname:
        raise DeploymentError(
            f"{where} is defined inside a function or class, so another process cannot import it. {_FIX}"
        )
    module = sys.modules.get(module_name or "")
    if module is None:
        raise DeploymentError(f"{where}: its module {module_name!r} is not imported here. {_FIX}")
    found = getattr(module, qualname, None)
    if not isinstance(found, Flow) or found.fn is not fn:
        raise DeploymentError(
            f"{where}: the module attribute {qualname!r} is not this flow, so it could not be found again. "
            f"{_FIX} Options belong in @flow(...), not in a with_options() copy."
        )
    if _importable_by_name(module):
        return f"{module.__name__}:{qualname}"
    file = getattr(module, "__file__", None)
    if not file:
        raise DeploymentError(f"{where}: its module has no file (an interactive session?). {_FIX}")
    return f"{Path(file).resolve()}:{qualname}"


def _split(entrypoint: str) -> tuple[str, str]:
    module, sep, attr = entrypoint.rpartition(":")  # rpartition: a Windows path has a colon of its own
    if not sep or not module or not attr.isidentifier():
        raise DeploymentError(
            f"entrypoint {entrypoint!r} is not 'package.module:flow_name' or 'path/to/file.py:flow_name'."
        )
    return module, attr


def _load_file(path: Path, entrypoint: str) -> ModuleType:
    if not path.is_file():
        raise DeploymentError(
            f"entrypoint {entrypoint!r}: there is no file {path}. Fix: run from where the file exists, or "
            "re-apply the deployment with the flow's new location."
        )
    key = (str(path), path.stat().st_mtime)
    with _loading:
        module = _loaded_files.get(key)
        if module is not None:
            return module
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        name = f"daskflow_entrypoint_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise DeploymentError(f"entrypoint {entrypoint!r}: {path} cannot be loaded as Python.")
        module = importlib.util.module_from_spec(spec)
        _file_module_names.add(name)
        sys.modules[name] = module  # before executing: dataclasses and pickling look it up there
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _loaded_files[key] = module
        return module


def load_flow(entrypoint: str) -> Flow[Any, Any]:
    """The flow an entrypoint names, imported (an error says what is missing and where)."""
    module_ref, attr = _split(entrypoint)
    if module_ref.endswith(".py"):
        module = _load_file(Path(module_ref), entrypoint)
    else:
        try:
            module = importlib.import_module(module_ref)
        except ImportError as exc:
            raise DeploymentError(
                f"entrypoint {entrypoint!r}: module {module_ref!r} cannot be imported ({exc}). Fix: run where "
                "it is importable (install the project, or add its folder to PYTHONPATH)."
            ) from exc
    found = getattr(module, attr, None)
    if not isinstance(found, Flow):
        what = "nothing" if found is None else f"a {type(found).__name__}"
        raise DeploymentError(f"entrypoint {entrypoint!r}: {attr!r} in {module_ref} is {what}, not a @flow.")
    return found
