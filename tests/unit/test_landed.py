"""What landed, as offset ranges: the pure arithmetic of :mod:`cdc.core.ranges`."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from cdc.core.ranges import (
    count_in,
    first_gap,
    landed_mask,
    merge_ranges,
    ranges_from_json,
    ranges_to_json,
)


def test_merge_joins_touching_and_overlapping_spans_per_partition() -> None:
    spans = [(0, 5, 9), (0, 0, 3), (0, 3, 4), (1, 2, 2), (0, 8, 12), (1, 7, 8)]
    assert merge_ranges(spans) == {0: [(0, 4), (5, 12)], 1: [(7, 8)]}


def test_count_first_gap_and_mask() -> None:
    ranges = {0: [(0, 4), (5, 12)]}
    assert count_in(ranges, 0, 2, 7) == 4  # 2, 3, 5, 6
    assert count_in(ranges, 1, 0, 100) == 0
    assert first_gap(ranges, 0, 0) == 4
    assert first_gap(ranges, 0, 5) == 12
    assert first_gap(ranges, 0, 20) == 20
    assert first_gap(ranges, 3, 7) == 7
    assert landed_mask([0, 0, 0, 1, 0], [3, 4, 11, 3, 12], ranges) == [
        True,
        False,
        True,
        False,
        False,
    ]


def test_json_round_trip() -> None:
    ranges = {0: [(0, 4), (5, 12)], 3: [(1, 2)]}
    assert ranges_to_json(ranges) == {"0": [[0, 4], [5, 12]], "3": [[1, 2]]}
    assert ranges_from_json(ranges_to_json(ranges)) == ranges
    assert ranges_from_json(None) == {}


offsets = st.sets(st.tuples(st.integers(0, 2), st.integers(0, 60)), max_size=80)


@given(offsets, st.integers(0, 2), st.integers(0, 70), st.integers(0, 70))
def test_ranges_hold_exactly_the_offsets_they_were_built_from(
    held: set[tuple[int, int]], partition: int, a: int, b: int
) -> None:
    ranges = merge_ranges((p, o, o + 1) for p, o in held)
    start, end = min(a, b), max(a, b)
    assert count_in(ranges, partition, start, end) == sum(
        1 for p, o in held if p == partition and start <= o < end
    )
    probe = [(p, o) for p in range(3) for o in range(62)]
    assert landed_mask([p for p, _ in probe], [o for _, o in probe], ranges) == [
        x in held for x in probe
    ]
    gap = first_gap(ranges, partition, start)
    assert (partition, gap) not in held
    assert all((partition, o) in held for o in range(start, gap))
    for spans in ranges.values():  # sorted, disjoint and not touching
        assert all(hi < lo for (_, hi), (lo, _) in pairwise(spans))
