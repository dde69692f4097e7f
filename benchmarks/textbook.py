"""The textbook: the delta-spark ``foreachBatch`` SCD2 MERGE a Spark user writes by hand.

The staged-union MERGE of the Delta Lake documentation ("Slowly changing data (SCD) Type 2
operation into Delta tables"), on the same Kafka topic, read by Spark's Kafka source and
decoded by the pipeline's own decoder (:func:`cdc.pipeline.kafka_source.decoded_stream`:
``mapInArrow`` with the columnar :class:`~cdc.ingest.decoder.TopicDecoder`), so that what differs
from the pipeline is the SCD2 write and nothing else. Per micro-batch:

1. keep the valid rows and flatten them: keys from the Kafka key, columns from
   ``value.after``, the operation, and the effective time (``sequence_by``, default
   ``source.ts_ms``; a tombstone's Kafka timestamp);
2. **dedupe to the latest event per key** (greatest effective time, then partition and
   offset): a MERGE cannot apply several source rows to one target row;
3. stage the updates: every update with its key as ``mergeKey``, plus, for each update whose
   tracked columns differ from the key's current row, a copy with a NULL ``mergeKey`` (it
   matches nothing, so it is inserted as the new current version);
4. one MERGE: ``whenMatchedUpdate(condition = changed or deleted, set current = false,
   valid_to = the update's effective time)``, ``whenNotMatchedInsert(the new version,
   current)``.

Departures from the documentation's example, all needed for a CDC topic: deletes (a delete
closes the current version and inserts nothing), and the ON condition also requires the
target row to be current (``t.is_current``), else a deleted key's closed versions match its
re-create, which is then never inserted. The table is created as in the documentation
(unpartitioned, Delta's default table properties: no deletion vectors in open-source Delta),
empty, before the first batch.

**This is the textbook, not an order-correct SCD2.** It is not correct for late events: an
event older than the key's current version still closes it and becomes the current version;
a re-delivered event opens a version again. Within a batch only the latest event per key is
applied (the intermediate versions are lost), and changes to untracked columns are not
applied at all (the documentation's MERGE updates nothing in place). It writes no bronze, no
quarantine, checks no contract rule beyond the decoder's and carries no app transaction (a
batch re-run after a crash is applied twice). The benchmark compares its throughput, and its
current rows' keys and tracked columns with the reference's (equal on in-order data).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery
    from pyspark.sql.types import DataType, StructType

    from cdc.config.settings import PipelineSettings, Settings

__all__ = ["TextbookBatch", "TextbookScd2", "run_textbook", "start_textbook"]

_MERGE_KEY = "_merge_key_"
_OP = "_op"
_EFFECTIVE = "_effective"


@dataclass(frozen=True)
class TextbookBatch:
    """One textbook micro-batch: rows read, seconds in ``foreachBatch``, and per step."""

    batch_id: int
    rows: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)


class TextbookScd2:
    """The ``foreachBatch`` function: dedupe, stage, MERGE (see the module docstring).

    Args:
        uri: the dimension's Delta table (created empty by :func:`start_textbook`).
        keys: key columns (fields of the Kafka key).
        columns: business columns (fields of ``value.after``), keys excluded.
        tracked: the columns whose change opens a new version.
        sequence_by: path in the value of the effective time (default ``source.ts_ms``).
        on_batch: called after each batch's MERGE.
    """

    def __init__(
        self,
        uri: str,
        keys: list[str],
        columns: list[str],
        tracked: list[str],
        sequence_by: str | None = None,
        on_batch: Callable[[TextbookBatch], None] | None = None,
    ) -> None:
        self.uri = uri
        self.keys = keys
        self.columns = columns
        self.tracked = tracked
        self.sequence_by = sequence_by or "source.ts_ms"
        self.on_batch = on_batch

    def latest_changes(self, batch: DataFrame) -> DataFrame:
        """The batch's valid rows, flattened, deduped to the latest event per key."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        valid = batch.where(F.col("error_code").isNull())
        deleted = F.col("value").isNull() | (F.col("value.op") == "d")
        effective = F.coalesce(
            _as_timestamp(f"value.{self.sequence_by}", batch.schema), F.col("timestamp")
        )
        flat = valid.select(
            *[F.col(f"key.{k}").alias(k) for k in self.keys],
            *[F.col(f"value.after.{c}").alias(c) for c in self.columns],
            F.when(deleted, F.lit("D")).otherwise(F.lit("U")).alias(_OP),
            effective.alias(_EFFECTIVE),
            "partition",
            "offset",
        )
        latest = Window.partitionBy(*self.keys).orderBy(
            F.col(_EFFECTIVE).desc(), F.col("partition").desc(), F.col("offset").desc()
        )
        return (
            flat.withColumn("_rn", F.row_number().over(latest))
            .where("_rn = 1")
            .drop("_rn", "partition", "offset")
        )

    def _changed(self, left: str, right: str) -> str:
        return " OR ".join(f"NOT ({left}.`{c}` <=> {right}.`{c}`)" for c in self.tracked)

    def merge(self, updates: DataFrame) -> None:
        """The Delta docs' staged-union SCD2 MERGE of ``updates`` (one row per key)."""
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        session = updates.sparkSession
        target = DeltaTable.forPath(session, self.uri)
        current = target.toDF().where("is_current")
        merge_keys = [f"{_MERGE_KEY}{k}" for k in self.keys]
        changed = self._changed("u", "c") or "false"
        # Rows to INSERT as the new current version of keys whose tracked columns changed.
        new_versions = (
            updates.alias("u")
            .join(current.alias("c"), [F.col(f"u.{k}") == F.col(f"c.{k}") for k in self.keys])
            .where(f"u.{_OP} = 'U' AND ({changed})")
            .select(
                *[
                    F.lit(None).cast(_type_of(updates, k)).alias(m)
                    for k, m in zip(self.keys, merge_keys, strict=True)
                ],
                "u.*",
            )
        )
        # Rows that either close the current version or insert a new key (or a re-create).
        staged = new_versions.unionByName(
            updates.select(
                *[F.col(k).alias(m) for k, m in zip(self.keys, merge_keys, strict=True)], "*"
            )
        )
        on = " AND ".join(
            [
                *(f"t.`{k}` = s.`{m}`" for k, m in zip(self.keys, merge_keys, strict=True)),
                "t.is_current = true",
            ]
        )
        insert = {f"`{c}`": f"s.`{c}`" for c in (*self.keys, *self.columns)}
        (
            target.alias("t")
            .merge(staged.alias("s"), on)
            .whenMatchedUpdate(
                condition=f"s.{_OP} = 'D' OR {self._changed('t', 's') or 'false'}",
                set={"is_current": "false", "valid_to": f"s.{_EFFECTIVE}"},
            )
            .whenNotMatchedInsert(
                condition=f"s.{_OP} = 'U'",
                values={
                    **insert,
                    "is_current": "true",
                    "valid_from": f"s.{_EFFECTIVE}",
                    "valid_to": "null",
                },
            )
            .execute()
        )

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        phases: dict[str, float] = {}
        # Read once: the staged union and the MERGE would each re-read Kafka otherwise.
        batch = batch_df.persist()
        try:
            rows = batch.count()
            phases["read"] = time.monotonic() - started
            if rows:
                mark = time.monotonic()
                self.merge(self.latest_changes(batch))
                phases["merge"] = time.monotonic() - mark
        finally:
            batch.unpersist()
        if self.on_batch is not None:
            self.on_batch(TextbookBatch(batch_id, rows, time.monotonic() - started, phases))


def _field(schema: StructType, path: str) -> DataType:
    from pyspark.sql.types import StructType

    dtype: DataType = schema
    for part in path.split("."):
        if not isinstance(dtype, StructType):
            raise ValueError(f"{path!r}: {part!r} is not inside a struct")
        dtype = dtype[part].dataType
    return dtype


def _as_timestamp(path: str, schema: StructType) -> Column:
    from pyspark.sql import functions as F
    from pyspark.sql.types import DateType, TimestampNTZType, TimestampType

    dtype = _field(schema, path)
    if isinstance(dtype, (TimestampType, TimestampNTZType, DateType)):
        return F.col(path).cast("timestamp")
    return F.timestamp_millis(F.col(path).cast("long"))


def _type_of(df: DataFrame, column: str) -> DataType:
    return df.schema[column].dataType


def dimension_schema(decoded: StructType, keys: list[str], columns: list[str]) -> StructType:
    """The textbook dimension's columns: keys, business columns, current flag, validity."""
    from pyspark.sql.types import BooleanType, StructField, StructType, TimestampType

    return StructType(
        [
            *(StructField(k, _field(decoded, f"key.{k}")) for k in keys),
            *(StructField(c, _field(decoded, f"value.after.{c}")) for c in columns),
            StructField("is_current", BooleanType()),
            StructField("valid_from", TimestampType()),
            StructField("valid_to", TimestampType()),
        ]
    )


def start_textbook(
    spark: SparkSession,
    settings: Settings,
    name: str,
    uri: str,
    checkpoint: str,
    on_batch: Callable[[TextbookBatch], None] | None = None,
    available_now: bool = True,
) -> StreamingQuery:
    """Create the textbook's dimension (empty) and start its query on ``name``'s topic.

    Args:
        spark: the session.
        settings: the service settings (Kafka, registry, ``max_records_per_trigger``).
        name: the pipeline whose topic, keys and tracked columns the textbook takes.
        uri: the textbook's dimension (a fresh location).
        checkpoint: the textbook query's checkpoint (a fresh folder).
        on_batch: called after each batch.
        available_now: drain what is in the topic and stop (else a 1-trigger-interval query).
    """
    from delta.tables import DeltaTable

    from cdc.core.scd2 import Scd2Spec
    from cdc.pipeline.kafka_source import decoded_stream
    from cdc.pipeline.queries import with_trigger

    pipeline: PipelineSettings = settings.pipeline(name)
    stream = decoded_stream(spark, settings, pipeline, checkpoint)
    value_after = _field(stream.schema, "value.after")
    business = [f.name for f in value_after.fields] if hasattr(value_after, "fields") else []
    spec = Scd2Spec.build(
        keys=pipeline.keys,
        columns=business,
        track_history=pipeline.track_history,
        track_history_except=pipeline.track_history_except,
    )
    keys, columns = list(spec.keys), list(spec.columns)
    (
        DeltaTable.createIfNotExists(spark)
        .location(uri)
        .addColumns(dimension_schema(stream.schema, keys, columns))
        .execute()
    )
    batch_fn = TextbookScd2(uri, keys, columns, list(spec.tracked), pipeline.sequence_by, on_batch)
    writer = (
        stream.writeStream.queryName(f"textbook-{name}")
        .option("checkpointLocation", checkpoint)
        .foreachBatch(batch_fn)
    )
    return with_trigger(writer, settings, available_now).start()


def run_textbook(
    spark: SparkSession,
    settings: Settings,
    name: str,
    uri: str,
    checkpoint: str,
    on_batch: Callable[[TextbookBatch], None] | None = None,
) -> list[TextbookBatch]:
    """Drain ``name``'s topic through the textbook (available-now); its batches.

    Raises:
        RuntimeError: the query failed.
    """
    batches: list[TextbookBatch] = []
    lock = threading.Lock()

    def record(batch: TextbookBatch) -> None:
        with lock:
            batches.append(batch)
        if on_batch is not None:
            on_batch(batch)

    query = start_textbook(spark, settings, name, uri, checkpoint, record)
    try:
        query.awaitTermination()
    finally:
        if query.isActive:
            query.stop()
    error: Any = query.exception()
    if error is not None:
        raise RuntimeError(f"textbook query failed: {error}")
    return batches
