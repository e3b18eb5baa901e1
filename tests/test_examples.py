"""The examples run for real: SQLite files under ``tmp_path``, the default task runner, no mocks.

``examples/`` holds scripts, not a package, so each test loads the script it
needs afresh (module-level settings such as the database URL are read from
the environment at import, and each test has its own). ``DASKFLOW_HOME``
points into ``tmp_path`` so that nothing lands in the real home. The
expected counts follow from how the generators build their data (fixed
counts per day; only amounts, times and customers are random), and the
warehouse contents are checked against the source tables with SQL written
independently of the pipelines.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import runpy
import sqlite3
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from daskflow import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SEED_TEXT = Path(os.environ.get("DASKFLOW_SEED_TEXT", "/work/shared/seed/000_f03d5e6da0fcbb71.txt"))
MARKER = "changed from the seed"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def daskflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "daskflow-home"
    monkeypatch.setenv("DASKFLOW_HOME", str(home))
    monkeypatch.delenv("DASKFLOW_EXAMPLE_DB", raising=False)
    monkeypatch.delenv("DASKFLOW_EXAMPLE_RAW_DIR", raising=False)
    return home


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered under its name while the test runs: pickling and dataclasses look modules up there.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def table_names(db: Path) -> set[str]:
    return {name for (name,) in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- examples/orders_etl.py (make demo) ---------------------------------------------------------

# The warehouse as the source says it must be: valid rows, one per order, enriched, bucketed.
EXPECTED_FACT_COUNTS = """
    SELECT COALESCE(c.tier, 'unknown') AS tier,
           CASE WHEN o.amount <= 10 THEN 'micro' WHEN o.amount <= 100 THEN 'small'
                WHEN o.amount <= 1000 THEN 'medium' ELSE 'large' END AS bucket,
           COUNT(DISTINCT o.order_id)
    FROM orders o LEFT JOIN customers c ON c.customer_id = o.customer_id
    WHERE o.order_id IS NOT NULL AND o.customer_id IS NOT NULL AND o.amount > 0
    GROUP BY 1, 2
"""


@pytest.mark.slow
def test_demo_runs_on_a_local_dask_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], history: Any
) -> None:
    etl = load_example("orders_etl", monkeypatch)
    db = tmp_path / "shop.db"
    assert etl.main(["--db", str(db)]) == 0  # exactly what `make demo` runs
    out = capsys.readouterr().out
    assert "Dask LocalCluster with 2 workers; dashboard: http://127.0.0.1:" in out, out[:500]
    assert query(db, "SELECT COUNT(*) FROM orders_fact") == [(300,)]
    # It ends with the last run's id and where to see it: the commands and the report.
    (last, *_) = history().list_flow_runs(flow_name="daily-order-etl")
    ending = out[out.index("The last flow run:") :]
    assert f"The last flow run: {last.id}" in ending and f"runs show {last.id[:8]}" in ending, ending
    report = Path(ending.split("the report: ")[1].split()[0])
    assert report.exists() and last.id in report.read_text(), ending
    shown = CliRunner().invoke(cli.main, ["runs", "show", last.id[:8]])
    assert shown.exit_code == 0 and "load-to-warehouse" in shown.stdout and "Completed" in shown.stdout, shown.output


def test_demo_loads_every_valid_order_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, daskflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etl = load_example("orders_etl", monkeypatch)
    db = tmp_path / "shop.db"

    assert etl.main(["--db", str(db), "--runner", "threads"]) == 0

    days = len(etl.DAYS)
    assert etl.RAW_ROWS_PER_DAY == 108
    assert query(db, "SELECT COUNT(*) FROM orders") == [(days * etl.RAW_ROWS_PER_DAY,)]
    assert query(db, "SELECT COUNT(*), COUNT(DISTINCT order_id) FROM orders_fact") == [(300, 300)]
    per_day = dict(query(db, "SELECT order_date, COUNT(*) FROM orders_fact GROUP BY order_date"))
    assert per_day == {day: etl.CLEAN_ORDERS_PER_DAY for day in etl.DAYS}
    # Nothing validation must drop got through.
    assert query(db, "SELECT COUNT(*) FROM orders_fact WHERE customer_id IS NULL OR amount <= 0") == [(0,)]
    assert query(db, "SELECT COUNT(*) FROM orders_fact WHERE tier = 'unknown'") == [(days * etl.GUEST_ORDERS_PER_DAY,)]
    loaded = query(db, "SELECT tier, amount_bucket, COUNT(*) FROM orders_fact GROUP BY 1, 2")
    assert sorted(loaded) == sorted(query(db, EXPECTED_FACT_COUNTS))
    # The per-order fields came through unchanged.
    mismatched = query(
        db,
        "SELECT COUNT(*) FROM orders_fact f JOIN orders o ON o.order_id = f.order_id "
        "WHERE f.amount != o.amount OR f.customer_id != o.customer_id OR f.created_at != o.created_at",
    )
    assert mismatched == [(0,)]
    # The load stages rows in a table of its own and drops it in the same transaction.
    assert table_names(db) == {"orders", "customers", "orders_fact"}
    assert not (daskflow_home / "examples" / "orders_etl.db").exists()

    out = capsys.readouterr().out
    assert "(100 new, 0 updated)" in out
    assert "(0 new, 100 updated); orders_fact now 300 rows" in out  # the rerun of the last day
    assert "0 rows before this run, 300 after" in out


def test_demo_run_twice_leaves_the_warehouse_unchanged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etl = load_example("orders_etl", monkeypatch)
    db = tmp_path / "shop.db"

    assert etl.main(["--db", str(db), "--runner", "threads"]) == 0
    first = query(db, "SELECT * FROM orders_fact ORDER BY order_id")
    capsys.readouterr()
    assert etl.main(["--db", str(db), "--runner", "threads"]) == 0
    second = query(db, "SELECT * FROM orders_fact ORDER BY order_id")

    assert len(first) == 300
    assert second == first
    out = capsys.readouterr().out
    assert "300 rows before this run, 300 after" in out
    assert "100 new" not in out


def test_demo_database_defaults_to_the_daskflow_home(monkeypatch: pytest.MonkeyPatch, daskflow_home: Path) -> None:
    etl = load_example("orders_etl", monkeypatch)

    assert etl.main(["--date", "2024-01-15", "--runner", "threads"]) == 0

    db = daskflow_home / "examples" / "orders_etl.db"
    assert query(db, "SELECT order_date, COUNT(*) FROM orders_fact GROUP BY 1") == [("2024-01-15", 100)]


def test_a_broken_feed_fails_the_day_and_loads_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    etl = load_example("orders_etl", monkeypatch)
    db = tmp_path / "shop.db"
    url = etl.sqlite_url(db)
    etl.create_demo_database(url)
    # 20 more rows without a customer: 28 of 128 rows (21.9%) would be dropped, over the 10% limit.
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO orders VALUES (?, NULL, 10.0, 'placed', '2024-01-15 12:00:00')",
            [(f"ORD-BROKEN-{i}",) for i in range(20)],
        )

    # No flow retry: it would only wait 300 s to fail the same way.
    state = etl.daily_order_etl.with_options(retries=0)(execution_date="2024-01-15", db_url=url, return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValueError)
    assert "Data quality issue: 21.9% of records removed" in str(error)
    assert query(db, "SELECT COUNT(*) FROM orders_fact") == [(0,)]


# -- examples/seed_daily_order_etl.py -------------------------------------------------------------


def test_seed_daily_order_etl_loads_and_reruns_idempotently(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "seed_orders.db"
    url = f"sqlite:///{db}"
    monkeypatch.setenv("DASKFLOW_EXAMPLE_DB", url)
    seed = load_example("seed_daily_order_etl", monkeypatch)
    assert seed.DATABASE_URL == url

    seed.create_demo_database(url)
    state = seed.daily_order_etl(execution_date="2024-01-15", return_state=True)

    assert state.is_completed(), state.message
    assert state.result() == {"loaded_count": seed.DEMO_VALID_ORDERS_PER_DAY, "target_table": "orders_fact"}
    first = query(db, "SELECT * FROM orders_fact ORDER BY order_id")
    assert len(first) == 50
    assert {row[0][:12] for row in first} == {"O-2024-01-15"}
    assert "orders_fact_temp" not in table_names(db)
    # Orders by customers with no record are kept, with tier "unknown".
    expected_unknown = query(
        db,
        "SELECT COUNT(DISTINCT order_id) FROM orders WHERE DATE(created_at) = '2024-01-15' "
        "AND customer_id IS NOT NULL AND amount > 0 AND customer_id NOT IN (SELECT customer_id FROM customers)",
    )
    assert query(db, "SELECT COUNT(*) FROM orders_fact WHERE tier = 'unknown'") == expected_unknown

    # The seed's promise: the same parameters, run again, give the same warehouse.
    seed.create_demo_database(url)
    assert seed.daily_order_etl(execution_date="2024-01-15") == state.result()
    assert query(db, "SELECT * FROM orders_fact ORDER BY order_id") == first

    seed.daily_order_etl(execution_date="2024-01-16")
    per_day = query(db, "SELECT order_date, COUNT(*) FROM orders_fact GROUP BY 1")
    assert per_day == [("2024-01-15", 50), ("2024-01-16", 50)]


# -- examples/seed_dynamic_table_pipeline.py ----------------------------------------------------


def test_seed_dynamic_pipeline_maps_over_discovered_tables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, daskflow_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dyn = load_example("seed_dynamic_table_pipeline", monkeypatch)
    url = f"sqlite:///{tmp_path / 'events.db'}"
    dyn.create_demo_database(url)

    with caplog.at_level(logging.INFO):
        state = dyn.dynamic_table_pipeline(url, return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["total_tables"] == 10
    assert summary["valid_tables"] == 9
    assert summary["validity_rate"] == pytest.approx(0.9)
    # Discovery found the events tables (not `customers`), in creation order; one run per table.
    assert [d["table"] for d in summary["details"]] == list(dyn.DEMO_TABLES)
    assert all(d["row_count"] == dyn.DEMO_ROWS_PER_TABLE for d in summary["details"])
    invalid = [d for d in summary["details"] if not d["is_valid"]]
    assert [d["table"] for d in invalid] == ["events_legacy_import"]
    assert invalid[0]["null_rate"] >= 0.1 and invalid[0]["duplicate_rate"] >= 0.05

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("Validation FAILED for events_legacy_import")
    assert sum("Validation passed for events_" in r.getMessage() for r in caplog.records) == 9

    raw_files = sorted(p.name for p in (daskflow_home / "raw").iterdir())
    assert raw_files == sorted(f"{t}.parquet" for t in dyn.DEMO_TABLES)

    again = dyn.dynamic_table_pipeline(url)
    assert again == summary


def test_seed_dynamic_pipeline_fails_below_the_quality_threshold(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dyn = load_example("seed_dynamic_table_pipeline", monkeypatch)
    db = tmp_path / "events.db"
    url = f"sqlite:///{db}"
    dyn.create_demo_database(url)
    # A second broken table: 9 of 11 pass, under the 90% the flow demands.
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE events_broken (event_id INTEGER, user_id INTEGER)")
        conn.executemany("INSERT INTO events_broken VALUES (?, NULL)", [(i,) for i in range(10)])

    state = dyn.dynamic_table_pipeline(url, return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValueError)
    assert str(error) == "Data quality below threshold: 81.8% of tables passed validation"


@pytest.mark.parametrize(
    ("script", "printed"),
    [
        ("seed_daily_order_etl", "{'loaded_count': 50, 'target_table': 'orders_fact'}"),
        ("seed_dynamic_table_pipeline", "{'total_tables': 10, 'valid_tables': 9, 'validity_rate': 0.9,"),
    ],
)
def test_seed_scripts_run_as_main(
    script: str, printed: str, daskflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(EXAMPLES / f"{script}.py"), run_name="__main__")

    assert printed in capsys.readouterr().out
    # With DASKFLOW_EXAMPLE_DB unset, the database is a file under the daskflow home.
    assert any(daskflow_home.glob("seed_*.db"))
    if script == "seed_daily_order_etl":
        # The seed's Deployment.build_from_flow(...).apply(), as written, stored its deployment.
        from daskflow.deployments import Deployment
        from daskflow.runstore import RunStore

        with RunStore(f"sqlite:///{daskflow_home / 'runs.db'}") as store:
            stored = Deployment.load("daily-schedule", store)
        assert stored.flow_name == "daily-order-etl"
        assert stored.entrypoint == f"{EXAMPLES / 'seed_daily_order_etl.py'}:daily_order_etl"
        assert stored.schedule is not None and stored.schedule.to_dict()["cron"] == "0 6 * * *"
        assert stored.parameters == {"execution_date": "{{ data_interval_end }}"}
        assert stored.work_pool.name == "default-agent-pool"


# -- the seed files are the seed's text, changed only where marked -------------------------------


def seed_section(start: str, end: str) -> list[str]:
    text = SEED_TEXT.read_text(encoding="utf-8")
    begin = text.index(start)
    code = text[begin : text.index(end, begin)]
    lines = [line.rstrip() for line in code.rstrip().splitlines()]
    # The one sanctioned edit: the import lines name daskflow instead of prefect.
    return [re.sub(r"^(from|import) prefect\b", r"\1 daskflow", line) for line in lines]


SEED_SECTIONS = {
    # script: (where its code starts in the seed document, the heading that follows it)
    "seed_daily_order_etl": (
        "from prefect import flow, task, get_run_logger\nfrom prefect.tasks",
        "Dynamic Workflow with Task Mapping",
    ),
    "seed_dynamic_table_pipeline": (
        "from prefect import flow, task, get_run_logger\nfrom typing import List",
        "Prefect vs Airflow Decision Matrix",
    ),
}


@pytest.mark.skipif(not SEED_TEXT.exists(), reason=f"the seed document is not at {SEED_TEXT} (set DASKFLOW_SEED_TEXT)")
@pytest.mark.parametrize("script", sorted(SEED_SECTIONS))
def test_seed_files_differ_from_the_seed_only_where_marked(script: str) -> None:
    seed = seed_section(*SEED_SECTIONS[script])
    ours = [line.rstrip() for line in (EXAMPLES / f"{script}.py").read_text(encoding="utf-8").splitlines()]

    unmarked = []
    matcher = difflib.SequenceMatcher(None, seed, ours, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        # A marker inside the changed lines, or in a comment just above them.
        nearby = ours[max(0, j1 - 4) : j2]
        if not any(MARKER in line for line in nearby):
            unmarked.append(f"seed lines {i1 + 1}-{i2}: {seed[i1:i2]!r} -> ours {j1 + 1}-{j2}: {ours[j1:j2]!r}")
    assert not unmarked, "changes without a '# changed from the seed: why' comment:\n" + "\n".join(unmarked)
    assert not [line for line in ours if re.match(r"\s*(from|import) prefect\b", line)]
