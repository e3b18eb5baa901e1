"""Prefect's ``prefect.utilities.annotations`` path: the wrappers that change how a task treats an argument.

The same classes as :mod:`daskflow.annotations` (``unmapped``, ``allow_failure``,
``quote``, ``opaque``), so ``isinstance`` checks and ``.map`` treat them alike
whichever path imported them.
"""

from __future__ import annotations

from daskflow.annotations import BaseAnnotation, allow_failure, opaque, quote, unmapped

__all__ = ["BaseAnnotation", "allow_failure", "opaque", "quote", "unmapped"]
