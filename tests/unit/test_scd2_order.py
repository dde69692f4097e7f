"""Order insensitivity (docs/scd2.md): any arrival order and batch split give the one-pass table.

A *log* is a permutation of a key set's change events (Kafka order need not follow the source's
commit order); offsets follow the log. Batches are contiguous slices of the log, applied one
after another with the history the pipeline keeps (bronze: everything received so far).
"""

from __future__ import annotations

import itertools
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.scd2 import (
    Scd2Result,
    apply_scd2,
    empty_dimension,
    empty_orphans,
    encode_sequence,
    scd2_from_events,
)
from tests.unit.test_scd2 import SCHEMA, SPEC

IDENTITY = ["contact_id", "_seq_open"]
KAFKA_CLOCK = 10_000_000  # tombstones carry only a Kafka timestamp: another clock


def frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    schema = {
        **SCHEMA,
        "_op": pl.String,
        "_ts": pl.Int64,
        "_offset": pl.Int64,
        "_tombstone": pl.Boolean,
    }
    df = pl.DataFrame(records, schema=schema)
    return df.with_columns(
        _seq=encode_sequence(pl.col("_ts"), pl.lit(0), pl.col("_offset")),
        _source_topic=pl.lit("crm.contacts"),
    ).drop("_ts", "_offset")


class Dimension:
    """The table plus the orphan state the sink keeps beside it."""

    def __init__(self) -> None:
        self.table = empty_dimension(SPEC, SCHEMA)
        self.seen = empty_orphans(SPEC, SCHEMA)

    def apply(self, batch: pl.DataFrame, history: pl.DataFrame | None) -> None:
        result: Scd2Result = apply_scd2(self.table, batch, SPEC, history=history, seen=self.seen)
        table = self.table.join(result.deletes, on=IDENTITY, how="anti")
        table = table.join(result.upserts.select(IDENTITY), on=IDENTITY, how="anti")
        self.table = pl.concat([table, result.upserts], how="vertical_relaxed").sort(IDENTITY)
        assert result.orphans is not None
        self.seen = pl.concat([self.seen, result.orphans], how="vertical_relaxed")


_change = st.fixed_dictionaries(
    {
        "contact_id": st.sampled_from(["c1", "c2", "c3"]),
        "kind": st.sampled_from(["U", "U", "U", "D", "T"]),
        "ts": st.integers(0, 12),  # small range: equal timestamps are common
        "email": st.sampled_from(["a", "b"]),
        "phone": st.sampled_from(["1", "2", None]),
    }
)


def to_log(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kafka records in log order: offsets follow the list; tombstones get a Kafka time."""
    log = []
    for offset, c in enumerate(changes):
        tomb = c["kind"] == "T"
        log.append(
            {
                "contact_id": c["contact_id"],
                "email": None if c["kind"] != "U" else c["email"],
                "last_name": None if c["kind"] != "U" else "Doe",
                "phone": None if c["kind"] != "U" else c["phone"],
                "_op": "U" if c["kind"] == "U" else "D",
                "_ts": KAFKA_CLOCK + offset if tomb else c["ts"],
                "_offset": offset,
                "_tombstone": tomb,
            }
        )
    return log


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
