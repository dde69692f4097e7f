"""Source-native ordering: positions per connector, typed and composite ``sequence_by``, ties."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from cdc.config.settings import SequenceField, load_settings
from cdc.core.scd2 import Scd2Spec
from cdc.core.sequence import PositionField, ordering_for
from cdc.errors import ConfigError
from cdc.ingest.changes import scd2_changes
from cdc.pipeline.queries import check_table_layout
from tests.support.envelopes import SOURCE_TYPE, bronze_schema
from tests.support.scd2_one_pass import scd2_from_events

SPEC = Scd2Spec.build(["id"], ["id", "name"])
T = 1_767_600_000_000

_VALUE = pa.struct(
    [
        ("op", pa.string()),
        ("after", pa.struct([("id", pa.string()), ("name", pa.string())])),
        ("source", SOURCE_TYPE),
    ]
)


def batch(records: list[dict[str, Any]]) -> pa.Table:
    """Decoded bronze rows of key ``k``: each record names its name, source fields, offset."""
    rows = []
    for i, r in enumerate(records):
        source = {f.name: r.get(f.name) for f in SOURCE_TYPE}
        source["ts_ms"] = r.get("ts_ms", T)
        value = (
            None
            if r.get("tombstone")
            else {
                "op": r.get("op", "u"),
                "after": None if r.get("op") == "d" else {"id": "k", "name": r.get("name")},
                "source": source,
            }
        )
        rows.append(
            {
                "topic": "t",
                "partition": r.get("partition", 0),
                "offset": r.get("offset", i),
                "timestamp": datetime.fromtimestamp(r.get("kafka_ms", T) / 1000, UTC),
                "key": {"id": "k"},
                "value": value,
            }
        )
    return pa.Table.from_pylist(rows, bronze_schema(pa.struct([("id", pa.string())]), _VALUE))


def final(records: list[dict[str, Any]], sequence_by: Any = None) -> pl.DataFrame:
    events = scd2_changes(batch(records), SPEC, "envelope", sequence_by)
    return scd2_from_events(events, SPEC)


def current_name(records: list[dict[str, Any]], sequence_by: Any = None) -> str | None:
    rows = final(records, sequence_by).filter(pl.col("is_current"))
    return rows.item(0, "name") if rows.height else None


def test_mysql_binlog_files_compare_by_their_index_not_as_text() -> None:
    # As text "mysql-bin.1000000" < "mysql-bin.999999" and "9" > "10": both wrong.
    records = [
        {"connector": "mysql", "file": "mysql-bin.1000000", "pos": 4, "name": "newest"},
        {"connector": "mysql", "file": "mysql-bin.999999", "pos": 10, "name": "older"},
        {"connector": "mysql", "file": "mysql-bin.999999", "pos": 9, "name": "oldest"},
    ]
    assert current_name(records) == "newest"
    assert final(records).get_column("name").to_list() == ["oldest", "older", "newest"]


def test_mysql_binlog_000010_follows_000009_whatever_the_log_order() -> None:
    records = [
        {"connector": "mysql", "file": "mysql-bin.000010", "pos": 120, "name": "b"},
        {"connector": "mysql", "file": "mysql-bin.000009", "pos": 90_000, "name": "a"},
    ]
    assert current_name(records) == "b"


def test_two_changes_in_one_millisecond_are_ordered_by_lsn() -> None:
    # Same source ms; the log has the later LSN first (another partition's replay, a resend).
    records = [
        {"connector": "postgresql", "lsn": 2_000, "name": "second"},
        {"connector": "postgresql", "lsn": 1_000, "name": "first"},
    ]
    assert current_name(records) == "second"
    # Ordered by time alone, the log order would have decided.
    assert current_name(records, "source.ts_ms") == "first"


def test_postgres_txid_breaks_an_lsn_tie() -> None:
    records = [
        {"connector": "postgresql", "lsn": 5, "txId": 9, "name": "later tx"},
        {"connector": "postgresql", "lsn": 5, "txId": 8, "name": "earlier tx"},
    ]
    assert current_name(records) == "later tx"


def test_sqlserver_lsns_compare_as_numbers_and_snapshot_rows_come_first() -> None:
    records = [
        {
            "connector": "sqlserver",
            "commit_lsn": "0000000A:00000001:0001",
            "change_lsn": "0000000a:00000001:0002",
            "event_serial_no": 2,
            "name": "update",
        },
        {
            "connector": "sqlserver",
            "commit_lsn": "00000009:000000ff:0003",
            "change_lsn": None,  # a snapshot row
            "event_serial_no": 1,
            "name": "snapshot",
        },
        {
            "connector": "sqlserver",
            "commit_lsn": "0000000a:00000001:0001",
            "change_lsn": "0000000a:00000001:0002",
            "event_serial_no": 1,
            "name": "update before image",
        },
    ]
    assert final(records).get_column("name").to_list() == [
        "snapshot",
        "update before image",
        "update",
    ]


def test_an_unknown_connector_is_ordered_by_source_time() -> None:
    records = [
        {"connector": "mongodb", "ts_ms": T + 5, "name": "later"},
        {"connector": "mongodb", "ts_ms": T + 1, "name": "earlier"},
    ]
    assert current_name(records) == "later"


def test_composite_typed_sequence_by() -> None:
    sequence_by = [
        SequenceField(path="source.file", kind="binlog_file"),
        SequenceField(path="source.pos"),
    ]
    records = [
        {"connector": "x", "file": "bin.2", "pos": 1, "name": "b"},
        {"connector": "x", "file": "bin.10", "pos": 0, "name": "c"},
        {"connector": "x", "file": "bin.2", "pos": -5, "name": "a"},  # signed compares right
    ]
    assert final(records, sequence_by).get_column("name").to_list() == ["a", "b", "c"]


def test_text_is_never_compared_as_text() -> None:
    with pytest.raises(ConfigError, match="never compared as text"):
        scd2_changes(batch([{"name": "x"}]), SPEC, "envelope", ["source.connector"])
    with pytest.raises(ConfigError, match="no such field"):
        scd2_changes(batch([{"name": "x"}]), SPEC, "envelope", [PositionField("source.nope")])
    with pytest.raises(ConfigError, match="kind number needs an integer"):
        scd2_changes(
            batch([{"name": "x"}]), SPEC, "envelope", [PositionField("source.file", "number")]
        )


def test_equal_positions_fall_back_to_time_then_log_order() -> None:
    # Ties on position: the later source time wins; on position and time: the later offset
    # (a key's records share a partition; across partitions the higher partition wins).
    by_time = [
        {"connector": "postgresql", "lsn": 7, "ts_ms": T + 2, "name": "later time"},
        {"connector": "postgresql", "lsn": 7, "ts_ms": T + 1, "name": "earlier time"},
    ]
    assert current_name(by_time) == "later time"
    by_offset = [
        {"connector": "postgresql", "lsn": 7, "name": "first in log", "offset": 3},
        {"connector": "postgresql", "lsn": 7, "name": "last in log", "offset": 4},
    ]
    assert current_name(by_offset) == "last in log"
    by_partition = [
        {"connector": "postgresql", "lsn": 7, "name": "p1", "partition": 1, "offset": 0},
        {"connector": "postgresql", "lsn": 7, "name": "p0", "partition": 0, "offset": 9},
    ]
    assert current_name(by_partition) == "p1"


def test_a_resent_change_at_the_same_position_is_a_copy() -> None:
    records = [
        {"connector": "postgresql", "lsn": 1, "name": "a", "offset": 0},
        {"connector": "postgresql", "lsn": 2, "name": "b", "offset": 1},
        {"connector": "postgresql", "lsn": 2, "name": "b", "offset": 2},  # at-least-once resend
    ]
    rows = final(records)
    assert rows.height == 2
    assert rows.filter(pl.col("is_current")).item(0, "_source_offset") == 1


def test_valid_times_never_go_back_when_positions_and_clock_disagree() -> None:
    # The position says b follows a; the source clock says b is 3 s older.
    records = [
        {"connector": "postgresql", "lsn": 1, "ts_ms": T + 5_000, "name": "a"},
        {"connector": "postgresql", "lsn": 2, "ts_ms": T + 2_000, "name": "b"},
    ]
    rows = final(records)
    a, b = rows.row(0, named=True), rows.row(1, named=True)
    assert (a["name"], b["name"]) == ("a", "b")
    assert a["valid_to"] == b["valid_from"] == a["valid_from"]  # clamped: never inverted
    assert a["valid_from"] <= a["valid_to"]


def test_a_tombstone_takes_its_predecessors_position() -> None:
    records = [
        {"connector": "postgresql", "lsn": 5, "name": "a", "offset": 0},
        {"tombstone": True, "offset": 1, "kafka_ms": T - 60_000},  # its Kafka clock is behind
        {"connector": "postgresql", "lsn": 9, "name": "b", "offset": 2},
    ]
    rows = final(records)
    assert rows.get_column("name").to_list() == ["a", "b"]
    assert rows.get_column("is_current").to_list() == [False, True]
    assert rows.item(0, "_seq_close") < rows.item(1, "_seq_open")  # closed by the tombstone


def test_sequence_widths_per_layout() -> None:
    assert ordering_for("source.ts_ms", "envelope").width == 42
    assert ordering_for(None, "envelope").width == 3 * 21 + 42
    assert ordering_for(["a", "b"], "flat").width == 2 * 21 + 42
    with pytest.raises(ConfigError, match="needs sequence_by"):
        ordering_for(None, "flat")


def test_a_table_of_another_layout_is_refused_at_start(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    settings = load_settings(
        "local",
        overrides=[f"lake.root={tmp_path / 'lake'}", f"checkpoints.root={tmp_path / 'cp'}"],
    )
    events = scd2_changes(batch([{"name": "a"}]), SPEC, "envelope", "source.ts_ms")
    legacy = scd2_from_events(events, SPEC).rename({"id": "contact_id"})
    uri = settings.lake.path("silver", "dim_contact")
    write_deltalake(uri, legacy.to_arrow())
    with pytest.raises(ConfigError) as refused:
        check_table_layout(settings, "crm_contacts")
    assert "source time, partition, offset" in str(refused.value)
    assert "pipelines.crm_contacts.sequence_by" in str(refused.value)
    kept = settings.model_copy(
        update={
            "pipelines": {
                **settings.pipelines,
                "crm_contacts": settings.pipeline("crm_contacts").model_copy(
                    update={"sequence_by": "source.ts_ms"}
                ),
            }
        }
    )
    check_table_layout(kept, "crm_contacts")  # the old ordering, named: accepted
