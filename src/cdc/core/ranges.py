"""Offset ranges: what a pipeline's bronze and quarantine hold, as data. Pure.

Every bronze and quarantine row carries its Kafka coordinates and the id of the topic
incarnation it was read from (:data:`TOPIC_ID_COLUMN`). What landed is kept as
:data:`Ranges`: per partition, the sorted, disjoint, half-open offset ranges present in bronze
or quarantine for one topic id; the ranges of an unbroken stream collapse to one range per
partition. :mod:`cdc.pipeline.landed` reads them from the tables; this module only computes
with them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "TOPIC_ID_COLUMN",
    "Ranges",
    "count_in",
    "first_gap",
    "landed_mask",
    "merge_ranges",
    "ranges_from_json",
    "ranges_to_json",
]

TOPIC_ID_COLUMN = "_topic_id"
"""Bronze and quarantine column: the Kafka topic id of the incarnation the row was read from
(null in rows written before the column existed)."""

Ranges = dict[int, list[tuple[int, int]]]
"""Per partition, sorted disjoint half-open ``[start, end)`` offset ranges."""


def merge_ranges(spans: Iterable[tuple[int, int, int]]) -> Ranges:
    """Union ``(partition, start, end)`` spans into :data:`Ranges` (touching spans join)."""
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for partition, start, end in spans:
        if end > start:
            by_partition.setdefault(int(partition), []).append((int(start), int(end)))
    merged: Ranges = {}
    for partition in sorted(by_partition):
        out: list[tuple[int, int]] = []
        for start, end in sorted(by_partition[partition]):
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        merged[partition] = out
    return merged


def count_in(ranges: Ranges, partition: int, start: int, end: int) -> int:
    """How many offsets of ``[start, end)`` on ``partition`` the ranges hold."""
    return sum(
        max(0, min(hi, end) - max(lo, start)) for lo, hi in ranges.get(partition, []) if hi > start
    )


def first_gap(ranges: Ranges, partition: int, low: int) -> int:
    """The first offset at or after ``low`` that the ranges do not hold on ``partition``."""
    offset = low
    for lo, hi in ranges.get(partition, []):
        if lo > offset:
            break
        offset = max(offset, hi)
    return offset


def landed_mask(partitions: Iterable[int], offsets: Iterable[int], ranges: Ranges) -> list[bool]:
    """Per row, whether its ``(partition, offset)`` lies in the ranges."""
    starts = {p: [lo for lo, _ in spans] for p, spans in ranges.items()}
    out: list[bool] = []
    for partition, offset in zip(partitions, offsets, strict=True):
        spans = ranges.get(int(partition))
        if not spans:
            out.append(False)
            continue
        i = bisect.bisect_right(starts[int(partition)], int(offset)) - 1
        out.append(i >= 0 and int(offset) < spans[i][1])
    return out


def ranges_to_json(ranges: Ranges) -> dict[str, list[list[int]]]:
    """``{"<partition>": [[start, end], ...]}`` (for the replay start file)."""
    return {str(p): [[lo, hi] for lo, hi in spans] for p, spans in sorted(ranges.items())}


def ranges_from_json(value: Mapping[str, Any] | None) -> Ranges:
    """Inverse of :func:`ranges_to_json` (None or empty: nothing landed)."""
    return merge_ranges(
        (int(p), int(lo), int(hi)) for p, spans in (value or {}).items() for lo, hi in spans
    )
