"""A secret loaded on a Dask worker never shows: console, run store, report and worker logs mask it with ***."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from daskflow import flow, get_run_logger, secrets_mask, task
from daskflow.blocks import Secret
from daskflow.blocks.crypto import KEY_ENV_VAR
from daskflow.report import render_report
from daskflow.runstore import resolve_url
from daskflow.secrets_mask import MASK, mask_exception
from daskflow.task_runners import DaskTaskRunner

VALUE = "s3cr3t-9f2c"


def _set_worker_env(updates: dict[str, str | None]) -> dict[str, str | None]:
    previous = {name: os.environ.get(name) for name in updates}
    for name, value in updates.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return previous


def _every_text_in_the_run_store() -> str:
    engine = sa.create_engine(resolve_url(None))
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        parts: list[str] = []
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                for row in connection.execute(table.select()):
                    parts.extend(str(value) for value in row if value is not None)
        return "\n".join(parts)
    finally:
        engine.dispose()


def _worker_logs(client: Any) -> str:
    logs = client.get_worker_logs()
    return "\n".join(str(line) for lines in logs.values() for line in lines)


@task(log_prints=True)
def use_the_secret() -> None:
    secret = Secret.load("db-password")
    value = secret.get()
    get_run_logger().error("connecting with %s", value)
    print(f"the password is {value}")
    raise ValueError(f"bad password {value}")


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection")
def test_a_secret_in_a_failing_worker_task_is_masked_everywhere(
    dask_client: Any,
    history: Any,
    daskflow_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV_VAR, key)
    Secret(value=VALUE).save("db-password")
    assert VALUE not in secrets_mask._values  # only the worker loads it: nothing here masks it
    # The workers are session-wide processes: give them this test's run store and key, then restore.
    previous = dask_client.run(_set_worker_env, {KEY_ENV_VAR: key, "DASKFLOW_HOME": str(daskflow_home)})

    @flow(name="leaky", task_runner=DaskTaskRunner(client=dask_client))
    def leaky() -> None:
        use_the_secret()

    try:
        with caplog.at_level(logging.INFO, logger="daskflow"):
            with pytest.raises(ValueError) as raised:
                leaky()
        worker_logs = _worker_logs(dask_client)
        worker_pids = set(dask_client.run(os.getpid).values())
    finally:
        for address, env in previous.items():
            dask_client.run(_set_worker_env, env, workers=[address])

    assert os.getpid() not in worker_pids  # the task ran (and loaded the secret) in another process
    assert VALUE not in str(raised.value) and MASK in str(raised.value)  # it crossed from the worker masked

    console = capfd.readouterr()
    console_text = console.out + console.err + caplog.text
    assert console_text.count(VALUE) == 0, console_text
    assert MASK in console_text

    store = history()
    [summary] = store.list_flow_runs(flow_name="leaky")
    [run] = store.task_runs(summary.id)
    assert run.state_name == "Failed"
    assert run.traceback and "ValueError: bad password ***" in run.traceback, run.traceback
    stored = _every_text_in_the_run_store()
    assert stored.count(VALUE) == 0, stored
    assert "bad password ***" in stored and "connecting with ***" in stored and "the password is ***" in stored

    report = render_report(store, summary.id)
    assert report.count(VALUE) == 0
    assert MASK in report

    assert worker_logs.count(VALUE) == 0, worker_logs


class _Custom(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.detail = detail


def test_mask_exception_copies_only_when_a_secret_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets_mask, "_values", set())  # this process's registry, restored afterwards
    monkeypatch.setattr(secrets_mask, "_ordered", ())
    secrets_mask.add_secrets([VALUE])
    plain = ValueError("nothing to hide")
    assert mask_exception(plain) is plain
    original = ValueError(f"bad password {VALUE}")
    masked = mask_exception(original)
    assert type(masked) is ValueError and str(masked) == "bad password ***"
    assert str(original) == f"bad password {VALUE}"  # the user's object is unchanged
    custom = mask_exception(_Custom(7, VALUE))
    assert VALUE not in str(custom) and VALUE not in repr(vars(custom))
    assert VALUE not in str(pickle.loads(pickle.dumps(custom)))
