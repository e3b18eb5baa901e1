"""Prefect's ``prefect.blocks.core`` path: the :class:`Block` base to subclass with typed fields.

A subclass is a kind of its own, named after the class in kebab case unless it
sets ``block_kind``; its fields are pydantic fields (``SecretStr`` ones are
encrypted at rest)::

    class Warehouse(Block):
        host: str
        port: int = 5432
        password: SecretStr

    Warehouse(host="db", password="s3cr3t").save("prod")
    Warehouse.load("prod").port
"""

from __future__ import annotations

from daskflow.blocks.base import Block, BlockInfo

__all__ = ["Block", "BlockInfo"]
