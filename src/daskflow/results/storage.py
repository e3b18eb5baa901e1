"""Where result entries live: one folder on any fsspec filesystem, written atomically.

A :class:`Location` is an fsspec URL plus its storage options, resolved to a
filesystem and a root folder. It knows nothing about Parquet or cache keys: it
stores named blobs and guarantees one thing, that **a name is either absent or
holds a complete blob**. How it keeps that promise depends on the filesystem,
because "atomic" means something different on each:

``local`` (``file://`` and plain paths)
    The blob is streamed into a uniquely named temp file in the same folder,
    flushed and fsynced, then moved over the final name with ``os.replace``,
    which POSIX makes atomic. A killed writer leaves only its temp file.
    The folder is not fsynced after the move: that would only make the
    rename itself survive a power loss, and a rename lost with the power
    leaves the name as it was before (absent, or the previous complete
    entry; the temp file is an orphan that ``ResultStore.prune`` removes),
    which a cache reads as a miss or the older value. It cost one
    more disk flush per entry, as much as the file's own: writing 10,000
    small entries spent most of its time waiting for those two flushes.
``put`` (object stores such as ``s3://``, and ``memory://``)
    The blob is built in memory and sent with one ``pipe_file`` call: the
    store publishes an object whole or not at all, and has no rename to lean
    on (an S3 "rename" is a copy plus a delete).
``rename`` (every other filesystem: sftp, hdfs, smb, ...)
    As ``local`` but through fsspec's ``open`` and ``mv``; the temp file's
    size is checked against the bytes written before the move, so a store
    that silently drops the tail of a file cannot publish a truncated entry.

Temp files start with :data:`TEMP_PREFIX` and carry their creation time in
their name, so an orphan left by a killed writer can be dated and pruned on
any filesystem, even one whose listings have no modification time.
"""

from __future__ import annotations

import io
import os
import posixpath
import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from fsspec.core import url_to_fs

from daskflow import settings
from daskflow.exceptions import ConfigurationError

__all__ = [
    "TEMP_PREFIX",
    "Location",
    "StoredFile",
    "WriteStrategy",
    "default_storage_url",
    "temp_created",
    "temp_name",
]

TEMP_PREFIX = ".tmp-"

WriteStrategy = Literal["local", "put", "rename"]

# Protocols whose stores publish an object whole on a single upload and have no
# atomic rename. memory:// belongs here too: pipe_file swaps one dict entry.
_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oci", "oss", "memory"})
_LOCAL_PROTOCOLS = frozenset({"file", "local"})

# Large enough that pyarrow's many small writes become few system calls.
_LOCAL_BUFFER_BYTES = 1 << 20


def default_storage_url() -> str:
    """``daskflow.results.storage`` from the configuration, else ``file://<home>/results``."""
    configured = settings.get("results.storage", None)
    if configured:
        return str(configured)
    return (settings.home() / "results").as_uri()


@dataclass(frozen=True)
class StoredFile:
    """One file found in a location's folder."""

    name: str
    size: int


class Location:
    """A folder on an fsspec filesystem in which named blobs are written atomically.

    Pickles as its URL and options; the filesystem is opened again, lazily, in
    the process that unpickles it (a Dask worker, typically).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = _normalize_url(url)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self._fs: Any = None
        self._root = ""
        self._strategy: WriteStrategy = "rename"
        self._open()  # fail at construction on an unknown protocol or a bad option

    def _open(self) -> Any:
        try:
            fs, root = url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"cannot open result storage {self.url!r}: {exc}. Fixes: 1. check the URL's "
                "protocol and install its fsspec backend (e.g. `pip install s3fs` for s3://); "
                "2. check result_storage options (daskflow.results.storage_options)."
            ) from exc
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self._strategy = "local" if protocols & _LOCAL_PROTOCOLS else "put" if protocols & _PUT_PROTOCOLS else "rename"
        self._root = str(root).rstrip("/") or str(fs.root_marker)
        self._fs = fs
        return fs

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (opened on first use after unpickling)."""
        return self._fs if self._fs is not None else self._open()

    @property
    def strategy(self) -> WriteStrategy:
        """How :meth:`write_atomic` publishes a blob on this filesystem."""
        if self._fs is None:
            self._open()
        return self._strategy

    @property
    def root(self) -> str:
        """The folder, as a path of :attr:`fs` (protocol stripped)."""
        if self._fs is None:
            self._open()
        return self._root

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.storage_options = state["storage_options"]
        self._fs = None
        self._root = ""

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    # -- paths ---------------------------------------------------------------

    def path(self, name: str) -> str:
        """The path of ``name`` in :attr:`fs`."""
        root = self.root
        return posixpath.join(root, name) if root else name

    def display(self, name: str) -> str:
        """A URL for ``name`` fit for messages.

        Built from the URL alone: naming a path in a warning must work even
        where the filesystem itself cannot be opened.
        """
        return f"{self.url.rstrip('/')}/{name}"

    # -- reading -------------------------------------------------------------

    def read_bytes(self, name: str) -> bytes:
        """The whole blob in one request (raises ``FileNotFoundError`` when absent).

        One request rather than ranged reads: on an object store, ranged reads
        of an object being overwritten could stitch together two versions.
        """
        if self.strategy == "local":
            # fsspec's local cat_file costs several times the read itself: a hit on a small
            # entry is little else.
            with open(os.path.join(self.root, name), "rb") as f:
                return f.read()
        return bytes(self.fs.cat_file(self.path(name)))

    def open_read(self, name: str) -> IO[bytes]:
        """A seekable file for reading only part of a blob (e.g. a Parquet footer)."""
        # A small block size: a footer read should not fetch megabytes from S3.
        return self.fs.open(self.path(name), "rb", block_size=1 << 16)  # type: ignore[no-any-return]

    def exists(self, name: str) -> bool:
        path = self.path(name)
        # A listing cached by an earlier ls() must not hide a file written since.
        with suppress(Exception):
            self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def stat(self, name: str) -> StoredFile:
        """The file ``name`` with its size; ``FileNotFoundError`` if absent."""
        path = self.path(name)
        with suppress(Exception):
            self.fs.invalidate_cache(path)
        return StoredFile(name=name, size=int(self.fs.size(path) or 0))

    def list(self) -> list[StoredFile]:
        """The files directly in the folder (an absent folder is empty)."""
        fs = self.fs
        with suppress(Exception):
            fs.invalidate_cache(self.root)
        try:
            listing = fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        files = []
        for item in listing:
            if item.get("type") != "file":
                continue
            name = posixpath.basename(str(item["name"]).rstrip("/"))
            files.append(StoredFile(name=name, size=int(item.get("size") or 0)))
        return files

    def sizes(self) -> dict[str, int]:
        """The size of every file directly in the folder, by name, from one listing.

        A local folder is listed with ``os.scandir`` (fsspec's detailed listing
        costs tens of microseconds a file); an absent folder is empty.
        """
        if self.strategy != "local":
            return {file.name: file.size for file in self.list()}
        found: dict[str, int] = {}
        try:
            with os.scandir(self.root) as listing:
                for item in listing:
                    try:
                        if item.is_file(follow_symlinks=False):
                            found[item.name] = item.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # removed since the listing
                        continue
        except FileNotFoundError:
            return {}
        return found

    @property
    def in_process(self) -> bool:
        """Whether the blobs live in this process's memory only (``memory://``)."""
        protocol = self.fs.protocol
        protocols = {protocol} if isinstance(protocol, str) else set(protocol)
        return "memory" in protocols

    def remove(self, name: str) -> bool:
        """Delete ``name``; ``False`` if it was already gone."""
        # Object stores report success for deleting a missing object: ask first.
        if self.strategy == "put" and not self.exists(name):
            return False
        try:
            self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            return False
        return True

    # -- writing -------------------------------------------------------------

    def write_atomic(self, name: str, write: Callable[[IO[bytes]], None]) -> int:
        """Publish the bytes that ``write`` produces under ``name``, all or nothing.

        ``write`` receives a binary file to write into. Returns the size of the
        published blob. On any failure the previous blob under ``name`` (if
        any) is left untouched and the exception propagates.
        """
        if self.strategy == "local":
            return self._write_local(name, write)
        if self.strategy == "put":
            return self._write_put(name, write)
        return self._write_rename(name, write)

    def _write_local(self, name: str, write: Callable[[IO[bytes]], None]) -> int:
        folder = self.root
        os.makedirs(folder, exist_ok=True)
        final = os.path.join(folder, name)
        temp = os.path.join(folder, temp_name(name))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with open(fd, "wb", buffering=_LOCAL_BUFFER_BYTES) as f:
                write(f)
                f.flush()
                expected = f.tell()
                # Without fsync, a power loss after the rename can publish an empty file.
                os.fsync(f.fileno())
            _check_size(temp, os.stat(temp).st_size, expected)
            os.replace(temp, final)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
        return expected

    def _write_put(self, name: str, write: Callable[[IO[bytes]], None]) -> int:
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        self.fs.pipe_file(self.path(name), data)
        return len(data)

    def _write_rename(self, name: str, write: Callable[[IO[bytes]], None]) -> int:
        fs = self.fs
        with suppress(Exception):  # some filesystems have no folders to make
            fs.makedirs(self.root, exist_ok=True)
        temp = self.path(temp_name(name))
        try:
            with fs.open(temp, "wb") as f:
                write(f)
                expected = int(f.tell())
            _check_size(temp, int(fs.size(temp)), expected)
            fs.mv(temp, self.path(name))
        except BaseException:
            with suppress(Exception):
                fs.rm_file(temp)
            raise
        return expected


def temp_name(final_name: str, now: datetime | None = None) -> str:
    """A name no other writer can pick: prefix, creation time in ms, pid, random token."""
    millis = int((now.timestamp() if now else time.time()) * 1000)
    return f"{TEMP_PREFIX}{millis}-{os.getpid()}-{secrets.token_hex(4)}-{final_name}"


def temp_created(name: str) -> datetime | None:
    """When the temp file ``name`` was created, or ``None`` if it is not one of ours."""
    if not name.startswith(TEMP_PREFIX):
        return None
    millis, _, _ = name[len(TEMP_PREFIX) :].partition("-")
    if not millis.isdigit():
        return None
    return datetime.fromtimestamp(int(millis) / 1000, tz=UTC)


def _check_size(path: str, actual: int, expected: int) -> None:
    if actual != expected:
        raise OSError(f"temp file {path} holds {actual} bytes after writing {expected}; not publishing it")


def _normalize_url(url: str) -> str:
    # fsspec takes a bare path as local but does not expand "~".
    if "://" not in url and "::" not in url:
        return Path(url).expanduser().absolute().as_uri()
    return url
