"""A local filesystem that fails on purpose, registered with fsspec as ``faultfs://``.

``faultfs:///some/dir`` is the local folder ``/some/dir``; the faults are
chosen with storage options, so one folder can be written by a healthy store
and a faulty one side by side::

    ResultStore("faultfs:///tmp/x", {"fail_after_bytes": 100})   # raise after 100 bytes
    ResultStore("faultfs:///tmp/x", {"truncate_on_close": True}) # drop half the bytes on close
    ResultStore("faultfs:///tmp/x", {"fail_rename": True})       # refuse every mv
    ResultStore("faultfs:///tmp/x", {"fail_read": True})         # refuse every read

Its protocol is neither local nor an object store, so the result store writes
through it with its generic temp-file-then-``mv`` strategy. Each injected
fault is counted in :data:`FaultFileSystem.injected` (by kind), so a test can
show that the fault really fired.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

__all__ = ["PROTOCOL", "FaultFileSystem", "InjectedFault"]

PROTOCOL = "faultfs"


class InjectedFault(OSError):
    """The error a fault raises: an OSError, like a real storage failure."""


class FaultFileSystem(LocalFileSystem):  # type: ignore[misc]
    protocol = (PROTOCOL,)
    root_marker = "/"
    injected: collections.Counter[str] = collections.Counter()

    def __init__(
        self,
        *,
        fail_after_bytes: int | None = None,
        truncate_on_close: bool = False,
        fail_rename: bool = False,
        fail_read: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fail_after_bytes = fail_after_bytes
        self.truncate_on_close = truncate_on_close
        self.fail_rename = fail_rename
        self.fail_read = fail_read

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "r" in mode:
            if self.fail_read:
                self.injected["read"] += 1
                raise InjectedFault(f"injected: reading {path} failed")
            return super()._open(path, mode, block_size=block_size, **kwargs)
        return _FaultyFile(path, mode, fs=self, **kwargs)

    def mv(self, path1: str, path2: str, recursive: bool = True, **kwargs: Any) -> None:
        if self.fail_rename:
            self.injected["rename"] += 1
            raise InjectedFault(f"injected: rename of {path1} to {path2} refused")
        super().mv(path1, path2, recursive=recursive, **kwargs)


class _FaultyFile(LocalFileOpener):  # type: ignore[misc]
    def __init__(self, path: str, mode: str, fs: FaultFileSystem, **kwargs: Any) -> None:
        super().__init__(path, mode, fs=fs, **kwargs)
        self.written = 0
        self.failed = False

    def write(self, data: Any) -> int:
        limit = self.fs.fail_after_bytes
        size = memoryview(data).nbytes
        if limit is not None and self.written + size > limit:
            # Leave the bytes that "made it", as a dying disk or network would;
            # once broken, the file stays broken (pyarrow retries on close).
            allowed = max(0, limit - self.written)
            self.f.write(bytes(memoryview(data).cast("B")[:allowed]))
            self.f.flush()
            self.written += allowed
            self.fs.injected["fail_after_bytes"] += not self.failed
            self.failed = True
            raise InjectedFault(f"injected: storage failed after {self.written} bytes of {self.path}")
        self.written += size
        return int(self.f.write(data))

    def close(self) -> None:
        if self.fs.truncate_on_close and not self.f.closed:
            self.f.flush()
            size = os.fstat(self.f.fileno()).st_size
            self.f.truncate(size // 2)
            self.fs.injected["truncate_on_close"] += 1
        self.f.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


fsspec.register_implementation(PROTOCOL, FaultFileSystem, clobber=True)
