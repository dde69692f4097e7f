"""SCD2 rules on the pure function: no Spark, no Delta."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest

from cdc.core.scd2 import Scd2Spec, apply_scd2, empty_dimension, fold_pass, late_keys
from tests.support.scd2_events import SCHEMA, SPEC, apply_all, changes, ev


def versions(table: pl.DataFrame) -> list[tuple[Any, ...]]:
    return [
        (r["contact_id"], r["email"], r["phone"], r["valid_from"], r["valid_to"], r["is_current"])
        for r in table.sort(["contact_id", "_seq_open"]).iter_rows(named=True)
    ]


def t(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def test_insert_opens_a_current_version() -> None:
    table = apply_all(changes(ev("c1", 1000, email="a@x.io", phone="1")))
    assert versions(table) == [("c1", "a@x.io", "1", t(1000), None, True)]
    row = table.row(0, named=True)
    assert (row["_source_topic"], row["_source_partition"], row["_source_offset"]) == (
        "crm.contacts",
        0,
        1000,
    )


def test_tracked_change_closes_previous_at_new_valid_from() -> None:
    table = apply_all(
        changes(ev("c1", 1000, email="a@x.io")),
        changes(ev("c1", 2000, email="b@x.io")),
    )
    assert versions(table) == [
        ("c1", "a@x.io", None, t(1000), t(2000), False),
        ("c1", "b@x.io", None, t(2000), None, True),
    ]


def test_untracked_change_updates_in_place() -> None:
    table = apply_all(
        changes(ev("c1", 1000, email="a@x.io", phone="1")),
        changes(ev("c1", 2000, email="a@x.io", phone="2")),
    )
    assert versions(table) == [("c1", "a@x.io", "2", t(1000), None, True)]
    assert table.row(0, named=True)["_source_offset"] == 2000


def test_exact_duplicate_is_a_no_op() -> None:
    first = changes(ev("c1", 1000, email="a@x.io"))
    table = empty_dimension(SPEC, SCHEMA)
    table = pl.concat([table, apply_scd2(table, first, SPEC).upserts], how="vertical_relaxed")
    again = apply_scd2(table, first, SPEC)
    assert again.upserts.height == 0 and again.deletes.height == 0
    assert again.duplicate_events == 1


def test_delete_closes_current_and_reinsert_opens_new_version() -> None:
    table = apply_all(
        changes(ev("c1", 1000, email="a@x.io")),
        changes(ev("c1", 2000, op="D")),
        changes(ev("c1", 3000, email="a@x.io")),
    )
    assert versions(table) == [
        ("c1", "a@x.io", None, t(1000), t(2000), False),
        ("c1", "a@x.io", None, t(3000), None, True),
    ]


def test_delete_of_unknown_key_and_double_delete_are_no_ops() -> None:
    table = apply_all(
        changes(ev("c9", 500, op="D")),
        changes(ev("c1", 1000, email="a@x.io")),
        changes(ev("c1", 2000, op="D"), ev("c1", 2500, op="D")),
    )
    assert versions(table) == [("c1", "a@x.io", None, t(1000), t(2000), False)]


def test_within_one_batch_equals_one_pass() -> None:
    events = [
        ev("c1", 1000, email="a@x.io", phone="1"),
        ev("c1", 2000, email="a@x.io", phone="2"),
        ev("c1", 3000, email="b@x.io"),
        ev("c2", 1500, email="z@x.io"),
        ev("c1", 4000, op="D"),
        ev("c1", 5000, email="c@x.io"),
    ]
    one_batch = apply_all(changes(*events))
    per_event = apply_all(*[changes(e) for e in events])
    assert one_batch.equals(per_event)


def test_late_tracked_event_splits_the_interval_it_falls_in() -> None:
    table = apply_all(
        changes(ev("c1", 1000, email="a@x.io")),
        changes(ev("c1", 3000, email="c@x.io")),
        changes(ev("c1", 2000, email="b@x.io")),  # late
    )
    assert versions(table) == [
        ("c1", "a@x.io", None, t(1000), t(2000), False),
        ("c1", "b@x.io", None, t(2000), t(3000), False),
        ("c1", "c@x.io", None, t(3000), None, True),
    ]


def test_late_delete_closes_the_right_interval() -> None:
    table = apply_all(
        changes(ev("c1", 1000, email="a@x.io")),
        changes(ev("c1", 3000, email="c@x.io")),
        changes(ev("c1", 2000, op="D")),  # late
    )
    assert versions(table) == [
        ("c1", "a@x.io", None, t(1000), t(2000), False),
        ("c1", "c@x.io", None, t(3000), None, True),
    ]


def test_late_event_equal_to_successor_merges_versions() -> None:
    table = apply_all(
        changes(ev("c1", 1000, email="a@x.io")),
        changes(ev("c1", 3000, email="b@x.io")),
        changes(ev("c1", 2000, email="b@x.io")),  # late: b starts earlier
    )
    assert versions(table) == [
        ("c1", "a@x.io", None, t(1000), t(2000), False),
        ("c1", "b@x.io", None, t(2000), None, True),
    ]


def test_equal_timestamps_tie_break_on_kafka_position() -> None:
    table = apply_all(
        changes(
            ev("c1", 1000, offset=7, email="second@x.io"),
            ev("c1", 1000, offset=6, email="first@x.io"),
        ),
    )
    assert [r[1] for r in versions(table)] == ["first@x.io", "second@x.io"]
    assert versions(table)[0][4] == t(1000)  # zero-length interval, still ordered


def test_counts() -> None:
    table = apply_all(changes(ev("c1", 1000, email="a@x.io")))
    result = apply_scd2(
        table, changes(ev("c1", 2000, email="b@x.io"), ev("c2", 2000, email="q@x.io")), SPEC
    )
    assert (result.inserted, result.updated, result.closed, result.affected_keys) == (2, 1, 1, 2)


def test_spec_rejects_unknown_tracked_columns() -> None:
    with pytest.raises(ValueError, match="unknown columns: \\['nope'\\]"):
        Scd2Spec.build(keys=["k"], columns=["k", "a"], track_history=["nope"])


def tombstone(key: str, kafka_ts: int, offset: int) -> dict[str, Any]:
    return {**ev(key, kafka_ts, op="D", offset=offset), "_tombstone": True}


def with_tombstones(*events: dict[str, Any]) -> pl.DataFrame:
    flags = [bool(e.get("_tombstone")) for e in events]
    return changes(
        *[{k: v for k, v in e.items() if k != "_tombstone"} for e in events]
    ).with_columns(pl.Series("_tombstone", flags))


def test_tombstone_after_delete_is_a_no_op_whatever_its_kafka_time() -> None:
    # Kafka time of the tombstone (9_000_000) is far later than the source times: another clock.
    table = apply_all(
        with_tombstones(
            ev("c1", 1000, offset=1, email="a"),
            ev("c1", 2000, op="D", offset=2),
            tombstone("c1", 9_000_000, offset=3),
        ),
        with_tombstones(ev("c1", 3000, offset=4, email="a")),
    )
    assert versions(table) == [
        ("c1", "a", None, t(1000), t(2000), False),
        ("c1", "a", None, t(3000), None, True),
    ]


def test_tombstone_in_a_later_batch_is_placed_after_its_predecessor() -> None:
    table = apply_all(
        with_tombstones(ev("c1", 1000, offset=1, email="a"), ev("c1", 2000, op="D", offset=2)),
        with_tombstones(tombstone("c1", 9_000_000, offset=3), ev("c1", 3000, offset=4, email="b")),
    )
    assert versions(table)[-1] == ("c1", "b", None, t(3000), None, True)


def test_tombstone_without_delete_closes_at_its_kafka_time() -> None:
    table = apply_all(
        with_tombstones(ev("c1", 1000, offset=1, email="a")),
        with_tombstones(tombstone("c1", 5000, offset=2)),
    )
    assert versions(table) == [("c1", "a", None, t(1000), t(5000), False)]


def test_a_row_written_before_valid_max_existed_is_rebuilt_from_history_once() -> None:
    # A table from before rows kept the key's clock (_valid_max) cannot tell where the next
    # change's valid time starts: the key is late once, rebuilt from its history (bronze),
    # and its rows gain the column.
    first = changes(ev("c1", 1000, email="a"), ev("c1", 2000, email="a", phone="2"))
    later = changes(ev("c1", 3000, email="b"))
    table = apply_all(first)
    assert table.get_column("_valid_max").to_list() == [t(2000)]
    assert late_keys(table, later, SPEC).height == 0
    legacy = table.drop("_valid_max")
    assert late_keys(legacy, later, SPEC).to_dicts() == [{"contact_id": "c1"}]
    assert fold_pass(legacy, later, SPEC, complete=False).need_history.height == 1
    result = apply_scd2(legacy, later, SPEC, history=pl.concat([first, later]))
    rows = result.upserts.sort("_seq_open")
    assert rows.get_column("_valid_max").to_list() == [t(2000), t(3000)]
    assert versions(rows) == [
        ("c1", "a", "2", t(1000), t(3000), False),
        ("c1", "b", None, t(3000), None, True),
    ]


def test_orphan_markers_written_before_valid_max_existed_make_their_key_late() -> None:
    empty = empty_dimension(SPEC, SCHEMA)
    later = changes(ev("c1", 3000, email="a"))
    gone = apply_scd2(empty, changes(ev("c1", 2000, op="D")), SPEC)
    assert gone.orphans is not None
    assert gone.orphans.get_column("_valid_max").to_list() == [t(2000)]
    assert late_keys(empty, later, SPEC, gone.orphans).height == 0
    legacy = gone.orphans.drop("_valid_max")
    assert late_keys(empty, later, SPEC, legacy).to_dicts() == [{"contact_id": "c1"}]
