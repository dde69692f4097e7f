"""One micro-batch on delta-rs, in one process: the batch is collected to the driver as Arrow.

The batch goes one way: split (pure, :mod:`cdc.changes`) → bronze and quarantine appends →
state read (:func:`read_fold_state`) → SCD2 fold (pure, :func:`cdc.scd2.apply_scd2`) → one
MERGE; facts are an insert-only MERGE on the event id. The sinks only read and write; every
decision (which keys are late, which history to read) is made here.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from cdc.batch import BatchStats, BatchWriter
from cdc.changes import fact_rows, scd2_changes, split_batch
from cdc.scd2 import Scd2Spec, apply_scd2, empty_dimension, late_keys
from cdc.store.delta_rs import CURRENT_PARTITION, DeltaSink
from cdc.topic_identity import BROKER_PATIENCE_S, check_topic_identity
from cdc.verify import check_keys_local, record_batch_check, valid_time_bounds

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["LocalBatchWriter", "read_fold_state"]

log = logging.getLogger(__name__)


class LocalBatchWriter(BatchWriter):
    """The ``foreachBatch`` function of one pipeline on delta-rs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same arguments as :class:`cdc.batch.BatchWriter`."""
        super().__init__(*args, **kwargs)
        storage = self.settings.lake.resolved_storage_options()
        # SCD2 history is append-only in its own partition; a MERGE rewrites current rows only.
        partitions = {"silver": [CURRENT_PARTITION]} if self.pipeline.kind == "scd2" else {}
        self.sinks = {
            role: DeltaSink(uri, storage, partitions.get(role)) for role, uri in self.uris.items()
        }

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        table = batch_df.toArrow()
        read = time.monotonic() - started
        # After the read: a topic recreated while the batch was fetched is caught here, before
        # anything is written. A broker that is briefly away is waited for, as Spark's source
        # waits for it.
        topic_id = check_topic_identity(
            self.settings, self.name, self.checkpoint, patience_s=BROKER_PATIENCE_S
        )
        stats = self.process(table, batch_id, datetime.now(UTC), topic_id)
        stats.phases["read"] = read
        stats.seconds = time.monotonic() - started
        self._report(stats)

    def process(
        self, table: Any, batch_id: int, now: datetime, topic_id: str | None = None
    ) -> BatchStats:
        """Write one decoded batch (Arrow) to bronze, quarantine and silver.

        ``topic_id`` is the Kafka id of the topic the batch was read from, kept on every
        bronze and quarantine row (:data:`cdc.landed.TOPIC_ID_COLUMN`).
        """
        stats = BatchStats(batch_id=batch_id, input_rows=table.num_rows)
        if self.expectations is not None:  # drop failures become quarantine rows; fail raises
            with stats.timed("bronze"):
                table, stats.expectation_failures = self.expectations.apply(
                    table, batch_id, self._landed
                )
        split = split_batch(table, batch_id, now, topic_id)
        if self._landed:
            split = split.without_landed(self._landed)
        stats.bronze_rows, stats.quarantined = split.bronze.num_rows, split.quarantine.num_rows
        if split.quarantine.num_rows:
            codes = split.quarantine.column("error_code").value_counts().to_pylist()
            stats.quarantine_reasons = {str(c["values"]): int(c["counts"]) for c in codes}
        self._fault("before-commit", batch_id)
        for role, data in (("bronze", split.bronze), ("quarantine", split.quarantine)):
            with stats.timed("bronze"):
                skipped = (
                    data.num_rows
                    and self.sinks[role].append(data, self.txn(role, batch_id)).skipped
                )
            if skipped:
                stats.skipped_tables.append(role)
        self._count_expectations(stats)
        self._fault("mid-commit", batch_id)
        if split.valid.num_rows:
            if self.pipeline.kind == "scd2":
                self._merge_scd2(split.valid, batch_id, stats)
            else:
                self._merge_facts(split.valid, batch_id, stats)
        self._fault("after-commit", batch_id)
        return stats

    def _merge_scd2(self, valid: Any, batch_id: int, stats: BatchStats) -> None:
        spec = self._scd2_spec(valid.schema)
        p = self.pipeline
        changes = scd2_changes(valid, spec, p.source_format, p.sequence_by)
        keys = list(spec.keys)
        sink, orphans = self.sinks["silver"], self.sinks["orphans"]
        txn = self.txn("silver", batch_id)

        def merge_once() -> None:
            if sink.committed(txn):
                stats.skipped_tables.append("silver")
                return
            with stats.timed("state"):
                seen = orphans.read_keys(changes.select(keys).unique())
                existing, late = read_fold_state(sink, changes, spec, seen)
                history = self._history(late, spec) if late.height else None
            with stats.timed("fold"):
                result = apply_scd2(existing, changes, spec, history=history, seen=seen, late=late)
            with stats.timed("merge"):
                # Orphans first: if we die before the MERGE, the re-run still sees them.
                if result.orphans is not None and result.orphans.height:
                    orphans.append(
                        result.orphans.to_arrow(compat_level=pl.CompatLevel.oldest()),
                        self.txn("orphans", batch_id),
                    )
                sink.merge_scd2(result, keys, txn)
            stats.inserted, stats.updated = result.inserted, result.updated
            stats.closed, stats.duplicates = result.closed, result.duplicate_events
            stats.late_keys = late.height

        self._with_retries(merge_once, batch_id, stats, log_attempt=True)
        if self.settings.check_invariants(self.name):
            with stats.timed("check"):  # the committed rows of the batch's keys
                bounds = valid_time_bounds(self.settings, p)
                report = check_keys_local(sink, changes.select(keys).unique(), bounds)
            record_batch_check(self.name, stats, report, self.settings.lake.writer)

    def _history(self, late: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame | None:
        """Every change event ever received for ``late`` keys, from bronze (the raw log)."""
        p = self.pipeline
        first = spec.keys[0]
        rows = self.sinks["bronze"].read_where(f"key.{first}", late.get_column(first))
        if rows is None or rows.height == 0:
            return None
        events = scd2_changes(
            rows.to_arrow(compat_level=pl.CompatLevel.oldest()),
            spec,
            p.source_format,
            p.sequence_by,
        )
        return events.join(late, on=list(spec.keys), how="semi", nulls_equal=True)

    def _merge_facts(self, valid: Any, batch_id: int, stats: BatchStats) -> None:
        event_id = self.pipeline.event_id
        assert event_id is not None
        rows = fact_rows(valid, event_id)
        outcome = self._with_retries(
            lambda: self.sinks["silver"].insert_new(rows, event_id, self.txn("silver", batch_id)),
            batch_id,
            stats,
        )
        if outcome.skipped:
            stats.skipped_tables.append("silver")
        stats.inserted = outcome.rows
        stats.duplicates = int(valid.num_rows) - rows.height


def read_fold_state(
    sink: DeltaSink, changes: pl.DataFrame, spec: Scd2Spec, seen: pl.DataFrame | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The dimension rows an SCD2 fold of ``changes`` needs, and the batch's late keys.

    The rows are each affected key's latest row, plus every row of the late keys (see
    :func:`cdc.scd2.late_keys`, computed once per key here). With the dimension partitioned
    by ``is_current``, a key's current row *is* its latest row: its lateness is known from
    that row alone, and history is read only for late keys and keys without a current row
    (deleted, or new). The read follows the batch's keys, not the length of the history.
    Unpartitioned (an older table): every row of the keys.

    Returns:
        ``(existing, late)``: rows in :attr:`Scd2Spec.row_columns` layout (empty when there
        is no table yet), and the late keys (key columns).
    """
    keys = list(spec.keys)
    affected = changes.select(keys).unique()
    if CURRENT_PARTITION not in sink.partition_columns():
        rows = sink.read_keys(affected)
        existing = (
            _with_columns_of(rows, changes, spec)
            if rows is not None
            else empty_dimension(spec, dict(changes.schema))
        )
        return existing, late_keys(existing, changes, spec, seen)
    current = sink.read_keys(affected, current=True)
    if current is None:  # no table yet
        existing = empty_dimension(spec, dict(changes.schema))
        return existing, late_keys(existing, changes, spec, seen)
    current = _with_columns_of(current, changes, spec)
    with_current = current.select(keys).unique()
    late = late_keys(current, _semi(changes, with_current, keys), spec, seen)
    no_current = affected.join(with_current, on=keys, how="anti", nulls_equal=True)
    history_keys = pl.concat([no_current, late])
    if history_keys.height == 0:
        return current, late
    past = sink.read_keys(history_keys, current=False)
    assert past is not None
    past = _with_columns_of(past, changes, spec)
    existing = pl.concat([current, past], how="diagonal_relaxed")
    if no_current.height:
        # Keys without a current row: their latest row is in the history just read.
        late_past = late_keys(
            _semi(past, no_current, keys), _semi(changes, no_current, keys), spec, seen
        )
        late = pl.concat([late, late_past])
    return existing, late


def _semi(frame: pl.DataFrame, keys_frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    return frame.join(keys_frame, on=keys, how="semi", nulls_equal=True)


def _with_columns_of(rows: pl.DataFrame, changes: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Rows written before the contract gained a column get it as null (schema evolution)."""
    missing = [c for c in (*spec.keys, *spec.columns) if c not in rows.columns]
    if not missing:
        return rows
    return rows.with_columns(pl.lit(None, dtype=changes.schema[c]).alias(c) for c in missing)
