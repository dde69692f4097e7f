"""One micro-batch on delta-rs, in one process: the batch is collected to the driver as Arrow.

The engine's steps of :class:`cdc.pipeline.batch.BatchWriter`'s path: the batch is collected once;
expectations, the split and the fact projection are the pure functions of
:mod:`cdc.pipeline.expectations` and :mod:`cdc.ingest.changes`; the SCD2 fold runs the passes of
:func:`cdc.core.scd2.fold_pass` (current rows of the batch's keys; then every row of keys with no
current row or late; then the event history of late keys, from bronze), and the result is one
MERGE rendered from :func:`cdc.store.plan.scd2_merge_plan` by
:class:`~cdc.store.delta_rs.DeltaSink`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from cdc.core.invariants import check_scd2, summarize
from cdc.core.scd2 import (
    FoldPass,
    Scd2Spec,
    empty_dimension,
    fold_pass,
    merge_source,
    post_merge_rows,
    touches_history,
    unavailable_counts,
    unavailable_error,
    unresolvable_unavailable,
)
from cdc.ingest.changes import SplitBatch, fact_rows, scd2_changes, split_batch
from cdc.ingest.contracts import QuarantineReason
from cdc.pipeline.batch import BatchStats, BatchWriter
from cdc.pipeline.batch_check import BATCH_EXAMPLES, record_batch_check, valid_time_bounds
from cdc.pipeline.expectations import Counts
from cdc.store.base import WriteOutcome
from cdc.store.delta_rs import DeltaSink
from cdc.store.plan import (
    APPEND_LAYOUTS,
    CURRENT_PARTITION,
    facts_merge_plan,
    scd2_merge_plan,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["LocalBatch", "LocalBatchWriter", "fold_passes"]

log = logging.getLogger(__name__)

MAX_FOLD_PASSES = 3
"""Current rows; every row of the keys without one or late; the history of late keys."""


@dataclass
class LocalBatch:
    """A micro-batch collected as Arrow, and its split once judged."""

    table: pa.Table
    split: SplitBatch | None = None
    changes: pl.DataFrame | None = None
    """The change events of ``split.valid``, when a step before the fold made them (the TOAST
    check, on a batch with nothing landed before and nothing it quarantined)."""


class LocalBatchWriter(BatchWriter[LocalBatch]):
    """The ``foreachBatch`` function of one pipeline on delta-rs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same arguments as :class:`cdc.pipeline.batch.BatchWriter`."""
        super().__init__(*args, **kwargs)
        storage = self.settings.lake.resolved_storage_options()
        self.sinks = {role: DeltaSink(uri, storage) for role, uri in self.uris.items()}

    def process(
        self, table: pa.Table, batch_id: int, now: datetime, topic_id: str | None = None
    ) -> BatchStats:
        """Write one decoded batch (Arrow) to bronze, quarantine and silver, as
        ``foreachBatch`` does but without asking the broker for the topic's id.

        ``topic_id`` is the Kafka id of the topic the batch was read from, kept on every
        bronze and quarantine row (:data:`cdc.core.ranges.TOPIC_ID_COLUMN`).
        """
        started = time.monotonic()
        stats = BatchStats(batch_id=batch_id)
        self._run(LocalBatch(table), batch_id, now, stats, topic_id, check_topic=False)
        stats.seconds = time.monotonic() - started
        return stats

    # ------------------------------------------------------------------ the engine's steps

    def _hold(self, batch_df: DataFrame, stats: BatchStats) -> LocalBatch:
        started = time.monotonic()
        table = batch_df.toArrow()
        stats.phases["read"] = time.monotonic() - started
        return LocalBatch(table)

    def _arrow_schema(self, batch: LocalBatch) -> pa.Schema:
        return batch.table.schema

    def _widen(self, role: str, incoming: pa.Schema) -> bool:
        return self.sinks[role].widen(incoming) is not None

    def _count(self, batch: LocalBatch, stats: BatchStats) -> None:
        stats.input_rows = batch.table.num_rows

    def _judge(self, batch: LocalBatch, batch_id: int) -> Counts:
        assert self.expectations is not None
        batch.table, counts = self.expectations.apply(batch.table, batch_id, self._landed)
        return counts

    def _split(
        self,
        batch: LocalBatch,
        batch_id: int,
        now: datetime,
        topic_id: str | None,
        stats: BatchStats,
    ) -> None:
        split = split_batch(batch.table, batch_id, now, topic_id)
        batch.split = split = split.without_landed(self._landed) if self._landed else split
        stats.bronze_rows, stats.quarantined = split.bronze.num_rows, split.quarantine.num_rows
        stats.valid_rows = split.valid.num_rows
        if split.quarantine.num_rows:
            codes = split.quarantine.column("error_code").value_counts().to_pylist()
            stats.quarantine_reasons = {str(c["values"]): int(c["counts"]) for c in codes}

    def _unavailable(self, batch: LocalBatch, now: datetime, stats: BatchStats) -> None:
        assert batch.split is not None
        split = batch.split
        fresh = split.bronze  # a landed record was judged when it landed
        if not fresh.num_rows:
            return
        p = self.pipeline
        spec = self._scd2_spec(split.valid.schema)
        changes = scd2_changes(fresh, spec, p.source_format, p.sequence_by)
        stats.unavailable_values = unavailable_counts(changes, spec)
        if not stats.unavailable_values:
            if fresh.num_rows == split.valid.num_rows:  # valid is bronze: the fold's events
                batch.changes = changes
            return
        keys = list(spec.keys)
        held = changes.filter(pl.col("_op") == "U").select(keys).unique()
        rows = self.sinks["silver"].read_keys(held)
        with_rows = held.clear() if rows is None else rows.select(keys).unique()
        found = unresolvable_unavailable(changes, with_rows, spec)
        if not found.height:
            return
        rejected = pa.table(
            {
                "partition": found.get_column("_source_partition").to_arrow(),
                "offset": found.get_column("_source_offset").to_arrow(),
                "error": pa.array(
                    [unavailable_error(c) for c in found.get_column("_columns").to_list()],
                    pa.string(),
                ),
            }
        )
        code = QuarantineReason.UNAVAILABLE_WITHOUT_PRIOR.value
        batch.split = split = split.quarantining(rejected, code, now)
        n = found.height
        stats.bronze_rows, stats.quarantined = split.bronze.num_rows, split.quarantine.num_rows
        stats.valid_rows = split.valid.num_rows
        stats.quarantine_reasons[code] = stats.quarantine_reasons.get(code, 0) + n

    def _append(
        self, role: str, batch: LocalBatch, batch_id: int, now: datetime, topic_id: str | None
    ) -> WriteOutcome:
        assert batch.split is not None
        data = batch.split.bronze if role == "bronze" else batch.split.quarantine
        return self.sinks[role].append(data, self.txn(role, batch_id), layout=APPEND_LAYOUTS[role])

    def _scd2(self, batch: LocalBatch, batch_id: int, stats: BatchStats) -> None:
        assert batch.split is not None
        valid = batch.split.valid
        spec = self._scd2_spec(valid.schema)
        p = self.pipeline
        changes = batch.changes
        if changes is None:
            changes = scd2_changes(valid, spec, p.source_format, p.sequence_by)
        sink, orphans = self.sinks["silver"], self.sinks["orphans"]
        txn = self.txn("silver", batch_id)
        check = self.settings.check_invariants(self.name)

        def merge_once() -> list[FoldPass]:
            if sink.committed(txn):
                stats.skipped_tables.append("silver")
                return []
            passes = fold_passes(
                changes,
                spec,
                sink,
                orphans,
                lambda keys: self._history(keys, spec),
                stats,
            )
            with stats.timed("merge"):
                orphan_rows = [fp.result.orphans for fp in passes if fp.result.orphans is not None]
                found = pl.concat(orphan_rows) if orphan_rows else None
                # Orphans first: if we die before the MERGE, the re-run still sees them.
                if found is not None and found.height:
                    orphans.append(_arrow(found), self.txn("orphans", batch_id))
                source = pl.concat(
                    [merge_source(fp.result) for fp in passes], how="vertical_relaxed"
                )
                if source.height:
                    plan = scd2_merge_plan(spec.keys, current_only=not touches_history(source))
                    sink.merge(_arrow(source), plan, txn)
            return passes

        passes = self._with_retries(merge_once, batch_id, stats, log_attempt=True)
        for fp in passes:
            stats.inserted += fp.result.inserted
            stats.updated += fp.result.updated
            stats.closed += fp.result.closed
            stats.duplicates += fp.result.duplicate_events
            stats.late_keys += fp.late
        if passes and check:
            with stats.timed("check"):  # the keys' rows once merged: the fold has them
                merged = pl.concat(
                    [post_merge_rows(fp.existing, fp.result, spec) for fp in passes],
                    how="vertical_relaxed",
                )
                bounds = valid_time_bounds(self.settings, self.pipeline)
                found_violations = check_scd2(merged, list(spec.keys), bounds)
                report = summarize(found_violations, BATCH_EXAMPLES, rows=merged.height)
            record_batch_check(self.name, stats, report, self.settings.lake.writer)

    def _history(self, keys: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame | None:
        """Every change event ever received for ``keys``, from bronze (the raw log)."""
        p = self.pipeline
        first = spec.keys[0]
        rows = self.sinks["bronze"].read_where(f"key.{first}", keys.get_column(first))
        if rows is None or rows.height == 0:
            return None
        events = scd2_changes(_arrow(rows), spec, p.source_format, p.sequence_by)
        return events.join(keys, on=list(spec.keys), how="semi", nulls_equal=True)

    def _facts(self, batch: LocalBatch, batch_id: int, stats: BatchStats) -> None:
        assert batch.split is not None
        valid = batch.split.valid
        event_id = self.pipeline.event_id
        assert event_id is not None
        rows = fact_rows(valid, event_id)
        plan = facts_merge_plan(event_id)
        outcome = self._with_retries(
            lambda: self.sinks["silver"].merge(_arrow(rows), plan, self.txn("silver", batch_id)),
            batch_id,
            stats,
        )
        if outcome.skipped:
            stats.skipped_tables.append("silver")
        stats.inserted = outcome.rows
        stats.duplicates = int(valid.num_rows) - rows.height


def fold_passes(
    changes: pl.DataFrame,
    spec: Scd2Spec,
    silver: DeltaSink,
    orphans: DeltaSink | None,
    history: Callable[[pl.DataFrame], pl.DataFrame | None],
    stats: BatchStats | None = None,
) -> list[FoldPass]:
    """Fold a batch's changes in the passes of :func:`cdc.core.scd2.fold_pass`, each reading what
    its keys need: their current rows; every row of the keys without one or late; for late
    keys, their event history too.

    Args:
        changes: the batch's change events.
        spec: the dimension's spec.
        silver: the dimension.
        orphans: the dimension's orphan markers (None: none kept).
        history: every event received for some keys (from bronze), or None.
        stats: the batch's stats (time of the reads and of the folds).

    Returns:
        The passes, each with its result (their MERGE sources are disjoint by key).
    """
    keys = list(spec.keys)
    stats = stats or BatchStats(batch_id=-1)
    partitioned = CURRENT_PARTITION in silver.partition_columns()
    passes: list[FoldPass] = []
    pending = changes
    history_keys = changes.clear().select(keys)
    events: pl.DataFrame | None = None
    current: pl.DataFrame | None = None  # the first pass's read of the current partition
    for number in range(1, MAX_FOLD_PASSES + 1):
        with stats.timed("state"):
            wanted = pending.select(keys).unique()
            seen = orphans.read_keys(wanted) if orphans is not None else None
            if number == 1:  # current rows only (their partition, when the table has it)
                rows = silver.read_keys(wanted, current=True if partitioned else None)
                current = rows if partitioned else None
                complete = rows is None or not partitioned
            elif current is not None:  # every row: the history partition, and those read
                past = silver.read_keys(wanted, current=False)
                kept = current.join(wanted, on=keys, how="semi", nulls_equal=True)
                rows = kept if past is None else pl.concat([kept, past], how="diagonal_relaxed")
                complete = True
            else:
                rows = silver.read_keys(wanted)
                complete = True
            existing = (
                _with_columns_of(rows, changes, spec)
                if rows is not None
                else empty_dimension(spec, dict(changes.schema))
            )
            if history_keys.height:
                events = history(history_keys)
        with stats.timed("fold"):
            fp = fold_pass(existing, pending, spec, complete=complete, seen=seen, history=events)
        passes.append(fp)
        more = fp.pending
        if more.height == 0:
            return passes
        pending = pending.join(more, on=keys, how="semi", nulls_equal=True)
        history_keys = pl.concat([history_keys, fp.need_history]).unique()
    raise AssertionError(f"scd2 fold: keys left after {MAX_FOLD_PASSES} passes")


def _arrow(frame: pl.DataFrame) -> pa.Table:
    # Classic Arrow types (large_string, not string_view) for delta-rs and pyarrow kernels.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def _with_columns_of(rows: pl.DataFrame, changes: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Rows written before the contract gained a column get it as null (schema evolution)."""
    missing = [c for c in (*spec.keys, *spec.columns) if c not in rows.columns]
    if not missing:
        return rows
    return rows.with_columns(pl.lit(None, dtype=changes.schema[c]).alias(c) for c in missing)
