"""The run store's spool: run records kept on local disk while the database does not answer.

When a batch of run records cannot be written because the database is away
(stopped, unreachable, locked beyond the busy timeout), the writer
(:mod:`.writer`) appends the batch to a spool file and keeps appending every
later batch there, in order, until the database answers again; it then replays
the file from the start, in order, and removes it. The store's writes are
idempotent (run snapshots by id, states and logs by their own ``uid``,
artifacts by id), so a record replayed twice — a replay cut short, or a commit
whose answer was lost — is kept once.

**Files.** ``<spool folder>/<store key>/<host>-<pid>-<token>.spool``: the spool
folder is ``daskflow.runstore.spool.folder`` (default ``<daskflow home>/spool``);
the store key is a hash of the store's URL, so the files of one store sit
together and no file names a password. A writer holds an exclusive
``flock`` on its file while it lives; the kernel drops the lock when the
process ends, however it ends (SIGKILL included). A file whose lock can be
taken is therefore an *orphan* of a process that died (or closed while the
database was away), and the next writer for the same store adopts it
(:func:`adopt_orphans`) and replays it before its own records.

**Format, version 1.** UTF-8 text, one frame per line::

    <crc32 of the payload: 8 hex digits> <payload>\\n

The payload is a compact JSON object ``{"v": 1, "k": <kind>, ...fields}``
(ASCII only: JSON escapes every newline and non-ASCII character, so a payload
never holds a line break). The first frame is a header (kind ``spool``:
the masked store URL, host, pid, creation time); each other frame is one
record, of a kind below, each a message class with its encoder and decoder
side by side. Times are epoch seconds; a flow run's parameters are the JSON
text the store keeps.

============  =================================================================
kind          record
============  =================================================================
``flow_run``  :class:`~.records.FlowRunRecord` (a snapshot; the latest wins)
``task_run``  :class:`~.records.TaskRunRecord` (a snapshot; the latest wins)
``state``     :class:`~.records.StateRecord` (kept once per ``uid``)
``log``       :class:`~.records.LogEntry` (kept once per ``uid``)
``artifact``  :class:`~.records.ArtifactRecord` (kept once per ``id``)
============  =================================================================

**Atomicity.** A batch is appended with one ``write`` and then ``fsync``\\ ed.
A process killed mid-append leaves at most a torn last line: no newline, or a
checksum that does not match. The reader stops at a torn tail and skips a
damaged line with a warning; it never takes part of a record for a whole one,
and what came before is intact. A failed append (a full disk) is cut back to
the last whole frame.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from daskflow import settings
from daskflow.runstore.records import (
    ArtifactRecord,
    FlowRunRecord,
    LogEntry,
    Record,
    StateRecord,
    TaskRunRecord,
    Timestamp,
    encode_parameters,
)
from daskflow.runstore.urls import mask_password

__all__ = ["MESSAGES", "VERSION", "SpoolFile", "adopt_orphans", "decode_frame", "encode_frame", "spool_folder"]

VERSION = 1
SUFFIX = ".spool"
_log = logging.getLogger("daskflow.runstore")

R = TypeVar("R", FlowRunRecord, TaskRunRecord, StateRecord, LogEntry, ArtifactRecord)


def _epoch(value: Timestamp | None) -> float | None:
    if value is None:
        return None
    return value.timestamp() if isinstance(value, datetime) else float(value)


# -- the messages: one class per record kind, encoder and decoder side by side ------------------


class Message(Generic[R]):
    """How one kind of record travels through a spool file."""

    kind: ClassVar[str]
    record_type: ClassVar[type]

    @staticmethod
    def encode(record: Any) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def decode(fields: Mapping[str, Any]) -> Any:
        raise NotImplementedError


class FlowRunMessage(Message[FlowRunRecord]):
    kind = "flow_run"
    record_type = FlowRunRecord

    @staticmethod
    def encode(record: FlowRunRecord) -> dict[str, Any]:
        return {
            "id": record.id, "name": record.name, "flow_name": record.flow_name,
            "state_type": record.state_type, "state_name": record.state_name, "state_message": record.state_message,
            "parameters": encode_parameters(record.parameters), "parent_flow_run_id": record.parent_flow_run_id,
            "start_time": _epoch(record.start_time), "end_time": _epoch(record.end_time),
            "run_count": record.run_count, "traceback": record.traceback,
            "updated": _epoch(record.updated), "created": _epoch(record.created),
        }  # fmt: skip

    @staticmethod
    def decode(fields: Mapping[str, Any]) -> FlowRunRecord:
        parameters = fields["parameters"]
        return FlowRunRecord(
            id=fields["id"], name=fields["name"], flow_name=fields["flow_name"],
            state_type=fields["state_type"], state_name=fields["state_name"], state_message=fields["state_message"],
            parameters=None if parameters is None else json.loads(parameters),
            parent_flow_run_id=fields["parent_flow_run_id"],
            start_time=fields["start_time"], end_time=fields["end_time"],
            run_count=fields["run_count"], traceback=fields["traceback"],
            updated=fields["updated"], created=fields["created"],
        )  # fmt: skip


class TaskRunMessage(Message[TaskRunRecord]):
    kind = "task_run"
    record_type = TaskRunRecord

    @staticmethod
    def encode(record: TaskRunRecord) -> dict[str, Any]:
        return {
            "id": record.id, "flow_run_id": record.flow_run_id, "name": record.name, "task_name": record.task_name,
            "state_type": record.state_type, "state_name": record.state_name, "state_message": record.state_message,
            "map_index": record.map_index, "start_time": _epoch(record.start_time), "end_time": _epoch(record.end_time),
            "run_count": record.run_count, "cache_key": record.cache_key, "cache_hit": bool(record.cache_hit),
            "worker": record.worker, "slot_wait": float(record.slot_wait), "traceback": record.traceback,
            "upstream_ids": list(record.upstream_ids), "updated": _epoch(record.updated), "created": _epoch(record.created),
        }  # fmt: skip

    @staticmethod
    def decode(fields: Mapping[str, Any]) -> TaskRunRecord:
        return TaskRunRecord(
            id=fields["id"], flow_run_id=fields["flow_run_id"], name=fields["name"], task_name=fields["task_name"],
            state_type=fields["state_type"], state_name=fields["state_name"], state_message=fields["state_message"],
            map_index=fields["map_index"], start_time=fields["start_time"], end_time=fields["end_time"],
            run_count=fields["run_count"], cache_key=fields["cache_key"], cache_hit=fields["cache_hit"],
            worker=fields["worker"], slot_wait=fields["slot_wait"], traceback=fields["traceback"],
            upstream_ids=tuple(fields["upstream_ids"]), updated=fields["updated"], created=fields["created"],
        )  # fmt: skip


class StateMessage(Message[StateRecord]):
    kind = "state"
    record_type = StateRecord

    @staticmethod
    def encode(record: StateRecord) -> dict[str, Any]:
        return {
            "uid": record.uid, "run_id": record.run_id, "run_kind": record.run_kind, "type": record.type,
            "name": record.name, "message": record.message, "timestamp": _epoch(record.timestamp),
        }  # fmt: skip

    @staticmethod
    def decode(fields: Mapping[str, Any]) -> StateRecord:
        return StateRecord(
            uid=fields["uid"], run_id=fields["run_id"], run_kind=fields["run_kind"], type=fields["type"],
            name=fields["name"], message=fields["message"], timestamp=fields["timestamp"],
        )  # fmt: skip


class LogMessage(Message[LogEntry]):
    kind = "log"
    record_type = LogEntry

    @staticmethod
    def encode(record: LogEntry) -> dict[str, Any]:
        return {
            "uid": record.uid, "flow_run_id": record.flow_run_id, "task_run_id": record.task_run_id,
            "logger": record.logger, "level": record.level, "message": record.message,
            "created": _epoch(record.created), "exception": record.exception,
        }  # fmt: skip

    @staticmethod
    def decode(fields: Mapping[str, Any]) -> LogEntry:
        return LogEntry(
            uid=fields["uid"], flow_run_id=fields["flow_run_id"], task_run_id=fields["task_run_id"],
            logger=fields["logger"], level=fields["level"], message=fields["message"],
            created=fields["created"], exception=fields["exception"],
        )  # fmt: skip


class ArtifactMessage(Message[ArtifactRecord]):
    kind = "artifact"
    record_type = ArtifactRecord

    @staticmethod
    def encode(record: ArtifactRecord) -> dict[str, Any]:
        return {
            "id": record.id, "type": record.type, "data": record.data, "key": record.key,
            "description": record.description, "flow_run_id": record.flow_run_id,
            "task_run_id": record.task_run_id, "created": _epoch(record.created),
        }  # fmt: skip

    @staticmethod
    def decode(fields: Mapping[str, Any]) -> ArtifactRecord:
        return ArtifactRecord(
            id=fields["id"], type=fields["type"], data=fields["data"], key=fields["key"],
            description=fields["description"], flow_run_id=fields["flow_run_id"],
            task_run_id=fields["task_run_id"], created=fields["created"],
        )  # fmt: skip


MESSAGES: tuple[type[Message[Any]], ...] = (FlowRunMessage, TaskRunMessage, StateMessage, LogMessage, ArtifactMessage)
_BY_TYPE: dict[type, type[Message[Any]]] = {m.record_type: m for m in MESSAGES}
_BY_KIND: dict[str, type[Message[Any]]] = {m.kind: m for m in MESSAGES}
_HEADER = "spool"


class FrameError(ValueError):
    """A spool line that is not a whole, known frame (torn, damaged, or of an unknown version or kind)."""


def _frame(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, separators=(",", ":")).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(text), text)


def encode_frame(record: Record) -> bytes:
    """One record as one spool line (newline included)."""
    message = _BY_TYPE.get(type(record))
    if message is None:
        raise TypeError(f"a {type(record).__name__} cannot be spooled: it is not a run store record")
    return _frame({"v": VERSION, "k": message.kind, **message.encode(record)})


def _payload(line: bytes) -> dict[str, Any]:
    if not line.endswith(b"\n"):
        raise FrameError("the line has no end (a write was cut short)")
    crc, _, text = line[:-1].partition(b" ")
    try:
        checksum = int(crc, 16) if len(crc) == 8 else -1
    except ValueError:
        checksum = -1
    if checksum != zlib.crc32(text):
        raise FrameError("its checksum does not match")
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise FrameError(f"it is not a frame ({exc})") from None
    if not isinstance(payload, dict):
        raise FrameError("its payload is not an object")
    if payload.get("v") != VERSION:
        raise FrameError(f"version {payload.get('v')!r}, which this daskflow (version {VERSION}) does not read")
    return payload


def decode_frame(line: bytes) -> Record | None:
    """The record of one spool line; None for the header. Raises :class:`FrameError` for a bad line."""
    payload = _payload(line)
    kind = payload.get("k")
    if kind == _HEADER:
        return None
    message = _BY_KIND.get(kind)  # type: ignore[arg-type]
    if message is None:
        raise FrameError(f"unknown record kind {kind!r}")
    try:
        return message.decode(payload)  # type: ignore[no-any-return]
    except (KeyError, TypeError) as exc:
        raise FrameError(f"a {kind} frame without its fields ({exc})") from None


# -- the files ------------------------------------------------------------------------------


def spool_folder(url: str) -> Path:
    """Where the spool files of the store at ``url`` live (the folder is not created here)."""
    configured = settings.get("runstore.spool.folder", None)
    root = Path(configured).expanduser() if configured else settings.home() / "spool"
    return root / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


@dataclass
class ReadResult:
    """What :meth:`SpoolFile.read` found: records in order, where to read on, and lines skipped."""

    records: list[Record]
    offset: int
    damaged: int
    at_end: bool


class SpoolFile:
    """One spool file, locked by this process while open; see the module docstring.

    Made by :meth:`create` (a new file to append to) or :func:`adopt_orphans`
    (an orphan to replay). ``offset`` is how far it has been replayed.
    """

    def __init__(self, path: Path, fd: int, size: int, offset: int) -> None:
        self.path = path
        self._fd = fd
        self.size = size
        self.offset = offset

    def __repr__(self) -> str:
        return f"SpoolFile({str(self.path)!r}, size={self.size}, replayed to {self.offset})"

    @classmethod
    def create(cls, folder: Path, url: str) -> SpoolFile:
        folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        path = folder / f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh name: no one else can hold it
            header = _frame({"v": VERSION, "k": _HEADER, "url": mask_password(url), "host": host,
                             "pid": os.getpid(), "created": time.time()})  # fmt: skip
            _write_all(fd, header)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd, len(header), len(header))

    def append(self, frames: bytes) -> None:
        """Append whole frames with one write and fsync; on failure, cut the file back and raise OSError."""
        try:
            _write_all(self._fd, frames)
            os.fsync(self._fd)
        except OSError:
            try:  # never leave a torn line between whole ones
                os.ftruncate(self._fd, self.size)
            except OSError:
                pass
            raise
        self.size += len(frames)

    def read(self, limit: int) -> ReadResult:
        """Up to ``limit`` records from ``offset`` on (advance ``offset`` to the result's once written)."""
        records: list[Record] = []
        damaged = 0
        offset = self.offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            while len(records) < limit:
                line = f.readline()
                if not line:
                    return ReadResult(records, offset, damaged, True)
                if not line.endswith(b"\n"):  # a torn tail: the writer died mid-append
                    _log.warning(
                        "Spool file %s ends in a partial record (%d bytes, its writer was stopped mid-write); "
                        "it is left out, everything before it is replayed.", self.path, len(line),
                    )  # fmt: skip
                    return ReadResult(records, offset + len(line), damaged + 1, True)
                offset += len(line)
                try:
                    record = decode_frame(line)
                except FrameError as exc:
                    damaged += 1
                    _log.warning("Spool file %s: a line at byte %d is skipped: %s", self.path, offset - len(line), exc)
                    continue
                if record is not None:
                    records.append(record)
        return ReadResult(records, offset, damaged, False)

    def remove(self) -> None:
        """Delete the file (all of it replayed) and release its lock."""
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Release the lock; the file stays for the next writer to replay."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def adopt_orphans(folder: Path, skip: Callable[[Path], bool] = lambda path: False) -> list[SpoolFile]:
    """Lock and return the spool files in ``folder`` whose writers are gone, oldest first."""
    dated: list[tuple[float, Path]] = []
    for path in folder.glob(f"*{SUFFIX}") if folder.is_dir() else ():
        try:
            dated.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # replayed and removed by another writer meanwhile
            continue
    paths = [path for _, path in sorted(dated)]
    adopted: list[SpoolFile] = []
    for path in paths:
        if skip(path):
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:  # replayed and removed by another writer meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                continue  # a live writer's file
            raise
        if not path.exists():  # removed between open and lock by the writer that replayed it
            os.close(fd)
            continue
        adopted.append(SpoolFile(path, fd, os.fstat(fd).st_size, 0))
    return adopted
