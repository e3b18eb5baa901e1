"""Turning a task's return value into one Arrow table, and back, exactly.

Every entry is a Parquet file, so every value becomes a ``pyarrow.Table``
plus a small JSON-able ``codec`` dict of what the table alone cannot say.
The format is picked from the value's exact type:

======================  =====================================================
``arrow.Table``         a ``pyarrow.Table``, stored as itself
``pandas.*``            a DataFrame, Series or Index through pandas' own Arrow
                        metadata; the codec adds what that metadata loses (a
                        Series' name, a RangeIndex of columns, an index ``freq``,
                        every column's dtype, so that object columns of strings
                        stay objects under pandas 3 and any other change of
                        dtype reads as damage)
``pandas.DataFrame[]``  a list or tuple of DataFrames of one Arrow schema:
                        one row group per frame, each frame's codec and pandas
                        metadata in the codec, so one frame reads back alone
``numpy.ndarray``       a column of the flattened array, or raw bytes in rows of
                        64 MiB for dtypes Arrow lacks; dtype, shape and memory
                        order in the codec
``python``              plain values in the typed node table of :mod:`.values`
``pickle``              cloudpickle bytes in rows of 64 MiB, only when allowed;
                        signing and checking them is the caller's job
======================  =====================================================

Whatever the format, the writer also stores the table's Arrow schema
(:func:`schema_text`) and the reader casts back to it (:func:`conform`):
Parquet returns some types as a relative (``timestamp[s]`` as ``[ms]``).

A list of DataFrames is the usual result of a task that splits its work; as
one table it stays columnar and one frame can be read without the others
(:func:`frame_rows`, :func:`decode_frame`). Frames of different schemas
cannot share a table and need pickle.

Subclasses (a DataFrame subclass, an ``OrderedDict``, a ``namedtuple``) are
not stored as their base type, which would silently change the type: they
need pickle. pyarrow, pandas and numpy are imported on first use, so importing
this module stays cheap.
"""

from __future__ import annotations

import base64
import functools
import itertools
import sys
from dataclasses import dataclass, field
from typing import Any

from daskflow.exceptions import ResultError
from daskflow.results.values import UnsupportedValueError, decode_value, encode_value

__all__ = [
    "FORMATS",
    "FRAMES",
    "PICKLE",
    "THREADED_BYTES",
    "Encoded",
    "conform",
    "decode",
    "decode_frame",
    "decode_frames",
    "encode",
    "frame_rows",
    "pickle_payload",
    "schema_text",
    "unpickle",
]

ARROW, DATAFRAME, FRAMES, SERIES, INDEX, NDARRAY, PYTHON, PICKLE = (
    "arrow.Table",
    "pandas.DataFrame",
    "pandas.DataFrame[]",
    "pandas.Series",
    "pandas.Index",
    "numpy.ndarray",
    "python",
    "pickle",
)
FORMATS = frozenset({ARROW, DATAFRAME, FRAMES, SERIES, INDEX, NDARRAY, PYTHON, PICKLE})

THREADED_BYTES = 64 << 20
"""The size of a table (in memory) from which it is converted on pyarrow's thread pool; a smaller one,
in the calling thread, which costs less than handing its columns out (see :func:`.parquet.read_data`)."""

# Parquet stores one binary value in at most 2 GiB; big blobs are split in rows.
_BLOB_ROW_BYTES = 64 << 20
_PICKLE_PROTOCOL = 5


@dataclass(frozen=True)
class Encoded:
    """A value ready to be written: its table, format and codec.

    ``row_groups``: the sizes of the row groups to cut the table into, in
    order (the frames format: one per frame, so that one frame reads alone);
    ``None`` leaves the cut to the writer.
    """

    table: Any
    format: str
    codec: dict[str, Any] = field(default_factory=dict)
    pickled: bytes | None = None  # the bytes to sign, for the pickle format
    row_groups: tuple[int, ...] | None = None


def encode(value: Any, *, allow_pickle: bool, subject: str = "a result") -> Encoded:
    """Encode ``value``; raise ``ResultError`` if it needs pickle and pickle is not allowed.

    ``subject`` names the value in error messages (e.g. "the result of task 'load'").

    With ``allow_pickle``, values Parquet stores exactly still go to Parquet
    (no unpickling needed to read them back); only the rest is pickled.
    """
    why: str
    try:
        return _encode_native(value)
    except UnsupportedValueError as exc:
        why = str(exc) if exc.where or exc.reason else "no Parquet format of daskflow covers this type"
    except _Inexact as exc:
        why = str(exc)
    if allow_pickle:
        return _encode_pickle(value, subject)
    raise ResultError(
        f"cannot store {subject} (of type {_qualname(type(value))}) as Parquet: {why}. "
        "Fixes: 1. return a pandas DataFrame/Series, a pyarrow Table, a numpy array or plain "
        'values; 2. set result_serializer="pickle" on the task (the entry is then signed '
        "with daskflow's signing key); 3. set persist_result=False if it need not be cached."
    )


def decode(table: Any, format: str, codec: dict[str, Any]) -> Any:
    """The value stored in ``table`` (never the pickle format: see :func:`unpickle`)."""
    if format == ARROW:
        return table
    if format in (DATAFRAME, SERIES, INDEX):
        return _decode_pandas(table, format, codec)
    if format == FRAMES:
        rows = frame_rows(codec)
        if sum(rows) != table.num_rows:
            raise ValueError(f"entry records {sum(rows)} rows of frames, but its table holds {table.num_rows}")
        # An empty frame gets an empty table of its own, as if read from its own row group, rather
        # than a slice that would carry a neighbour's dictionaries (the categories of a categorical).
        starts = itertools.accumulate(rows, initial=0)
        tables = [
            table.slice(start, count) if count else table.schema.empty_table() for start, count in zip(starts, rows)
        ]
        return decode_frames(tables, codec)
    if format == NDARRAY:
        return _decode_ndarray(table, codec)
    if format == PYTHON:
        return decode_value(table)
    raise ValueError(f"format {format!r} has no table decoder")


def schema_text(table: Any) -> str:
    """The table's Arrow schema (without metadata) as text, to be stored with the entry."""
    return base64.b64encode(table.schema.remove_metadata().serialize().to_pybytes()).decode("ascii")


def conform(table: Any, text: str) -> Any:
    """``table`` with the Arrow schema stored by :func:`schema_text`, or ``ValueError``.

    Parquet reads some types back as their nearest relative (timestamp[s] as
    [ms], date64 as date32, large_string dictionaries as string ones); the cast
    restores them. The footer's schema is the one part of a Parquet file no
    checksum covers, so a damaged type shows here too: as a failed cast, or
    as a cast that restores the stored type exactly.
    """
    import pyarrow as pa

    expected = _stored_schema(text)
    if table.schema.remove_metadata().equals(expected):
        return table
    try:
        return table.cast(expected.with_metadata(table.schema.metadata))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ValueError(f"its columns read back as ({table.schema.remove_metadata()}) not ({expected})") from exc


@functools.lru_cache(maxsize=64)
def _stored_schema(text: str) -> Any:
    """The schema :func:`schema_text` gave as ``text``: the entries of one task share it, parsed once."""
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))


class _Inexact(Exception):
    """Parquet could hold the value, but not give back exactly the same value."""


def _encode_native(value: Any) -> Encoded:
    cls = type(value)
    pa = _loaded("pyarrow")
    if pa is not None and cls is pa.Table:
        return Encoded(value, ARROW)
    pd = _loaded("pandas")
    if pd is not None and (cls in (pd.DataFrame, pd.Series) or isinstance(value, pd.Index)):
        return _encode_pandas(value)
    if pd is not None and cls in (list, tuple) and value and all(type(item) is pd.DataFrame for item in value):
        return _encode_frames(value)
    np = _loaded("numpy")
    if np is not None and cls is np.ndarray and not value.dtype.hasobject and value.dtype.fields is None:
        return _encode_ndarray(value)
    return Encoded(encode_value(value), PYTHON)


# -- pandas ----------------------------------------------------------------------


def _encode_pandas(value: Any) -> Encoded:
    import pandas as pd
    import pyarrow as pa

    codec: dict[str, Any] = {}
    if isinstance(value, pd.Index):
        fmt, frame = INDEX, pd.DataFrame(index=value)
    elif isinstance(value, pd.Series):
        # The column gets a fixed label; the real name goes in the codec, since
        # Arrow field names are strings and an int or None name would not survive.
        fmt, frame = SERIES, value.to_frame(name="__series__")
        codec["name"] = _label_to_json(value.name)
    else:
        fmt, frame = DATAFRAME, value
        if type(frame.columns) is pd.RangeIndex:
            rng = frame.columns
            codec["columns_range"] = [rng.start, rng.stop, rng.step, _label_to_json(rng.name)]
    codec["dtypes"] = [_dtype_text(dtype) for dtype in frame.dtypes.tolist()]
    codec["index_dtypes"] = [str(dtype) for dtype in _index_dtypes(frame.index)]
    if isinstance(frame.index, pd.DatetimeIndex | pd.TimedeltaIndex) and frame.index.freq is not None:
        codec["index_freq"] = frame.index.freqstr
    try:
        # One thread: pyarrow's default starts a thread pool per call, which cost more than it saved on
        # W7's monthly frames (half of the Arrow conversion's time), in a writer thread or a Dask worker's.
        table = pa.Table.from_pandas(frame, preserve_index=None, nthreads=1)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise _Inexact(f"pyarrow cannot convert it ({exc})") from None
    _refuse_changed_object_columns(table)
    return Encoded(table, fmt, codec)


def _encode_frames(frames: list[Any] | tuple[Any, ...]) -> Encoded:
    """DataFrames of one Arrow schema as one table, one row group per frame.

    Each frame is encoded as a DataFrame entry of its own would be; their
    tables may then differ only in pandas' metadata (the index range, an
    object column that another frame holds as strings), which the codec keeps
    per frame with the frame's own codec and row count. The table itself
    carries no pandas metadata: it describes no single frame.
    """
    import pyarrow as pa

    encoded = []
    for position, frame in enumerate(frames):
        try:
            encoded.append(_encode_pandas(frame))
        except _Inexact as exc:
            raise _Inexact(f"its DataFrame value[{position}]: {exc}") from None
    schema = encoded[0].table.schema.remove_metadata()
    for position, item in enumerate(encoded[1:], start=1):
        other = item.table.schema.remove_metadata()
        if not other.equals(schema):
            raise _Inexact(
                f"its DataFrames differ in columns or types, so they cannot share one Parquet table: "
                f"value[{position}] has ({_describe_schema(other)}) where value[0] has ({_describe_schema(schema)})"
            )
    items = [
        {
            "rows": item.table.num_rows,
            "codec": item.codec,
            "pandas": (item.table.schema.metadata or {}).get(b"pandas", b"").decode(),
        }
        for item in encoded
    ]
    table = pa.concat_tables([item.table.replace_schema_metadata(None) for item in encoded])
    codec = {"container": type(frames).__name__, "items": items}
    return Encoded(table, FRAMES, codec, row_groups=tuple(item["rows"] for item in items))


def frame_rows(codec: dict[str, Any]) -> list[int]:
    """The row count of each DataFrame of a frames entry, in order; ``ValueError`` if the codec is malformed."""
    items = codec.get("items")
    if codec.get("container") not in ("list", "tuple") or not isinstance(items, list) or not items:
        raise ValueError("the frames codec names no container or no items")
    rows: list[int] = []
    for position, item in enumerate(items):
        count = item.get("rows") if isinstance(item, dict) else None
        if type(count) is not int or count < 0:
            raise ValueError(f"the frames codec gives frame {position} the row count {count!r}")
        rows.append(count)
    return rows


def decode_frames(tables: list[Any], codec: dict[str, Any]) -> list[Any] | tuple[Any, ...]:
    """The DataFrames of a frames entry from each one's rows, in the stored container (list or tuple)."""
    if len(tables) != len(frame_rows(codec)):
        raise ValueError(f"{len(tables)} tables for {len(frame_rows(codec))} frames")
    frames = [decode_frame(table, codec, position) for position, table in enumerate(tables)]
    return tuple(frames) if codec["container"] == "tuple" else frames


def decode_frame(table: Any, codec: dict[str, Any], position: int) -> Any:
    """DataFrame ``position`` of a frames entry, from its rows alone (``table``).

    Decoded exactly as a DataFrame entry of its own: with its own pandas
    metadata, which restores its index, and its own codec.
    """
    item = codec["items"][position]
    if table.num_rows != item["rows"]:
        raise ValueError(f"frame {position} has {table.num_rows} rows, but {item['rows']} were stored")
    pandas_metadata = str(item["pandas"])
    table = table.replace_schema_metadata({b"pandas": pandas_metadata.encode()} if pandas_metadata else None)
    return _decode_pandas(table, DATAFRAME, dict(item["codec"]))


def _describe_schema(schema: Any, limit: int = 300) -> str:
    text = ", ".join(f"{column.name}: {column.type}" for column in schema)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_changed_object_columns(table: Any) -> None:
    """Refuse object columns whose values pyarrow would read back as another type.

    Lists become numpy arrays and dicts structs; ints in an object column come
    back as an int64 column. Strings, bytes, Decimals and dates stay objects.
    """
    import pyarrow as pa

    columns = (table.schema.pandas_metadata or {}).get("columns", [])
    for column in columns:
        if column.get("numpy_type") != "object" or column.get("field_name") is None:
            continue
        arrow_type = table.schema.field(column["field_name"]).type
        keeps_objects = (
            pa.types.is_string(arrow_type)
            or pa.types.is_large_string(arrow_type)
            or pa.types.is_binary(arrow_type)
            or pa.types.is_large_binary(arrow_type)
            or pa.types.is_decimal(arrow_type)
            or pa.types.is_date32(arrow_type)
            or pa.types.is_null(arrow_type)
        )
        if not keeps_objects:
            raise _Inexact(
                f"its object column {column['name']!r} holds values pyarrow stores as "
                f"{arrow_type} and reads back as another type"
            )


def _decode_pandas(table: Any, fmt: str, codec: dict[str, Any]) -> Any:
    import pandas as pd

    frame = table.to_pandas(use_threads=table.nbytes >= THREADED_BYTES)
    _restore_dtypes(frame, codec.get("dtypes", []))
    frame.index = _restore_index(frame.index, codec)
    if fmt == INDEX:
        return frame.index
    if fmt == SERIES:
        series = frame.iloc[:, 0]
        series.name = _label_from_json(codec["name"])
        return series
    if "columns_range" in codec:
        start, stop, step, name = codec["columns_range"]
        frame.columns = pd.RangeIndex(start, stop, step, name=_label_from_json(name))
    return frame


def _restore_dtypes(frame: Any, dtypes: list[str]) -> None:
    if len(dtypes) != frame.shape[1]:
        raise ValueError(f"entry records {len(dtypes)} column dtypes for {frame.shape[1]} columns")
    # Compared in one pass: a column is only taken out (.iloc costs ~40 µs) where it differs.
    for position, (got, wanted) in enumerate(zip(map(_dtype_text, frame.dtypes.tolist()), dtypes)):
        if got != wanted:
            column = frame.iloc[:, position]
            frame.isetitem(position, _as_dtype(column, wanted, f"column {frame.columns[position]!r}"))


_DTYPE_TEXTS: dict[Any, str] = {}


def _dtype_text(dtype: Any) -> str:
    """``str(dtype)``, remembered for numpy's dtypes: numpy spells them in Python (~4 µs a column)."""
    text = _DTYPE_TEXTS.get(dtype) if type(dtype).__module__.startswith("numpy") else None
    if text is None:
        text = str(dtype)
        if type(dtype).__module__.startswith("numpy") and len(_DTYPE_TEXTS) < 256:
            _DTYPE_TEXTS[dtype] = text
    return text


def _restore_index(index: Any, codec: dict[str, Any]) -> Any:
    import pandas as pd

    wanted = codec.get("index_dtypes", [])
    if isinstance(index, pd.MultiIndex):
        for level, dtype in enumerate(wanted):
            if str(index.levels[level].dtype) != dtype:
                index = index.set_levels(_as_dtype(index.levels[level], dtype, f"index level {level}"), level=level)
    elif wanted and str(index.dtype) != wanted[0]:
        index = _as_dtype(index, wanted[0], "the index")
    freq = codec.get("index_freq")
    if freq is not None and isinstance(index, pd.DatetimeIndex):
        index = pd.DatetimeIndex(index, freq=freq)
    elif freq is not None and isinstance(index, pd.TimedeltaIndex):
        index = pd.TimedeltaIndex(index, freq=freq)
    return index


def _as_dtype(values: Any, wanted: str, what: str) -> Any:
    """Undo the dtype changes pyarrow is known to make; any other change is damage."""
    import pandas as pd

    got = values.dtype
    if wanted == "object" and (got == object or pd.api.types.is_string_dtype(got)):
        # pyarrow reads strings as a string dtype (pandas 3); missing become None, as in pandas 2.
        converted = values.astype(object)
        return converted.where(pd.notna(converted), None)
    if got.kind in "mM" and pd.api.types.pandas_dtype(wanted).kind == got.kind:
        return values.astype(wanted)  # Parquet has no second unit: [s] is read back as [ms]
    raise ValueError(f"{what} came back as dtype {got}, but {wanted} was stored")


def _index_dtypes(index: Any) -> list[Any]:
    import pandas as pd

    if isinstance(index, pd.MultiIndex):
        return [level.dtype for level in index.levels]
    return [index.dtype]


def _label_to_json(label: Any) -> Any:
    if label is None or type(label) in (str, bool, int, float):
        return {"v": label}
    if type(label) is tuple:
        return {"tuple": [_label_to_json(item) for item in label]}
    raise _Inexact(f"its name {label!r} is a {_qualname(type(label))}, not None, str, int, float, bool or tuple")


def _label_from_json(data: Any) -> Any:
    if "tuple" in data:
        return tuple(_label_from_json(item) for item in data["tuple"])
    return data["v"]


# -- numpy -----------------------------------------------------------------------


def _encode_ndarray(array: Any) -> Encoded:
    import pyarrow as pa

    order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    codec: dict[str, Any] = {"dtype": array.dtype.str, "shape": list(array.shape), "order": order}
    flat = array.ravel(order=order)
    if _arrow_column_fits(array.dtype):
        try:
            codec["layout"] = "column"
            return Encoded(pa.table({"values": pa.array(flat)}), NDARRAY, codec)
        except (pa.ArrowException, ValueError, TypeError):
            pass  # fall back to raw bytes below
    codec["layout"] = "raw"
    return Encoded(_blob_table("values", flat.tobytes()), NDARRAY, codec)


def _arrow_column_fits(dtype: Any) -> bool:
    # Native byte order, a kind Arrow has, and datetime units Arrow has.
    if not dtype.isnative or dtype.kind not in "biufmM" or dtype.itemsize > 8:
        return False
    if dtype.kind in "mM":
        import numpy as np

        unit, count = np.datetime_data(dtype)
        return count == 1 and unit in ("s", "ms", "us", "ns")
    return True


def _decode_ndarray(table: Any, codec: dict[str, Any]) -> Any:
    import numpy as np

    dtype = np.dtype(codec["dtype"])
    shape = tuple(int(n) for n in codec["shape"])
    if codec["layout"] == "column":
        flat = table.column("values").to_numpy(zero_copy_only=False)
        if flat.dtype != dtype.newbyteorder("=") or flat.ndim != 1:
            raise ValueError(f"array column reads as {flat.dtype}, but {dtype} was stored")
        flat = flat.astype(dtype, copy=True)  # own, writable memory in the stored byte order
    else:
        flat = np.frombuffer(_blob_bytes(table, "values"), dtype=dtype).copy()
    if flat.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"array holds {flat.size} items, but shape {shape} was stored")
    return flat.reshape(shape, order=codec["order"])


# -- pickle ----------------------------------------------------------------------


def _encode_pickle(value: Any, subject: str) -> Encoded:
    import cloudpickle

    try:
        payload = cloudpickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:
        raise ResultError(
            f"cannot store {subject} (of type {_qualname(type(value))}): cloudpickle failed ({exc!r}). "
            "Fixes: 1. return a value that can be pickled; 2. set persist_result=False."
        ) from exc
    return Encoded(_blob_table("pickle", payload), PICKLE, {"pickler": "cloudpickle"}, pickled=payload)


def pickle_payload(table: Any) -> bytes:
    """The pickled bytes held by a pickle-format table (not unpickled)."""
    return _blob_bytes(table, "pickle")


def unpickle(payload: bytes) -> Any:
    """Unpickle ``payload``. Call only after its signature has been verified."""
    import cloudpickle

    return cloudpickle.loads(payload)


def _blob_table(column: str, data: bytes) -> Any:
    import pyarrow as pa

    view = memoryview(data)
    chunks = [view[start : start + _BLOB_ROW_BYTES] for start in range(0, len(data), _BLOB_ROW_BYTES)] or [view[:0]]
    return pa.table({column: pa.array([bytes(chunk) for chunk in chunks], pa.large_binary())})


def _blob_bytes(table: Any, column: str) -> bytes:
    import pyarrow as pa

    if table.schema.names != [column] or table.schema.field(column).type != pa.large_binary():
        raise ValueError(f"expected one large_binary column {column!r}, found {table.schema}")
    chunks = table.column(column).to_pylist()
    if any(chunk is None for chunk in chunks):
        raise ValueError(f"column {column!r} has a null row")
    return b"".join(chunks)


def _loaded(module: str) -> Any:
    # A value of a library's type implies the library is already imported.
    return sys.modules.get(module)


def _qualname(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
