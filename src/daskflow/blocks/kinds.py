"""The block kinds daskflow ships: a secret, a JSON document, a remote storage and a SQL connection.

Each is a small pydantic model over :class:`~daskflow.blocks.base.Block`; what
makes it a kind is its fields, which of them are secret, and the few methods
a flow wants from it:

* :class:`Secret` — a string or a dict of them (an API token, a credentials
  document), encrypted at rest; ``get()`` returns it, ``repr``/``str`` never do.
* :class:`JSON` — any JSON value, in plain text: settings shared by flows.
* :class:`RemoteStorage` — an fsspec URL and its ``storage_options``. It has
  the ``url`` and ``storage_options`` attributes that
  :func:`daskflow.results.open_store` reads, so it is accepted wherever
  ``result_storage`` is, e.g. ``@task(result_storage=RemoteStorage.load("lake"))``.
* :class:`SQLAlchemyConnector` — a database URL whose password is a
  ``SecretStr`` field or the name of a saved :class:`Secret`; ``get_engine()``,
  ``fetch(sql, params)`` (a list of dicts) and ``execute(sql, params)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic
import sqlalchemy as sa

from daskflow.blocks.base import Block
from daskflow.exceptions import BlockError

__all__ = ["JSON", "RemoteStorage", "SQLAlchemyConnector", "Secret"]

REDACTED = "***"


class Secret(Block):
    """A secret string or dict, encrypted at rest; ``get()`` returns it, its ``repr`` does not."""

    block_kind: ClassVar[str] = "secret"
    __secret_fields__: ClassVar[frozenset[str]] = frozenset({"value"})

    value: str | dict[str, Any]

    def get(self) -> str | dict[str, Any]:
        """The secret value."""
        return self.value

    def __repr__(self) -> str:
        return f"Secret(name={self.block_name!r}, value={REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __repr_args__(self) -> Any:  # pydantic's rich/pretty printing and error messages
        return [("name", self.block_name), ("value", REDACTED)]


class JSON(Block):
    """Any JSON value, stored in plain text: shared settings, lookup tables, parameters."""

    block_kind: ClassVar[str] = "json"

    value: pydantic.JsonValue


class RemoteStorage(Block):
    """An fsspec location with its options; pass it as ``result_storage`` (it has ``url`` and ``storage_options``).

    ``storage_options`` are stored in plain text: keep credentials out of them
    (fsspec backends read them from the environment or their own config files).
    """

    block_kind: ClassVar[str] = "remote-storage"

    url: str
    storage_options: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("url")
    @classmethod
    def _a_url(cls, url: str) -> str:
        if not url.strip():
            raise ValueError("the url is empty; give an fsspec URL such as 's3://bucket/prefix' or 'file:///data'")
        return url


class SQLAlchemyConnector(Block):
    """A SQL database by SQLAlchemy URL; its password a ``SecretStr`` or the name of a saved :class:`Secret`.

    The engine is made on first use and kept by the block (not pickled: a saved
    connector travels by name and makes its own engine where it is loaded).
    """

    block_kind: ClassVar[str] = "sqlalchemy-connector"

    url: str
    password: pydantic.SecretStr | None = None
    password_secret: str | None = None  # the name of a Secret block holding the password
    connect_args: dict[str, Any] = pydantic.Field(default_factory=dict)

    _engine: sa.Engine | None = pydantic.PrivateAttr(default=None)

    @pydantic.model_validator(mode="after")
    def _one_password(self) -> SQLAlchemyConnector:
        if self.password is not None and self.password_secret is not None:
            raise ValueError("give the password either as password or as password_secret (a Secret's name), not both")
        try:
            parsed = sa.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise ValueError(f"url is not a SQLAlchemy URL: {exc}") from None
        if parsed.password is not None:
            raise ValueError(
                "the url holds a password, which would be stored in plain text; pass it as password=... "
                "or password_secret='<Secret block name>' instead"
            )
        return self

    def _password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_secret is None:
            return None
        value = Secret.load(self.password_secret).get()
        if not isinstance(value, str):
            raise BlockError(
                f"The Secret {self.password_secret!r} named as this connector's password holds a dict, not a "
                "string. Fix: save the password alone in a Secret and name that one."
            )
        return value

    def get_engine(self) -> sa.Engine:
        """The SQLAlchemy engine for this database, made once per block."""
        if self._engine is None:
            url = sa.make_url(self.url)
            password = self._password()
            if password is not None:
                url = url.set(password=password)
            self._engine = sa.create_engine(url, connect_args=dict(self.connect_args))
        return self._engine

    def fetch(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The rows of a query, each as a dict of column name to value; ``:name`` placeholders take ``params``."""
        with self.get_engine().connect() as connection:
            result = connection.execute(sa.text(sql), dict(params or {}))
            return [dict(row._mapping) for row in result]

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Run a statement in its own transaction; return the number of rows it touched (-1 if unknown)."""
        with self.get_engine().begin() as connection:
            return connection.execute(sa.text(sql), dict(params or {})).rowcount

    def close(self) -> None:
        """Dispose of the engine's connections (a new engine is made on the next use)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
