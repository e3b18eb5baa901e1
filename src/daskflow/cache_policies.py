"""Cache policies: what a task run's cache key is made of.

A policy is a small frozen dataclass whose ``compute_key`` turns one task
run — its context, its arguments and the flow's parameters — into a key, or
into ``None`` when it has nothing to say. Policies compose the way Prefect 3's
do: ``INPUTS + TASK_SOURCE`` hashes the parts' keys together, skipping parts
that returned ``None`` (the compound is ``None`` only when every part is), and
``INPUTS - "conn"`` leaves an argument out. ``NO_CACHE`` is the identity of
``+`` (``INPUTS + NO_CACHE`` is ``INPUTS``) and on its own turns caching off.
``DEFAULT`` is ``INPUTS + TASK_SOURCE + RUN_ID``: same arguments and same code
within one flow run.

The parts: ``INPUTS`` (the arguments' values), ``TASK_SOURCE`` (the task's
code), ``FLOW_PARAMETERS`` (the enclosing flow run's parameters), ``RUN_ID``
(the flow run), ``NO_CACHE`` (no key), ``CachePolicy.from_cache_key_fn(fn)``
(a user function), and ``FileVersions("path", ...)``: the *current version* of
the file or folder each named argument points at (a local path, an
``os.PathLike`` or any fsspec URL, or a list of them). ``INPUTS`` hashes a
path as text, so a task that reads a file would keep hitting its cache after
the file is rewritten; ``INPUTS + FileVersions("flights_path")`` misses then.
A file's version is the content identity its storage reports (``ETag``,
``md5``, ``checksum``, ``crc32c``, ...), else its size and modification time;
a folder (a Parquet dataset) is versioned by every file under it, so adding,
removing or changing one changes the key. A missing file, a value that is
not a path and an argument the task does not have are each an
``UnhashableInputError`` naming the task, the argument and the fix.

Every hash comes from ``daskflow.hashing``, so keys are the same in every
process and on every machine; an argument that cannot be hashed is an
``UnhashableInputError`` naming the task, the argument, its type and the ways
out — never a random key, and never a part silently dropped.

Unlike Prefect, ``TASK_SOURCE`` also covers the task's module (its last name,
so ``python etl.py`` and ``from etl import ...`` agree), qualified name
and closure values (two factory-made tasks with the same body but different
captured values must not share entries), and ``task_input_hash`` raises
instead of returning ``None`` when an argument cannot be hashed.
"""

from __future__ import annotations

import datetime as dt
import inspect
import keyword
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import fsspec.core

from daskflow.exceptions import ConfigurationError, UnhashableInputError
from daskflow.hashing import function_source_hash, hash_objects, stable_hash

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheKeyContext",
    "CacheKeyFn",
    "CacheKeyFnPolicy",
    "CacheKeyTask",
    "CachePolicy",
    "CompoundCachePolicy",
    "FileVersions",
    "FlowParameters",
    "Inputs",
    "NoCache",
    "RunId",
    "TaskSource",
    "module_label",
    "resolve_cache_policy",
    "task_input_hash",
    "task_source_key",
]


class CacheKeyTask(Protocol):
    """What a policy reads from a task: its name (for messages) and its function.

    A task may also carry ``source_key: str``, precomputed with
    :func:`task_source_key` where it was defined; ``TASK_SOURCE`` then uses it,
    so a worker without the source file computes the same key as the client.
    """

    @property
    def name(self) -> str: ...

    @property
    def fn(self) -> Callable[..., Any]: ...


class CacheKeyContext(Protocol):
    """The part of the engine's task-run context that cache policies read."""

    @property
    def task(self) -> CacheKeyTask: ...

    @property
    def task_run_id(self) -> str: ...

    @property
    def flow_run_id(self) -> str | None: ...


CacheKeyFn = Callable[[CacheKeyContext, dict[str, Any]], str | None]
"""A Prefect-2-style ``cache_key_fn(context, arguments) -> key or None``."""


@dataclass(frozen=True)
class CachePolicy:
    """Base of all cache policies: ``+`` combines, ``- "arg"`` leaves an argument out."""

    @classmethod
    def from_cache_key_fn(cls, cache_key_fn: CacheKeyFn) -> CacheKeyFnPolicy:
        return CacheKeyFnPolicy(cache_key_fn)

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        """The key of this run under this policy; ``None`` when there is none."""
        raise NotImplementedError(f"{type(self).__name__} does not define compute_key")

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        if isinstance(other, NoCache):
            return self
        return CompoundCachePolicy((self, other))

    def __sub__(self, argument: str) -> CachePolicy:
        # Only policies that read arguments change; the others have nothing to leave out.
        _check_argument_name(argument)
        return self


@dataclass(frozen=True)
class Inputs(CachePolicy):
    """Key from the task's arguments by content, minus those in ``exclude``.

    ``None`` when the task got no arguments at all (as in Prefect), so a
    no-argument task under ``INPUTS`` alone is not cached.
    """

    exclude: tuple[str, ...] = ()

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        if not inputs:
            return None
        digests = {}
        for name, value in inputs.items():
            if name in self.exclude:
                continue
            try:
                digests[name] = stable_hash(value, label=name)
            except UnhashableInputError as exc:
                raise UnhashableInputError(_argument_message(task_ctx, name, value, exc)) from exc
        return hash_objects("inputs", digests)

    def __sub__(self, argument: str) -> CachePolicy:
        _check_argument_name(argument)
        return Inputs(tuple(sorted({*self.exclude, argument})))


@dataclass(frozen=True)
class TaskSource(CachePolicy):
    """Key from the task's code: module, qualified name, source text and closure values."""

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        precomputed = getattr(task_ctx.task, "source_key", None)
        if isinstance(precomputed, str):
            return precomputed
        try:
            return task_source_key(task_ctx.task.fn)
        except UnhashableInputError as exc:
            raise UnhashableInputError(
                f"task {task_ctx.task.name!r} cannot compute its cache key: the code of "
                f"its function cannot be hashed ({exc}).\n"
                f"Fix it one of these ways:\n"
                f"  1. leave the code out of the key: cache_policy=INPUTS + RUN_ID\n"
                f"  2. give cache_key_fn=<a function (context, arguments) -> str>\n"
                f"  3. turn caching off for this task: cache_policy=NO_CACHE"
            ) from exc


@dataclass(frozen=True)
class FlowParameters(CachePolicy):
    """Key from the parameters of the enclosing flow run; ``None`` when it has none."""

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        if not flow_parameters:
            return None
        digests = {}
        for name, value in flow_parameters.items():
            try:
                digests[name] = stable_hash(value, label=name)
            except UnhashableInputError as exc:
                raise UnhashableInputError(
                    f"task {task_ctx.task.name!r} cannot compute its cache key: flow "
                    f"parameter {name!r} (type {_type_name(value)}) cannot be hashed "
                    f"deterministically.\n{exc}\n"
                    f"Fix it one of these ways:\n"
                    f"  1. use a cache_policy without FLOW_PARAMETERS, e.g. cache_policy=INPUTS\n"
                    f"  2. give cache_key_fn=<a function (context, arguments) -> str>\n"
                    f"  3. turn caching off for this task: cache_policy=NO_CACHE"
                ) from exc
        return hash_objects("flow-parameters", digests)


@dataclass(frozen=True)
class RunId(CachePolicy):
    """Key from the flow run's id, or the task run's id when there is no flow run."""

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        run_id = task_ctx.flow_run_id or task_ctx.task_run_id
        return str(run_id) if run_id else None


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


@dataclass(frozen=True)
class NoCache(CachePolicy):
    """No key, hence no caching. Adding it to another policy changes nothing."""

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        return None

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        return other


@dataclass(frozen=True)
class CacheKeyFnPolicy(CachePolicy):
    """Key from a user ``cache_key_fn(context, arguments)``, used as returned."""

    cache_key_fn: CacheKeyFn

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        key = self.cache_key_fn(task_ctx, inputs)
        if key is None or isinstance(key, str):
            return key
        fn_name = getattr(self.cache_key_fn, "__qualname__", repr(self.cache_key_fn))
        raise ConfigurationError(
            f"task {task_ctx.task.name!r}: cache_key_fn {fn_name} returned a value of type "
            f"{_type_name(key)}; it must return a str (the key) or None (do not cache "
            f"this run). To key on arbitrary values, return daskflow.hashing.hash_objects(...)"
        )


@dataclass(frozen=True)
class CompoundCachePolicy(CachePolicy):
    """Several policies at once: the hash of their non-``None`` keys, in any order.

    Nested compounds are flattened, ``NoCache`` parts dropped, repeated parts
    kept once, and all ``Inputs`` parts merged into one excluding the union of
    their exclusions (as Prefect does). Parts' keys are sorted before hashing,
    so ``INPUTS + TASK_SOURCE`` and ``TASK_SOURCE + INPUTS`` give one key.
    """

    policies: tuple[CachePolicy, ...] = ()

    def __post_init__(self) -> None:
        flat: list[CachePolicy] = []
        excluded: set[str] = set()
        has_inputs = False
        for policy in self.policies:
            if not isinstance(policy, CachePolicy):
                raise TypeError(f"a cache policy combines only cache policies, got {policy!r}")
            for part in policy.policies if isinstance(policy, CompoundCachePolicy) else (policy,):
                if isinstance(part, Inputs):
                    has_inputs = True
                    excluded.update(part.exclude)
                elif not isinstance(part, NoCache) and part not in flat:
                    flat.append(part)
        if has_inputs:
            flat.insert(0, Inputs(tuple(sorted(excluded))))
        object.__setattr__(self, "policies", tuple(flat))  # frozen: normalise once, here

    def compute_key(
        self,
        task_ctx: CacheKeyContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
    ) -> str | None:
        keys = [policy.compute_key(task_ctx, inputs, flow_parameters) for policy in self.policies]
        present = sorted(key for key in keys if key is not None)
        return hash_objects("compound", present) if present else None

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        if isinstance(other, NoCache):
            return self
        return CompoundCachePolicy((*self.policies, other))

    def __sub__(self, argument: str) -> CachePolicy:
        _check_argument_name(argument)
        return CompoundCachePolicy(tuple(policy - argument for policy in self.policies))


INPUTS = Inputs()
TASK_SOURCE = TaskSource()
FLOW_PARAMETERS = FlowParameters()
RUN_ID = RunId()
NO_CACHE = NoCache()
DEFAULT = INPUTS + TASK_SOURCE + RUN_ID


def task_source_key(fn: Callable[..., Any]) -> str:
    """The ``TASK_SOURCE`` key of a task function.

    Module, qualified name, source hash (code object where there is no
    source) and the values its closure captured. Captured values that cannot
    be hashed (a client, a lock) count by their type, so a task closing over a
    connection keeps a usable key.
    """
    closure: list[Any] = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
            closure.append(stable_hash(value, label="a closure value"))
        except ValueError:  # an empty cell
            closure.append(None)
        except UnhashableInputError:
            closure.append(("unhashable", _type_name(value)))
    return hash_objects(
        "task-source",
        module_label(fn),
        getattr(fn, "__qualname__", None),
        function_source_hash(fn),
        closure,
    )


def module_label(fn: Callable[..., Any]) -> str | None:
    """The module part of a ``TASK_SOURCE`` key: the last part of the function's module name.

    A script's functions live in ``__main__`` when it runs (``python etl.py``)
    and in ``etl`` (or ``pipelines.etl``) when a notebook imports it: both are
    named ``etl`` here, so the script and its import share entries. A script
    run as ``python -m pkg.etl`` is ``pkg.etl``; one run by path is named by
    its file. The package path is left out, since it depends on how the module
    was reached (``sys.path``), not on what the function is; qualified name,
    source and closure still tell functions apart. Code typed into a notebook
    or a REPL stays ``__main__``.
    """
    module = getattr(fn, "__module__", None)
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        path = getattr(main, "__file__", None)
        if spec is not None and getattr(spec, "name", None) and spec.name != "__main__":
            module = spec.name
        elif isinstance(path, str) and path:
            module = Path(path).stem
    if not isinstance(module, str):
        return None
    return module.rpartition(".")[2]


def task_input_hash(context: CacheKeyContext, arguments: dict[str, Any]) -> str | None:
    """A Prefect-2-style ``cache_key_fn``: task identity, its code, and all its arguments.

    Use as ``@task(cache_key_fn=task_input_hash)``. Unlike Prefect, an argument
    that cannot be hashed raises ``UnhashableInputError`` naming it, instead of
    quietly turning caching off.
    """
    digests = {}
    for name, value in arguments.items():
        try:
            digests[name] = stable_hash(value, label=name)
        except UnhashableInputError as exc:
            raise UnhashableInputError(
                _argument_message(context, name, value, exc, via_key_fn=True)
            ) from exc
    source = TASK_SOURCE.compute_key(context, arguments, {})
    return hash_objects("task_input_hash", context.task.name, source, digests)


def resolve_cache_policy(
    cache_policy: object = None,
    cache_key_fn: object = None,
) -> CachePolicy | None:
    """The policy a task definition runs with, checked once when the task is defined.

    ``None`` for either means "not given". A ``cache_key_fn`` alone becomes a
    ``CacheKeyFnPolicy``; nothing given is ``DEFAULT``; both given is an error,
    since it cannot be guessed which the author meant. To turn caching off,
    give ``cache_policy=NO_CACHE`` (returned as is; its key is always None).
    """
    if cache_key_fn is not None and not callable(cache_key_fn):
        raise ConfigurationError(
            f"cache_key_fn must be a function (context, arguments) -> str | None, "
            f"got {cache_key_fn!r} (type {_type_name(cache_key_fn)})"
        )
    if cache_policy is None:
        return CacheKeyFnPolicy(cache_key_fn) if callable(cache_key_fn) else DEFAULT
    if cache_key_fn is not None:
        raise ConfigurationError(
            f"both cache_policy={cache_policy!r} and cache_key_fn="
            f"{getattr(cache_key_fn, '__qualname__', cache_key_fn)!r} were given; give one. "
            f"To combine them, add the function as a policy: "
            f"cache_policy=CachePolicy.from_cache_key_fn(fn) + INPUTS"
        )
    if isinstance(cache_policy, CachePolicy):
        return cache_policy
    if isinstance(cache_policy, type) and issubclass(cache_policy, CachePolicy):
        hint = f"an instance is needed: cache_policy={cache_policy.__name__}()"
    elif callable(cache_policy):
        hint = f"a function that computes a key goes in cache_key_fn={cache_policy!r} instead"
    else:
        hint = "use one from daskflow.cache_policies, e.g. INPUTS + TASK_SOURCE, or NO_CACHE"
    raise ConfigurationError(
        f"cache_policy must be a CachePolicy (INPUTS, TASK_SOURCE, FLOW_PARAMETERS, RUN_ID, "
        f"DEFAULT, NO_CACHE or a sum of them), got {cache_policy!r} "
        f"(type {_type_name(cache_policy)}); {hint}"
    )


def _check_argument_name(argument: object) -> None:
    if not isinstance(argument, str):
        raise TypeError(
            f"a cache policy can only leave out an argument by name, e.g. INPUTS - 'conn'; "
            f"got {argument!r} (type {_type_name(argument)})"
        )


# What fs.info() may report, best first: a content identity, else a modification time.
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


def _type_name(value: object) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _argument_message(
    task_ctx: CacheKeyContext,
    name: str,
    value: object,
    exc: UnhashableInputError,
    via_key_fn: bool = False,
) -> str:
    leave_out = (
        f'use cache_policy=INPUTS - "{name}" instead of cache_key_fn=task_input_hash'
        if via_key_fn
        else f'cache_policy=INPUTS - "{name}" (or DEFAULT - "{name}")'
    )
    return (
        f"task {task_ctx.task.name!r} cannot compute its cache key: argument {name!r} "
        f"(type {_type_name(value)}) cannot be hashed deterministically.\n{exc}\n"
        f"Fix it one of these ways:\n"
        f"  1. leave it out of the key: {leave_out}\n"
        f"  2. give cache_key_fn=<a function (context, arguments) -> str> that keys on "
        f"what identifies {name!r}\n"
        f"  3. turn caching off for this task: cache_policy=NO_CACHE\n"
        f"  4. if you own the type, give it a __daskflow_hash__(self) method returning plain "
        f"data that identifies the value"
    )

