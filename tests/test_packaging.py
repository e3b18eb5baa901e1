"""The package as a newcomer meets it: dependencies listed twice agree, the import is light,
and the public names are pinned."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import daskflow

ROOT = Path(__file__).resolve().parent.parent


# conda-forge names that differ from the PyPI name of the same package.
_CONDA_TO_PYPI = {"python-graphviz": "graphviz"}


def _normalise(requirement: str) -> str:
    name = re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")
    return _CONDA_TO_PYPI.get(name, name)


def test_pyproject_and_environment_yml_list_the_same_dependencies() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = {_normalise(r) for r in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_normalise(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    pip_section = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict)), [])
    conda |= {_normalise(d) for d in pip_section if not d.startswith("-e")}
    missing_in_env = core - conda
    assert not missing_in_env, f"in pyproject.toml but not environment.yml: {sorted(missing_in_env)}"
    extras = {_normalise(r) for reqs in pyproject["project"]["optional-dependencies"].values() for r in reqs}
    unknown = conda - core - extras
    assert not unknown, f"in environment.yml but not pyproject.toml: {sorted(unknown)}"


def test_import_does_not_import_distributed_and_is_fast() -> None:
    code = (
        "import json, sys, time; t = time.perf_counter(); import daskflow; "
        "print(json.dumps({'seconds': time.perf_counter() - t, 'distributed': 'distributed' in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["distributed"] is False, "import daskflow imported distributed"
    print(f"import daskflow: {report['seconds'] * 1000:.0f} ms")


def test_import_keeps_dask_config_set_before_it() -> None:
    code = (
        "import dask.config; dask.config.set({'array.chunk-size': '7MiB', 'daskflow.task_runner': 'sequential'}); "
        "import daskflow, daskflow.settings as s; "
        "print(dask.config.get('array.chunk-size'), s.get('task_runner'), s.get('logging.level'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["7MiB", "sequential", "INFO"], out


def test_public_names_are_pinned() -> None:
    assert sorted(daskflow.__all__) == sorted(
        [
            "DaskflowFuture",
            "Flow",
            "State",
            "Task",
            "__version__",
            "allow_failure",
            "as_completed",
            "compile",
            "flow",
            "get_run_logger",
            "pause_flow_run",
            "quote",
            "resume_flow_run",
            "runtime",
            "serve",
            "suspend_flow_run",
            "tags",
            "task",
            "unmapped",
            "wait",
        ]
    )
    for name in daskflow.__all__:
        assert hasattr(daskflow, name), name


def test_documented_import_paths_exist() -> None:
    from daskflow.cache_policies import DEFAULT, FLOW_PARAMETERS, INPUTS, NO_CACHE, RUN_ID, TASK_SOURCE, CachePolicy  # noqa: F401
    from daskflow.futures import DaskflowFuture, as_completed, wait  # noqa: F401
    from daskflow.states import (  # noqa: F401
        Cached,
        Cancelled,
        Completed,
        Crashed,
        Failed,
        Pending,
        Running,
        State,
        StateType,
        TimedOut,
    )
    from daskflow.task_runners import ConcurrentTaskRunner, SequentialTaskRunner, ThreadPoolTaskRunner  # noqa: F401
    from daskflow.tasks import exponential_backoff, task_input_hash  # noqa: F401
