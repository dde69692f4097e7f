"""The gold column lineage (``cdc.gold.tables.GOLD_LINEAGE``) checked against the gold
functions themselves: each silver attribute is perturbed in turn, and every gold column whose
values move must name it as a source. Classification tags travel along this lineage
(``cdc.governance.catalog``), so a gold column computed from a personal field cannot lose the
field's tag silently."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import pytest

from cdc.gold.frames import SILVER_COLUMNS, GoldRules
from cdc.gold.tables import (
    GOLD_KEYS,
    GOLD_LINEAGE,
    GOLD_SCHEMAS,
    customer_360,
    customer_features,
    daily_revenue,
    opportunity_pipeline,
)

AS_OF = date(2026, 3, 17)
D = Decimal


def at(month: int, day: int, hour: int = 0, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def _frame(name: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SILVER_COLUMNS[name])


def _silver() -> dict[str, pl.DataFrame]:
    """Two accounts in two regions, three contacts, three opportunities, one FX pair, four
    orders (paid, cancelled, pending) and four behaviour events."""
    start = at(10, 1, year=2025)
    accounts = [
        ("A1", "Acme", "DE", "owner.a1@crm.example"),
        ("A2", "Borealis", "US", "owner.a2@crm.example"),
    ]
    orders = [
        ("E1", "O-1", "A1", "C1", "created", "100.00", "EUR", at(3, 1, 10), at(3, 1, 10)),
        ("E2", "O-1", "A1", "C1", "paid", "100.00", "EUR", at(3, 1, 10), at(3, 2)),
        ("E3", "O-2", "A2", "C2", "created", "250.00", "USD", at(3, 10), at(3, 10)),
        ("E4", "O-2", "A2", "C2", "paid", "250.00", "USD", at(3, 10), at(3, 11)),
        ("E5", "O-3", "A1", "C3", "created", "40.00", "EUR", at(2, 20), at(2, 20)),
        ("E6", "O-3", "A1", "C3", "cancelled", "40.00", "EUR", at(2, 20), at(2, 21)),
        ("E7", "O-4", "A2", "C2", "created", "70.00", "USD", at(3, 15), at(3, 15)),
    ]
    events = [
        ("B1", "C1", "S1", "page_view", at(3, 12)),
        ("B2", "C2", "S2", "click", at(3, 16)),
        ("B3", "C3", "S3", "email_open", at(3, 5)),
        ("B4", "C1", "S1", "download", at(3, 16, 12)),
    ]
    return {
        "dim_account": _frame(
            "dim_account",
            [
                {
                    "account_id": a,
                    "name": name,
                    "industry": "Retail",
                    "country": country,
                    "annual_revenue": D("1000000.00"),
                    "tier": "smb",
                    "owner_email": owner,
                    "created_at": start,
                    "valid_from": start,
                    "valid_to": None,
                }
                for a, name, country, owner in accounts
            ],
        ),
        "dim_contact": _frame(
            "dim_contact",
            [
                {"contact_id": c, "account_id": a, "valid_from": start, "valid_to": None}
                for c, a in (("C1", "A1"), ("C2", "A2"), ("C3", "A1"))
            ],
        ),
        "dim_opportunity": _frame(
            "dim_opportunity",
            [
                {
                    "opportunity_id": o,
                    "account_id": a,
                    "stage": stage,
                    "amount": D(amount),
                    "currency": currency,
                    "probability": p,
                    "valid_from": since,
                    "valid_to": None,
                }
                for o, a, stage, amount, currency, p, since in (
                    ("P1", "A1", "proposal", "1000.00", "EUR", 50, at(1, 10)),
                    ("P2", "A2", "negotiation", "2000.00", "USD", 80, at(2, 5)),
                    ("P3", "A1", "closed_won", "500.00", "EUR", 100, at(1, 20)),
                )
            ],
        ),
        "dim_fx_rate": _frame(
            "dim_fx_rate",
            [
                {
                    "base_currency": "EUR",
                    "quote_currency": "USD",
                    "rate": D("1.10000000"),
                    "valid_from": at(1, 1, year=2025),
                    "valid_to": None,
                }
            ],
        ),
        "fact_orders": _frame(
            "fact_orders",
            [
                dict(
                    zip(
                        (
                            "event_id",
                            "order_id",
                            "account_id",
                            "contact_id",
                            "status",
                            "amount",
                            "currency",
                            "ordered_at",
                            "event_ts",
                        ),
                        (*row[:5], D(row[5]), *row[6:]),
                        strict=True,
                    )
                )
                for row in orders
            ],
        ),
        "fact_behavior": _frame(
            "fact_behavior",
            [
                dict(
                    zip(
                        ("event_id", "contact_id", "session_id", "event_type", "occurred_at"),
                        row,
                        strict=True,
                    )
                )
                for row in events
            ],
        ),
    }


def _gold(silver: Mapping[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    rules = GoldRules()
    return {
        "customer_360": customer_360(silver, rules, AS_OF),
        "daily_revenue": daily_revenue(silver, rules),
        "opportunity_pipeline": opportunity_pipeline(silver, rules, AS_OF),
        "customer_features": customer_features(silver, rules, AS_OF),
    }


def _perturbation(dtype: pl.DataType) -> Callable[[pl.Expr], pl.Expr]:
    if isinstance(dtype, pl.String):
        return lambda c: c + "_x"
    if isinstance(dtype, pl.Decimal):
        return lambda c: c * 2 + 1
    if isinstance(dtype, pl.Datetime):
        return lambda c: c - timedelta(days=1, hours=3)
    return lambda c: c // 2 + 1


def _attributes() -> list[tuple[str, str]]:
    """Silver columns gold reads that are not keys or references (perturbing those moves
    every joined row: a structural dependency, not a value's)."""
    structural = ("valid_from", "valid_to", "base_currency", "quote_currency")
    return [
        (table, column)
        for table, columns in SILVER_COLUMNS.items()
        for column in columns
        if not column.endswith("_id") and column not in structural
    ]


def _moved(before: pl.DataFrame, after: pl.DataFrame, table: str) -> tuple[set[str], bool]:
    """(non-key columns whose values differ on rows both have, whether the rows differ)."""
    keys = list(GOLD_KEYS[table])
    others = [c for c in GOLD_SCHEMAS[table] if c not in keys]
    joined = before.join(after, on=keys, how="full", coalesce=True, suffix="_after")
    rows_differ = before.height != after.height or joined.height != before.height
    both = before.join(after, on=keys, how="inner", suffix="_after")
    moved = {c for c in others if not both[c].eq_missing(both[f"{c}_after"]).all()}
    return moved, rows_differ


@pytest.mark.parametrize(("table", "column"), _attributes())
def test_every_gold_column_a_silver_attribute_moves_declares_it(table: str, column: str) -> None:
    silver = _silver()
    base = _gold(silver)
    changed = dict(silver)
    dtype = SILVER_COLUMNS[table][column]
    changed[table] = silver[table].with_columns(_perturbation(dtype)(pl.col(column)).alias(column))
    after = _gold(changed)
    source = f"{table}.{column}"
    for name, frame in base.items():
        moved, rows_differ = _moved(frame, after[name], name)
        lineage = GOLD_LINEAGE[name]
        undeclared = sorted(c for c in moved if source not in lineage[c])
        assert not undeclared, f"gold.{name} columns {undeclared} move with {source}"
        if rows_differ:
            grain = {s for k in GOLD_KEYS[name] for s in lineage[k]}
            assert source in grain, f"gold.{name}'s rows move with {source}, not in its grain"


def test_an_account_owner_email_reaches_only_customer_360_owner_email() -> None:
    """The one personal field gold reads lands in exactly one gold column."""
    silver = _silver()
    base = _gold(silver)
    changed = dict(silver)
    changed["dim_account"] = silver["dim_account"].with_columns(pl.col("owner_email") + "_x")
    after = _gold(changed)
    moved = {
        (name, column)
        for name, frame in base.items()
        for column in _moved(frame, after[name], name)[0]
    }
    assert moved == {("customer_360", "owner_email")}
    declared = {
        (name, column)
        for name, columns in GOLD_LINEAGE.items()
        for column, sources in columns.items()
        if "dim_account.owner_email" in sources
    }
    assert declared == moved


def test_every_gold_column_has_a_lineage_entry() -> None:
    for name, schema in GOLD_SCHEMAS.items():
        assert list(GOLD_LINEAGE[name]) == list(schema), name
        for sources in GOLD_LINEAGE[name].values():
            for source in sources:
                table, column = source.split(".")
                assert column in SILVER_COLUMNS[table], source
