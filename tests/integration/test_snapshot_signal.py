"""``cdc snapshot``: Debezium's execute-snapshot signal, and snapshot rows among the changes.

A connector is played by the test on the session's broker, as Debezium's Kafka signal channel
behaves (``KafkaSignalChannel``: partition 0 of ``<topic.prefix>-signal``, the record's key the
connector's logical name, the value ``{"id", "type": "execute-snapshot", "data":
{"data-collections", "type"}}``): it waits for the signal, then writes the snapshot's rows
(``op: r``) to the table's topic interleaved with a streaming change. ``cdc snapshot``
reports them; the pipeline then lands them so that a change newer than a snapshot row always
wins (issue 25, item 4).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from confluent_kafka import Consumer, TopicPartition

from cdc.cli import main
from cdc.config.lake import table_paths
from cdc.ops.snapshot import SnapshotSignal
from cdc.pipeline.queries import run_pipelines
from tests.support.envelopes import change
from tests.support.kafka import produce
from tests.support.local_settings import cli_args, make_settings
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_signal_is_what_debeziums_kafka_channel_reads() -> None:
    signal = SnapshotSignal("dbserver1", "dbserver1-signal", ("public.contacts",), id="s-1")
    assert signal.key() == b"dbserver1"
    assert json.loads(signal.value()) == {
        "id": "s-1",
        "type": "execute-snapshot",
        "data": {"data-collections": ["public.contacts"], "type": "INCREMENTAL"},
    }
    scoped = SnapshotSignal(
        "dbserver1", "t", ("public.contacts",), "blocking", "region = 'EU'", id="s-2"
    )
    assert json.loads(scoped.value())["data"] == {
        "data-collections": ["public.contacts"],
        "type": "BLOCKING",
        "additional-conditions": [
            {"data-collection": "public.contacts", "filter": "region = 'EU'"}
        ],
    }


def _connector(bootstrap: str, tmp: Path, got: dict[str, Any]) -> None:
    """Wait for the signal on partition 0 of crm-signal, then 'snapshot' the table."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "debezium-test", "enable.auto.commit": False}
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                consumer.assign([TopicPartition("crm-signal", 0, 0)])
                message = consumer.poll(0.5)
            except Exception:  # the topic does not exist yet
                time.sleep(0.2)
                continue
            if message is not None and message.error() is None:
                got["key"], got["value"] = message.key(), json.loads(message.value())
                break
    finally:
        consumer.close()
    if "key" not in got:
        return
    produce(
        bootstrap,
        "crm.contacts",
        [
            change("c1", "u", 3000, email="ann.new@acme.io"),  # streaming, after the read below
            change("c1", "r", 2000, email="ann@acme.io"),  # read at LSN 2000: older, arrives later
            change("c2", "r", 4000, email="bob.snap@acme.io"),  # newer than c2's last change
            change("c3", "r", 2500, email="cy@acme.io"),  # a key streaming never showed
        ],
        tmp,
    )


def test_cdc_snapshot_signals_reports_and_a_newer_change_wins(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    produce(
        fresh_kafka,
        "crm.contacts",
        [
            change("c1", "c", 1000, email="ann@acme.io"),
            change("c2", "c", 1100, email="bob@acme.io"),
        ],
        tmp_path,
    )
    got: dict[str, Any] = {}
    connector = threading.Thread(target=_connector, args=(fresh_kafka, tmp_path, got))
    connector.start()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "snapshot",
                "--table",
                "dim_contact",
                "--wait",
                "60",
                "--quiet",
                "3",
                *cli_args(fresh_kafka, tmp_path),
            ]
        )
    connector.join()
    lines = out.getvalue().splitlines()
    assert code == 0, lines
    assert got["key"] == b"crm"
    assert got["value"]["type"] == "execute-snapshot"
    assert got["value"]["data"] == {"data-collections": ["contacts"], "type": "INCREMENTAL"}
    assert lines[0].startswith(
        f"sent execute-snapshot {got['value']['id']} for contacts to crm-signal"
    )
    assert lines[-1] == (
        "snapshot of crm_contacts: 3 rows read (3 keys), 1 streaming changes meanwhile"
    )

    settings = make_settings(fresh_kafka, tmp_path)
    run_pipelines(spark, settings, ["crm_contacts"], available_now=True)
    dim = read_table(table_paths(settings, settings.pipeline("crm_contacts"))["silver"])
    rows = dim.sort("contact_id", "_seq_open").select("contact_id", "email", "is_current")
    assert rows.rows() == [
        ("c1", "ann@acme.io", False),
        ("c1", "ann.new@acme.io", True),  # the snapshot's older read never overrides it
        ("c2", "bob@acme.io", False),
        ("c2", "bob.snap@acme.io", True),
        ("c3", "cy@acme.io", True),
    ]
    assert dim.filter(pl.col("is_current")).height == 3


def test_no_snapshot_row_is_exit_code_1_with_what_to_check(
    fresh_kafka: str, tmp_path: Path
) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "snapshot",
                "--table",
                "crm_contacts",
                "--wait",
                "2",
                "--quiet",
                "1",
                *cli_args(fresh_kafka, tmp_path),
            ]
        )
    assert code == 1
    assert out.getvalue().splitlines()[-1] == (
        "no snapshot row arrived on crm.contacts within 2 s: is the kafka signal channel"
        " enabled on connector crm (signal.enabled.channels) and does it read crm-signal?"
    )
