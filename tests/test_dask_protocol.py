"""The client -> worker message of the Dask runner: a typed, versioned spec."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

from daskflow.exceptions import ConfigurationError
from daskflow.task_runners import dask_protocol
from daskflow.task_runners.dask_protocol import RunSpec


def test_a_run_spec_travels_whole_and_by_name() -> None:
    spec = RunSpec("id-1", "extract-3", 3, ("up-1",), {"x": 1}, (), 2, "the worker died")
    copy = pickle.loads(cloudpickle.dumps(spec))
    assert [getattr(copy, name) for name in RunSpec.__slots__] == [getattr(spec, name) for name in RunSpec.__slots__]


def test_a_spec_of_another_protocol_version_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pickle.dumps(RunSpec("id-1", "extract-3", None, (), {}, (), 0, None))
    monkeypatch.setattr(dask_protocol, "VERSION", dask_protocol.VERSION + 1)
    with pytest.raises(ConfigurationError, match="different daskflow versions"):
        pickle.loads(data)
