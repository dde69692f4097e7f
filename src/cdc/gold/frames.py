"""Building blocks of the gold tables: pure functions on Polars frames, no I/O.

Silver as gold reads it
-----------------------
:data:`SILVER_COLUMNS` names, per silver table, the columns gold uses and their types; a
change in any other column (``updated_at``, ``phone``, lineage) changes no gold row and
triggers no recomputation. SCD2 dimensions are read with every version (``valid_from``,
``valid_to``; null ``valid_to``: the current version).

Point in time
-------------
A dimension version is *valid at* instant ``t`` when ``valid_from <= t < valid_to`` (a null
``valid_to`` is open-ended). A fact joins the version of its key valid at the fact's own time
(:func:`versions_at`): an order the account version and the contact version valid at
``ordered_at``, a behaviour event the contact version valid at ``occurred_at``, an amount the
FX version valid at the order's time. Versions of zero length (two changes in the same
millisecond) are valid nowhere.

Orders
------
``fact_orders`` holds one row per order *event* (``created``, then ``paid``/``cancelled``,
``shipped``, ``delivered``: ``cdc_demo.data``); every event repeats the order's account,
contact (who placed it; null when unknown), amount, currency and ``ordered_at``. An order's
state is its latest event by ``event_ts`` (:func:`order_states`; ties broken by the status
order, then ``event_id``). Revenue is the orders whose state is in
:data:`REVENUE_STATUSES`; ``cancelled`` orders are never revenue; anything else (``created``:
placed, not paid) is pending.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

__all__ = [
    "CANCELLED_STATUS",
    "CLOSED_STAGES",
    "DEFAULT_REGIONS",
    "EVENT_TYPES",
    "MONEY",
    "OTHER_REGION",
    "REVENUE_STATUSES",
    "SILVER_COLUMNS",
    "SILVER_TABLES",
    "TS",
    "UNKNOWN_REGION",
    "GoldRules",
    "conform",
    "day_end",
    "empty_silver",
    "order_states",
    "reference_day",
    "to_reporting",
    "valid_at",
    "versions_at",
]

TS = pl.Datetime("us", "UTC")
MONEY = pl.Decimal(38, 2)
"""Every amount in gold: cents, 38 digits (sums never overflow; NUMERIC(38,2) in warehouses)."""

SILVER_TABLES = (
    "dim_account",
    "dim_contact",
    "dim_opportunity",
    "dim_fx_rate",
    "fact_orders",
    "fact_behavior",
)
"""The silver tables gold is built from, by their ``pipelines.<name>.target``."""

SILVER_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "dim_account": {
        "account_id": pl.String(),
        "name": pl.String(),
        "industry": pl.String(),
        "country": pl.String(),
        "annual_revenue": pl.Decimal(18, 2),
        "tier": pl.String(),
        "owner_email": pl.String(),
        "created_at": TS,
        "valid_from": TS,
        "valid_to": TS,
    },
    "dim_contact": {
        "contact_id": pl.String(),
        "account_id": pl.String(),
        "valid_from": TS,
        "valid_to": TS,
    },
    "dim_opportunity": {
        "opportunity_id": pl.String(),
        "account_id": pl.String(),
        "stage": pl.String(),
        "amount": pl.Decimal(18, 2),
        "currency": pl.String(),
        "probability": pl.Int32(),
        "valid_from": TS,
        "valid_to": TS,
    },
    "dim_fx_rate": {
        "base_currency": pl.String(),
        "quote_currency": pl.String(),
        "rate": pl.Decimal(18, 8),
        "valid_from": TS,
        "valid_to": TS,
    },
    "fact_orders": {
        "event_id": pl.String(),
        "order_id": pl.String(),
        "account_id": pl.String(),
        "contact_id": pl.String(),
        "status": pl.String(),
        "amount": pl.Decimal(18, 2),
        "currency": pl.String(),
        "ordered_at": TS,
        "event_ts": TS,
    },
    "fact_behavior": {
        "event_id": pl.String(),
        "contact_id": pl.String(),
        "session_id": pl.String(),
        "event_type": pl.String(),
        "occurred_at": TS,
    },
}

REVENUE_STATUSES = ("paid", "shipped", "delivered")
"""Order states that count as revenue: paid, and the states only a paid order reaches."""
CANCELLED_STATUS = "cancelled"
_STATUS_ORDER = ("created", "paid", "shipped", "delivered", "cancelled")
"""Tie-break of two events of an order at the same ``event_ts``: the later state wins."""
CLOSED_STAGES = ("closed_won", "closed_lost")
"""Opportunity stages that are not pipeline; every other stage is open."""
EVENT_TYPES = ("page_view", "click", "email_open", "download", "signup")
"""Behaviour event types counted one by one (the contract's ``allowed`` list)."""

UNKNOWN_REGION = "UNKNOWN"
"""Region of an order whose account had no version at the order's time (or no country)."""
OTHER_REGION = "OTHER"
"""Region of a country the region map does not name."""

_EMEA = (
    "AT BE BG CH CY CZ DE DK EE ES FI FR GB GR HR HU IE IS IT LI LT LU LV MT NL NO PL PT RO"
    " SE SI SK UA RS TR IL AE SA QA KW BH OM EG MA ZA NG KE"
)
_AMER = "US CA MX BR AR CL CO PE UY"
_APAC = "JP CN HK TW KR SG MY TH ID PH VN IN AU NZ"
DEFAULT_REGIONS: dict[str, str] = {
    **dict.fromkeys(_EMEA.split(), "EMEA"),
    **dict.fromkeys(_AMER.split(), "AMER"),
    **dict.fromkeys(_APAC.split(), "APAC"),
}
"""Country (ISO-3166 alpha-2) → sales region; ``gold.regions`` adds to it or overrides it."""


@dataclass(frozen=True)
class GoldRules:
    """The configuration a gold row depends on.

    Attributes:
        currency: the reporting currency (ISO-4217).
        regions: the complete country → region map.
    """

    currency: str = "USD"
    regions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_REGIONS))

    @classmethod
    def of(cls, currency: str, overrides: Mapping[str, str]) -> GoldRules:
        """Rules for ``currency``, with ``overrides`` over :data:`DEFAULT_REGIONS`."""
        return cls(currency, {**DEFAULT_REGIONS, **overrides})

    def fingerprint(self, logic: int) -> str:
        """A digest of the rules and the code's ``logic`` version: a gold table built under
        another fingerprint is rebuilt in full."""
        text = json.dumps(
            {"currency": self.currency, "regions": dict(sorted(self.regions.items())), "v": logic}
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def region(self, country: pl.Expr) -> pl.Expr:
        """The region of ``country`` (:data:`UNKNOWN_REGION` when null)."""
        return (
            pl.when(country.is_null())
            .then(pl.lit(UNKNOWN_REGION))
            .otherwise(
                country.replace_strict(
                    dict(self.regions), default=OTHER_REGION, return_dtype=pl.String
                )
            )
        )


def empty_silver(name: str) -> pl.DataFrame:
    """An empty frame of silver table ``name`` as gold reads it (a table not created yet)."""
    return pl.DataFrame(schema=SILVER_COLUMNS[name])


def conform(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """The columns gold reads from silver table ``name``, in their gold types.

    Raises:
        ValueError: a column gold needs is missing (the message names them).
    """
    wanted = SILVER_COLUMNS[name]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"silver/{name} has no column {', '.join(missing)}")
    return frame.select([pl.col(c).cast(t) for c, t in wanted.items()])


def day_end(day: date) -> datetime:
    """The first instant after ``day`` (UTC): data "as of" ``day`` is strictly before it."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def reference_day(newest: Sequence[datetime | None], today: date) -> date:
    """The default reference ("as of") day of a build: the UTC day of the newest fact
    (``newest``: e.g. the latest order event and behaviour event), never after ``today``.

    A build's result then depends on silver alone, not on the day it runs: the same silver
    gives the same gold, and a build over unchanged silver writes nothing.
    """
    seen = [t for t in newest if t is not None]
    return min(today, max(seen).astimezone(UTC).date()) if seen else today


def valid_at(at: pl.Expr) -> pl.Expr:
    """A dimension version is valid at ``at``: ``valid_from <= at < valid_to`` (null: open)."""
    return (pl.col("valid_from") <= at) & (pl.col("valid_to").is_null() | (pl.col("valid_to") > at))


def versions_at(
    facts: pl.DataFrame, at: str, dim: pl.DataFrame, on: str, columns: Mapping[str, str]
) -> pl.DataFrame:
    """``facts`` with columns of the ``dim`` version of their key valid at their time ``at``.

    Args:
        facts: rows with the key column ``on`` and the time column ``at``.
        at: the time column of ``facts``.
        dim: versions (``on``, ``valid_from``, ``valid_to`` and ``columns``).
        on: the key column, named the same on both sides.
        columns: dimension column → name it gets in the result; null where no version was
            valid at the fact's time (the fact is kept).

    Returns:
        ``facts`` (same rows, same order) plus the ``columns``.
    """
    indexed = facts.with_row_index("_fact")
    found = _version_at(
        indexed.select("_fact", on, at),
        at,
        dim.select(on, "valid_from", "valid_to", *[pl.col(c).alias(n) for c, n in columns.items()]),
        on,
    )
    return (
        indexed.join(found.select("_fact", *columns.values()), on="_fact", how="left")
        .sort("_fact")
        .drop("_fact")
    )


def _version_at(probe: pl.DataFrame, at: str, versions: pl.DataFrame, on: str) -> pl.DataFrame:
    """``probe`` rows joined to the version of their key ``on`` valid at their time ``at``
    (rows with none are dropped).

    An as-of join: the key's latest version starting at or before ``at``, kept when it has not
    ended by then. SCD2 versions of a key do not overlap, so no other version can be valid;
    versions of zero length are valid nowhere and left out first.
    """
    starts = versions.filter(
        pl.col("valid_to").is_null() | (pl.col("valid_to") > pl.col("valid_from"))
    ).rename({"valid_from": "_valid_from", "valid_to": "_valid_to"})
    return (
        probe.filter(pl.col(on).is_not_null() & pl.col(at).is_not_null())
        .sort(at)
        .join_asof(
            starts.sort("_valid_from"),
            left_on=at,
            right_on="_valid_from",
            by=on,
            strategy="backward",
            check_sortedness=False,  # sorted on the time globally, so within every key
        )
        .filter(pl.col("_valid_to").is_null() | (pl.col("_valid_to") > pl.col(at)))
        .drop("_valid_from", "_valid_to")
    )


def order_states(orders: pl.DataFrame, before: datetime | None = None) -> pl.DataFrame:
    """One row per order: its latest event (only events strictly before ``before`` if given).

    Returns:
        The event columns of each order's latest event, plus ``is_revenue`` and
        ``is_cancelled``.
    """
    if before is not None:
        orders = orders.filter(pl.col("event_ts") < before)
    rank = pl.col("status").replace_strict(
        {s: i for i, s in enumerate(_STATUS_ORDER)},
        default=len(_STATUS_ORDER),
        return_dtype=pl.Int32,
    )
    return (
        orders.with_columns(_rank=rank)
        .sort("order_id", "event_ts", "_rank", "event_id")
        .unique("order_id", keep="last", maintain_order=True)
        .drop("_rank")
        .with_columns(
            is_revenue=pl.col("status").is_in(REVENUE_STATUSES),
            is_cancelled=pl.col("status") == CANCELLED_STATUS,
        )
    )


def _rates_into(fx: pl.DataFrame, currency: str, inverse: bool) -> pl.DataFrame:
    """Per currency, the FX versions that convert it into ``currency``: the pairs quoted in
    ``currency`` (multiply by the rate), or with ``inverse`` the pairs based in it (divide)."""
    this, other = (
        ("base_currency", "quote_currency") if inverse else ("quote_currency", "base_currency")
    )
    return fx.filter(
        (pl.col(this) == currency) & (pl.col(other) != currency) & (pl.col("rate") > 0)
    ).select(pl.col(other).alias("_currency"), "rate", "valid_from", "valid_to")


def to_reporting(
    frame: pl.DataFrame,
    fx: pl.DataFrame,
    currency: str,
    at: str | None,
    amount: str = "amount",
    out: str = "amount_reporting",
) -> pl.DataFrame:
    """Add ``out``: ``amount`` (in the row's ``currency`` column) converted into ``currency``.

    The rate is the ``dim_fx_rate`` version valid at the row's time ``at`` (None: the current
    version), of the pair ``<row currency>/<currency>`` (multiply) or, when there is none,
    ``<currency>/<row currency>`` (divide). The result is rounded to cents, half to even.
    Where no rate is valid, ``out`` is null: the row is kept, and the tables count it.

    Args:
        frame: rows with ``amount``, a ``currency`` column and, unless ``at`` is None, ``at``.
        fx: ``dim_fx_rate`` versions.
        currency: the reporting currency.
        at: the time column to convert at, or None for the current rates.
        amount: the amount column.
        out: the name of the converted column.
    """
    indexed = frame.with_row_index("_conv")
    probe = indexed.select("_conv", pl.col("currency").alias("_currency"), *([at] if at else []))
    found = []
    for inverse, name in ((False, "_direct"), (True, "_inverse")):
        rates = _rates_into(fx, currency, inverse)
        if at is None:
            current = rates.filter(pl.col("valid_to").is_null()).sort("valid_from")
            current = current.unique("_currency", keep="last").select("_currency", "rate")
            matched = probe.join(current, on="_currency")
        else:
            matched = _version_at(probe, at, rates, "_currency")
        found.append(matched.select("_conv", pl.col("rate").alias(name)))
    value = pl.col(amount).cast(MONEY)
    converted = (
        pl.when(pl.col("currency") == currency)
        .then(value)
        .when(pl.col("_direct").is_not_null())
        .then((pl.col(amount) * pl.col("_direct")).round(2))
        .otherwise((pl.col(amount) / pl.col("_inverse")).round(2))
        .cast(MONEY)
    )
    return (
        indexed.join(found[0], on="_conv", how="left")
        .join(found[1], on="_conv", how="left")
        .sort("_conv")
        .with_columns(converted.alias(out))
        .drop("_conv", "_direct", "_inverse")
    )
