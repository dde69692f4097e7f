"""The incremental SCD2 path against an independent oracle (``tests/support/scd2_oracle.py``).

``test_scd2_order`` proves that any arrival order and batch split give the one-pass result
(``tests/support/scd2_one_pass.py``); both share the fold, so it cannot show the fold is
right. Here the same Kafka records go through the service's own path (Avro-shaped bronze
rows → :func:`cdc.ingest.changes.scd2_changes` → :func:`cdc.core.scd2.apply_scd2` batch by batch,
with bronze as history and the orphan state) and the result must equal the plain-Python oracle,
which implements docs/scd2.md record by record. Positions are PostgreSQL LSNs with frequent
ties and a source clock that disagrees with them.

Every case runs through two drivers: ``apply`` (one :func:`~cdc.core.scd2.apply_scd2` per batch
with every row of the batch's keys and their full history) and ``passes`` (the delta-rs
writer's own path: :func:`cdc.pipeline.batch_local.fold_passes` reading current rows first, then
every row of keys without one or late, then bronze history for late keys, and one MERGE as the
stores apply it: :mod:`tests.support.scd2_memory`).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.core.scd2 import (
    UNAVAILABLE_VALUE,
    Scd2Result,
    Scd2Spec,
    apply_scd2,
    empty_dimension,
    unresolvable_unavailable,
)
from cdc.ingest.changes import scd2_changes
from cdc.store.plan import DIMENSION_LAYOUT
from tests.support.scd2_events import SCHEMA, SPEC
from tests.support.scd2_memory import MemoryTable, fold_and_merge
from tests.support.scd2_oracle import Record, Version, scd2_oracle, unavailable_rejects

IDENTITY = ["contact_id", "_seq_open"]
TRACKED = set(SPEC.tracked)
T0 = 1_767_600_000_000
KAFKA_CLOCK = T0 + 50  # tombstones' own clock: near the source clock, so both orders occur

_ROW = pa.struct([(c, pa.string()) for c in ("contact_id", "email", "last_name", "phone")])
_SOURCE = pa.struct([("connector", pa.string()), ("ts_ms", pa.int64()), ("lsn", pa.int64())])
_VALUE = pa.struct([("before", _ROW), ("after", _ROW), ("op", pa.string()), ("source", _SOURCE)])
_BRONZE = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", "UTC")),
        ("key", pa.struct([("contact_id", pa.string())])),
        ("value", _VALUE),
    ]
)


def bronze(records: list[Record]) -> pa.Table:
    """The records as the decoder lands them in bronze."""
    rows = []
    for r in records:
        values = dict(r.values)
        image = {"contact_id": r.key, **values} if values else None
        before = {"contact_id": r.key, "email": None, "last_name": None, "phone": None}
        value = None
        if r.op is not None:
            value = {
                "before": before if r.op == "d" else None,  # a delete's image: nulls but the key
                "after": None if r.op == "d" else image,
                "op": r.op,
                "source": {"connector": "postgresql", "ts_ms": r.time, "lsn": r.position[0]},
            }
        rows.append(
            {
                "topic": "crm.contacts",
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": datetime.fromtimestamp(r.kafka_time / 1000, UTC),
                "key": {"contact_id": r.key},
                "value": value,
            }
        )
    return pa.Table.from_pylist(rows, _BRONZE)


def events(records: list[Record], spec: Scd2Spec = SPEC) -> pl.DataFrame:
    return scd2_changes(bronze(records), spec, "envelope", None)


DRIVERS = ["apply", "passes"]


class Dimension:
    """The table plus the orphan state the sink keeps beside it, fed by one of
    :data:`DRIVERS`."""

    def __init__(self, driver: str = "apply", spec: Scd2Spec = SPEC) -> None:
        self.driver = driver
        self.spec = spec
        self.table = empty_dimension(spec, SCHEMA)
        self.seen: pl.DataFrame | None = None  # the orphan markers, once there are some
        self.silver = MemoryTable(DIMENSION_LAYOUT.partition_by)
        self.orphans = MemoryTable()

    def apply(self, batch: pl.DataFrame, history: pl.DataFrame) -> None:
        if self.driver == "passes":
            self._fold_passes(batch, history)
            return
        result: Scd2Result = apply_scd2(
            self.table, batch, self.spec, history=history, seen=self.seen
        )
        table = self.table.join(result.deletes, on=IDENTITY, how="anti")
        table = table.join(result.upserts.select(IDENTITY), on=IDENTITY, how="anti")
        self.table = pl.concat([table, result.upserts], how="vertical_relaxed")
        assert result.orphans is not None
        found = [result.orphans] if self.seen is None else [self.seen, result.orphans]
        self.seen = pl.concat(found, how="vertical_relaxed")

    def _fold_passes(self, batch: pl.DataFrame, history: pl.DataFrame) -> None:
        def bronze_history(keys: pl.DataFrame) -> pl.DataFrame | None:
            found = history.join(keys, on=keys.columns, how="semi", nulls_equal=True)
            return found if found.height else None

        fold_and_merge(batch, self.spec, self.silver, self.orphans, bronze_history)
        if self.silver.rows is not None:
            self.table = self.silver.rows.select(self.table.columns)


def _nulls_first(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((False, 0) if v is None else (True, v) for v in row)


def visible(table: pl.DataFrame) -> list[tuple[Any, ...]]:
    """What a reader of the dimension sees, comparable with :class:`Version`."""
    ms = table.with_columns(
        pl.col("valid_from").dt.epoch("ms"), pl.col("valid_to").dt.epoch("ms")
    ).select(
        "contact_id",
        "email",
        "last_name",
        "phone",
        "valid_from",
        "valid_to",
        "is_current",
        "_source_partition",
        "_source_offset",
    )
    return sorted(ms.iter_rows(), key=_nulls_first)


def expected(versions: list[Version]) -> list[tuple[Any, ...]]:
    rows = [
        (
            v.key,
            v.values["email"],
            v.values["last_name"],
            v.values["phone"],
            v.valid_from,
            v.valid_to,
            v.is_current,
            v.partition,
            v.offset,
        )
        for v in versions
    ]
    return sorted(rows, key=_nulls_first)


_change = st.fixed_dictionaries(
    {
        "key": st.sampled_from(["c1", "c2", "c3"]),
        "kind": st.sampled_from(["c", "u", "u", "u", "d", "T"]),
        "lsn": st.integers(0, 10),  # small: equal positions are common
        "clock": st.integers(0, 10),  # the source clock, often disagreeing with the LSN
        "email": st.sampled_from(["a", "b"]),
        "phone": st.sampled_from(["1", "2", None]),
        "partition": st.sampled_from([0, 0, 0, 1]),
    }
)


def to_log(changes: list[dict[str, Any]]) -> list[Record]:
    """Kafka records in log order: offsets follow the list within each partition."""
    next_offset = {0: 0, 1: 0}
    log = []
    for i, c in enumerate(changes):
        p = c["partition"]
        op = None if c["kind"] == "T" else c["kind"]
        values: tuple[tuple[str, Any], ...] = ()
        if op in ("c", "u"):
            values = (("email", c["email"]), ("last_name", "Doe"), ("phone", c["phone"]))
        log.append(
            Record(
                key=c["key"],
                op=op,
                values=values,
                position=(c["lsn"],),
                time=T0 + c["clock"],
                partition=p,
                offset=next_offset[p],
                kafka_time=KAFKA_CLOCK + 3 * i,
            )
        )
        next_offset[p] += 1
    return log


def resend(record: Record, offset: int) -> Record:
    """The same change written again by an at-least-once connector: a new record."""
    return Record(
        record.key,
        record.op,
        record.values,
        record.position,
        record.time,
        record.partition,
        offset,
        record.kafka_time,
    )


@pytest.mark.parametrize("driver", DRIVERS)
@settings(max_examples=300, deadline=None)
@given(changes=st.lists(_change, max_size=28), data=st.data())
def test_incremental_merges_equal_the_independent_oracle(
    driver: str, changes: list[dict[str, Any]], data: st.DataObject
) -> None:
    log = to_log(data.draw(st.permutations(changes)))
    copies = data.draw(st.lists(st.sampled_from(log), max_size=3)) if log else []
    top = {p: max((r.offset for r in log if r.partition == p), default=-1) for p in (0, 1)}
    for c in copies:  # resends of non-tombstones, later in the same partition
        if c.op is not None:
            top[c.partition] += 1
            log.append(resend(c, top[c.partition]))
    cuts = data.draw(st.lists(st.integers(0, len(log)), max_size=6))
    bounds = sorted({0, len(log), *cuts})
    redeliver = data.draw(st.lists(st.integers(0, max(len(log) - 1, 0)), max_size=4)) if log else []
    # Records quarantined when first read (a contract since fixed), then a replay from the
    # first of them: it reads the log from there again, in one or two batches.
    held = (
        set(data.draw(st.lists(st.integers(0, max(len(log) - 1, 0)), max_size=2))) if log else set()
    )
    batches = [
        [log[i] for i in range(a, b) if i not in held]
        + [log[i] for i in redeliver if i < a and i not in held]
        for a, b in itertools.pairwise(bounds)
    ]
    if held:
        replay = log[min(held) :]
        split = data.draw(st.integers(0, len(replay)))
        batches += [replay[:split], replay[split:]]

    dim = Dimension(driver)
    received: list[Record] = []
    for batch in batches:
        if not batch:
            continue
        received += batch
        dim.apply(events(batch), history=events(received))

    assert visible(dim.table) == expected(scd2_oracle(log, TRACKED))


PH = UNAVAILABLE_VALUE
TOAST_SPEC = replace(SPEC, unavailable=(PH,))


@pytest.mark.parametrize("driver", DRIVERS)
@settings(max_examples=200, deadline=None)
@given(
    changes=st.lists(
        st.tuples(_change, st.integers(0, 11)).map(lambda t: t[0] | {"n": t[1]}),
        max_size=24,
    ),
    data=st.data(),
)
def test_placeholders_for_unchanged_values_equal_the_independent_oracle(
    driver: str, changes: list[dict[str, Any]], data: st.DataObject
) -> None:
    """TOAST: placeholders in a tracked (email) and an untracked (phone) column, quarantined
    before they land when nothing can stand for them, as the writers do; the oracle decides
    the quarantine and the values on its own (rule 7)."""
    toasted = [
        c | {"email": c["email"] if c["n"] % 3 else PH, "phone": c["phone"] if c["n"] % 4 else PH}
        for c in changes
    ]
    log = to_log(data.draw(st.permutations(toasted)))
    cuts = data.draw(st.lists(st.integers(0, len(log)), max_size=5))
    bounds = sorted({0, len(log), *cuts})
    redeliver = data.draw(st.lists(st.integers(0, max(len(log) - 1, 0)), max_size=3)) if log else []
    batches = [
        log[a:b] + [log[i] for i in redeliver if i < a] for a, b in itertools.pairwise(bounds)
    ]
    batches = [b for b in batches if b]
    dim = Dimension(driver, TOAST_SPEC)
    received: list[Record] = []
    rejected: list[set[tuple[int, int]]] = []
    for batch in batches:
        found = unresolvable_unavailable(
            events(batch, TOAST_SPEC), dim.table.select("contact_id"), TOAST_SPEC
        )
        out = set(found.select("_source_partition", "_source_offset").iter_rows())
        rejected.append(out)
        kept = [r for r in batch if (r.partition, r.offset) not in out]
        if not kept:
            continue
        received += kept
        dim.apply(events(kept, TOAST_SPEC), history=events(received, TOAST_SPEC))

    assert rejected == unavailable_rejects(batches, (PH,))
    assert visible(dim.table) == expected(scd2_oracle(received, TRACKED, (PH,)))
    for column in ("email", "phone"):  # a placeholder never lands in silver
        assert PH not in dim.table.get_column(column).to_list()


def rec(
    key: str,
    op: str | None,
    lsn: int,
    offset: int,
    email: str = "a",
    *,
    ts: int | None = None,
    phone: str | None = None,
    partition: int = 0,
    kafka_ts: int | None = None,
) -> Record:
    """A record at LSN ``lsn``; its source time is ``ts`` (default: ``lsn``) ms after T0."""
    values = () if op in ("d", None) else (("email", email), ("last_name", "Doe"), ("phone", phone))
    time = T0 + (lsn if ts is None else ts)
    kafka = time if kafka_ts is None else T0 + kafka_ts
    return Record(key, op, values, (lsn,), time, partition, offset, kafka)


def run(*batches: list[Record], driver: str = "apply") -> list[tuple[Any, ...]]:
    """The table after ``batches``; it must equal the oracle over every record."""
    dim = Dimension(driver)
    received: list[Record] = []
    for batch in batches:
        received += batch
        dim.apply(events(batch), history=events(received))
    table = visible(dim.table)
    assert table == expected(scd2_oracle(received, TRACKED))
    return table


def versions(table: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """(email, phone, valid_from, valid_to, is_current) per row, times in ms after T0."""
    return [(r[1], r[3], r[4] - T0, None if r[5] is None else r[5] - T0, r[6]) for r in table]


def test_a_late_delete_closes_only_the_interval_it_belongs_to() -> None:
    # v1 at LSN 1, v2 at LSN 3; the delete at LSN 2 arrives last.
    table = run([rec("k", "c", 1, 0, "a"), rec("k", "u", 3, 1, "b")], [rec("k", "d", 2, 2)])
    assert [(r[1], r[4] - T0, r[5] and r[5] - T0, r[6]) for r in table] == [
        ("a", 1, 2, False),  # closed by the delete, at the delete
        ("b", 3, None, True),  # opened after the delete: untouched, still current
    ]


def test_an_update_older_than_a_delete_never_revives_the_key() -> None:
    table = run([rec("k", "c", 1, 0, "a"), rec("k", "d", 5, 1)], [rec("k", "u", 3, 2, "b")])
    assert [(r[1], r[4] - T0, r[5] - T0, r[6]) for r in table] == [
        ("a", 1, 3, False),
        ("b", 3, 5, False),  # placed before the delete, and closed by it
    ]
    assert not any(r[6] for r in table)


def test_an_update_older_than_a_delete_of_a_key_never_seen_stays_deleted() -> None:
    # The delete arrives first (no row to close: remembered as an orphan), the insert later.
    table = run([rec("k", "d", 5, 0)], [rec("k", "c", 3, 1, "a")])
    assert [(r[1], r[4] - T0, r[5] - T0, r[6]) for r in table] == [("a", 3, 5, False)]


def test_a_delete_with_nulls_in_its_before_image_uses_the_kafka_key() -> None:
    # The before image names another id and has nulls everywhere else: only the Kafka key counts.
    rows = bronze([rec("k", "c", 1, 0), rec("k", "d", 2, 1)]).to_pylist()
    rows[1]["value"]["before"] = {
        "contact_id": None,
        "email": None,
        "last_name": None,
        "phone": None,
    }
    changes = scd2_changes(pa.Table.from_pylist(rows, _BRONZE), SPEC, "envelope", None)
    assert changes.get_column("contact_id").to_list() == ["k", "k"]
    dim = Dimension()
    dim.apply(changes, history=changes)
    assert [(r[0], r[6]) for r in visible(dim.table)] == [("k", False)]


# Found by the property test (each failed before the fix, through both drivers). All records
# of a case share the key; times are ms after T0.


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_replayed_record_comes_before_the_tombstone_after_it_in_the_log(driver: str) -> None:
    # The update at offset 1 was quarantined when first read and is replayed after the
    # tombstone at offset 2 was applied: the tombstone follows it in the log, so it closes
    # the update's version (before the fix the update made the deleted key current again).
    first = [rec("k", "c", 1, 0, "a"), rec("k", None, 2, 2, kafka_ts=3)]
    table = run(first, [rec("k", "u", 2, 1, "b")], driver=driver)
    assert versions(table) == [("a", None, 1, 2, False), ("b", None, 2, 3, False)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_tombstone_that_deleted_nothing_is_placed_again_by_a_record_replayed_before_it(
    driver: str,
) -> None:
    # The tombstone (offset 1) arrives with no earlier record of its key (the insert at
    # offset 0 was quarantined); the key has only the orphan marker. The insert replayed
    # later precedes it in the log: the tombstone closes it at the tombstone's Kafka time.
    table = run([rec("k", None, 0, 1, kafka_ts=62)], [rec("k", "c", 0, 0, ts=1)], driver=driver)
    assert versions(table) == [("a", None, 1, 62, False)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_change_between_a_record_and_its_resend_makes_the_resend_count(driver: str) -> None:
    # Two deletes at one LSN and time: the one in partition 1 sorts right after the one in
    # partition 0 and is a resend of it (a no-op). The insert that arrives next sorts between
    # them: the delete in partition 1 now follows an insert, and closes it.
    first = [rec("k", "d", 0, 0, ts=0), rec("k", "d", 0, 0, ts=0, partition=1)]
    table = run(first, [rec("k", "c", 0, 1, ts=0)], driver=driver)
    assert versions(table) == [("a", None, 0, 0, False)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_three_resent_inserts_then_the_delete_of_another_partition(driver: str) -> None:
    # The shape of the first report: inserts at LSN 0 / clock 0, the delete in partition 1.
    table = run(
        [rec("k", "d", 0, 0, ts=0), rec("k", "d", 0, 0, ts=0, partition=1)],
        [rec("k", "c", 0, 1, ts=0), rec("k", "c", 0, 2, ts=0), rec("k", "c", 0, 3, ts=0)],
        driver=driver,
    )
    assert versions(table) == [("a", None, 0, 0, False)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_clock_of_a_tombstone_that_deleted_nothing_carries_to_the_next_insert(
    driver: str,
) -> None:
    # The tombstone has no earlier record in its partition: it keeps its Kafka time (50),
    # later than every source time here. Valid times never go back along the sequence, so
    # the insert that arrives in the next batch opens at 50, not at its own time 0.
    first = [rec("k", None, 0, 0, kafka_ts=50), rec("k", "d", 0, 1, ts=0)]
    table = run(first, [rec("k", "c", 0, 2, ts=0)], driver=driver)
    assert versions(table) == [("a", None, 50, None, True)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_clock_of_deletes_that_deleted_nothing_carries_to_the_next_insert(
    driver: str,
) -> None:
    # Neither delete found a version; the greatest sequence is the second, at time 0, but
    # the key's clock stands at 9.
    table = run(
        [rec("k", "d", 1, 0, ts=9), rec("k", "d", 2, 1, ts=0)],
        [rec("k", "c", 3, 2, ts=1)],
        driver=driver,
    )
    assert versions(table) == [("a", None, 9, None, True)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_clock_of_an_update_in_place_carries_to_the_next_version(driver: str) -> None:
    # Phone is untracked: LSN 2 updates in place at time 9, LSN 3 at time 2. The tracked
    # change at LSN 4 (time 3) arrives later and opens at 9, where the first version closes.
    first = [
        rec("k", "c", 1, 0, ts=1, phone="1"),
        rec("k", "u", 2, 1, ts=9, phone="2"),
        rec("k", "u", 3, 2, ts=2, phone="3"),
    ]
    table = run(first, [rec("k", "u", 4, 3, "b", ts=3, phone="3")], driver=driver)
    assert versions(table) == [("a", "3", 1, 9, False), ("b", "3", 9, None, True)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_clock_of_deletes_after_a_close_carries_to_the_next_insert(driver: str) -> None:
    # The version is closed at LSN 2; the deletes at LSN 3 (time 9) and 4 (time 0) find
    # nothing to delete. The insert at LSN 5 (time 3) opens at 9.
    first = [
        rec("k", "c", 1, 0, ts=1),
        rec("k", "d", 2, 1, ts=2),
        rec("k", "d", 3, 2, ts=9),
        rec("k", "d", 4, 3, ts=0),
    ]
    table = run(first, [rec("k", "c", 5, 4, ts=3)], driver=driver)
    assert versions(table) == [("a", None, 1, 2, False), ("a", None, 9, None, True)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_later_marker_of_a_key_without_rows_holds_its_later_clock(driver: str) -> None:
    # The delete finds nothing (a marker at its sequence, clock 0). The tombstone, alone in
    # partition 1, sorts before it with its Kafka time 62: the key is rebuilt and a second
    # marker at the same sequence holds clock 62. The insert opens at 62.
    table = run(
        [rec("k", "d", 0, 0, ts=0)],
        [rec("k", None, 0, 0, partition=1, kafka_ts=62)],
        [rec("k", "c", 0, 1, ts=1)],
        driver=driver,
    )
    assert versions(table) == [("a", None, 62, None, True)]
