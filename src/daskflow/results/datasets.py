"""A map's cached entries, read back as one dataset.

Each run of a ``.map()`` over DataFrames that caches stores its value as a
Parquet file of its own. Those files are ordinary Parquet, with pandas' Arrow
metadata, so together they already are a dataset: :func:`read_map` names them
from the runs' cache keys and opens them as a ``dask.dataframe`` (lazy,
one entry per partition) or a ``pyarrow.dataset.Dataset``, so the
outputs of a flow are useful outside it without running it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from daskflow.exceptions import ResultError
from daskflow.results.entries import ResultStore, open_store

__all__ = ["map_entry_keys", "read_map"]

_TABULAR = ("pandas.DataFrame", "arrow.Table")


def map_entry_keys(runs: Iterable[Any]) -> list[str]:
    """The cache keys of a map's runs: futures, task runs, states' runs or keys themselves."""
    keys: list[str] = []
    for position, item in enumerate(runs):
        if isinstance(item, str):
            keys.append(item)
            continue
        run = getattr(item, "task_run", item)
        key = getattr(run, "cache_key", None)
        if not isinstance(key, str):
            name = getattr(run, "name", repr(item))
            raise ResultError(
                f"item {position} ({name!r}) has no cache entry to read: give its task a cache policy "
                "(e.g. cache_policy=INPUTS) or persist_result=True, and read the map after its runs completed"
            )
        keys.append(key)
    if not keys:
        raise ResultError("read_map got no runs: pass the futures a .map() returned")
    return keys


def read_map(
    runs: Iterable[Any],
    storage: Any = None,
    *,
    engine: Literal["dask", "arrow"] = "dask",
) -> Any:
    """The entries of one ``.map()`` as one dataset, in the map's order.

    ``runs`` are the map's futures (or task runs, or cache keys); ``storage``
    is the mapped task's ``result_storage`` (``my_task.result_storage``; a URL,
    a store, or ``None`` for the configured default). ``engine="dask"`` gives a
    ``dask.dataframe.DataFrame``, ``engine="arrow"`` a ``pyarrow.dataset.Dataset``.
    Entries that are missing, or that hold something other than a DataFrame or
    an Arrow table, are a ``ResultError`` naming the first of them.
    """
    keys = map_entry_keys(runs)
    store = open_store(storage)
    _check_entries(store, keys)
    paths = [store.path(key) for key in keys]
    if engine == "dask":
        import dask.dataframe as dd

        # from_map keeps the map's order (read_parquet would sort the files by name).
        return dd.from_map(_read_frame, paths, storage_options=store.storage_options, label="read-map")  # type: ignore[no-untyped-call]
    if engine == "arrow":
        import pyarrow.dataset as ds
        from fsspec.core import url_to_fs

        fs, _ = url_to_fs(paths[0], **store.storage_options)
        return ds.dataset([fs._strip_protocol(path) for path in paths], filesystem=fs, format="parquet")
    raise ResultError(f"read_map: engine must be 'dask' or 'arrow', got {engine!r}")


def _read_frame(path: str, storage_options: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.read_parquet(path, storage_options=storage_options or None)


def _check_entries(store: ResultStore, keys: list[str]) -> None:
    """Every entry exists, and the first one holds a table (the others are alike)."""
    for key in keys:
        if not store.exists(key):
            raise ResultError(
                f"no cache entry {key!r} in {store.url}: it expired, was pruned, or lives in another "
                "storage (pass the mapped task's result_storage)"
            )
    info = store.info(keys[0])
    if info.format not in _TABULAR:
        raise ResultError(
            f"cache entry {keys[0]!r} holds a {info.format}, not a DataFrame or an Arrow table: only maps "
            "whose runs return tables can be read as one dataset"
        )
