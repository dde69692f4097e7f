"""Hypothesis properties of the pure SCD2 function."""

from __future__ import annotations

import itertools
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.scd2_events import SPEC, apply_all, changes, ev
from tests.support.scd2_one_pass import scd2_from_events

_event = st.builds(
    lambda key, ts, off, op, email, phone: ev(key, ts, op=op, offset=off, email=email, phone=phone),
    key=st.sampled_from(["c1", "c2", "c3"]),
    ts=st.integers(0, 20),
    off=st.integers(0, 5),
    op=st.sampled_from(["U", "U", "U", "D"]),
    email=st.sampled_from(["a", "b"]),
    phone=st.sampled_from(["1", "2", None]),
)


def _sorted_unique(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, int, int], dict[str, Any]] = {}
    for e in events:
        seen.setdefault((e["contact_id"], e["_ts"], e["_offset"]), e)
    return [seen[k] for k in sorted(seen, key=lambda k: (k[1], 0, k[2]))]


@settings(max_examples=150, deadline=None)
@given(events=st.lists(_event, max_size=25), cuts=st.lists(st.integers(0, 25), max_size=5))
def test_in_order_stream_any_batch_split_equals_one_pass(
    events: list[dict[str, Any]], cuts: list[int]
) -> None:
    ordered = _sorted_unique(events)
    bounds = sorted({0, len(ordered), *[min(c, len(ordered)) for c in cuts]})
    batches = [changes(*ordered[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    expected = scd2_from_events(changes(*ordered), SPEC) if ordered else None
    table = apply_all(*batches)
    if expected is None:
        assert table.height == 0
    else:
        assert table.equals(expected)


@settings(max_examples=150, deadline=None)
@given(events=st.lists(_event, max_size=25), data=st.data())
def test_duplicates_in_any_position_are_no_ops(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    ordered = _sorted_unique(events)
    if not ordered:
        return
    dupes = data.draw(st.lists(st.sampled_from(ordered), max_size=5))
    once = apply_all(changes(*ordered))
    with_dupes = apply_all(changes(*ordered), changes(*dupes)) if dupes else once
    assert with_dupes.equals(once)
    assert pl.concat([changes(*ordered), changes(*ordered)]).height == 2 * len(ordered)
