"""Prefect's ``prefect.blocks.system`` path: the simple value blocks ``Secret``, ``String`` and ``JSON``.

``Secret`` and ``JSON`` are daskflow's kinds (:mod:`.kinds`); ``String`` is a
plain text value, saved and loaded like any block::

    String(value="s3://bucket/raw").save("raw-prefix")
    String.load("raw-prefix").value
"""

from __future__ import annotations

from typing import ClassVar

from daskflow.blocks.base import Block
from daskflow.blocks.kinds import JSON, Secret

__all__ = ["JSON", "Secret", "String"]


class String(Block):
    """A string value, stored in plain text (a secret one belongs in :class:`Secret`)."""

    block_kind: ClassVar[str] = "string"

    value: str
