"""The ``daskflow`` command line: ``cache ls``, ``clear`` and ``prune`` over real stores,
and its errors (exit code 2, one line, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dask.config
import pytest
from click.testing import CliRunner, Result
from dask.utils import format_bytes

import daskflow
from daskflow import cli
from daskflow.cli import cache as cache_cli
from daskflow.cli import output as cli_output
from daskflow.results import EntryInfo, ResultStore
from daskflow.results.storage import temp_name

PAST = datetime.now(UTC) - timedelta(days=1)
FUTURE = datetime.now(UTC) + timedelta(days=1)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return (tmp_path / "results").as_uri()


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), input=input)


def write(url: str, key: str, task_name: str, *, rows: int = 10, expiration: datetime | None = None) -> EntryInfo:
    info = ResultStore(url).write(key, list(range(rows)), task_name=task_name, expiration=expiration)
    assert info is not None, f"could not write entry {key!r}"
    return info


def files(url: str) -> set[str]:
    folder = Path(url.removeprefix("file://"))
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    assert "Fix" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- the group -----------------------------------------------------------------------


def test_version_and_groups() -> None:
    assert run("--version").output.strip() == f"daskflow {daskflow.__version__}"
    result = run("--help")
    assert result.exit_code == 0 and "cache" in result.output
    cache_help = run("cache", "--help").output
    assert all(name in cache_help for name in ("ls", "clear", "prune"))


# -- ls ------------------------------------------------------------------------------


def test_ls_lists_entries_with_sizes_and_a_total(store_url: str) -> None:
    small = write(store_url, "k-small", "extract")
    big = write(store_url, "k-big", "load", rows=50_000, expiration=FUTURE)
    result = run("cache", "ls", "--storage", store_url)
    assert result.exit_code == 0, result.output
    header, *rows, total = result.stdout.strip().splitlines()
    assert header.split() == ["key", "task", "created", "(UTC)", "expires", "(UTC)", "format", "size"]
    assert [row.split()[:2] for row in rows] == [["k-small", "extract"], ["k-big", "load"]]  # oldest first
    assert rows[0].split()[4:] == ["never", "python", *format_bytes(small.size).split()]
    assert rows[1].endswith(format_bytes(big.size))
    assert FUTURE.strftime("%Y-%m-%d %H:%M:%S") in rows[1]
    assert total == f"2 entries, {format_bytes(small.size + big.size)} total, in {store_url}"
    assert big.size > 1024 and format_bytes(big.size).endswith("iB")  # shown with a binary prefix


def test_ls_filters_by_task_and_expiry(store_url: str) -> None:
    write(store_url, "a1", "extract", expiration=PAST)
    write(store_url, "a2", "extract", expiration=FUTURE)
    write(store_url, "b1", "load", expiration=PAST)

    def keys(*args: str) -> list[str]:
        result = run("cache", "ls", "--storage", store_url, *args)
        assert result.exit_code == 0, result.output
        return [line.split()[0] for line in result.stdout.strip().splitlines()[1:-1]]

    assert keys("--task", "extract") == ["a1", "a2"]
    assert keys("--expired") == ["a1", "b1"]
    assert keys("--expired", "--task", "load") == ["b1"]
    assert "(expired)" in run("cache", "ls", "--storage", store_url, "--task", "load").stdout
    nothing = run("cache", "ls", "--storage", store_url, "--task", "nope")
    assert nothing.exit_code == 0
    assert nothing.stdout.strip() == f"No entries of task 'nope' among the 3 entries in {store_url}."


def test_ls_empty_default_store_says_where_it_looked(daskflow_home: Path) -> None:
    result = run("cache", "ls")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"No cache entries in {(daskflow_home / 'results').as_uri()}")
    assert "--storage" in result.stdout


def test_ls_default_store_follows_the_setting(store_url: str) -> None:
    write(store_url, "configured", "extract")
    with dask.config.set({"daskflow.results.storage": store_url}):
        result = run("cache", "ls")
    assert result.exit_code == 0, result.output
    assert "configured" in result.stdout and result.stdout.rstrip().endswith(f"in {store_url}")


def test_ls_over_memory_storage(memory_url: str) -> None:
    info = write(memory_url, "in-memory", "extract")
    result = run("cache", "ls", "--storage", memory_url)
    assert result.exit_code == 0, result.output
    assert "in-memory" in result.stdout
    assert f"1 entry, {format_bytes(info.size)} total" in result.stdout


def test_ls_in_a_terminal_draws_a_table(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_output, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    info = write(store_url, "k-term", "load[eu]")  # brackets: not taken as rich markup
    result = run("cache", "ls", "--storage", store_url)
    assert result.exit_code == 0, result.output
    assert "─" in result.stdout  # the rule under the header
    assert "load[eu]" in result.stdout and format_bytes(info.size) in result.stdout


def test_ls_warns_about_an_unreadable_entry_on_stderr(store_url: str) -> None:
    write(store_url, "good", "extract")
    (Path(store_url.removeprefix("file://")) / "broken.parquet").write_bytes(b"not parquet")
    result = run("cache", "ls", "--storage", store_url)
    assert result.exit_code == 0, result.output
    assert "good" in result.stdout and "broken" not in result.stdout
    assert result.stderr.startswith("warning: cached result 'broken'") and "Traceback" not in result.stderr


# -- clear ---------------------------------------------------------------------------


def test_clear_with_yes_removes_everything_and_reports_bytes(store_url: str) -> None:
    sizes = [write(store_url, key, "extract").size for key in ("c1", "c2")]
    result = run("cache", "clear", "--storage", store_url, "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"Removed 2 entries from {store_url}, freeing {format_bytes(sum(sizes))}."
    assert files(store_url) == set()


def test_clear_asks_first_and_a_no_keeps_the_entries(store_url: str) -> None:
    info = write(store_url, "kept", "extract")
    result = run("cache", "clear", "--storage", store_url, input="n\n")
    assert result.exit_code == 1
    assert f"Remove 1 entry ({format_bytes(info.size)}) and any temp files from {store_url}?" in result.output
    assert files(store_url) == {"kept.parquet"}


def test_clear_confirmed_counts_temp_files_too(store_url: str) -> None:
    write(store_url, "gone", "extract")
    temp = temp_name("gone.parquet")
    (Path(store_url.removeprefix("file://")) / temp).write_bytes(b"partial")
    result = run("cache", "clear", "--storage", store_url, input="y\n")
    assert result.exit_code == 0, result.output
    assert "Removed 1 entry and 1 temp or unreadable file" in result.stdout
    assert files(store_url) == set()


# -- prune ---------------------------------------------------------------------------


def test_prune_removes_expired_entries_and_old_orphans_only(store_url: str) -> None:
    expired = write(store_url, "expired", "extract", expiration=PAST)
    write(store_url, "live", "extract", expiration=FUTURE)
    folder = Path(store_url.removeprefix("file://"))
    now = datetime.now(UTC)
    orphan = temp_name("x.parquet", now - timedelta(hours=3))
    fresh = temp_name("y.parquet", now - timedelta(minutes=5))
    (folder / orphan).write_bytes(b"o" * 100)
    (folder / fresh).write_bytes(b"f" * 100)
    (folder / "broken.parquet").write_bytes(b"not parquet")

    result = run("cache", "prune", "--storage", store_url, "--grace", "1h")

    assert result.exit_code == 0, result.output
    first, *rest = result.stdout.strip().splitlines()
    assert first == (
        f"Pruned {store_url}: removed 1 expired entry and 1 orphan temp file, "
        f"freeing {format_bytes(expired.size + 100)}."
    )
    assert rest[0].startswith("Left 1 unreadable entry") and rest[1].strip() == f"{store_url}/broken.parquet"
    assert files(store_url) == {"live.parquet", fresh, "broken.parquet"}


def test_prune_grace_decides_which_temp_files_are_orphans(store_url: str) -> None:
    folder = Path(store_url.removeprefix("file://"))
    folder.mkdir(parents=True)
    temp = temp_name("z.parquet", datetime.now(UTC) - timedelta(minutes=10))
    (folder / temp).write_bytes(b"t")
    kept = run("cache", "prune", "--storage", store_url)  # default grace: one hour
    assert kept.exit_code == 0 and "0 orphan temp files" in kept.stdout
    assert files(store_url) == {temp}
    removed = run("cache", "prune", "--storage", store_url, "--grace", "5 minutes")
    assert removed.exit_code == 0 and "1 orphan temp file," in removed.stdout
    assert files(store_url) == set()


# -- bad input -----------------------------------------------------------------------


def test_unknown_protocol_is_a_one_line_error() -> None:
    assert_one_line_error(run("cache", "ls", "--storage", "nosuchproto://bucket/x"), "nosuchproto://bucket/x")


def test_unreachable_storage_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    url = (tmp_path / "a-file" / "results").as_uri()
    for command in ("ls", "prune"):
        assert_one_line_error(run("cache", command, "--storage", url), "cannot reach result storage", url)
    assert_one_line_error(run("cache", "clear", "--storage", url, "--yes"), "cannot reach")


@pytest.mark.parametrize("option", ["anon", "=true", "two words=1"])
def test_bad_storage_option_is_a_one_line_error(option: str, memory_url: str) -> None:
    result = run("cache", "ls", "--storage", memory_url, "--storage-option", option)
    assert_one_line_error(result, f"bad --storage-option {option!r}", "KEY=VALUE")


@pytest.mark.parametrize("grace", ["soon", "", "-1h", "3 fortnights"])
def test_bad_grace_is_a_one_line_error(grace: str, store_url: str) -> None:
    assert_one_line_error(run("cache", "prune", "--storage", store_url, "--grace", grace), "bad --grace")


def test_storage_option_values_are_yaml_scalars() -> None:
    raw = ["anon=true", "port=9000", "ratio=0.5", "token='0123'", "url=http://h:1/x", "a=[1]", "b=x=y"]
    assert cache_cli._parse_storage_options(raw) == {
        "anon": True,
        "port": 9000,
        "ratio": 0.5,
        "token": "0123",
        "url": "http://h:1/x",
        "a": "[1]",
        "b": "x=y",
    }


# -- packaging -----------------------------------------------------------------------


def test_console_script_lists_a_store(store_url: str) -> None:
    info = write(store_url, "from-script", "extract")
    script = Path(sys.executable).with_name("daskflow")
    assert script.exists(), f"no console script at {script}: pip install -e . again"
    proc = subprocess.run(
        [str(script), "cache", "ls", "--storage", store_url], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "from-script" in proc.stdout
    assert proc.stdout.rstrip().endswith(f"1 entry, {format_bytes(info.size)} total, in {store_url}")


def test_import_daskflow_imports_neither_the_cli_nor_what_serving_a_flow_needs() -> None:
    # click is the CLI's; pydantic (event triggers) and croniter (schedules) are imported by serve()
    # and to_deployment(): together they were a quarter of `import daskflow`, paid by every worker.
    heavy = ("click", "pydantic", "croniter", "daskflow.event_triggers", "daskflow.schedules")
    code = f"import sys, daskflow; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
