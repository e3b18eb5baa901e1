"""Deployment files: many deployments in one YAML file, applied together.

``daskflow deployment apply deployments.yaml`` reads a file like::

    deployments:
      - name: daily-orders
        entrypoint: etl/flows.py:daily_order_etl     # or package.module:flow
        schedule: {cron: "0 6 * * *", timezone: Europe/Berlin}
        parameters: {execution_date: "{{ data_interval_end | %Y-%m-%d }}"}
        tags: [etl, orders]
        description: Orders into the warehouse
        work_pool: {name: batch}                      # or a name, or {address: ...}, {cluster_class: ...}
        catchup: latest                               # none | latest | all
        paused: false
        allow_concurrent_runs: false                  # true: runs may overlap
        triggers:                                     # a run per matching event (DeploymentEventTrigger)
          - {expect: [warehouse.table.refreshed], match: {prefect.resource.id: "warehouse.table.*"}}

A relative file entrypoint is read relative to the YAML file, so the file and
its flows move together. Every entry is built and checked (the flow imported,
parameters against its signature, schedule, pool, catchup) before any is
stored: a file with one bad entry changes nothing. An error names the file,
the entry (by position and name) and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from daskflow.deployments.deployment import Deployment, open_store
from daskflow.deployments.entrypoints import load_flow
from daskflow.deployments.running import CATCHUP
from daskflow.deployments.work_pools import WorkPool
from daskflow.event_triggers import EventError, as_triggers
from daskflow.exceptions import DeploymentError, ScheduleError
from daskflow.runstore.store import RunStore
from daskflow.schedules import schedule_from_dict

__all__ = ["FIELDS", "apply_deployment_file", "load_deployment_file"]

FIELDS = (
    "name", "entrypoint", "schedule", "parameters", "tags", "description", "work_pool", "catchup", "paused",
    "allow_concurrent_runs", "triggers",
)  # fmt: skip
_EXAMPLE = "deployments: [{name: daily, entrypoint: 'flows.py:my_flow', schedule: {cron: '0 6 * * *'}}]"


def _read(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeploymentError(f"cannot read the deployment file {path}: {exc.strerror or exc}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DeploymentError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    entries = data.get("deployments") if isinstance(data, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise DeploymentError(f"{path} has no list under 'deployments:'. Write it as: {_EXAMPLE}")
    return entries


def _entrypoint(value: Any, base: Path, where: str) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise DeploymentError(f"{where}, field 'entrypoint': {value!r} is not 'package.module:flow' or 'file.py:flow'.")
    module, _, attr = value.rpartition(":")
    if module.endswith(".py") and not Path(module).is_absolute():
        return f"{(base / module).resolve()}:{attr}"
    return value


def _entry(entry: Any, index: int, path: Path) -> Deployment:
    where = f"{path}: deployments[{index}]"
    if not isinstance(entry, Mapping):
        raise DeploymentError(f"{where} is not a mapping of fields ({', '.join(FIELDS)}).")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DeploymentError(f"{where}, field 'name': a deployment needs a name, got {name!r}.")
    where = f"{where} ({name!r})"
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise DeploymentError(f"{where}: unknown field(s) {unknown}; a deployment takes {', '.join(FIELDS)}.")
    if "entrypoint" not in entry:
        raise DeploymentError(f"{where}, field 'entrypoint': missing; say where the flow is, e.g. 'flows.py:my_flow'.")
    entrypoint = _entrypoint(entry["entrypoint"], path.parent, where)
    try:
        schedule = None if entry.get("schedule") is None else schedule_from_dict(entry["schedule"])
    except ScheduleError as exc:
        raise DeploymentError(f"{where}, field 'schedule': {exc}") from None
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise DeploymentError(f"{where}, field 'parameters': expected a mapping of name: value, got {parameters!r}.")
    tags = entry.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise DeploymentError(f"{where}, field 'tags': expected a list of strings, got {tags!r}.")
    pool_value = entry.get("work_pool")
    try:
        pool = (
            WorkPool(pool_value)
            if isinstance(pool_value, str) or pool_value is None
            else WorkPool.from_dict(pool_value)
        )
    except DeploymentError as exc:
        raise DeploymentError(f"{where}, field 'work_pool': {exc}") from None
    paused = entry.get("paused", False)
    if not isinstance(paused, bool):
        raise DeploymentError(f"{where}, field 'paused': expected true or false, got {paused!r}.")
    concurrent = entry.get("allow_concurrent_runs", False)
    if not isinstance(concurrent, bool):
        raise DeploymentError(f"{where}, field 'allow_concurrent_runs': expected true or false, got {concurrent!r}.")
    catchup = entry.get("catchup", "latest")
    if catchup not in CATCHUP:
        raise DeploymentError(f"{where}, field 'catchup': {catchup!r} is not one of {', '.join(CATCHUP)}.")
    try:
        flow = load_flow(entrypoint)
    except DeploymentError as exc:
        raise DeploymentError(f"{where}, field 'entrypoint': {exc}") from None
    description = entry.get("description")
    triggers = entry.get("triggers") or []
    if not isinstance(triggers, list):
        raise DeploymentError(f"{where}, field 'triggers': expected a list of triggers, got {triggers!r}.")
    try:
        checked = as_triggers(triggers, f"{where}, field 'triggers'")
    except EventError as exc:
        raise DeploymentError(str(exc)) from None
    try:
        return Deployment.build(
            name, entrypoint, flow=flow, schedule=schedule, parameters=parameters, tags=tags,
            description=None if description is None else str(description),
            catchup=catchup, paused=paused, work_pool=pool, allow_concurrent_runs=concurrent, triggers=checked,
        )  # fmt: skip
    except DeploymentError as exc:  # what is left to check is the parameters
        raise DeploymentError(f"{where}, field 'parameters': {exc}") from None


def load_deployment_file(path: str | Path) -> list[Deployment]:
    """Every deployment in a file, built and checked (none stored)."""
    path = Path(path)
    built = [_entry(entry, index, path) for index, entry in enumerate(_read(path))]
    seen: dict[str, int] = {}
    for index, deployment in enumerate(built):
        if deployment.name in seen:
            raise DeploymentError(
                f"{path}: deployments[{index}] and deployments[{seen[deployment.name]}] are both named "
                f"{deployment.name!r}; names identify deployments, so give each its own."
            )
        seen[deployment.name] = index
    return built


def apply_deployment_file(path: str | Path, store: RunStore | None = None) -> list[Deployment]:
    """Create or update every deployment in a file; all are checked before any is stored."""
    deployments = load_deployment_file(path)
    with open_store(store) as opened:
        for deployment in deployments:
            deployment.apply(opened)
    return deployments
