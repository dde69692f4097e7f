"""The gold tables, computed from silver frames: pure functions, each for a subset of grains.

Each function takes the silver frames (:data:`cdc.gold.frames.SILVER_COLUMNS`), the
:class:`~cdc.gold.frames.GoldRules` and optionally the grains to compute (an incremental build
passes the grains silver's changes touched; None computes all). Its result has exactly the
columns of :data:`GOLD_SCHEMAS` and one row per key of :data:`GOLD_KEYS`. Meaning, grain and
freshness of each table: ``docs/guides/consumption-layer.md``; the features:
``docs/guides/ml-features.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta

import polars as pl

from cdc.gold.frames import (
    CLOSED_STAGES,
    EVENT_TYPES,
    MONEY,
    SILVER_TABLES,
    TS,
    GoldRules,
    day_end,
    order_states,
    to_reporting,
    valid_at,
    versions_at,
)

__all__ = [
    "FEATURE_WINDOWS",
    "GOLD_DECLASSIFIED",
    "GOLD_KEYS",
    "GOLD_LINEAGE",
    "GOLD_SCHEMAS",
    "GOLD_SOURCES",
    "GOLD_TABLES",
    "customer_360",
    "customer_features",
    "daily_revenue",
    "opportunity_pipeline",
]

GOLD_TABLES: tuple[str, ...] = (
    "customer_360",
    "daily_revenue",
    "opportunity_pipeline",
    "customer_features",
)
GOLD_KEYS: dict[str, tuple[str, ...]] = {
    "customer_360": ("account_id",),
    "daily_revenue": ("order_date", "region", "currency"),
    "opportunity_pipeline": ("month", "stage"),
    "customer_features": ("account_id", "as_of_date"),
}
"""The grain of each gold table: its key columns, unique and non-null in every row."""

_I = pl.Int64()
FEATURE_WINDOWS = {"orders": (30, 90, 365), "events": (7, 30)}
"""Window lengths in days of the order features and the engagement features."""
_BUYING_WINDOW = 90
"""Window length in days of the feature ``buying_contacts_90d``."""

GOLD_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "customer_360": {
        "account_id": pl.String(),
        "name": pl.String(),
        "industry": pl.String(),
        "country": pl.String(),
        "region": pl.String(),
        "tier": pl.String(),
        "annual_revenue": pl.Decimal(18, 2),
        "owner_email": pl.String(),
        "created_at": TS,
        "current_contacts": _I,
        "contact_ids": pl.String(),
        "open_opportunities": _I,
        "open_pipeline_amount": MONEY,
        "open_pipeline_weighted": MONEY,
        "unconverted_open_opportunities": _I,
        "paid_orders": _I,
        "lifetime_revenue": MONEY,
        "paid_orders_90d": _I,
        "revenue_90d": MONEY,
        "buying_contacts_90d": _I,
        "unconverted_orders": _I,
        "last_order_at": TS,
        "last_engagement_at": TS,
        "last_engagement_type": pl.String(),
        "last_engaged_contact_id": pl.String(),
        "reporting_currency": pl.String(),
    },
    "daily_revenue": {
        "order_date": pl.Date(),
        "region": pl.String(),
        "currency": pl.String(),
        "orders": _I,
        "paid_orders": _I,
        "pending_orders": _I,
        "cancelled_orders": _I,
        "revenue": MONEY,
        "revenue_reporting": MONEY,
        "unconverted_orders": _I,
        "reporting_currency": pl.String(),
    },
    "opportunity_pipeline": {
        "month": pl.Date(),
        "stage": pl.String(),
        "opportunities": _I,
        "amount_reporting": MONEY,
        "weighted_amount_reporting": MONEY,
        "unconverted_opportunities": _I,
        "entered": _I,
        "reporting_currency": pl.String(),
    },
    "customer_features": {
        "account_id": pl.String(),
        "as_of_date": pl.Date(),
        "days_since_last_order": _I,
        **{f"orders_{n}d": _I for n in FEATURE_WINDOWS["orders"]},
        **{f"revenue_{n}d": MONEY for n in FEATURE_WINDOWS["orders"]},
        "unconverted_orders_365d": _I,
        "buying_contacts_90d": _I,
        "days_since_last_event": _I,
        **{f"events_{n}d": _I for n in FEATURE_WINDOWS["events"]},
        **{f"{t}_{n}d": _I for t in EVENT_TYPES for n in FEATURE_WINDOWS["events"]},
        "sessions_30d": _I,
        "active_contacts_30d": _I,
        "reporting_currency": pl.String(),
    },
}
"""Columns and types of each gold table, in table order."""

GOLD_SOURCES: dict[str, tuple[str, ...]] = {
    "customer_360": SILVER_TABLES,
    "daily_revenue": ("dim_account", "dim_fx_rate", "fact_orders"),
    "opportunity_pipeline": ("dim_opportunity", "dim_fx_rate"),
    "customer_features": (
        "dim_account",
        "dim_contact",
        "dim_fx_rate",
        "fact_orders",
        "fact_behavior",
    ),
}
"""The silver tables each gold table is built from."""

# Column lineage: which silver columns (``table.column``) each gold column's values are
# computed from. Classification tags travel along it (:mod:`cdc.governance`): a gold column
# carries every tag of its sources unless :data:`GOLD_DECLASSIFIED` says why not. A test
# perturbs each silver attribute and checks every gold column it moves declares it, and a
# new gold column without an entry fails the tests, so the map cannot drift silently.
_ORDER_STATE = ("fact_orders.order_id", "fact_orders.status", "fact_orders.event_ts")
"""An order's state: its latest event (:func:`cdc.gold.frames.order_states`)."""
_ORDER_ACCOUNT = ("fact_orders.account_id",)
_TO_REPORTING = ("dim_fx_rate.base_currency", "dim_fx_rate.quote_currency", "dim_fx_rate.rate")
"""FX conversion into the reporting currency: the rate of the pair valid at the time."""
_ORDERS_AT = (*_ORDER_STATE, *_ORDER_ACCOUNT, "fact_orders.ordered_at")
_PAID_REPORTING = (*_ORDERS_AT, "fact_orders.amount", "fact_orders.currency", *_TO_REPORTING)
_BUYERS = (
    *_ORDERS_AT,
    "fact_orders.contact_id",
    "dim_contact.contact_id",
    "dim_contact.account_id",
    "dim_contact.valid_from",
    "dim_contact.valid_to",
)
"""Contacts of the account (the version valid at the order's time) who placed paid orders."""
_ENGAGEMENT = (
    "fact_behavior.contact_id",
    "fact_behavior.occurred_at",
    "dim_contact.contact_id",
    "dim_contact.account_id",
    "dim_contact.valid_from",
    "dim_contact.valid_to",
)
"""Behaviour events attributed to an account through the contact version valid then."""
_OPPORTUNITIES = (
    "dim_opportunity.opportunity_id",
    "dim_opportunity.account_id",
    "dim_opportunity.stage",
    "dim_opportunity.valid_to",
)
_OPEN_PIPELINE = (*_OPPORTUNITIES, "dim_opportunity.amount", "dim_opportunity.currency")
_MONTH_SNAPSHOT = (
    "dim_opportunity.opportunity_id",
    "dim_opportunity.stage",
    "dim_opportunity.valid_from",
    "dim_opportunity.valid_to",
)
_DAILY_ORDERS = (*_ORDERS_AT, "fact_orders.currency", "dim_account.country")
_ACCOUNT = ("dim_account.account_id", "dim_account.valid_from", "dim_account.valid_to")

GOLD_LINEAGE: dict[str, dict[str, tuple[str, ...]]] = {
    "customer_360": {
        "account_id": _ACCOUNT,
        "name": (*_ACCOUNT, "dim_account.name"),
        "industry": (*_ACCOUNT, "dim_account.industry"),
        "country": (*_ACCOUNT, "dim_account.country"),
        "region": (*_ACCOUNT, "dim_account.country"),
        "tier": (*_ACCOUNT, "dim_account.tier"),
        "annual_revenue": (*_ACCOUNT, "dim_account.annual_revenue"),
        "owner_email": (*_ACCOUNT, "dim_account.owner_email"),
        "created_at": (*_ACCOUNT, "dim_account.created_at"),
        "current_contacts": ("dim_contact.contact_id", "dim_contact.account_id"),
        "contact_ids": ("dim_contact.contact_id", "dim_contact.account_id"),
        "open_opportunities": _OPPORTUNITIES,
        "open_pipeline_amount": (*_OPEN_PIPELINE, *_TO_REPORTING),
        "open_pipeline_weighted": (
            *_OPEN_PIPELINE,
            "dim_opportunity.probability",
            *_TO_REPORTING,
        ),
        "unconverted_open_opportunities": (*_OPEN_PIPELINE, *_TO_REPORTING),
        "paid_orders": _ORDERS_AT,
        "lifetime_revenue": _PAID_REPORTING,
        "paid_orders_90d": _ORDERS_AT,
        "revenue_90d": _PAID_REPORTING,
        "buying_contacts_90d": _BUYERS,
        "unconverted_orders": _PAID_REPORTING,
        "last_order_at": _ORDERS_AT,
        "last_engagement_at": _ENGAGEMENT,
        "last_engagement_type": (
            *_ENGAGEMENT,
            "fact_behavior.event_id",
            "fact_behavior.event_type",
        ),
        "last_engaged_contact_id": (*_ENGAGEMENT, "fact_behavior.event_id"),
        "reporting_currency": (),
    },
    "daily_revenue": {
        "order_date": ("fact_orders.ordered_at",),
        "region": (*_ORDERS_AT, "dim_account.country"),
        "currency": ("fact_orders.currency",),
        "orders": _DAILY_ORDERS,
        "paid_orders": _DAILY_ORDERS,
        "pending_orders": _DAILY_ORDERS,
        "cancelled_orders": _DAILY_ORDERS,
        "revenue": (*_DAILY_ORDERS, "fact_orders.amount"),
        "revenue_reporting": (*_DAILY_ORDERS, "fact_orders.amount", *_TO_REPORTING),
        "unconverted_orders": (*_DAILY_ORDERS, *_TO_REPORTING),
        "reporting_currency": (),
    },
    "opportunity_pipeline": {
        "month": ("dim_opportunity.valid_from", "dim_opportunity.valid_to"),
        "stage": ("dim_opportunity.stage",),
        "opportunities": _MONTH_SNAPSHOT,
        "amount_reporting": (
            *_MONTH_SNAPSHOT,
            "dim_opportunity.amount",
            "dim_opportunity.currency",
            *_TO_REPORTING,
        ),
        "weighted_amount_reporting": (
            *_MONTH_SNAPSHOT,
            "dim_opportunity.amount",
            "dim_opportunity.currency",
            "dim_opportunity.probability",
            *_TO_REPORTING,
        ),
        "unconverted_opportunities": (
            *_MONTH_SNAPSHOT,
            "dim_opportunity.currency",
            *_TO_REPORTING,
        ),
        "entered": _MONTH_SNAPSHOT,
        "reporting_currency": (),
    },
    "customer_features": {
        "account_id": _ACCOUNT,
        "as_of_date": (),
        "days_since_last_order": _ORDERS_AT,
        **{f"orders_{n}d": _ORDERS_AT for n in FEATURE_WINDOWS["orders"]},
        **{f"revenue_{n}d": _PAID_REPORTING for n in FEATURE_WINDOWS["orders"]},
        "unconverted_orders_365d": _PAID_REPORTING,
        "buying_contacts_90d": _BUYERS,
        "days_since_last_event": _ENGAGEMENT,
        **{f"events_{n}d": _ENGAGEMENT for n in FEATURE_WINDOWS["events"]},
        **{
            f"{t}_{n}d": (*_ENGAGEMENT, "fact_behavior.event_type")
            for t in EVENT_TYPES
            for n in FEATURE_WINDOWS["events"]
        },
        "sessions_30d": (*_ENGAGEMENT, "fact_behavior.session_id"),
        "active_contacts_30d": _ENGAGEMENT,
        "reporting_currency": (),
    },
}
"""Per gold table and column: the silver columns (``table.column``) its values come from."""

GOLD_DECLASSIFIED: dict[str, dict[str, dict[str, str]]] = {}
"""Per gold table and column: tags of its sources it does not carry, each with the reason
(an aggregate that no longer identifies anyone, say). Empty: no gold column drops a tag."""

_MICROSECOND = timedelta(microseconds=1)
_NEVER = frozenset({"days_since_last_order", "days_since_last_event"})
"""Columns whose null means "never" rather than zero."""


def _shape(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with exactly the columns of gold table ``name``, sorted by its key."""
    schema = GOLD_SCHEMAS[name]
    return frame.select([pl.col(c).cast(t) for c, t in schema.items()]).sort(GOLD_KEYS[name])


def _zero(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """Counts and amounts of gold table ``name`` that no row fed: 0, not null."""
    schema = GOLD_SCHEMAS[name]
    fills = [
        pl.col(c).fill_null(0)
        for c, t in schema.items()
        if c in frame.columns and t in (_I, MONEY) and c not in _NEVER
    ]
    return frame.with_columns(fills)


def _in(column: str, values: pl.Series) -> pl.Expr:
    return pl.col(column).is_in(values.implode())


def _current_accounts(
    silver: Mapping[str, pl.DataFrame], accounts: pl.Series | None
) -> pl.DataFrame:
    current = silver["dim_account"].filter(pl.col("valid_to").is_null())
    if accounts is not None:
        current = current.filter(_in("account_id", accounts))
    return current.sort("account_id", "valid_from").unique("account_id", keep="last")


def _order_states_of(
    silver: Mapping[str, pl.DataFrame], accounts: pl.Series, before: datetime | None = None
) -> pl.DataFrame:
    """The states of the orders whose state belongs to ``accounts``: each order's state is
    taken over all its events (a later event may name another account) before ``before``."""
    orders = silver["fact_orders"]
    theirs = orders.filter(_in("account_id", accounts)).get_column("order_id").unique()
    states = order_states(orders.filter(_in("order_id", theirs)), before=before)
    return states.filter(_in("account_id", accounts))


def _engagement_events(
    silver: Mapping[str, pl.DataFrame], accounts: pl.Series, before: datetime | None
) -> pl.DataFrame:
    """Behaviour events attributed to ``accounts``: each event to the account of its contact's
    version valid at the event's time (events of a contact with no such version are nobody's).
    Only events strictly before ``before`` when given."""
    contacts = silver["dim_contact"]
    who = contacts.filter(_in("account_id", accounts)).get_column("contact_id").unique()
    events = silver["fact_behavior"].filter(_in("contact_id", who))
    if before is not None:
        events = events.filter(pl.col("occurred_at") < before)
    attributed = versions_at(
        events,
        "occurred_at",
        contacts.filter(_in("contact_id", who)),
        "contact_id",
        {"account_id": "account_id"},
    )
    return attributed.filter(_in("account_id", accounts))


def _placed_by_own_contacts(
    silver: Mapping[str, pl.DataFrame], states: pl.DataFrame
) -> pl.DataFrame:
    """The order ``states`` placed by a contact of the order's own account: the contact's
    ``dim_contact`` version valid at the order's ``ordered_at`` names that account. An order
    without a contact, of a contact with no version then (not created yet, or deleted), or of
    a contact then another account's, is left out."""
    who = states.get_column("contact_id").drop_nulls().unique()
    placed = versions_at(
        states,
        "ordered_at",
        silver["dim_contact"].filter(_in("contact_id", who)),
        "contact_id",
        {"account_id": "_contact_account"},
    )
    return placed.filter(pl.col("_contact_account") == pl.col("account_id")).drop(
        "_contact_account"
    )


def customer_360(
    silver: Mapping[str, pl.DataFrame],
    rules: GoldRules,
    as_of: date,
    accounts: pl.Series | None = None,
) -> pl.DataFrame:
    """One row per account that exists now (has a current version).

    Args:
        silver: the silver frames.
        rules: reporting currency and regions.
        as_of: the last day of the 90-day revenue window.
        accounts: compute only these accounts (None: all).
    """
    current = _current_accounts(silver, accounts)
    ids = current.get_column("account_id")
    fx, currency = silver["dim_fx_rate"], rules.currency

    contacts = (
        silver["dim_contact"]
        .filter(pl.col("valid_to").is_null() & _in("account_id", ids))
        .group_by("account_id")
        .agg(
            current_contacts=pl.len(),
            contact_ids=pl.col("contact_id").sort().str.join(","),
        )
    )
    open_opportunities = to_reporting(
        silver["dim_opportunity"].filter(
            pl.col("valid_to").is_null()
            & _in("account_id", ids)
            & ~pl.col("stage").is_in(CLOSED_STAGES)
        ),
        fx,
        currency,
        at=None,
    )
    pipeline = open_opportunities.group_by("account_id").agg(
        open_opportunities=pl.len(),
        open_pipeline_amount=pl.col("amount_reporting").sum(),
        open_pipeline_weighted=(pl.col("amount_reporting") * pl.col("probability") / 100)
        .round(2)
        .sum(),
        unconverted_open_opportunities=pl.col("amount_reporting").is_null().sum(),
    )

    states = _order_states_of(silver, ids)
    end = day_end(as_of)
    in_window = (pl.col("ordered_at") >= end - timedelta(days=90)) & (pl.col("ordered_at") < end)
    paid = to_reporting(states.filter(pl.col("is_revenue")), fx, currency, at="ordered_at")
    revenue = paid.group_by("account_id").agg(
        paid_orders=pl.len(),
        lifetime_revenue=pl.col("amount_reporting").sum(),
        paid_orders_90d=in_window.sum(),
        revenue_90d=pl.col("amount_reporting").filter(in_window).sum(),
        unconverted_orders=pl.col("amount_reporting").is_null().sum(),
    )
    buyers = (
        _placed_by_own_contacts(silver, states.filter(pl.col("is_revenue") & in_window))
        .group_by("account_id")
        .agg(buying_contacts_90d=pl.col("contact_id").n_unique())
    )
    last_order = (
        states.filter(~pl.col("is_cancelled"))
        .group_by("account_id")
        .agg(last_order_at=pl.col("ordered_at").max())
    )

    order_by = ["occurred_at", "event_id"]
    engagement = (
        _engagement_events(silver, ids, before=None)
        .group_by("account_id")
        .agg(
            last_engagement_at=pl.col("occurred_at").max(),
            last_engagement_type=pl.col("event_type").sort_by(order_by).last(),
            last_engaged_contact_id=pl.col("contact_id").sort_by(order_by).last(),
        )
    )

    rows = current.with_columns(
        region=rules.region(pl.col("country")), reporting_currency=pl.lit(currency)
    )
    for part in (contacts, pipeline, revenue, buyers, last_order, engagement):
        rows = rows.join(part, on="account_id", how="left")
    return _shape("customer_360", _zero(rows, "customer_360"))


def daily_revenue(
    silver: Mapping[str, pl.DataFrame],
    rules: GoldRules,
    days: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Orders and revenue per order day (UTC), region and currency.

    Every order counts once, in its current state, on the day and in the currency it was
    placed in; its region is its account's at the order's time.

    Args:
        silver: the silver frames.
        rules: reporting currency and regions.
        days: compute only these ``(order_date, currency)`` pairs (None: all).
    """
    states = order_states(silver["fact_orders"]).with_columns(
        order_date=pl.col("ordered_at").dt.date()
    )
    if days is not None:
        states = states.join(days, on=["order_date", "currency"], how="semi")
    accounts = silver["dim_account"].filter(
        _in("account_id", states.get_column("account_id").unique())
    )
    placed = versions_at(states, "ordered_at", accounts, "account_id", {"country": "_country"})
    placed = to_reporting(
        placed.with_columns(region=rules.region(pl.col("_country"))),
        silver["dim_fx_rate"],
        rules.currency,
        at="ordered_at",
    )
    paid = pl.col("is_revenue")
    rows = placed.group_by("order_date", "region", "currency").agg(
        orders=pl.len(),
        paid_orders=paid.sum(),
        pending_orders=(~paid & ~pl.col("is_cancelled")).sum(),
        cancelled_orders=pl.col("is_cancelled").sum(),
        revenue=pl.col("amount").filter(paid).sum(),
        revenue_reporting=pl.col("amount_reporting").filter(paid).sum(),
        unconverted_orders=(paid & pl.col("amount_reporting").is_null()).sum(),
    )
    return _shape(
        "daily_revenue",
        _zero(rows, "daily_revenue").with_columns(reporting_currency=pl.lit(rules.currency)),
    )


def _month(at: pl.Expr) -> pl.Expr:
    return at.dt.truncate("1mo").dt.date()


def opportunity_pipeline(
    silver: Mapping[str, pl.DataFrame],
    rules: GoldRules,
    through: date,
    since: date | None = None,
) -> pl.DataFrame:
    """The pipeline at the end of each month, per stage, and the opportunities that entered
    each stage during the month.

    Months run from the first month an opportunity existed to the month of ``through``; a
    month's snapshot is every opportunity version valid at its last instant (for the month
    still running: the latest versions), amounts converted at the FX rates valid then.

    Args:
        silver: the silver frames.
        rules: reporting currency and regions.
        through: a day of the last month.
        since: compute only months from this one (its first day; None: all).
    """
    versions = silver["dim_opportunity"].filter(
        pl.col("valid_to").is_null() | (pl.col("valid_to") > pl.col("valid_from"))
    )
    empty = pl.DataFrame(schema=GOLD_SCHEMAS["opportunity_pipeline"])
    first = versions.select(_month(pl.col("valid_from").min())).item()
    if first is None:
        return empty
    start = max(first, since) if since is not None else first
    last = through.replace(day=1)
    if start > last:
        return empty
    months = pl.DataFrame({"month": pl.date_range(start, last, "1mo", eager=True)}).with_columns(
        _at=pl.col("month").dt.offset_by("1mo").cast(TS) - _MICROSECOND
    )
    alive = versions.filter(
        pl.col("valid_to").is_null() | (pl.col("valid_to") > months.get_column("_at").min())
    )
    held = to_reporting(
        months.join(alive, how="cross").filter(valid_at(pl.col("_at"))),
        silver["dim_fx_rate"],
        rules.currency,
        at="_at",
    )
    snapshot = held.group_by("month", "stage").agg(
        opportunities=pl.len(),
        amount_reporting=pl.col("amount_reporting").sum(),
        weighted_amount_reporting=(pl.col("amount_reporting") * pl.col("probability") / 100)
        .round(2)
        .sum(),
        unconverted_opportunities=pl.col("amount_reporting").is_null().sum(),
    )
    # A version enters its stage when the opportunity's previous version (contiguous in time)
    # had another stage, or there is none: created, or inserted again after a delete.
    key = "opportunity_id"
    previous_stage = pl.col("stage").shift(1).over(key)
    previous_end = pl.col("valid_to").shift(1).over(key)
    entered = (
        versions.sort(key, "valid_from")
        .filter(
            previous_stage.is_null()
            | (previous_end != pl.col("valid_from"))
            | (previous_stage != pl.col("stage"))
        )
        .with_columns(month=_month(pl.col("valid_from")))
        .filter(pl.col("month").is_between(start, last))
        .group_by("month", "stage")
        .agg(entered=pl.len())
    )
    rows = snapshot.join(entered, on=["month", "stage"], how="full", coalesce=True)
    return _shape(
        "opportunity_pipeline",
        _zero(rows, "opportunity_pipeline").with_columns(reporting_currency=pl.lit(rules.currency)),
    )


def customer_features(
    silver: Mapping[str, pl.DataFrame],
    rules: GoldRules,
    as_of: date,
    accounts: pl.Series | None = None,
) -> pl.DataFrame:
    """Features of each account as of the end of day ``as_of`` (UTC), from data before it.

    The accounts are those with a version valid at the day's last instant. Every input is
    restricted to what was true before the day ended: order states from events with
    ``event_ts`` before it, behaviour events that occurred before it (attributed through the
    contact version valid when they occurred), the contact version valid at each order's time
    (a buying contact), FX versions valid at each order's time.
    Definitions: ``docs/guides/ml-features.md``.

    Args:
        silver: the silver frames.
        rules: reporting currency and regions.
        as_of: the day the features describe.
        accounts: compute only these accounts (None: all).
    """
    end = day_end(as_of)
    population = (
        silver["dim_account"].filter(valid_at(pl.lit(end - _MICROSECOND))).select("account_id")
    )
    if accounts is not None:
        population = population.filter(_in("account_id", accounts))
    population = population.unique()
    ids = population.get_column("account_id")

    starts = {
        n: pl.lit(end - timedelta(days=n), dtype=TS)
        for n in {*FEATURE_WINDOWS["orders"], *FEATURE_WINDOWS["events"], _BUYING_WINDOW}
    }

    def within(column: str, days: int) -> pl.Expr:
        return pl.col(column) >= starts[days]

    states = _order_states_of(silver, ids, before=end)
    windows = FEATURE_WINDOWS["orders"]
    orders = (
        states.filter(~pl.col("is_cancelled"))
        .group_by("account_id")
        .agg(
            _last_order=pl.col("ordered_at").max(),
            **{f"orders_{n}d": within("ordered_at", n).sum() for n in windows},
        )
    )
    paid = to_reporting(
        states.filter(pl.col("is_revenue") & within("ordered_at", max(windows))),
        silver["dim_fx_rate"],
        rules.currency,
        at="ordered_at",
    )
    revenue = paid.group_by("account_id").agg(
        unconverted_orders_365d=pl.col("amount_reporting").is_null().sum(),
        **{
            f"revenue_{n}d": pl.col("amount_reporting").filter(within("ordered_at", n)).sum()
            for n in windows
        },
    )
    buyers = (
        _placed_by_own_contacts(
            silver, states.filter(pl.col("is_revenue") & within("ordered_at", _BUYING_WINDOW))
        )
        .group_by("account_id")
        .agg(buying_contacts_90d=pl.col("contact_id").n_unique())
    )

    spans = FEATURE_WINDOWS["events"]
    month = max(spans)
    recent = within("occurred_at", month)
    by_type = {
        f"{t}_{n}d": ((pl.col("event_type") == t) & within("occurred_at", n)).sum()
        for t in EVENT_TYPES
        for n in spans
    }
    engagement = (
        _engagement_events(silver, ids, before=end)
        .group_by("account_id")
        .agg(
            _last_event=pl.col("occurred_at").max(),
            **{f"events_{n}d": within("occurred_at", n).sum() for n in spans},
            **by_type,
            sessions_30d=pl.col("session_id").filter(recent).n_unique(),
            active_contacts_30d=pl.col("contact_id").filter(recent).n_unique(),
        )
    )

    def days_since(column: str) -> pl.Expr:
        return (pl.lit(as_of) - pl.col(column).dt.date()).dt.total_days()

    rows = population
    for part in (orders, revenue, buyers, engagement):
        rows = rows.join(part, on="account_id", how="left")
    rows = rows.with_columns(
        as_of_date=pl.lit(as_of),
        days_since_last_order=days_since("_last_order"),
        days_since_last_event=days_since("_last_event"),
        reporting_currency=pl.lit(rules.currency),
    )
    return _shape("customer_features", _zero(rows, "customer_features"))
