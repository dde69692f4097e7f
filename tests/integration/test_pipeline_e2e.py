"""End to end: real Kafka broker → Spark's Kafka source → Spark foreachBatch → Delta tables.

Each test starts from an empty cluster (the session's broker, its topics deleted), so topic
names are the real ones and tests do not see each other's data. One SparkSession serves the
whole test session.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.config.lake import table_paths
from cdc.config.settings import Settings
from cdc.pipeline.queries import run_pipelines
from tests.support.envelopes import T0, change
from tests.support.kafka import produce
from tests.support.local_settings import make_settings
from tests.support.paths import REPO_ROOT
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def broker(fresh_kafka: str) -> str:
    return fresh_kafka


def read(uri: str) -> pl.DataFrame:
    return read_table(uri)  # deletion vectors honoured (delta-spark's dimensions)


def contact_lines() -> list[dict[str, Any]]:
    return [
        change("c1", "c", 1000, email="ann@acme.io"),
        change("c2", "c", 1100, email="bob@acme.io"),
        change("c1", "u", 2000, email="ann@acme.io", phone="+44 1"),  # untracked only
        change("c1", "u", 3000, email="ann.new@acme.io", phone="+44 1"),  # tracked
        change("c2", "d", 4000),
        {"key": {"contact_id": "c2"}, "value": None},  # tombstone
        change("c2", "c", 5000, email="bob@acme.io", last="Again"),  # re-insert
        change("c3", "r", 500, email="cy@acme.io"),
    ]


POISON = [
    {"key": {"contact_id": "p1"}, "value_b64": base64.b64encode(b"not avro at all").decode()},
    {
        "key": {"contact_id": "p2"},
        "value_b64": base64.b64encode(b"\x00\x00\x00\x27\x0f" + b"\x02" * 8).decode(),
    },  # unknown id 9999
    change("p3", "c", 6000, email="not-an-email"),  # rule violation
]


def history(settings: Settings, cid: str) -> list[tuple[Any, ...]]:
    dim = read(table_paths(settings, settings.pipeline("crm_contacts"))["silver"])
    rows = dim.filter(pl.col("contact_id") == cid).sort("_seq_open")
    return [
        (r["email"], r["last_name"], r["phone"], r["valid_from"], r["valid_to"], r["is_current"])
        for r in rows.iter_rows(named=True)
    ]


def at(ms: int) -> datetime:
    return datetime.fromtimestamp((T0 + ms) / 1000, tz=UTC)


@pytest.mark.parametrize("writer", WRITERS)
def test_contacts_bronze_quarantine_and_scd2(
    spark: Any, broker: str, tmp_path: Path, writer: str
) -> None:
    sent = produce(broker, "crm.contacts", contact_lines() + POISON, tmp_path)
    assert sent == 11
    settings = make_settings(broker, tmp_path, f"lake.writer={writer}")
    run_pipelines(spark, settings, ["crm_contacts"], available_now=True)

    paths = table_paths(settings, settings.pipeline("crm_contacts"))
    bronze, quarantine = read(paths["bronze"]), read(paths["quarantine"])
    assert bronze.height == 8 and quarantine.height == 3  # every record in exactly one of them
    coords = ["partition", "offset"]
    assert bronze.select(coords).join(quarantine.select(coords), on=coords).height == 0
    reasons = dict(
        zip(quarantine["error_code"].to_list(), quarantine["error"].to_list(), strict=True)
    )
    assert set(reasons) == {"not_framed", "unknown_schema_id", "rule_violation"}
    assert "9999" in reasons["unknown_schema_id"]
    assert "email" in reasons["rule_violation"]
    assert quarantine.filter(pl.col("error_code") == "not_framed")["value_raw"].to_list() == [
        b"not avro at all"
    ]

    assert history(settings, "c1") == [
        ("ann@acme.io", "Doe", "+44 1", at(1000), at(3000), False),
        ("ann.new@acme.io", "Doe", "+44 1", at(3000), None, True),
    ]
    assert history(settings, "c2") == [
        ("bob@acme.io", "Doe", None, at(1100), at(4000), False),
        ("bob@acme.io", "Again", None, at(5000), None, True),
    ]
    assert history(settings, "c3") == [("cy@acme.io", "Doe", None, at(500), None, True)]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_source_time_no_timestamp_holds_is_quarantined_not_folded(
    spark: Any, broker: str, tmp_path: Path, writer: str
) -> None:
    """Issue: a contract-valid envelope with ``source.ts_ms = 2**63-1`` (or ``-2**63``) landed
    in bronze and silver with valid_from +13759-05-19; the key's next change got the same
    valid_from, the version before it a zero-length interval, and ``cdc verify`` said sound."""

    def hostile(cid: str, ts: int, ts_ms: int) -> dict[str, Any]:
        line = change(cid, "u", ts, email=f"{cid}.{ts}@acme.io")
        line["value"]["source"]["ts_ms"] = ts_ms  # the LSN still says where it belongs
        return line

    lines = [
        change("c1", "c", 1000, email="ann@acme.io"),
        hostile("c1", 2000, 2**63 - 1),
        change("c1", "u", 3000, email="ann.new@acme.io"),
        hostile("c2", 500, -(2**63)),
    ]
    assert produce(broker, "crm.contacts", lines, tmp_path) == 4
    settings = make_settings(broker, tmp_path, f"lake.writer={writer}")
    run_pipelines(spark, settings, ["crm_contacts"], available_now=True)

    paths = table_paths(settings, settings.pipeline("crm_contacts"))
    bronze, quarantine = read(paths["bronze"]), read(paths["quarantine"])
    assert bronze.height == 2 and quarantine.height == 2
    assert quarantine["error_code"].to_list() == ["source_time_out_of_range"] * 2
    errors = sorted(quarantine["error"].to_list())
    assert errors[0].startswith("source.ts_ms -9223372036854775808 (not a date of the years")
    assert errors[1].startswith(
        "source.ts_ms 9223372036854775807 (not a date of the years 1 to 9999) is outside the"
        " accepted source times (source_time_window), 1970-01-01T00:00:00.000Z to "
    )
    assert history(settings, "c1") == [
        ("ann@acme.io", "Doe", None, at(1000), at(3000), False),
        ("ann.new@acme.io", "Doe", None, at(3000), None, True),
    ]
    assert history(settings, "c2") == []
    from cdc.ops.verify import verify

    assert all(check.sound for check in verify(settings, pipeline="crm_contacts"))


@pytest.mark.parametrize("writer", WRITERS)
def test_toast_placeholders_keep_the_stored_value_or_are_quarantined(
    spark: Any, broker: str, tmp_path: Path, writer: str
) -> None:
    """Issue 25: PostgreSQL's unchanged TOASTed column arrives as Debezium's placeholder; it
    keeps the value the key had (in the batch or in silver), passes the contract's pattern
    on ``after.email``, never lands in silver, and without an earlier version is quarantined
    before it lands."""
    from cdc.core.scd2 import UNAVAILABLE_VALUE as PH
    from cdc.pipeline.batch import BatchStats

    first = [
        change("c1", "c", 1000, email="ann@acme.io", phone="+44 1"),
        change("c1", "u", 2000, email=PH, phone="+44 2"),  # tracked column unchanged
        change("c2", "u", 1500, email=PH),  # no earlier version: quarantined
        change("c3", "c", 100, email="cy@acme.io"),
        change("c3", "u", 200, email=PH, last="Zed"),  # resolved from the same batch
    ]
    second = [
        change("c1", "u", 3000, email="ann.new@acme.io", phone=PH),  # from silver's row
        change("c3", "u", 300, email=PH, last="Zed", phone="9"),
    ]
    settings = make_settings(broker, tmp_path, f"lake.writer={writer}")
    counted: dict[str, int] = {}

    def on_batch(name: str, stats: BatchStats) -> None:
        for column, n in stats.unavailable_values.items():
            counted[column] = counted.get(column, 0) + n

    for lines in (first, second):
        produce(broker, "crm.contacts", lines, tmp_path)
        run_pipelines(spark, settings, ["crm_contacts"], available_now=True, on_batch=on_batch)

    assert history(settings, "c1") == [
        ("ann@acme.io", "Doe", "+44 2", at(1000), at(3000), False),
        ("ann.new@acme.io", "Doe", "+44 2", at(3000), None, True),
    ]
    assert history(settings, "c3") == [
        ("cy@acme.io", "Doe", None, at(100), at(200), False),
        ("cy@acme.io", "Zed", "9", at(200), None, True),
    ]
    assert history(settings, "c2") == []
    paths = table_paths(settings, settings.pipeline("crm_contacts"))
    quarantine = read(paths["quarantine"])
    assert quarantine["error_code"].to_list() == ["unavailable_without_prior"]
    assert quarantine["error"][0].startswith("email: the placeholder for an unchanged (TOASTed)")
    assert read(paths["bronze"]).height == 6  # every other record, placeholders as they came
    assert counted == {"email": 4, "phone": 1}
    from cdc.ops.verify import verify

    assert all(check.sound for check in verify(settings, pipeline="crm_contacts"))


def test_restart_reads_only_new_records_and_redelivery_is_a_no_op(
    spark: Any, broker: str, tmp_path: Path
) -> None:
    settings = make_settings(broker, tmp_path)
    lines = contact_lines()
    produce(broker, "crm.contacts", lines[:4], tmp_path)
    run_pipelines(spark, settings, ["crm_contacts"], available_now=True)
    produce(broker, "crm.contacts", lines[4:] + lines[:2], tmp_path)  # + duplicate delivery
    run_pipelines(spark, settings, ["crm_contacts"], available_now=True)

    paths = table_paths(settings, settings.pipeline("crm_contacts"))
    assert read(paths["bronze"]).height == len(lines) + 2
    clean_root = tmp_path / "clean"
    clean_broker_settings = make_settings(broker, clean_root)
    run_pipelines(spark, clean_broker_settings, ["crm_contacts"], available_now=True)
    for cid in ("c1", "c2", "c3"):
        assert history(settings, cid) == history(clean_broker_settings, cid)


@pytest.mark.parametrize("writer", WRITERS)
def test_facts_dedup_and_fx_scd2(spark: Any, broker: str, tmp_path: Path, writer: str) -> None:
    def order(eid: str, oid: str, amount: str) -> dict[str, Any]:
        return {
            "key": {"order_id": oid},
            "value": {
                "event_id": eid,
                "order_id": oid,
                "account_id": "a1",
                "contact_id": None,
                "status": "placed",
                "amount": amount,
                "currency": "EUR",
                "ordered_at": T0,
                "event_ts": T0 + 10,
            },
        }

    def rate(ts: int, value: str) -> dict[str, Any]:
        return {
            "key": {"base_currency": "EUR", "quote_currency": "USD"},
            "value": {
                "base_currency": "EUR",
                "quote_currency": "USD",
                "rate": value,
                "effective_at": T0 + ts,
                "provider": "ecb",
            },
        }

    produce(
        broker,
        "events.orders",
        [order("e1", "o1", "10.50"), order("e2", "o2", "7.00"), order("e1", "o1", "10.50")],
        tmp_path,
    )
    produce(
        broker,
        "ref.fx_rates",
        [rate(0, "1.08000000"), rate(86_400_000, "1.09000000"), rate(172_800_000, "1.09000000")],
        tmp_path,
    )
    settings = make_settings(broker, tmp_path, f"lake.writer={writer}")
    run_pipelines(spark, settings, ["orders", "fx_rates"], available_now=True)
    facts_uri = table_paths(settings, settings.pipeline("orders"))["silver"]
    assert sorted(read(facts_uri)["event_id"].to_list()) == ["e1", "e2"]
    # A later batch: re-delivered events are not inserted again (insert-only MERGE on the id).
    produce(
        broker, "events.orders", [order("e2", "o2", "7.00"), order("e3", "o3", "1.00")], tmp_path
    )
    run_pipelines(spark, settings, ["orders"], available_now=True)
    facts = read(facts_uri)
    assert sorted(facts["event_id"].to_list()) == ["e1", "e2", "e3"]
    fx = read(table_paths(settings, settings.pipeline("fx_rates"))["silver"]).sort("valid_from")
    assert [str(r) for r in fx["rate"].to_list()] == ["1.08000000", "1.09000000"]
    assert fx["is_current"].to_list() == [False, True]


def _cdc(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        timeout=300,
    )


@pytest.mark.parametrize("stage", ["mid-commit", "after-commit"])
def test_exactly_once_after_kill_9_mid_stream(
    spark: Any, broker: str, tmp_path: Path, stage: str
) -> None:
    """kill -9 of a real `cdc run` in the middle of batch 1, restart: tables equal a clean run."""
    lines = [
        change(f"k{i % 7}", "c" if i < 7 else "u", 1000 + i * 10, email=f"v{i}@acme.io")
        for i in range(40)
    ]
    produce(broker, "crm.contacts", lines, tmp_path)
    args = [
        "run",
        "--pipeline",
        "crm_contacts",
        "--available-now",
        "--set",
        f"kafka.bootstrap_servers={broker}",
        "--set",
        f"lake.root={tmp_path / 'lake'}",
        "--set",
        f"checkpoints.root={tmp_path / 'checkpoints'}",
        "--set",
        "pipelines.crm_contacts.max_records_per_trigger=10",
    ]
    crashed = _cdc(args, {"CDC_FAULT_INJECT": f"{stage}:1"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    resumed = _cdc(args, {})
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    crashed_settings = make_settings(broker, tmp_path)
    clean = make_settings(
        broker, tmp_path / "clean", "pipelines.crm_contacts.max_records_per_trigger=10"
    )
    run_pipelines(spark, clean, ["crm_contacts"], available_now=True)
    for role in ("bronze", "silver"):
        got = read(table_paths(crashed_settings, crashed_settings.pipeline("crm_contacts"))[role])
        want = read(table_paths(clean, clean.pipeline("crm_contacts"))[role])
        drop = [c for c in ("_ingested_at", "_batch_id", "_topic_id") if c in got.columns]
        order = ["partition", "offset"] if role == "bronze" else ["contact_id", "_seq_open"]
        assert got.drop(drop).sort(order).equals(want.drop(drop).sort(order)), role
    assert (
        read(
            table_paths(crashed_settings, crashed_settings.pipeline("crm_contacts"))["bronze"]
        ).height
        == 40
    )
