"""Turn one decoded micro-batch (Arrow) into bronze, quarantine and silver inputs. Pure.

The input is what the Kafka source yields (see :mod:`cdc.ingest.contracts`): Kafka coordinates,
raw bytes, the decoded ``key``/``value`` structs and ``error_code``/``error``. Every input
row goes to exactly one of bronze (valid) or quarantine (invalid).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from cdc.core import sequence
from cdc.core.ranges import TOPIC_ID_COLUMN, Ranges, landed_mask
from cdc.core.scd2 import Scd2Spec, encode_sequence
from cdc.core.sequence import Ordering, SequenceBy, ordering_for, sequence_position
from cdc.errors import ConfigError

# pyspark is imported inside the Spark renderings only: the Polars functions here are used
# without it (the governance catalog, the unit tests).

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = [
    "FACT_FIRST",
    "FACT_LINEAGE",
    "QUARANTINE_COLUMNS",
    "SplitBatch",
    "business_columns",
    "fact_rows",
    "fact_rows_spark",
    "scd2_changes",
    "split_batch",
]

QUARANTINE_COLUMNS = (
    "topic",
    "partition",
    "offset",
    "timestamp",
    "key_raw",
    "value_raw",
    "key_schema_id",
    "value_schema_id",
    "error_code",
    "error",
)


@dataclass(frozen=True)
class SplitBatch:
    """A micro-batch split by validity.

    Attributes:
        valid: rows that passed the contract (bronze input), without the error columns.
        quarantine: rows that failed it, with raw bytes and the reason.
    """

    valid: pa.Table
    quarantine: pa.Table
    landed_valid: int = 0
    """Valid rows bronze already holds (a replay re-reads them): they feed silver only."""

    @property
    def bronze(self) -> pa.Table:
        """The valid rows to append to bronze (those not landed before)."""
        return self.valid.slice(self.landed_valid) if self.landed_valid else self.valid

    def without_landed(self, landed: Ranges) -> SplitBatch:
        """Mark the rows whose offsets bronze or quarantine already hold (see
        :mod:`cdc.core.ranges`).

        Valid rows are reordered landed-first so :attr:`bronze` is a slice; quarantine rows
        that already landed are dropped (quarantine feeds nothing downstream).
        """
        valid_mask = _landed(self.valid, landed)
        quarantine_mask = _landed(self.quarantine, landed)
        landed_rows = self.valid.filter(valid_mask)
        return SplitBatch(
            valid=pa.concat_tables([landed_rows, self.valid.filter(pc.invert(valid_mask))]),
            quarantine=self.quarantine.filter(pc.invert(quarantine_mask)),
            landed_valid=landed_rows.num_rows,
        )

    def quarantining(self, rejected: pa.Table, code: str, now: datetime) -> SplitBatch:
        """Move rows not landed before from the valid rows to quarantine, with ``code``.

        Args:
            rejected: ``partition``, ``offset`` and ``error`` (the one-line reason) of each.
            code: their ``error_code``.
            now: the quarantine time.
        """
        fresh = self.bronze
        reasons = {
            (int(p), int(o)): str(e)
            for p, o, e in zip(
                rejected.column("partition").to_pylist(),
                rejected.column("offset").to_pylist(),
                rejected.column("error").to_pylist(),
                strict=True,
            )
        }
        coords = zip(
            fresh.column("partition").to_pylist(), fresh.column("offset").to_pylist(), strict=True
        )
        errors = [reasons.get((p, o)) for p, o in coords]
        hit = pa.array([e is not None for e in errors], pa.bool_())
        moved = fresh.filter(hit)
        n = moved.num_rows
        bad = pa.table(
            {
                **{c: moved.column(c) for c in QUARANTINE_COLUMNS[:-2]},
                "error_code": pa.array([code] * n, pa.string()),
                "error": pa.array([e for e in errors if e is not None], pa.string()),
                "_batch_id": moved.column("_batch_id"),
                "_quarantined_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
                TOPIC_ID_COLUMN: moved.column(TOPIC_ID_COLUMN),
            }
        )
        kept = fresh.filter(pc.invert(hit))
        landed = self.valid.slice(0, self.landed_valid)
        return SplitBatch(
            valid=pa.concat_tables([landed, kept]),
            quarantine=pa.concat_tables([self.quarantine, bad.cast(self.quarantine.schema)]),
            landed_valid=self.landed_valid,
        )


def _landed(table: pa.Table, landed: Ranges) -> pa.Array:
    """True where the row's partition and offset lie in the landed ranges."""
    return pa.array(
        landed_mask(
            table.column("partition").to_pylist(), table.column("offset").to_pylist(), landed
        ),
        pa.bool_(),
    )


def split_batch(
    batch: pa.Table, batch_id: int, now: datetime, topic_id: str | None = None
) -> SplitBatch:
    """Split a decoded batch into bronze rows and quarantine rows, adding audit columns.

    Args:
        batch: the decoded batch (source schema).
        batch_id: the Spark micro-batch id (recorded on every row).
        now: ingestion time (injected for tests).
        topic_id: the Kafka id of the topic the batch was read from (recorded on every row).
    """
    is_valid = pc.is_null(batch.column("error_code"))
    valid = batch.filter(is_valid).drop_columns(["error_code", "error"])
    bad = batch.filter(pc.invert(is_valid)).select(list(QUARANTINE_COLUMNS))
    return SplitBatch(
        valid=_with_audit(valid, batch_id, now, "_ingested_at", topic_id),
        quarantine=_with_audit(bad, batch_id, now, "_quarantined_at", topic_id),
    )


def _with_audit(
    table: pa.Table, batch_id: int, now: datetime, time_col: str, topic_id: str | None
) -> pa.Table:
    n = table.num_rows
    table = table.append_column("_batch_id", pa.array([batch_id] * n, pa.int64()))
    table = table.append_column(time_col, pa.array([now] * n, pa.timestamp("us", tz="UTC")))
    return table.append_column(TOPIC_ID_COLUMN, pa.array([topic_id] * n, pa.string()))


def _struct_fields(dtype: pa.DataType) -> list[str]:
    return [dtype.field(i).name for i in range(dtype.num_fields)]


def business_columns(schema: pa.Schema, source_format: str) -> list[str]:
    """The row's columns: ``value.after`` fields (envelope) or ``value`` fields (flat)."""
    value_type = schema.field("value").type
    if source_format == "envelope":
        return _struct_fields(value_type.field("after").type)
    return _struct_fields(value_type)


def _resolve_dtype(schema: pl.Schema, root: str, path: str) -> pl.DataType:
    dtype: pl.DataType = schema[root]
    for part in path.split("."):
        if not isinstance(dtype, pl.Struct):
            raise ConfigError(f"sequence_by {path!r}: {part!r} is not inside a record")
        # Field dtypes of a schema read from data are instances, never bare classes.
        fields: dict[str, pl.DataType] = {f.name: f.dtype for f in dtype.fields}  # type: ignore[misc]
        if part not in fields:
            raise ConfigError(
                f"sequence_by {path!r}: no field {part!r}; valid: {', '.join(fields)}"
            )
        dtype = fields[part]
    return dtype


def _time_ms(df: pl.DataFrame, ordering: Ordering, source_format: str) -> pl.Expr:
    """Each record's source time (epoch ms): the legacy path, ``source.ts_ms`` of an envelope,
    or a flat record's first time field; the Kafka timestamp where that is null or absent."""
    kafka_ms = pl.col("timestamp").dt.epoch("ms")
    path = sequence.time_path(ordering, source_format, df.schema)
    if path is None:
        return kafka_ms
    dtype = _resolve_dtype(df.schema, "value", path)
    field = pl.col("value")
    for part in path.split("."):
        field = field.struct.field(part)
    return pl.coalesce(sequence.epoch_ms(field, dtype, path), kafka_ms)


def scd2_changes(
    valid: pa.Table, spec: Scd2Spec, source_format: str, sequence_by: SequenceBy
) -> pl.DataFrame:
    """Normalise valid rows into SCD2 change events (see :func:`cdc.core.scd2.apply_scd2`).

    Envelope (Debezium): ``op`` c/u/r → upsert from ``after``; ``d`` or a tombstone
    (null value) → delete. Keys come from the Kafka key, never from ``before`` (a delete's
    values are not read). The sequence (:mod:`cdc.core.sequence`) is the source position
    (``sequence_by``, default the connector's), then the source time (``source.ts_ms``; the
    Kafka timestamp for a tombstone), then Kafka partition and offset.
    Flat: every record is an upsert of its value's columns.

    Args:
        valid: bronze rows of one batch.
        spec: the dimension's spec.
        source_format: ``envelope`` or ``flat``.
        sequence_by: the pipeline's ``sequence_by`` (see :func:`cdc.core.sequence.ordering_for`).
    """
    df = pl.from_arrow(valid)
    assert isinstance(df, pl.DataFrame)
    value = pl.col("value")
    keys = [pl.col("key").struct.field(k).alias(k) for k in spec.keys]
    ordering = ordering_for(sequence_by, source_format)
    if source_format == "envelope":
        is_delete = value.is_null() | (value.struct.field("op") == "d")
        row = value.struct.field("after")
        columns = [
            pl.when(is_delete).then(None).otherwise(row.struct.field(c)).alias(c)
            for c in spec.columns
        ]
    else:
        is_delete = value.is_null()
        columns = [value.struct.field(c).alias(c) for c in spec.columns]
    seq_ms = _time_ms(df, ordering, source_format)
    position = sequence_position(ordering, df.schema)
    return df.select(
        *keys,
        *columns,
        pl.when(is_delete).then(pl.lit("D")).otherwise(pl.lit("U")).alias("_op"),
        encode_sequence(seq_ms, pl.col("partition"), pl.col("offset"), position).alias("_seq"),
        pl.col("topic").alias("_source_topic"),
        value.is_null().alias("_tombstone"),
    )


FACT_LINEAGE = (
    ("_source_topic", "topic"),
    ("_source_partition", "partition"),
    ("_source_offset", "offset"),
    ("_kafka_timestamp", "timestamp"),
)
"""A fact row is its value's fields plus these lineage columns (name, batch column)."""

FACT_FIRST = ("_source_partition", "_source_offset")
"""Of the batch's records with one event id, the first by this order is the fact (a repeat
later in the log is a re-delivery); tombstones carry no fact (they stay in bronze)."""


def _check_event_id(event_id: str, columns: list[str]) -> None:
    if event_id not in columns:
        raise ConfigError(
            f"event_id {event_id!r} is not a field of the value; valid: {', '.join(columns)}"
        )


def fact_rows(valid: pa.Table, event_id: str) -> pl.DataFrame:
    """The batch's facts (:data:`FACT_LINEAGE`, :data:`FACT_FIRST`), in Polars (delta-rs)."""
    df = pl.from_arrow(valid)
    assert isinstance(df, pl.DataFrame)
    df = df.filter(pl.col("value").is_not_null())
    flat = df.select(
        pl.col("value").struct.unnest(),
        *(pl.col(column).alias(name) for name, column in FACT_LINEAGE),
    )
    _check_event_id(event_id, flat.columns)
    return flat.sort(list(FACT_FIRST)).unique(subset=[event_id], keep="first", maintain_order=True)


def fact_rows_spark(valid: DataFrame, event_id: str) -> DataFrame:
    """The batch's facts (:data:`FACT_LINEAGE`, :data:`FACT_FIRST`), in Spark (delta-spark)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    flat = valid.where(F.col("value").isNotNull()).select(
        "value.*", *(F.col(column).alias(name) for name, column in FACT_LINEAGE)
    )
    _check_event_id(event_id, flat.columns)
    first = Window.partitionBy(event_id).orderBy(*FACT_FIRST)
    return flat.withColumn("_rn", F.row_number().over(first)).where("_rn = 1").drop("_rn")
