"""Order insensitivity (docs/scd2.md): any arrival order and batch split give the one-pass table.

A *log* is a permutation of a key set's change events (Kafka order need not follow the source's
commit order); offsets follow the log. Batches are contiguous slices of the log, applied one
after another with the history the pipeline keeps (bronze: everything received so far).
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.core.scd2 import empty_dimension
from tests.support.scd2_events import IDENTITY, SCHEMA, SPEC, Dimension, frame, to_log
from tests.support.scd2_one_pass import scd2_from_events

_change = st.fixed_dictionaries(
    {
        "contact_id": st.sampled_from(["c1", "c2", "c3"]),
        "kind": st.sampled_from(["U", "U", "U", "D", "T"]),
        "ts": st.integers(0, 12),  # small range: equal timestamps are common
        "email": st.sampled_from(["a", "b"]),
        "phone": st.sampled_from(["1", "2", None]),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.lists(_change, max_size=30),
    data=st.data(),
)
def test_any_log_order_and_batch_split_equals_one_sorted_pass(
    changes: list[dict[str, Any]], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(changes))
    # A producer re-sending changes (at-least-once): copies appended later in the log.
    resent = data.draw(st.lists(st.sampled_from(order), max_size=3)) if order else []
    log = to_log(order + resent)
    cuts = data.draw(st.lists(st.integers(0, len(log)), max_size=6))
    bounds = sorted({0, len(log), *cuts})
    # Re-deliveries: some records arrive again in a later batch (same offset: same record).
    redeliver = data.draw(st.lists(st.integers(0, max(len(log) - 1, 0)), max_size=4)) if log else []

    dim = Dimension()
    received: list[dict[str, Any]] = []
    for a, b in itertools.pairwise(bounds):
        batch = log[a:b] + [log[i] for i in redeliver if i < a]
        if not batch:
            continue
        received += batch
        dim.apply(frame(batch), history=frame(received))
    table = dim.table

    expected = scd2_from_events(frame(log), SPEC) if log else empty_dimension(SPEC, SCHEMA)
    assert table.sort(IDENTITY).equals(expected.sort(IDENTITY).select(table.columns))


@settings(max_examples=200, deadline=None)
@given(changes=st.lists(_change, max_size=25), data=st.data())
def test_in_order_keys_never_need_history(
    changes: list[dict[str, Any]], data: st.DataObject
) -> None:
    """A log sorted by sequence, without tombstones, is exact with no history at all."""
    ordered = sorted((c for c in changes if c["kind"] != "T"), key=lambda c: c["ts"])
    log = to_log(ordered)
    cuts = data.draw(st.lists(st.integers(0, len(log)), max_size=5))
    bounds = sorted({0, len(log), *cuts})
    dim = Dimension()
    for a, b in itertools.pairwise(bounds):
        if b > a:
            dim.apply(frame(log[a:b]), history=None)
    table = dim.table
    expected = scd2_from_events(frame(log), SPEC) if log else empty_dimension(SPEC, SCHEMA)
    assert table.sort(IDENTITY).equals(expected.sort(IDENTITY).select(table.columns))
