"""Deployments for real: flows in a module written to disk and imported by entrypoint, an SQLite (and
PostgreSQL) run store, a backfill on the session's LocalCluster. No mocks.

Each test writes its own flows module (a fresh name, so imports never leak between
tests) and puts its folder on ``sys.path``. The flows record their own start and end
times in files, which is how the backfill's concurrency bound is checked.
"""

from __future__ import annotations

import json
import textwrap
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import dask.config
import pytest

from conftest import import_flows
from daskflow import flow
from daskflow.deployments import (
    Deployment,
    WorkPool,
    apply_deployment_file,
    entrypoint_of,
    load_flow,
    missed_times,
    render_parameters,
    resolve_work_pool,
    run_deployment_here,
    template_times,
)
from daskflow.exceptions import DeploymentError, DeploymentNotFoundError
from daskflow.runstore import RunStore
from daskflow.runstore import deployments as rows
from daskflow.schedules import Cron, Interval

FLOWS = """
import json, os, time, uuid
from datetime import date, datetime
from pathlib import Path
from daskflow import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow
def daily(day: str, out: str = "", n: int = 1) -> dict:
    start = time.time()
    total = double(n)
    if out:
        record = {"day": day, "start": start, "end": time.time()}
        Path(out, uuid.uuid4().hex + ".json").write_text(json.dumps(record))
    return {"day": day, "total": total}

@flow
def typed(when: datetime, day_of: date, label: str = "") -> str:
    return f"{when.isoformat()}|{day_of.isoformat()}|{label}"

@flow
def fails(day: str = "") -> None:
    raise RuntimeError("boom on " + day)
"""


def write_flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module: ModuleType = import_flows(tmp_path, monkeypatch, "dfl_flows", FLOWS)
    return module


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return write_flows(tmp_path, monkeypatch)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with RunStore(f"sqlite:///{tmp_path / 'runs.db'}") as opened:
        yield opened


DAILY_6 = {"cron": "0 6 * * *", "timezone": "UTC"}


# -- templates ---------------------------------------------------------------------------------


def test_templates_render_the_scheduled_time_and_its_data_interval(flows: ModuleType) -> None:
    times = template_times(Cron("0 6 * * *", timezone="UTC"), datetime(2024, 1, 15, 6, tzinfo=UTC))
    params = {
        "day": "{{ data_interval_end }}",
        "out": "from {{data_interval_start}} to {{ data_interval_end | %Y-%m-%d }}",
        "n": 3,
    }
    assert render_parameters(flows.daily, params, times) == {
        "day": "2024-01-15T06:00:00+00:00",
        "out": "from 2024-01-14T06:00:00+00:00 to 2024-01-15",
        "n": 3,
    }


def test_templates_follow_the_schedule_zone_and_keep_datetime_and_date_types(flows: ModuleType) -> None:
    berlin = Cron("0 6 * * MON", timezone="Europe/Berlin")
    times = template_times(berlin, datetime(2024, 4, 1, 4, tzinfo=UTC))  # 06:00 CEST, a Monday
    rendered = render_parameters(
        flows.typed,
        {"when": "{{ data_interval_start }}", "day_of": "{{ scheduled_time }}", "label": "{{ scheduled_time }}"},
        times,
    )
    # A week back, across the spring-forward night: 06:00 CET then.
    assert rendered["when"] == datetime(2024, 3, 25, 5, tzinfo=UTC) and isinstance(rendered["when"], datetime)
    assert rendered["day_of"] == date(2024, 4, 1)
    assert rendered["label"] == "2024-04-01T06:00:00+02:00"


def test_an_unknown_template_is_an_error_naming_the_known_ones(flows: ModuleType) -> None:
    with pytest.raises(DeploymentError, match=r"unknown template \{\{ execution_date \}\}.*scheduled_time"):
        Deployment.build_from_flow(flows.daily, "d", schedule=DAILY_6, parameters={"day": "{{ execution_date }}"})


# -- building ----------------------------------------------------------------------------------


def test_entrypoints_name_importable_modules_and_files(flows: ModuleType, tmp_path: Path) -> None:
    assert entrypoint_of(flows.daily) == f"{flows.__name__}:daily"
    assert load_flow(f"{flows.__name__}:daily") is flows.daily
    by_path = f"{tmp_path / 'code' / (flows.__name__ + '.py')}:typed"
    loaded = load_flow(by_path)
    assert loaded.name == "typed" and loaded is not flows.typed and load_flow(by_path) is loaded


def test_a_flow_defined_in_a_function_must_be_importable() -> None:
    @flow
    def local_flow() -> None:
        pass

    with pytest.raises(DeploymentError, match="inside a function.*top level of a module"):
        Deployment.build_from_flow(local_flow, "local")


def test_parameters_are_checked_against_the_flow_at_build_time(flows: ModuleType) -> None:
    with pytest.raises(DeploymentError, match="has no parameter.*'dya'"):
        Deployment.build_from_flow(flows.daily, "d", schedule=DAILY_6, parameters={"dya": "x"})
    with pytest.raises(DeploymentError, match="requires 'day'"):
        Deployment.build_from_flow(flows.daily, "d", schedule=DAILY_6)
    with pytest.raises(DeploymentError, match="(?s)do not fit flow 'daily'.*'n'"):
        Deployment.build_from_flow(flows.daily, "d", schedule=DAILY_6, parameters={"day": "x", "n": "many"})
    with pytest.raises(DeploymentError, match="catchup='sometimes'"):
        Deployment.build_from_flow(flows.daily, "d", schedule=DAILY_6, parameters={"day": "x"}, catchup="sometimes")
    # Without a schedule, a required parameter may wait for the manual run.
    assert Deployment.build_from_flow(flows.daily, "d").parameters == {}


def test_apply_upserts_by_name_and_load_list_delete(flows: ModuleType, store: Any) -> None:
    first = Deployment.build_from_flow(
        flows.daily, "orders", schedule=DAILY_6, parameters={"day": "{{ scheduled_time }}"}, tags=["etl"]
    )
    deployment_id = first.apply(store)
    again = Deployment.build_from_flow(
        flows.daily, "orders", schedule=Interval(3600, anchor_date="2024-01-01T00:30:00+00:00"),
        parameters={"day": "x"}, work_pool_name="gpu", catchup="all",
    )  # fmt: skip
    assert again.apply(store) == deployment_id

    loaded = Deployment.load("orders", store)
    assert loaded.id == deployment_id and loaded.entrypoint == f"{flows.__name__}:daily"
    assert loaded.schedule == Interval(3600, anchor_date="2024-01-01T00:30:00+00:00")
    assert (loaded.parameters, loaded.catchup, loaded.work_pool, loaded.tags) == (
        {"day": "x"},
        "all",
        WorkPool("gpu"),
        (),
    )
    assert [d.name for d in Deployment.list(store)] == ["orders"]
    loaded.pause(store)
    assert Deployment.load("orders", store).paused
    assert loaded.delete(store) and not loaded.delete(store)
    with pytest.raises(DeploymentNotFoundError, match="no deployment named 'orders'"):
        Deployment.load("orders", store)


# -- claims ------------------------------------------------------------------------------------


def test_exactly_one_of_many_concurrent_claims_wins(run_store_url: str) -> None:
    at = datetime(2024, 1, 15, 6, tzinfo=UTC)
    stores = [RunStore(run_store_url) for _ in range(2)]  # two stores: two connection pools, as two services
    try:
        barrier = threading.Barrier(8)
        results: list[str | None] = []

        def claim(i: int) -> None:
            barrier.wait(timeout=30)
            results.append(rows.claim_run(stores[i % 2], "dep-1", at, "scheduled", f"service-{i}"))

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 8
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        # Another deployment, or another time, is its own claim.
        assert rows.claim_run(stores[0], "dep-2", at, "scheduled") is not None
        later = rows.claim_run(stores[0], "dep-1", at + timedelta(days=1), "backfill")
        assert later is not None
        rows.finish_run(stores[1], winners[0], "flow-run-1", "COMPLETED")
        runs = rows.list_runs(stores[1], "dep-1")
        assert [(r.scheduled_time, r.flow_run_id, r.state_type) for r in runs] == [
            (at, "flow-run-1", "COMPLETED"), (at + timedelta(days=1), None, None),
        ]  # fmt: skip
        assert rows.last_scheduled_time(stores[0], "dep-1") == at + timedelta(days=1)
        assert rows.last_scheduled_time(stores[0], "dep-1", kinds=("scheduled",)) == at
        assert rows.last_scheduled_time(stores[0], "nothing") is None
    finally:
        for opened in stores:
            opened.close()


def test_catchup_decides_which_missed_times_run() -> None:
    schedule = Cron("0 6 * * *", timezone="UTC")
    last = datetime(2024, 1, 10, 6, tzinfo=UTC)
    now = datetime(2024, 1, 13, 7, tzinfo=UTC)
    missed = [datetime(2024, 1, d, 6, tzinfo=UTC) for d in (11, 12, 13)]
    assert missed_times(schedule, last, now, "all") == missed
    assert missed_times(schedule, last, now, "latest") == missed[-1:]
    assert missed_times(schedule, last, now, "none") == []


# -- running -----------------------------------------------------------------------------------


def test_run_deployment_renders_runs_and_records_the_claim(flows: ModuleType, store: Any) -> None:
    deployment = Deployment.build_from_flow(
        flows.daily, "orders", schedule=DAILY_6, parameters={"day": "{{ data_interval_end | %Y-%m-%d }}"}
    )
    deployment.apply(store)
    at = datetime(2024, 1, 15, 6, tzinfo=UTC)

    state = run_deployment_here("orders", at, {"n": 5}, store=store)

    assert state.is_completed() and state.result() == {"day": "2024-01-15", "total": 10}
    [claim] = rows.list_runs(store, deployment.id or "")
    assert (claim.scheduled_time, claim.kind, claim.state_type) == (at, "manual", "COMPLETED")
    assert claim.flow_run_id == state.flow_run.id  # type: ignore[union-attr]
    with pytest.raises(DeploymentError, match="already ran for 2024-01-15T06:00:00"):
        run_deployment_here("orders", at, store=store)
    with pytest.raises(DeploymentError, match="has no parameter.*'m'"):
        run_deployment_here("orders", parameters={"m": 1}, store=store)


def test_a_failed_run_is_recorded_failed(flows: ModuleType, store: Any) -> None:
    deployment = Deployment.build_from_flow(flows.fails, "fails")
    deployment.apply(store)
    state = deployment.run(store=store)
    assert state.is_failed() and "boom" in (state.message or "")
    assert [r.state_type for r in rows.list_runs(store, deployment.id or "")] == ["FAILED"]


def test_backfill_runs_a_month_on_a_cluster_by_address_within_its_bound(
    flows: ModuleType, store: Any, tmp_path: Path, dask_cluster: Any
) -> None:
    out = tmp_path / "stamps"
    out.mkdir()
    deployment = Deployment.build_from_flow(
        flows.daily, "daily-jan", schedule=DAILY_6,
        parameters={"day": "{{ scheduled_time | %Y-%m-%d }}", "out": str(out)},
        work_pool=WorkPool(address=dask_cluster.scheduler_address),
    )  # fmt: skip
    deployment.apply(store)

    states = deployment.backfill("2024-01-01", "2024-01-31T23:59", max_concurrent=3, store=store)

    days = [f"2024-01-{d:02d}" for d in range(1, 32)]
    assert [s.result()["day"] for s in states] == days
    assert states.times == [datetime(2024, 1, d, 6, tzinfo=UTC) for d in range(1, 32)] and states.skipped == []
    stamps = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert sorted(s["day"] for s in stamps) == days
    events = sorted([(s["start"], 1) for s in stamps] + [(s["end"], -1) for s in stamps])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert 1 < peak <= 3
    claims = rows.list_runs(store, deployment.id or "")
    assert len(claims) == 31 and {c.kind for c in claims} == {"backfill"}
    assert {c.state_type for c in claims} == {"COMPLETED"}

    # Again over a window that overlaps: the claimed days are skipped, the new one runs.
    again = deployment.backfill(datetime(2024, 1, 30, tzinfo=UTC), datetime(2024, 2, 1, 23, tzinfo=UTC), store=store)
    assert [s.result()["day"] for s in again] == ["2024-02-01"]
    assert again.skipped == [datetime(2024, 1, 30, 6, tzinfo=UTC), datetime(2024, 1, 31, 6, tzinfo=UTC)]


# -- work pools --------------------------------------------------------------------------------


def test_work_pools_resolve_from_config_and_an_unknown_name_lists_the_known() -> None:
    assert resolve_work_pool({"name": "default-agent-pool"}).is_default
    assert resolve_work_pool(None).is_default
    with dask.config.set(
        {"daskflow.work_pools": {"batch": {"cluster_kwargs": {"n_workers": 2}, "adapt": {"maximum": 4}}}}
    ):
        batch = resolve_work_pool({"name": "batch"})
        assert (batch.cluster_kwargs, batch.adapt_maximum, batch.is_default) == ({"n_workers": 2}, 4, False)
        with pytest.raises(
            DeploymentError, match="unknown work pool 'gpu'; known here: batch, default, default-agent-pool"
        ):
            resolve_work_pool({"name": "gpu"})
    with pytest.raises(DeploymentError, match="address.*or cluster_class"):
        WorkPool(address="tcp://x:1", cluster_class="distributed.LocalCluster")
    assert WorkPool.from_dict(
        WorkPool("p", cluster_class="a.B", adapt_minimum=0, adapt_maximum=3).to_dict()
    ) == WorkPool("p", cluster_class="a.B", adapt_minimum=0, adapt_maximum=3)


def test_an_unknown_pool_fails_the_run_not_the_apply(flows: ModuleType, store: Any) -> None:
    deployment = Deployment.build_from_flow(flows.daily, "elsewhere", work_pool_name="gpu")
    deployment.apply(store)
    with pytest.raises(DeploymentError, match="unknown work pool 'gpu'"):
        deployment.run(parameters={"day": "x"}, store=store)


# -- deployment files --------------------------------------------------------------------------


def test_a_deployment_file_applies_every_entry(flows: ModuleType, store: Any, tmp_path: Path) -> None:
    spec = tmp_path / "code" / "deployments.yaml"
    spec.write_text(
        textwrap.dedent(f"""
        deployments:
          - name: by-module
            entrypoint: {flows.__name__}:daily
            schedule: {{cron: "0 6 * * *", timezone: Europe/Berlin}}
            parameters: {{day: "{{{{ scheduled_time }}}}"}}
            tags: [etl]
            work_pool: {{name: batch}}
            catchup: all
            paused: true
          - name: by-file
            entrypoint: {flows.__name__}.py:typed
            schedule: {{interval: 3600, anchor_date: "2024-01-01T00:00:00+00:00"}}
            parameters: {{when: "{{{{ scheduled_time }}}}", day_of: "{{{{ scheduled_time }}}}"}}
    """)
    )
    applied = apply_deployment_file(spec, store)
    assert [d.name for d in applied] == ["by-module", "by-file"]
    by_module, by_file = Deployment.load("by-module", store), Deployment.load("by-file", store)
    assert (by_module.paused, by_module.catchup, by_module.work_pool.name, by_module.tags) == (
        True,
        "all",
        "batch",
        ("etl",),
    )
    assert by_file.entrypoint == f"{tmp_path / 'code' / flows.__name__}.py:typed"  # relative to the file
    state = by_file.run("2024-01-01T05:00:00+00:00", store=store)
    assert state.result() == "2024-01-01T05:00:00+00:00|2024-01-01|"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: a, entrypoint: 'nowhere_xyz:f'}", r"deployments\[0\] \('a'\), field 'entrypoint': .*'nowhere_xyz'"),
        (
            "{name: a, entrypoint: 'MOD:daily', schedule: {cron: '61 * * * *'}}",
            r"deployments\[0\] \('a'\), field 'schedule': .*minute",
        ),
        (
            "{name: a, entrypoint: 'MOD:daily', parameters: {day: 1, bad: 2}}",
            r"deployments\[0\] \('a'\), field 'parameters': .*'bad'",
        ),
        (
            "{name: a, entrypoint: 'MOD:daily', work_pool: {adress: x}}",
            r"deployments\[0\] \('a'\), field 'work_pool': .*'adress'",
        ),
        ("{name: a, entrypoint: 'MOD:daily', catchup: yes}", r"deployments\[0\] \('a'\), field 'catchup'"),
        ("{entrypoint: 'MOD:daily'}", r"deployments\[0\], field 'name'"),
    ],
)
def test_a_bad_file_entry_names_the_file_the_entry_and_the_field(
    flows: ModuleType, store: Any, tmp_path: Path, entry: str, message: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"deployments:\n  - {entry.replace('MOD', flows.__name__)}\n")
    with pytest.raises(DeploymentError, match=f"{spec}: " + message):
        apply_deployment_file(spec, store)
    assert Deployment.list(store) == []


# -- the command line --------------------------------------------------------------------------


def test_cli_apply_ls_run_pause_backfill_delete(flows: ModuleType, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from daskflow import cli

    url = f"sqlite:///{tmp_path / 'cli-runs.db'}"
    spec = tmp_path / "code" / "d.yaml"
    spec.write_text(
        f"deployments:\n  - name: cli-daily\n    entrypoint: {flows.__name__}:daily\n"
        "    schedule: {cron: '0 6 * * *'}\n    parameters: {day: '{{ scheduled_time | %Y-%m-%d }}'}\n"
    )
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli.main, ["deployment", *args, "--url", url])

    applied = invoke("apply", str(spec))
    assert applied.exit_code == 0 and "Applied 'cli-daily'" in applied.output, applied.output
    ran = invoke("run", "cli-daily", "--param", "n=4", "--time", "2024-01-15T06:00")
    assert ran.exit_code == 0 and "Completed" in ran.output, ran.output
    assert invoke("pause", "cli-daily").exit_code == 0
    listed = invoke("ls")
    assert "cli-daily" in listed.output and "cron 0 6 * * * (UTC)" in listed.output and "yes" in listed.output
    assert "2024-01-15 06:00:00" in listed.output and "Completed" in listed.output, listed.output
    filled = invoke("backfill", "cli-daily", "--start", "2024-01-14", "--end", "2024-01-16T12:00")
    assert filled.exit_code == 0 and "2 runs, 0 not completed, 1 time skipped" in filled.output, filled.output
    bad = invoke("run", "cli-daily", "--param", "n=many")
    assert bad.exit_code == 2 and "'n'" in bad.output
    assert invoke("delete", "cli-daily").exit_code == 0
    missing = invoke("run", "cli-daily")
    assert missing.exit_code == 2 and "no deployment named 'cli-daily'" in missing.output
