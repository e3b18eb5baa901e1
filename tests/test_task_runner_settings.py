"""DaskTaskRunner's sources of a cluster and the settings of the clusters daskflow starts.

A cluster daskflow starts for a flow run (``DaskTaskRunner()``, ``cluster_class=``,
a work pool) runs without Dask's queuing (worker-saturation ``inf``); a key the
user set in dask.config, or ``daskflow.dask.cluster_config``, wins; a cluster the
user passes keeps its settings and stays open. prefect-dask's arguments
(``cluster=``, ``client_kwargs=``, ``performance_report_path=``) work as there.
Every cluster here is real (worker threads of this process where the test is
about the scheduler, which is in this process either way).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask.config
import pytest
from distributed import LocalCluster

from daskflow import flow, task
from daskflow.dask import get_dask_client
from daskflow.deployments.work_pools import WorkPool, pool_runner
from daskflow.exceptions import ConfigurationError
from daskflow.task_runners import DaskTaskRunner
from daskflow.task_runners.dask_cluster import STARTED_CLUSTER_CONFIG, WORKER_PRELOAD, started_cluster_config
from daskflow.task_runners.dask_shipping import ship_code

# Small and quick to start: one worker thread of this process; the scheduler is in this process too.
SMALL = {"n_workers": 1, "threads_per_worker": 1, "processes": False, "protocol": "tcp", "silence_logs": logging.ERROR}
DASK_DEFAULT_SATURATION = 1.1


def _saturation(dask_scheduler: Any) -> float:
    return float(dask_scheduler.WORKER_SATURATION)


def _stealing(dask_scheduler: Any) -> bool:
    return "stealing" in dask_scheduler.extensions


@task
def scheduler_saturation() -> float:
    # Asked from inside a task: the setting of the cluster the flow's runs really ran on.
    with get_dask_client() as client:
        return float(client.run_on_scheduler(_saturation))


@task
def inc(x: int) -> int:
    return x + 1


def _saturation_of_started(runner: DaskTaskRunner) -> float:
    runner.start()
    try:
        assert runner.client is not None
        return float(runner.client.run_on_scheduler(_saturation))
    finally:
        runner.shutdown()


def test_a_cluster_daskflow_starts_runs_without_queuing() -> None:
    @flow(task_runner=DaskTaskRunner(cluster_kwargs=SMALL))
    def fanout() -> tuple[float, int]:
        return scheduler_saturation(), sum(f.result() for f in inc.map(range(20)))

    saturation, total = fanout()
    assert saturation == float("inf")
    assert total == sum(range(1, 21))
    assert STARTED_CLUSTER_CONFIG == {
        "distributed.scheduler.worker-saturation": float("inf"),
        "distributed.scheduler.work-stealing": False,
        "distributed.worker.preload": [WORKER_PRELOAD],
    }
    # Only while the cluster was made: the process's own setting is Dask's again.
    assert float(dask.config.get("distributed.scheduler.worker-saturation")) == DASK_DEFAULT_SATURATION


def test_a_cluster_class_by_import_path_and_a_work_pool_get_the_same_settings() -> None:
    by_path = DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=SMALL)
    by_path.start()
    try:
        assert by_path.client is not None
        assert by_path.client.run_on_scheduler(_saturation) == float("inf")
        assert by_path.client.run_on_scheduler(_stealing) is False
    finally:
        by_path.shutdown()
    with pool_runner(WorkPool(name="small", cluster_kwargs=SMALL)) as runner:
        assert runner is not None
        runner.start()
        try:
            assert runner.client is not None
            assert runner.client.run_on_scheduler(_saturation) == float("inf")
        finally:
            runner.shutdown()


def test_what_the_user_set_in_dask_config_wins() -> None:
    with dask.config.set({"distributed.scheduler.worker-saturation": 2.0}):
        assert started_cluster_config() == {
            "distributed.scheduler.work-stealing": False,
            "distributed.worker.preload": [WORKER_PRELOAD],
        }
        assert _saturation_of_started(DaskTaskRunner(cluster_kwargs=SMALL)) == 2.0
    with dask.config.set({"daskflow.dask.cluster_config": {}}):  # Dask's defaults, as a plain LocalCluster
        assert _saturation_of_started(DaskTaskRunner(cluster_kwargs=SMALL)) == DASK_DEFAULT_SATURATION
    with dask.config.set({"distributed.scheduler.work-stealing": False}):  # Dask's default is on: this is set
        assert started_cluster_config() == {
            "distributed.scheduler.worker-saturation": float("inf"),
            "distributed.worker.preload": [WORKER_PRELOAD],
        }
    with dask.config.set({"distributed.worker.preload": ["mypreload"]}):  # a preload of yours replaces ours
        assert "distributed.worker.preload" not in started_cluster_config()
    with dask.config.set({"daskflow.dask.cluster_config": {"distributed.scheduler.worker-saturation": 3.0}}):
        assert _saturation_of_started(DaskTaskRunner(cluster_kwargs=SMALL)) == 3.0
    with dask.config.set({"daskflow.dask.cluster_config": "inf"}), pytest.raises(ConfigurationError) as info:
        started_cluster_config()
    assert "daskflow.dask.cluster_config must be a mapping" in str(info.value)


def test_a_cluster_passed_in_keeps_its_settings_stays_open_and_gets_the_performance_report(tmp_path: Path) -> None:
    report = tmp_path / "reports" / "dask-report.html"
    report.parent.mkdir()
    with LocalCluster(**SMALL, dashboard_address="127.0.0.1:0") as cluster:
        runner = DaskTaskRunner(  # prefect-dask's arguments
            cluster, client_kwargs={"name": "daskflow-settings-test"}, performance_report_path=report
        )
        assert runner.duplicate().performance_report_path == report  # each flow run's copy writes it too

        @flow(task_runner=runner)
        def fanout(n: int) -> tuple[float, int]:
            return scheduler_saturation(), sum(f.result() for f in inc.map(range(n)))

        assert fanout(10) == (DASK_DEFAULT_SATURATION, sum(range(1, 11)))
        assert cluster.scheduler is not None and _stealing(cluster.scheduler)  # Dask's default, untouched
        first = report.read_text(encoding="utf-8")
        assert "Dask Performance Report" in first
        assert "inc" in first  # the flow run's tasks are in it
        report.write_text("stale", encoding="utf-8")
        assert fanout(5)[1] == sum(range(1, 6))
        assert "Dask Performance Report" in report.read_text(encoding="utf-8")  # the second run's replaced it
        assert sorted(p.name for p in report.parent.iterdir()) == ["dask-report.html"]  # no temporary left

        # The cluster is the user's: still running, with its workers, after both flow runs.
        assert cluster.status.name == "running"
        assert len(cluster.scheduler_info["workers"]) == 1

        started = DaskTaskRunner(cluster=cluster, client_kwargs={"name": "daskflow-settings-test"})
        started.start()
        try:
            assert started.client is not None
            assert started.client.id.startswith("Client-daskflow-settings-test-")
            assert started.cluster is None  # not ours to close
        finally:
            started.shutdown()
        assert cluster.status.name == "running"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "tcp://127.0.0.1:1", "cluster_kwargs": {"n_workers": 1}}, "cluster_kwargs describe a cluster"),
        ({"address": "tcp://127.0.0.1:1", "adapt_kwargs": {"maximum": 2}}, "adapt_kwargs scale a cluster object"),
        ({"cluster": "tcp://127.0.0.1:1"}, "cluster must be a running Dask cluster object"),
        ({"address": 8786}, "address must be a scheduler address"),
        ({"cluster_class": 42}, "cluster_class must be a cluster class or its import path"),
        ({"client_kwargs": {"asynchronous": True}}, "client_kwargs cannot set 'asynchronous'"),
        ({"cluster_kwargs": {"asynchronous": True}}, "cluster_kwargs cannot set 'asynchronous'"),
    ],
)
def test_combinations_prefect_dask_refuses_are_refused_clearly(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DaskTaskRunner(**kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # what prefect-dask raises


def test_a_cluster_and_an_address_together_are_refused() -> None:
    with LocalCluster(**SMALL, dashboard_address=None) as cluster:
        with pytest.raises(
            ConfigurationError, match="give one of address, cluster and client, not address and cluster"
        ):
            DaskTaskRunner(address="tcp://127.0.0.1:1", cluster=cluster)
        with pytest.raises(ConfigurationError, match="cluster_class describe a cluster to start, but cluster"):
            DaskTaskRunner(cluster=cluster, cluster_class="distributed.LocalCluster")


def test_a_cluster_class_that_cannot_be_imported_is_named() -> None:
    runner = DaskTaskRunner(cluster_class="no_such_module.Cluster")
    with pytest.raises(ConfigurationError, match="cluster_class 'no_such_module.Cluster' cannot be imported"):
        runner.start()


def test_the_workers_of_a_started_cluster_load_the_worker_side_as_they_start_and_not_the_client_side() -> None:
    """The preload imports what run_on_worker needs while the worker starts; the runner's check of which
    modules the workers can import does not bring the client side (the event router, the run store) there."""

    def loaded(names: list[str], timeout: float) -> dict[str, bool]:
        # Nested, so cloudpickle sends it by value: unpickling it on the worker imports nothing of this module.
        import sys
        import threading

        for thread in threading.enumerate():
            if thread.name == "daskflow-preload":
                thread.join(timeout)
        return {name: name in sys.modules for name in names}

    names = [
        "daskflow.task_runners.dask_worker",
        "daskflow.task_runners.dask_shipping",
        "daskflow.task_runners.dask_events",
        "sqlalchemy",
    ]
    # Worker processes (a worker in this process would see this process's modules); pytest's main
    # module, which each spawned worker imports again, does not import daskflow.
    runner = DaskTaskRunner(cluster_kwargs={**SMALL, "processes": True, "protocol": "tcp"})
    runner.start()
    try:
        assert runner.client is not None
        before = runner.client.run(loaded, names, 60.0)
        assert len(before) == 1
        assert list(before.values()) == [dict(zip(names, [True, False, False, False], strict=True))]
        # This test module is the user's code: the check asks the worker whether it can import it.
        ship_code(runner.client, runner._router, inc)
        assert __name__ in runner._router.checked_modules
        after = runner.client.run(loaded, names, 60.0)
        assert list(after.values()) == [dict(zip(names, [True, True, False, False], strict=True))]
    finally:
        runner.shutdown()
