"""Blocks: named, reusable configuration — secrets, JSON, storage and database connections.

Save a block once, load it by name in every flow and on every worker::

    from daskflow.blocks import Secret, SQLAlchemyConnector

    Secret(value="s3cr3t").save("warehouse-password")
    SQLAlchemyConnector(url="postgresql+psycopg://etl@db/warehouse",
                        password_secret="warehouse-password").save("warehouse")
    rows = SQLAlchemyConnector.load("warehouse").fetch("select 1 as one")

The base class and its store are in :mod:`.base`, the kinds in :mod:`.kinds`,
the encryption of secrets in :mod:`.crypto`.
"""

from __future__ import annotations

from daskflow.blocks.base import Block, BlockInfo, block_class, load_block, validate_name
from daskflow.blocks.crypto import KEY_ENV_VAR
from daskflow.blocks.kinds import JSON, RemoteStorage, Secret, SQLAlchemyConnector

__all__ = [
    "JSON",
    "KEY_ENV_VAR",
    "Block",
    "BlockInfo",
    "RemoteStorage",
    "SQLAlchemyConnector",
    "Secret",
    "block_class",
    "load_block",
    "validate_name",
]
