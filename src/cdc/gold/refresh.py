"""Incremental gold: which grains a silver change touches, and the rows to rewrite. Pure.

An incremental build gets, per silver table, the rows that differ between the version its
table was last built from and the current one (:class:`Previous`; :func:`changed_rows` on the
columns gold reads, so a change gold does not read touches nothing). The ``_touched_*``
functions map those rows to the grains whose value may differ, over-approximating where exact
tracking would cost more than recomputing:

* an account's rows: its own versions changed; a contact version naming it appeared or
  went (either side of a change: a contact moving from A to B touches A and B), or a contact
  that points (or pointed) to it changed or has new behaviour events; an order of it changed
  (its contact included); an FX rate it converts at
  changed (orders at or after the change, and for ``customer_360`` its open opportunities);
  for ``customer_360``, an opportunity of it changed, or the 90-day window moved past one of
  its orders;
* a ``daily_revenue`` day and currency: an order of that day changed; an account with orders
  that day changed a version at or before them; a rate for that currency changed at or
  before them;
* ``opportunity_pipeline`` months: every month from the earliest changed opportunity version
  or FX rate (a snapshot carries every older version still valid);
* ``customer_features`` days: the touched accounts on every stored day from the earliest
  change's day on (a row as of D reads nothing timed after D), and every account on a new day.

:func:`refresh` recomputes those grains with the same functions a full build runs
(:mod:`cdc.gold.tables`), so a grain's value does not depend on how it was reached; the
property test in ``tests/unit/test_gold.py`` checks incremental == full over random
histories. :func:`plan` turns the recomputed rows into the upserts and deletes of one MERGE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import polars as pl

from cdc.gold.frames import SILVER_TABLES, GoldRules, day_end, empty_silver
from cdc.gold.tables import (
    GOLD_KEYS,
    GOLD_SCHEMAS,
    GOLD_SOURCES,
    customer_360,
    customer_features,
    daily_revenue,
    opportunity_pipeline,
)

__all__ = ["Previous", "Refresh", "Scope", "changed_rows", "plan", "refresh"]


@dataclass(frozen=True)
class Scope:
    """The grains a refresh recomputed: every grain, or rows matching any part.

    Attributes:
        everything: the whole table.
        frames: rows whose columns match a row of one of these frames (a semi-join).
        filters: rows for which one of these expressions holds.
    """

    everything: bool = False
    frames: tuple[pl.DataFrame, ...] = ()
    filters: tuple[pl.Expr, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether no grain is in scope."""
        return not self.everything and not self.filters and all(f.is_empty() for f in self.frames)

    def select(self, rows: pl.LazyFrame) -> pl.LazyFrame:
        """The rows in scope."""
        if self.everything:
            return rows
        parts = [rows.join(f.lazy(), on=f.columns, how="semi") for f in self.frames]
        parts += [rows.filter(f) for f in self.filters]
        if not parts:
            return rows.head(0)
        return pl.concat(parts).unique(maintain_order=True)


@dataclass(frozen=True)
class Previous:
    """What changed since a table was last built.

    Attributes:
        changes: per silver table, the rows that differ between the version the last build
            read and the current one (:func:`changed_rows`; a table not named: none).
        as_of: the last build's reference day.
    """

    changes: Mapping[str, pl.DataFrame]
    as_of: date

    @classmethod
    def between(
        cls, old: Mapping[str, pl.DataFrame], new: Mapping[str, pl.DataFrame], as_of: date
    ) -> Previous:
        """The changes from silver frames ``old`` to ``new`` (a table missing in ``old`` was
        empty), for a build last made as of ``as_of``."""
        changes = {n: changed_rows(old.get(n, empty_silver(n)), f) for n, f in new.items()}
        return cls(changes, as_of)


@dataclass(frozen=True)
class Refresh:
    """Recomputed rows: every grain in ``scope`` (a grain in scope without a row is gone)."""

    rows: pl.DataFrame
    scope: Scope


def changed_rows(old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """Rows in exactly one of ``old`` and ``new`` (removed, added, or either side of a change)."""
    if old is new:
        return new.clear()
    removed = old.join(new, on=old.columns, how="anti", nulls_equal=True)
    added = new.join(old, on=new.columns, how="anti", nulls_equal=True)
    return pl.concat([removed, added])


def _in(column: str, values: pl.Series) -> pl.Expr:
    return pl.col(column).is_in(values.implode())


def _fx_touched(fx: pl.DataFrame, currency: str) -> pl.DataFrame:
    """Per currency, the earliest changed FX version that converts it into ``currency``."""
    other = (
        pl.when(pl.col("quote_currency") == currency)
        .then(pl.col("base_currency"))
        .when(pl.col("base_currency") == currency)
        .then(pl.col("quote_currency"))
    )
    return (
        fx.select(other.alias("currency"), "valid_from")
        .filter(pl.col("currency").is_not_null() & (pl.col("currency") != currency))
        .group_by("currency")
        .agg(since=pl.col("valid_from").min())
    )


def _touched_accounts(
    changes: Mapping[str, pl.DataFrame],
    silver: Mapping[str, pl.DataFrame],
    rules: GoldRules,
    opportunities: bool,
) -> pl.Series:
    orders, contacts = silver["fact_orders"], silver["dim_contact"]
    changed_orders = changes["fact_orders"]
    moved = pl.concat(
        [
            changes["dim_contact"].get_column("contact_id"),
            changes["fact_behavior"].get_column("contact_id"),
        ]
    ).unique()
    fx = _fx_touched(changes["dim_fx_rate"], rules.currency)
    found = [
        changes["dim_account"].get_column("account_id"),
        # Behaviour events and orders count for an account through the contact version valid
        # at their time naming it (buying contacts: naming the order's account), so a contact
        # change can alter only the accounts its removed and added versions name: the old and
        # the new account of a move, however late the version arrives.
        changes["dim_contact"].get_column("account_id"),
        contacts.filter(_in("contact_id", moved)).get_column("account_id"),
        changed_orders.get_column("account_id"),
        orders.filter(_in("order_id", changed_orders.get_column("order_id"))).get_column(
            "account_id"
        ),
        orders.join(fx, on="currency")
        .filter(pl.col("ordered_at") >= pl.col("since"))
        .get_column("account_id"),
    ]
    if opportunities:
        found += [
            changes["dim_opportunity"].get_column("account_id"),
            silver["dim_opportunity"]
            .filter(pl.col("valid_to").is_null() & _in("currency", fx.get_column("currency")))
            .get_column("account_id"),
        ]
    return pl.concat(found).drop_nulls().unique().sort()


def _window_moved(silver: Mapping[str, pl.DataFrame], before: date, after: date) -> pl.Series:
    """Accounts with an order in exactly one of the 90-day windows ending ``before``/``after``."""

    def window(day: date) -> pl.Expr:
        end = day_end(day)
        return (pl.col("ordered_at") >= end - timedelta(days=90)) & (pl.col("ordered_at") < end)

    orders = silver["fact_orders"]
    return orders.filter(window(before) != window(after)).get_column("account_id").unique()


def _touched_days(
    changes: Mapping[str, pl.DataFrame], silver: Mapping[str, pl.DataFrame], rules: GoldRules
) -> pl.DataFrame:
    orders = silver["fact_orders"]
    changed = changes["fact_orders"]
    accounts = changes["dim_account"].group_by("account_id").agg(since=pl.col("valid_from").min())
    fx = _fx_touched(changes["dim_fx_rate"], rules.currency)
    placed = ["ordered_at", "currency"]
    events = pl.concat(
        [
            changed.select(placed),
            orders.filter(_in("order_id", changed.get_column("order_id"))).select(placed),
            orders.join(accounts, on="account_id")
            .filter(pl.col("ordered_at") >= pl.col("since"))
            .select(placed),
            orders.join(fx, on="currency")
            .filter(pl.col("ordered_at") >= pl.col("since"))
            .select(placed),
        ]
    )
    return (
        events.select(pl.col("ordered_at").dt.date().alias("order_date"), "currency")
        .unique()
        .sort("order_date", "currency")
    )


def _touched_since(
    changes: Mapping[str, pl.DataFrame], rules: GoldRules, previous: date, as_of: date
) -> date | None:
    """The first month (its first day) whose pipeline snapshot may have changed."""
    starts = [
        changes["dim_opportunity"].get_column("valid_from").min(),
        _fx_touched(changes["dim_fx_rate"], rules.currency).get_column("since").min(),
    ]
    months = [s.date().replace(day=1) for s in starts if s is not None]  # type: ignore[union-attr]
    if previous.replace(day=1) != as_of.replace(day=1):
        months.append(min(previous, as_of).replace(day=1))
    return min(months) if months else None


_TIMES = {
    "dim_account": "valid_from",
    "dim_contact": "valid_from",
    "dim_opportunity": "valid_from",
    "dim_fx_rate": "valid_from",
    "fact_orders": "event_ts",
    "fact_behavior": "occurred_at",
}
"""The time from which a changed silver row can matter: a version's start, a fact's time."""


def _touched_from(changes: Mapping[str, pl.DataFrame]) -> date | None:
    """The UTC day of the earliest changed row (None: nothing changed)."""
    times = [changes[n].get_column(c).min() for n, c in _TIMES.items()]
    days = [t.date() for t in times if isinstance(t, datetime)]
    return min(days) if days else None


def _features(
    silver: Mapping[str, pl.DataFrame],
    rules: GoldRules,
    days: Sequence[date],
    accounts: pl.Series | None,
) -> pl.DataFrame:
    frames = [customer_features(silver, rules, day, accounts) for day in sorted(days)]
    return pl.concat(frames) if frames else pl.DataFrame(schema=GOLD_SCHEMAS["customer_features"])


def refresh(
    table: str,
    silver: Mapping[str, pl.DataFrame],
    rules: GoldRules,
    as_of: date,
    previous: Previous | None = None,
    dates: Sequence[date] = (),
) -> Refresh:
    """The rows of gold table ``table`` to rewrite.

    Args:
        table: a gold table name.
        silver: the current silver frames.
        rules: reporting currency and regions.
        as_of: the build's reference day.
        previous: what the table was last built from (None: a full build, every grain).
        dates: for ``customer_features``, the ``as_of_date`` s the table holds; they are
            kept up to date along with ``as_of``.
    """
    if previous is None:
        return Refresh(_full(table, silver, rules, as_of, dates), Scope(everything=True))
    sources = GOLD_SOURCES[table]
    changes = {
        name: previous.changes.get(name, empty_silver(name))
        if name in sources
        else empty_silver(name)
        for name in SILVER_TABLES
    }
    if table == "customer_360":
        accounts = pl.concat(
            [
                _touched_accounts(changes, silver, rules, opportunities=True),
                _window_moved(silver, previous.as_of, as_of),
            ]
        ).unique()
        rows = customer_360(silver, rules, as_of, accounts) if accounts.len() else None
        return _refresh(table, rows, Scope(frames=(accounts.to_frame("account_id"),)))
    if table == "daily_revenue":
        days = _touched_days(changes, silver, rules)
        rows = daily_revenue(silver, rules, days) if days.height else None
        return _refresh(table, rows, Scope(frames=(days,)))
    if table == "opportunity_pipeline":
        since = _touched_since(changes, rules, previous.as_of, as_of)
        if since is None:
            return _refresh(table, None, Scope())
        rows = opportunity_pipeline(silver, rules, as_of, since)
        return _refresh(table, rows, Scope(filters=(pl.col("month") >= since,)))
    if table == "customer_features":
        # Features as of day D read only data timed before D ends: a change at time t can
        # alter the rows of days from t's on.
        accounts = _touched_accounts(changes, silver, rules, opportunities=False)
        start = _touched_from(changes)
        kept = [d for d in dates if start is not None and d >= start] if accounts.len() else []
        frames = [_features(silver, rules, kept, accounts)]
        filters: tuple[pl.Expr, ...] = ()
        if as_of not in dates:
            frames.append(customer_features(silver, rules, as_of))
            filters = (pl.col("as_of_date") == as_of,)
        days = pl.DataFrame({"as_of_date": kept}, schema={"as_of_date": pl.Date})
        scope = Scope(
            frames=(accounts.to_frame("account_id").join(days, how="cross"),), filters=filters
        )
        return _refresh(table, pl.concat(frames), scope)
    raise ValueError(f"unknown gold table {table!r}")


def _full(
    table: str,
    silver: Mapping[str, pl.DataFrame],
    rules: GoldRules,
    as_of: date,
    dates: Sequence[date],
) -> pl.DataFrame:
    if table == "customer_360":
        return customer_360(silver, rules, as_of)
    if table == "daily_revenue":
        return daily_revenue(silver, rules)
    if table == "opportunity_pipeline":
        return opportunity_pipeline(silver, rules, as_of)
    if table == "customer_features":
        return _features(silver, rules, sorted({*dates, as_of}), None)
    raise ValueError(f"unknown gold table {table!r}")


def _refresh(table: str, rows: pl.DataFrame | None, scope: Scope) -> Refresh:
    if rows is None:
        rows = pl.DataFrame(schema=GOLD_SCHEMAS[table])
    outside = rows.height - scope.select(rows.lazy()).collect().height
    if outside:  # an invariant of the scope functions, not a data condition
        raise AssertionError(f"gold/{table}: {outside} recomputed rows outside the scope")
    return Refresh(rows, scope)


def plan(
    table: str, existing: pl.DataFrame, refreshed: Refresh
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The upserts (whole rows) and deletes (keys) that bring ``existing`` to ``refreshed``.

    Args:
        table: the gold table.
        existing: the table's rows in ``refreshed.scope`` (more rows do no harm).
        refreshed: the recomputed rows.

    Returns:
        Rows that are new or differ from the table's, and the keys of rows in scope that no
        longer exist.
    """
    keys = list(GOLD_KEYS[table])
    in_scope = refreshed.scope.select(existing.lazy()).collect()
    rows = refreshed.rows
    upserts = rows.join(in_scope, on=rows.columns, how="anti", nulls_equal=True)
    deletes = in_scope.join(rows, on=keys, how="anti").select(keys)
    return upserts, deletes
