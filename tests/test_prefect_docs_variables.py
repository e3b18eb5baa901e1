"""Prefect 3's documented examples for variables (``prefect.variables.Variable``), as our own tests.

The docs' how-to sets a variable, reads it (with and without a fallback),
updates it with ``overwrite=True``, deletes it, and reads a JSON list from a flow
that falls back to a default when the variable is missing; async code uses the
``a``-spellings. Same behaviours here, with daskflow imported instead of prefect.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daskflow import flow
from daskflow.variables import Variable


def test_set_get_default_overwrite_unset(history: Any) -> None:
    Variable.set("answer", 42)
    assert Variable.get("answer") == 42
    assert Variable.get("no_such_variable") is None
    assert Variable.get("no_such_variable", default=7) == 7
    # Setting an existing variable again needs overwrite=True, as in Prefect (a ValueError there too).
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        Variable.set("answer", 43)
    assert Variable.get("answer") == 42, "a refused set changes nothing"
    Variable.set("answer", 43, overwrite=True)
    assert Variable.get("answer") == 43
    assert Variable.unset("answer") is True
    assert Variable.get("answer") is None and Variable.get("answer", default="gone") == "gone"
    assert Variable.unset("answer") is False, "deleting what is not there says so"


def test_a_flow_reads_a_json_list_or_its_default(history: Any) -> None:
    @flow(log_prints=True)
    def launch(mission: str) -> str:
        crew = Variable.get("crew_members", default=["backup-1", "backup-2"])
        print(f"{mission}: {', '.join(crew)}")
        return f"{mission}: {', '.join(crew)}"

    assert launch("moon") == "moon: backup-1, backup-2"
    Variable.set("crew_members", ["zaphod", "arthur", "trillian"])
    assert launch("mars") == "mars: zaphod, arthur, trillian"
    # JSON values of every kind come back as they went in.
    value = {"region": "eu", "retries": 3, "ratio": 0.5, "on": True, "none": None, "list": [1, "a"]}
    Variable.set("settings", value, tags=["config"])
    stored = Variable.read("settings")
    assert stored is not None and stored.value == value and stored.tags == ["config"]


def test_async_spellings_in_an_async_flow(history: Any) -> None:
    @flow
    async def configured() -> tuple[Any, Any, bool]:
        await Variable.aset("threshold", 0.75)
        read = await Variable.aget("threshold")
        missing = await Variable.aget("not_set", default="fallback")
        deleted = await Variable.aunset("threshold")
        return read, missing, deleted

    assert asyncio.run(configured()) == (0.75, "fallback", True)
    assert Variable.get("threshold") is None


def test_in_async_code_the_same_calls_are_awaited(history: Any) -> None:
    """The docs' "contextual behaviour": in an ``async def`` the same methods are awaited."""

    @flow
    async def space_mission(mission: str) -> str:
        await Variable.set("crew_members", ["zaphod", "arthur"], overwrite=True)
        crew = await Variable.get("crew_members", default=["backup"])
        gone = await Variable.unset("crew_members")
        after = await Variable.get("crew_members", default=["backup"])
        return f"{mission}: {', '.join(crew)}; unset {gone}; then {', '.join(after)}"

    assert asyncio.run(space_mission("mars")) == "mars: zaphod, arthur; unset True; then backup"
    # Outside async code the same calls are plain; _sync=True forces that inside it too, as in Prefect.

    async def forced() -> Any:
        return Variable.get("crew_members", default="plain", _sync=True)

    assert asyncio.run(forced()) == "plain"
