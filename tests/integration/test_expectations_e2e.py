"""Expectations end to end on each writer: real Kafka broker, Spark's Kafka source, Delta tables.

A drop rule sends its records to quarantine (named, bytes kept) and out of bronze and silver;
a warn rule lets them land and counts them (metrics, ``cdc status``); a fail rule stops
``cdc run`` with one line and commits nothing of the batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.cli import main
from cdc.config.lake import table_paths
from cdc.ops.metrics import ServiceMetrics
from cdc.pipeline.checkpoint import committed_offsets
from cdc.pipeline.expectations import COUNTS_FILE
from cdc.pipeline.queries import run_pipelines
from cdc.store.delta_rs import DeltaRsStore
from tests.support.endpoints import metric_samples
from tests.support.envelopes import change
from tests.support.kafka import high_watermarks, produce
from tests.support.local_settings import cli_args, make_settings
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PIPELINE = "crm_contacts"
DROP = (
    "{name: last_name_capitalised, regex: {column: last_name, pattern: '[A-Z][a-z]+'},"
    " action: drop}"
)
WARN = "{name: phone_known, not_null: phone}"
FAIL = "{name: no_blocked_account, expr: \"account_id <> 'blocked'\", action: fail}"


def rules(*specs: str) -> str:
    return f"pipelines.{PIPELINE}.expectations=[{', '.join(specs)}]"


def keys(uri: str) -> list[str]:
    """The contact ids of a bronze (the decoded key) or silver table's rows."""
    rows = read_table(uri)
    column = pl.col("key").struct.field("contact_id") if "key" in rows.columns else "contact_id"
    return sorted(rows.select(column).to_series().to_list())


def versions(paths: dict[str, str]) -> dict[str, int | None]:
    store = DeltaRsStore()
    return {
        role: (info.version if (info := store.info(uri)) else None) for role, uri in paths.items()
    }


@pytest.mark.parametrize("writer", WRITERS)
def test_drop_warn_and_fail_rules_through_cdc_run(
    spark: Any, fresh_kafka: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], writer: str
) -> None:
    lines = [
        change("c1", "c", 1000, email="ann@acme.io", phone="+44 1"),
        change("c2", "c", 1100, email="bob@acme.io"),  # no phone: warn
        change("c3", "c", 1200, email="cy@acme.io", last="doe", phone="+1"),  # drop
        change("c2", "d", 2000),  # a delete has no after image: not checked
        {"key": {"contact_id": "c2"}, "value": None},  # a tombstone: not checked
        change("c4", "r", 500, email="di@acme.io", last="o'Neil"),  # drop, and warn
    ]
    produce(fresh_kafka, "crm.contacts", lines, tmp_path)
    extra = [f"lake.writer={writer}", rules(DROP, WARN)]
    settings = make_settings(fresh_kafka, tmp_path, *extra)
    metrics = ServiceMetrics([PIPELINE])
    run_pipelines(spark, settings, [PIPELINE], available_now=True, on_batch=metrics.on_batch)

    paths = table_paths(settings, settings.pipeline(PIPELINE))
    quarantine = read_table(paths["quarantine"]).sort("offset")
    dropped = quarantine.filter(pl.col("error_code") == "expectation")
    # The key is Avro {"contact_id": <string>}: its last bytes are the id itself.
    assert sorted(raw[-2:].decode() for raw in dropped["key_raw"]) == ["c3", "c4"]
    assert quarantine.height == 2
    assert set(dropped["error"]) == {
        "expectation last_name_capitalised failed: regex last_name matches '[A-Z][a-z]+'"
    }
    for raw in dropped["value_raw"]:  # the record as it was read: Confluent framing + Avro
        assert raw[:1] == b"\x00" and len(raw) > 5
    assert keys(paths["bronze"]) == ["c1", "c2", "c2", "c2"]  # create, delete, tombstone
    assert keys(paths["silver"]) == ["c1", "c2"]

    got = metric_samples(metrics.exposition().decode())
    for rule, action, count in (("phone_known", "warn", 2), ("last_name_capitalised", "drop", 2)):
        labels = (("action", action), ("pipeline", PIPELINE), ("rule", rule))
        assert got[("cdc_expectation_failures_total", labels)] == count
    reason = (("pipeline", PIPELINE), ("reason", "expectation"))
    assert got[("cdc_quarantined_records_total", reason)] == 2

    def status(*specs: str) -> Any:
        capfd.readouterr()
        args = cli_args(fresh_kafka, tmp_path, f"lake.writer={writer}", rules(*specs))
        assert main(["status", "--pipeline", PIPELINE, "--json", *args]) == 0
        (found,) = json.loads(capfd.readouterr().out)
        return found["expectations"]

    drop_check = "regex last_name matches '[A-Z][a-z]+'"
    assert status(DROP, WARN, FAIL) == [
        {"rule": "last_name_capitalised", "action": "drop", "check": drop_check, "failed": 2},
        {"rule": "phone_known", "action": "warn", "check": "not_null phone", "failed": 2},
        {
            "rule": "no_blocked_account",
            "action": "fail",
            "check": "expr account_id <> 'blocked'",
            "failed": None,
        },
    ]

    # A fail rule: the batch holding the blocked account commits nothing, cdc run says why.
    before = high_watermarks(fresh_kafka)
    produce(
        fresh_kafka,
        "crm.contacts",
        [change("c5", "c", 3000, email="e@x.io", acct="blocked", phone="+1")],
        tmp_path,
    )
    (partition,) = [p for p, end in high_watermarks(fresh_kafka).items() if end > before[p]]
    produce(fresh_kafka, "crm.contacts", [change("c6", "c", 3100, email="f@x.io")], tmp_path)
    checkpoint = Path(settings.checkpoint_path(PIPELINE))
    last = committed_offsets(checkpoint)
    assert last is not None
    tables, counts = versions(paths), (checkpoint / COUNTS_FILE).read_text()
    capfd.readouterr()
    args = cli_args(fresh_kafka, tmp_path, f"lake.writer={writer}", rules(DROP, WARN, FAIL))
    assert main(["run", "--pipeline", PIPELINE, "--available-now", *args]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("cdc: ")] == [
        f"cdc: error: pipeline {PIPELINE} failed: ExpectationFailedError: pipeline {PIPELINE}:"
        " expectation no_blocked_account (expr account_id <> 'blocked') failed for 1 record(s)"
        f" of batch {last[0] + 1}, the first at partition@offset {partition}@{before[partition]};"
        " nothing of the batch was committed"
    ]
    assert versions(paths) == tables
    assert committed_offsets(checkpoint) == last
    assert (checkpoint / COUNTS_FILE).read_text() == counts

    # Without the fail rule the same batch lands (c6 has no phone); the first batch is not
    # counted again.
    run_pipelines(
        spark, make_settings(fresh_kafka, tmp_path, *extra), [PIPELINE], available_now=True
    )
    assert keys(paths["silver"]) == ["c1", "c2", "c5", "c6"]
    assert [e["failed"] for e in status(DROP, WARN)] == [2, 3]
