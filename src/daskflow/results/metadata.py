"""An entry's footer metadata: what it holds, when it was made, by which versions, and its checks.

Every entry is self-describing: the ``daskflow`` key of its Parquet footer
holds one JSON object (see :mod:`daskflow.results.entries` for its fields).
This module turns that object into an :class:`EntryInfo` (and the parts only
the reader needs, :class:`ParsedFooter`), or into the ``CorruptResultError``
that says why an entry cannot be used; :func:`footer_metadata` is what a
writer puts in the footer.

Two layouts are read. Layout 1 kept the JSON in the Arrow schema's metadata,
so the footer held it twice (once as a key of its own, once inside Arrow's
base64 ``ARROW:schema``), and the JSON itself carried a base64 copy of the
Arrow schema and of the inline value. Layout 2 says each thing once: the
JSON is a footer key of its own only, the exact Arrow schema is Arrow's
``ARROW:schema`` (which Arrow reads the columns back by anyway), and a small
value's inline copy is a footer key of its own too (``daskflow.inline``:
raw bytes, one Arrow IPC record batch message, read with that schema). An
int's footer went from 6.7 KB to 2.3 KB: a hit parses that much less.
Layout 3 is layout 2 whose ``python`` node tables (:mod:`.values`) hold only
the columns their nodes use: an int's footer describes two column chunks, not
seven (1.3 KB; its Thrift parses in about half the time). Its footer is read
as layout 2's; the layout number tells a daskflow that reads layout 2 at most
to leave such an entry alone (a miss that says why) rather than misread it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from daskflow._version import __version__
from daskflow.exceptions import (
    CorruptResultError,
    ResultError,
    UnsignedResultError,
)
from daskflow.results import serializers, signing
from daskflow.results.storage import (
    TEMP_PREFIX,
)

__all__ = [
    "ARROW_SCHEMA_KEY",
    "ENTRY_SUFFIX",
    "INLINE_KEY",
    "LAYOUT_VERSION",
    "METADATA_KEY",
    "EntryInfo",
    "ParsedFooter",
    "describe_versions",
    "entry_name",
    "footer_metadata",
    "key_of",
    "library_versions",
    "not_parquet",
    "parse_metadata",
    "signature_digest",
    "storage_failed",
    "undecodable",
    "utc",
    "validate_key",
    "versions_cached",
]

_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def validate_key(key: str) -> str:
    """Return ``key`` if it can name an entry file, else raise ``ResultError``."""
    if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
        raise ResultError(
            f"invalid result key {key!r}: a key names a file, so it must be 1 to 128 letters, "
            "digits, '_', '-' or '.', not starting with '.' (no path separators). Keys from "
            "daskflow's cache policies are hex digests. Fix: hash a custom key, e.g. "
            "hashlib.sha256(key.encode()).hexdigest()."
        )
    return key


ENTRY_SUFFIX = ".parquet"
METADATA_KEY = b"daskflow"
LAYOUT_VERSION = 3
# Footer keys beside METADATA_KEY from layout 2 on: the inline copy of a small value, and Arrow's schema.
INLINE_KEY = b"daskflow.inline"
ARROW_SCHEMA_KEY = b"ARROW:schema"


@dataclass(frozen=True)
class EntryInfo:
    """What an entry's metadata says about it, plus its size and path.

    ``version`` names the data of one write: a rewrite of the key, even with
    an equal value, has another, so a version looked up once still names the
    same data later (see :meth:`ResultStore.load`). Entries written before
    versions were recorded get ``"<key>@<created, ISO>"``. ``length`` is the
    number of items of a stored list or tuple, ``None`` for other values (and
    for entries written before lengths were recorded). Not to be confused
    with ``versions``, the libraries that wrote the entry.
    """

    key: str
    task_name: str
    created: datetime
    expiration: datetime | None
    format: str
    size: int
    path: str
    version: str
    versions: Mapping[str, str] = field(default_factory=dict, hash=False)
    signed: bool = False
    length: int | None = None

    def is_expired(self, now: datetime | None = None) -> bool:
        """Whether the entry's expiration has been reached at ``now`` (default: now)."""
        moment = utc(now, "now") or datetime.now(UTC)
        return self.expiration is not None and moment >= self.expiration


@dataclass(frozen=True)
class ParsedFooter:
    """An entry's metadata, checked: the info plus what decoding needs.

    ``recorded``: the entry records its version and length (it was written
    since they exist), so a ``None`` length means "not a list or tuple".
    ``schema``: the exact Arrow schema of the value's table (base64 IPC), to
    cast the columns read back to. ``inline``: the copy of a small value
    (see :mod:`.batch`), checked against its SHA-256: an Arrow IPC
    stream in layout 1, a record batch message of ``schema`` from layout 2
    on (``inline_is_batch``).
    """

    info: EntryInfo
    codec: dict[str, Any]
    schema: str | None
    signature: str | None
    recorded: bool = True
    inline: bytes | None = None
    inline_sha256: str | None = None
    inline_is_batch: bool = False
    layout: int = LAYOUT_VERSION


_JSON = json.JSONDecoder()


@functools.lru_cache(maxsize=256)
def _schema_parts(arrow_schema: bytes) -> tuple[str, str]:
    """The SHA-256 of an ``ARROW:schema`` and its text: the entries of one task share it, a batch
    lookup hashes it once, and its hits (10,000 of a map) hold one copy of the text, not one each."""
    # A damaged byte reads as "?" here; its digest differs anyway, which is what the caller reports.
    return hashlib.sha256(arrow_schema).hexdigest(), arrow_schema.decode("ascii", "replace")


def parse_metadata(raw: Mapping[bytes, bytes] | None, key: str, path: str, size: int) -> ParsedFooter:
    blob = (raw or {}).get(METADATA_KEY)
    if blob is None:
        raise CorruptResultError("it has no daskflow metadata (the wrong schema, or not a daskflow entry)")
    try:
        meta = _JSON.decode(blob.decode())  # the writer's JSON is ASCII: no encoding to detect
        layout = int(meta["layout"])
        if layout > LAYOUT_VERSION:
            raise CorruptResultError(
                f"it uses entry layout {layout}, newer than this daskflow's {LAYOUT_VERSION} "
                f"(written with {describe_versions(meta.get('versions', {}))})"
            )
        if meta["key"] != key:
            raise CorruptResultError(f"its metadata names key {meta['key']!r}, not {key!r}")
        if meta["format"] not in serializers.FORMATS:
            raise CorruptResultError(f"its format {meta['format']!r} is unknown")
        expiration = meta["expiration"]
        created = datetime.fromisoformat(meta["created"])
        version, length = meta.get("version"), meta.get("length")
        if version is not None and (not isinstance(version, str) or not version):
            raise ValueError(f"version {version!r} is not a non-empty string")
        if length is not None and (type(length) is not int or length < 0):
            raise ValueError(f"length {length!r} is not a count")
        info = EntryInfo(
            key=key,
            task_name=str(meta["task_name"]),
            created=created,
            expiration=datetime.fromisoformat(expiration) if expiration else None,
            format=meta["format"],
            size=size,
            path=path,
            # Entries from before versions: stable, and new for every rewrite unless two share a microsecond.
            version=f"{key}@{created.isoformat()}" if version is None else version,
            versions={str(k): str(v) for k, v in dict(meta.get("versions") or {}).items()},
            signed=bool(meta.get("signature")),
            length=length,
        )
        codec = dict(meta.get("codec") or {})
        signature, inline_sha256 = meta.get("signature"), meta.get("inline_sha256")
        inline: bytes | None
        if layout >= 2:  # each part once: Arrow's schema, the copy as raw bytes under a key of its own
            arrow_schema = raw.get(ARROW_SCHEMA_KEY) if raw else None
            digest, schema = _schema_parts(arrow_schema) if arrow_schema is not None else (None, None)
            if digest is None or digest != meta["schema_sha256"]:
                what = "missing" if arrow_schema is None else "not the one written"
                raise CorruptResultError(f"its schema does not match the stored one (its Arrow schema is {what})")
            inline = raw.get(INLINE_KEY) if raw else None
            if inline_sha256 is not None and inline is None:
                raise ValueError("its inline value's digest is there but not the value")
        else:
            schema, text = meta.get("schema"), meta.get("inline")
            if text is not None and not isinstance(text, str):
                raise ValueError("its inline value is not a text")
            inline = None if text is None else base64.b64decode(text, validate=True)
        if inline is not None and not isinstance(inline_sha256, str):
            raise ValueError("its inline value has no digest")
        if inline is not None and hashlib.sha256(inline).hexdigest() != inline_sha256:
            # The footer is the part no page checksum covers: a copy at odds with its digest means it is damaged.
            raise CorruptResultError("its inline copy of the value does not match its digest")
    except ResultError:
        raise
    except Exception as exc:
        raise CorruptResultError(f"its daskflow metadata is malformed ({type(exc).__name__}: {exc})") from exc
    return ParsedFooter(
        info=info,
        codec=codec,
        schema=None if schema is None else str(schema),
        signature=None if signature is None else str(signature),
        recorded=version is not None,
        inline=inline,
        inline_sha256=inline_sha256,
        inline_is_batch=layout >= 2,
        layout=layout,
    )


def footer_metadata(fields: Mapping[str, Any], schema: Any, inline: tuple[bytes, str] | None) -> dict[bytes, bytes]:
    """The footer keys of an entry (layout 2's, under this layout's number) whose table has Arrow
    schema ``schema``: its JSON ``fields``, and ``inline`` (the copy, its digest) if any.

    The JSON records the digest of the ``ARROW:schema`` that Arrow writes
    (base64 of the schema's IPC form, as :meth:`pyarrow.Schema.serialize`
    gives it), so that a damaged schema, or another table under this
    metadata, is seen from the footer alone.
    """
    arrow_schema = base64.b64encode(schema.serialize().to_pybytes())
    meta = {"layout": LAYOUT_VERSION, **fields, "schema_sha256": hashlib.sha256(arrow_schema).hexdigest()}
    if inline is not None:
        meta["inline_sha256"] = inline[1]
    footer = {METADATA_KEY: json.dumps(meta, separators=(",", ":")).encode()}
    if inline is not None:
        footer[INLINE_KEY] = inline[0]
    return footer


def entry_name(key: str) -> str:
    return validate_key(key) + ENTRY_SUFFIX


def key_of(name: str) -> str | None:
    if not name.endswith(ENTRY_SUFFIX) or name.startswith(TEMP_PREFIX):
        return None
    key = name[: -len(ENTRY_SUFFIX)]
    return key if _KEY_PATTERN.fullmatch(key) else None


def utc(moment: datetime | None, what: str) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ResultError(
            f"{what} must be a timezone-aware datetime, got naive {moment!r}; a naive time is "
            f"ambiguous across machines. Fix: datetime.now(datetime.UTC) or .replace(tzinfo=...)."
        )
    return moment.astimezone(UTC)


@functools.cache
def versions_cached() -> tuple[tuple[str, str], ...]:
    import pyarrow

    versions = {"daskflow": __version__, "pyarrow": str(pyarrow.__version__), "python": platform.python_version()}
    for dist in ("pandas", "numpy", "cloudpickle"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(versions.items())


def library_versions() -> dict[str, str]:
    return dict(versions_cached())


def describe_versions(versions: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items()) or "unknown versions"


def signature_digest(signature: str | None) -> str:
    """The digest of a pickled entry's signature; ``UnsignedResultError`` if it has none of a known scheme."""
    scheme, _, digest = (signature or "").partition(":")
    if not digest:
        raise UnsignedResultError("it is a pickled entry without a signature; it was not unpickled")
    if scheme != signing.SIGNATURE_SCHEME:
        raise UnsignedResultError(f"its signature scheme {scheme!r} is unknown; it was not unpickled")
    return digest


def not_parquet(exc: Exception) -> CorruptResultError:
    return CorruptResultError(f"it is not a readable Parquet file: truncated or damaged ({type(exc).__name__}: {exc})")


def storage_failed(exc: Exception) -> str:
    return f"it could not be read from the storage ({type(exc).__name__}: {exc})"


def undecodable(info: EntryInfo, exc: Exception) -> CorruptResultError:
    return CorruptResultError(
        f"its {info.format} data does not decode ({type(exc).__name__}: {exc}); "
        f"it was written with {describe_versions(info.versions)}"
    )
