"""Parquet I/O of an entry: writing a table, opening one, and decoding its data or one item of it.

A list of same-schema DataFrames is one Parquet file with one row group per
item (:class:`FramePart` says which row groups make an item), so a map run
reads only its own item. Pages carry checksums: a flipped bit in the data is
a detected error, never a wrong value.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
from dataclasses import dataclass
from typing import IO, Any

from daskflow.exceptions import (
    CorruptResultError,
)
from daskflow.results import serializers
from daskflow.results.metadata import (
    EntryInfo,
    ParsedFooter,
    not_parquet,
    parse_metadata,
)

__all__ = [
    "FramePart",
    "conformed",
    "footer_keys",
    "frame_parts",
    "item_index",
    "open_entry",
    "open_parquet",
    "read_data",
    "write_parquet",
]


def write_parquet(table: Any, row_groups: tuple[int, ...] | None, footer: dict[bytes, bytes], sink: IO[bytes]) -> None:
    """Write ``table`` as one Parquet file to ``sink``, with ``footer`` as keys of the file's metadata.

    The footer keys go to the file's key-value metadata alone, not to the
    Arrow schema's (which Arrow would also copy, base64, into ``ARROW:schema``).
    """
    import pyarrow.parquet as pq

    # Page checksums make a flipped bit in the data a detected error, not a wrong
    # value. Non-"compliant" nesting keeps Arrow's own list field names ("item").
    # No statistics: nothing filters entries by them, and they would grow every footer a hit parses.
    options: dict[str, Any] = {
        "compression": "zstd",
        "write_page_checksum": True,
        "use_compliant_nested_type": False,
        "write_statistics": False,
        **_column_encodings(table.schema),
    }
    with pq.ParquetWriter(sink, table.schema, **options) as writer:
        if row_groups is None:
            writer.write_table(table)
        else:
            start = 0
            for rows in row_groups:
                # An empty slice may write an empty row group or none: readers go by the codec's row counts.
                writer.write_table(table.slice(start, rows), row_group_size=max(rows, 1))
                start += rows
        writer.add_key_value_metadata(footer)


def _column_encodings(schema: Any) -> dict[str, Any]:
    """Encodings for a flat table's columns: its float columns split by byte, the others dictionary-encoded.

    Dictionary encoding hashes every value, which is most of the writer's
    work and buys little on float measurements, where most values differ;
    their bytes split into streams (Parquet's ``BYTE_STREAM_SPLIT``, which
    every pyarrow the project allows reads) compress as well under zstd for
    less CPU (W7's months: 15% less CPU to write, a file no larger). A table with a nested column, or a
    name with a dot (Parquet column paths are dotted), keeps the defaults:
    dictionary encoding everywhere.
    """
    import pyarrow as pa

    floats: list[str] = []
    others: list[str] = []
    for column in schema:
        kind = column.type
        if pa.types.is_nested(kind) or "." in column.name:
            return {}
        wide_float = pa.types.is_float32(kind) or pa.types.is_float64(kind)
        (floats if wide_float else others).append(column.name)
    if not floats:
        return {}
    return {"use_dictionary": others, "column_encoding": dict.fromkeys(floats, "BYTE_STREAM_SPLIT")}


def open_parquet(data: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not data:
        raise CorruptResultError("the file is empty (0 bytes)")
    try:
        return pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
    except Exception as exc:
        raise not_parquet(exc) from exc


_MAGIC = b"PAR1"


@functools.cache
def _footer_reader() -> Any:
    """pyarrow's parser of a serialized Parquet footer (what unpickling a ``FileMetaData`` calls), or None.

    It is private to pyarrow, so it is looked up, not imported: without it
    :func:`footer_keys` opens a reader instead, as it did before (slower, the
    same answer). ``tests/test_results_layouts.py`` pins it.
    """
    try:
        import pyarrow._parquet as parquet_core
    except ImportError:
        return None
    return getattr(parquet_core, "_reconstruct_filemetadata", None)


def footer_keys(data: bytes) -> dict[bytes, bytes] | None:
    """The key-value metadata of the Parquet file in ``data``, from its footer alone.

    Only the footer's Thrift is parsed: no reader, no Arrow schema is built,
    which halves what a batch lookup pays per entry. The file's layout is
    Parquet's own: ``... footer, its length (4 bytes, little-endian), PAR1``.
    ``CorruptResultError`` when that is not what ``data`` holds.
    """
    import pyarrow as pa

    if not data:
        raise CorruptResultError("the file is empty (0 bytes)")
    try:
        parse = _footer_reader()
        if parse is None:
            import pyarrow.parquet as pq

            reader = pq.ParquetReader()
            reader.open(pa.BufferReader(data))
            return reader.metadata.metadata  # type: ignore[no-any-return]
        if len(data) < 12 or data[:4] != _MAGIC or data[-4:] != _MAGIC:
            raise ValueError("it does not begin and end with the Parquet magic bytes")
        length = int.from_bytes(data[-8:-4], "little")
        if length + 12 > len(data):
            raise ValueError(f"its footer length {length} exceeds the file's {len(data)} bytes")
        return parse(pa.py_buffer(memoryview(data)[-8 - length : -8])).metadata  # type: ignore[no-any-return]
    except Exception as exc:
        raise not_parquet(exc) from exc


def open_entry(data: bytes, key: str, path: str) -> tuple[Any, ParsedFooter]:
    """The entry in ``data``, opened (its footer read and checked, its data pages not yet)."""
    parquet = open_parquet(data)
    return parquet, parse_metadata(parquet.metadata.metadata, key, path, len(data))


def read_data(parquet: Any, parsed: ParsedFooter, part: FramePart | None = None) -> Any:
    """The entry's table with its stored schema: all of it, or the rows of ``part`` only.

    Only the row groups read have their page checksums checked: damage
    elsewhere in the file does not spoil a part that is whole.
    """
    try:
        if part is None:
            table = parquet.read(use_threads=_threaded(parquet, range(parquet.metadata.num_row_groups)))
        elif part.groups:
            threaded = _threaded(parquet, part.groups)
            table = parquet.read_row_groups(part.groups, use_threads=threaded).slice(part.first, part.rows)
        else:
            table = parquet.schema_arrow.empty_table()
    except Exception as exc:
        raise CorruptResultError(f"its data pages do not read back ({type(exc).__name__}: {exc})") from exc
    if parsed.schema is not None:
        table = conformed(table, parsed.schema)
    return table


def _threaded(parquet: Any, groups: Any) -> bool:
    """Whether to decode these row groups on pyarrow's thread pool: only when they are large.

    Handing a small table's columns to the pool costs more than decoding
    them (a hit of W7's 33 x 50 summaries: 15% of its read), and a Dask
    worker's task thread is meant to be one core's work.
    """
    metadata = parquet.metadata
    size = sum(int(metadata.row_group(group).total_byte_size) for group in groups)
    return size >= serializers.THREADED_BYTES


def conformed(table: Any, schema: str) -> Any:
    """``table`` cast to the stored ``schema``; ``CorruptResultError`` when its columns do not match."""
    try:
        return serializers.conform(table, schema)
    except Exception as exc:
        raise CorruptResultError(f"its schema does not match the stored one: {exc}") from exc


@dataclass(frozen=True)
class FramePart:
    """Where one frame of a frames entry lies: ``rows`` rows from row ``first`` of row groups ``groups``."""

    groups: list[int]
    first: int
    rows: int


def frame_parts(parquet: Any, parsed: ParsedFooter) -> list[FramePart]:
    """Where each frame of a frames entry lies, from the frames' row counts and the row groups' own.

    The writer puts each frame in a row group of its own, but nothing here
    relies on it (an empty frame may have an empty row group or none): the
    frames' rows are laid end to end over the row groups' rows.
    """
    try:
        rows = serializers.frame_rows(parsed.codec)
    except Exception as exc:
        raise CorruptResultError(f"its {parsed.info.format} codec is malformed ({exc})") from exc
    if len(rows) != parsed.info.length:
        raise CorruptResultError(f"its metadata records length {parsed.info.length}, but its codec {len(rows)} frames")
    metadata = parquet.metadata
    counts = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
    if sum(counts) != sum(rows):
        raise CorruptResultError(f"its row groups hold {sum(counts)} rows, but its frames {sum(rows)}")
    ends = list(itertools.accumulate(counts))
    parts, start = [], 0
    for count in rows:
        if count:
            first, last = bisect.bisect_right(ends, start), bisect.bisect_left(ends, start + count)
            groups = [group for group in range(first, last + 1) if counts[group]]
            parts.append(FramePart(groups, start - (ends[first] - counts[first]), count))
        else:
            parts.append(FramePart([], 0, 0))
        start += count
    return parts


def item_index(item: int, length: int, info: EntryInfo) -> int:
    index = operator.index(item)
    if not -length <= index < length:
        raise IndexError(f"item {item} is out of range: cached result {info.key!r} at {info.path} holds {length} items")
    return index + length if index < 0 else index
