"""Entry files taken apart and put back together, for the tests that damage or forge one.

An entry's facts are keys of its Parquet footer (see ``daskflow.results.metadata``):
``daskflow`` (the JSON), ``ARROW:schema`` (Arrow's, written by the Parquet writer) and,
for a small value, ``daskflow.inline``. These helpers read those keys and write an entry
again with some of them changed, the way daskflow writes layout 2, so a test can say
"this entry with another key / layout / signature / table" in one line.

``LAYOUT1`` is a folder of entries written by daskflow before layout 2 (the JSON inside
the Arrow schema's metadata, base64 schema and inline copies in it), kept as they were
written: the tests that read them show that older entries still read.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

__all__ = ["FOOTER_KEYS", "LAYOUT1", "footer_keys", "footer_json", "rewrite_entry"]

LAYOUT1 = Path(__file__).parent / "data" / "entries_layout1"
FOOTER_KEYS = (b"daskflow", b"daskflow.inline")


def footer_keys(data: bytes) -> dict[bytes, bytes]:
    """The key-value metadata of the Parquet file in ``data``."""
    return dict(pq.read_metadata(io.BytesIO(data)).metadata or {})


def footer_json(data: bytes) -> dict[str, Any]:
    """The daskflow JSON of the entry in ``data``."""
    return dict(json.loads(footer_keys(data)[b"daskflow"]))


def rewrite_entry(
    data: bytes,
    *,
    table: Any = None,
    keys: dict[bytes, bytes] | None = None,
    drop: tuple[str, ...] = (),
    **changes: Any,
) -> bytes:
    """The entry in ``data`` written again: its JSON with ``changes`` (and without ``drop``),
    footer ``keys`` replaced, and its table replaced by ``table`` if given.

    Arrow writes the ``ARROW:schema`` of the table written; the JSON's ``schema_sha256``
    is kept, so another table under the same metadata is what a forger or a swap would leave.
    """
    parquet = pq.ParquetFile(io.BytesIO(data))
    footer = dict(parquet.metadata.metadata or {})
    footer.pop(b"ARROW:schema", None)
    if table is None:
        table = parquet.read()
    own = {k: v for k, v in (table.schema.metadata or {}).items() if k not in FOOTER_KEYS}
    table = table.replace_schema_metadata(own or None)
    meta = json.loads(footer[b"daskflow"])
    for name in drop:
        meta.pop(name)
    meta.update(changes)
    footer[b"daskflow"] = json.dumps(meta).encode()
    footer.update(keys or {})
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, table.schema, write_page_checksum=True) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata(footer)
    return buffer.getvalue()
