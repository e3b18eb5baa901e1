"""The cache policies themselves: the key parts, their composition, and task identity.

See :mod:`daskflow.cache_policies` for what each part means; ``FileVersions``,
the one part that asks a storage for something, is in :mod:`.files`.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

from daskflow.exceptions import ConfigurationError, UnhashableInputError
from daskflow.hashing import function_source_hash, hash_objects, stable_hash
from daskflow.locking import LockManager, isolation_of

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

    # Set by configure(); not fields, so not part of a policy's identity or of any key.
    key_storage: ClassVar[Any] = None
    isolation_level: ClassVar[Any] = None
    lock_manager: ClassVar[LockManager | None] = None

    def configure(
        self,
        key_storage: Any = None,
        lock_manager: LockManager | None = None,
        isolation_level: Any = None,
    ) -> Self:
        """A copy of this policy whose records go to ``key_storage`` and are locked as Prefect's.

        ``key_storage``: where this policy's cache records are kept (an fsspec
        URL or path, or a result storage object), instead of the task's
        ``result_storage``. ``isolation_level="SERIALIZABLE"`` (or
        ``IsolationLevel.SERIALIZABLE``) with a ``lock_manager``
        (:mod:`daskflow.locking`) makes identical runs wait for each other
        through it: one computes, the others read its entry. Not given: kept
        as this policy has it.
        """
        if lock_manager is not None and not isinstance(lock_manager, LockManager):
            raise ConfigurationError(
                f"configure(lock_manager={lock_manager!r}): a lock manager needs acquire_lock, release_lock, "
                "is_locked, is_lock_holder and wait_for_lock. Fix: use daskflow.locking.MemoryLockManager() or "
                "FileSystemLockManager(directory)."
            )
        level = isolation_of(isolation_level, f"{self!r}.configure()")
        if isinstance(key_storage, os.PathLike):
            key_storage = os.fspath(key_storage)
        configured = copy.copy(self)
        for name, value in (("key_storage", key_storage), ("lock_manager", lock_manager), ("isolation_level", level)):
            if value is not None:
                object.__setattr__(configured, name, value)  # frozen: set on the copy, as a dataclass would
        return configured

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
            raise UnhashableInputError(_argument_message(context, name, value, exc, via_key_fn=True)) from exc
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
