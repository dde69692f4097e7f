"""Delta writes with delta-rs, each commit carrying an app transaction (exactly-once).

Every write names a :class:`Txn` — ``app_id`` (pipeline + table) and ``version`` (the
micro-batch's number). A write whose version the table has already committed for that
app id is skipped: after a crash, Spark re-runs the last uncommitted batch with the same
id and offsets, and each table applies it at most once. The distributed writer with the
same guarantees is :mod:`cdc.store.delta_spark`.
"""

from __future__ import annotations

import logging

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from cdc.errors import CommitConflictError, TableWriteError
from cdc.rust_output import rust_panics_logged
from cdc.scd2 import Scd2Result
from cdc.store.base import TableStore, Txn, WriteOutcome

__all__ = ["DeltaRsStore", "DeltaSink", "Txn", "WriteOutcome"]

log = logging.getLogger(__name__)
_ACTION = "_cdc_action"
_WAS_CURRENT = "_cdc_was_current"
CURRENT_PARTITION = "is_current"


def _arrow(frame: pl.DataFrame) -> pa.Table:
    # Classic Arrow types (large_string, not string_view) for delta-rs and pyarrow kernels.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


class DeltaSink:
    """One Delta table (local path or object-store URI) written idempotently.

    ``partition_by`` applies when the sink creates the table; an existing table keeps the
    layout it was created with (a dimension created unpartitioned still works, but every
    MERGE then rewrites its history too).
    """

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, str] | None = None,
        partition_by: list[str] | None = None,
    ) -> None:
        self.uri = uri
        self.storage_options = storage_options or {}
        self.partition_by = partition_by
        self._table: DeltaTable | None = None
        self._partition_columns: list[str] | None = None

    def partition_columns(self) -> list[str]:
        """The existing table's partition columns (empty when unpartitioned or absent).

        Fixed when the table is created, so read once.
        """
        if self._partition_columns is None:
            table = self.table()
            if table is None:
                return []
            self._partition_columns = list(table.metadata().partition_columns)
        return self._partition_columns

    def table(self) -> DeltaTable | None:
        """The table at its latest version, or None when it does not exist yet."""
        if self._table is None:
            try:
                self._table = DeltaTable(self.uri, storage_options=self.storage_options)
            except TableNotFoundError:
                return None
        else:
            self._table.update_incremental()
        return self._table

    def committed(self, txn: Txn) -> bool:
        """True when ``txn.version`` (or a later one) is already committed for ``txn.app_id``."""
        table = self.table()
        if table is None:
            return False
        done = table.transaction_version(txn.app_id)
        return done is not None and done >= txn.version

    def _props(self, txn: Txn, operation: str) -> CommitProperties:
        return CommitProperties(
            app_transactions=[Transaction(app_id=txn.app_id, version=txn.version)],
            custom_metadata={
                "cdc.operation": operation,
                "cdc.app_id": txn.app_id,
                "cdc.batch": txn.version,
            },
            max_commit_retries=20,
        )

    def append(self, data: pa.Table, txn: Txn, operation: str = "append") -> WriteOutcome:
        """Append rows (schema may gain fields) in one commit tagged with ``txn``."""
        if self.committed(txn):
            return WriteOutcome(skipped=True)
        creating = self.table() is None
        try:
            with rust_panics_logged():
                write_deltalake(
                    self.uri,
                    data,
                    mode="append",
                    partition_by=self.partition_by if creating else None,
                    schema_mode="merge",
                    storage_options=self.storage_options,
                    commit_properties=self._props(txn, operation),
                )
        except (DeltaError, OSError) as exc:
            raise TableWriteError(f"append to {self.uri} failed: {exc}") from exc
        return WriteOutcome(skipped=False, rows=data.num_rows, table_version=self._version())

    def _version(self) -> int | None:
        table = self.table()
        return None if table is None else table.version()

    def read_where(self, column: str, values: pl.Series) -> pl.DataFrame | None:
        """Rows whose ``column`` (a dotted path into structs allowed) is in ``values``."""
        table = self.table()
        if table is None:
            return None
        root, *path = column.split(".")
        expr = pl.col(root)
        for part in path:
            expr = expr.struct.field(part)
        return (
            pl.scan_delta(table, version=table.version())
            .filter(expr.is_in(values.unique().implode()))
            .collect()
        )

    def read_keys(self, keys: pl.DataFrame, current: bool | None = None) -> pl.DataFrame | None:
        """Rows whose key columns match a row of ``keys`` (None when no table yet).

        ``current`` restricts the read to rows with that ``is_current`` (a partition filter
        when the table is partitioned by it, so the other partition is not read).
        """
        table = self.table()
        if table is None:
            return None
        key_cols = keys.columns
        first = key_cols[0]
        wanted = keys.get_column(first).unique()
        where = pl.col(first).is_in(wanted.implode())
        if current is not None:
            where = (pl.col(CURRENT_PARTITION) == current) & where
        # Polars' Delta scan prunes partitions, files and row groups (the key's statistics),
        # and copes with the string_view columns DataFusion-written files carry (pyarrow's
        # scanner does not).
        found = pl.scan_delta(table, version=table.version()).filter(where).collect()
        if len(key_cols) > 1:
            found = found.join(keys.unique(), on=key_cols, how="semi", nulls_equal=True)
        return found

    def merge_scd2(self, result: Scd2Result, keys: list[str], txn: Txn) -> WriteOutcome:
        """Apply an SCD2 result in one MERGE on ``(keys, _seq_open)``.

        When the table is partitioned by ``is_current``, each source row also names the
        partition of the row it rewrites, so the MERGE reads and rewrites only the partitions
        it touches: the current rows, plus history only for late keys. Closed versions move to
        the history partition, which otherwise only grows by appends.
        """
        if result.upserts.height == 0 and result.deletes.height == 0:
            return WriteOutcome(skipped=False)
        if self.committed(txn):
            return WriteOutcome(skipped=True)
        if self.table() is None:
            # First batch: nothing to match; the MERGE's inserts are the whole result.
            return self.append(_arrow(result.upserts), txn, operation="scd2-create")
        by_partition = CURRENT_PARTITION in self.partition_columns()
        upserts = result.upserts.with_columns(pl.lit("U").alias(_ACTION))
        deletes = result.deletes.with_columns(pl.lit("D").alias(_ACTION))
        extra = [_ACTION]
        if by_partition:
            # A new row matches nothing whatever this says; saying "current" keeps the
            # MERGE's partition filter to {true} when no history row is rewritten.
            upserts = upserts.with_columns(result.was_current.fill_null(True).alias(_WAS_CURRENT))
            deletes = deletes.with_columns(pl.col(CURRENT_PARTITION).alias(_WAS_CURRENT))
            extra.append(_WAS_CURRENT)
        source = pl.concat([upserts, deletes], how="diagonal_relaxed").select(upserts.columns)
        on = " AND ".join(f"t.{c} = s.{c}" for c in [*keys, "_seq_open"])
        if by_partition:
            on += f" AND t.{CURRENT_PARTITION} = s.{_WAS_CURRENT}"
        return self._merge(
            _arrow(source),
            on,
            txn,
            lambda m: (
                m.when_matched_delete(predicate=f"s.{_ACTION} = 'D'")
                .when_matched_update_all(predicate=f"s.{_ACTION} = 'U'", except_cols=extra)
                .when_not_matched_insert_all(predicate=f"s.{_ACTION} = 'U'", except_cols=extra)
            ),
            "scd2-merge",
        )

    def insert_new(self, rows: pl.DataFrame, id_column: str, txn: Txn) -> WriteOutcome:
        """Insert rows whose ``id_column`` is not in the table yet (fact dedup)."""
        if rows.height == 0:
            return WriteOutcome(skipped=False)
        if self.committed(txn):
            return WriteOutcome(skipped=True)
        if self.table() is None:
            return self.append(_arrow(rows), txn, operation="facts-create")
        return self._merge(
            _arrow(rows),
            f"t.{id_column} = s.{id_column}",
            txn,
            lambda m: m.when_not_matched_insert_all(),
            "facts-merge",
        )

    def _merge(self, source: pa.Table, on: str, txn: Txn, clauses, operation: str) -> WriteOutcome:  # type: ignore[no-untyped-def]
        table = self.table()
        assert table is not None
        try:
            merger = table.merge(
                source,
                predicate=on,
                source_alias="s",
                target_alias="t",
                merge_schema=True,  # a contract version may add (nullable) columns
                commit_properties=self._props(txn, operation),
                streamed_exec=False,
            )
            with rust_panics_logged():
                metrics = clauses(merger).execute()
        except CommitFailedError as exc:
            raise CommitConflictError(f"merge into {self.uri} conflicted: {exc}") from exc
        except (DeltaError, OSError) as exc:
            raise TableWriteError(f"merge into {self.uri} failed: {exc}") from exc
        rows = (
            int(metrics.get("num_target_rows_inserted", 0))
            + int(metrics.get("num_target_rows_updated", 0))
            + int(metrics.get("num_target_rows_deleted", 0))
        )
        return WriteOutcome(skipped=False, rows=rows, table_version=self._version())


class DeltaRsStore(TableStore):
    """Delta tables written by delta-rs in this process (the one-process writer)."""

    writer = "delta-rs"

    def describe(self) -> str:
        """One line naming the writer."""
        return "delta-rs (one process: the batch is collected to the driver)"

    def sink(self, uri: str, partition_by: list[str] | None = None) -> DeltaSink:
        """The writer of one table."""
        return DeltaSink(uri, self.storage_options, partition_by)
