"""One micro-batch on delta-spark: everything runs on the executors, nothing is collected.

The batch goes one way: split → bronze and quarantine appends → state read → SCD2 fold → MERGE
(or, for facts, an insert-only MERGE on the event id). Each step is a DataFrame; only counts
come back to the driver.

The SCD2 fold is the pure :func:`cdc.scd2.apply_scd2`, run on key groups: the batch's change
events, the dimension rows of their keys, the keys' orphan markers and (for late keys) their
full event history from bronze are brought together by a shuffle on the key columns, and each
shuffle partition is folded by one call (many keys at once, so the per-call cost of Polars is
paid per partition, not per key). The result rows are MERGEd on ``(keys, _seq_open)`` and the
partition of the row they rewrite (the dimension is partitioned by ``is_current``: a MERGE
reads and rewrites the current rows of the batch's keys, history only for late keys), with
deletion vectors on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from cdc.batch import BatchStats, BatchWriter
from cdc.changes import QUARANTINE_COLUMNS, scd2_changes
from cdc.errors import ConfigError
from cdc.expectations import FLAGS_COLUMN
from cdc.jvm import optional_classpath
from cdc.landed import TOPIC_ID_COLUMN, Ranges
from cdc.scd2 import Scd2Spec, apply_scd2, empty_dimension, late_keys
from cdc.sequence import SequenceBy
from cdc.store.base import Txn
from cdc.store.delta_spark import DeltaSparkStore
from cdc.topic_identity import BROKER_PATIENCE_S, check_topic_identity
from cdc.verify import check_rows_spark, record_batch_check, valid_time_bounds

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["DIMENSION_PROPERTIES", "DistributedBatchWriter", "late_keys_df"]

log = logging.getLogger(__name__)

DIMENSION_PROPERTIES = {"delta.enableDeletionVectors": "true"}
"""Table properties of a dimension created by delta-spark."""

_ROLE = "_cdc_role"
_ACTION = "_cdc_action"
_WAS_CURRENT = "_cdc_was_current"
_STATS = ("_n_inserted", "_n_updated", "_n_closed", "_n_duplicates", "_n_late")
_EVENT, _HISTORY, _ROW, _SEEN = "E", "H", "R", "S"


class DistributedBatchWriter(BatchWriter):
    """The ``foreachBatch`` function of one pipeline on delta-spark."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same arguments as :class:`cdc.batch.BatchWriter`."""
        super().__init__(*args, **kwargs)
        if any(uri.startswith("s3://") for uri in self.uris.values()) and not optional_classpath(
            "s3"
        ):
            raise ConfigError(
                f"lake.root {self.settings.lake.root} is on S3 and lake.writer is delta-spark,"
                " but the S3A JARs are not installed: run `python -m cdc.jvm install --profile"
                " s3` (the Docker image has them)"
            )
        self.store = DeltaSparkStore(self.settings.lake.resolved_storage_options())
        if self.expectations is not None:
            from pyspark.sql import SparkSession

            session = SparkSession.getActiveSession()
            if session is not None:  # start_query's session: Spark types the rules at start
                self.expectations.check_spark(session)

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        batch = batch_df.persist()
        try:
            stats = BatchStats(batch_id=batch_id)
            self._process(batch, batch_id, datetime.now(UTC), stats)
        finally:
            batch.unpersist()
        stats.seconds = time.monotonic() - started
        self._report(stats)

    def _process(self, batch: DataFrame, batch_id: int, now: datetime, stats: BatchStats) -> None:
        from pyspark.sql import functions as F

        flagged = _flag_landed(batch, self._landed, self.pipeline.topic)
        landed = F.col(_LANDED)
        checks = self.expectations
        if checks is not None:  # drop failures become quarantine rows; fail raises below
            flagged = checks.flag_spark(flagged, landed)
        valid_all = flagged.where(F.col("error_code").isNull()).drop(
            "error_code", "error", FLAGS_COLUMN
        )
        bronze = valid_all.where(~landed)
        quarantine = flagged.where(F.col("error_code").isNotNull() & ~landed).select(
            *QUARANTINE_COLUMNS
        )
        valid_all = valid_all.drop(_LANDED)
        bronze = bronze.drop(_LANDED)
        with stats.timed("read"):  # fetches and decodes on the executors; counts come back
            counts = flagged.agg(
                F.count(F.lit(1)).alias("n"),
                F.count_if(F.col("error_code").isNull() & ~landed).alias("b"),
                F.count_if(F.col("error_code").isNotNull() & ~landed).alias("q"),
                F.count_if(F.col("error_code").isNull()).alias("v"),
                *(checks.count_columns() if checks is not None else []),
            ).first()
        assert counts is not None
        if checks is not None:  # before any write: a fail rule stops the query here
            stats.expectation_failures = checks.outcome_spark(flagged, counts, batch_id)
        # After the read, before any write (see LocalBatchWriter.__call__).
        topic_id = check_topic_identity(
            self.settings, self.name, self.checkpoint, patience_s=BROKER_PATIENCE_S
        )
        stats.input_rows = int(counts["n"])
        stats.bronze_rows, stats.quarantined = int(counts["b"]), int(counts["q"])
        valid_rows = int(counts["v"])
        if stats.quarantined:
            reasons = quarantine.groupBy("error_code").count().collect()
            stats.quarantine_reasons = {str(r["error_code"]): int(r["count"]) for r in reasons}
        self._fault("before-commit", batch_id)
        with stats.timed("bronze"):
            batch_col = F.lit(batch_id).cast("long")
            topic_col = F.lit(topic_id).cast("string")
            for role, df, time_col, rows in (
                ("bronze", bronze, "_ingested_at", stats.bronze_rows),
                ("quarantine", quarantine, "_quarantined_at", stats.quarantined),
            ):
                if not rows:
                    continue
                data = df.withColumns(
                    {
                        "_batch_id": batch_col,
                        time_col: F.lit(now).cast("timestamp"),
                        TOPIC_ID_COLUMN: topic_col,
                    }
                )
                if self.store.append(data, self.uris[role], self.txn(role, batch_id)).skipped:
                    stats.skipped_tables.append(role)
        self._count_expectations(stats)
        self._fault("mid-commit", batch_id)
        if valid_rows:
            if self.pipeline.kind == "scd2":
                self._scd2(valid_all, batch_id, stats)
            else:
                self._facts(valid_all, valid_rows, batch_id, stats)
        self._fault("after-commit", batch_id)

    # ------------------------------------------------------------------------------ facts

    def _facts(self, valid: DataFrame, valid_rows: int, batch_id: int, stats: BatchStats) -> None:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        event_id = self.pipeline.event_id
        assert event_id is not None
        flat = valid.where(F.col("value").isNotNull()).select(
            "value.*",
            F.col("topic").alias("_source_topic"),
            F.col("partition").alias("_source_partition"),
            F.col("offset").alias("_source_offset"),
            F.col("timestamp").alias("_kafka_timestamp"),
        )
        if event_id not in flat.columns:
            raise ConfigError(
                f"event_id {event_id!r} is not a field of the value;"
                f" valid: {', '.join(flat.columns)}"
            )
        first = Window.partitionBy(event_id).orderBy("_source_partition", "_source_offset")
        rows = flat.withColumn("_rn", F.row_number().over(first)).where("_rn = 1").drop("_rn")
        uri = self.uris["silver"]
        txn = self.txn("silver", batch_id)

        created = not self.store.exists(uri)

        def write() -> Any:
            if created:
                return self.store.append(rows, uri, txn)
            return self.store.merge(
                rows,
                uri,
                f"t.`{event_id}` = s.`{event_id}`",
                lambda m: m.whenNotMatchedInsertAll(),
                txn,
            )

        with stats.timed("merge"):
            outcome = self._with_retries(write, batch_id, stats)
        if outcome.skipped:
            stats.skipped_tables.append("silver")
        unique = rows.count()
        if not outcome.skipped:
            stats.inserted = unique if created else outcome.rows
        stats.duplicates = valid_rows - unique

    # ------------------------------------------------------------------------------- SCD2

    def _scd2(self, valid: DataFrame, batch_id: int, stats: BatchStats) -> None:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

        p = self.pipeline
        session = valid.sparkSession
        valid_arrow = to_arrow_schema(valid.schema, timezone="UTC")
        spec = self._scd2_spec(valid_arrow)
        keys = list(spec.keys)
        event_arrow = _changes_schema(valid_arrow, spec, p.source_format, p.sequence_by)
        event_schema = from_arrow_schema(event_arrow)
        row_arrow = _arrow(
            empty_dimension(spec, dict(pl.from_arrow(event_arrow.empty_table()).schema))  # type: ignore[union-attr]
        ).schema
        to_events = _changes_fn(spec, p.source_format, p.sequence_by, event_arrow)
        uri, orphans_uri = self.uris["silver"], self.uris["orphans"]
        txn = self.txn("silver", batch_id)
        if self.store.committed(uri, txn):
            stats.skipped_tables.append("silver")
            return
        cached: list[DataFrame] = []

        def materialize(df: DataFrame) -> DataFrame:
            # Computed once on the executors and kept there (only the count comes back), with
            # the lineage cut: later plans of the batch scan these rows instead of re-planning
            # the Delta scans behind them, and the MERGE's commit does not make Spark's cache
            # manager recompute them (it re-caches every cached plan that reads the table).
            df = df.localCheckpoint(eager=True)
            cached.append(df)
            return df

        try:
            with stats.timed("state"):
                changes = materialize(valid.mapInArrow(to_events, event_schema))
                affected = changes.select(*keys).distinct()
                silver = self.store.read_df(session, uri)
                if silver is None:
                    silver = session.createDataFrame([], from_arrow_schema(row_arrow))
                # Every version of the batch's keys, read once (one scan of the dimension).
                state = materialize(_semi(silver, affected, keys))
                current = state.where(F.col("is_current"))
                history = state.where(~F.col("is_current"))
                no_current = _anti(affected, current.select(*keys), keys)
                rows = current.unionByName(
                    _semi(history, no_current, keys), allowMissingColumns=True
                )
                orphans = self.store.read_df(session, orphans_uri)
                seen = materialize(_semi(orphans, affected, keys)) if orphans is not None else None
                late = materialize(late_keys_df(rows, changes, seen, keys))
                late_with_current = _semi(late, current.select(*keys), keys)
                rows = rows.unionByName(
                    _semi(history, late_with_current, keys), allowMissingColumns=True
                )
                bronze = self.store.read_df(session, self.uris["bronze"])
                parts = [
                    changes.withColumn(_ROLE, F.lit(_EVENT)),
                    rows.withColumn(_ROLE, F.lit(_ROW)),
                ]
                if seen is not None:
                    parts.append(seen.withColumn(_ROLE, F.lit(_SEEN)))
                if bronze is not None:
                    condition = [bronze["key"][k].eqNullSafe(late[k]) for k in keys]
                    past = bronze.join(late, condition, "left_semi").mapInArrow(
                        to_events, event_schema
                    )
                    parts.append(past.withColumn(_ROLE, F.lit(_HISTORY)))
                out_arrow = _result_schema(row_arrow)
                results = _shuffle(parts, keys).mapInArrow(
                    _fold_fn(spec, out_arrow), from_arrow_schema(out_arrow)
                )
            with stats.timed("fold"):  # the fold runs here; only counts come back
                results = materialize(results)
                counts = (
                    results.groupBy(_ACTION)
                    .agg(
                        F.count(F.lit(1)).alias("rows"),
                        F.count_if(F.col(_WAS_CURRENT) == F.lit(False)).alias("history"),
                        *[F.sum(c).alias(c) for c in _STATS],
                    )
                    .collect()
                )
            per_action = {row[_ACTION]: int(row["rows"]) for row in counts}
            # In-order batches rewrite current rows only: the MERGE may then skip history.
            current_only = not any(row["history"] for row in counts)
            totals = next((row for row in counts if row[_ACTION] == "S"), None)
            with stats.timed("merge"):
                if per_action.get("O"):
                    orphan_rows = results.where(F.col(_ACTION) == "O").select(*keys, "_seq_max")
                    self.store.append(orphan_rows, orphans_uri, self.txn("orphans", batch_id))
                if per_action.get("U") or per_action.get("D"):
                    source = results.where(F.col(_ACTION).isin("U", "D")).select(
                        *row_arrow.names, _ACTION, _WAS_CURRENT
                    )
                    self._with_retries(
                        lambda: self._merge_dimension(
                            source, uri, keys, row_arrow.names, txn, current_only=current_only
                        ),
                        batch_id,
                        stats,
                        log_attempt=True,
                    )
            if self.settings.check_invariants(self.name):
                with stats.timed("check"):  # the committed rows of the batch's keys
                    written = self.store.read_df(session, uri)
                    if written is not None:
                        bounds = valid_time_bounds(self.settings, p)
                        report = check_rows_spark(_semi(written, affected, keys), keys, bounds)
                        record_batch_check(self.name, stats, report, self.settings.lake.writer)
        finally:
            for df in cached:
                _release(df)
        if totals is not None and totals[_STATS[0]] is not None:
            stats.inserted, stats.updated, stats.closed, stats.duplicates, stats.late_keys = (
                int(totals[c]) for c in _STATS
            )

    def _merge_dimension(
        self,
        source: DataFrame,
        uri: str,
        keys: list[str],
        columns: list[str],
        txn: Txn,
        *,
        current_only: bool | None = None,
    ) -> Any:
        """MERGE fold results (``_cdc_action`` U/D) into the dimension, or create it.

        ``current_only``: no source row rewrites a history row (None: found out here). The
        match then also says ``t.is_current = true``, a literal Delta prunes the history
        partition with, so an in-order batch reads current rows only, however long the
        history.
        """
        from pyspark.sql import functions as F

        if not self.store.exists(uri):
            rows = source.where(F.col(_ACTION) == "U").drop(_ACTION, _WAS_CURRENT)
            return self.store.append(
                rows, uri, txn, partition_by=["is_current"], properties=DIMENSION_PROPERTIES
            )
        matches = [f"t.`{k}` <=> s.`{k}`" for k in keys]
        if current_only is None:
            current_only = source.where(F.col(_WAS_CURRENT) == F.lit(False)).isEmpty()
        on = " AND ".join(
            [
                *matches,
                "t._seq_open = s._seq_open",
                f"t.is_current = s.{_WAS_CURRENT}",
                *(["t.is_current = true"] if current_only else []),
            ]
        )
        assign = {f"`{c}`": f"s.`{c}`" for c in columns}
        return self.store.merge(
            source,
            uri,
            on,
            lambda m: (
                m.whenMatchedDelete(condition=f"s.{_ACTION} = 'D'")
                .whenMatchedUpdate(condition=f"s.{_ACTION} = 'U'", set=assign)
                .whenNotMatchedInsert(condition=f"s.{_ACTION} = 'U'", values=assign)
            ),
            txn,
        )


# ---------------------------------------------------------------------------------- helpers


_LANDED = "_cdc_landed"
"""Batch column: bronze or quarantine already hold the row (a replay re-reads it)."""


def _flag_landed(batch: DataFrame, landed: Ranges, topic: str) -> DataFrame:
    """``batch`` with :data:`_LANDED`: whether its offset lies in the landed ranges.

    The ranges go to the executors as a broadcast table, joined on the partition and the
    offset range (they are disjoint, so a row matches at most one).
    """
    from pyspark.sql import functions as F

    if not landed:
        return batch.withColumn(_LANDED, F.lit(False))
    spans = [(p, lo, hi) for p, ranges in landed.items() for lo, hi in ranges]
    ranges_df = batch.sparkSession.createDataFrame(
        spans, "_r_partition int, _r_lo long, _r_hi long"
    )
    on = (
        (batch["topic"] == F.lit(topic))
        & (batch["partition"] == ranges_df["_r_partition"])
        & (batch["offset"] >= ranges_df["_r_lo"])
        & (batch["offset"] < ranges_df["_r_hi"])
    )
    return (
        batch.join(F.broadcast(ranges_df), on, "left")
        .withColumn(_LANDED, F.col("_r_lo").isNotNull())
        .drop("_r_partition", "_r_lo", "_r_hi")
    )


def _release(df: DataFrame) -> None:
    """Drop the blocks of a ``localCheckpoint`` now (else they wait for the driver's GC)."""
    try:
        df._jdf.logicalPlan().rdd().unpersist(False)
    except Exception as exc:  # py4j: the plan is not the LogicalRDD a checkpoint returns
        log.debug("could not release a checkpointed frame early: %s", exc)


def _semi(df: DataFrame, keys_df: DataFrame, keys: list[str]) -> DataFrame:
    condition = [df[k].eqNullSafe(keys_df[k]) for k in keys]
    return df.join(keys_df, condition, "left_semi")


def _anti(df: DataFrame, keys_df: DataFrame, keys: list[str]) -> DataFrame:
    condition = [df[k].eqNullSafe(keys_df[k]) for k in keys]
    return df.join(keys_df, condition, "left_anti")


def _shuffle(parts: list[DataFrame], keys: list[str]) -> DataFrame:
    """The parts in one frame, every row of a key in the same partition."""
    combined = parts[0]
    for part in parts[1:]:
        combined = combined.unionByName(part, allowMissingColumns=True)
    return combined.repartition(*keys)


def _arrow(frame: pl.DataFrame) -> pa.Table:
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def _changes_schema(
    valid: pa.Schema, spec: Scd2Spec, source_format: str, sequence_by: SequenceBy
) -> pa.Schema:
    return _arrow(scd2_changes(valid.empty_table(), spec, source_format, sequence_by)).schema


def _changes_fn(
    spec: Scd2Spec, source_format: str, sequence_by: SequenceBy, schema: pa.Schema
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow``: bronze-shaped rows → SCD2 change events."""

    def to_events(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                events = _arrow(
                    scd2_changes(pa.Table.from_batches([batch]), spec, source_format, sequence_by)
                )
                yield from events.cast(schema).to_batches()

    return to_events


def _by_role(batches: Iterator[pa.RecordBatch]) -> dict[str, pl.DataFrame] | None:
    tables = [pa.Table.from_batches([b]) for b in batches if b.num_rows]
    if not tables:
        return None
    frame = pl.from_arrow(pa.concat_tables(tables))
    assert isinstance(frame, pl.DataFrame)
    return {
        role: frame.filter(pl.col(_ROLE) == role).drop(_ROLE)
        for role in (_EVENT, _HISTORY, _ROW, _SEEN)
    }


def late_keys_df(
    rows: DataFrame, changes: DataFrame, seen: DataFrame | None, keys: list[str]
) -> DataFrame:
    """:func:`cdc.scd2.late_keys` as a Spark plan (no Python worker, no extra shuffle stage).

    A key is late when one of its changes is a tombstone or is sequenced before the greatest
    sequence the table has seen for it: its latest row's ``_seq_max`` (else the greater of
    ``_seq_last`` and ``_seq_close``), or its orphan marker's ``_seq_max``.
    """
    from pyspark.sql import functions as F

    seen_col = F.coalesce(F.col("_seq_max"), F.greatest("_seq_last", "_seq_close"))
    known = rows.groupBy(*keys).agg(F.max_by(seen_col, F.col("_seq_open")).alias("_seen"))
    if seen is not None:
        markers = seen.select(*keys, F.col("_seq_max").alias("_seen"))
        known = known.unionByName(markers).groupBy(*keys).agg(F.max("_seen").alias("_seen"))
    condition = [changes[k].eqNullSafe(known[k]) for k in keys]
    flagged = changes.join(known, condition, "left").select(
        *[changes[k] for k in keys], changes["_seq"], changes["_tombstone"], known["_seen"]
    )
    late = flagged.where(F.col("_tombstone") | (F.col("_seq") < F.col("_seen")))
    return late.select(*keys).distinct()


def _events(frame: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    return frame.select(*spec.keys, *spec.columns, "_op", "_seq", "_source_topic", "_tombstone")


def _result_schema(row: pa.Schema) -> pa.Schema:
    return pa.schema(
        [
            *row,
            pa.field(_ACTION, pa.string()),
            pa.field(_WAS_CURRENT, pa.bool_()),
            *(pa.field(c, pa.int64()) for c in _STATS),
        ]
    )


def _fold_fn(
    spec: Scd2Spec, schema: pa.Schema
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow``: one shuffle partition of every input a key needs → the rows to write.

    Output rows carry ``_cdc_action``: ``U`` (upsert a version), ``D`` (delete a version),
    ``O`` (an orphan marker: keys + ``_seq_max``) or ``S`` (the partition's counts).
    """
    keys = list(spec.keys)

    def fold(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        roles = _by_role(batches)
        if roles is None or roles[_EVENT].height == 0:
            return
        changes = _events(roles[_EVENT], spec)
        history = _events(roles[_HISTORY], spec) if roles[_HISTORY].height else None
        seen = roles[_SEEN].select(*keys, "_seq_max") if roles[_SEEN].height else None
        existing = roles[_ROW].select(spec.row_columns)
        late = late_keys(existing, changes, spec, seen)
        result = apply_scd2(existing, changes, spec, history=history, seen=seen, late=late)
        upserts = result.upserts.with_columns(
            pl.lit("U").alias(_ACTION), result.was_current.fill_null(True).alias(_WAS_CURRENT)
        )
        deletes = result.deletes.with_columns(
            pl.lit("D").alias(_ACTION), pl.col("is_current").alias(_WAS_CURRENT)
        )
        parts = [upserts, deletes]
        if result.orphans is not None and result.orphans.height:
            parts.append(result.orphans.with_columns(pl.lit("O").alias(_ACTION)))
        counts = (
            result.inserted,
            result.updated,
            result.closed,
            result.duplicate_events,
            late.height,
        )
        parts.append(
            pl.DataFrame(
                {_ACTION: ["S"], **{c: [n] for c, n in zip(_STATS, counts, strict=True)}},
                schema={_ACTION: pl.String, **dict.fromkeys(_STATS, pl.Int64)},
            )
        )
        out = pl.concat(parts, how="diagonal_relaxed")
        missing = [f.name for f in schema if f.name not in out.columns]
        table = _arrow(out.with_columns(pl.lit(None).alias(c) for c in missing))
        yield from table.select(schema.names).cast(schema).to_batches()

    return fold
