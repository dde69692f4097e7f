"""The gold tests' scenario: small silver tables with hand-computed gold, and a lake for them.

Three accounts (A2 moves from the US to Japan on Mar 10, A3 is deleted on Mar 5), four
contacts (C2 moves from A2 to A1 on Mar 8, C4 is deleted on Mar 10), three opportunities,
EUR/USD and USD/JPY rates, ten orders and five behaviour events. Reporting currency USD; as
of 2026-03-17 (:data:`AS_OF`). :class:`Lake` writes silver tables with delta-rs into a
temporary lake in the layout the pipelines write, and builds gold there
(:func:`cdc.gold.build_gold`): no Spark, no broker.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable, write_deltalake

from cdc.config.lake import table_paths
from cdc.config.settings import Settings, load_settings
from cdc.gold import GOLD_KEYS, GOLD_SCHEMAS, GoldResult, build_gold, gold_path
from cdc.gold.frames import SILVER_COLUMNS
from tests.support.paths import REPO_ROOT

__all__ = [
    "ACCOUNTS",
    "AS_OF",
    "BEHAVIOUR",
    "CONTACTS",
    "DAILY_REVENUE",
    "FX_RATES",
    "OCT1",
    "OPPORTUNITIES",
    "ORDERS",
    "SCENARIO",
    "D",
    "Lake",
    "account_version",
    "at",
    "behaviour_event",
    "daily",
    "expected",
    "frame",
    "opportunity_version",
    "order_events",
    "order_row",
    "placed_order",
    "rate_version",
]

D = Decimal


def at(month: int, day: int, hour: int = 0, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


OCT1 = at(10, 1, year=2025)


def frame(name: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows of silver table ``name`` (columns gold reads; unnamed ones null)."""
    return pl.DataFrame(rows, schema=SILVER_COLUMNS[name])


def account_version(
    account_id: str, country: str, start: datetime, end: datetime | None
) -> dict[str, Any]:
    names = {"A1": "Acme", "A2": "Borealis", "A3": "Cobalt"}
    return {
        "account_id": account_id,
        "name": names[account_id],
        "industry": "Retail",
        "country": country,
        "annual_revenue": D("1000000.00"),
        "tier": "smb",
        "owner_email": f"owner.{account_id.lower()}@crm.example",
        "created_at": OCT1,
        "valid_from": start,
        "valid_to": end,
    }


ACCOUNTS = [
    account_version("A1", "DE", OCT1, None),
    account_version("A2", "US", OCT1, at(3, 10)),
    account_version("A2", "JP", at(3, 10), None),
    account_version("A3", "GB", OCT1, at(3, 5)),
]
CONTACTS = [
    {"contact_id": "C1", "account_id": "A1", "valid_from": OCT1, "valid_to": None},
    {"contact_id": "C2", "account_id": "A2", "valid_from": OCT1, "valid_to": at(3, 8)},
    {"contact_id": "C2", "account_id": "A1", "valid_from": at(3, 8), "valid_to": None},
    {"contact_id": "C3", "account_id": "A2", "valid_from": at(3, 2), "valid_to": None},
    {"contact_id": "C4", "account_id": "A2", "valid_from": OCT1, "valid_to": at(3, 10)},
]


def opportunity_version(
    opportunity_id: str,
    account_id: str,
    stage: str,
    amount: str,
    currency: str,
    probability: int,
    start: datetime,
    end: datetime | None,
) -> dict[str, Any]:
    return {
        "opportunity_id": opportunity_id,
        "account_id": account_id,
        "stage": stage,
        "amount": D(amount),
        "currency": currency,
        "probability": probability,
        "valid_from": start,
        "valid_to": end,
    }


OPPORTUNITIES = [
    opportunity_version("O1", "A1", "proposal", "1000.00", "EUR", 50, at(2, 20), at(3, 12)),
    opportunity_version("O1", "A1", "negotiation", "1000.00", "EUR", 75, at(3, 12), None),
    opportunity_version("O2", "A2", "closed_won", "500.00", "USD", 100, at(3, 3), None),
    # No GBP rate:
    opportunity_version("O3", "A1", "prospecting", "200.00", "GBP", 10, at(3, 4), None),
]


def rate_version(
    base: str, quote: str, rate: str, start: datetime, end: datetime | None
) -> dict[str, Any]:
    return {
        "base_currency": base,
        "quote_currency": quote,
        "rate": D(rate),
        "valid_from": start,
        "valid_to": end,
    }


FX_RATES = [
    rate_version("EUR", "USD", "1.00000000", at(1, 1), at(3, 1)),
    rate_version("EUR", "USD", "1.10000000", at(3, 1), at(3, 15)),
    rate_version("EUR", "USD", "1.20000000", at(3, 15), None),
    rate_version("USD", "JPY", "150.00000000", at(1, 1), None),
]


def order_row(
    order_id: str,
    account_id: str,
    amount: str,
    currency: str,
    placed: datetime,
    contact_id: str | None = None,
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "account_id": account_id,
        "contact_id": contact_id,
        "amount": D(amount),
        "currency": currency,
        "ordered_at": placed,
    }


def order_events(order: dict[str, Any], *steps: tuple[str, datetime]) -> list[dict[str, Any]]:
    return [
        {**order, "event_id": f"{order['order_id']}-{status}", "status": status, "event_ts": ts}
        for status, ts in steps
    ]


def placed_order(order: dict[str, Any], *later: tuple[str, int]) -> list[dict[str, Any]]:
    """An order's events: created when placed, then each status ``hours`` after placing."""
    placed: datetime = order["ordered_at"]
    steps = [("created", placed), *[(s, placed + timedelta(hours=h)) for s, h in later]]
    return order_events(order, *steps)


ORDERS = [
    *placed_order(
        order_row("ORD00", "A1", "5.00", "USD", at(11, 1, 10, year=2025), "C1"), ("paid", 1)
    ),
    # C2 was A2's on Jan 20: not a buying contact of A1 through this order.
    *placed_order(order_row("ORD0", "A1", "80.00", "EUR", at(1, 20, 10), "C2"), ("paid", 1)),
    *placed_order(order_row("ORD1", "A1", "100.00", "EUR", at(3, 5, 10), "C1"), ("paid", 1)),
    *placed_order(order_row("ORD2", "A2", "50.00", "USD", at(3, 9, 12), "C3"), ("paid", 1)),
    *placed_order(  # C4 was deleted on Mar 10: nobody's buying contact
        order_row("ORD3", "A2", "3000.00", "JPY", at(3, 11, 9), "C4"), ("paid", 1), ("shipped", 24)
    ),
    *placed_order(order_row("ORD4", "A1", "40.00", "EUR", at(3, 16, 8), "C1"), ("cancelled", 1)),
    *placed_order(order_row("ORD5", "A1", "60.00", "EUR", at(3, 16, 10), "C2")),
    *placed_order(order_row("ORD6", "A3", "70.00", "USD", at(3, 6, 10)), ("paid", 1)),
    *order_events(  # C2 is A1's since Mar 8
        order_row("ORD7", "A1", "10.00", "GBP", at(3, 17, 10), "C2"), ("paid", at(3, 17, 10))
    ),
]


def behaviour_event(
    event_id: str, contact_id: str, event_type: str, occurred: datetime
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "contact_id": contact_id,
        "session_id": f"S{event_id[1:]}",
        "event_type": event_type,
        "occurred_at": occurred,
    }


BEHAVIOUR = [
    behaviour_event("E1", "C2", "page_view", at(3, 7, 10)),  # C2 is A2's then
    behaviour_event("E2", "C2", "click", at(3, 9, 10)),  # ... and A1's from Mar 8
    behaviour_event("E3", "C1", "email_open", at(3, 16, 12)),
    behaviour_event("E4", "C3", "download", at(3, 11, 12)),
    behaviour_event("E5", "C9", "page_view", at(3, 10, 10)),  # no such contact: nobody's
]

SCENARIO = {
    "dim_account": ACCOUNTS,
    "dim_contact": CONTACTS,
    "dim_opportunity": OPPORTUNITIES,
    "dim_fx_rate": FX_RATES,
    "fact_orders": ORDERS,
    "fact_behavior": BEHAVIOUR,
}
AS_OF = date(2026, 3, 17)


class Lake:
    """A temporary lake: silver tables written with delta-rs, gold built by ``build_gold``."""

    def __init__(self, root: Path, *overrides: str) -> None:
        self.args = [
            f"lake.root={root / 'lake'}",
            f"checkpoints.root={root / 'checkpoints'}",
            *overrides,
        ]
        self.settings: Settings = load_settings(
            "local", self.args, config_dir=REPO_ROOT / "config", environ={}
        )
        self.silver_uris = {
            p.target: table_paths(self.settings, p)["silver"]
            for p in self.settings.pipelines.values()
        }

    def write(self, name: str, rows: list[dict[str, Any]] | pl.DataFrame) -> None:
        """Replace silver table ``name`` (a new Delta version), dimensions with is_current."""
        data = rows if isinstance(rows, pl.DataFrame) else frame(name, rows)
        if name.startswith("dim_"):
            data = data.with_columns(is_current=pl.col("valid_to").is_null())
        write_deltalake(
            self.silver_uris[name],
            data.to_arrow(compat_level=pl.CompatLevel.oldest()),
            mode="overwrite",
            schema_mode="overwrite",
        )

    def write_all(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        for name, rows in tables.items():
            self.write(name, rows)

    def build(self, **options: Any) -> dict[str, GoldResult]:
        return {r.table: r for r in build_gold(self.settings, **options)}

    def gold(self, name: str) -> pl.DataFrame:
        rows = pl.read_delta(gold_path(self.settings, name))
        return rows.select(list(GOLD_SCHEMAS[name])).sort(GOLD_KEYS[name])

    def version(self, name: str) -> int:
        return int(DeltaTable(gold_path(self.settings, name)).version())


def expected(name: str, rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    schema = GOLD_SCHEMAS[name]
    return pl.DataFrame(rows, schema=schema, orient="row").sort(GOLD_KEYS[name])


def daily(*rows: tuple[Any, ...]) -> pl.DataFrame:
    return expected("daily_revenue", [(*r, "USD") for r in rows])


DAILY_REVENUE = daily(
    # order_date, region, currency, orders, paid, pending, cancelled, revenue, reporting, unconv.
    (date(2025, 11, 1), "EMEA", "USD", 1, 1, 0, 0, D("5.00"), D("5.00"), 0),
    (date(2026, 1, 20), "EMEA", "EUR", 1, 1, 0, 0, D("80.00"), D("80.00"), 0),  # EUR/USD 1.0
    (date(2026, 3, 5), "EMEA", "EUR", 1, 1, 0, 0, D("100.00"), D("110.00"), 0),  # 1.1
    (date(2026, 3, 6), "UNKNOWN", "USD", 1, 1, 0, 0, D("70.00"), D("70.00"), 0),  # A3 deleted
    (date(2026, 3, 9), "AMER", "USD", 1, 1, 0, 0, D("50.00"), D("50.00"), 0),  # A2 in the US
    (date(2026, 3, 11), "APAC", "JPY", 1, 1, 0, 0, D("3000.00"), D("20.00"), 0),  # ... Japan
    (date(2026, 3, 16), "EMEA", "EUR", 2, 0, 1, 1, D("0.00"), D("0.00"), 0),
    (date(2026, 3, 17), "EMEA", "GBP", 1, 1, 0, 0, D("10.00"), D("0.00"), 1),  # no GBP rate
)
