"""Cached task results: Parquet entries on any fsspec storage, keyed by input hash.

See :mod:`daskflow.results.entries` for the store and its failure policy,
:mod:`daskflow.results.storage` for atomic writes, :mod:`daskflow.results.serializers`
and :mod:`daskflow.results.values` for the encodings, :mod:`daskflow.results.signing`
for signed pickles.
"""

from __future__ import annotations

from daskflow.results.entries import (
    DEFAULT_TEMP_GRACE,
    EntryInfo,
    PruneReport,
    ResultStore,
    ResultWarning,
    StoredResult,
    validate_key,
)

__all__ = [
    "DEFAULT_TEMP_GRACE",
    "EntryInfo",
    "PruneReport",
    "ResultStore",
    "ResultWarning",
    "StoredResult",
    "validate_key",
]
