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

from daskflow.cache_policies.files import FileVersions
from daskflow.cache_policies.policies import (
    DEFAULT,
    FLOW_PARAMETERS,
    INPUTS,
    NO_CACHE,
    RUN_ID,
    TASK_SOURCE,
    CacheKeyContext,
    CacheKeyFn,
    CacheKeyFnPolicy,
    CacheKeyTask,
    CachePolicy,
    CompoundCachePolicy,
    FlowParameters,
    Inputs,
    NoCache,
    RunId,
    TaskSource,
    module_label,
    resolve_cache_policy,
    task_input_hash,
    task_source_key,
)

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
