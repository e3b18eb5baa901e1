"""Task runners: where a flow's task runs execute."""

from daskflow.task_runners.base import TaskRunner
from daskflow.task_runners.sequential import SequentialTaskRunner
from daskflow.task_runners.threadpool import ConcurrentTaskRunner, ThreadPoolTaskRunner

__all__ = ["ConcurrentTaskRunner", "SequentialTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]
