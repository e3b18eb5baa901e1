"""The Dask runner's wire: typed, versioned messages both ways, each kind round-tripped."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import cloudpickle
import msgpack
import pytest

from daskflow.exceptions import ConfigurationError
from daskflow.runstore import ArtifactRecord
from daskflow.states import Completed, Failed, KnownValue, Running
from daskflow.task_runners import dask_protocol
from daskflow.task_runners.dask_protocol import (
    ArtifactEvent,
    Batch,
    LogEvent,
    RunSpec,
    StateEvent,
    decode_event,
)
from daskflow.task_runners.dask_worker import fold_running


def test_a_run_spec_travels_whole_and_by_name() -> None:
    spec = RunSpec("id-1", "extract-3", 3, ("up-1",), {"x": 1}, (), 2, "the worker died", "a1b2c3")
    copy = pickle.loads(cloudpickle.dumps(spec))
    assert [getattr(copy, name) for name in RunSpec.__slots__] == [getattr(spec, name) for name in RunSpec.__slots__]


def test_a_spec_of_another_protocol_version_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pickle.dumps(RunSpec("id-1", "extract-3", None, (), {}, (), 0, None))
    monkeypatch.setattr(dask_protocol, "VERSION", dask_protocol.VERSION + 1)
    with pytest.raises(ConfigurationError, match="different daskflow versions"):
        pickle.loads(data)


def _wire(message: dict[str, Any]) -> dict[str, Any]:
    """What the client receives: the message through msgpack, as Dask's pub-sub sends it."""
    received: dict[str, Any] = msgpack.unpackb(msgpack.packb(message), strict_map_key=False)
    received["worker"] = "tcp://127.0.0.1:1234"  # the scheduler adds it
    return received


def _events() -> list[Any]:
    record = logging.LogRecord("daskflow.task_runs", logging.WARNING, __file__, 1, "disk %s full", ("/tmp",), None)
    for name, value in [("task_run_name", "extract-3"), ("task_name", "extract"), ("flow_run_id", "f-1"),
                        ("flow_run_name", "calm-otter"), ("flow_name", "etl")]:  # fmt: skip
        setattr(record, name, value)
    artifact = ArtifactRecord(type="markdown", data="# done", key="report", description="d", flow_run_id="f-1",
                              task_run_id="r-1", created=1700000000.5)  # fmt: skip
    return [
        StateEvent.of("r-1", 1, Running()),
        StateEvent.of("r-1", 1, Completed(42, "ok"), cache_key="abc"),
        StateEvent.of("r-2", 2, Failed("boom")),
        LogEvent.of("r-1", record, "Traceback ..."),
        ArtifactEvent.of(artifact),
    ]


def test_every_event_kind_round_trips_through_the_wire() -> None:
    events = _events()
    batch = Batch(tuple(events), pid=4321)
    received = Batch.decode(_wire(batch.encode()))
    assert received.events == batch.events, received.events
    assert (received.pid, received.sync, received.worker) == (4321, None, "tcp://127.0.0.1:1234")
    # What each kind gives the client back.
    completed = received.events[1]
    assert isinstance(completed, StateEvent) and completed.final and completed.cache_key == "abc"
    state = completed.state()
    assert (state.name, state.message, state.is_completed(), state.data) == ("Completed", "ok", True, None), state
    log = received.events[3]
    assert isinstance(log, LogEvent)
    record = log.record()
    assert (record.getMessage(), record.levelno, record.exc_text) == (
        "disk /tmp full",
        logging.WARNING,
        "Traceback ...",
    )
    assert (record.task_run_name, record.flow_name) == ("extract-3", "etl")  # type: ignore[attr-defined]
    artifact = received.events[4]
    assert isinstance(artifact, ArtifactEvent)
    assert artifact.record().data == "# done" and artifact.record().task_run_id == "r-1"


def test_a_sync_marker_round_trips() -> None:
    received = Batch.decode(_wire(Batch.marker("token-1", 99).encode()))
    assert (received.events, received.sync, received.pid) == ((), "token-1", 99)


def test_a_batch_of_another_version_is_refused_clearly() -> None:
    message = _wire(Batch(tuple(_events()), pid=1).encode())
    message["v"] = dask_protocol.VERSION + 1
    with pytest.raises(ConfigurationError, match=r"protocol version \d+ reached a client .*different daskflow"):
        Batch.decode(message)
    del message["v"]  # a worker of a daskflow from before the typed events
    with pytest.raises(ConfigurationError, match="protocol version None"):
        Batch.decode(message)


def test_an_unknown_or_malformed_event_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="unknown daskflow event kind"):
        decode_event(["x", 1])
    with pytest.raises(ConfigurationError, match="malformed daskflow StateEvent"):
        decode_event(["s", "r-1", 1])


def test_a_short_attempts_running_event_rides_on_its_end() -> None:
    running, completed, failed, *others = _events()
    folded = fold_running([running, failed, completed, *others])
    assert running not in folded and len(folded) == 4, folded
    [end] = [e for e in folded if isinstance(e, StateEvent) and e.run_id == "r-1"]
    assert end.start == running.timestamp and end.final, end
    # The Running of an attempt whose end is not in the batch stays: the client shows the run running.
    assert fold_running([running]) == [running]


def test_a_cached_runs_end_carries_its_values_version_and_length_but_never_the_value() -> None:
    """What lets the client key the runs of a map over a list that stays on a worker."""
    listed = Completed(KnownValue(["a", "b", "c"], "v-1"))
    ends = [
        StateEvent.of("r-1", 1, listed, cache_key="k"),
        StateEvent.of("r-2", 1, Completed(KnownValue(7, "v-2")), cache_key="k2").with_start(1.5),
        StateEvent.of("r-3", 1, listed),  # no cache key: not a cached run's end, nothing said of its value
        StateEvent.of("r-4", 1, Completed(["a"]), cache_key="k4"),  # a value without a version
    ]
    received = Batch.decode(_wire(Batch(tuple(ends), pid=1).encode())).events
    assert [(e.version, e.length) for e in received] == [("v-1", 3), ("v-2", None), (None, None), (None, None)]
    assert received[1].start == 1.5
    assert all(e.state().data is None for e in received)  # type: ignore[union-attr]
