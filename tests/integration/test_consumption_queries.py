"""The example queries of ``docs/guides/consumption-layer.md`` run against published gold.

A small silver lake (three accounts, six orders, three opportunities, three behaviour events)
is written with delta-rs, gold is built from it (:func:`cdc.gold.build_gold`) and published
(:func:`cdc.warehouse.publish.publish`) to PostgreSQL and to DuckDB. Every ```sql block of the
guide's "Example queries" section must return rows on both, the same rows; the demo's query
(:data:`cdc_demo.run.DEMO_QUERY`, one of the guide's) must return the answer computed here by hand
from the silver rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl
import pytest
from deltalake import write_deltalake

from cdc.config.lake import table_paths
from cdc.config.settings import Settings, load_settings
from cdc.gold import GOLD_TABLES, build_gold
from cdc.gold.frames import SILVER_COLUMNS
from cdc.warehouse.publish import publish
from cdc_demo.run import DEMO_QUERY
from tests.support.paths import REPO_ROOT
from tests.support.postgres import PostgresDatabase

pytestmark = pytest.mark.integration

GUIDE = REPO_ROOT / "docs" / "guides" / "consumption-layer.md"
AS_OF = date(2026, 3, 10)
PASSWORD_ENV = "CDC_TEST_CONSUMPTION_PASSWORD"
D = Decimal


def example_queries(text: str) -> list[str]:
    """The ```sql blocks of the guide's ``## Example queries`` section."""
    match = re.search(r"^## Example queries\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{GUIDE} has no '## Example queries' section"
    return [q.strip() for q in re.findall(r"^```sql\s*$(.*?)^```\s*$", match.group(1), re.M | re.S)]


def at(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


SINCE = datetime(2025, 10, 1, tzinfo=UTC)
NAMES = {"A1": ("Acme", "DE"), "A2": ("Borealis", "US"), "A3": ("Cobalt", "JP")}


def _orders() -> list[dict[str, Any]]:
    rows = []
    # order, account, contact, amount, currency, placed, later statuses (status, hours after)
    for order_id, account, contact, amount, currency, placed, later in [
        ("ORD1", "A1", "C1", "120.00", "USD", at(3, 1, 10), [("paid", 1)]),
        ("ORD2", "A1", "C1", "30.00", "USD", at(3, 5, 10), [("paid", 2)]),
        ("ORD3", "A2", "C2", "200.00", "USD", at(3, 2, 9), [("paid", 1), ("shipped", 20)]),
        ("ORD4", "A2", "C2", "50.00", "USD", at(3, 3, 9), [("cancelled", 1)]),
        ("ORD5", "A3", "C3", "75.00", "USD", at(3, 4, 9), []),
        ("ORD6", "A3", "C1", "40.00", "EUR", at(3, 6, 9), [("paid", 3)]),  # A1's contact
    ]:
        for status, hours in [("created", 0), *later]:
            rows.append(
                {
                    "event_id": f"{order_id}-{status}",
                    "order_id": order_id,
                    "account_id": account,
                    "contact_id": contact,
                    "status": status,
                    "amount": D(amount),
                    "currency": currency,
                    "ordered_at": placed,
                    "event_ts": placed + timedelta(hours=hours),
                }
            )
    return rows


SILVER: dict[str, list[dict[str, Any]]] = {
    "dim_account": [
        {
            "account_id": account,
            "name": name,
            "industry": "Retail",
            "country": country,
            "annual_revenue": D("1000000.00"),
            "tier": "smb",
            "owner_email": f"owner.{account.lower()}@crm.example",
            "created_at": SINCE,
            "valid_from": SINCE,
            "valid_to": None,
        }
        for account, (name, country) in NAMES.items()
    ],
    "dim_contact": [
        {"contact_id": f"C{i}", "account_id": f"A{i}", "valid_from": SINCE, "valid_to": None}
        for i in (1, 2, 3)
    ],
    "dim_opportunity": [
        {
            "opportunity_id": f"O{i}",
            "account_id": f"A{i}",
            "stage": stage,
            "amount": D(amount),
            "currency": "USD",
            "probability": probability,
            "valid_from": SINCE,
            "valid_to": None,
        }
        for i, stage, amount, probability in [
            (1, "proposal", "1000.00", 50),
            (2, "negotiation", "400.00", 80),
            (3, "closed_won", "900.00", 100),
        ]
    ],
    "dim_fx_rate": [
        {
            "base_currency": "EUR",
            "quote_currency": "USD",
            "rate": D("1.10000000"),
            "valid_from": datetime(2025, 1, 1, tzinfo=UTC),
            "valid_to": None,
        }
    ],
    "fact_orders": _orders(),
    "fact_behavior": [
        {
            "event_id": f"E{i}",
            "contact_id": f"C{i}",
            "session_id": f"S{i}",
            "event_type": event_type,
            "occurred_at": at(3, 6 + i, 12),
        }
        for i, event_type in [(1, "page_view"), (2, "click"), (3, "signup")]
    ],
}

# By hand: revenue is paid (or later) orders, in USD (EUR at 1.10); ORD4 is cancelled and ORD5
# only placed. Every order is within 90 days of AS_OF.
TOP_ACCOUNTS = [
    ("Borealis", "AMER", D("200.00"), "USD"),
    ("Acme", "EMEA", D("150.00"), "USD"),
    ("Cobalt", "APAC", D("44.00"), "USD"),
]
# Buying contacts: ORD1/ORD2 by C1 (A1's), ORD3 by C2 (A2's); Cobalt's only paid order, ORD6,
# was placed by A1's contact C1, so it has none.
FEW_BUYERS = [
    ("Cobalt", D("44.00"), 0, 1),
    ("Borealis", D("200.00"), 1, 1),
    ("Acme", D("150.00"), 1, 1),
]


@pytest.fixture(scope="module")
def published(postgres: PostgresDatabase, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Gold built from the small silver lake and published to PostgreSQL and DuckDB."""
    root = tmp_path_factory.mktemp("consumption")
    settings = load_settings(
        "local",
        [f"lake.root={root / 'lake'}", f"checkpoints.root={root / 'checkpoints'}"],
        config_dir=REPO_ROOT / "config",
        environ={},
    )
    for pipeline in settings.pipelines.values():
        rows = SILVER.get(pipeline.target)
        if rows is None:
            continue
        frame = pl.DataFrame(rows, schema=SILVER_COLUMNS[pipeline.target])
        if pipeline.kind == "scd2":
            frame = frame.with_columns(is_current=pl.col("valid_to").is_null())
        write_deltalake(
            table_paths(settings, pipeline)["silver"],
            frame.to_arrow(compat_level=pl.CompatLevel.oldest()),
        )
    built = build_gold(settings, as_of=AS_OF)
    assert [b.table for b in built if b.rows] == list(GOLD_TABLES)
    assert {r.table for r in publish(settings)} == set(GOLD_TABLES)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PASSWORD_ENV, postgres.password)
        pg = load_settings(
            "local",
            [f"lake.root={root / 'lake'}", *postgres.overrides("gold", PASSWORD_ENV)],
            config_dir=REPO_ROOT / "config",
            environ={},
        )
        assert all(r.mode == "full" for r in publish(pg))
    return settings


@pytest.fixture(scope="module")
def duck(published: Settings) -> Iterator[Any]:
    with duckdb.connect(published.warehouse.duckdb_path(published.lake), read_only=True) as con:
        yield con


def _rows(cursor: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in cursor.fetchall()]


def _comparable(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with numbers as rounded floats (PostgreSQL's AVG is NUMERIC, DuckDB's DOUBLE),
    in a stable order (a query without ORDER BY has none)."""

    def value(v: Any) -> Any:
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int | float | Decimal):
            f = float(v)
            return None if math.isnan(f) else round(f, 6)
        if isinstance(v, datetime):
            return v.astimezone(UTC)
        return v

    return sorted((tuple(value(v) for v in row) for row in rows), key=repr)


def test_the_guide_has_example_queries() -> None:
    queries = example_queries(GUIDE.read_text())
    assert len(queries) >= 3, queries
    assert DEMO_QUERY.format(schema="gold") in queries


def test_every_example_query_answers_the_same_rows_in_postgres_and_duckdb(
    published: Settings, postgres: PostgresDatabase, duck: Any
) -> None:
    queries = example_queries(GUIDE.read_text())
    with postgres.connect() as pg:
        for sql in queries:
            in_duckdb = _rows(duck.execute(sql))
            in_postgres = _rows(pg.execute(sql))
            assert in_duckdb, f"no rows in DuckDB:\n{sql}"
            assert _comparable(in_postgres) == _comparable(in_duckdb), sql


def test_the_buying_contacts_query_answers_what_the_silver_rows_imply(
    published: Settings, postgres: PostgresDatabase, duck: Any
) -> None:
    (sql,) = [q for q in example_queries(GUIDE.read_text()) if "buying_contacts_90d" in q]
    assert _rows(duck.execute(sql)) == FEW_BUYERS
    with postgres.connect() as pg:
        assert _rows(pg.execute(sql)) == FEW_BUYERS


def test_the_demo_query_answers_what_the_silver_rows_imply(
    published: Settings, postgres: PostgresDatabase, duck: Any
) -> None:
    sql = DEMO_QUERY.format(schema="gold")
    assert _rows(duck.execute(sql)) == TOP_ACCOUNTS
    with postgres.connect() as pg:
        assert _rows(pg.execute(sql)) == TOP_ACCOUNTS
