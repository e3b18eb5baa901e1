"""Hashers for library types: numpy, pandas, Arrow and pydantic values.

Each is looked up only when the caller has already imported its library:
hashing never imports numpy, pandas, pyarrow or pydantic itself. Arrays are
written as dtype, shape and little-endian C-order bytes; pandas and Arrow data
column by column, with null masks, so bytes hidden under nulls never leak in.
A hasher returns False for a value that is not its library's, so the encoder
tries the next one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daskflow.hashing.frames import (
    Refusal,
    Sink,
    int_bytes,
    open_frame,
    put,
    put_str,
    short,
    type_name,
    tz_identity,
)

if TYPE_CHECKING:
    from daskflow.hashing.encoder import Encoder

__all__ = ["LIBRARIES"]


def _dtype_name(dtype: Any) -> str:
    return repr(dtype.descr) if dtype.fields is not None else str(dtype.str)


def _ndarray(enc: Encoder, a: Any, sink: Sink, depth: int) -> None:
    np: Any = sys.modules["numpy"]
    shape = a.shape
    if type(a) is not np.ndarray:
        put_str(sink, b"ndarray-class", type_name(type(a)))
    if a.dtype.hasobject:
        enc.enter(a)
        try:
            put_str(sink, b"ndarray-objects", f"{_dtype_name(a.dtype)}|{shape}")
            enc.sequence(b"items", a.reshape(-1).tolist(), sink, depth)
        finally:
            enc.leave(a)
        return
    # Little-endian on every machine, so a big-endian host names the same values alike.
    if sys.byteorder == "big" or not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.dtype.kind in "fc":  # NaN has many bit patterns (0 * -inf sets the sign bit)
        nan = np.isnan(a)
        if nan.any():
            a = np.where(nan, np.nan, a)
    a = np.ascontiguousarray(a)
    put_str(sink, b"ndarray", f"{_dtype_name(a.dtype)}|{shape}")
    put(sink, b"ndbytes", memoryview(a.reshape(-1).view(np.uint8)))


def _numpy(enc: Encoder, obj: Any, sink: Sink, depth: int) -> bool:
    np: Any = sys.modules["numpy"]
    ma: Any = sys.modules.get("numpy.ma")
    if ma is not None and isinstance(obj, ma.MaskedArray):
        put_str(sink, b"masked-array", type_name(type(obj)))
        _ndarray(enc, np.asarray(ma.getmaskarray(obj)), sink, depth)
        _ndarray(enc, np.asarray(obj.filled()), sink, depth)  # hides bytes under the mask
    elif isinstance(obj, np.ndarray):
        _ndarray(enc, obj, sink, depth)
    elif isinstance(obj, np.generic):
        put(sink, b"numpy-scalar", b"")
        _ndarray(enc, np.asarray(obj), sink, depth)
    elif isinstance(obj, np.dtype):
        put_str(sink, b"numpy-dtype", _dtype_name(obj))
    elif isinstance(obj, np.ufunc):
        put_str(sink, b"numpy-ufunc", obj.__name__)
    else:
        return False
    return True


def _labelled(step: str, encode: Callable[[], None]) -> None:
    try:
        encode()
    except Refusal as refusal:
        refusal.path.insert(0, step)
        raise


def _pandas_values(enc: Encoder, values: Any, sink: Sink, depth: int) -> None:
    np: Any = sys.modules["numpy"]
    pd: Any = sys.modules["pandas"]
    dtype = values.dtype
    if isinstance(dtype, np.dtype) or isinstance(values, pd.arrays.NumpyExtensionArray):
        _ndarray(enc, np.asarray(values), sink, depth)
    elif isinstance(dtype, pd.CategoricalDtype):
        put(sink, b"pd-categorical", b"\1" if dtype.ordered else b"\0")
        enc.child(dtype.categories, sink, depth + 1, ".categories")
        _ndarray(enc, np.asarray(values.codes), sink, depth)
    elif isinstance(dtype, pd.DatetimeTZDtype):
        put_str(sink, b"pd-datetimetz", f"{dtype.unit}|{tz_identity(dtype.tz)}")
        _ndarray(enc, np.asarray(values.tz_convert(None)), sink, depth)
    elif isinstance(values, (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)):
        # Masked arrays keep arbitrary bytes under NA: write the mask, zero the rest.
        put_str(sink, b"pd-masked", dtype.name)
        _ndarray(enc, np.asarray(values.isna()), sink, depth)
        zero = False if dtype.kind == "b" else 0
        _ndarray(enc, values.to_numpy(dtype=dtype.numpy_dtype, na_value=zero), sink, depth)
    elif isinstance(dtype, pd.ArrowDtype) or getattr(dtype, "storage", None) == "pyarrow":
        # Arrow-backed (pandas 3's default str columns among them): hashed from Arrow's buffers.
        import pyarrow as pa

        put_str(sink, b"pd-arrow", dtype.name)
        _arrow_values(enc, pa.array(values), sink, depth)  # zero-copy, through __arrow_array__
    else:  # Python strings, periods, intervals, sparse: cell by cell
        put_str(sink, b"pd-extension", dtype.name)
        _ndarray(enc, np.asarray(values, dtype=object), sink, depth)


def _pandas_index(enc: Encoder, idx: Any, sink: Sink, depth: int) -> None:
    pd: Any = sys.modules["pandas"]
    put_str(sink, b"pd-index", type_name(type(idx)))
    enc.child(list(idx.names), sink, depth + 1, ".names")
    if isinstance(idx, pd.RangeIndex):
        put(sink, b"range", b"%d:%d:%d" % (idx.start, idx.stop, idx.step))
    elif isinstance(idx, pd.MultiIndex):  # level values, not levels+codes: unused levels vary
        open_frame(sink, b"levels", idx.nlevels)
        for i in range(idx.nlevels):
            values = idx.get_level_values(i).array
            _labelled(f".levels[{i}]", lambda: _pandas_values(enc, values, sink, depth + 1))
    else:
        _pandas_values(enc, idx.array, sink, depth + 1)


def _pandas(enc: Encoder, obj: Any, sink: Sink, depth: int) -> bool:
    pd: Any = sys.modules["pandas"]
    if isinstance(obj, pd.DataFrame):
        enc.enter(obj)
        try:
            put_str(sink, b"pd-frame", type_name(type(obj)))
            enc.child(obj.columns, sink, depth + 1, ".columns")
            enc.child(obj.index, sink, depth + 1, ".index")
            open_frame(sink, b"pd-columns", obj.shape[1])
            for i in range(obj.shape[1]):  # by position: labels may repeat
                values = obj.iloc[:, i].array
                _labelled(f"[{short.repr(obj.columns[i])}]", lambda: _pandas_values(enc, values, sink, depth + 1))
        finally:
            enc.leave(obj)
    elif isinstance(obj, pd.Series):
        enc.enter(obj)
        try:
            put_str(sink, b"pd-series", type_name(type(obj)))
            enc.child(obj.name, sink, depth + 1, ".name")
            enc.child(obj.index, sink, depth + 1, ".index")
            _pandas_values(enc, obj.array, sink, depth + 1)
        finally:
            enc.leave(obj)
    elif isinstance(obj, pd.Index):
        _pandas_index(enc, obj, sink, depth)
    elif isinstance(obj, pd.api.extensions.ExtensionArray):
        put_str(sink, b"pd-array", type_name(type(obj)))
        _pandas_values(enc, obj, sink, depth)
    elif obj is pd.NaT or obj is pd.NA:
        put(sink, b"pd-nat" if obj is pd.NaT else b"pd-na", b"")
    elif isinstance(obj, pd.Timestamp):
        put_str(sink, b"pd-timestamp", f"{obj.value}|{obj.unit}|{tz_identity(obj.tzinfo)}")
    elif isinstance(obj, pd.Timedelta):
        put_str(sink, b"pd-timedelta", f"{obj.value}|{obj.unit}")
    elif isinstance(obj, pd.Period):
        put_str(sink, b"pd-period", f"{obj.ordinal}|{obj.freqstr}")
    elif isinstance(obj, pd.Interval):
        put_str(sink, b"pd-interval", obj.closed)
        enc.sequence(b"bounds", (obj.left, obj.right), sink, depth)
    else:
        return False
    return True


def _arrow_values(enc: Encoder, arr: Any, sink: Sink, depth: int) -> None:
    pa: Any = sys.modules["pyarrow"]
    import numpy  # noqa: F401  (Arrow's to_numpy needs it; a daskflow dependency)
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):  # chunking is layout, not value
        arr = arr.combine_chunks()
    typ, is_ = arr.type, pa.types
    put_str(sink, b"arrow-values", f"{typ}|{len(arr)}")
    if arr.null_count:  # the mask, then values with zeros under nulls (their bytes are undefined)
        _ndarray(enc, arr.is_valid().to_numpy(zero_copy_only=False), sink, depth)
    temporal = is_.is_timestamp(typ) or is_.is_date(typ) or is_.is_time(typ) or is_.is_duration(typ)
    if temporal or is_.is_integer(typ) or is_.is_floating(typ) or is_.is_boolean(typ):
        if temporal:
            arr = arr.view(pa.int32() if typ.bit_width == 32 else pa.int64())
        if arr.null_count:
            arr = pc.fill_null(arr, pa.scalar(False if is_.is_boolean(typ) else 0, arr.type))
        _ndarray(enc, arr.to_numpy(zero_copy_only=False), sink, depth)
    elif is_.is_string(typ) or is_.is_large_string(typ) or is_.is_binary(typ) or is_.is_large_binary(typ):
        _arrow_bytes(arr, sink)
    else:  # decimals, nested, dictionary: as Python values
        enc.sequence(b"arrow-items", arr.to_pylist(), sink, depth)


def _arrow_bytes(arr: Any, sink: Sink) -> None:
    """A string or binary array by its buffers: each value's length, then all the bytes.

    About a hundred times faster than value by value. The layout is made canonical
    first: nulls filled with empty values (the mask is hashed apart), offsets taken
    from where this slice starts, so a slice, a re-chunked copy and a fresh array
    of the same values hash alike.
    """
    np: Any = sys.modules["numpy"]
    pa: Any = sys.modules["pyarrow"]
    import pyarrow.compute as pc

    if arr.null_count:
        arr = pc.fill_null(
            arr, pa.scalar(b"" if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type) else "", arr.type)
        )
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    _, offsets_buffer, data_buffer = arr.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype="<i8" if large else "<i4")[arr.offset : arr.offset + len(arr) + 1]
    lengths = np.diff(offsets).astype("<i8")
    put(sink, b"lengths", memoryview(lengths.view(np.uint8)))
    start, end = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
    data = memoryview(data_buffer)[start:end] if data_buffer is not None else memoryview(b"")
    put(sink, b"bytes", data)


def _arrow_schema(schema: Any, sink: Sink) -> None:
    # Metadata left out on purpose: pandas and pyarrow write their versions there.
    open_frame(sink, b"arrow-schema", len(schema))
    for field in schema:
        put_str(sink, b"arrow-field", f"{field.name}|{field.type}|{field.nullable}")


def _pyarrow(enc: Encoder, obj: Any, sink: Sink, depth: int) -> bool:
    pa: Any = sys.modules["pyarrow"]
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        put(sink, b"arrow-table" if isinstance(obj, pa.Table) else b"arrow-batch", b"")
        _arrow_schema(obj.schema, sink)
        put(sink, b"rows", int_bytes(obj.num_rows))
        for name, column in zip(obj.schema.names, obj.columns, strict=True):
            _labelled(f"[{short.repr(name)}]", lambda: _arrow_values(enc, column, sink, depth + 1))
    elif isinstance(obj, (pa.Array, pa.ChunkedArray)):
        put(sink, b"arrow-array", b"")
        _arrow_values(enc, obj, sink, depth)
    elif isinstance(obj, pa.Scalar):
        put_str(sink, b"arrow-scalar", str(obj.type))
        enc.child(obj.as_py(), sink, depth + 1, ".as_py()")
    elif isinstance(obj, pa.Schema):
        _arrow_schema(obj, sink)
    elif isinstance(obj, pa.DataType):
        put_str(sink, b"arrow-type", str(obj))
    else:
        return False
    return True


def _pydantic(enc: Encoder, obj: Any, sink: Sink, depth: int) -> bool:
    if not isinstance(obj, sys.modules["pydantic"].BaseModel):
        return False
    enc.enter(obj)
    try:
        put_str(sink, b"pydantic", type_name(type(obj)))
        enc.child(obj.model_dump(), sink, depth + 1, ".model_dump()")
    finally:
        enc.leave(obj)
    return True


LIBRARIES: list[tuple[str, Callable[[Encoder, Any, Sink, int], bool]]] = [
    ("numpy", _numpy),
    ("pandas", _pandas),  # before datetime: pd.Timestamp and pd.NaT subclass datetime
    ("pyarrow", _pyarrow),
    ("pydantic", _pydantic),
]
