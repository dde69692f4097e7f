"""Whether the topic still holds the records the tables landed from it: a log refilled under
the same topic id.

A partition can lose its tail and grow again under the same topic id (a broker restored from
an older disk, an unclean leader election, then new records): the new records take the
offsets of the lost ones. Offsets cannot tell them apart, so neither can Spark's Kafka source
(the checkpoint's position lies within the partition again) nor the landed ranges of
:mod:`cdc.pipeline.landed` (which would take the new records for landed ones). The records can:
bronze and quarantine keep every record's Kafka timestamp and raw key and value bytes, and a landed
record is still in the topic when the broker holds, at its offset, a record with the same
timestamp and bytes.

:func:`find_refills` compares, per partition, the last records the tables hold below a
position (the checkpoint's, or the partition's end) with what the broker holds at those
offsets. Only a *different* record at a landed offset counts: an offset with no record now
(compacted away, a transaction marker) proves nothing. Where a partition was refilled, it
finds the first landed offset the broker no longer holds (a log loses a tail, so the records
below it are the landed ones), and :func:`clip_refilled` takes the offsets from there out of
the landed ranges: a replay then lands the new records.

What it costs when nothing was refilled: per table (bronze, quarantine) one query over the
rows of the last :data:`PROBE_WINDOW` offsets below each partition's position (files pruned
by their offset statistics: the query reads the few newest files), and one read of at most
:data:`PROBE_WINDOW` records per partition from the broker. A partition whose last
:data:`PROBE_WINDOW` offsets hold no landed row takes one more query (the highest landed
offset below the position: a scan of two columns). Finding where a refill starts reads one
landed row and one record per step of a binary search over the landed offsets.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cdc.config.settings import Settings
from cdc.core.ranges import Ranges
from cdc.pipeline.landed import landed_ranges, query_landed
from cdc.runtime.kafka_admin import KafkaMetadata

if TYPE_CHECKING:
    from cdc.core.offsets import Watermarks
    from cdc.runtime.kafka_admin import FetchedRecord

__all__ = [
    "PROBE_WINDOW",
    "Refill",
    "clip_refilled",
    "find_refills",
    "first_gone",
    "topic_landed_ranges",
]

PROBE_WINDOW = 16
"""Landed offsets compared per partition, below its position."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Print = tuple[int | None, bytes | None, bytes | None]
"""What identifies a record at its offset: Kafka timestamp (ms), raw key, raw value."""

_PRINT = ("timestamp", "key_raw", "value_raw")
"""The bronze and quarantine columns a :data:`Print` is read from."""


@dataclass(frozen=True)
class Refill:
    """A partition whose log lost landed records and holds other records at their offsets."""

    topic: str
    partition: int
    start: int
    """The first landed offset whose record the broker no longer holds."""
    offset: int
    """An offset where the broker now holds another record than the landed one."""
    landed_ms: int | None
    """The landed record's Kafka timestamp there."""
    now_ms: int | None
    """The broker's record's timestamp there."""

    def describe(self) -> str:
        """``topic/p offset N holds a record of <time> where the tables landed one of <time>``."""
        landed, now = _iso(self.landed_ms), _iso(self.now_ms)
        what = f"a record of {now}" if now != landed else f"another record (also of {now})"
        return (
            f"{self.topic}/{self.partition} offset {self.offset} holds {what} where bronze or"
            f" quarantine landed one of {landed}"
        )


def _iso(ms: int | None) -> str:
    if ms is None:
        return "no timestamp"
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip_refilled(ranges: Ranges, refills: Sequence[Refill]) -> Ranges:
    """The landed ranges without the offsets from each refill's start on (pure).

    Args:
        ranges: landed ranges (see :mod:`cdc.pipeline.landed`).
        refills: what :func:`find_refills` found.

    Returns:
        New ranges; partitions without a refill unchanged.
    """
    starts = {r.partition: r.start for r in refills}
    clipped: Ranges = {}
    for partition, spans in ranges.items():
        cut = starts.get(partition)
        kept = spans if cut is None else [(lo, min(hi, cut)) for lo, hi in spans if lo < cut]
        if kept:
            clipped[partition] = kept
    return clipped


def first_gone(count: int, still_there: Callable[[int], bool]) -> int:
    """The first index whose landed record the broker no longer holds (a binary search; pure).

    A log that lost a tail still holds everything before it: ``still_there`` is True up to
    some index and False from there on.

    Args:
        count: how many candidates (indexes ``0 .. count - 1``).
        still_there: whether the candidate at an index is still held.

    Returns:
        That index (``count``: all are still held).
    """
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi) // 2
        if still_there(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


def topic_landed_ranges(
    settings: Settings,
    name: str,
    topic_id: str | None,
    watermarks: Mapping[int, Watermarks],
    *,
    legacy_rows: bool,
    metadata: KafkaMetadata | None = None,
) -> tuple[Ranges, list[Refill]]:
    """The landed ranges whose records the topic still holds, and the refills cut from them.

    Args:
        settings: service settings.
        name: the pipeline.
        topic_id: the topic's id now (as :func:`cdc.pipeline.landed.landed_ranges`).
        watermarks: per partition, its watermarks now (the check compares below each end).
        legacy_rows: as :func:`cdc.pipeline.landed.landed_ranges`.
        metadata: broker client (default: one from ``settings``).

    Returns:
        The ranges (not clipped at the partitions' ends) and the refills found.
    """
    ranges = landed_ranges(settings, name, topic_id, legacy_rows=legacy_rows)
    below = {p: wm.high for p, wm in watermarks.items()}
    refills = find_refills(
        settings,
        name,
        topic_id,
        below,
        watermarks,
        legacy_rows=legacy_rows,
        metadata=metadata,
        ranges=ranges,
    )
    return clip_refilled(ranges, refills), refills


def find_refills(
    settings: Settings,
    name: str,
    topic_id: str | None,
    below: Mapping[int, int],
    watermarks: Mapping[int, Watermarks],
    *,
    legacy_rows: bool,
    metadata: KafkaMetadata | None = None,
    ranges: Ranges | None = None,
) -> list[Refill]:
    """Partitions whose landed records below a position are no longer the topic's.

    Args:
        settings: service settings.
        name: the pipeline.
        topic_id: the topic's id now (whose rows count, as
            :func:`cdc.pipeline.landed.landed_ranges`).
        below: per partition, the position to look below (the checkpoint's next offset, or
            the partition's end).
        watermarks: per partition, its watermarks now (offsets below ``low`` cannot be
            compared and are left alone).
        legacy_rows: as :func:`cdc.pipeline.landed.landed_ranges`.
        metadata: broker client (default: one from ``settings``).
        ranges: the landed ranges, when already read (needed only to find where a refill
            starts below the compared window).

    Returns:
        One :class:`Refill` per refilled partition, by partition.

    Raises:
        BrokerUnavailableError: the broker did not answer.
    """
    topic = settings.pipeline(name).topic
    windows = {
        p: (max(watermarks[p].low, position - PROBE_WINDOW), position)
        for p, position in below.items()
        if p in watermarks and position > watermarks[p].low
    }
    landed = _landed_prints(settings, name, topic_id, windows, legacy_rows)
    bare = {p: (watermarks[p].low, windows[p][1]) for p in windows if p not in landed}
    if bare:  # nothing landed right below the position: compare the last landed offsets
        tops = _highest_landed(settings, name, topic_id, bare, legacy_rows)
        deeper = {p: (max(bare[p][0], top - PROBE_WINDOW + 1), top + 1) for p, top in tops.items()}
        landed.update(_landed_prints(settings, name, topic_id, deeper, legacy_rows))
    if not landed:
        return []

    meta = KafkaMetadata.for_settings(settings.kafka) if metadata is None else metadata
    try:
        held = meta.records({(topic, p): (min(rows), max(rows) + 1) for p, rows in landed.items()})
        refills: list[Refill] = []
        for p in sorted(landed):
            rows, now = landed[p], held.get((topic, p), {})
            verdicts = [(o, _verdict(rows[o], now.get(o))) for o in sorted(rows)]
            different = [o for o, v in verdicts if v is False]
            if not different:
                continue
            first = different[0]
            same_before = [o for o, v in verdicts if v is True and o < first]
            if same_before:
                # Offsets between the last record still held and the first other one hold no
                # record now: taken as lost (landing them again beats losing them).
                start = min(o for o in rows if o > same_before[-1])
            else:
                if ranges is None:
                    ranges = landed_ranges(settings, name, topic_id, legacy_rows=legacy_rows)
                probe = _Probe(settings, name, topic_id, legacy_rows, meta)
                start = probe.search_start(p, ranges, watermarks[p].low, min(rows))
            record = now[first]
            refills.append(Refill(topic, p, start, first, rows[first][0][0], record.timestamp_ms))
        return refills
    finally:
        if metadata is None:
            meta.close()


def _verdict(landed: list[Print], now: FetchedRecord | None) -> bool | None:
    """True: the broker holds a landed record at its offset; False: another record; None:
    no record there now (compacted away, or a transaction marker): nothing proven."""
    if now is None:
        return None
    return (now.timestamp_ms, now.key, now.value) in landed


@dataclass(frozen=True)
class _Probe:
    """Compares single landed offsets with the broker (the steps of a binary search)."""

    settings: Settings
    name: str
    topic_id: str | None
    legacy_rows: bool
    meta: KafkaMetadata

    def still_there(self, partition: int, offset: int) -> bool:
        """Whether the broker holds the landed record at ``offset``. No record there now
        proves nothing either way: taken as lost, as in the compared window."""
        window = {partition: (offset, offset + 1)}
        rows = _landed_prints(self.settings, self.name, self.topic_id, window, self.legacy_rows)
        held = rows.get(partition, {})
        topic = self.settings.pipeline(self.name).topic
        record = self.meta.records({(topic, partition): (offset, offset + 1)})[(topic, partition)]
        return offset in held and _verdict(held[offset], record.get(offset)) is True

    def search_start(self, partition: int, ranges: Ranges, low: int, window_start: int) -> int:
        """The first landed offset below ``window_start`` (whose records all differ) whose
        record the broker no longer holds (``window_start`` when it holds all below)."""
        spans = [
            (max(lo, low), min(hi, window_start))
            for lo, hi in ranges.get(partition, [])
            if hi > low and lo < window_start
        ]
        offsets = _Offsets(spans)
        index = first_gone(len(offsets), lambda i: self.still_there(partition, offsets[i]))
        return offsets[index] if index < len(offsets) else window_start


class _Offsets:
    """The offsets of sorted disjoint half-open spans, indexable without listing them."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self._spans = [(lo, hi) for lo, hi in spans if hi > lo]
        self._before: list[int] = []
        total = 0
        for lo, hi in self._spans:
            self._before.append(total)
            total += hi - lo
        self._count = total

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> int:
        i = bisect.bisect_right(self._before, index) - 1
        return self._spans[i][0] + index - self._before[i]


def _windows_sql(windows: Mapping[int, tuple[int, int]]) -> str:
    return " OR ".join(
        f'("partition" = {int(p)} AND "offset" >= {int(lo)} AND "offset" < {int(hi)})'
        for p, (lo, hi) in sorted(windows.items())
    )


def _landed_prints(
    settings: Settings,
    name: str,
    topic_id: str | None,
    windows: Mapping[int, tuple[int, int]],
    legacy_rows: bool,
) -> dict[int, dict[int, list[Print]]]:
    """Per partition and offset, the records bronze and quarantine hold in the windows."""
    if not windows:
        return {}
    sql = (
        'SELECT "partition" AS p, "offset" AS o, "timestamp" AS ts, key_raw AS k,'
        f" value_raw AS v FROM t WHERE {{where}} AND ({_windows_sql(windows)})"
    )
    found: dict[int, dict[int, list[Print]]] = {}
    tables = query_landed(settings, name, topic_id, sql, legacy_rows=legacy_rows, needs=_PRINT)
    for rows in tables:
        for r in rows.to_pylist():
            ms = _epoch_ms(r["ts"])
            prints = found.setdefault(int(r["p"]), {}).setdefault(int(r["o"]), [])
            prints.append((ms, _bytes(r["k"]), _bytes(r["v"])))
    return found


def _epoch_ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # a timestamp column without a zone holds UTC
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _bytes(value: object) -> bytes | None:
    return None if value is None else bytes(value)  # type: ignore[call-overload]


def _highest_landed(
    settings: Settings,
    name: str,
    topic_id: str | None,
    windows: Mapping[int, tuple[int, int]],
    legacy_rows: bool,
) -> dict[int, int]:
    """Per partition, the highest offset bronze or quarantine hold in the window."""
    sql = (
        'SELECT "partition" AS p, max("offset") AS o FROM t'
        f' WHERE {{where}} AND ({_windows_sql(windows)}) GROUP BY "partition"'
    )
    tops: dict[int, int] = {}
    for rows in query_landed(settings, name, topic_id, sql, legacy_rows=legacy_rows, needs=_PRINT):
        for r in rows.to_pylist():
            tops[int(r["p"])] = max(tops.get(int(r["p"]), -1), int(r["o"]))
    return tops
