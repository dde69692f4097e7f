"""Kafka offsets as plain values: the checkpointed JSON shape and its parsing. Pure.

Offsets travel through Spark's checkpoint (the Kafka source's ``offsets/<batch>`` entries) and
the replay start file as JSON of the shape ``{"topic": {"<partition>": next_offset}}`` (string
partition keys, the offset of the next record to read). Inside the service they are
:data:`PartitionOffsets`, a dict keyed by ``(topic, partition)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cdc.errors import ConfigError

__all__ = [
    "EARLIEST",
    "LATEST",
    "OffsetJson",
    "PartitionOffsets",
    "TopicPartitionId",
    "Watermarks",
    "offsets_from_json",
    "offsets_to_json",
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


def _fmt_tps(tps: Iterable[TopicPartitionId]) -> str:
    return ", ".join(f"{topic}/{partition}" for topic, partition in tps)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
