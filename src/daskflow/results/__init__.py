"""Cached task results: Parquet entries on any fsspec storage, keyed by input hash.

See :mod:`daskflow.results.entries` for the store and its failure policy,
:mod:`daskflow.results.storage` for atomic writes, :mod:`daskflow.results.serializers`
and :mod:`daskflow.results.values` for the encodings, :mod:`daskflow.results.signing`
for signed pickles, :mod:`daskflow.results.datasets` for reading a map's entries as one dataset.
"""

from __future__ import annotations

from daskflow.results.datasets import read_map
from daskflow.results.entries import (
    DEFAULT_TEMP_GRACE,
    EntryInfo,
    PruneReport,
    ResultStore,
    ResultWarning,
    StaleResultError,
    StoredResult,
    open_store,
    validate_key,
)

__all__ = [
    "DEFAULT_TEMP_GRACE",
    "EntryInfo",
    "PruneReport",
    "ResultStore",
    "ResultWarning",
    "StaleResultError",
    "StoredResult",
    "open_store",
    "read_map",
    "validate_key",
]
