"""Blocks: save/load of every kind on every run store, secrets encrypted at rest, keys, pickling, CLI."""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pydantic
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.fernet import Fernet

from daskflow import flow, task
from daskflow.blocks import JSON, Block, RemoteStorage, Secret, SQLAlchemyConnector
from daskflow.blocks.crypto import KEY_ENV_VAR, key_file
from daskflow.cache_policies import INPUTS
from daskflow.cli import main
from daskflow.exceptions import BlockError, BlockNotFoundError, SecretKeyError, UnhashableInputError
from daskflow.hashing import stable_hash
from daskflow.results import open_store

SECRET = "correct-horse-battery-staple"


def _raw_rows(url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(sa.text("SELECT kind, name, data FROM blocks"))]
    finally:
        engine.dispose()


def test_every_kind_saves_and_loads_and_secrets_are_encrypted_at_rest(run_store_url: str, tmp_path: Path) -> None:
    kinds: dict[str, Block] = {
        "api-token": Secret(value=SECRET),
        "aws-creds": Secret(value={"key": "AKIA", "secret": SECRET}),
        "settings": JSON(value={"regions": ["eu", "us"], "limit": 3, "on": True}),
        "lake": RemoteStorage(url=f"file://{tmp_path}/lake", storage_options={"auto_mkdir": True}),
        "warehouse": SQLAlchemyConnector(url="postgresql+psycopg://etl@db.example/wh", password=SECRET),
    }
    for name, block in kinds.items():
        block.save(name, url=run_store_url)
        assert block.block_name == name
    for name, block in kinds.items():
        loaded = type(block).load(name, url=run_store_url)
        assert type(loaded) is type(block) and loaded == block and loaded.block_name == name
    assert Secret.load("aws-creds", url=run_store_url).get() == {"key": "AKIA", "secret": SECRET}
    assert [(b.kind, b.name) for b in Secret.list(url=run_store_url)] == [
        ("secret", "api-token"),
        ("secret", "aws-creds"),
    ]
    assert len(Block.list(url=run_store_url)) == 5
    assert isinstance(Block.load("settings", url=run_store_url), JSON)  # any kind, through the base

    stored = _raw_rows(run_store_url)
    assert len(stored) == 5
    for row in stored:
        assert SECRET not in row["data"], f"{row['kind']}/{row['name']} stores the secret in plain text"
    by_name = {row["name"]: json.loads(row["data"]) for row in stored}
    assert set(by_name["api-token"]["value"]) == {"$fernet"}
    assert set(by_name["warehouse"]["password"]) == {"$fernet"}
    assert by_name["lake"] == {"url": f"file://{tmp_path}/lake", "storage_options": {"auto_mkdir": True}}

    Secret.delete("api-token", url=run_store_url)
    with pytest.raises(BlockNotFoundError, match=r"(?s)No secret block named .api-token.*known: aws-creds"):
        Secret.load("api-token", url=run_store_url)


def test_overwrite_rules_and_names(daskflow_home: Path) -> None:
    Secret(value="one").save("token")
    with pytest.raises(BlockError, match=r"(?s)already exists.*overwrite=True"):
        Secret(value="two").save("token")
    assert Secret.load("token").get() == "one"
    first = Secret.list()[0]
    Secret(value="two").save("token", overwrite=True)
    assert Secret.load("token").get() == "two"
    again = Secret.list()[0]
    assert again.created == first.created and again.updated > first.updated
    JSON(value=1).save("token")  # the same name in another kind is another block
    with pytest.raises(BlockError, match=r"2 blocks are named 'token'"):
        Block.load("token")
    for bad in ("Token", "my_token", "-x", "x-", "", "a" * 65):
        with pytest.raises(BlockError, match="Invalid block name"):
            Secret(value="x").save(bad)
    with pytest.raises(BlockNotFoundError):
        JSON.delete("missing")


def test_secret_repr_and_str_are_redacted() -> None:
    secret = Secret(value=SECRET)
    secret.save("pw")
    for text in (repr(secret), str(secret), f"{secret}", repr([secret]), repr(Secret.load("pw"))):
        assert SECRET not in text
    assert "***" in repr(secret)
    connector = SQLAlchemyConnector(url="sqlite:///x.db", password=SECRET)
    assert SECRET not in repr(connector)


def test_key_file_is_private_and_a_readable_one_is_refused(
    daskflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    Secret(value=SECRET).save("pw")
    path = key_file()
    assert path.parent == daskflow_home and stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(SecretKeyError, match=r"may be read by others \(mode 0644\).*chmod 600"):
        Secret.load("pw")
    os.chmod(path, 0o600)
    assert Secret.load("pw").get() == SECRET
    path.unlink()  # the key is gone: reading must not make a new one and decrypt garbage
    with pytest.raises(SecretKeyError, match=rf"No key to decrypt block secrets: {KEY_ENV_VAR} is not set"):
        Secret.load("pw")
    assert not path.exists()


def test_a_wrong_key_is_a_clear_error_never_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, Fernet.generate_key().decode())
    Secret(value=SECRET).save("pw")
    SQLAlchemyConnector(url="sqlite:///x.db", password=SECRET).save("db")
    assert Secret.load("pw").get() == SECRET
    monkeypatch.setenv(KEY_ENV_VAR, Fernet.generate_key().decode())
    with pytest.raises(SecretKeyError, match=rf"could not be decrypted with the key from \${KEY_ENV_VAR}.*Fix:"):
        Secret.load("pw")
    with pytest.raises(SecretKeyError, match=r"'password' of block sqlalchemy-connector/db"):
        SQLAlchemyConnector.load("db")
    JSON(value=[1]).save("plain")  # blocks without secrets need no key
    monkeypatch.setenv(KEY_ENV_VAR, "not-a-key")
    assert JSON.load("plain").value == [1]
    with pytest.raises(SecretKeyError, match="is not a Fernet key"):
        Secret.load("pw")


def test_a_saved_block_pickles_by_name_and_an_unsaved_one_by_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Secret(value=SECRET).save("pw")
    data = pickle.dumps(Secret.load("pw"))
    assert SECRET.encode() not in data and b"pw" in data
    assert pickle.loads(data).get() == SECRET
    Secret(value="new").save("pw", overwrite=True)
    assert pickle.loads(data).get() == "new"  # loaded again where it is unpickled
    assert pickle.loads(pickle.dumps(JSON(value={"a": 1}))) == JSON(value={"a": 1})
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "elsewhere"))  # a process without the run store
    with pytest.raises(BlockError, match=r"(?s)travelled here by name.*DASK_DASKFLOW__RUNSTORE__URL"):
        pickle.loads(data)


def _load_on_worker(data: bytes, url: str, key: str) -> Any:
    import dask.config

    os.environ[KEY_ENV_VAR] = key
    try:
        with dask.config.set({"daskflow.runstore.url": url}):
            secret = pickle.loads(data)
            return secret.get(), os.getpid()
    finally:
        del os.environ[KEY_ENV_VAR]


def test_a_secret_travels_to_a_dask_worker_by_name(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV_VAR, key)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    Secret(value=SECRET).save("pw", url=url)
    data = pickle.dumps(Secret.load("pw", url=url))
    assert SECRET.encode() not in data
    value, pid = dask_client.submit(_load_on_worker, data, url, key, pure=False).result(timeout=60)
    assert value == SECRET and pid != os.getpid()


def test_cache_keys_hash_a_saved_block_by_name_and_refuse_an_unsaved_secret() -> None:
    Secret(value="one").save("pw")
    first = stable_hash(Secret.load("pw"))
    Secret(value="two").save("pw", overwrite=True)
    assert stable_hash(Secret.load("pw")) == first
    with pytest.raises(UnhashableInputError, match="never go into a cache key"):
        stable_hash(Secret(value=SECRET))
    assert SECRET not in str(pytest.raises(UnhashableInputError, stable_hash, Secret(value=SECRET)).value)


def test_remote_storage_is_accepted_as_result_storage(tmp_path: Path) -> None:
    RemoteStorage(url=f"file://{tmp_path}/results", storage_options={"auto_mkdir": True}).save("lake")
    lake = RemoteStorage.load("lake")
    assert open_store(lake).url == f"file://{tmp_path}/results"
    calls: list[int] = []

    @task(cache_policy=INPUTS, result_storage=lake, persist_result=True)
    def square(i: int) -> int:
        calls.append(i)
        return i * i

    @flow
    def pipeline() -> int:
        return square(4)

    assert pipeline() == 16 and pipeline() == 16
    assert calls == [4], "the second run did not read the cached result from the RemoteStorage"
    assert any((tmp_path / "results").iterdir())
    with pytest.raises(pydantic.ValidationError):
        RemoteStorage(url=" ")


def test_sqlalchemy_connector_fetches_and_executes_and_takes_its_password_from_a_secret(tmp_path: Path) -> None:
    SQLAlchemyConnector(url=f"sqlite:///{tmp_path / 'data.db'}").save("local")
    db = SQLAlchemyConnector.load("local")
    db.execute("CREATE TABLE t (id INTEGER, name TEXT)")
    assert db.execute("INSERT INTO t VALUES (:id, :name)", {"id": 1, "name": "a"}) == 1
    db.execute("INSERT INTO t VALUES (2, 'b')")
    assert db.fetch("SELECT * FROM t WHERE id >= :low ORDER BY id", {"low": 1}) == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
    ]
    db.close()
    Secret(value=SECRET).save("wh-password")
    SQLAlchemyConnector(url="postgresql+psycopg://etl@db.example/wh", password_secret="wh-password").save("wh")
    engine = SQLAlchemyConnector.load("wh").get_engine()  # made, not connected
    assert engine.url.password == SECRET
    assert SECRET not in json.dumps([r["data"] for r in _raw_rows(f"sqlite:///{key_file().parent / 'runs.db'}")])
    with pytest.raises(pydantic.ValidationError, match="holds a password"):
        SQLAlchemyConnector(url=f"postgresql://etl:{SECRET}@db/wh")


def test_cli_create_ls_show_delete(daskflow_home: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["block", "create", "secret", "api-token"], input=f"{SECRET}\n{SECRET}\n")
    assert done.exit_code == 0, done.output
    assert SECRET not in done.output  # the prompt does not echo it
    assert Secret.load("api-token").get() == SECRET
    done = runner.invoke(main, ["block", "create", "json", "limits", "--value", '{"max": 3}'])
    assert done.exit_code == 0, done.output
    done = runner.invoke(
        main,
        [
            "block",
            "create",
            "remote-storage",
            "lake",
            "--field",
            "url=memory://lake",
            "--field",
            'storage_options={"a": 1}',
        ],
    )
    assert done.exit_code == 0, done.output
    assert RemoteStorage.load("lake").storage_options == {"a": 1}

    listing = runner.invoke(main, ["block", "ls"])
    assert listing.exit_code == 0 and all(n in listing.output for n in ("api-token", "limits", "lake"))
    shown = runner.invoke(main, ["block", "show", "api-token"])
    assert shown.exit_code == 0, shown.output
    assert "secret/api-token" in shown.output and "value: ***" in shown.output and SECRET not in shown.output
    assert '"max": 3' in runner.invoke(main, ["block", "show", "json/limits"]).output

    again = runner.invoke(main, ["block", "create", "json", "limits", "--value", "[1]"])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(main, ["block", "create", "nosuch", "x", "--value", "1"])
    assert bad.exit_code == 2 and "Unknown block kind 'nosuch'" in bad.output
    deleted = runner.invoke(main, ["block", "delete", "limits"])
    assert deleted.exit_code == 0 and "Deleted json/limits" in deleted.output
    missing = runner.invoke(main, ["block", "show", "limits"])
    assert missing.exit_code == 2 and "No block named 'limits'" in missing.output


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_a_loaded_secret_is_redacted_from_daskflow_log_records() -> None:
    Secret(value={"token": SECRET, "short": "ab"}).save("creds")
    value = Secret.load("creds").get()
    assert isinstance(value, dict)
    logger = logging.getLogger("daskflow.task_runs")
    collect = _Collect()
    logger.addHandler(collect)
    try:
        logger.warning("calling the API with %s", value["token"])
        try:
            raise RuntimeError(f"the API refused {value['token']}")
        except RuntimeError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(collect)
    text = "\n".join(collect.lines)
    assert SECRET not in text
    assert "calling the API with ***" in text and "RuntimeError: the API refused ***" in text
