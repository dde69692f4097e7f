"""A log refilled under the same topic id, told by the landed records (:mod:`cdc.pipeline.refill`).

Real Delta tables (bronze and quarantine rows with their Kafka timestamp and raw bytes), a
fake broker that holds given records at given offsets.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake
from hypothesis import given
from hypothesis import strategies as st

from cdc.config.lake import table_paths
from cdc.config.settings import Settings
from cdc.core.offsets import TopicPartitionId, Watermarks
from cdc.pipeline.refill import PROBE_WINDOW, Refill, clip_refilled, find_refills, first_gone
from cdc.runtime.kafka_admin import FetchedRecord, KafkaMetadata
from tests.support.local_settings import local_settings

T = "crm.contacts"
NAME = "crm_contacts"
TOPIC_ID = "7Jx1eT3mQ9ahc9b5Y3pZnA"
T0 = 1_767_600_000_000
"""Epoch ms of the first landed record."""


def _settings(tmp_path: Path) -> Settings:
    return local_settings(tmp_path)


def _record(partition: int, offset: int, epoch: int = 0) -> FetchedRecord:
    """The record of one incarnation of the log (``epoch``) at an offset."""
    ms = T0 + 1000 * offset + 7 * epoch
    return FetchedRecord(offset, ms, f"k{partition}".encode(), f"v{offset}.{epoch}".encode())


def _at(record: FetchedRecord) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=record.timestamp_ms or 0)


def _land(settings: Settings, role: str, records: Mapping[int, list[FetchedRecord]]) -> None:
    uri = table_paths(settings, settings.pipeline(NAME))[role]
    rows = [(p, r) for p, rs in records.items() for r in rs]
    write_deltalake(
        uri,
        pa.table(
            {
                "topic": [T] * len(rows),
                "partition": pa.array([p for p, _ in rows], pa.int32()),
                "offset": pa.array([r.offset for _, r in rows], pa.int64()),
                "timestamp": pa.array([_at(r) for _, r in rows], pa.timestamp("us", tz="UTC")),
                "key_raw": pa.array([r.key for _, r in rows], pa.binary()),
                "value_raw": pa.array([r.value for _, r in rows], pa.binary()),
                "_topic_id": pa.array([TOPIC_ID] * len(rows), pa.string()),
            }
        ),
        mode="append",
    )


class _Broker:
    """What the broker holds now, per partition and offset; counts the reads."""

    def __init__(self, held: Mapping[int, Mapping[int, FetchedRecord]]) -> None:
        self.held = held
        self.reads = 0

    def records(
        self, spans: Mapping[TopicPartitionId, tuple[int, int]]
    ) -> dict[TopicPartitionId, dict[int, FetchedRecord]]:
        self.reads += 1
        return {
            (t, p): {o: r for o, r in self.held.get(p, {}).items() if lo <= o < hi}
            for (t, p), (lo, hi) in spans.items()
        }


def _find(
    settings: Settings,
    broker: _Broker,
    below: dict[int, int],
    marks: dict[int, Watermarks] | None = None,
) -> list[Refill]:
    marks = marks or {p: Watermarks(0, 1000) for p in below}
    meta: KafkaMetadata = broker  # type: ignore[assignment]
    return find_refills(settings, NAME, TOPIC_ID, below, marks, legacy_rows=True, metadata=meta)


def test_the_same_records_are_no_refill(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    landed = {0: [_record(0, o) for o in range(40)], 1: [_record(1, o) for o in range(3)]}
    _land(settings, "bronze", {0: landed[0][:30], 1: landed[1]})
    _land(settings, "quarantine", {0: landed[0][30:]})  # a record is in one of the two
    broker = _Broker({p: {r.offset: r for r in rs} for p, rs in landed.items()})
    assert _find(settings, broker, {0: 40, 1: 3, 2: 0}) == []
    assert broker.reads == 1  # one read of the last records of each partition


def test_a_refill_in_the_compared_window_starts_after_the_last_record_still_held(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    _land(settings, "bronze", {0: [_record(0, o) for o in range(40)]})
    # The log lost offsets 30.. and new records took them (and went on to 50).
    now = {o: _record(0, o, epoch=0 if o < 30 else 1) for o in range(50)}
    refills = _find(settings, _Broker({0: now}), {0: 40})
    assert refills == [Refill(T, 0, 30, 30, T0 + 30_000, T0 + 30_007)]
    assert refills[0].describe() == (
        "crm.contacts/0 offset 30 holds a record of 2026-01-05T08:00:30.007Z where bronze or"
        " quarantine landed one of 2026-01-05T08:00:30.000Z"
    )


def test_a_refill_below_the_window_is_found_by_a_binary_search(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _land(settings, "bronze", {0: [_record(0, o) for o in range(200)]})
    now = {o: _record(0, o, epoch=0 if o < 57 else 1) for o in range(230)}
    broker = _Broker({0: now})
    [refill] = _find(settings, broker, {0: 200})
    assert (refill.start, refill.offset) == (57, 200 - PROBE_WINDOW)
    assert broker.reads <= 2 + 8  # the window, then log2(184) probes


def test_offsets_with_no_record_now_prove_nothing(tmp_path: Path) -> None:
    """Compacted away, or a transaction marker: no record at a landed offset is no refill."""
    settings = _settings(tmp_path)
    _land(settings, "bronze", {0: [_record(0, o) for o in range(20)]})
    now = {o: _record(0, o) for o in range(20) if o % 3}
    assert _find(settings, _Broker({0: now}), {0: 20}) == []


def test_offsets_below_the_earliest_are_not_compared(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _land(settings, "bronze", {0: [_record(0, o) for o in range(20)]})
    now = {o: _record(0, o, epoch=1) for o in range(25, 30)}  # retention deleted 0..24
    broker = _Broker({0: now})
    assert _find(settings, broker, {0: 20}, {0: Watermarks(25, 30)}) == []
    assert broker.reads == 0


def test_the_last_landed_records_far_below_the_position_are_compared(tmp_path: Path) -> None:
    """Nothing landed in the last window below the position (e.g. aborted transactions):
    the highest landed offsets are compared instead."""
    settings = _settings(tmp_path)
    _land(settings, "bronze", {0: [_record(0, o) for o in range(10)]})
    now = {o: _record(0, o, epoch=0 if o < 5 else 1) for o in range(60)}
    [refill] = _find(settings, _Broker({0: now}), {0: 60})
    assert (refill.start, refill.offset) == (5, 5)


def test_tables_without_the_record_columns_are_not_compared(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    uri = table_paths(settings, settings.pipeline(NAME))["bronze"]
    write_deltalake(uri, pa.table({"topic": [T], "partition": [0], "offset": [0]}))
    broker = _Broker({0: {0: _record(0, 0, epoch=1)}})
    assert _find(settings, broker, {0: 1}) == []
    assert broker.reads == 0


def test_clip_takes_the_refilled_offsets_out_of_the_landed_ranges() -> None:
    ranges = {0: [(0, 10), (12, 40)], 1: [(0, 5)], 2: [(50, 60)]}
    refills = [Refill(T, 0, 20, 25, None, None), Refill(T, 2, 50, 50, None, None)]
    assert clip_refilled(ranges, refills) == {0: [(0, 10), (12, 20)], 1: [(0, 5)]}


@given(st.integers(0, 60), st.integers(0, 60))
def test_first_gone_finds_the_first_index_no_longer_held(count: int, cut: int) -> None:
    asked: list[int] = []

    def still_there(i: int) -> bool:
        asked.append(i)
        return i < cut

    assert first_gone(count, still_there) == min(cut, count)
    assert len(asked) <= max(1, count).bit_length()
