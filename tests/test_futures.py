"""Futures: result, wait and as_completed, with timeouts."""

from __future__ import annotations

import threading

import pytest

from daskflow import as_completed, flow, task, wait
from daskflow.futures import DaskflowFutureList


def test_result_with_timeout_raises_timeout_error() -> None:
    release = threading.Event()

    @task
    def blocked() -> int:
        release.wait(10)
        return 1

    @flow
    def pipeline() -> tuple[str, int]:
        future = blocked.submit()
        with pytest.raises(TimeoutError, match="did not finish within 0.05 s"):
            future.result(timeout=0.05)
        state_name = future.state.name
        release.set()
        return state_name, future.result()

    state_name, value = pipeline()
    assert state_name in {"Pending", "Running"} and value == 1


def test_wait_with_timeout_splits_done_and_not_done() -> None:
    release = threading.Event()

    @task
    def maybe_block(block: bool) -> bool:
        if block:
            release.wait(10)
        return block

    @flow
    def pipeline() -> tuple[int, int]:
        futures = maybe_block.map([False, True])
        futures[0].wait()
        done, not_done = wait(futures, timeout=0.05)
        release.set()
        return len(done), len(not_done)

    assert pipeline() == (1, 1)


def test_as_completed_times_out() -> None:
    release = threading.Event()

    @task
    def blocked() -> None:
        release.wait(10)

    @flow
    def pipeline() -> None:
        future = blocked.submit()
        with pytest.raises(TimeoutError, match="1 of 1 futures unfinished"):
            list(as_completed([future], timeout=0.05))
        release.set()

    pipeline()


def test_map_returns_a_future_list() -> None:
    @task
    def ident(x: int) -> int:
        return x

    @flow
    def pipeline() -> list[int]:
        futures = ident.map(range(3))
        assert isinstance(futures, DaskflowFutureList) and isinstance(futures, list)
        futures.wait()
        return futures.result()

    assert pipeline() == [0, 1, 2]
