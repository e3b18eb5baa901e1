"""daskflow.cache_policies: keys, policy algebra, source sensitivity and error messages."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest

from daskflow import flow, task
from daskflow.cache_policies import (
    DEFAULT,
    FLOW_PARAMETERS,
    INPUTS,
    NO_CACHE,
    RUN_ID,
    TASK_SOURCE,
    CacheKeyContext,
    CacheKeyFnPolicy,
    CachePolicy,
    CompoundCachePolicy,
    FileVersions,
    Inputs,
    NoCache,
    RunId,
    TaskSource,
    resolve_cache_policy,
    task_input_hash,
    task_source_key,
)
from daskflow.exceptions import ConfigurationError, UnhashableInputError
from daskflow.states import State


@dataclass
class Task:
    """The two attributes a policy reads from a task."""

    name: str
    fn: Callable[..., Any]


@dataclass
class Context:
    """A minimal real task-run context satisfying CacheKeyContext."""

    task: Task
    task_run_id: str = "task-run-1"
    flow_run_id: str | None = "flow-run-1"


def load_rows(table: str, limit: int = 10) -> list[str]:
    return [table] * limit


def other_task(table: str, limit: int = 10) -> list[str]:
    return [table] * (limit + 1)


def ctx(fn: Callable[..., Any] = load_rows, **kw: Any) -> CacheKeyContext:
    return Context(Task(fn.__name__, fn), **kw)


def key(
    policy: CachePolicy,
    inputs: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    context: CacheKeyContext | None = None,
) -> str | None:
    return policy.compute_key(context or ctx(), inputs or {}, params or {})


# -- single policies ------------------------------------------------------------


def test_inputs_key_follows_argument_values() -> None:
    a = key(INPUTS, {"table": "orders", "limit": 5})
    assert a == key(INPUTS, {"limit": 5, "table": "orders"}), "argument order changed the key"
    assert a != key(INPUTS, {"table": "orders", "limit": 6}), "argument value ignored"
    assert a != key(INPUTS, {"table": "orders", "limit": 5, "extra": None}), "extra arg ignored"
    assert key(INPUTS, {}) is None, "INPUTS of a call without arguments must be None (Prefect)"


def test_inputs_minus_leaves_an_argument_out() -> None:
    policy = INPUTS - "conn"
    assert policy == Inputs(exclude=("conn",)), f"INPUTS - 'conn' is {policy!r}"
    k1 = key(policy, {"table": "t", "conn": threading.Lock()})
    k2 = key(policy, {"table": "t", "conn": "another connection"})
    assert k1 == k2, f"the left-out argument still changed the key: {k1} vs {k2}"
    assert k1 != key(policy, {"table": "u", "conn": 1}), "a kept argument was ignored"
    assert (INPUTS - "a" - "b") == Inputs(exclude=("a", "b")), f"{INPUTS - 'a' - 'b'!r}"
    everything_out = key(INPUTS - "table", {"table": "t"})
    assert everything_out is not None, "all arguments left out should still give a (constant) key"


def test_task_source_changes_with_the_function_source(tmp_path: Path) -> None:
    def load(folder: str, body: str) -> types.FunctionType:
        path = tmp_path / folder / "pipeline_tasks.py"
        path.parent.mkdir()
        path.write_text(f"def extract(n):\n    {body}\n", encoding="utf-8")
        # One module name and qualname for all versions: only the source differs.
        spec = importlib.util.spec_from_file_location("pipeline_tasks", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn: types.FunctionType = module.extract
        return fn

    v1, v1_again, v2 = load("v1", "return n + 1"), load("v1b", "return n + 1"), load("v2", "return n + 2")
    k1, k1_again, k2 = (key(TASK_SOURCE, context=ctx(f)) for f in (v1, v1_again, v2))
    assert k1 == k1_again, f"same source in two files gave {k1} and {k1_again}"
    assert k1 != k2, f"changed source kept the key {k1}"
    d1, d2 = key(DEFAULT, {"n": 1}, context=ctx(v1)), key(DEFAULT, {"n": 1}, context=ctx(v2))
    assert d1 != d2, f"DEFAULT kept the key {d1} across a source change"


def test_task_source_without_source_file_uses_code() -> None:
    def exec_fn(body: str) -> Any:
        namespace: dict[str, Any] = {"__name__": "generated"}
        exec(compile(f"def t(x):\n    {body}\n", "<string>", "exec"), namespace)
        return namespace["t"]

    a, a2, b = exec_fn("return x"), exec_fn("return x"), exec_fn("return -x")
    ka, ka2, kb = (key(TASK_SOURCE, context=ctx(f)) for f in (a, a2, b))
    assert ka == ka2 and ka != kb, f"code keys: same={ka == ka2} different={ka != kb}"


def test_task_source_covers_identity_and_closures() -> None:
    def factory(k: Any) -> Callable[[int], int]:
        def scaled(x: int) -> int:
            return x * int(k is not None)

        return scaled

    assert key(TASK_SOURCE, context=ctx(factory(2))) != key(TASK_SOURCE, context=ctx(factory(3))), (
        "two factory-made tasks with different captured values share a key"
    )
    locked = key(TASK_SOURCE, context=ctx(factory(threading.Lock())))
    assert locked is not None, "a task closing over a lock must still have a source key"
    assert key(TASK_SOURCE, context=ctx(load_rows)) != key(TASK_SOURCE, context=ctx(other_task))


def test_task_source_prefers_a_precomputed_key() -> None:
    @dataclass
    class ShippedTask:
        name: str
        fn: Callable[..., Any]
        source_key: str

    precomputed = task_source_key(load_rows)
    shipped = Context(ShippedTask("load_rows", other_task, precomputed))  # type: ignore[arg-type]
    assert key(TASK_SOURCE, context=shipped) == precomputed, "source_key on the task was ignored"
    assert key(TASK_SOURCE, context=ctx(load_rows)) == precomputed, "two ways, two keys"


def test_flow_parameters_and_run_id() -> None:
    assert key(FLOW_PARAMETERS, params={}) is None, "no flow parameters must give None"
    p1 = key(FLOW_PARAMETERS, params={"day": "2024-01-01", "n": {1, 2}})
    assert p1 == key(FLOW_PARAMETERS, params={"n": {2, 1}, "day": "2024-01-01"})
    assert p1 != key(FLOW_PARAMETERS, params={"day": "2024-01-02", "n": {1, 2}})
    assert key(RUN_ID, context=ctx(flow_run_id="f-9")) == "f-9"
    assert key(RUN_ID, context=ctx(flow_run_id=None, task_run_id="t-3")) == "t-3", (
        "RUN_ID outside a flow must fall back to the task run id"
    )


# -- algebra ----------------------------------------------------------------------


def test_no_cache_is_the_identity_of_addition() -> None:
    assert key(NO_CACHE, {"a": 1}) is None
    assert (NO_CACHE + INPUTS) is INPUTS and (INPUTS + NO_CACHE) is INPUTS, "NO_CACHE not neutral"
    assert (DEFAULT + NO_CACHE) is DEFAULT
    assert (NO_CACHE - "x") is NO_CACHE
    assert CompoundCachePolicy((NO_CACHE, NO_CACHE)).policies == (), "NoCache parts kept"
    assert key(CompoundCachePolicy((NO_CACHE,)), {"a": 1}) is None, "empty compound gave a key"


def test_default_is_inputs_task_source_run_id() -> None:
    assert isinstance(DEFAULT, CompoundCachePolicy)
    assert set(DEFAULT.policies) == {INPUTS, TASK_SOURCE, RUN_ID}, f"DEFAULT is {DEFAULT!r}"
    assert key(DEFAULT, {"a": 1}) == key(INPUTS + TASK_SOURCE + RUN_ID, {"a": 1})


def test_compound_skips_none_parts_and_ignores_order() -> None:
    # No inputs: INPUTS is None, the compound is made of the rest.
    only_source = key(INPUTS + TASK_SOURCE, {})
    assert only_source is not None and only_source == key(CompoundCachePolicy((TASK_SOURCE,)), {})
    assert key(INPUTS + FLOW_PARAMETERS, {}, {}) is None, "all parts None must give None"
    ab, ba = key(INPUTS + TASK_SOURCE, {"a": 1}), key(TASK_SOURCE + INPUTS, {"a": 1})
    assert ab == ba, f"order of parts changed the key: {ab} vs {ba}"
    run1 = key(DEFAULT, {"a": 1}, context=ctx(flow_run_id="r1"))
    assert run1 != key(DEFAULT, {"a": 1}, context=ctx(flow_run_id="r2")), "RUN_ID part ignored"


def test_compound_flattens_dedupes_and_merges_inputs() -> None:
    policy = (INPUTS - "a") + (TASK_SOURCE + RUN_ID) + (INPUTS - "b") + TASK_SOURCE
    assert isinstance(policy, CompoundCachePolicy)
    kinds = [type(p).__name__ for p in policy.policies]
    assert sorted(kinds) == ["Inputs", "RunId", "TaskSource"], f"parts: {kinds}"
    merged = next(p for p in policy.policies if isinstance(p, Inputs))
    assert merged.exclude == ("a", "b"), f"merged exclusions: {merged.exclude}"


def test_subtracting_from_compounds_and_non_input_policies() -> None:
    policy = DEFAULT - "conn"
    k1 = key(policy, {"x": 1, "conn": threading.Lock()})
    assert k1 == key(policy, {"x": 1, "conn": "other"}), "DEFAULT - 'conn' still hashed conn"
    assert (TASK_SOURCE - "x") is TASK_SOURCE and (RUN_ID - "x") is RUN_ID
    assert (TASK_SOURCE + RUN_ID) - "x" == TASK_SOURCE + RUN_ID
    with pytest.raises(TypeError, match="by name"):
        INPUTS - 3  # type: ignore[operator]
    with pytest.raises(TypeError):
        INPUTS + "x"  # type: ignore[operator]
    with pytest.raises(TypeError):
        CompoundCachePolicy((INPUTS, "x"))  # type: ignore[arg-type]


def test_policies_are_frozen_and_hashable() -> None:
    with pytest.raises(AttributeError):
        INPUTS.exclude = ("x",)  # type: ignore[misc]
    assert len({INPUTS, Inputs(), TASK_SOURCE, TaskSource(), RUN_ID, RunId(), NO_CACHE, NoCache()}) == 4


# -- cache_key_fn -------------------------------------------------------------------


def test_cache_key_fn_policy_uses_the_returned_key() -> None:
    def by_table(context: CacheKeyContext, arguments: dict[str, Any]) -> str | None:
        return None if arguments["table"] == "skip" else f"{context.task.name}:{arguments['table']}"

    policy = CachePolicy.from_cache_key_fn(by_table)
    assert key(policy, {"table": "t"}) == "load_rows:t"
    assert key(policy, {"table": "skip"}) is None
    assert key(policy + RUN_ID, {"table": "skip"}) == key(CompoundCachePolicy((RUN_ID,)), {})

    bad = CacheKeyFnPolicy(lambda context, arguments: 42)
    with pytest.raises(ConfigurationError) as info:
        key(bad, {"table": "t"})
    message = str(info.value)
    assert "'load_rows'" in message and "type int" in message and "str" in message, message


def test_task_input_hash() -> None:
    args = {"table": "t", "limit": {"a", "b"}}
    k = task_input_hash(ctx(), args)
    assert k is not None and k == task_input_hash(ctx(), dict(reversed(args.items())))
    assert k != task_input_hash(ctx(), {**args, "table": "u"}), "argument ignored"
    assert k != task_input_hash(ctx(other_task), args), "task identity ignored"
    assert k == task_input_hash(ctx(flow_run_id="another"), args), "run id leaked into the key"
    with pytest.raises(UnhashableInputError) as info:
        task_input_hash(ctx(), {"conn": threading.Lock()})
    assert 'INPUTS - "conn" instead of cache_key_fn=task_input_hash' in str(info.value)


# -- errors ---------------------------------------------------------------------------


def test_unhashable_argument_message_names_task_argument_type_and_fixes() -> None:
    with pytest.raises(UnhashableInputError) as info:
        key(DEFAULT, {"table": "t", "conn": {"pool": [threading.Lock()]}})
    message = str(info.value)
    expected = [
        "task 'load_rows'",
        "argument 'conn' (type dict)",
        "conn['pool'][0] (type _thread.lock)",
        "lock",
        '1. leave it out of the key: cache_policy=INPUTS - "conn"',
        "2. give cache_key_fn=",
        "3. turn caching off for this task: cache_policy=NO_CACHE",
    ]
    missing = [text for text in expected if text not in message]
    assert not missing, f"{len(missing)} parts missing: {missing}\n{message}"
    assert isinstance(info.value, TypeError), "UnhashableInputError must be a TypeError"


def test_unhashable_flow_parameter_message() -> None:
    with pytest.raises(UnhashableInputError) as info:
        key(FLOW_PARAMETERS, params={"client": threading.Lock()})
    message = str(info.value)
    for text in ("task 'load_rows'", "flow parameter 'client'", "_thread.lock", "without FLOW_PARAMETERS", "NO_CACHE"):
        assert text in message, f"{text!r} missing from {message}"


# -- resolve_cache_policy -----------------------------------------------------------------


def test_resolve_cache_policy() -> None:
    def fn(context: CacheKeyContext, arguments: dict[str, Any]) -> str:
        return "k"

    assert resolve_cache_policy(None, None) is DEFAULT
    assert resolve_cache_policy(INPUTS, None) is INPUTS
    assert resolve_cache_policy(NO_CACHE, None) is NO_CACHE
    assert resolve_cache_policy(None, fn) == CacheKeyFnPolicy(fn), "cache_key_fn must win"
    cases: dict[str, tuple[Any, Any, list[str]]] = {
        "both": (INPUTS, fn, ["both", "cache_policy=", "cache_key_fn=", "fn"]),
        "string": ("INPUTS", None, ["'INPUTS'", "type str", "CachePolicy"]),
        "class": (Inputs, None, ["Inputs()"]),
        "function as policy": (fn, None, ["cache_key_fn="]),
        "number": (3, None, ["got 3", "type int"]),
        "bad key fn": (None, "k", ["cache_key_fn must be a function", "type str"]),
    }
    for name, (policy, key_fn, texts) in cases.items():
        with pytest.raises(ConfigurationError) as info:
            resolve_cache_policy(policy, key_fn)
        missing = [t for t in texts if t not in str(info.value)]
        assert not missing, f"{name}: {missing} missing from {info.value}"


# -- across processes ---------------------------------------------------------------------

# The task and run context a policy reads, as a script in another process builds them.
CONTEXT_CLASSES = """
from dataclasses import dataclass
@dataclass
class T:
    name: str
    fn: object
@dataclass
class C:
    task: T
    task_run_id: str = "t"
    flow_run_id: str = "f"
"""

POLICY_SCRIPT = (
    CONTEXT_CLASSES
    + r"""
import importlib.util, json, sys
from daskflow.cache_policies import INPUTS, TASK_SOURCE, FLOW_PARAMETERS, RUN_ID
spec = importlib.util.spec_from_file_location("flow_tasks", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
policy = INPUTS + TASK_SOURCE + FLOW_PARAMETERS + RUN_ID
inputs = {"ids": {3, 1, 2}, "opts": {"b": 1.5, "a": [None, "x"]}}
print(json.dumps(policy.compute_key(C(T("transform", module.transform)), inputs, {"day": "mon"})))
"""
)


def test_policy_key_identical_across_processes(tmp_path: Path) -> None:
    tasks = tmp_path / "flow_tasks.py"
    tasks.write_text(
        textwrap.dedent("""
        def transform(ids, opts):
            return sorted(ids), opts
    """),
        encoding="utf-8",
    )
    keys = []
    for seed in ("0", "1", "random"):
        out = subprocess.run(
            [sys.executable, "-c", POLICY_SCRIPT, str(tasks)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.returncode == 0, f"PYTHONHASHSEED={seed}: exit {out.returncode}: {out.stderr}"
        keys.append(json.loads(out.stdout))
    assert len(set(keys)) == 1 and keys[0] is not None, f"keys across seeds: {keys}"


# -- FileVersions -------------------------------------------------------------------------


def read_flights(path: Any, limit: int = 10) -> str:
    return str(path)


def fv_key(policy: CachePolicy, **inputs: Any) -> str | None:
    """The key of a read_flights run with these arguments."""
    return key(policy, {"limit": 10, **inputs}, context=ctx(read_flights))


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` and move the mtime 10 s on, so the test never depends on clock resolution."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    bumped = before + 10_000_000_000
    os.utime(path, ns=(bumped, bumped))


def test_file_versions_key_is_stable_and_follows_a_rewritten_file(tmp_path: Path) -> None:
    data = tmp_path / "flights.csv"
    data.write_text("origin,dest\nJFK,LAX\n", encoding="utf-8")
    policy = FileVersions("path")
    k1, k1_stat = fv_key(policy, path=str(data)), data.stat()
    assert k1 is not None and k1 == fv_key(policy, path=str(data)), "unchanged file, two keys"
    assert k1 == fv_key(policy, path=data) == fv_key(policy, path=data.as_uri()), (
        "a str path, a Path and a file:// URL of one file must give one key"
    )
    assert k1 == fv_key(policy, path=str(data), limit=99), "FileVersions read an argument it does not name"
    rewrite(data, "origin,dest\nEWR,SFO\n")  # same size: only the mtime tells the versions apart
    k2 = fv_key(policy, path=str(data))
    assert k2 != k1, "a rewritten file (same size, new mtime) kept its key"
    # With no checksum from the storage, a local file's version is (size, mtime): nothing else.
    k1_mtime = k1_stat.st_mtime_ns
    os.utime(data, ns=(k1_mtime, k1_mtime))
    assert fv_key(policy, path=str(data)) == k1, "the key read more than path, size and mtime"
    rewrite(data, "origin,dest\nEWR,SFO\n")
    assert k2 == fv_key(policy, path=str(data)), "the rewritten file's key is not stable"
    rewrite(data, "origin,dest\nEWR,SFO\nJFK,BOS\n")
    assert fv_key(policy, path=str(data)) not in (k1, k2), "a longer file kept an old key"
    other = tmp_path / "other.csv"
    other.write_bytes(data.read_bytes())
    os.utime(other, ns=(data.stat().st_mtime_ns,) * 2)
    assert fv_key(policy, path=str(other)) != fv_key(policy, path=str(data)), "the path is not in the key"


def test_file_versions_on_memory_files_and_folders(memory_url: str) -> None:
    fs = fsspec.filesystem("memory")
    url = f"{memory_url}/flights.csv"
    fs.pipe_file(url, b"a,b\n1,2\n")
    policy = FileVersions("path")
    k1 = fv_key(policy, path=url)
    assert k1 == fv_key(policy, path=url), "unchanged memory:// file, two keys"
    fs.pipe_file(url, b"a,b\n1,2\n3,4\n")
    assert fv_key(policy, path=url) != k1, "a rewritten memory:// file kept its key"

    folder = f"{memory_url}/dataset"
    fs.pipe_file(f"{folder}/part-0.parquet", b"zero")
    d1 = fv_key(policy, path=folder)
    assert d1 == fv_key(policy, path=folder)
    fs.pipe_file(f"{folder}/nested/part-1.parquet", b"one")
    assert fv_key(policy, path=folder) != d1, "a file added under a memory:// folder kept its key"


def test_file_versions_of_a_folder_follow_every_file_under_it(tmp_path: Path) -> None:
    dataset = tmp_path / "flights.parquet"
    (dataset / "year=2013").mkdir(parents=True)
    rewrite(dataset / "year=2013" / "part-0.parquet", "zero")
    policy = FileVersions("path")
    k1 = fv_key(policy, path=str(dataset))
    assert k1 == fv_key(policy, path=str(dataset)), "unchanged folder, two keys"
    rewrite(dataset / "year=2013" / "part-1.parquet", "one")
    k2 = fv_key(policy, path=str(dataset))
    assert k2 != k1, "a file added to the folder kept its key"
    rewrite(dataset / "year=2013" / "part-0.parquet", "ZERO")
    k3 = fv_key(policy, path=str(dataset))
    assert k3 not in (k1, k2), "a file changed inside the folder kept its key"
    (dataset / "year=2013" / "part-1.parquet").unlink()
    assert fv_key(policy, path=str(dataset)) not in (k1, k2, k3), "a removed file kept a key"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fv_key(policy, path=str(empty)) is not None, "an empty folder has a version too"


def test_file_versions_of_a_list_of_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    rewrite(a, "a")
    rewrite(b, "b")
    policy = FileVersions("paths")
    k1 = fv_key(policy, paths=[str(a), b])
    assert k1 == fv_key(policy, paths=(a, str(b))), "a list and a tuple of the same paths differ"
    rewrite(b, "B")
    assert fv_key(policy, paths=[str(a), b]) != k1, "a rewritten second file kept the list's key"
    assert fv_key(policy, paths=[]) is not None, "an empty list is no files, still a key"
    assert fv_key(policy, paths=None) == fv_key(policy, paths=None) != fv_key(policy, paths=[]), (
        "None (no file) must be a key of its own"
    )
    both = FileVersions("first", "second")
    assert both == FileVersions("second", "first", "first"), "argument order or repeats changed the part"
    k_both = key(both, {"first": str(a), "second": str(b)})
    rewrite(a, "A")
    assert key(both, {"first": str(a), "second": str(b)}) != k_both, "the first of two arguments was ignored"


def test_file_versions_compose_with_inputs_and_task_source(tmp_path: Path) -> None:
    data = tmp_path / "flights.csv"
    rewrite(data, "v1")
    policy = INPUTS + FileVersions("path")
    assert isinstance(policy, CompoundCachePolicy) and FileVersions("path") in policy.policies
    k1 = fv_key(policy, path=str(data))
    assert k1 == fv_key(FileVersions("path") + INPUTS, path=str(data)), "order of parts changed the key"
    assert k1 != fv_key(policy, path=str(data), limit=5), "INPUTS part ignored next to FileVersions"
    assert k1 != fv_key(INPUTS, path=str(data)), "the FileVersions part added nothing"
    before_inputs = fv_key(INPUTS, path=str(data))
    rewrite(data, "v2")
    assert fv_key(INPUTS, path=str(data)) == before_inputs, "INPUTS alone must not see the file"
    assert fv_key(policy, path=str(data)) != k1, "INPUTS + FileVersions kept its key after a rewrite"
    # FileVersions is independent of INPUTS: leaving the argument out of INPUTS keeps its file.
    assert (policy - "path") == Inputs(("path",)) + FileVersions("path")
    assert (FileVersions("path") - "path") == FileVersions("path")
    out = fv_key(policy - "path", path=str(data))
    rewrite(data, "v3")
    assert fv_key(policy - "path", path=str(data)) != out, "INPUTS - 'path' dropped the file's version"

    source = TASK_SOURCE + FileVersions("path")
    s1 = key(source, {"path": str(data)}, context=ctx(read_flights))
    assert s1 == key(source, {"path": str(data)}, context=ctx(read_flights))
    assert s1 != key(source, {"path": str(data)}, context=ctx(load_rows)), "TASK_SOURCE part ignored"
    rewrite(data, "v4")
    assert key(source, {"path": str(data)}, context=ctx(read_flights)) != s1, "file change ignored"
    assert (FileVersions("path") + NO_CACHE) == FileVersions("path")


def test_file_versions_repr_equality_and_construction_errors() -> None:
    assert repr(FileVersions("path")) == "FileVersions('path')"
    with_options = FileVersions("b", "a", storage_options={"key": "AKIA", "secret": "hunter2"})
    text = repr(with_options)
    assert text == "FileVersions('a', 'b', storage_options={'key': ..., 'secret': ...})", text
    assert "hunter2" not in repr(INPUTS + with_options), "a storage option's value leaked into a repr"
    assert with_options == FileVersions("a", "b", storage_options={"secret": "hunter2", "key": "AKIA"})
    assert with_options != FileVersions("a", "b"), "storage_options ignored by equality"
    assert FileVersions("a", storage_options={}) == FileVersions("a")
    assert len({FileVersions("a"), FileVersions("a"), with_options, FileVersions("b")}) == 3
    assert pickle.loads(pickle.dumps(with_options)) == with_options, "the part must travel to workers"
    with pytest.raises(AttributeError):
        FileVersions("a").arguments = ("b",)  # type: ignore[misc]

    with pytest.raises(TypeError, match=r"needs the names of the task's arguments"):
        FileVersions()
    with pytest.raises(TypeError, match=r"got 3 \(type int\)"):
        FileVersions(3)  # type: ignore[arg-type]
    for not_a_name in ("data/flights.csv", "s3://bucket/key", "", "class"):
        with pytest.raises(ValueError, match="not an argument name") as info:
            FileVersions(not_a_name)
        assert "FileVersions('flights_path')" in str(info.value), str(info.value)
    with pytest.raises(TypeError, match="storage_options"):
        FileVersions("a", storage_options=["anon"])  # type: ignore[arg-type]


def _message(policy: CachePolicy, **inputs: Any) -> str:
    with pytest.raises(UnhashableInputError) as info:
        fv_key(policy, **inputs)
    return str(info.value)


def assert_says(message: str, *texts: str) -> None:
    missing = [text for text in texts if text not in message]
    assert not missing, f"{missing} missing from:\n{message}"


def test_file_versions_errors_name_the_task_the_argument_and_the_fix(tmp_path: Path, memory_url: str) -> None:
    import pandas as pd

    assert_says(
        _message(FileVersions("flights_path"), path="x.csv"),
        "task 'read_flights'",
        "FileVersions('flights_path') names an argument the task does not have",
        "its arguments are: 'path', 'limit'",
        "FileVersions('path')",
    )
    for value, type_name in ((3, "int"), (pd.DataFrame({"a": [1]}), "pandas.DataFrame"), (b"x.csv", "bytes")):
        assert_says(
            _message(FileVersions("path"), path=value),
            "task 'read_flights'",
            f"FileVersions('path') needs a path or URL, got {type_name}",
            "pass the path of the file the task reads in argument 'path'",
            "remove 'path' from FileVersions",
        )
    assert_says(
        _message(FileVersions("path"), path=[str(tmp_path), 7]),
        "FileVersions('path') needs a path or URL, got int at path[1]",
    )
    missing = tmp_path / "not-yet-written.csv"
    for url in (str(missing), f"{memory_url}/nothing.csv"):
        assert_says(
            _message(FileVersions("path"), path=url),
            "task 'read_flights'",
            "argument 'path'",
            url,
            "does not exist",
            "create the file first",
            "remove 'path' from FileVersions(...)",
        )
    assert_says(_message(FileVersions("path"), path=str(tmp_path / "*.csv")), "does not expand wildcards")
    assert_says(
        _message(FileVersions("path"), path="nosuchprotocol://bucket/x.csv"),
        "task 'read_flights'",
        "FileVersions('path') could not read the version of 'nosuchprotocol://bucket/x.csv'",
        "storage_options",
        "remove 'path' from FileVersions(...)",
    )
    # A storage that reports no version at all (fsspec's reference filesystem: name, type, size).
    no_versions = FileVersions("path", storage_options={"fo": {"flights.csv": "a,b"}})
    assert_says(
        _message(no_versions, path="reference://flights.csv"),
        "task 'read_flights'",
        "FileVersions('path') cannot tell versions of 'reference://flights.csv' apart",
        "remove 'path' from FileVersions(...)",
        "cache_key_fn=",
        "NO_CACHE",
    )


def test_file_versions_on_s3_use_the_etag_and_storage_options(s3_options: dict[str, Any]) -> None:
    from conftest import S3_BUCKET

    folder = f"s3://{S3_BUCKET}/file-versions-{uuid.uuid4().hex}"
    url = f"{folder}/flights.csv"
    # Another client writes; the key is read through fsspec's cached instance for these options.
    writer = fsspec.filesystem("s3", skip_instance_cache=True, **s3_options)
    writer.pipe_file(url, b"a,b\n1,2\n")
    policy = FileVersions("path", storage_options=s3_options)
    k1 = fv_key(policy, path=url)
    assert k1 == fv_key(policy, path=url), "unchanged S3 object, two keys"
    reader, _ = fsspec.core.url_to_fs(url, **s3_options)
    reader.ls(folder)  # a listing cached in this process: the key must not be read from it
    writer.pipe_file(url, b"a,b\n3,4\n")  # same size: the ETag tells the versions apart
    k2 = fv_key(policy, path=url)
    assert k2 != k1, "a rewritten S3 object kept its key"
    d1 = fv_key(policy, path=folder)
    writer.pipe_file(f"{folder}/more.csv", b"c\n")
    assert fv_key(policy, path=folder) != d1, "an object added under an S3 prefix kept its key"
    assert_says(_message(policy, path=f"{folder}/missing.csv"), "does not exist", "create the file first")


FILE_VERSIONS_SCRIPT = (
    CONTEXT_CLASSES
    + r"""
import json, sys
from daskflow.cache_policies import INPUTS, FileVersions
def read_flights(path, limit=10):
    return path
policy = INPUTS + FileVersions("path")
inputs = {"path": sys.argv[1:], "limit": 10}
print(json.dumps(policy.compute_key(C(T("read_flights", read_flights)), inputs, {})))
"""
)


def test_file_versions_key_identical_across_processes(tmp_path: Path) -> None:
    data, dataset = tmp_path / "flights.csv", tmp_path / "dataset"
    rewrite(data, "a,b\n1,2\n")
    (dataset / "x=1").mkdir(parents=True)
    rewrite(dataset / "x=1" / "part-0.parquet", "zero")
    rewrite(dataset / "part-1.parquet", "one")
    paths = [str(data), str(dataset)]
    here = key(INPUTS + FileVersions("path"), {"path": paths, "limit": 10}, context=ctx(read_flights))
    keys = []
    for seed in ("0", "1", "random"):
        out = subprocess.run(
            [sys.executable, "-c", FILE_VERSIONS_SCRIPT, *paths],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.returncode == 0, f"PYTHONHASHSEED={seed}: exit {out.returncode}: {out.stderr}"
        keys.append(json.loads(out.stdout))
    assert keys == [here] * 3, f"in this process {here}, across seeds {keys}"


def test_a_flow_misses_the_cache_after_its_input_file_is_rewritten(tmp_path: Path, executions: Any) -> None:
    data = tmp_path / "flights.csv"
    rewrite(data, "v1")

    @task(cache_policy=INPUTS + FileVersions("path"), result_storage=(tmp_path / "results").as_uri())
    def read(path: str) -> str:
        executions.record("read")
        return Path(path).read_text(encoding="utf-8")

    states: list[State] = []

    @flow
    def pipeline(path: str) -> str:
        state: State = read(path, return_state=True)  # type: ignore[call-arg, assignment]
        states.append(state)
        return str(state.result())

    assert pipeline(str(data)) == "v1" and not states[-1].is_cached(), states[-1]
    assert pipeline(str(data)) == "v1" and states[-1].is_cached(), f"unchanged file: {states[-1]}"
    assert executions.count("read") == 1
    rewrite(data, "v2")  # same size, new mtime
    assert pipeline(str(data)) == "v2", "the rewritten file was read from the cache"
    assert not states[-1].is_cached() and states[-1].is_completed(), states[-1]
    assert pipeline(str(data)) == "v2" and states[-1].is_cached(), f"new version not cached: {states[-1]}"
    assert executions.count("read") == 2, f"{executions.count('read')} executions, expected 2"
    data.unlink()
    with pytest.raises(UnhashableInputError, match="does not exist"):
        pipeline(str(data))
    assert states[-1].is_failed(), states[-1]
    assert_says(states[-1].message or "", "task 'read'", "argument 'path'", str(data), "does not exist")
