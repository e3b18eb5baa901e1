"""Task runners: where a flow's task runs execute.

``DaskTaskRunner`` is loaded on first use, so that ``import daskflow`` does not
import ``distributed``.
"""

from typing import Any

from daskflow.task_runners.base import TaskRunner
from daskflow.task_runners.sequential import SequentialTaskRunner
from daskflow.task_runners.threadpool import ConcurrentTaskRunner, ThreadPoolTaskRunner

__all__ = ["ConcurrentTaskRunner", "DaskTaskRunner", "SequentialTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]


def __getattr__(name: str) -> Any:
    if name == "DaskTaskRunner":
        from daskflow.task_runners.dask import DaskTaskRunner

        return DaskTaskRunner
    raise AttributeError(f"module 'daskflow.task_runners' has no attribute {name!r}")
