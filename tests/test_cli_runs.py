"""``daskflow runs`` and ``daskflow artifacts`` over a run store written by real flow runs.

One SQLite run store is recorded once for the module (:func:`recorded`), the way
the ``history`` fixture records one per test: run history on, real ``@flow``
runs — a map that completes, a cached task run twice, a task with retries that
fails on a Dask worker after logging, a map of 60 items two of which fail — then
:func:`~daskflow.engine.history.flush`. Artifacts are added through the store's
own ``write``, in the shapes the artifact API writes. The tests then read it
back through the CLI only, as a user would, and check what they would need to
see: which task failed, where, after how many retries, and what it logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.config
import pytest
from click.testing import CliRunner, Result

from daskflow import cli, flow, get_run_logger, task
from daskflow.cache_policies import INPUTS
from daskflow.cli import output as cli_output
from daskflow.engine.history import flush, stop_recording
from daskflow.runstore import ArtifactRecord, FlowRunRecord, RunStore
from daskflow.task_runners import DaskTaskRunner

FLOWS = ("etl", "cached", "broken", "wide", "child", "nested")  # in the order they run


@dataclass(frozen=True)
class Recorded:
    url: str
    ids: dict[str, list[str]]  # flow name -> its flow run ids, newest first
    task_run_ids: dict[str, str]  # task run name (in the etl run) -> id


def _record_flows(dask_client: Any, home: Path) -> None:
    @task
    def double(i: int) -> int:
        return 2 * i

    @flow(name="etl")
    def etl(n: int, source: str = "eu") -> int:
        get_run_logger().info("starting etl from %s", source)
        return sum(double.map(range(n)).result())

    @task(cache_policy=INPUTS, result_storage=(home / "results").as_uri())
    def slow_square(i: int) -> int:
        return i * i

    @flow(name="cached")
    def cached() -> int:
        return sum(slow_square.map(range(3)).result())

    @task(retries=2, retry_delay_seconds=0)
    def flaky(x: int) -> int:
        get_run_logger().info("checking %d", x)
        get_run_logger().warning("about to fail on %d", x)
        raise ValueError(f"bad value {x}")

    @task
    def publish(x: Any) -> Any:  # Any: it takes flaky's future, resolved on the worker
        return x

    @flow(name="broken", task_runner=DaskTaskRunner(client=dask_client))
    def broken() -> Any:
        return publish(flaky.submit(7))

    @task
    def item(i: int) -> int:
        if i in (13, 42):
            raise KeyError(f"no row {i}")
        return i

    @flow(name="wide")
    def wide() -> int:
        return sum(item.map(range(60)).result())

    @flow(name="child")
    def child() -> int:
        return double(1)

    @flow(name="nested")
    def nested() -> None:
        child()
        get_run_logger().error("parent about to give up")
        raise RuntimeError("parent gave up")

    assert etl(4) == 12
    assert cached() == 5
    assert cached() == 5  # every slow_square run a cache hit
    with pytest.raises(Exception, match="bad value 7|upstream|ended Failed"):
        broken()
    with pytest.raises(KeyError):
        wide()
    with pytest.raises(RuntimeError, match="parent gave up"):
        nested()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, dask_client: Any) -> Iterator[Recorded]:
    home = tmp_path_factory.mktemp("cli-runs-home")
    url = f"sqlite:///{home / 'runs.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DASKFLOW_HOME", str(home))
        with dask.config.set({"daskflow.runstore.enabled": True, "daskflow.runstore.url": url}):
            try:
                _record_flows(dask_client, home)
                assert flush(30), "the run history was not written within 30 s"
            finally:
                stop_recording()
    with RunStore(url) as store:
        ids = {name: [r.id for r in store.list_flow_runs(flow_name=name)] for name in FLOWS}
        etl_id = ids["etl"][0]
        task_run_ids = {run.name: run.id for run in store.task_runs(etl_id)}
        now = time.time()
        old_scores = [{"name": "old", "score": 0}]
        scores = [{"name": "ada", "score": 3}, {"name": "bob", "score": 11, "note": "late"}]
        link = {"link": "https://example.org/d/1", "link_text": "Dashboard"}
        by_task = {"flow_run_id": etl_id, "task_run_id": task_run_ids["double-1"]}
        store.write(
            [
                ArtifactRecord(type="markdown", key="report", description="weekly report",
                               data="# Totals\n\nAll **12** rows.", flow_run_id=etl_id, created=now - 30),
                ArtifactRecord(type="table", key="scores", data=json.dumps(old_scores), **by_task, created=now - 20),
                ArtifactRecord(type="table", key="scores", description="scores per name", data=json.dumps(scores),
                               **by_task, created=now - 10),
                ArtifactRecord(type="link", key="dashboard", data=json.dumps(link), flow_run_id=ids["wide"][0],
                               created=now),
            ]
        )  # fmt: skip
    yield Recorded(url, ids, task_run_ids)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args))


def ok(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, f"{args} exited {result.exit_code}:\n{result.output}"
    return result.stdout


def error(*args: str, code: int = 2) -> str:
    """The one error line a failing command prints (no traceback)."""
    result = run(*args)
    assert result.exit_code == code, f"{args} exited {result.exit_code}, not {code}:\n{result.output}"
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def newest_first(recorded: Recorded) -> list[str]:
    """Every flow run id: a subflow run starts after its parent does."""
    order = ["child", "nested", "wide", "broken", "cached", "etl"]
    return [run_id for name in order for run_id in recorded.ids[name]]


def table_ids(stdout: str, recorded: Recorded) -> list[str]:
    """The runs of a piped ``ls`` table (its first column: the header and the summary line left out).

    The table shows each id's shortest unique prefix (8 characters at least); each is
    expanded here to the one recorded id that starts with it.
    """
    every = newest_first(recorded)
    listed = []
    for line in stdout.strip().splitlines()[1:-1]:
        prefix = line.split()[0]
        matches = [run_id for run_id in every if run_id.startswith(prefix)]
        assert len(prefix) >= 8 and len(matches) == 1, (prefix, matches, stdout)
        listed.append(matches[0])
    return listed


# -- runs ls --------------------------------------------------------------------------


def test_ls_lists_runs_newest_first_with_counts(recorded: Recorded) -> None:
    out = ok("runs", "ls", "--url", recorded.url)
    header = out.splitlines()[0].split()
    assert header == ["id", "flow", "/", "run", "state", "start", "(UTC)", "duration", "tasks", "cache", "hits"], out
    assert table_ids(out, recorded) == newest_first(recorded), out
    rows = {run_id: line.split() for run_id, line in zip(table_ids(out, recorded), out.splitlines()[1:-1])}
    second_cached, first_cached = recorded.ids["cached"]
    assert rows[second_cached][-2:] == ["3", "3"] and rows[first_cached][-2:] == ["3", "0"], out  # tasks, cache hits
    assert rows[recorded.ids["broken"][0]][1:2] + rows[recorded.ids["broken"][0]][4:5] == ["broken", "Failed"], out
    assert rows[recorded.ids["etl"][0]][1:2] + rows[recorded.ids["etl"][0]][4:5] == ["etl", "Completed"], out
    assert out.rstrip().endswith(f"7 flow runs, newest first, in {recorded.url}"), out


def test_ls_filters_by_flow_state_time_and_limit(recorded: Recorded) -> None:
    def ids(*args: str) -> list[str]:
        return table_ids(ok("runs", "ls", "--url", recorded.url, *args), recorded)

    assert ids("--flow", "cached") == recorded.ids["cached"]
    assert ids("--state", "failed") == [*recorded.ids["nested"], *recorded.ids["wide"], *recorded.ids["broken"]]
    assert ids("--state", "FAILED", "--flow", "broken") == recorded.ids["broken"]
    assert ids("--state", "crashed", "--state", "completed", "--flow", "etl") == recorded.ids["etl"]
    assert ids("--since", "1h") == newest_first(recorded)
    assert ids("--since", "1h", "--until", "2999-01-01T00:00:00+02:00") == newest_first(recorded)
    assert ids("--since", "2999-01-01") == []
    none = ok("runs", "ls", "--url", recorded.url, "--until", "2000-01-01")
    assert none.startswith("No flow runs in") and "until 2000-01-01 00:00:00 UTC" in none, none
    limited = ok("runs", "ls", "--url", recorded.url, "--limit", "2")
    assert table_ids(limited, recorded) == newest_first(recorded)[:2], limited
    assert "--limit N shows more" in limited, limited


def test_ls_json_is_machine_readable(recorded: Recorded) -> None:
    runs = json.loads(ok("runs", "ls", "--url", recorded.url, "--json", "--flow", "cached"))
    assert [r["id"] for r in runs] == recorded.ids["cached"], runs
    assert [(r["task_runs"], r["cache_hits"]) for r in runs] == [(3, 3), (3, 0)], runs
    assert runs[0]["start_time"].endswith("+00:00") and isinstance(runs[0]["duration"], float), runs[0]


# -- runs show ------------------------------------------------------------------------


def test_show_a_completed_run_with_a_map(recorded: Recorded) -> None:
    out = ok("runs", "show", recorded.ids["etl"][0], "--url", recorded.url)
    assert f"Flow run {recorded.ids['etl'][0]}" in out and "Completed" in out, out
    assert 'n=4, source="eu"' in out, out
    assert "task runs   4: Completed 4" in out, out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("double-")] == [
        "double-0", "double-1", "double-2", "double-3",
    ], out  # fmt: skip
    assert "Failure" not in out, out


def test_show_names_the_failed_task_its_worker_retries_traceback_and_logs(recorded: Recorded) -> None:
    [run_id] = recorded.ids["broken"]
    out = ok("runs", "show", run_id, "--url", recorded.url)
    assert "Failed" in out.splitlines()[3], out  # the state line of the header
    flaky_row = next(line for line in out.splitlines() if line.startswith("flaky-0"))
    assert flaky_row.split()[1:3] == ["Failed", "2"], flaky_row  # state, retries
    failure = out[out.index("\nFailure\n") :]
    assert "Task run flaky-0 (task flaky) Failed on worker tcp://127.0.0.1:" in failure, failure
    assert "after 2 retries (3 attempts)" in failure, failure
    assert "message: ValueError: bad value 7" in failure, failure
    traceback = failure[failure.index("Traceback (most recent call last):") :]
    assert ", in flaky\n" in traceback and "ValueError: bad value 7" in traceback, failure
    assert "WARNING  about to fail on 7" in failure, failure
    assert "1 task run did not run because a task run it depends on failed (state NotReady)" in failure, failure


def test_show_groups_a_big_map_but_lists_each_failed_task_run(recorded: Recorded) -> None:
    [run_id] = recorded.ids["wide"]
    out = ok("runs", "show", run_id, "--url", recorded.url)
    assert "grouped by task (60 runs; --all lists each one)" in out, out
    item_row = next(line for line in out.splitlines() if line.startswith("item "))
    assert item_row.split()[1:6] == ["60", "Completed", "58,", "Failed", "2"], item_row
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("item-")]
    assert listed == ["item-13", "item-42"], out
    assert "Task run item-13 (task item) Failed in the flow's own process" in out, out
    assert "KeyError: 'no row 13'" in out and "KeyError: 'no row 42'" in out, out
    every = ok("runs", "show", run_id, "--url", recorded.url, "--all")
    listed_all = [line.split()[0] for line in every.splitlines() if line.startswith("item-")]
    assert listed_all == [f"item-{i}" for i in range(60)], every


def test_show_json_and_prefixes(recorded: Recorded) -> None:
    [run_id] = recorded.ids["broken"]
    others = [other for ids in recorded.ids.values() for other in ids if other != run_id]
    prefix = next(run_id[:n] for n in range(1, 37) if not any(other.startswith(run_id[:n]) for other in others))
    data = json.loads(ok("runs", "show", prefix, "--url", recorded.url, "--json"))
    assert data["id"] == run_id and data["state_name"] == "Failed", data
    [failure] = data["failures"]
    assert failure["task_run"] == "flaky-0" and failure["retries"] == 2, failure
    assert failure["worker"].startswith("tcp://127.0.0.1:"), failure
    assert any("about to fail on 7" == log["message"] for log in failure["last_logs"]), failure
    assert {t["name"]: t["retries"] for t in data["task_runs"]} == {"flaky-0": 2, "publish-0": 0}, data["task_runs"]


def test_show_unknown_and_ambiguous_ids_are_clear_errors(recorded: Recorded, tmp_path: Path) -> None:
    unknown = error("runs", "show", "no-such-run", "--url", recorded.url)
    assert "no flow run with id 'no-such-run'" in unknown and "daskflow runs ls" in unknown, unknown
    url = f"sqlite:///{tmp_path / 'twins.db'}"
    with RunStore(url) as store:  # two runs whose ids share a prefix
        store.write([FlowRunRecord(id=f"5eed{i}-run", name=f"twin-{i}", flow_name="twins", state_type="COMPLETED",
                                   state_name="Completed") for i in (1, 2)])  # fmt: skip
    ambiguous = error("runs", "show", "5eed", "--url", url)
    assert "prefix '5eed' matches several flow runs" in ambiguous and "give more of the id" in ambiguous, ambiguous
    assert "twin-2" in ok("runs", "show", "5eed2", "--url", url)


def test_show_a_flow_that_failed_itself_with_its_subflow(recorded: Recorded) -> None:
    [run_id], [child_id] = recorded.ids["nested"], recorded.ids["child"]
    out = ok("runs", "show", run_id, "--url", recorded.url)
    assert "Subflow runs:" in out and f"{child_id}  child / " in out, out
    failure = out[out.index("\nFailure\n") :]
    assert "The flow itself failed: RuntimeError: parent gave up" in failure, failure
    assert 'raise RuntimeError("parent gave up")' in failure, failure
    assert "ERROR    parent about to give up" in failure, failure
    child = ok("runs", "show", child_id, "--url", recorded.url)
    assert f"subflow of  daskflow runs show {run_id}" in child and "Failure" not in child, child


# -- runs logs ------------------------------------------------------------------------


def _log_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line[:2] == "20"]  # a record's first line starts with its time


def test_logs_oldest_first_with_task_and_level_filters(recorded: Recorded) -> None:
    [run_id] = recorded.ids["broken"]
    everything = _log_lines(ok("runs", "logs", run_id, "--url", recorded.url))
    times = [" ".join(line.split()[:2]) for line in everything]
    assert times == sorted(times) and len(everything) >= 7, everything
    flaky = _log_lines(ok("runs", "logs", run_id, "--url", recorded.url, "--task", "flaky"))
    assert all(line.split()[3] == "flaky-0" for line in flaky), flaky
    assert sum("about to fail on 7" in line for line in flaky) == 3, flaky  # one per attempt
    assert _log_lines(ok("runs", "logs", run_id, "--url", recorded.url, "--task", "flaky-0")) == flaky
    warnings = _log_lines(ok("runs", "logs", run_id, "--url", recorded.url, "--task", "flaky", "--level", "warning"))
    assert warnings and not any("checking 7" in line for line in warnings), warnings
    assert all(line.split()[2] in ("WARNING", "ERROR") for line in warnings), warnings
    last = _log_lines(ok("runs", "logs", run_id, "--url", recorded.url, "--limit", "1"))
    assert last == everything[-1:], last


def test_logs_of_an_unknown_task_names_the_tasks(recorded: Recorded) -> None:
    message = error("runs", "logs", recorded.ids["broken"][0], "--url", recorded.url, "--task", "nope")
    assert "no task run or task named 'nope'" in message and "its tasks: flaky, publish" in message, message


# -- errors ---------------------------------------------------------------------------


def test_a_bad_since_is_quoted_with_the_accepted_forms(recorded: Recorded) -> None:
    message = error("runs", "ls", "--url", recorded.url, "--since", "last tuesday")
    assert "bad --since 'last tuesday'" in message and "2024-05-01" in message and "2h, 3d" in message, message


def test_a_missing_database_is_not_created(tmp_path: Path, daskflow_home: Path) -> None:
    missing = tmp_path / "nowhere" / "runs.db"
    listed = ok("runs", "ls", "--url", f"sqlite:///{missing}")
    assert listed.startswith(f"No runs have been recorded yet: there is no run store at {missing}."), listed
    message = error("runs", "show", "abc", "--url", f"sqlite:///{missing}")
    assert "No runs have been recorded yet" in message and str(missing) in message, message
    default = ok("artifacts", "ls")  # the default store, in this test's empty home
    assert str(daskflow_home / "runs.db") in default and "--url" in default, default
    assert json.loads(ok("runs", "ls", "--json")) == []
    assert not missing.parent.exists() and not (daskflow_home / "runs.db").exists()


def test_a_file_that_is_no_database_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a database\n" * 100)
    message = error("runs", "ls", "--url", f"sqlite:///{bogus}")
    assert f"cannot read the run store at sqlite:///{bogus}" in message and "Fix:" in message, message


def test_the_default_store_is_the_one_flows_record_to(history: Any, daskflow_home: Path) -> None:
    @flow(name="defaulted")
    def defaulted() -> int:
        return 1

    assert defaulted() == 1
    history()  # written
    out = ok("runs", "ls")
    assert "defaulted /" in out, out
    assert out.rstrip().endswith(f"1 flow run, newest first, in sqlite:///{daskflow_home / 'runs.db'}"), out


def test_in_a_terminal_runs_ls_draws_a_table(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_output, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    out = ok("runs", "ls", "--url", recorded.url)
    assert "─" in out and recorded.ids["etl"][0][:8] in out, out
    show = ok("runs", "show", recorded.ids["broken"][0], "--url", recorded.url)
    assert "─" in show and "after 2 retries (3 attempts)" in show, show
    logs = ok("runs", "logs", recorded.ids["broken"][0], "--url", recorded.url, "--level", "ERROR")
    assert "ERROR" in logs and "flaky-0" in logs, logs
    assert "| 1 |" not in ok("artifacts", "show", "scores", "--url", recorded.url)


def test_report_writes_the_runs_page_where_asked_or_in_the_home(
    recorded: Recorded, tmp_path: Path, daskflow_home: Path
) -> None:
    run_id = recorded.ids["broken"][0]
    target = tmp_path / "pages" / "broken.html"
    out = ok("runs", "report", run_id[:8], "-o", str(target), "--url", recorded.url)
    assert str(target) in out, out
    page = target.read_text()
    assert run_id in page and "flaky" in page and "Failed" in page, page[:2000]
    out = ok("runs", "report", run_id, "--url", recorded.url)
    default = daskflow_home / "reports" / f"{run_id}.html"
    assert str(default) in out and default.read_text().startswith("<!DOCTYPE html>"), out
    unknown = error("runs", "report", "no-such-run", "--url", recorded.url)
    assert "no flow run with id 'no-such-run'" in unknown and "daskflow runs ls" in unknown, unknown


def test_the_groups_are_listed() -> None:
    assert all(name in ok("--help") for name in ("cache", "runs", "artifacts"))
    assert all(name in ok("runs", "--help") for name in ("ls", "show", "logs", "report"))
    assert all(name in ok("artifacts", "--help") for name in ("ls", "show"))


# -- artifacts ------------------------------------------------------------------------


def test_artifacts_ls_and_filters(recorded: Recorded) -> None:
    out = ok("artifacts", "ls", "--url", recorded.url)
    keys = [line.split()[1] for line in out.strip().splitlines()[1:-1]]
    assert keys == ["dashboard", "scores", "scores", "report"], out
    assert f"{recorded.ids['etl'][0]} / double-1" in out and "weekly report" in out, out
    scores = ok("artifacts", "ls", "--url", recorded.url, "--key", "scores")
    assert [line.split()[1] for line in scores.strip().splitlines()[1:-1]] == ["scores", "scores"], scores
    of_wide = ok("artifacts", "ls", "--url", recorded.url, "--run", recorded.ids["wide"][0])
    assert [line.split()[1] for line in of_wide.strip().splitlines()[1:-1]] == ["dashboard"], of_wide
    data = json.loads(ok("artifacts", "ls", "--url", recorded.url, "--json", "--key", "scores", "--limit", "1"))
    assert [(a["description"], a["task_run_name"]) for a in data] == [("scores per name", "double-1")], data


def test_artifacts_show_renders_each_type(recorded: Recorded) -> None:
    markdown = ok("artifacts", "show", "report", "--url", recorded.url)
    assert "Totals" in markdown and "All 12 rows." in markdown and "**" not in markdown, markdown
    table = ok("artifacts", "show", "scores", "--url", recorded.url)  # the latest version
    lines = table.splitlines()
    assert ["name", "score", "note"] in [line.split() for line in lines], table
    assert ["bob", "11", "late"] in [line.split() for line in lines] and "old" not in table, table
    link = ok("artifacts", "show", "dashboard", "--url", recorded.url)
    assert "Dashboard: https://example.org/d/1" in link, link
    by_id = json.loads(ok("artifacts", "ls", "--url", recorded.url, "--json", "--key", "report"))[0]["id"]
    assert "Totals" in ok("artifacts", "show", by_id[:8], "--url", recorded.url)
    message = error("artifacts", "show", "nothing-like-it", "--url", recorded.url)
    assert "no artifact with key or id 'nothing-like-it'" in message and "daskflow artifacts ls" in message, message
