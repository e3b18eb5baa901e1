"""daskflow.cache_policies: keys, policy algebra, source sensitivity and error messages."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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
    Inputs,
    NoCache,
    RunId,
    TaskSource,
    resolve_cache_policy,
    task_input_hash,
    task_source_key,
)
from daskflow.exceptions import ConfigurationError, UnhashableInputError


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


def key(policy: CachePolicy, inputs: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None, context: CacheKeyContext | None = None) -> str | None:
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

    assert key(TASK_SOURCE, context=ctx(factory(2))) != key(TASK_SOURCE, context=ctx(factory(3))), \
        "two factory-made tasks with different captured values share a key"
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
    assert key(RUN_ID, context=ctx(flow_run_id=None, task_run_id="t-3")) == "t-3", \
        "RUN_ID outside a flow must fall back to the task run id"


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
    for text in ("task 'load_rows'", "flow parameter 'client'", "_thread.lock",
                 "without FLOW_PARAMETERS", "NO_CACHE"):
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

POLICY_SCRIPT = r'''
import importlib.util, json, sys
from dataclasses import dataclass
from daskflow.cache_policies import INPUTS, TASK_SOURCE, FLOW_PARAMETERS, RUN_ID
spec = importlib.util.spec_from_file_location("flow_tasks", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
@dataclass
class T:
    name: str
    fn: object
@dataclass
class C:
    task: T
    task_run_id: str = "t"
    flow_run_id: str = "f"
policy = INPUTS + TASK_SOURCE + FLOW_PARAMETERS + RUN_ID
inputs = {"ids": {3, 1, 2}, "opts": {"b": 1.5, "a": [None, "x"]}}
print(json.dumps(policy.compute_key(C(T("transform", module.transform)), inputs, {"day": "mon"})))
'''


def test_policy_key_identical_across_processes(tmp_path: Path) -> None:
    tasks = tmp_path / "flow_tasks.py"
    tasks.write_text(textwrap.dedent('''
        def transform(ids, opts):
            return sorted(ids), opts
    '''), encoding="utf-8")
    keys = []
    for seed in ("0", "1", "random"):
        out = subprocess.run([sys.executable, "-c", POLICY_SCRIPT, str(tasks)], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.returncode == 0, f"PYTHONHASHSEED={seed}: exit {out.returncode}: {out.stderr}"
        keys.append(json.loads(out.stdout))
    assert len(set(keys)) == 1 and keys[0] is not None, f"keys across seeds: {keys}"
