"""The SCD2 dimension a whole change log gives in one pass: the order tests' reference.

The property of docs/scd2.md ("for any permutation of a key's events and any split into
micro-batches, the table equals the SCD2 computed in one pass over the events sorted by
sequence") compares the incremental path with this: every event of the log folded at once
onto an empty table by the service's own :func:`cdc.core.scd2.apply_scd2`. It shares the fold
with the path under test, so it shows order and batching do not matter, not that the fold
is right: ``scd2_oracle`` (written from the document alone) does that.
"""

from __future__ import annotations

import polars as pl

from cdc.core.scd2 import Scd2Spec, apply_scd2, empty_dimension

__all__ = ["scd2_from_events"]


def scd2_from_events(events: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """The dimension of ``events`` (any order) in one pass, sorted by key and opening sequence.

    Args:
        events: change events as :func:`cdc.core.scd2.apply_scd2` takes them (key and business
            columns, ``_op``, ``_seq``, ``_source_topic``, optionally ``_tombstone``).
        spec: keys, business columns and tracked columns.

    Returns:
        Every row of the dimension (layout of :attr:`cdc.core.scd2.Scd2Spec.row_columns` plus
        ``_seq_max``).
    """
    schema = {c: events.schema[c] for c in (*spec.keys, *spec.columns)}
    result = apply_scd2(empty_dimension(spec, schema), events, spec)
    return result.upserts.sort([*spec.keys, "_seq_open"])
