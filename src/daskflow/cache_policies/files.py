"""``FileVersions``: a key part from the current version of the files an argument names.

``INPUTS`` hashes a path as text, so a task that reads a file would keep
hitting its cache after the file is rewritten. ``FileVersions("path")`` asks
the file's storage (any fsspec URL, local paths and ``os.PathLike`` too) for
its version: the content identity the storage reports (``ETag``, ``md5``,
``checksum``, ...), else size and modification time; a folder counts every
file under it. It is the only policy part that does I/O, hence its own module.
"""

from __future__ import annotations

import datetime as dt
import inspect
import keyword
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec.core

from daskflow.cache_policies.policies import (
    CacheKeyContext,
    CachePolicy,
    _type_name,
)
from daskflow.exceptions import UnhashableInputError
from daskflow.hashing import hash_objects, stable_hash

__all__ = ["FileVersions"]


@dataclass(frozen=True, init=False, repr=False)
class FileVersions(CachePolicy):
    """Key from the current version of the files the named arguments point at.

    ``FileVersions("flights_path", "lookup_dir")``: each argument's value is a
    path or fsspec URL (``str`` or ``os.PathLike``), a list or tuple of them, or
    ``None`` (no file). A file counts by its path, its size and the content
    identity its storage reports (``ETag``, ``md5``, ``checksum``, ...), or its
    modification time where there is none; a folder by every file under it.
    ``storage_options`` open the filesystems (``fsspec.core.url_to_fs``); they
    are not part of the key, and their values are left out of the ``repr``
    since they often hold credentials. Use it next to ``INPUTS``:
    ``cache_policy=INPUTS + FileVersions("flights_path")``.
    """

    arguments: tuple[str, ...]
    storage_options: dict[str, Any] | None = field(default=None, hash=False)

    def __init__(self, *arguments: str, storage_options: Mapping[str, Any] | None = None) -> None:
        if not arguments:
            raise TypeError(
                "FileVersions() needs the names of the task's arguments that hold paths, "
                "e.g. FileVersions('flights_path')"
            )
        for argument in arguments:
            _check_path_argument_name(argument)
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise TypeError(
                f"FileVersions(storage_options=...) must be a dict of fsspec options, e.g. "
                f"{{'anon': True}}; got {storage_options!r} (type {_type_name(storage_options)})"
            )
        object.__setattr__(self, "arguments", tuple(sorted(set(arguments))))
        object.__setattr__(self, "storage_options", dict(storage_options) if storage_options else None)

    def __repr__(self) -> str:
        parts = [repr(argument) for argument in self.arguments]
        if self.storage_options:
            hidden = ", ".join(f"{name!r}: ..." for name in sorted(self.storage_options, key=str))
            parts.append(f"storage_options={{{hidden}}}")
        return f"FileVersions({', '.join(parts)})"

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        versions: dict[str, Any] = {}
        for name in self.arguments:
            if name not in inputs:
                raise UnhashableInputError(_unknown_argument_message(task_ctx, name, inputs))
            versions[name] = self._argument_versions(task_ctx, name, inputs[name])
        return hash_objects("file_versions", versions)

    def _argument_versions(self, task_ctx: CacheKeyContext, name: str, value: object) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return [
                self._path_versions(task_ctx, name, _path_text(task_ctx, name, item, f"{name}[{i}]"))
                for i, item in enumerate(value)
            ]
        return self._path_versions(task_ctx, name, _path_text(task_ctx, name, value, name))

    def _path_versions(self, task_ctx: CacheKeyContext, name: str, url: str) -> dict[str, Any]:
        """``{"path", "type", "files"}`` of one path: its own version, or every file under a folder."""
        try:
            fs, path = fsspec.core.url_to_fs(url, **(self.storage_options or {}))
            fs.invalidate_cache(path)  # a listing cached earlier in this process may be stale
            info = fs.info(path)
            if info.get("type") == "directory":
                found = fs.find(path, detail=True)
                entries = [(fs.unstrip_protocol(p), found[p]) for p in sorted(found)]
            else:
                entries = [(fs.unstrip_protocol(path), info)]
        except FileNotFoundError as exc:
            raise UnhashableInputError(_missing_path_message(task_ctx, name, url)) from exc
        except Exception as exc:
            raise UnhashableInputError(
                f"task {task_ctx.task.name!r} cannot compute its cache key: FileVersions({name!r}) "
                f"could not read the version of {url!r}: {type(exc).__name__}: {exc}\n"
                f"Fix it one of these ways:\n"
                f"  1. check the path and FileVersions(..., storage_options=...) (credentials, "
                f"endpoint, the fsspec backend for the URL's protocol)\n"
                f"  2. remove {name!r} from FileVersions(...) and key on INPUTS alone\n"
                f"  3. turn caching off for this task: cache_policy=NO_CACHE"
            ) from exc
        files = []
        for file_path, file_info in entries:
            version = _file_version(file_info)
            if version is None:
                raise UnhashableInputError(_no_version_message(task_ctx, name, file_path))
            files.append({"path": file_path, "size": _plain(file_info.get("size")), "version": version})
        return {"path": fs.unstrip_protocol(path), "type": str(info.get("type")), "files": files}


_IDENTITY_KEYS = ("ETag", "etag", "md5", "checksum", "crc32c", "Content-MD5", "CRC")
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "Last-Modified", "created")


def _file_version(info: Mapping[str, Any]) -> list[Any] | None:
    """``[kind, value]`` of the first version fact ``info`` has, ``None`` when it has none."""
    for kind in (*_IDENTITY_KEYS, *_MTIME_KEYS):
        value = info.get(kind)
        if value is not None and value != "":
            return [kind, _plain(value)]
    return None


def _plain(value: object) -> Any:
    """A version fact as data that hashes the same in every process."""
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return value
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    try:
        return ["hash", stable_hash(value, label="a file version")]
    except UnhashableInputError:
        return ["text", str(value)]


def _check_path_argument_name(argument: object) -> None:
    if not isinstance(argument, str):
        raise TypeError(
            f"FileVersions takes the names of the task's arguments that hold paths, e.g. "
            f"FileVersions('flights_path'); got {argument!r} (type {_type_name(argument)})"
        )
    if not argument.isidentifier() or keyword.iskeyword(argument):
        raise ValueError(
            f"FileVersions takes the names of the task's arguments that hold paths, not paths: "
            f"{argument!r} is not an argument name. Name the argument that receives the path, "
            f"e.g. for def load(flights_path: str) use FileVersions('flights_path')"
        )


def _path_text(task_ctx: CacheKeyContext, name: str, value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fsdecode(os.fspath(value))
    at = "" if where == name else f" at {where}"
    raise UnhashableInputError(
        f"task {task_ctx.task.name!r} cannot compute its cache key: FileVersions({name!r}) needs "
        f"a path or URL, got {_type_name(value)}{at} (a str such as 'data/flights.csv' or "
        f"'s3://bucket/flights.parquet', an os.PathLike, or a list of them).\n"
        f"Fix it one of these ways:\n"
        f"  1. pass the path of the file the task reads in argument {name!r}\n"
        f"  2. remove {name!r} from FileVersions(...): INPUTS already keys on its value"
    )


def _parameter_names(task_ctx: CacheKeyContext, inputs: dict[str, Any]) -> list[str]:
    try:
        return list(inspect.signature(task_ctx.task.fn).parameters)
    except (TypeError, ValueError):  # no signature to read: the arguments given are all we know
        return list(inputs)


def _unknown_argument_message(task_ctx: CacheKeyContext, name: str, inputs: dict[str, Any]) -> str:
    names = _parameter_names(task_ctx, inputs)
    listed = ", ".join(repr(n) for n in names) if names else "none"
    example = f" e.g. FileVersions({names[0]!r})" if names else ""
    return (
        f"task {task_ctx.task.name!r} cannot compute its cache key: FileVersions({name!r}) names "
        f"an argument the task does not have; its arguments are: {listed}.\n"
        f"Fix it: name the argument that receives the path in FileVersions(...),{example} "
        f"or remove {name!r} from it"
    )


def _missing_path_message(task_ctx: CacheKeyContext, name: str, url: str) -> str:
    glob = (
        " (FileVersions does not expand wildcards: pass the folder, or a list of paths)"
        if any(c in url for c in "*?[")
        else ""
    )
    return (
        f"task {task_ctx.task.name!r} cannot compute its cache key: argument {name!r} of "
        f"FileVersions({name!r}) points at {url!r}, which does not exist{glob}.\n"
        f"Fix it one of these ways:\n"
        f"  1. create the file first (if another task writes it, make this one wait for it: "
        f"wait_for=[...])\n"
        f"  2. remove {name!r} from FileVersions(...) if the task does not read a file there"
    )


def _no_version_message(task_ctx: CacheKeyContext, name: str, path: str) -> str:
    return (
        f"task {task_ctx.task.name!r} cannot compute its cache key: FileVersions({name!r}) cannot "
        f"tell versions of {path!r} apart: its storage reports neither a content identity "
        f"({', '.join(_IDENTITY_KEYS)}) nor a modification time ({', '.join(_MTIME_KEYS)}).\n"
        f"Fix it one of these ways:\n"
        f"  1. remove {name!r} from FileVersions(...) and pass what identifies the file's version "
        f"(a date, a checksum) as an argument that INPUTS keys on\n"
        f"  2. give cache_key_fn=<a function (context, arguments) -> str> that reads the version\n"
        f"  3. turn caching off for this task: cache_policy=NO_CACHE"
    )
