"""Offset arithmetic for the Kafka source: pure functions on plain values, no Kafka, no Spark.

Offsets travel through Spark's checkpoint as JSON of the shape
``{"topic": {"<partition>": next_offset}}`` (string partition keys, the offset of the next record
to read). Inside this module they are :data:`PartitionOffsets`, a dict keyed by
``(topic, partition)``.

Everything that decides *which* offsets a micro-batch reads lives here: parsing the
``startingOffsets``/``endingOffsets`` options, resolving them against the broker's watermarks,
detecting data loss, admission control (``maxRecordsPerTrigger``) and splitting large ranges into
several Spark tasks.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from cdc.errors import ConfigError

__all__ = [
    "EARLIEST",
    "LATEST",
    "DataLoss",
    "DataLossKind",
    "OffsetJson",
    "OffsetRange",
    "PartitionOffsets",
    "StartingPosition",
    "TopicPartitionId",
    "Watermarks",
    "cap_to_target",
    "next_end_offsets",
    "offsets_from_json",
    "offsets_to_json",
    "pack_ranges",
    "parse_ending_offsets",
    "parse_starting_position",
    "partitions_needing_earliest",
    "plan_ranges",
    "ranges_between",
    "rate_limit",
    "reconcile_start",
    "resolve_ending_offsets",
    "resolve_starting_offsets",
    "split_range",
]

EARLIEST = -2
"""Sentinel in offsets JSON options: the partition's earliest available offset."""
LATEST = -1
"""Sentinel in offsets JSON options: the partition's latest offset (its high watermark)."""

TopicPartitionId = tuple[str, int]
"""``(topic, partition)``."""
PartitionOffsets = dict[TopicPartitionId, int]
"""Next offset to read per topic-partition."""
OffsetJson = dict[str, dict[str, int]]
"""The checkpointed shape: ``{topic: {"<partition>": next_offset}}``."""


@dataclass(frozen=True)
class Watermarks:
    """A partition's available offsets: records live in ``[low, high)``."""

    low: int
    high: int


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Records ``[start, end)`` of one topic-partition: the unit of work of one Spark task."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        """Number of offsets in the range (records, unless the topic has gaps)."""
        return max(0, self.end - self.start)


class DataLossKind(StrEnum):
    """Ways offsets the query expected to read can have disappeared."""

    OFFSETS_DELETED = "offsets_deleted"
    """The start offset is below the partition's earliest offset (retention deleted records)."""
    PARTITION_GONE = "partition_gone"
    """The partition (or its whole topic) no longer exists."""
    OFFSET_BEYOND_END = "offset_beyond_end"
    """The start offset is above the partition's end (topic recreated, or the broker lost data)."""
    RECORDS_MISSING = "records_missing"
    """A range planned earlier can no longer be read completely (records vanished meanwhile)."""


@dataclass(frozen=True)
class DataLoss:
    """One detected data-loss event, with where reading continues when it is tolerated."""

    topic: str
    partition: int
    kind: DataLossKind
    expected_offset: int
    available: Watermarks | None = None
    resume_offset: int | None = None

    @property
    def key(self) -> tuple[str, int, str, int]:
        """Identity used to report each event once per process."""
        return (self.topic, self.partition, self.kind.value, self.expected_offset)

    def describe(self) -> str:
        """One line naming the topic-partition and offsets involved."""
        where = f"{self.topic}/{self.partition}"
        wm = self.available
        if self.kind is DataLossKind.OFFSETS_DELETED:
            low = wm.low if wm else self.resume_offset
            return (
                f"data loss on {where}: offsets [{self.expected_offset}, {low}) were deleted"
                f" before they were read (the earliest available offset is {low})"
            )
        if self.kind is DataLossKind.PARTITION_GONE:
            return (
                f"data loss on {where}: the partition no longer exists"
                f" (the query had reached offset {self.expected_offset})"
            )
        if self.kind is DataLossKind.OFFSET_BEYOND_END:
            end = f" {wm.high}" if wm else ""
            return (
                f"data loss on {where}: the query's offset {self.expected_offset} is beyond the"
                f" end of the partition{end}; the topic was recreated or the broker lost data"
            )
        end = f"; the partition now ends at offset {wm.high}" if wm else ""
        return (
            f"data loss on {where}: records from offset {self.expected_offset} vanished before"
            f" they could be read{end}"
        )


# --------------------------------------------------------------------------------------------
# JSON shape


def offsets_to_json(offsets: Mapping[TopicPartitionId, int]) -> OffsetJson:
    """Convert to the checkpointed JSON shape, sorted by topic then partition number.

    The order matters: Spark compares offsets by their JSON text, so the same offsets must
    always serialise identically.

    Args:
        offsets: next offset per topic-partition.

    Returns:
        ``{topic: {"<partition>": offset}}``.
    """
    result: OffsetJson = {}
    for topic, partition in sorted(offsets):
        result.setdefault(topic, {})[str(partition)] = int(offsets[(topic, partition)])
    return result


def offsets_from_json(value: Any, what: str = "offsets") -> PartitionOffsets:
    """Parse the checkpointed JSON shape (already decoded) into :data:`PartitionOffsets`.

    Args:
        value: ``{topic: {"<partition>": offset}}``.
        what: name used in error messages.

    Returns:
        Next offset per topic-partition.

    Raises:
        ConfigError: ``value`` is not of that shape or holds negative offsets.
    """
    parsed = _parse_offset_mapping(value, what)
    negative = sorted(tp for tp, offset in parsed.items() if offset < 0)
    if negative:
        raise ConfigError(f"{what}: offsets must be >= 0, got {_fmt_tps(negative)}")
    return parsed


def _parse_offset_mapping(value: Any, what: str) -> PartitionOffsets:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f'{what} must be a JSON object like {{"topic": {{"0": 42}}}}, got {_short(value)}'
        )
    result: PartitionOffsets = {}
    for topic, partitions in value.items():
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"{what}: topic names must be non-empty strings, got {topic!r}")
        if not isinstance(partitions, Mapping):
            raise ConfigError(
                f'{what}: topic {topic!r} must map partitions to offsets like {{"0": 42}},'
                f" got {_short(partitions)}"
            )
        for key, offset in partitions.items():
            try:
                partition = int(key)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{what}: partition {key!r} of topic {topic!r} is not an integer"
                ) from None
            if partition < 0:
                raise ConfigError(f"{what}: partition {partition} of topic {topic!r} is negative")
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise ConfigError(
                    f"{what}: offset for {topic}/{partition} must be an integer, got {offset!r}"
                )
            result[(topic, partition)] = offset
    return result


# --------------------------------------------------------------------------------------------
# startingOffsets / startingTimestamp / endingOffsets


@dataclass(frozen=True)
class StartingPosition:
    """Where a new query starts (no checkpoint yet).

    ``kind`` is ``earliest``, ``latest``, ``specific`` (``offsets`` holds explicit offsets or the
    :data:`EARLIEST`/:data:`LATEST` sentinels) or ``timestamp`` (``timestamp_ms``).
    """

    kind: Literal["earliest", "latest", "specific", "timestamp"]
    offsets: PartitionOffsets = field(default_factory=dict)
    timestamp_ms: int | None = None


def parse_starting_position(
    starting_offsets: str | None,
    starting_timestamp: str | None,
    topics: Iterable[str],
) -> StartingPosition:
    """Parse the ``startingOffsets`` and ``startingTimestamp`` options.

    ``startingTimestamp`` takes precedence over ``startingOffsets``, as in Spark's Kafka source.

    Args:
        starting_offsets: ``earliest`` (default), ``latest`` or JSON
            ``{"topic": {"0": 23, "1": -2}}`` (-2 earliest, -1 latest).
        starting_timestamp: epoch milliseconds, applied to every partition.
        topics: subscribed topics; JSON may only name these.

    Returns:
        The parsed starting position.

    Raises:
        ConfigError: a value is malformed; the message says which option and why.
    """
    if starting_timestamp is not None and starting_timestamp.strip():
        text = starting_timestamp.strip()
        try:
            timestamp = int(text)
        except ValueError:
            raise ConfigError(
                f"startingTimestamp must be epoch milliseconds (an integer), got {text!r}"
            ) from None
        if timestamp < 0:
            raise ConfigError(f"startingTimestamp must be >= 0, got {timestamp}")
        return StartingPosition("timestamp", timestamp_ms=timestamp)
    text = (starting_offsets or "earliest").strip()
    lowered = text.lower()
    if lowered == "earliest":
        return StartingPosition("earliest")
    if lowered == "latest":
        return StartingPosition("latest")
    offsets = _parse_offsets_option("startingOffsets", text, topics)
    bad = sorted(tp for tp, offset in offsets.items() if offset < EARLIEST)
    if bad:
        raise ConfigError(
            f"startingOffsets: offsets must be >= 0, or -2 (earliest) / -1 (latest);"
            f" invalid for {_fmt_tps(bad)}"
        )
    return StartingPosition("specific", offsets=offsets)


def parse_ending_offsets(ending_offsets: str | None, topics: Iterable[str]) -> PartitionOffsets:
    """Parse the batch reader's ``endingOffsets`` option.

    Args:
        ending_offsets: ``latest`` (default) or JSON ``{"topic": {"0": 50, "1": -1}}``
            (-1 latest; -2 is not allowed for an end, as in Spark).
        topics: subscribed topics; JSON may only name these.

    Returns:
        Explicit end offsets per partition (:data:`LATEST` where latest was asked for); an empty
        dict means latest for every partition.

    Raises:
        ConfigError: a value is malformed.
    """
    text = (ending_offsets or "latest").strip()
    if text.lower() == "latest":
        return {}
    if text.lower() == "earliest":
        raise ConfigError("endingOffsets cannot be earliest; use latest or JSON offsets")
    offsets = _parse_offsets_option("endingOffsets", text, topics)
    bad = sorted(tp for tp, offset in offsets.items() if offset < LATEST)
    if bad:
        raise ConfigError(
            f"endingOffsets: offsets must be >= 0 or -1 (latest); invalid for {_fmt_tps(bad)}"
        )
    return offsets


def _parse_offsets_option(option: str, text: str, topics: Iterable[str]) -> PartitionOffsets:
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f'{option} must be earliest, latest or JSON like {{"topic": {{"0": 23, "1": -2}}}};'
            f" {text!r} is not valid JSON ({exc.msg} at position {exc.pos})"
        ) from None
    offsets = _parse_offset_mapping(decoded, option)
    subscribed = set(topics)
    unknown = sorted({topic for topic, _ in offsets} - subscribed)
    if unknown:
        raise ConfigError(
            f"{option} names topics that are not subscribed: {', '.join(unknown)}"
            f" (subscribed: {', '.join(sorted(subscribed))})"
        )
    return offsets


def resolve_starting_offsets(
    position: StartingPosition,
    watermarks: Mapping[TopicPartitionId, Watermarks],
    timestamp_offsets: Mapping[TopicPartitionId, int] | None = None,
) -> PartitionOffsets:
    """Turn a starting position into concrete offsets for the partitions that exist now.

    Partitions a JSON position does not mention start at their earliest offset, like partitions
    discovered later. Out-of-range explicit offsets are kept as given: the regular data-loss
    check of the first micro-batch reports them (see :func:`reconcile_start`).

    Args:
        position: the parsed option.
        watermarks: current watermarks of every subscribed partition.
        timestamp_offsets: for ``timestamp``: the broker's answer per partition (the earliest
            offset whose timestamp is >= the requested one, or -1 when there is none, in which
            case the partition starts at its end).

    Returns:
        The start offset per topic-partition.

    Raises:
        ConfigError: JSON names a partition that does not exist.
    """
    if position.kind == "earliest":
        return {tp: wm.low for tp, wm in watermarks.items()}
    if position.kind == "latest":
        return {tp: wm.high for tp, wm in watermarks.items()}
    if position.kind == "timestamp":
        found = timestamp_offsets or {}
        result: PartitionOffsets = {}
        for tp, wm in watermarks.items():
            offset = found.get(tp, LATEST)
            result[tp] = wm.high if offset < 0 else offset
        return result
    missing = sorted(tp for tp in position.offsets if tp not in watermarks)
    if missing:
        raise ConfigError(
            f"startingOffsets names partitions that do not exist: {_fmt_tps(missing)}"
        )
    result = {}
    for tp, wm in watermarks.items():
        offset = position.offsets.get(tp, EARLIEST)
        result[tp] = wm.low if offset == EARLIEST else wm.high if offset == LATEST else offset
    return result


def resolve_ending_offsets(
    ending: Mapping[TopicPartitionId, int],
    watermarks: Mapping[TopicPartitionId, Watermarks],
) -> PartitionOffsets:
    """Concrete end offsets for a batch read: explicit ones, else the high watermark.

    Args:
        ending: parsed ``endingOffsets`` (empty: latest everywhere).
        watermarks: current watermarks of every subscribed partition.

    Returns:
        The end offset (exclusive) per topic-partition.

    Raises:
        ConfigError: ``ending`` names a partition that does not exist.
    """
    missing = sorted(tp for tp in ending if tp not in watermarks)
    if missing:
        raise ConfigError(f"endingOffsets names partitions that do not exist: {_fmt_tps(missing)}")
    return {
        tp: wm.high if ending.get(tp, LATEST) == LATEST else ending[tp]
        for tp, wm in watermarks.items()
    }


# --------------------------------------------------------------------------------------------
# Data loss and the next micro-batch


def reconcile_start(
    start: Mapping[TopicPartitionId, int],
    watermarks: Mapping[TopicPartitionId, Watermarks],
) -> tuple[PartitionOffsets, list[DataLoss]]:
    """Compare a batch's start offsets with what the broker still has.

    Args:
        start: the micro-batch's start (the previous batch's end, or the initial offsets).
        watermarks: current watermarks of every subscribed partition.

    Returns:
        The effective start for every existing partition (new partitions at their earliest
        offset; lost offsets moved to the nearest valid one: the earliest offset when records
        were deleted or when the offset is beyond the end) and the data-loss events found.
    """
    effective: PartitionOffsets = {}
    losses: list[DataLoss] = []
    for tp, wm in watermarks.items():
        offset = start.get(tp)
        if offset is None:
            effective[tp] = wm.low
            continue
        if offset < wm.low:
            losses.append(DataLoss(*tp, DataLossKind.OFFSETS_DELETED, offset, wm, wm.low))
            offset = wm.low
        elif offset > wm.high:
            losses.append(DataLoss(*tp, DataLossKind.OFFSET_BEYOND_END, offset, wm, wm.low))
            offset = wm.low
        effective[tp] = offset
    for tp in sorted(start):
        if tp not in watermarks:
            losses.append(DataLoss(*tp, DataLossKind.PARTITION_GONE, start[tp]))
    return effective, losses


def cap_to_target(
    effective_start: Mapping[TopicPartitionId, int],
    latest: Mapping[TopicPartitionId, int],
    target: Mapping[TopicPartitionId, int],
) -> PartitionOffsets:
    """Limit latest offsets to a Trigger.AvailableNow target recorded earlier.

    Partitions unknown to the target (created after it was recorded) do not advance.

    Args:
        effective_start: the batch's effective start per partition.
        latest: current end of every partition.
        target: end offsets recorded by ``prepareForTriggerAvailableNow``.

    Returns:
        End offsets, each in ``[effective start, min(latest, target)]``.
    """
    capped: PartitionOffsets = {}
    for tp, begin in effective_start.items():
        end = min(latest.get(tp, begin), target.get(tp, begin))
        capped[tp] = max(begin, end)
    return capped


def rate_limit(
    start: Mapping[TopicPartitionId, int],
    end: Mapping[TopicPartitionId, int],
    max_records: int,
) -> PartitionOffsets:
    """Cap a micro-batch at ``max_records`` offsets, shared fairly between partitions.

    Like Spark's Kafka source, each partition's share is proportional to its backlog, but the
    cap is exact (never exceeded) and no partition with a backlog starves:

    * with at least as many records allowed as partitions with a backlog, each of them gets one
      record and the rest is split proportionally (largest remainder, in integers);
    * with fewer, one record each goes to a window of partitions that rotates with the start
      offsets, so successive batches visit every partition in turn.

    Args:
        start: first offset per partition (every key of ``end`` must be present).
        end: latest available offset per partition.
        max_records: the cap; must be >= 1.

    Returns:
        End offsets with ``start <= result <= end`` per partition and
        ``sum(result - start) == min(max_records, sum(end - start))``.

    Raises:
        ValueError: ``max_records`` < 1 or a partition of ``end`` has no start.
    """
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, got {max_records}")
    missing = [tp for tp in end if tp not in start]
    if missing:
        raise ValueError(f"no start offset for {_fmt_tps(sorted(missing))}")
    backlog = {tp: end[tp] - start[tp] for tp in sorted(end) if end[tp] > start[tp]}
    total = sum(backlog.values())
    result = dict(end)
    if total <= max_records:
        return result
    order = list(backlog)
    # Rotation makes the choice fair without state: the sum of start offsets grows by exactly
    # the records admitted, so the window start moves on every batch.
    shift = sum(start[tp] for tp in order) % len(order)
    rotated = order[shift:] + order[:shift]
    grant = dict.fromkeys(order, 0)
    if max_records < len(order):
        for tp in rotated[:max_records]:
            grant[tp] = 1
    else:
        budget = max_records - len(order)
        spare = {tp: backlog[tp] - 1 for tp in order}
        spare_total = sum(spare.values())
        remainders: dict[TopicPartitionId, int] = {}
        for tp in order:
            share, remainders[tp] = divmod(budget * spare[tp], spare_total)
            grant[tp] = 1 + share
        leftover = max_records - sum(grant.values())
        rank = {tp: i for i, tp in enumerate(rotated)}
        by_remainder = sorted(order, key=lambda tp: (-remainders[tp], rank[tp]))
        for tp in by_remainder[:leftover]:
            grant[tp] += 1
    for tp in order:
        result[tp] = start[tp] + grant[tp]
    return result


def next_end_offsets(
    start: Mapping[TopicPartitionId, int],
    watermarks: Mapping[TopicPartitionId, Watermarks],
    *,
    max_records: int | None = None,
    target: Mapping[TopicPartitionId, int] | None = None,
) -> tuple[PartitionOffsets, list[DataLoss]]:
    """Decide the end of the next micro-batch (what ``latestOffset`` returns).

    Args:
        start: the micro-batch's start offsets.
        watermarks: current watermarks of every subscribed partition.
        max_records: admission control cap (``ReadMaxRows``), or None for all available.
        target: Trigger.AvailableNow target offsets, or None.

    Returns:
        End offsets for every existing partition (partitions that are gone are left out), and
        the data-loss events found. When offsets were lost the end can be lower than the start
        of that partition; :func:`ranges_between` then reads from the earliest offset.
    """
    effective, losses = reconcile_start(start, watermarks)
    latest = {tp: wm.high for tp, wm in watermarks.items()}
    if target is not None:
        effective = {tp: off for tp, off in effective.items() if tp in target or tp in start}
        end = cap_to_target(effective, latest, target)
    else:
        end = {tp: max(effective[tp], latest[tp]) for tp in effective}
    if max_records is not None:
        end = rate_limit(effective, end, max_records)
    return end, losses


# --------------------------------------------------------------------------------------------
# Planning Spark tasks


def partitions_needing_earliest(
    start: Mapping[TopicPartitionId, int],
    end: Mapping[TopicPartitionId, int],
) -> set[TopicPartitionId]:
    """Partitions whose start :func:`ranges_between` must look up (new, or reset after loss)."""
    return {tp for tp, e in end.items() if tp not in start or e < start[tp]}


def ranges_between(
    start: Mapping[TopicPartitionId, int],
    end: Mapping[TopicPartitionId, int],
    earliest: Mapping[TopicPartitionId, int],
) -> tuple[list[OffsetRange], list[DataLoss]]:
    """Offset ranges of a micro-batch from its start and end offsets.

    Args:
        start: the batch's start offsets.
        end: the batch's end offsets.
        earliest: earliest offset of (at least) the partitions from
            :func:`partitions_needing_earliest`.

    Returns:
        Non-empty ranges sorted by topic-partition, and the data-loss events found: an end
        below its start (the broker lost data since the end was decided) reads from the
        earliest offset.
    """
    ranges: list[OffsetRange] = []
    losses: list[DataLoss] = []
    for tp in sorted(end):
        stop = end[tp]
        begin = start.get(tp)
        if begin is None:
            begin = min(earliest.get(tp, 0), stop)
        elif stop < begin:
            low = min(earliest.get(tp, 0), stop)
            losses.append(
                DataLoss(*tp, DataLossKind.OFFSET_BEYOND_END, begin, Watermarks(low, stop), low)
            )
            begin = low
        if begin < stop:
            ranges.append(OffsetRange(tp[0], tp[1], begin, stop))
    return ranges, losses


def split_range(offset_range: OffsetRange, max_records: int) -> list[OffsetRange]:
    """Split a range into near-equal consecutive pieces of at most ``max_records`` offsets.

    Args:
        offset_range: the range to split.
        max_records: largest piece; must be >= 1.

    Returns:
        Pieces covering exactly ``[start, end)`` in order, without overlap (empty for an empty
        range).

    Raises:
        ValueError: ``max_records`` < 1.
    """
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, got {max_records}")
    size = offset_range.size
    if size == 0:
        return []
    pieces = math.ceil(size / max_records)
    bounds = [offset_range.start + (size * i) // pieces for i in range(pieces + 1)]
    return [
        OffsetRange(offset_range.topic, offset_range.partition, lo, hi)
        for lo, hi in itertools.pairwise(bounds)
    ]


def plan_ranges(ranges: Iterable[OffsetRange], max_records_per_partition: int) -> list[OffsetRange]:
    """Split every range larger than ``max_records_per_partition``; keeps the input order.

    Args:
        ranges: ranges of one micro-batch.
        max_records_per_partition: largest range one Spark task reads.

    Returns:
        The ranges after splitting.
    """
    return [piece for r in ranges for piece in split_range(r, max_records_per_partition)]


def pack_ranges(
    ranges: Iterable[OffsetRange], min_records_per_task: int
) -> list[tuple[OffsetRange, ...]]:
    """Group consecutive ranges into Spark tasks of at least ``min_records_per_task`` records.

    A task costs a fixed ~0.1 s (scheduling, the Python worker round trip, a consumer) while
    fetching and decoding 10k records costs about as much; a micro-batch of a few thousand
    records spread over many partitions is read faster by one task than by one per partition.
    Ranges already at the minimum stay alone, so large batches keep one task per range.

    Args:
        ranges: the batch's ranges (after :func:`plan_ranges`), in order.
        min_records_per_task: a task takes ranges until it holds this many records; the last
            task may hold fewer.

    Returns:
        The tasks, each a non-empty tuple of ranges; every range once, in input order.
    """
    tasks: list[tuple[OffsetRange, ...]] = []
    current: list[OffsetRange] = []
    size = 0
    for offset_range in ranges:
        current.append(offset_range)
        size += offset_range.size
        if size >= min_records_per_task:
            tasks.append(tuple(current))
            current, size = [], 0
    if current:
        tasks.append(tuple(current))
    return tasks


def _fmt_tps(tps: Iterable[TopicPartitionId]) -> str:
    return ", ".join(f"{topic}/{partition}" for topic, partition in tps)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
