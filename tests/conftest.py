"""Shared fixtures: an isolated daskflow home, the task runners under contract, and
a side channel that counts executions.

Every test gets its own ``DASKFLOW_HOME`` so nothing a test stores (results,
run history) leaks into the user's home or into another test.

``executions`` is the side channel of testing.md: test tasks call
``executions.record(key)``, which writes one file per execution holding
``(key, attempt, pid, start, end)``; tests then count what really ran instead
of inferring it from states.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daskflow.task_runners import SequentialTaskRunner, ThreadPoolTaskRunner

# The contract suite runs over every runner in this list; the Dask runner joins it in one line.
RUNNER_FACTORIES: dict[str, Callable[[], Any]] = {
    "sequential": SequentialTaskRunner,
    "threadpool": lambda: ThreadPoolTaskRunner(max_workers=4),
}


@pytest.fixture(autouse=True)
def daskflow_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("daskflow-home")
    monkeypatch.setenv("DASKFLOW_HOME", str(home))
    return home


@pytest.fixture(params=sorted(RUNNER_FACTORIES))
def task_runner(request: pytest.FixtureRequest) -> Any:
    return RUNNER_FACTORIES[request.param]()


class Executions:
    """Counts task executions through files, so it works across threads and processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def record(self, key: str, start: float | None = None, **extra: Any) -> None:
        entry = {"key": key, "pid": os.getpid(), "start": start if start is not None else time.time(), "end": time.time(), **extra}
        path = self.folder / f"{uuid.uuid4().hex}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)

    def all(self) -> list[dict[str, Any]]:
        return sorted((json.loads(p.read_text()) for p in self.folder.glob("*.json")), key=lambda e: e["start"])

    def keys(self) -> list[str]:
        return [e["key"] for e in self.all()]

    def count(self, key: str) -> int:
        return sum(1 for e in self.all() if e["key"] == key)

    def peak_concurrency(self) -> int:
        events = []
        for e in self.all():
            events.append((e["start"], 1))
            events.append((e["end"], -1))
        peak = current = 0
        for _, delta in sorted(events, key=lambda ev: (ev[0], ev[1])):
            current += delta
            peak = max(peak, current)
        return peak


@pytest.fixture
def executions(tmp_path: Path) -> Iterator[Executions]:
    folder = tmp_path / "executions"
    folder.mkdir()
    yield Executions(folder)
