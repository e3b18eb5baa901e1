"""Daily order ETL on daskflow, end to end, against a real (SQLite) database.

This is ``make demo``: the seed's "Complete ETL Pipeline" written to run.
It first creates a source database with three days of synthetic orders and
customers (from a fixed random seed, so every run sees the same data), then
runs the ``daily-order-etl`` flow once per day:

1. extract the day's orders from the ``orders`` table;
2. validate them: drop rows with a missing key or amount, non-positive
   amounts and orders the feed delivered twice, and refuse the whole day if
   more than 10% of it would be dropped (that is a broken feed, not noise);
3. enrich them with the customer's tier and segment and an amount bucket;
4. upsert them into ``orders_fact``, keyed on ``order_id``, in one transaction.

Because the load is an upsert, a rerun (a retry, a backfill, a second
``make demo``) leaves the warehouse exactly as it was; the script reruns the
last day to show it. It ends by printing the last flow run's id, the
``daskflow runs ...`` commands that show it from the run history, and the
path of its HTML report. Run it::

    python examples/orders_etl.py                    # database under ~/.daskflow (or $DASKFLOW_HOME)
    python examples/orders_etl.py --db /tmp/shop.db  # anywhere else
    python examples/orders_etl.py --date 2024-01-15  # one day only

To point it at your own warehouse, pass a SQLAlchemy URL as the flow's
``db_url``: everything is portable SQL except the upsert statement, which is
the SQLite/PostgreSQL ``INSERT ... ON CONFLICT`` form.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from distributed import Client, LocalCluster

from daskflow import flow, get_run_logger, settings, task
from daskflow.report import write_report
from daskflow.runstore import RunStore
from daskflow.task_runners import DaskTaskRunner
from daskflow.tasks import task_input_hash

# -- the synthetic source data ------------------------------------------------------------------
# The counts are fixed (only amounts, times, statuses and customers are drawn at random), so the
# tests can state exactly what the warehouse must hold.

DAYS = ("2024-01-14", "2024-01-15", "2024-01-16")
CUSTOMERS = 40
CLEAN_ORDERS_PER_DAY = 100  # orders that pass validation
GUEST_ORDERS_PER_DAY = 3  # of those, placed by customers missing from `customers`: tier "unknown"
DUPLICATES_PER_DAY = 3  # the feed delivers some orders twice (at-least-once delivery)
INVALID_ROWS_PER_DAY = 5  # no order_id, no customer_id, no amount, a zero amount, a refund
RAW_ROWS_PER_DAY = CLEAN_ORDERS_PER_DAY + DUPLICATES_PER_DAY + INVALID_ROWS_PER_DAY
RANDOM_SEED = 20240115

TIERS = ("bronze", "silver", "gold", "platinum")
SEGMENTS = ("consumer", "small_business", "enterprise")
STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled")
AMOUNT_BUCKETS = ("micro", "small", "medium", "large")
MAX_REMOVAL_RATE = 0.10

metadata = sa.MetaData()

# The raw feed has no keys on purpose: it is where duplicates and missing values arrive.
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.Text),
    sa.Column("customer_id", sa.Text),
    sa.Column("amount", sa.Float),
    sa.Column("status", sa.Text),
    sa.Column("created_at", sa.Text),  # ISO 8601 UTC, "YYYY-MM-DD HH:MM:SS"
)
customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("tier", sa.Text, nullable=False),
    sa.Column("segment", sa.Text, nullable=False),
)
# The warehouse table. Its primary key is what makes the load an upsert rather than an append.
orders_fact = sa.Table(
    "orders_fact",
    metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("amount", sa.Float, nullable=False),
    sa.Column("status", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("order_date", sa.Text, nullable=False),
    sa.Column("tier", sa.Text, nullable=False),
    sa.Column("segment", sa.Text),
    sa.Column("amount_bucket", sa.Text, nullable=False),
)
FACT_COLUMNS = tuple(c.name for c in orders_fact.columns)


def default_db_path() -> Path:
    return settings.home() / "examples" / "orders_etl.db"


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


@contextmanager
def connect(db_url: str) -> Iterator[sa.Engine]:
    # One engine per task run, disposed at the end: tasks may run in other threads or processes,
    # and a pooled SQLite connection must not outlive the run that opened it.
    engine = sa.create_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def synthetic_source_rows(seed: int = RANDOM_SEED) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The customers and raw order rows of the demo: same seed, same rows."""
    rng = random.Random(seed)
    customer_rows = [
        {
            "customer_id": f"C{i:04d}",
            "tier": rng.choices(TIERS, weights=(50, 30, 15, 5))[0],
            "segment": rng.choice(SEGMENTS),
        }
        for i in range(1, CUSTOMERS + 1)
    ]
    order_rows: list[dict[str, Any]] = []
    for day_index, day in enumerate(DAYS):
        stamp = day.replace("-", "")

        def created_at() -> str:
            moment = datetime.fromisoformat(day) + timedelta(seconds=rng.randrange(24 * 3600))
            return moment.strftime("%Y-%m-%d %H:%M:%S")

        guests = set(rng.sample(range(CLEAN_ORDERS_PER_DAY), GUEST_ORDERS_PER_DAY))
        clean = []
        for i in range(CLEAN_ORDERS_PER_DAY):
            customer = f"G{day_index}{i:03d}" if i in guests else f"C{rng.randint(1, CUSTOMERS):04d}"
            # Log-normal amounts around $60: mostly small and medium, a few micro and large.
            amount = max(0.01, round(rng.lognormvariate(math.log(60), 1.5), 2))
            clean.append(
                {
                    "order_id": f"ORD-{stamp}-{i:04d}",
                    "customer_id": customer,
                    "amount": amount,
                    "status": rng.choices(STATUSES, weights=(10, 25, 25, 35, 5))[0],
                    "created_at": created_at(),
                }
            )
        invalid: list[dict[str, Any]] = [
            {"order_id": None, "customer_id": "C0001", "amount": 25.0},
            {"order_id": f"ORD-{stamp}-9001", "customer_id": None, "amount": 42.5},
            {"order_id": f"ORD-{stamp}-9002", "customer_id": "C0002", "amount": None},
            {"order_id": f"ORD-{stamp}-9003", "customer_id": "C0003", "amount": 0.0},
            {"order_id": f"ORD-{stamp}-9004", "customer_id": "C0004", "amount": -19.99},  # a refund
        ]
        for row in invalid:
            row.update(status="placed", created_at=created_at())
        duplicates = [dict(row) for row in rng.sample(clean, DUPLICATES_PER_DAY)]
        order_rows += clean + invalid + duplicates
    return customer_rows, order_rows


def create_demo_database(db_url: str) -> dict[str, int]:
    """(Re)create the source tables with the synthetic data; create ``orders_fact`` if missing.

    The source is rebuilt on every run, identically; the warehouse table is
    kept, so that a second run really exercises the upsert.
    """
    customer_rows, order_rows = synthetic_source_rows()
    with connect(db_url) as engine, engine.begin() as conn:
        metadata.drop_all(conn, tables=[orders, customers])
        metadata.create_all(conn)  # checkfirst: an existing orders_fact is left as it is
        conn.execute(customers.insert(), customer_rows)
        conn.execute(orders.insert(), order_rows)
    return {"customers": len(customer_rows), "orders": len(order_rows)}


# -- tasks ---------------------------------------------------------------------------------------


@task(
    name="extract-orders",
    retries=3,  # the source database may be briefly unreachable
    retry_delay_seconds=10,
    cache_key_fn=task_input_hash,  # same database and day within the hour: reuse the extract
    cache_expiration=timedelta(hours=1),
    log_prints=True,
)
def extract_orders(db_url: str, execution_date: str) -> pd.DataFrame:
    """The raw orders created on ``execution_date`` (UTC), as the feed delivered them."""
    query = sa.text(
        "SELECT order_id, customer_id, amount, status, created_at FROM orders WHERE DATE(created_at) = :day"
    )
    with connect(db_url) as engine:
        df = pd.read_sql(query, engine, params={"day": execution_date})
    print(f"Extracted {len(df)} orders for {execution_date}")
    return df


# No retries: a day that fails validation fails the same way every time; retrying only delays the alert.
@task(name="validate-raw-data")
def validate_raw_data(df: pd.DataFrame) -> pd.DataFrame:
    """Drop rows the warehouse cannot hold; fail if that would be more than 10% of the day."""
    initial_count = len(df)
    df = df.dropna(subset=["order_id", "customer_id", "amount"])
    df = df[df["amount"] > 0]
    # The feed delivers at least once; a replayed order is the same row again, so keep the first.
    df = df.drop_duplicates(subset=["order_id"])
    removed = initial_count - len(df)
    removal_rate = removed / initial_count if initial_count else 0.0
    if removal_rate > MAX_REMOVAL_RATE:
        raise ValueError(
            f"Data quality issue: {removal_rate:.1%} of records removed during validation "
            f"({removed} of {initial_count}; the limit is {MAX_REMOVAL_RATE:.0%})"
        )
    get_run_logger().info(
        "Validation passed: kept %d of %d rows (%.1f%% removed)", len(df), initial_count, 100 * removal_rate
    )
    return df


@task(name="transform-orders", retries=2, retry_delay_seconds=30)
def transform_orders(db_url: str, df: pd.DataFrame) -> pd.DataFrame:
    """Add the customer's tier and segment, the order date and an amount bucket."""
    with connect(db_url) as engine:
        customer_df = pd.read_sql(sa.text("SELECT customer_id, tier, segment FROM customers"), engine)
    enriched = df.merge(customer_df, on="customer_id", how="left")
    # Guest checkouts have no customer record; keep the order, mark the tier.
    enriched["tier"] = enriched["tier"].fillna("unknown")
    enriched["order_date"] = pd.to_datetime(enriched["created_at"]).dt.strftime("%Y-%m-%d")
    enriched["amount_bucket"] = pd.cut(
        enriched["amount"],
        bins=[0, 10, 100, 1000, float("inf")],
        labels=list(AMOUNT_BUCKETS),
    ).astype(str)
    get_run_logger().info("Transformed %d orders", len(enriched))
    return enriched[list(FACT_COLUMNS)]


@task(name="load-to-warehouse", retries=3, retry_delay_seconds=60)
def load_to_warehouse(db_url: str, df: pd.DataFrame, target_table: str = "orders_fact") -> dict[str, Any]:
    """Upsert ``df`` into ``target_table`` keyed on ``order_id``; rerunning it changes nothing.

    The rows go to a staging table first, then one ``INSERT ... SELECT ... ON
    CONFLICT DO UPDATE`` merges them. All of it is one transaction: a failed
    load leaves neither half a day nor a stray staging table behind, and the
    staging table is never visible to anyone else.
    """
    # A unique name, so that two days loading at once cannot trample each other's staging rows.
    staging = f"_staging_{target_table}_{uuid.uuid4().hex[:12]}"
    columns = ", ".join(FACT_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in FACT_COLUMNS if c != "order_id")
    # SQLite needs a WHERE clause after INSERT ... SELECT when ON CONFLICT follows: without it
    # the parser reads "ON" as the start of a join constraint. PostgreSQL accepts it as well.
    upsert = sa.text(
        f"INSERT INTO {target_table} ({columns}) SELECT {columns} FROM {staging} WHERE true "
        f"ON CONFLICT (order_id) DO UPDATE SET {updates}"
    )
    with connect(db_url) as engine, engine.begin() as conn:
        df.to_sql(staging, conn, index=False)
        existing = conn.execute(
            sa.text(f"SELECT COUNT(*) FROM {staging} s JOIN {target_table} t ON t.order_id = s.order_id")
        ).scalar_one()
        conn.execute(upsert)
        conn.execute(sa.text(f"DROP TABLE {staging}"))
        total = conn.execute(sa.text(f"SELECT COUNT(*) FROM {target_table}")).scalar_one()
    result = {
        "loaded_count": len(df),
        "inserted": len(df) - existing,
        "updated": existing,
        "target_table": target_table,
        "table_rows": total,
    }
    get_run_logger().info(
        "Loaded %d records to %s (%d new, %d updated)", len(df), target_table, result["inserted"], existing
    )
    return result


@task(name="send-notification")
def send_notification(message: str, severity: str = "info") -> None:
    """Tell people the day is loaded. In production: Slack, PagerDuty, e-mail."""
    get_run_logger().info("Notification [%s]: %s", severity, message)


# -- the flow ------------------------------------------------------------------------------------


@flow(
    name="daily-order-etl",
    description="Daily order extraction, transformation, and warehouse load",
    log_prints=True,
    retries=1,  # a whole-run retry covers what task retries cannot, e.g. the warehouse restarting
    retry_delay_seconds=300,
)
def daily_order_etl(execution_date: str | None = None, db_url: str | None = None) -> dict[str, Any]:
    """Extract, validate, transform and load one day of orders."""
    if execution_date is None:
        # A daily run loads yesterday: today's orders are still arriving.
        execution_date = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    if db_url is None:
        db_url = sqlite_url(default_db_path())
    logger = get_run_logger()
    logger.info("Starting daily order ETL for %s", execution_date)

    raw_df = extract_orders(db_url, execution_date)
    validated_df = validate_raw_data(raw_df)
    transformed_df = transform_orders(db_url, validated_df)
    load_result = load_to_warehouse(db_url, transformed_df, "orders_fact")
    send_notification(
        message=f"ETL completed for {execution_date}: {load_result['loaded_count']} records loaded",
        severity="info",
    )
    return {"execution_date": execution_date, "extracted": len(raw_df), **load_result}


# -- the script ----------------------------------------------------------------------------------


def read_warehouse(db_url: str) -> pd.DataFrame:
    with connect(db_url) as engine:
        return pd.read_sql(sa.text("SELECT * FROM orders_fact ORDER BY order_id"), engine)


def print_report(fact: pd.DataFrame) -> None:
    print(f"\norders_fact: {len(fact)} orders, ${fact['amount'].sum():,.2f} in total")
    tiers = [t for t in (*TIERS, "unknown") if t in set(fact["tier"])]
    counts = pd.crosstab(
        pd.Categorical(fact["tier"], categories=tiers, ordered=True),
        pd.Categorical(fact["amount_bucket"], categories=AMOUNT_BUCKETS, ordered=True),
        rownames=["tier"],
        colnames=["amount_bucket"],
        margins=True,
        margins_name="total",
        dropna=False,
    )
    print("\nOrders per tier and amount bucket:")
    print(counts.to_string())
    print("\nThe five largest orders:")
    columns = ["order_id", "order_date", "customer_id", "tier", "segment", "amount", "status"]
    print(fact.nlargest(5, "amount")[columns].to_string(index=False))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--db", type=Path, default=None, help="SQLite file (default: examples/orders_etl.db under the daskflow home)"
    )
    parser.add_argument(
        "--runner",
        choices=("dask", "threads"),
        default="dask",
        help="where the tasks run: a LocalCluster started for the demo (default), or threads of this process",
    )
    parser.add_argument(
        "--date",
        dest="dates",
        action="append",
        type=lambda s: date.fromisoformat(s).isoformat(),
        help=f"a day to load, YYYY-MM-DD; repeat for several (default: all of {', '.join(DAYS)})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    db_path = args.db if args.db is not None else default_db_path()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db_url = sqlite_url(db_path)
    dates = args.dates or list(DAYS)

    source = create_demo_database(db_url)
    before = len(read_warehouse(db_url))
    print(f"Source database {db_path}: {source['orders']} raw order rows, {source['customers']} customers")
    print(f"orders_fact holds {before} rows before this run\n")

    with contextlib.ExitStack() as stack:
        etl = daily_order_etl
        if args.runner == "dask":
            # One cluster for every run of the demo; each flow run uses it and leaves it open.
            cluster = stack.enter_context(
                LocalCluster(n_workers=2, threads_per_worker=2, host="127.0.0.1", dashboard_address="127.0.0.1:0")
            )
            client = stack.enter_context(Client(cluster, set_as_default=False))
            print(
                f"Dask LocalCluster with {len(client.scheduler_info()['workers'])} workers; dashboard: {client.dashboard_link}\n"
            )
            etl = daily_order_etl.with_options(task_runner=DaskTaskRunner(client=client))
        status, last = run_days(etl, db_url, dates)
    if status:
        return status

    fact = read_warehouse(db_url)
    print_report(fact)
    print(f"\norders_fact: {before} rows before this run, {len(fact)} after.")
    print(f"Run it again: the upsert keeps the count at {len(fact)}.")
    where_to_look(last)
    return 0


def run_days(etl: Any, db_url: str, dates: list[str]) -> tuple[int, Any]:
    """Run the flow once per day; the last day twice, which must change nothing.

    Returns the exit status and the last run's final state.
    """
    state = None
    for day in [*dates, dates[-1]]:
        state = etl(execution_date=day, db_url=db_url, return_state=True)
        if not state.is_completed():
            print(f"{day}: the flow run ended {state.name}: {state.message}", file=sys.stderr)
            where_to_look(state)
            return 1, state
        r = state.result()
        print(
            f"{day}: extracted {r['extracted']}, loaded {r['loaded_count']} "
            f"({r['inserted']} new, {r['updated']} updated); orders_fact now {r['table_rows']} rows"
        )
    return 0, state


def where_to_look(state: Any) -> None:
    """Print the last flow run's id and how to see it: its report, and the commands to read its history."""
    run = state.flow_run
    print(f"\nThe last flow run: {run.id} ({run.flow_name} / {run.name}), {state.name}")
    if not settings.get("runstore.enabled", True):
        print("Run history is off (daskflow.runstore.enabled is false): nothing was recorded.")
        return
    with RunStore() as store:
        report = write_report(store, run.id)
    command = daskflow_command()
    short = run.id[:8]  # any unique prefix of the id names the run
    see = [
        (f"{command} runs show {short}", "its task runs: states, retries, workers, the failure"),
        (f"{command} runs logs {short}", "what it logged"),
        (f"{command} runs ls", "every run recorded so far"),
    ]
    width = max(len(line) for line, _ in see)
    print("See it:")
    for line, what in see:
        print(f"  {line:<{width}}    {what}")
    print(f"  the report: {report}  (open it in a browser)")
    print(f"Watch it live: {command} server   then open http://127.0.0.1:4200/flow-runs/{run.id}")


def daskflow_command() -> str:
    """How to call the daskflow CLI from here: ``daskflow`` when it is on PATH, else its path in this venv."""
    installed = Path(sys.executable).parent / "daskflow"
    on_path = shutil.which("daskflow")
    if on_path is not None and Path(on_path).resolve() == installed.resolve():
        return "daskflow"
    if installed.exists():
        relative = os.path.relpath(installed)
        return relative if not relative.startswith("..") else str(installed)
    return "daskflow"


if __name__ == "__main__":
    raise SystemExit(main())
