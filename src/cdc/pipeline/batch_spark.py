"""One micro-batch on delta-spark: everything runs on the executors, nothing is collected.

The engine's steps of :class:`cdc.pipeline.batch.BatchWriter`'s path, each a DataFrame; only counts
come back to the driver. The batch is read once (kept in the executors' memory): one
aggregation counts it (input, bronze, quarantine per reason, valid, expectation failures) and
fills that cache; bronze and quarantine are appends of it.

The SCD2 fold is the pure :func:`cdc.core.scd2.fold_pass`, run on key groups in passes, each a
shuffle of what its keys need by the key columns, each shuffle partition folded by one call
(many keys at once): first the batch's change events with the *current* rows of their keys
(the current partition only) and their orphan markers; keys with no current row (deleted
before, or new) and late keys come out of that pass as their events, and a second pass folds
them with every row they have (and, for late keys, their event history from bronze); a key
found late only then gets a third. An in-order batch of keys that all have a current row is
one pass. The fold also checks the rows each key will hold once merged
(:func:`cdc.core.scd2.post_merge_rows`), so the after-batch invariant check needs no second read.
The results are MERGEd as :func:`cdc.store.plan.scd2_merge_plan` says (deletion vectors on;
the current partition alone when no history row is rewritten).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from cdc.core.invariants import CheckReport, Violation, check_scd2
from cdc.core.ranges import TOPIC_ID_COLUMN, Ranges
from cdc.core.scd2 import (
    ACTION_COLUMN,
    ORPHAN_COLUMNS,
    WAS_CURRENT_COLUMN,
    Scd2Spec,
    empty_dimension,
    fold_pass,
    merge_source,
    post_merge_rows,
    unavailable_error,
    unresolvable_unavailable,
)
from cdc.core.sequence import SequenceBy
from cdc.errors import ConfigError
from cdc.ingest.changes import QUARANTINE_COLUMNS, fact_rows_spark, scd2_changes
from cdc.ingest.contracts import QuarantineReason
from cdc.pipeline.batch import BatchStats, BatchWriter
from cdc.pipeline.batch_check import (
    BATCH_EXAMPLES,
    in_kind_order,
    record_batch_check,
    valid_time_bounds,
)
from cdc.pipeline.expectations import ERROR_CODE, FLAGS_COLUMN, Counts
from cdc.runtime.jvm import optional_classpath
from cdc.store.base import WriteOutcome
from cdc.store.delta_spark import DeltaSparkStore
from cdc.store.plan import (
    APPEND_LAYOUTS,
    CURRENT_PARTITION,
    facts_merge_plan,
    scd2_merge_plan,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Row
    from pyspark.sql.types import StructType

__all__ = ["BATCH_CONF", "DistributedBatchWriter", "SparkBatch"]

log = logging.getLogger(__name__)

MAX_FOLD_PASSES = 3
"""Current rows; every row of the keys without one or late; the history of late keys."""

_ROLE = "_cdc_role"
_EVENT, _HISTORY, _ROW, _SEEN = "E", "H", "R", "S"
"""Fold inputs: the batch's events, events from bronze, dimension rows, orphan markers."""
_UPSERT, _DELETE, _ORPHAN, _TOTALS = "U", "D", "O", "T"
_NEED_ROWS, _NEED_HISTORY = "N", "L"
"""Fold outputs that carry a key's events to the next pass."""
_VIOLATIONS, _EXAMPLE = "C", "V"
_KIND, _DETAIL = "_cdc_kind", "_cdc_detail"
_REASONS = (*(r.value for r in QuarantineReason), ERROR_CODE)
"""The quarantine codes the counting job counts one by one (another falls back to a group-by)."""
_EVENT_ONLY = ("_op", "_seq", "_tombstone")
"""Columns of a change event that a dimension row does not have."""
_TOTAL_COLUMNS = (
    "_n_inserted",
    "_n_updated",
    "_n_closed",
    "_n_duplicates",
    "_n_late",
    "_n_upserts",
    "_n_deletes",
    "_n_orphans",
    "_n_history",
    "_n_need_rows",
    "_n_need_history",
    "_n_violations",
)
BATCH_CONF: dict[str, str] = {
    # A micro-batch's plans are small and their sizes known (a checkpointed fold, a kept
    # batch): adaptive execution only splits each plan into a job per stage and re-plans it
    # (Spark 4.1 turned it on for stateless streaming queries, SPARK-53941).
    "spark.sql.adaptive.enabled": "false",
}
"""Spark SQL properties of the streaming query's session for the delta-spark writer's batches
(``spark.batch_conf`` overrides them); each measured on its own in docs/performance.md."""

_LANDED = "_cdc_landed"
"""Batch column: bronze or quarantine already hold the row (a replay re-reads it)."""


@dataclass
class SparkBatch:
    """A micro-batch as Spark holds it: the kept batch, and its judged frames."""

    kept: DataFrame
    flagged: DataFrame | None = None
    counts: Row | None = None
    valid: DataFrame | None = None
    frames: dict[str, DataFrame] = field(default_factory=dict)
    markers: list[tuple[str, Column]] = field(default_factory=list)
    """Business columns a placeholder for an unchanged value fits, with the test for it
    (counted by the counting job as ``u_<i>``)."""


@dataclass
class _Totals:
    """What the passes of one batch's fold did (summed over partitions)."""

    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOTAL_COLUMNS, 0))
    violations: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[Violation]] = field(default_factory=dict)

    def add(self, rows: list[Row], keys: list[str]) -> None:
        for row in rows:
            action = row[ACTION_COLUMN]
            if action == _TOTALS:
                for name in _TOTAL_COLUMNS:
                    self.values[name] += int(row[name] or 0)
            elif action == _VIOLATIONS:
                kind = str(row[_KIND])
                self.violations[kind] = self.violations.get(kind, 0) + int(row["_n_violations"])
            elif action == _EXAMPLE:
                kind = str(row[_KIND])
                found = self.examples.setdefault(kind, [])
                if len(found) < BATCH_EXAMPLES:
                    key = {k: row[k] for k in keys}
                    found.append(Violation(kind, key, row["_seq_open"], str(row[_DETAIL])))

    def merge(self, other: _Totals) -> None:
        for name, value in other.values.items():
            self.values[name] += value
        for kind, count in other.violations.items():
            self.violations[kind] = self.violations.get(kind, 0) + count
        for kind, found in other.examples.items():
            kept = self.examples.setdefault(kind, [])
            kept.extend(found[: BATCH_EXAMPLES - len(kept)])

    def report(self) -> CheckReport:
        return CheckReport(counts=in_kind_order(self.violations), examples=self.examples)


class DistributedBatchWriter(BatchWriter[SparkBatch]):
    """The ``foreachBatch`` function of one pipeline on delta-spark."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same arguments as :class:`cdc.pipeline.batch.BatchWriter`."""
        super().__init__(*args, **kwargs)
        if any(uri.startswith("s3://") for uri in self.uris.values()) and not optional_classpath(
            "s3"
        ):
            raise ConfigError(
                f"lake.root {self.settings.lake.root} is on S3 and lake.writer is delta-spark,"
                " but the S3A JARs are not installed: run"
                " `python -m cdc.runtime.jvm install --profile s3` (the Docker image has them)"
            )
        self.store = DeltaSparkStore(self.settings.lake.resolved_storage_options())
        if self.expectations is not None:
            from pyspark.sql import SparkSession

            session = SparkSession.getActiveSession()
            if session is not None:  # start_query's session: Spark types the rules at start
                self.expectations.check_spark(session)

    # ------------------------------------------------------------------ the engine's steps

    def _hold(self, batch_df: DataFrame, stats: BatchStats) -> SparkBatch:
        conf = batch_df.sparkSession.conf  # the query's own session: no other query sees it
        for key, value in {**BATCH_CONF, **self.settings.spark.batch_conf}.items():
            if conf.get(key, None) != value:
                conf.set(key, value)
        self._session = batch_df.sparkSession
        return SparkBatch(batch_df.persist())

    def _release(self, batch: SparkBatch) -> None:
        batch.kept.unpersist()

    def _count(self, batch: SparkBatch, stats: BatchStats) -> None:
        """One aggregation reads the batch (fetch and decode on the executors, into the kept
        cache) and counts everything the path needs: no other job sees Kafka."""
        from pyspark.sql import functions as F

        flagged = _flag_landed(batch.kept, self._landed, self.pipeline.topic)
        landed = F.col(_LANDED)
        checks = self.expectations
        if checks is not None:  # drop failures become quarantine rows
            flagged = checks.flag_spark(flagged, landed)
        code = F.col("error_code")
        new_quarantine = code.isNotNull() & ~landed
        batch.markers = self._markers(batch.kept.schema)
        fresh_valid = code.isNull() & ~landed
        counts = flagged.agg(
            F.count(F.lit(1)).alias("n"),
            F.count_if(code.isNull() & ~landed).alias("b"),
            F.count_if(new_quarantine).alias("q"),
            F.count_if(code.isNull()).alias("v"),
            *(F.count_if(new_quarantine & (code == r)).alias(f"q_{r}") for r in _REASONS),
            *(checks.count_columns() if checks is not None else []),
            *(
                F.count_if(fresh_valid & m).alias(f"u_{i}")
                for i, (_, m) in enumerate(batch.markers)
            ),
        ).first()
        assert counts is not None
        batch.flagged, batch.counts = flagged, counts
        stats.input_rows = int(counts["n"])

    def _arrow_schema(self, batch: SparkBatch) -> pa.Schema:
        from pyspark.sql.pandas.types import to_arrow_schema

        return to_arrow_schema(batch.kept.schema, timezone="UTC")

    def _widen(self, role: str, incoming: pa.Schema) -> bool:
        return self.store.widen(self._session, self.uris[role], incoming) is not None

    def _judge(self, batch: SparkBatch, batch_id: int) -> Counts:
        assert self.expectations is not None
        assert batch.flagged is not None and batch.counts is not None
        return self.expectations.outcome_spark(batch.flagged, batch.counts, batch_id)

    def _split(
        self,
        batch: SparkBatch,
        batch_id: int,
        now: datetime,
        topic_id: str | None,
        stats: BatchStats,
    ) -> None:
        from pyspark.sql import functions as F

        flagged, counts = batch.flagged, batch.counts
        assert flagged is not None and counts is not None
        landed = F.col(_LANDED)
        valid = flagged.where(F.col("error_code").isNull()).drop(
            "error_code", "error", FLAGS_COLUMN
        )
        batch_col = F.lit(batch_id).cast("long")
        now_col, topic_col = F.lit(now).cast("timestamp"), F.lit(topic_id).cast("string")
        batch.frames["bronze"] = (
            valid.where(~landed)
            .drop(_LANDED)
            .withColumns(
                {"_batch_id": batch_col, "_ingested_at": now_col, TOPIC_ID_COLUMN: topic_col}
            )
        )
        batch.frames["quarantine"] = (
            flagged.where(F.col("error_code").isNotNull() & ~landed)
            .select(*QUARANTINE_COLUMNS)
            .withColumns(
                {"_batch_id": batch_col, "_quarantined_at": now_col, TOPIC_ID_COLUMN: topic_col}
            )
        )
        batch.valid = valid.drop(_LANDED)
        stats.bronze_rows, stats.quarantined = int(counts["b"]), int(counts["q"])
        stats.valid_rows = int(counts["v"])
        found = {r: int(counts[f"q_{r}"]) for r in _REASONS if counts[f"q_{r}"]}
        if sum(found.values()) < stats.quarantined:  # a code the list does not know: count all
            codes = batch.frames["quarantine"].groupBy("error_code").count().collect()
            found = {str(r["error_code"]): int(r["count"]) for r in codes}
        stats.quarantine_reasons = found

    def _markers(self, schema: StructType) -> list[tuple[str, Column]]:
        """The business columns of an SCD2 batch a placeholder fits, and the test for it."""
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import to_arrow_schema
        from pyspark.sql.types import ArrayType, BinaryType, StringType, StructType

        placeholders = self.settings.unavailable_values(self.name)
        if self.pipeline.kind != "scd2" or not placeholders:
            return []
        spec = self._scd2_spec(to_arrow_schema(schema, timezone="UTC"))
        row = schema["value"].dataType
        assert isinstance(row, StructType)
        path = "value"
        if self.pipeline.source_format == "envelope":
            row, path = row["after"].dataType, "value.after"
            assert isinstance(row, StructType)
        texts = list(placeholders)
        raw = [bytearray(t.encode()) for t in texts]
        found: list[tuple[str, Column]] = []
        for c in spec.columns:
            kind, col = row[c].dataType, F.col(path)[c]
            if isinstance(kind, StringType):
                found.append((c, col.isin(texts)))
            elif isinstance(kind, BinaryType):
                found.append((c, col.isin(raw)))
            elif isinstance(kind, ArrayType) and isinstance(
                kind.elementType, (StringType, BinaryType)
            ):
                inner = texts if isinstance(kind.elementType, StringType) else raw
                found.append((c, (F.size(col) == 1) & F.element_at(col, 1).isin(inner)))
        return [(c, F.coalesce(m, F.lit(False))) for c, m in found]

    def _unavailable(self, batch: SparkBatch, now: datetime, stats: BatchStats) -> None:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import to_arrow_schema

        counts, fresh, valid = batch.counts, batch.frames["bronze"], batch.valid
        assert counts is not None and valid is not None
        stats.unavailable_values = {
            c: int(counts[f"u_{i}"]) for i, (c, _) in enumerate(batch.markers) if counts[f"u_{i}"]
        }
        if not stats.unavailable_values:
            return
        p = self.pipeline
        spec = self._scd2_spec(to_arrow_schema(valid.schema, timezone="UTC"))
        keys = list(spec.keys)
        session = valid.sparkSession
        held_any = F.lit(False)
        for _, marker in batch.markers:
            held_any = held_any | marker
        # The keys holding a placeholder and without a row: usually none, then nothing more.
        held = fresh.where(held_any).select(*(F.col("key")[k].alias(k) for k in keys)).distinct()
        silver = self.store.read_df(session, self.uris["silver"])
        if silver is not None:  # the current partition first: most keys have a current row
            for current in (True, False):
                part = silver.where(F.col(CURRENT_PARTITION) == current).select(*keys)
                held = held.join(part, on=_null_safe(held, part, keys), how="left_anti")
                if current and held.isEmpty():
                    return
        unknown = held.collect()
        if not unknown:
            return
        wanted = session.createDataFrame(unknown, held.schema)
        rows = fresh.join(
            wanted, [fresh["key"][k].eqNullSafe(wanted[k]) for k in keys], "left_semi"
        ).toArrow()
        changes = scd2_changes(rows, spec, p.source_format, p.sequence_by)
        found = unresolvable_unavailable(changes, changes.select(keys).clear(), spec)
        if not found.height:
            return
        rejected = session.createDataFrame(
            [
                (int(part), int(offset), unavailable_error(cols))
                for part, offset, cols in found.iter_rows()
            ],
            "_r_partition int, _r_offset long, _r_error string",
        )
        on = (fresh["partition"] == rejected["_r_partition"]) & (
            fresh["offset"] == rejected["_r_offset"]
        )
        code = QuarantineReason.UNAVAILABLE_WITHOUT_PRIOR.value
        moved = fresh.join(F.broadcast(rejected), on, "inner").select(
            *QUARANTINE_COLUMNS[:-2],
            F.lit(code).alias("error_code"),
            F.col("_r_error").alias("error"),
            "_batch_id",
            F.lit(now).cast("timestamp").alias("_quarantined_at"),
            TOPIC_ID_COLUMN,
        )
        batch.frames["quarantine"] = batch.frames["quarantine"].unionByName(moved)
        batch.frames["bronze"] = fresh.join(F.broadcast(rejected), on, "left_anti")
        kept = (valid["partition"] == rejected["_r_partition"]) & (
            valid["offset"] == rejected["_r_offset"]
        )
        batch.valid = valid.join(F.broadcast(rejected), kept, "left_anti")
        n = found.height
        stats.bronze_rows -= n
        stats.valid_rows -= n
        stats.quarantined += n
        stats.quarantine_reasons[code] = stats.quarantine_reasons.get(code, 0) + n

    def _append(
        self, role: str, batch: SparkBatch, batch_id: int, now: datetime, topic_id: str | None
    ) -> WriteOutcome:
        return self.store.append(
            batch.frames[role],
            self.uris[role],
            self.txn(role, batch_id),
            layout=APPEND_LAYOUTS[role],
        )

    # ------------------------------------------------------------------------------ facts

    def _facts(self, batch: SparkBatch, batch_id: int, stats: BatchStats) -> None:
        assert batch.valid is not None
        event_id = self.pipeline.event_id
        assert event_id is not None
        rows = fact_rows_spark(batch.valid, event_id)
        uri, txn = self.uris["silver"], self.txn("silver", batch_id)
        created = not self.store.exists(uri)
        plan = facts_merge_plan(event_id)
        with stats.timed("merge"):
            outcome = self._with_retries(
                lambda: self.store.merge(rows, uri, plan, txn), batch_id, stats
            )
        if outcome.skipped:
            stats.skipped_tables.append("silver")
        unique = rows.count()
        if not outcome.skipped:
            stats.inserted = unique if created else outcome.rows
        stats.duplicates = stats.valid_rows - unique

    # ------------------------------------------------------------------------------- SCD2

    def _scd2(self, batch: SparkBatch, batch_id: int, stats: BatchStats) -> None:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

        assert batch.valid is not None
        valid = batch.valid
        p = self.pipeline
        session = valid.sparkSession
        spec = self._scd2_spec(to_arrow_schema(valid.schema, timezone="UTC"))
        keys = list(spec.keys)
        layout = _FoldLayout.build(
            to_arrow_schema(valid.schema, timezone="UTC"), spec, p.sequence_by, p.source_format
        )
        uri, txn = self.uris["silver"], self.txn("silver", batch_id)
        if self.store.committed(uri, txn):
            stats.skipped_tables.append("silver")
            return
        check = self.settings.check_invariants(self.name)
        # The valid times the check accepts (judged now, on the driver: one clock per batch).
        bounds = valid_time_bounds(self.settings, p) if check else None
        to_events = layout.to_events()
        events = valid.mapInArrow(to_events, from_arrow_schema(layout.events))
        # Each Delta table is planned once, and bronze (the raw log, the largest) only when a
        # late key needs its history: planning a scan reads the table's snapshot.
        silver = self.store.read_df(session, uri)
        orphans = self.store.read_df(session, self.uris["orphans"])
        bronze: DataFrame | None = None
        out_schema = from_arrow_schema(layout.output)
        totals = _Totals()
        results: list[DataFrame] = []
        try:
            with stats.timed("fold"):  # reads, shuffles and folds on the executors
                pending: DataFrame | None = None
                need_history = 0  # keys the last pass left for their history
                for number in range(1, MAX_FOLD_PASSES + 1):
                    first = number == 1
                    if first:
                        changes = events
                    else:
                        assert pending is not None
                        changes = pending.select(*layout.events.names)
                    # The keys to read rows for, without running the events' Python again: the
                    # batch's from its key struct, later passes' from their checkpointed events.
                    wanted = (
                        valid.select(*(F.col("key")[k].alias(k) for k in keys))
                        if first
                        else changes.select(*keys)
                    ).distinct()
                    late = None
                    if need_history:  # keys the last pass found late: their whole history
                        assert pending is not None
                        late = pending.where(F.col(ACTION_COLUMN) == _NEED_HISTORY)
                        late = late.select(*keys).distinct()
                    parts = [changes.withColumn(_ROLE, F.lit(_EVENT))]
                    if (
                        silver is None
                    ):  # no table yet: no rows, but the fold's input has their columns
                        rows = session.createDataFrame([], from_arrow_schema(layout.rows))
                    elif first:  # the current partition alone
                        rows = _semi(silver.where(F.col(CURRENT_PARTITION)), wanted, keys)
                    else:
                        # Every row: the keys left without a current row have only history; a
                        # late key's current row is read again with it.
                        rows = _semi(silver.where(~F.col(CURRENT_PARTITION)), wanted, keys)
                        if late is not None:
                            current = _semi(silver.where(F.col(CURRENT_PARTITION)), late, keys)
                            rows = rows.unionByName(current)
                    parts.append(rows.withColumn(_ROLE, F.lit(_ROW)))
                    if orphans is not None:  # markers written before the clock lack it
                        kept = [c for c in ORPHAN_COLUMNS if c in orphans.columns]
                        marks = _semi(orphans, wanted, keys).select(*keys, *kept)
                        parts.append(marks.withColumn(_ROLE, F.lit(_SEEN)))
                    if late is not None:
                        if bronze is None:
                            bronze = self.store.read_df(session, self.uris["bronze"])
                            assert bronze is not None  # the batch's rows were appended to it
                        condition = [bronze["key"][k].eqNullSafe(late[k]) for k in keys]
                        past = bronze.join(late, condition, "left_semi")
                        history = past.mapInArrow(to_events, from_arrow_schema(layout.events))
                        parts.append(history.withColumn(_ROLE, F.lit(_HISTORY)))
                    complete = not first or silver is None
                    fold = _fold_fn(spec, layout, complete=complete, check=check, bounds=bounds)
                    out = _shuffle(parts, keys).mapInArrow(fold, out_schema)
                    out = out.localCheckpoint(eager=True)
                    results.append(out)
                    found = out.where(
                        F.col(ACTION_COLUMN).isin(_TOTALS, _VIOLATIONS, _EXAMPLE)
                    ).collect()
                    this = _Totals()
                    this.add(found, keys)
                    totals.merge(this)
                    need_history = this.values["_n_need_history"]
                    if not (this.values["_n_need_rows"] or need_history):
                        break
                    pending = out.where(F.col(ACTION_COLUMN).isin(_NEED_ROWS, _NEED_HISTORY))
                else:
                    raise AssertionError(f"scd2 fold: keys left after {MAX_FOLD_PASSES} passes")
            values = totals.values
            with stats.timed("merge"):
                if values["_n_orphans"]:
                    orphan_rows = _union(
                        [r.where(F.col(ACTION_COLUMN) == _ORPHAN) for r in results]
                    ).select(*keys, *ORPHAN_COLUMNS)
                    self.store.append(
                        orphan_rows, self.uris["orphans"], self.txn("orphans", batch_id)
                    )
                if values["_n_upserts"] or values["_n_deletes"]:
                    source = _union(
                        [r.where(F.col(ACTION_COLUMN).isin(_UPSERT, _DELETE)) for r in results]
                    ).select(*layout.rows.names, ACTION_COLUMN, WAS_CURRENT_COLUMN)
                    plan = scd2_merge_plan(keys, current_only=not values["_n_history"])
                    self._with_retries(
                        lambda: self.store.merge(source, uri, plan, txn, materialized=True),
                        batch_id,
                        stats,
                        log_attempt=True,
                    )
        finally:
            for df in results:
                _release(df)
        stats.inserted, stats.updated = values["_n_inserted"], values["_n_updated"]
        stats.closed, stats.duplicates = values["_n_closed"], values["_n_duplicates"]
        stats.late_keys = values["_n_late"]
        if check:  # the rows were checked inside the fold; this reports what it found
            with stats.timed("check"):
                record_batch_check(self.name, stats, totals.report(), self.settings.lake.writer)


# ---------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _FoldLayout:
    """Arrow schemas of the fold's frames: change events, dimension rows, fold output."""

    spec: Scd2Spec
    valid: pa.Schema
    events: pa.Schema
    rows: pa.Schema
    output: pa.Schema
    source_format: str
    sequence_by: SequenceBy

    @classmethod
    def build(
        cls, valid: pa.Schema, spec: Scd2Spec, sequence_by: SequenceBy, source_format: str
    ) -> _FoldLayout:
        events = _arrow(scd2_changes(valid.empty_table(), spec, source_format, sequence_by))
        frame = pl.from_arrow(events)
        assert isinstance(frame, pl.DataFrame)
        rows = _arrow(empty_dimension(spec, dict(frame.schema))).schema
        extra = [
            *(events.schema.field(c) for c in _EVENT_ONLY),
            pa.field(ACTION_COLUMN, pa.string()),
            pa.field(WAS_CURRENT_COLUMN, pa.bool_()),
            *(pa.field(c, pa.int64()) for c in _TOTAL_COLUMNS),
            pa.field(_KIND, pa.string()),
            pa.field(_DETAIL, pa.string()),
        ]
        output = pa.schema([*rows, *extra])
        return cls(spec, valid, events.schema, rows, output, source_format, sequence_by)

    def to_events(self) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
        """``mapInArrow``: bronze-shaped rows → SCD2 change events."""
        spec, source_format, sequence_by, schema = (
            self.spec,
            self.source_format,
            self.sequence_by,
            self.events,
        )

        def to_events(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                if batch.num_rows:
                    events = _arrow(
                        scd2_changes(
                            pa.Table.from_batches([batch]), spec, source_format, sequence_by
                        )
                    )
                    yield from events.cast(schema).to_batches()

        return to_events


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


def _null_safe(left: DataFrame, right: DataFrame, keys: list[str]) -> list[Column]:
    return [left[k].eqNullSafe(right[k]) for k in keys]


def _semi(df: DataFrame, keys_df: DataFrame, keys: list[str]) -> DataFrame:
    condition = [df[k].eqNullSafe(keys_df[k]) for k in keys]
    return df.join(keys_df, condition, "left_semi")


def _union(frames: list[DataFrame]) -> DataFrame:
    combined = frames[0]
    for frame in frames[1:]:
        combined = combined.unionByName(frame)
    return combined


def _shuffle(parts: list[DataFrame], keys: list[str]) -> DataFrame:
    """The parts in one frame, every row of a key in the same partition."""
    combined = parts[0]
    for part in parts[1:]:
        combined = combined.unionByName(part, allowMissingColumns=True)
    return combined.repartition(*keys)


def _arrow(frame: pl.DataFrame) -> pa.Table:
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


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


def _fold_fn(
    spec: Scd2Spec,
    layout: _FoldLayout,
    *,
    complete: bool,
    check: bool,
    bounds: tuple[int, int] | None = None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow``: one shuffle partition of a pass's inputs → what the pass yields.

    Output rows carry ``_cdc_action``: ``U``/``D`` (the MERGE source), ``O`` (an orphan
    marker: keys + :data:`~cdc.core.scd2.ORPHAN_COLUMNS`), ``N``/``L`` (the events of a key the
    next pass folds, with every row; ``L``: and its history), ``T`` (the partition's totals),
    ``C`` (violations of one kind in the keys' merged rows) and ``V`` (examples of them).
    ``check``: check the
    keys' merged rows; ``bounds``: valid times outside ``(earliest, latest)`` (epoch ms) are
    violations too.
    """
    keys = list(spec.keys)
    event_columns = layout.events.names
    schema = layout.output

    def fold(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        roles = _by_role(batches)
        if roles is None or roles[_EVENT].height == 0:
            return
        changes = roles[_EVENT].select(event_columns)
        history = roles[_HISTORY].select(event_columns) if roles[_HISTORY].height else None
        # fold_pass takes what it needs of the rows and markers (a table written before
        # _valid_max existed has none: the fold reads that as a clock it must rebuild).
        seen = roles[_SEEN] if roles[_SEEN].height else None
        fp = fold_pass(roles[_ROW], changes, spec, complete=complete, seen=seen, history=history)
        result = fp.result
        source = merge_source(result)
        parts = [source]
        if result.orphans is not None and result.orphans.height:
            parts.append(result.orphans.with_columns(pl.lit(_ORPHAN).alias(ACTION_COLUMN)))
        for action, wanted in ((_NEED_ROWS, fp.need_rows), (_NEED_HISTORY, fp.need_history)):
            if wanted.height:
                carried = changes.join(wanted, on=keys, how="semi", nulls_equal=True)
                parts.append(carried.with_columns(pl.lit(action).alias(ACTION_COLUMN)))
        violations = 0
        if check:
            found = check_scd2(post_merge_rows(fp.existing, result, spec), keys, bounds)
            violations = found.height
            for (kind,), group in found.group_by("kind", maintain_order=True):
                parts.append(
                    pl.DataFrame(
                        {
                            ACTION_COLUMN: [_VIOLATIONS],
                            _KIND: [kind],
                            "_n_violations": [group.height],
                        }
                    )
                )
                examples = group.head(BATCH_EXAMPLES).unnest("key")
                parts.append(
                    examples.select(
                        *keys,
                        pl.col("seq_open").alias("_seq_open"),
                        pl.col("kind").alias(_KIND),
                        pl.col("detail").alias(_DETAIL),
                        pl.lit(_EXAMPLE).alias(ACTION_COLUMN),
                    )
                )
        history_rows = int(source.filter(~pl.col(WAS_CURRENT_COLUMN)).height)
        totals = (
            result.inserted,
            result.updated,
            result.closed,
            result.duplicate_events,
            fp.late,
            result.upserts.height,
            result.deletes.height,
            0 if result.orphans is None else result.orphans.height,
            history_rows,
            fp.need_rows.height,
            fp.need_history.height,
            violations,
        )
        parts.append(
            pl.DataFrame(
                {
                    ACTION_COLUMN: [_TOTALS],
                    **{c: [n] for c, n in zip(_TOTAL_COLUMNS, totals, strict=True)},
                },
                schema={ACTION_COLUMN: pl.String, **dict.fromkeys(_TOTAL_COLUMNS, pl.Int64)},
            )
        )
        out = pl.concat(parts, how="diagonal_relaxed")
        missing = [f.name for f in schema if f.name not in out.columns]
        table = _arrow(out.with_columns(pl.lit(None).alias(c) for c in missing))
        yield from table.select(schema.names).cast(schema).to_batches()

    return fold
