"""Delta writes with delta-rs, each commit carrying an app transaction (exactly-once).

Every write names a :class:`Txn` — ``app_id`` (pipeline + table) and ``version`` (the
micro-batch's number). A write whose version the table has already committed for that
app id is skipped: after a crash, Spark re-runs the last uncommitted batch with the same
id and offsets, and each table applies it at most once. The distributed writer with the
same guarantees is :mod:`cdc.store.delta_spark`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from cdc.errors import CommitConflictError, TableWriteError
from cdc.rust_output import rust_panics_logged
from cdc.scd2 import ACTION_COLUMN
from cdc.store.base import TableStore, Txn, WriteOutcome
from cdc.store.plan import CURRENT_PARTITION, CommitInfo, MergePlan, TableLayout

__all__ = ["WRITER", "DeltaRsStore", "DeltaSink", "Txn", "WriteOutcome"]

log = logging.getLogger(__name__)

WRITER = "delta-rs"


class DeltaSink:
    """One Delta table (local path or object-store URI) written idempotently.

    A table the sink creates takes the layout of the write that creates it (a
    :class:`~cdc.store.plan.TableLayout`); an existing table keeps the layout it was created
    with (a dimension created unpartitioned still works, but every MERGE then rewrites its
    history too).
    """

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options or {}
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
        info = CommitInfo(operation, WRITER, txn.app_id, txn.version)
        return CommitProperties(
            app_transactions=[Transaction(app_id=txn.app_id, version=txn.version)],
            custom_metadata={"userMetadata": info.user_metadata()},
            max_commit_retries=20,
        )

    def append(
        self,
        data: pa.Table,
        txn: Txn,
        operation: str = "append",
        layout: TableLayout | None = None,
    ) -> WriteOutcome:
        """Append rows (schema may gain fields) in one commit tagged with ``txn``.

        Args:
            data: the rows.
            txn: the app transaction; an already committed version is skipped.
            operation: the commit's operation (:class:`~cdc.store.plan.CommitInfo`).
            layout: the table's layout if this append creates it.
        """
        if self.committed(txn):
            return WriteOutcome(skipped=True)
        creating = self.table() is None
        layout = layout or TableLayout()
        try:
            with rust_panics_logged():
                write_deltalake(
                    self.uri,
                    data,
                    mode="append",
                    partition_by=list(layout.partition_by) or None if creating else None,
                    configuration=_writable(layout.properties) if creating else None,
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

    def merge(self, source: pa.Table, plan: MergePlan, txn: Txn) -> WriteOutcome:
        """One MERGE of ``source`` into the table as ``plan`` describes, tagged with ``txn``.

        A table that does not exist yet is created, with the plan's layout, by appending the
        source rows its insert clause takes (there is nothing to match).

        Raises:
            CommitConflictError: another writer committed a conflicting change meanwhile.
            TableWriteError: the MERGE failed otherwise.
        """
        if source.num_rows == 0:
            return WriteOutcome(skipped=False)
        if self.committed(txn):
            return WriteOutcome(skipped=True)
        table = self.table()
        if table is None:
            return self.append(
                _inserted(source, plan),
                txn,
                operation=f"{plan.operation}-create",
                layout=plan.layout,
            )
        if CURRENT_PARTITION not in self.partition_columns():
            plan = replace(plan, match_source={}, prune={})  # an unpartitioned dimension
        except_cols = list(plan.source_only)
        try:
            merger = table.merge(
                source,
                predicate=plan.condition("IS NOT DISTINCT FROM"),
                source_alias="s",
                target_alias="t",
                merge_schema=True,  # a contract version may add (nullable) columns
                commit_properties=self._props(txn, f"{plan.operation}-merge"),
                streamed_exec=False,
            )
            for clause in plan.clauses:
                when = plan.when(clause)
                if clause.kind == "delete":
                    merger = merger.when_matched_delete(predicate=when)
                elif clause.kind == "update":
                    merger = merger.when_matched_update_all(predicate=when, except_cols=except_cols)
                else:
                    merger = merger.when_not_matched_insert_all(
                        predicate=when, except_cols=except_cols
                    )
            with rust_panics_logged():
                metrics = merger.execute()
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


def _inserted(source: pa.Table, plan: MergePlan) -> pa.Table:
    """The source rows a plan's insert clause takes, without the source-only columns."""
    import pyarrow.compute as pc

    action = plan.inserted()
    if action is not None:
        source = source.filter(pc.equal(source.column(ACTION_COLUMN), action))
    return source.drop_columns([c for c in plan.source_only if c in source.column_names])


def _writable(properties: Mapping[str, str]) -> dict[str, str] | None:
    """Table properties delta-rs can honour when it creates a table: it writes no deletion
    vectors, so a table it writes does not enable them."""
    kept = {k: v for k, v in properties.items() if k not in _DELTA_RS_UNSUPPORTED}
    return kept or None


_DELTA_RS_UNSUPPORTED = frozenset({"delta.enableDeletionVectors"})


class DeltaRsStore(TableStore):
    """Delta tables written by delta-rs in this process (the one-process writer)."""

    writer = WRITER

    def describe(self) -> str:
        """One line naming the writer."""
        return "delta-rs (one process: the batch is collected to the driver)"

    def sink(self, uri: str) -> DeltaSink:
        """The writer of one table."""
        return DeltaSink(uri, self.storage_options)
