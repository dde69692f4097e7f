"""Gold tables: hand-computed expectations on small silver tables, point in time, incremental.

Silver tables are written with delta-rs into a temporary lake, in the layout the pipelines
write (every version of a dimension with ``valid_from``/``valid_to``/``is_current``, every
event of a fact table); ``cdc gold build`` (:func:`cdc.gold.build_gold`) reads them there.
No Spark, no broker.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from deltalake import CommitProperties, DeltaTable, write_deltalake
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from cdc.cli import main
from cdc.config.settings import load_settings, read_config
from cdc.errors import ConfigError
from cdc.gold import GOLD_KEYS, GOLD_SCHEMAS, GOLD_TABLES, build_gold, gold_path
from cdc.gold.build import LOGIC_VERSION, rules_of
from cdc.gold.frames import (
    SILVER_COLUMNS,
    SILVER_TABLES,
    TS,
    GoldRules,
    reference_day,
    to_reporting,
    versions_at,
)
from cdc.gold.refresh import Previous, plan, refresh
from cdc.store.plan import read_commit_info
from tests.support.gold_scenario import (
    ACCOUNTS,
    AS_OF,
    BEHAVIOUR,
    CONTACTS,
    DAILY_REVENUE,
    FX_RATES,
    OCT1,
    ORDERS,
    SCENARIO,
    D,
    Lake,
    account_version,
    at,
    behaviour_event,
    daily,
    expected,
    frame,
    order_events,
    order_row,
    placed_order,
    rate_version,
)
from tests.support.paths import REPO_ROOT


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake(tmp_path)
    lake.write_all(SCENARIO)
    return lake


def _a1_360(country: str = "DE", region: str = "EMEA", buyers: int = 2) -> tuple[Any, ...]:
    return (
        "A1", "Acme", "Retail", country, region, "smb", D("1000000.00"),
        "owner.a1@crm.example", OCT1,
        2, "C1,C2",  # current contacts: C2 moved in on Mar 8
        2, D("1200.00"), D("900.00"), 1,  # O1 1000 EUR at today's 1.2, 75 %; O3 in GBP
        4, D("195.00"), 3, D("190.00"),  # ORD00 (Nov) is outside the 90 days
        buyers,  # C1 (ORD1), C2 (ORD7; ORD0 was placed while C2 was A2's)
        1,  # ORD7 in GBP
        at(3, 17, 10),  # ORD7
        at(3, 16, 12), "email_open", "C1",
        "USD",
    )  # fmt: skip


A2_360 = (
    "A2", "Borealis", "Retail", "JP", "APAC", "smb", D("1000000.00"),
    "owner.a2@crm.example", OCT1,
    1, "C3",
    0, D("0.00"), D("0.00"), 0,  # O2 is closed_won
    2, D("70.00"), 2, D("70.00"),  # ORD2 50 USD, ORD3 3000 JPY / 150
    1,  # C3 (ORD2); ORD3's C4 was deleted before it
    0,
    at(3, 11, 9),
    at(3, 11, 12), "download", "C3",  # E1 (C2, while A2's) is older
    "USD",
)  # fmt: skip

PIPELINE = expected(
    "opportunity_pipeline",
    [
        # month, stage, opportunities, amount, weighted, unconverted, entered
        (date(2026, 2, 1), "proposal", 1, D("1000.00"), D("500.00"), 0, 1, "USD"),  # at 1.0
        (date(2026, 3, 1), "closed_won", 1, D("500.00"), D("500.00"), 0, 1, "USD"),
        (date(2026, 3, 1), "negotiation", 1, D("1200.00"), D("900.00"), 0, 1, "USD"),  # 1.2
        (date(2026, 3, 1), "prospecting", 1, D("0.00"), D("0.00"), 1, 1, "USD"),  # GBP
    ],
)


def features(as_of: date, account_id: str, **values: Any) -> dict[str, Any]:
    """A feature row: zero counts and amounts unless given."""
    row: dict[str, Any] = {}
    for column, dtype in GOLD_SCHEMAS["customer_features"].items():
        row[column] = D("0.00") if dtype == pl.Decimal(38, 2) else 0
    row.update(account_id=account_id, as_of_date=as_of, reporting_currency="USD", **values)
    return row


FEATURES_MAR_17 = [
    features(
        AS_OF,
        "A1",
        days_since_last_order=0,  # ORD7
        orders_30d=3,  # ORD1, ORD5 (pending), ORD7; ORD4 is cancelled
        orders_90d=4,  # + ORD0 (Jan 20)
        orders_365d=5,  # + ORD00 (Nov 1)
        revenue_30d=D("110.00"),  # ORD1; ORD7 has no rate
        revenue_90d=D("190.00"),
        revenue_365d=D("195.00"),
        unconverted_orders_365d=1,
        buying_contacts_90d=2,  # C1 (ORD1), C2 (ORD7)
        days_since_last_event=1,  # E3
        events_7d=1,
        events_30d=2,  # E2 (C2, A1's since Mar 8), E3
        click_30d=1,
        email_open_7d=1,
        email_open_30d=1,
        sessions_30d=2,
        active_contacts_30d=2,
    ),
    features(
        AS_OF,
        "A2",
        days_since_last_order=6,
        orders_30d=2,
        orders_90d=2,
        orders_365d=2,
        revenue_30d=D("70.00"),
        revenue_90d=D("70.00"),
        revenue_365d=D("70.00"),
        buying_contacts_90d=1,  # C3 (ORD2); C4 (ORD3) was deleted by then
        days_since_last_event=6,  # E4
        events_7d=1,
        events_30d=2,  # E1 (C2, A2's until Mar 8), E4
        page_view_30d=1,
        download_7d=1,
        download_30d=1,
        sessions_30d=2,
        active_contacts_30d=2,
    ),
]

FEATURES_MAR_9 = [
    features(
        date(2026, 3, 9),
        "A1",
        days_since_last_order=4,  # ORD1
        orders_30d=1,
        orders_90d=2,
        orders_365d=3,
        revenue_30d=D("110.00"),
        revenue_90d=D("190.00"),
        revenue_365d=D("195.00"),
        buying_contacts_90d=1,  # C1 (ORD1); ORD0's C2 was A2's
        days_since_last_event=0,
        events_7d=1,  # E2
        events_30d=1,
        click_7d=1,
        click_30d=1,
        sessions_30d=1,
        active_contacts_30d=1,
    ),
    features(
        date(2026, 3, 9),
        "A2",  # still in the US; ORD3 and E4 are later
        days_since_last_order=0,  # ORD2, paid Mar 9 13:00
        orders_30d=1,
        orders_90d=1,
        orders_365d=1,
        revenue_30d=D("50.00"),
        revenue_90d=D("50.00"),
        revenue_365d=D("50.00"),
        buying_contacts_90d=1,  # C3 (ORD2)
        days_since_last_event=2,  # E1
        events_7d=1,
        events_30d=1,
        page_view_7d=1,
        page_view_30d=1,
        sessions_30d=1,
        active_contacts_30d=1,
    ),
]


def feature_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=GOLD_SCHEMAS["customer_features"]).sort(
        GOLD_KEYS["customer_features"]
    )


# --------------------------------------------------------------------------- hand-computed


def test_gold_tables_match_hand_computed_expectations(lake: Lake) -> None:
    results = lake.build(as_of=AS_OF)

    assert list(results) == list(GOLD_TABLES)
    assert all(r.changed and r.version == 0 and r.mode == "full" for r in results.values())
    assert {n: r.rows for n, r in results.items()} == {
        "customer_360": 2,  # A3 was deleted
        "daily_revenue": 8,
        "opportunity_pipeline": 4,
        "customer_features": 2,
    }
    assert_frame_equal(lake.gold("daily_revenue"), DAILY_REVENUE)
    assert_frame_equal(lake.gold("customer_360"), expected("customer_360", [_a1_360(), A2_360]))
    assert_frame_equal(lake.gold("opportunity_pipeline"), PIPELINE)
    assert_frame_equal(lake.gold("customer_features"), feature_frame(FEATURES_MAR_17))


def test_a_build_over_unchanged_silver_writes_no_version(lake: Lake) -> None:
    lake.build(as_of=AS_OF)
    versions = {n: lake.version(n) for n in GOLD_TABLES}

    again = lake.build(as_of=AS_OF)
    assert {n: (r.changed, r.version, r.mode) for n, r in again.items()} == dict.fromkeys(
        GOLD_TABLES, (False, None, "incremental")
    )
    full = lake.build(as_of=AS_OF, full=True)  # recomputes everything, finds nothing to write
    assert {n: (r.changed, r.version, r.mode) for n, r in full.items()} == dict.fromkeys(
        GOLD_TABLES, (False, None, "full")
    )
    assert {n: lake.version(n) for n in GOLD_TABLES} == versions


def test_each_commit_records_the_silver_versions_it_was_built_from(lake: Lake) -> None:
    lake.build(as_of=AS_OF)
    lake.write("fact_orders", ORDERS[:3])  # silver/fact_orders version 1
    lake.build(tables=["daily_revenue"], as_of=AS_OF)

    entry = DeltaTable(gold_path(lake.settings, "daily_revenue")).history(1)[0]
    # One commit-metadata shape for every writer: userMetadata = {"cdc": {...}}.
    assert set(entry) & {"cdc.operation", "cdc.gold.silver"} == set()
    recorded = json.loads(entry["userMetadata"])["cdc"]
    assert recorded == read_commit_info(entry)
    ids = {n: DeltaTable(lake.silver_uris[n]).metadata().id for n in recorded["silver"]}
    assert recorded == {
        "operation": "gold-build",
        "writer": "delta-rs",
        "table": "daily_revenue",
        "mode": "incremental",
        "silver": {
            "dim_account": {"version": 0, "id": ids["dim_account"]},
            "dim_fx_rate": {"version": 0, "id": ids["dim_fx_rate"]},
            "fact_orders": {"version": 1, "id": ids["fact_orders"]},
        },
        "as_of": "2026-03-17",
        "rules": rules_of(lake.settings).fingerprint(LOGIC_VERSION),
    }


def test_a_build_recorded_by_an_earlier_release_is_still_read(lake: Lake) -> None:
    """Gold tables whose last build recorded its inputs as commitInfo fields (the shape
    before one commit-metadata shape) stay incremental: the upgrade costs no full build."""
    lake.build(as_of=AS_OF)
    uri = gold_path(lake.settings, "daily_revenue")
    recorded = read_commit_info(DeltaTable(uri).history(1)[0])
    assert recorded is not None
    # The same table and inputs, its only commit made the way the build used to record them.
    rows = DeltaTable(uri).to_pyarrow_table()
    shutil.rmtree(uri)
    write_deltalake(
        uri,
        rows,
        commit_properties=CommitProperties(
            custom_metadata={
                "cdc.operation": "gold-build",
                "cdc.gold.table": "daily_revenue",
                "cdc.gold.mode": "full",
                "cdc.gold.silver": json.dumps(recorded["silver"]),
                "cdc.gold.as_of": recorded["as_of"],
                "cdc.gold.rules": recorded["rules"],
            }
        ),
    )
    [legacy] = DeltaTable(uri).history()
    assert "userMetadata" not in legacy
    assert read_commit_info(legacy) == {"operation": "gold-build", "writer": "delta-rs"}

    unchanged = lake.build(tables=["daily_revenue"], as_of=AS_OF)["daily_revenue"]
    assert (unchanged.changed, unchanged.mode) == (False, "incremental")

    late_order = placed_order(order_row("ORD8", "A2", "30.00", "USD", at(3, 11, 15)), ("paid", 1))
    lake.write("fact_orders", ORDERS + late_order)
    moved = lake.build(tables=["daily_revenue"], as_of=AS_OF)["daily_revenue"]
    assert (moved.changed, moved.mode, moved.upserted, moved.deleted) == (
        True,
        "incremental",
        1,
        0,
    )
    full = lake.build(tables=["daily_revenue"], as_of=AS_OF, full=True)["daily_revenue"]
    assert not full.changed  # the incremental result is the full build's


def test_an_incremental_build_rewrites_only_the_grains_a_change_touches(lake: Lake) -> None:
    lake.build(as_of=AS_OF)
    late_order = placed_order(order_row("ORD8", "A2", "30.00", "USD", at(3, 11, 15)), ("paid", 1))
    lake.write("fact_orders", ORDERS + late_order)

    results = lake.build(as_of=AS_OF)

    touched = {n: (r.upserted, r.deleted) for n, r in results.items() if r.changed}
    # One account's 360 row; one day/region/currency (a new one: A2 was in Japan by then);
    # the one account's features of the one day; the pipeline reads no orders.
    assert touched == {"customer_360": (1, 0), "daily_revenue": (1, 0), "customer_features": (1, 0)}
    assert lake.gold("daily_revenue").filter(pl.col("order_date") == date(2026, 3, 11)).rows() == [
        (date(2026, 3, 11), "APAC", "JPY", 1, 1, 0, 0, D("3000.00"), D("20.00"), 0, "USD"),
        (date(2026, 3, 11), "APAC", "USD", 1, 1, 0, 0, D("30.00"), D("30.00"), 0, "USD"),
    ]
    assert not any(r.changed for r in lake.build(as_of=AS_OF, full=True).values())


def test_a_late_dimension_version_moves_orders_incrementally_as_a_full_rebuild_does(
    lake: Lake,
) -> None:
    lake.build(as_of=AS_OF)
    # After gold was built, a change of A1's country sequenced on Mar 16 arrives: silver
    # splits A1's history there. Orders from Mar 16 on were placed by a US account.
    lake.write(
        "dim_account",
        [
            account_version("A1", "DE", OCT1, at(3, 16)),
            account_version("A1", "US", at(3, 16), None),
            *ACCOUNTS[1:],
        ],
    )

    results = lake.build(as_of=AS_OF)

    assert {n: (r.changed, r.mode) for n, r in results.items()} == {
        "customer_360": (True, "incremental"),
        "daily_revenue": (True, "incremental"),
        "opportunity_pipeline": (False, "incremental"),
        "customer_features": (False, "incremental"),  # no feature reads the country
    }
    assert (results["daily_revenue"].upserted, results["daily_revenue"].deleted) == (2, 2)
    moved = DAILY_REVENUE.filter(pl.col("order_date") < date(2026, 3, 16)).vstack(
        daily(
            (date(2026, 3, 16), "AMER", "EUR", 2, 0, 1, 1, D("0.00"), D("0.00"), 0),
            (date(2026, 3, 17), "AMER", "GBP", 1, 1, 0, 0, D("10.00"), D("0.00"), 1),
        )
    )
    assert_frame_equal(lake.gold("daily_revenue"), moved.sort(GOLD_KEYS["daily_revenue"]))
    assert_frame_equal(
        lake.gold("customer_360"),
        expected("customer_360", [_a1_360("US", "AMER"), A2_360]),
    )
    # A full rebuild finds the incremental result already right: nothing to write.
    assert not any(r.changed for r in lake.build(as_of=AS_OF, full=True).values())


def test_a_late_contact_version_moves_an_orders_buyer_incrementally_as_a_full_rebuild_does(
    lake: Lake,
) -> None:
    lake.build(as_of=date(2026, 3, 9))
    lake.build(as_of=AS_OF)  # features of Mar 9 and of Mar 17
    before = {n: lake.gold(n) for n in GOLD_TABLES}
    # After gold was built, CRM changes sequenced in the past arrive: C1 moved to A2 on Mar 3
    # and back to A1 on Mar 6. Silver splits C1's one version in three; ORD1 (A1's, placed by
    # C1 on Mar 5) was placed by a contact of another account. C1 has no behaviour event then.
    late: list[dict[str, Any]] = [
        {"contact_id": "C1", "account_id": "A1", "valid_from": OCT1, "valid_to": at(3, 3)},
        {"contact_id": "C1", "account_id": "A2", "valid_from": at(3, 3), "valid_to": at(3, 6)},
        {"contact_id": "C1", "account_id": "A1", "valid_from": at(3, 6), "valid_to": None},
        *CONTACTS[1:],
    ]
    lake.write("dim_contact", late)

    results = lake.build(as_of=AS_OF)

    assert {n: (r.changed, r.mode, r.upserted, r.deleted) for n, r in results.items()} == {
        "customer_360": (True, "incremental", 1, 0),  # A1
        "daily_revenue": (False, "incremental", 0, 0),  # reads no contact
        "opportunity_pipeline": (False, "incremental", 0, 0),
        "customer_features": (True, "incremental", 2, 0),  # A1 on Mar 9 and on Mar 17
    }
    assert_frame_equal(
        lake.gold("customer_360"), expected("customer_360", [_a1_360(buyers=1), A2_360])
    )  # C2 (ORD7) only
    assert_frame_equal(
        lake.gold("customer_features"),
        feature_frame(
            [
                {**FEATURES_MAR_9[0], "buying_contacts_90d": 0},  # ORD0: C2, ORD1: C1, A2's
                FEATURES_MAR_9[1],
                {**FEATURES_MAR_17[0], "buying_contacts_90d": 1},  # C2 (ORD7)
                FEATURES_MAR_17[1],
            ]
        ),
    )
    for name in ("daily_revenue", "opportunity_pipeline"):
        assert_frame_equal(lake.gold(name), before[name])
    # A full rebuild finds the incremental result already right: nothing to write.
    assert not any(r.changed for r in lake.build(as_of=AS_OF, full=True).values())

    # The move's both accounts are recomputed: A1 lost a buyer; A2 might have gained one.
    silver = {n: frame(n, rows) for n, rows in SCENARIO.items()}
    moved = {**silver, "dim_contact": frame("dim_contact", late)}
    previous = Previous.between(silver, moved, AS_OF)
    for name in ("customer_360", "customer_features"):
        refreshed = refresh(name, moved, GoldRules(), AS_OF, previous, [date(2026, 3, 9), AS_OF])
        assert sorted(set(refreshed.rows.get_column("account_id"))) == ["A1", "A2"], name


def test_a_corrected_order_moves_to_its_new_account_and_currency(lake: Lake) -> None:
    lake.build(as_of=AS_OF)
    # A later event of ORD1 (A1, 100 EUR, Mar 5) corrects it: A2's, in USD. Nothing else of A1
    # or of (Mar 5, EUR) changed; both lose the order.
    correction = {**ORDERS[5], "event_id": "ORD1-fix", "account_id": "A2", "currency": "USD"}
    lake.write("fact_orders", [*ORDERS, {**correction, "event_ts": at(3, 5, 12)}])

    results = lake.build(as_of=AS_OF)

    assert (results["daily_revenue"].upserted, results["daily_revenue"].deleted) == (1, 1)
    mar_5 = lake.gold("daily_revenue").filter(pl.col("order_date") == date(2026, 3, 5))
    assert mar_5.rows() == [
        (date(2026, 3, 5), "AMER", "USD", 1, 1, 0, 0, D("100.00"), D("100.00"), 0, "USD")
    ]
    revenue = lake.gold("customer_360").select("account_id", "paid_orders", "lifetime_revenue")
    assert revenue.rows() == [("A1", 3, D("85.00")), ("A2", 3, D("170.00"))]
    assert not any(r.changed for r in lake.build(as_of=AS_OF, full=True).values())


def test_moving_the_reference_day_refreshes_windows_and_adds_a_feature_day(lake: Lake) -> None:
    lake.build(as_of=AS_OF)
    later = date(2026, 4, 20)  # Jan 20 (ORD0) leaves the 90 days; a new month begins

    results = lake.build(as_of=later)

    assert {n: r.changed for n, r in results.items()} == {
        "customer_360": True,
        "daily_revenue": False,
        "opportunity_pipeline": True,
        "customer_features": True,
    }
    a1 = lake.gold("customer_360").filter(pl.col("account_id") == "A1")
    assert a1.select("paid_orders_90d", "revenue_90d").row(0) == (2, D("110.00"))
    april = lake.gold("opportunity_pipeline").filter(pl.col("month") == date(2026, 4, 1))
    assert april.select("stage", "opportunities", "entered").rows() == [
        ("closed_won", 1, 0),
        ("negotiation", 1, 0),
        ("prospecting", 1, 0),
    ]
    days = lake.gold("customer_features").get_column("as_of_date").unique().sort().to_list()
    assert days == [AS_OF, later]
    assert not any(r.changed for r in lake.build(as_of=later, full=True).values())


def test_a_silver_table_replaced_or_vacuumed_since_the_last_build_means_a_full_build(
    lake: Lake,
) -> None:
    lake.build(as_of=AS_OF)
    # fact_orders recreated (another Delta table id), without ORD7.
    shutil.rmtree(lake.silver_uris["fact_orders"])
    lake.write("fact_orders", ORDERS[:-1])
    replaced = lake.build(tables=["daily_revenue"], as_of=AS_OF)["daily_revenue"]
    assert (replaced.mode, replaced.changed, replaced.deleted) == ("full", True, 1)
    assert_frame_equal(lake.gold("daily_revenue"), DAILY_REVENUE.head(-1))

    # The dim_account version the last build read is vacuumed away.
    lake.write("dim_account", ACCOUNTS[:3])  # A3 gone: ORD6 (Mar 6) has no account any more
    DeltaTable(lake.silver_uris["dim_account"]).vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=False
    )
    vacuumed = lake.build(tables=["daily_revenue"], as_of=AS_OF)["daily_revenue"]
    assert (vacuumed.mode, vacuumed.changed) == ("full", False)  # A3 was UNKNOWN there already
    # customer_360 was last built before both: ORD7 (A1's, in GBP) is gone.
    after = lake.build(tables=["customer_360"], as_of=AS_OF)["customer_360"]
    assert (after.mode, after.upserted, after.deleted) == ("full", 1, 0)
    a1 = lake.gold("customer_360").filter(pl.col("account_id") == "A1")
    assert a1.select("paid_orders", "unconverted_orders", "last_order_at").row(0) == (
        3,
        0,
        at(3, 16, 10),
    )


def test_silver_not_created_yet_is_empty_and_a_missing_pipeline_is_one_line(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path)
    lake.write("dim_account", ACCOUNTS)
    results = lake.build(as_of=AS_OF)
    assert {n: r.rows for n, r in results.items()} == {
        "customer_360": 2,
        "daily_revenue": 0,
        "opportunity_pipeline": 0,
        "customer_features": 2,
    }
    config = read_config(REPO_ROOT / "config" / "local.yaml")  # with the pipelines it includes
    del config["pipelines"]["behavior"]
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings("local", lake.args, config_dir=tmp_path, environ={})
    with pytest.raises(ConfigError) as raised:
        build_gold(settings, ["customer_features"], as_of=AS_OF)
    assert str(raised.value) == (
        "gold/customer_features reads silver/fact_behavior, but no pipeline has target"
        " fact_behavior"
    )


# --------------------------------------------------------------------------- point in time


def test_features_as_of_a_day_ignore_everything_after_it(lake: Lake) -> None:
    day = date(2026, 3, 9)
    first = lake.build(tables=["customer_features"], as_of=day)["customer_features"]
    assert first.changed
    assert_frame_equal(lake.gold("customer_features"), feature_frame(FEATURES_MAR_9))

    # Data after the day: new orders and a status change, behaviour events (one on the
    # stroke of midnight), dimension versions from after the day (a contact moves, an
    # account is deleted, a new FX rate), and an in-place (untracked) change of an account.
    midnight = at(3, 10)
    lake.write(
        "fact_orders",
        ORDERS
        + order_events(ORDERS[6], ("shipped", midnight))  # ORD2 (paid Mar 9) ships
        + placed_order(order_row("ORD9", "A1", "999.00", "USD", midnight), ("paid", 1)),
    )
    lake.write(
        "fact_behavior",
        [
            *BEHAVIOUR,
            behaviour_event("E6", "C1", "signup", midnight),
            behaviour_event("E7", "C3", "click", at(3, 12)),
        ],
    )
    lake.write(
        "dim_contact",
        [
            {"contact_id": "C1", "account_id": "A1", "valid_from": OCT1, "valid_to": midnight},
            {"contact_id": "C1", "account_id": "A2", "valid_from": midnight, "valid_to": None},
            *CONTACTS[1:],
        ],
    )
    a1_closed = {**account_version("A1", "DE", OCT1, at(3, 12)), "owner_email": "new@crm.example"}
    lake.write("dim_account", [a1_closed, *ACCOUNTS[1:]])
    lake.write(
        "dim_fx_rate",
        [
            FX_RATES[0],
            {**FX_RATES[1], "valid_to": midnight},
            rate_version("EUR", "USD", "2.00000000", midnight, at(3, 15)),
            *FX_RATES[2:],
        ],
    )

    again = lake.build(tables=["customer_features"], as_of=day)["customer_features"]
    assert (again.changed, again.version) == (False, None)
    assert_frame_equal(lake.gold("customer_features"), feature_frame(FEATURES_MAR_9))

    # The same check can fail: an order placed on the day itself does change the day.
    lake.write(
        "fact_orders",
        ORDERS + placed_order(order_row("ORD10", "A2", "5.00", "USD", at(3, 9, 20)), ("paid", 1)),
    )
    control = lake.build(tables=["customer_features"], as_of=day)["customer_features"]
    assert (control.changed, control.upserted) == (True, 1)
    a2 = lake.gold("customer_features").filter(pl.col("account_id") == "A2")
    assert a2.select("orders_30d", "revenue_30d").row(0) == (2, D("55.00"))


def test_a_version_is_valid_from_its_start_up_to_and_excluding_its_end() -> None:
    facts = pl.DataFrame(
        {
            "account_id": ["A2", "A2", "A2", "A3"],
            "currency": ["EUR", "EUR", "EUR", "EUR"],
            "amount": [D("10.00")] * 4,
            "t": [at(3, 1), at(3, 10) - timedelta(microseconds=1), at(3, 10), at(3, 5)],
        },
        schema_overrides={"amount": pl.Decimal(18, 2), "t": TS},
    )
    accounts = frame("dim_account", ACCOUNTS)
    placed = versions_at(facts, "t", accounts, "account_id", {"country": "country"})
    assert placed.get_column("country").to_list() == ["US", "US", "JP", None]  # A3 ended Mar 5

    rates = frame("dim_fx_rate", FX_RATES)
    at_times = to_reporting(
        facts.with_columns(t=pl.col("t") + timedelta(days=5)), rates, "USD", "t"
    )
    # Mar 6, Mar 15 - 1 us, Mar 15 (the 1.2 version starts), Mar 10
    assert at_times.get_column("amount_reporting").to_list() == [
        D("11.00"),
        D("11.00"),
        D("12.00"),
        D("11.00"),
    ]
    current = to_reporting(facts, rates, "USD", None)
    assert set(current.get_column("amount_reporting").to_list()) == {D("12.00")}
    jpy = to_reporting(facts.with_columns(currency=pl.lit("JPY")), rates, "USD", "t")
    assert jpy.get_column("amount_reporting").to_list() == [D("0.07")] * 4  # 10 / 150, inverse


def test_the_default_reference_day_is_the_newest_fact_day_never_after_today() -> None:
    newest = [at(3, 17, 10), at(3, 16, 12)]
    assert reference_day(newest, today=date(2026, 11, 30)) == date(2026, 3, 17)
    assert reference_day(newest, today=date(2026, 3, 1)) == date(2026, 3, 1)
    assert reference_day([None, None], today=date(2026, 3, 1)) == date(2026, 3, 1)


def test_build_without_as_of_uses_the_newest_fact_day(lake: Lake) -> None:
    results = lake.build(today=date(2026, 11, 30))
    assert {r.as_of for r in results.values()} == {AS_OF}  # ORD7's day


# --------------------------------------------------------------------------- configuration


def test_regions_and_currency_come_from_config_and_a_change_rebuilds_in_full(
    lake: Lake, tmp_path: Path
) -> None:
    lake.build(as_of=AS_OF)
    dach = Lake(tmp_path, "gold.regions.DE=DACH", "gold.currency=EUR")

    results = {r.table: r for r in build_gold(dach.settings, as_of=AS_OF)}

    assert {r.mode for r in results.values()} == {"full"}
    regions = dach.gold("daily_revenue").select("order_date", "region", "revenue_reporting")
    assert regions.row(2) == (date(2026, 3, 5), "DACH", D("100.00"))  # already in EUR
    assert regions.row(3) == (date(2026, 3, 6), "UNKNOWN", D("63.64"))  # 70 USD / 1.1
    assert regions.row(5) == (date(2026, 3, 11), "APAC", D("0.00"))  # JPY: no JPY/EUR pair


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gold.currency=usd", "gold.currency: String should match pattern"),
        ("gold.regions.Germany=EMEA", "'Germany' is not an ISO-3166 alpha-2 country code"),
        ("gold.colour=red", "unknown key 'gold.colour'; valid keys: currency, regions"),
    ],
)
def test_bad_gold_settings_are_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings("local", [override], config_dir=REPO_ROOT / "config", environ={})


def test_an_unknown_table_is_refused(lake: Lake) -> None:
    with pytest.raises(ConfigError) as raised:
        build_gold(lake.settings, ["customer_360", "revenue"])
    assert str(raised.value) == (
        "unknown gold table 'revenue'; valid: customer_360, daily_revenue,"
        " opportunity_pipeline, customer_features"
    )


# --------------------------------------------------------------------------- the CLI


def test_cli_builds_and_prints_one_line_per_table(
    lake: Lake, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["gold", "build", "--as-of", "2026-03-17", "--config-dir", str(REPO_ROOT / "config")]
    for item in lake.args:
        args += ["--set", item]

    assert main([*args, "--table", "daily_revenue", "customer_360"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "gold/daily_revenue: changed, version 0, 8 rows (full: 8 upserted, 0 deleted; as of"
        " 2026-03-17)",
        "gold/customer_360: changed, version 0, 2 rows (full: 2 upserted, 0 deleted; as of"
        " 2026-03-17)",
    ]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "gold/customer_360: unchanged, no new version, 2 rows (as of 2026-03-17)",
        "gold/daily_revenue: unchanged, no new version, 8 rows (as of 2026-03-17)",
        "gold/opportunity_pipeline: changed, version 0, 4 rows (full: 4 upserted, 0 deleted;"
        " as of 2026-03-17)",
        "gold/customer_features: changed, version 0, 2 rows (full: 2 upserted, 0 deleted; as"
        " of 2026-03-17)",
    ]

    assert main([*args, "--table", "revenue"]) == 2
    assert capsys.readouterr().err == (
        "cdc: error: unknown gold table 'revenue'; valid: customer_360, daily_revenue,"
        " opportunity_pipeline, customer_features\n"
    )
    assert main([*args[:2], "--as-of", "17.03.2026", *args[4:]]) == 2
    assert capsys.readouterr().err == "cdc: error: --as-of '17.03.2026' is not a day (YYYY-MM-DD)\n"


# --------------------------------------------------------------------------- incremental == full

_DAYS = [at(1, 1) + timedelta(hours=36 * i) for i in range(100)]
"""Jan 1 to May 29, at midnight or noon: several months, windows that data enters and leaves."""
_STEPS = 3
_SPREADS = st.sampled_from([(0,), (0, 0, 0, 1), (0, 0, 1, 2), (0, 1, 2)])
"""How items arrive over the build steps (one draw per history): all before the first build
(later builds only move the reference day), or some before later builds (late, in data time,
when they precede what arrived already)."""


@dataclass(frozen=True)
class History:
    """Random silver histories: every item arrives before one of the build steps."""

    items: dict[str, list[tuple[int, dict[str, Any]]]]
    as_of: list[date]

    def silver(self, step: int) -> dict[str, pl.DataFrame]:
        """Silver after the items of steps ``0..step`` arrived (dimensions re-derived)."""
        arrived = {n: [row for s, row in rows if s <= step] for n, rows in self.items.items()}
        return {n: _silver(n, arrived[n]) for n in SILVER_TABLES}


_KEYS = {
    "dim_account": ("account_id",),
    "dim_contact": ("contact_id",),
    "dim_opportunity": ("opportunity_id",),
    "dim_fx_rate": ("base_currency", "quote_currency"),
}


def _silver(name: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A fact table's rows, or a dimension's versions derived from its change points.

    A dimension change point is the key, a time ``at`` and the values (None: a delete); the
    versions run from each point to the key's next one, which is what SCD2 makes of the
    points that arrived, in whatever order they came.
    """
    if name not in _KEYS:
        return frame(name, rows)
    keys = list(_KEYS[name])
    values = {
        c: t for c, t in SILVER_COLUMNS[name].items() if c not in (*keys, "valid_from", "valid_to")
    }
    points = pl.DataFrame(
        [
            {**r["key"], "at": r["at"], "deleted": r["values"] is None, **(r["values"] or {})}
            for r in rows
        ],
        schema={**dict.fromkeys(keys, pl.String()), "at": TS, "deleted": pl.Boolean(), **values},
    )
    versions = (
        points.sort([*keys, "at"])
        .unique([*keys, "at"], keep="last", maintain_order=True)
        .with_columns(valid_to=pl.col("at").shift(-1).over(keys))
        .filter(~pl.col("deleted"))
        .rename({"at": "valid_from"})
    )
    return versions.select(list(SILVER_COLUMNS[name]))


def _dimension(
    draw: st.DrawFn,
    step: st.SearchStrategy[int],
    key: dict[str, str],
    values: st.SearchStrategy[dict[str, Any]],
    days: list[datetime] = _DAYS[1:],
) -> list[tuple[int, dict[str, Any]]]:
    """A key's change points: a first version on Jan 1, then up to three changes or deletes,
    on ``days``. A point arriving at the time of an earlier one replaces it (a correction)."""
    first = {"key": key, "at": _DAYS[0], "values": draw(values)}
    later = st.fixed_dictionaries(
        {
            "key": st.just(key),
            "at": st.sampled_from(days),
            "values": st.one_of(values, values, values, st.none()),
        }
    )
    points = [first, *draw(st.lists(later, max_size=3))]
    return [(draw(step), point) for point in points]


@st.composite
def histories(draw: st.DrawFn) -> History:
    money = st.sampled_from([D("100.00"), D("250.00")])
    currencies = st.sampled_from(["USD", "EUR", "JPY"])
    accounts = st.sampled_from(["A1", "A2", "A3"])
    contacts = ["C1", "C2", "C3"]
    buyers = st.sampled_from([*contacts, *contacts, "C9", None])
    step = st.sampled_from(draw(_SPREADS))
    items: dict[str, list[tuple[int, dict[str, Any]]]] = {n: [] for n in SILVER_TABLES}
    for account in ("A1", "A2", "A3"):
        country = st.fixed_dictionaries({"country": st.sampled_from(["DE", "US", "JP"])})
        items["dim_account"] += _dimension(draw, step, {"account_id": account}, country)
    for contact in contacts:
        employer = st.fixed_dictionaries({"account_id": accounts})
        # Few change days: a late point often replaces a version outright, so a contact's
        # earlier account can vanish from silver (only the change still names it).
        items["dim_contact"] += _dimension(
            draw, step, {"contact_id": contact}, employer, _DAYS[1::10]
        )
    deal = st.fixed_dictionaries(
        {
            "account_id": accounts,
            "stage": st.sampled_from(["prospecting", "proposal", "closed_won"]),
            "amount": money,
            "currency": currencies,
            "probability": st.sampled_from([10, 50]),
        }
    )
    for opportunity in ("O1", "O2"):
        items["dim_opportunity"] += _dimension(draw, step, {"opportunity_id": opportunity}, deal)
    for base, quote, rates in (("EUR", "USD", ["1.10", "1.25"]), ("USD", "JPY", ["150", "160"])):
        rate = st.fixed_dictionaries({"rate": st.sampled_from([D(r) for r in rates])})
        pair = {"base_currency": base, "quote_currency": quote}
        items["dim_fx_rate"] += _dimension(draw, step, pair, rate)
    for number in range(draw(st.integers(0, 6))):
        placed = draw(st.sampled_from(_DAYS))
        order = order_row(f"ORD{number}", draw(accounts), "0", "USD", placed, draw(buyers))
        order.update(amount=draw(money), currency=draw(currencies))
        statuses = st.sampled_from(["created", "paid", "shipped", "cancelled"])
        for i, status in enumerate(draw(st.lists(statuses, min_size=1, max_size=3))):
            later = timedelta(hours=36 * draw(st.integers(0, 3)))
            event = {**order, "event_id": f"ORD{number}-{i}", "status": status}
            if draw(st.integers(0, 5)) == 0:  # a corrected order: another account, currency
                event.update(
                    account_id=draw(accounts), currency=draw(currencies), contact_id=draw(buyers)
                )
            items["fact_orders"].append((draw(step), {**event, "event_ts": placed + later}))
    for number in range(draw(st.integers(0, 8))):
        event = behaviour_event(
            f"E{number}",
            draw(st.sampled_from([*contacts, *contacts, "C9"])),
            draw(st.sampled_from(["page_view", "click"])),
            draw(st.sampled_from(_DAYS)),
        )
        items["fact_behavior"].append((draw(step), event))
    return History(items, [draw(st.sampled_from(_DAYS)).date() for _ in range(_STEPS)])


def _full_tables(
    silver: dict[str, pl.DataFrame], as_of: date, dates: list[date]
) -> dict[str, pl.DataFrame]:
    rules = GoldRules()
    return {
        n: refresh(n, silver, rules, as_of, None, dates).rows.sort(GOLD_KEYS[n])
        for n in GOLD_TABLES
    }


def _merged(
    table: str, existing: pl.DataFrame, upserts: pl.DataFrame, deletes: pl.DataFrame
) -> pl.DataFrame:
    """``existing`` after the MERGE of :func:`cdc.gold.refresh.plan`'s result (what the
    Delta MERGE of ``cdc gold build`` does)."""
    keys = list(GOLD_KEYS[table])
    kept = existing.join(deletes, on=keys, how="anti").join(upserts, on=keys, how="anti")
    return pl.concat([kept, upserts]).sort(keys)


@hypothesis_settings(max_examples=40, deadline=None)
@given(histories())
def test_incremental_refreshes_equal_full_builds_after_any_history(history: History) -> None:
    """Pure: each step refreshes from the previous step's silver, then equals a full build."""
    rules = GoldRules()
    gold = {n: pl.DataFrame(schema=GOLD_SCHEMAS[n]) for n in GOLD_TABLES}
    previous: Previous | None = None
    before: dict[str, pl.DataFrame] = {}
    for step in range(_STEPS):
        silver, as_of = history.silver(step), history.as_of[step]
        if step:
            previous = Previous.between(before, silver, history.as_of[step - 1])
        dates = sorted(set(gold["customer_features"].get_column("as_of_date").to_list()))
        for name in GOLD_TABLES:
            refreshed = refresh(name, silver, rules, as_of, previous, dates)
            upserts, deletes = plan(name, gold[name], refreshed)
            gold[name] = _merged(name, gold[name], upserts, deletes)
        full = _full_tables(silver, as_of, dates)
        for name in GOLD_TABLES:
            assert_frame_equal(gold[name], full[name], check_row_order=False)
            assert gold[name].select(GOLD_KEYS[name]).is_duplicated().sum() == 0
            assert gold[name].select(GOLD_KEYS[name]).null_count().sum_horizontal().item() == 0
        before = silver


@contextmanager
def _temporary_lake() -> Iterator[Lake]:
    with tempfile.TemporaryDirectory() as root:
        yield Lake(Path(root))


@hypothesis_settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_incremental_builds_on_delta_equal_full_rebuilds(history: History) -> None:
    """Through Delta: silver written step by step, ``build_gold`` each time; then ``--full``
    finds nothing to change, and the tables equal the pure full computation."""
    with _temporary_lake() as lake:
        for step in range(_STEPS):
            silver = history.silver(step)
            for name, rows in silver.items():
                lake.write(name, rows)
            lake.build(as_of=history.as_of[step])
        last = history.as_of[-1]
        assert not any(r.changed for r in lake.build(as_of=last, full=True).values())
        written = {n: lake.gold(n) for n in GOLD_TABLES}
        dates = sorted({d for d in written["customer_features"].get_column("as_of_date")} - {last})
        full = _full_tables(history.silver(_STEPS - 1), last, dates)
        for name in GOLD_TABLES:
            assert_frame_equal(written[name], full[name])
