"""MERGE cost against the dimension's size: the same batch of updates into 10k vs 1M keys.

The dimension is built directly, not through Kafka: ``spark.range(K)`` → one current version
per key, shaped like the silver dimension of ``crm_contacts`` (its columns and types come from
the pipeline's own decoder and :func:`cdc.core.scd2.empty_dimension`), and created the way each
writer creates it:

* ``delta-spark``: by :meth:`cdc.store.delta_spark.DeltaSparkStore.merge` of the SCD2 plan
  (:func:`cdc.store.plan.scd2_merge_plan`) on a table that does not exist yet, i.e. an append
  with :data:`cdc.store.plan.DIMENSION_LAYOUT` (partitioned by ``is_current``, deletion
  vectors on);
* ``delta-rs``: by :class:`cdc.store.delta_rs.DeltaSink` with the same layout (it writes no
  deletion vectors; the same Spark rows, collected in chunks).

A round updates ``batch`` keys spread evenly over the key range (key ``i * K // batch + r``
in round ``r``): each update changes the e-mail (a tracked column), so the pure fold
:func:`cdc.core.scd2.apply_scd2` closes the key's current version and opens a new one (2 x batch
MERGE rows). The MERGE is the one each writer issues for that result: the plan rendered by
each store (ON keys, ``_seq_open`` and the rewritten row's partition, the current partition
as a literal; delete / update / insert clauses); the delta-spark source is checkpointed, as
the writer's fold results are. One untimed round
first (JIT, caches), then ``repeats`` timed rounds; the figure is their median. Growth =
median(large) / median(small).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from benchmarks.events import BASE_MS
from cdc.core.scd2 import ACTION_COLUMN, WAS_CURRENT_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from cdc.config.settings import Settings
    from cdc.core.scd2 import Scd2Spec

__all__ = ["MergeRun", "dimension_layout", "measure_merge"]

_CHUNK = 250_000
"""Rows per Spark → Arrow collect when the delta-rs dimension is written."""


@dataclass
class MergeRun:
    """One writer, one dimension size: build time and the timed MERGE rounds."""

    writer: str
    dimension_keys: int
    batch: int
    build_seconds: float = 0.0
    warmup_seconds: float = 0.0
    merge_seconds: list[float] = field(default_factory=list)
    files_before: int = 0
    files_after: int = 0
    rows_copied: list[int] = field(default_factory=list)
    """Target rows rewritten unchanged per round (copy-on-write), from the commit's metrics."""
    partition_columns: list[str] = field(default_factory=list)
    deletion_vectors: bool = False
    """``delta.enableDeletionVectors`` of the table as created."""

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.merge_seconds) if self.merge_seconds else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "dimension_keys": self.dimension_keys,
            "batch": self.batch,
            "build_seconds": self.build_seconds,
            "warmup_seconds": self.warmup_seconds,
            "merge_seconds": self.merge_seconds,
            "median_seconds": self.median_seconds,
            "files_before": self.files_before,
            "files_after": self.files_after,
            "rows_copied": self.rows_copied,
            "partition_columns": self.partition_columns,
            "deletion_vectors": self.deletion_vectors,
        }


def dimension_layout(settings: Settings, name: str) -> tuple[Scd2Spec, pa.Schema]:
    """The SCD2 spec and Arrow row schema of pipeline ``name``'s dimension (as the writers
    derive them from the decoded batch)."""
    from cdc.core.scd2 import Scd2Spec, empty_dimension
    from cdc.ingest.changes import business_columns, scd2_changes
    from cdc.pipeline.kafka_source import DecoderSpec, topic_decoder

    pipeline = settings.pipeline(name)
    decoded = topic_decoder(DecoderSpec.from_settings(settings), pipeline.topic).arrow_schema
    valid = pa.schema([f for f in decoded if f.name not in ("error_code", "error")])
    spec = Scd2Spec.build(
        keys=pipeline.keys,
        columns=business_columns(valid, pipeline.source_format),
        track_history=pipeline.track_history,
        track_history_except=pipeline.track_history_except,
    )
    changes = scd2_changes(valid.empty_table(), spec, pipeline.source_format, pipeline.sequence_by)
    rows = empty_dimension(spec, dict(changes.schema))
    return spec, rows.to_arrow(compat_level=pl.CompatLevel.oldest()).schema


def _seq(ts: Column, partition: Column, offset: Column) -> Column:
    """:func:`cdc.core.scd2.encode_sequence` as a Spark expression."""
    from pyspark.sql import functions as F

    return F.format_string("%015d.%06d.%019d", ts, partition, offset)


def dimension_rows(ids: DataFrame, schema: pa.Schema, *extra: Column) -> DataFrame:
    """One current version per ``id`` (a ``long`` column), shaped like the contact dimension.

    Values follow :mod:`benchmarks.events`' round 0 (key ``CON-<id>``, commit time
    ``BASE_MS + 3 * id``); a column the generator does not know is null.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    i = F.col("id")
    ts = F.lit(BASE_MS) + i * 3
    partition, offset = i % 4, F.floor(i / 4)
    seq = _seq(ts, partition, offset)
    known: dict[str, Column] = {
        "contact_id": F.format_string("CON-%07d", i),
        "account_id": F.format_string("ACC-%05d", i % 997),
        "email": F.format_string("user.%d@example.com", i),
        "first_name": F.element_at(
            F.array(*map(F.lit, ("Anna", "Lukas", "Sofia"))), (i % 3 + 1).cast("int")
        ),
        "last_name": F.element_at(
            F.array(*map(F.lit, ("Müller", "García", "Smith"))), (i % 3 + 1).cast("int")
        ),
        "phone": F.format_string("+49 30 %03d 0000", i % 1000),
        "updated_at": F.timestamp_millis(ts),
        "marketing_opt_in": (i % 3) == F.lit(0),
        "valid_from": F.timestamp_millis(ts),
        "is_current": F.lit(True),
        "_source_topic": F.lit("bench.merge"),
        "_source_partition": partition,
        "_source_offset": offset,
        "_seq_open": seq,
        "_seq_last": seq,
        "_seq_max": seq,
        "_valid_max": F.timestamp_millis(ts),
    }
    spark_schema = from_arrow_schema(schema)
    return ids.select(
        *[
            known.get(f.name, F.lit(None)).cast(f.dataType).alias(f.name)
            for f in spark_schema.fields
        ],
        *extra,
    )


def round_keys(keys: int, batch: int, round_: int) -> list[int]:
    """The ids round ``round_`` updates: ``batch`` distinct ids spread over ``range(keys)``."""
    step = max(1, keys // batch)
    return [(i * step + round_) % keys for i in range(min(batch, keys))]


def _changes(existing: pl.DataFrame, spec: Scd2Spec, round_: int) -> pl.DataFrame:
    """One update per existing row: a new e-mail (tracked) and ``updated_at``."""
    from cdc.core.scd2 import encode_sequence

    ts = BASE_MS + 10_000_000 + 1_000 * round_
    offsets = pl.int_range(pl.len(), dtype=pl.Int64) + 10_000_000 * (round_ + 1)
    updated = [
        pl.from_epoch(pl.lit(ts), "ms").cast(existing.schema[c]).alias(c)
        for c in ("updated_at",)
        if c in existing.columns
    ]
    return existing.select(*spec.keys, *spec.columns).with_columns(
        pl.col("email").str.replace("@", f".r{round_}@"),
        *updated,
        pl.lit("U").alias("_op"),
        encode_sequence(pl.lit(ts), pl.lit(0), offsets).alias("_seq"),
        pl.lit("bench.merge").alias("_source_topic"),
        pl.lit(False).alias("_tombstone"),
    )


def _metric(uri: str, names: tuple[str, ...]) -> int:
    from deltalake import DeltaTable

    history = DeltaTable(uri).history(1)
    metrics = history[0].get("operationMetrics", {}) if history else {}
    for name in names:
        if name in metrics:
            return int(metrics[name])
    return -1


def _metadata(uri: str) -> Any:
    from deltalake import DeltaTable

    return DeltaTable(uri).metadata()


def _files(uri: str) -> int:
    from deltalake import DeltaTable

    return len(DeltaTable(uri).file_uris())


def measure_merge(
    spark: SparkSession,
    settings: Settings,
    name: str,
    writer: str,
    keys: int,
    batch: int,
    uri: str,
    repeats: int = 3,
) -> MergeRun:
    """Build a ``keys``-key dimension at ``uri`` with ``writer``, then time MERGE rounds.

    Args:
        spark: the session (builds the rows; runs the delta-spark MERGE).
        settings: settings naming the pipeline ``name`` (its dimension's layout).
        name: the pipeline.
        writer: ``delta-spark`` or ``delta-rs``.
        keys: dimension keys (one current version each).
        batch: updates per round.
        uri: a fresh table location.
        repeats: timed rounds (after one untimed round).
    """
    from pyspark.sql import functions as F

    from cdc.core.scd2 import apply_scd2, merge_source, touches_history
    from cdc.store.delta_rs import DeltaSink, Txn
    from cdc.store.delta_spark import DeltaSparkStore
    from cdc.store.plan import DIMENSION_LAYOUT, scd2_merge_plan

    spec, row_schema = dimension_layout(settings, name)
    key_cols = list(spec.keys)
    names = list(row_schema.names)
    run = MergeRun(writer, keys, batch)
    app_id = f"cdc-bench/merge/{writer}/{keys}"
    rounds = 1 + repeats
    touched = sorted({k for r in range(rounds) for k in round_keys(keys, batch, r)})
    ids = spark.createDataFrame([(k,) for k in touched], "id long")
    state = pl.from_arrow(dimension_rows(ids, row_schema, F.col("id").alias("_id")).toArrow())
    assert isinstance(state, pl.DataFrame)
    empty = pl.from_arrow(row_schema.empty_table())
    assert isinstance(empty, pl.DataFrame)
    dtypes = empty.schema
    state = state.cast(dtypes)  # the fold's types (Spark collects timestamps in us)

    store: DeltaSparkStore | None = None
    sink: DeltaSink | None = None
    started = time.perf_counter()
    if writer == "delta-spark":
        store = DeltaSparkStore()
        rows = dimension_rows(spark.range(keys), row_schema).withColumns(
            {ACTION_COLUMN: F.lit("U"), WAS_CURRENT_COLUMN: F.lit(True)}
        )
        store.merge(rows, uri, scd2_merge_plan(key_cols, current_only=True), Txn(app_id, 0))
    else:
        sink = DeltaSink(uri)
        for number, start in enumerate(range(0, keys, _CHUNK)):
            chunk = dimension_rows(spark.range(start, min(keys, start + _CHUNK)), row_schema)
            sink.append(
                chunk.toArrow().cast(row_schema),
                Txn(f"{app_id}/build", number),
                layout=DIMENSION_LAYOUT,
            )
    run.build_seconds = time.perf_counter() - started
    run.files_before = _files(uri)
    metadata = _metadata(uri)
    run.partition_columns = list(metadata.partition_columns)
    run.deletion_vectors = metadata.configuration.get("delta.enableDeletionVectors") == "true"

    for round_ in range(rounds):
        wanted = pl.DataFrame({"_id": round_keys(keys, batch, round_)})
        existing = state.join(wanted, on="_id", how="semi")
        changes = _changes(existing.drop("_id"), spec, round_)
        result = apply_scd2(existing.drop("_id"), changes, spec)
        txn = Txn(app_id, 1 + round_)
        frame = merge_source(result).select(*names, ACTION_COLUMN, WAS_CURRENT_COLUMN)
        plan = scd2_merge_plan(key_cols, current_only=not touches_history(frame))
        if writer == "delta-spark":
            assert store is not None
            source = _to_spark(spark, frame, row_schema).localCheckpoint(eager=True)
            mark = time.perf_counter()
            store.merge(source, uri, plan, txn, materialized=True)
            elapsed = time.perf_counter() - mark
            source.unpersist()
            copied = _metric(uri, ("numTargetRowsCopied",))
        else:
            assert sink is not None
            mark = time.perf_counter()
            sink.merge(frame.to_arrow(compat_level=pl.CompatLevel.oldest()), plan, txn)
            elapsed = time.perf_counter() - mark
            copied = _metric(uri, ("num_target_rows_copied",))
        if round_ == 0:
            run.warmup_seconds = elapsed
        else:
            run.merge_seconds.append(elapsed)
            run.rows_copied.append(copied)
        current = result.upserts.filter(pl.col("is_current")).join(
            existing.select(*key_cols, "_id"), on=key_cols, how="left"
        )
        state = pl.concat(
            [state.join(wanted, on="_id", how="anti"), current.select(state.columns)],
            how="vertical_relaxed",
        )
    run.files_after = _files(uri)
    return run


def _to_spark(spark: SparkSession, frame: pl.DataFrame, row_schema: pa.Schema) -> DataFrame:
    """The MERGE source as a Spark frame with the dimension's types."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    df = spark.createDataFrame(table)
    types = {f.name: f.dataType for f in from_arrow_schema(row_schema).fields}
    return df.select(
        *[F.col(c).cast(types[c]).alias(c) for c in row_schema.names],
        F.col(ACTION_COLUMN).cast("string"),
        F.col(WAS_CURRENT_COLUMN).cast("boolean"),
    )
