"""SCD2 change events of a small contact dimension, for the pure tests of the fold.

:data:`SPEC` is ``crm.contacts`` cut down to four columns (``phone`` untracked). Events are
built one by one (:func:`ev`, :func:`changes`) or as a Kafka log (:func:`to_log`: offsets
follow the list, tombstones get a Kafka time; :func:`frame`), and applied batch by batch as
the writers do: :func:`apply_all` without history, :class:`Dimension` with history and the
orphan state the sink keeps.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from cdc.core.scd2 import (
    Scd2Result,
    Scd2Spec,
    apply_scd2,
    empty_dimension,
    empty_orphans,
    encode_sequence,
)

__all__ = [
    "IDENTITY",
    "KAFKA_CLOCK",
    "SCHEMA",
    "SPEC",
    "Dimension",
    "apply_all",
    "changes",
    "ev",
    "frame",
    "to_log",
]

SPEC = Scd2Spec.build(
    keys=["contact_id"],
    columns=["contact_id", "email", "last_name", "phone"],
    track_history_except=["phone"],
)
SCHEMA: dict[str, pl.DataType] = {
    "contact_id": pl.String(),
    "email": pl.String(),
    "last_name": pl.String(),
    "phone": pl.String(),
}


def ev(
    key: str, ts: int, op: str = "U", offset: int | None = None, **values: Any
) -> dict[str, Any]:
    row = {"contact_id": key, "email": None, "last_name": None, "phone": None}
    row.update(values)
    row.update(_op=op, _ts=ts, _partition=0, _offset=ts if offset is None else offset)
    return row


def changes(*events: dict[str, Any]) -> pl.DataFrame:
    df = pl.DataFrame(
        list(events),
        schema={
            **SCHEMA,
            "_op": pl.String,
            "_ts": pl.Int64,
            "_partition": pl.Int32,
            "_offset": pl.Int64,
        },
    )
    return df.with_columns(
        _seq=encode_sequence(pl.col("_ts"), pl.col("_partition"), pl.col("_offset")),
        _source_topic=pl.lit("crm.contacts"),
    ).drop("_ts", "_partition", "_offset")


def apply_all(*batches: pl.DataFrame) -> pl.DataFrame:
    """Apply batches one after another, as the sink does, and return the table."""
    table = empty_dimension(SPEC, SCHEMA)
    identity = ["contact_id", "_seq_open"]
    for batch in batches:
        result = apply_scd2(table, batch, SPEC)
        table = table.join(result.deletes, on=identity, how="anti")
        table = table.join(result.upserts.select(identity), on=identity, how="anti")
        table = pl.concat([table, result.upserts], how="vertical_relaxed")
    return table.sort(identity)


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
