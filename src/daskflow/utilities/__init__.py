"""Prefect's ``prefect.utilities`` paths that flow code imports from (see :mod:`.annotations`)."""

from __future__ import annotations

__all__: list[str] = []
