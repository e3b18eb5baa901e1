"""Configuration: daskflow's keys in dask.config, and where daskflow keeps its files.

Every setting daskflow reads is a dask.config key under ``daskflow.``, with its
default in the packaged ``daskflow.yaml``. That makes the whole toolbox of dask
configuration work for us unchanged: ``dask.config.set`` in code, YAML files,
and ``DASK_DASKFLOW__...`` environment variables, which dask also forwards to
the workers it starts. Files daskflow keeps by default (results, the run store,
keys) live under one home folder, ``~/.daskflow``, moved by ``DASKFLOW_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.config
import yaml

__all__ = ["HOME_ENV_VAR", "get", "home"]

HOME_ENV_VAR = "DASKFLOW_HOME"

_DEFAULTS_FILE = Path(__file__).with_name("daskflow.yaml")


def _load_defaults() -> None:
    with _DEFAULTS_FILE.open(encoding="utf-8") as f:
        defaults = yaml.safe_load(f)
    # update_defaults keeps what is already configured (YAML files, DASK_* variables,
    # dask.config.set before this import): packaged defaults only fill the gaps.
    dask.config.update_defaults(defaults)


_load_defaults()

_MISSING = object()


def get(key: str, default: Any = _MISSING) -> Any:
    """Return the value of ``daskflow.<key>`` from dask.config.

    ``key`` is given without the ``daskflow.`` prefix, e.g. ``get("results.storage")``.
    """
    full = f"daskflow.{key}"
    if default is _MISSING:
        return dask.config.get(full)
    return dask.config.get(full, default)


def home() -> Path:
    """The folder daskflow keeps its files in: ``$DASKFLOW_HOME`` or ``~/.daskflow``.

    The folder is created on first use.
    """
    raw = os.environ.get(HOME_ENV_VAR)
    path = Path(raw).expanduser() if raw else Path.home() / ".daskflow"
    path.mkdir(parents=True, exist_ok=True)
    return path
