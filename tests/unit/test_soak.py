"""The soak benchmark's accounting (``benchmarks/soak.py``): what it counts as lost,
duplicated, misplaced or wrong in silver, and how it measures freshness and RSS growth.

No server: tables are frames built from the records as if produced, or a small delta-rs
table on disk.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from benchmarks.soak import (
    batch_commit_times,
    freshness,
    parse_range,
    rss_figures,
    rss_growth,
    window_median,
)
from benchmarks.soak_workload import (
    ORDERS_TOPIC,
    ContactWorkload,
    OrderWorkload,
    facts_differences,
    model_facts,
)

from cdc.store.base import Txn
from cdc.store.delta_rs import DeltaSink
from tests.support.contact_stream import TOPIC, Rec, Sent, model_silver, silver_model_differences
from tests.support.ledger import landing_ledger


def as_sent(recs: Sequence[Rec]) -> list[Sent]:
    """Offsets a fresh topic gives the records produced in order."""
    next_offset: dict[int, int] = {}
    sent = []
    for rec in recs:
        offset = next_offset.get(rec.partition, 0)
        next_offset[rec.partition] = offset + 1
        sent.append(Sent(rec, offset))
    return sent


def landing_frame(sent: Sequence[Sent], topic: str = TOPIC) -> pl.DataFrame:
    """Bronze or quarantine rows of ``sent`` (the columns the ledger reads)."""
    return pl.DataFrame(
        {
            "topic": [topic] * len(sent),
            "partition": [x.rec.partition for x in sent],
            "offset": [x.offset for x in sent],
            "timestamp": [datetime.fromtimestamp(x.rec.ts / 1000, UTC) for x in sent],
            "key_raw": [x.rec.key for x in sent],
            "value_raw": [x.rec.value for x in sent],
            "error_code": [x.rec.reason for x in sent],
            "error": [None if x.rec.reason is None else "why" for x in sent],
        },
        schema_overrides={
            "timestamp": pl.Datetime("ms", "UTC"),
            "key_raw": pl.Binary,
            "value_raw": pl.Binary,
            "error_code": pl.String,
            "error": pl.String,
        },
    )


@pytest.fixture(scope="module")
def contacts() -> list[Sent]:
    return as_sent(ContactWorkload(random.Random(7), keys=12).take(600))


@pytest.fixture(scope="module")
def orders() -> list[Sent]:
    return as_sent(OrderWorkload(random.Random(7), keys=12).take(600))


# --------------------------------------------------------------------------- workloads


def test_workloads_are_seeded_and_cover_every_kind_of_record(contacts: list[Sent]) -> None:
    again = ContactWorkload(random.Random(7), keys=12).take(600)
    assert [r.value for r in again] == [x.rec.value for x in contacts]
    assert [r.value for r in ContactWorkload(random.Random(8), keys=12).take(600)] != [
        x.rec.value for x in contacts
    ]
    kinds = {(x.rec.reason, x.rec.event.op if x.rec.event else None) for x in contacts}
    assert kinds == {
        (None, "U"),
        (None, "D"),
        (None, "T"),
        ("rule_violation", None),
        ("not_framed", None),
    }
    values = [x.rec.value for x in contacts if x.rec.value is not None]
    assert len(set(values)) < len(values), "no redelivered record"
    latest: dict[str, int] = {}
    late = 0
    for x in contacts:
        if x.rec.event is not None and x.rec.event.op == "U":
            late += x.rec.ts < latest.get(x.rec.event.cid, 0)
            latest[x.rec.event.cid] = max(latest.get(x.rec.event.cid, 0), x.rec.ts)
    assert late > 0, "no late event"


def test_order_workload_redelivers_events_and_sends_records_for_quarantine(
    orders: list[Sent],
) -> None:
    reasons = {x.rec.reason for x in orders}
    assert reasons == {None, "rule_violation", "expectation", "not_framed"}
    ids = [x.rec.datum["event_id"] for x in orders if x.rec.datum and x.rec.reason is None]
    assert len(set(ids)) < len(ids), "no redelivered event"
    for x in orders:
        if x.rec.datum is not None:
            assert x.rec.datum["ordered_at"] <= x.rec.datum["event_ts"]  # the `fail` rule
            assert x.rec.partition == int(x.rec.datum["order_id"][1:]) % 3


# --------------------------------------------------------------------------- the ledger


def split(sent: Sequence[Sent]) -> tuple[list[Sent], list[Sent]]:
    return [x for x in sent if x.rec.reason is None], [x for x in sent if x.rec.reason]


def test_ledger_of_tables_holding_each_record_once_is_clean(contacts: list[Sent]) -> None:
    valid, bad = split(contacts)
    ledger = landing_ledger(landing_frame(valid), landing_frame(bad), contacts, TOPIC)
    assert (ledger.lost, ledger.duplicated, ledger.misplaced) == (0, 0, 0)
    assert ledger.other_topics == []


def test_ledger_counts_lost_duplicated_and_misplaced_records(contacts: list[Sent]) -> None:
    valid, bad = split(contacts)
    aborted = Sent(valid[0].rec, 10_000)  # a record of an aborted transaction, read anyway
    bronze = [*valid[2:], valid[5], bad[0], aborted]  # 0, 1 lost; 5 twice; a bad one in it
    quarantine = [*bad[1:], valid[7]]  # bad[0] missing from here; valid[7] in both
    ledger = landing_ledger(landing_frame(bronze), landing_frame(quarantine), contacts, TOPIC)
    assert ledger.missing_valid == sorted([valid[0].identity, valid[1].identity])
    assert ledger.lost == 2
    assert ledger.repeated == [("bronze", valid[5].coords)]
    assert ledger.in_both == [valid[7].identity]
    assert ledger.duplicated == 2
    assert ledger.bad_in_bronze == [(bad[0].identity, bad[0].rec.rid, bad[0].rec.reason)]
    assert ledger.extra == [aborted.identity]
    assert ledger.misplaced == 2


def test_ledger_sees_other_bytes_and_reasons(contacts: list[Sent]) -> None:
    valid, bad = split(contacts)
    bronze = landing_frame(valid).with_columns(
        pl.when(pl.col("offset") == valid[3].offset, pl.col("partition") == valid[3].rec.partition)
        .then(pl.lit(b"tampered"))
        .otherwise(pl.col("value_raw"))
        .alias("value_raw")
    )
    quarantine = landing_frame(bad).with_columns(pl.lit("schema_unknown").alias("error_code"))
    ledger = landing_ledger(bronze, quarantine, contacts, TOPIC)
    assert ledger.wrong_bytes == [("bronze", valid[3].identity, valid[3].rec.rid)]
    assert len(ledger.wrong_reason) == len(bad)
    assert ledger.misplaced == 1 + len(bad)
    assert ledger.lost == ledger.duplicated == 0


# --------------------------------------------------------------------------- silver models


def test_silver_equal_to_the_model_has_no_differences_and_each_change_is_one_line(
    contacts: list[Sent],
) -> None:
    silver = pl.DataFrame(model_silver(contacts))
    assert silver.height > 20
    assert silver_model_differences(silver, contacts) == []
    first = silver.row(0, named=True)
    changed = silver.with_columns(
        pl.when(pl.col("_seq_open") == first["_seq_open"])
        .then(pl.lit("someone@else.io"))
        .otherwise(pl.col("email"))
        .alias("email")
    )
    assert len(silver_model_differences(changed, contacts)) == 1
    twice = pl.concat([silver, silver.head(1)])
    assert silver_model_differences(twice, contacts) == [
        f"{(first['contact_id'], first['_seq_open'])}: more than one silver row"
    ]
    assert len(silver_model_differences(silver.tail(-2), contacts)) == 2  # two versions missing


def facts_frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    """The fact table as delta-rs reads it: times as UTC datetimes."""
    times = ("ordered_at", "event_ts", "_kafka_timestamp")
    return pl.DataFrame(
        [
            {k: datetime.fromtimestamp(v / 1000, UTC) if k in times else v for k, v in r.items()}
            for r in rows
        ]
    ).with_columns(pl.lit(3).alias("_batch_id"))


def test_facts_model_keeps_each_event_once_from_its_first_record(orders: list[Sent]) -> None:
    model = model_facts(orders)
    valid = [x for x in orders if x.rec.reason is None]
    assert len(model) == len({x.rec.datum["event_id"] for x in valid if x.rec.datum})
    assert len(model) < len(valid)
    for x in valid:
        assert x.rec.datum is not None
        assert model[x.rec.datum["event_id"]]["_source_offset"] <= x.offset
    silver = facts_frame(list(model.values()))
    assert facts_differences(silver, orders, ORDERS_TOPIC) == ([], 0)
    lines, repeated = facts_differences(pl.concat([silver, silver.head(2)]), orders)
    assert (len(lines), repeated) == (2, 2)
    lines, repeated = facts_differences(silver.tail(-1), orders)
    assert (len(lines), repeated) == (1, 0)


# --------------------------------------------------------------------------- figures


def test_parse_range() -> None:
    assert parse_range("60-300") == (60.0, 300.0)
    assert parse_range("45") == (45.0, 45.0)
    for bad in ("300-60", "0-5", "a-b", "1-2-3", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected MIN-MAX seconds"):
            parse_range(bad)


def test_rss_growth_compares_the_first_window_after_the_warmup_with_the_last() -> None:
    samples = [(float(t), 500.0 + (t if t >= 60 else 300)) for t in range(0, 200)]
    assert rss_growth(samples, warmup_s=60, window_s=30) == (574.5, 684.5)
    assert rss_growth(samples[:119], warmup_s=60, window_s=30) is None  # too short
    assert rss_growth([], warmup_s=60, window_s=30) is None
    assert window_median(samples, 60, 30) == 574.5
    assert window_median(samples[:89], 60, 30) is None  # the run ended inside the window


def test_rss_figures_take_the_longest_measured_run_and_compare_runs_at_the_same_age() -> None:
    segments = [
        {"index": 0, "seconds": 200.0, "driver_peak_mib": 900.0, "driver_first_window_mib": 800.0,
         "driver_growth_mib": 50.0, "driver_growth_pct": 6.25},
        {"index": 1, "seconds": 70.0, "driver_peak_mib": 950.0},  # too short for either
        {"index": 2, "seconds": 100.0, "driver_peak_mib": 990.0, "driver_first_window_mib": 850.0},
        {"index": 3, "seconds": 300.0, "driver_peak_mib": 980.0, "driver_first_window_mib": 860.0,
         "driver_growth_mib": 20.0, "driver_growth_pct": 2.33},
    ]
    assert rss_figures(segments) == {
        "measured_segments": 2,
        "driver_peak_mib": 990.0,
        "longest_segment": 3,
        "longest_segment_s": 300.0,
        "growth_mib": 20.0,
        "growth_pct": 2.33,
        "max_growth_mib": 50.0,
        "restart_drift_mib": 60.0,
    }
    assert rss_figures(segments[1:2]) == {"measured_segments": 0, "driver_peak_mib": 950.0}


def test_freshness_is_acknowledgement_to_the_batch_commit() -> None:
    landed = [(0, 0, 1), (0, 1, 1), (1, 0, 2), (1, 1, 9)]
    acked = {(0, 0): 100.0, (0, 1): 101.0, (1, 0): 101.5}
    committed = {1: 103.0, 2: 110.0}
    assert freshness(landed, acked, committed) == ([3.0, 2.0, 8.5], 1)


def test_batch_commit_times_reads_each_txn_versions_commit_from_the_delta_log(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "bronze")
    sink = DeltaSink(uri, {})
    data = pa.table({"x": [1, 2]})
    before = time.time()
    for version in (0, 1):
        sink.append(data, Txn("cdc/p/bronze/bronze", version))
    sink.append(data, Txn("someone/else", 7))
    after = time.time()
    times = batch_commit_times(uri, "cdc/p/bronze/bronze")
    assert sorted(times) == [0, 1]
    assert before - 1 <= times[0] <= times[1] <= after + 1
    assert batch_commit_times(str(tmp_path / "none"), "cdc/p/bronze/bronze") == {}
