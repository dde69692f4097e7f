"""Delta writes with delta-rs, each commit carrying an app transaction (exactly-once).

Every write names a :class:`Txn` — ``app_id`` (pipeline + table) and ``version`` (the
micro-batch's number). A write whose version the table has already committed for that
app id is skipped: after a crash, Spark re-runs the last uncommitted batch with the same
id and offsets, and each table applies it at most once. The distributed writer with the
same guarantees is :mod:`cdc.store.delta_spark`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from cdc.core.scd2 import ACTION_COLUMN
from cdc.errors import CommitConflictError, TableReadError, TableWriteError
from cdc.runtime.rust_output import rust_panics_logged
from cdc.store.base import TableStore, Txn, WriteOutcome
from cdc.store.plan import CURRENT_PARTITION, CommitInfo, MergePlan, TableLayout

__all__ = ["WRITER", "DeltaRsStore", "DeltaSink", "Txn", "WriteOutcome", "commit_properties"]

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

    def _props(self, txn: Txn | None, operation: str) -> CommitProperties:
        if txn is None:
            return commit_properties(CommitInfo(operation, WRITER))
        return commit_properties(CommitInfo(operation, WRITER, txn.app_id, txn.version), txn)

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

    def replace(
        self, data: pa.Table, layout: TableLayout, commit: CommitInfo | None = None
    ) -> WriteOutcome:
        """Replace the table's rows and schema with ``data`` in one commit, creating the
        table with ``layout`` when it does not exist (an existing table is re-partitioned to
        it). Not a micro-batch's write: no app transaction.

        Args:
            data: every row of the new version.
            layout: partition columns and table properties.
            commit: what the commit records (default: operation ``replace``).

        Raises:
            CommitConflictError: another writer committed a conflicting change meanwhile.
            TableWriteError: the write failed otherwise.
        """
        creating = self.table() is None
        try:
            with rust_panics_logged():
                write_deltalake(
                    self.uri,
                    data,
                    mode="overwrite",
                    schema_mode="overwrite",
                    partition_by=list(layout.partition_by) or None,
                    configuration=_writable(layout.properties) if creating else None,
                    storage_options=self.storage_options,
                    commit_properties=commit_properties(commit or CommitInfo("replace", WRITER)),
                )
        except CommitFailedError as exc:
            raise CommitConflictError(f"replacing {self.uri} conflicted: {exc}") from exc
        except (DeltaError, OSError) as exc:
            raise TableWriteError(f"replacing {self.uri} failed: {exc}") from exc
        self._partition_columns = None  # the layout may have changed
        return WriteOutcome(skipped=False, rows=data.num_rows, table_version=self._version())

    def _evolve(self, table: DeltaTable, source: pa.Table, plan: MergePlan) -> DeltaTable:
        """Add the source's new columns to the table before a MERGE, in a commit of its own
        (an empty append that merges the schema). deltalake 1.6's MERGE with ``merge_schema``
        writes its new schema with a new table id, which would make the table another table
        to everything that knows it by its id (the checkpoint's identity check); an append
        keeps the id. Re-run after a crash, the columns are there and nothing is written."""
        held = {f.name for f in table.schema().fields}
        columns = _columns_of(source, plan)
        if all(name in held for name in columns.column_names):
            return table
        try:
            with rust_panics_logged():
                write_deltalake(
                    self.uri,
                    columns.slice(0, 0),
                    mode="append",
                    schema_mode="merge",
                    storage_options=self.storage_options,
                    commit_properties=self._props(None, f"{plan.operation}-evolve"),
                )
        except (DeltaError, OSError) as exc:
            raise TableWriteError(f"adding columns to {self.uri} failed: {exc}") from exc
        evolved = self.table()
        assert evolved is not None
        return evolved

    def widen(self, incoming: pa.Schema) -> pa.Schema | None:
        """Give the table's columns (and fields nested in them) the wider types of
        ``incoming`` (:func:`cdc.core.widening.widened_schema`); the schema it now has,
        or None when nothing widens (or there is no table).

        delta-rs 1.6 writes no Delta type widening: the table is rewritten once, batch by
        batch, with the wider types, in one commit that keeps its id, properties, partitions
        and app transactions (a reader of an older version still reads the old types). A
        rerun after a crash finds the types wide and writes nothing.

        Raises:
            TableWriteError: the rewrite failed (the table is as it was).
        """
        from cdc.core.widening import widened_schema

        table = self.table()
        if table is None:
            return None
        held = pa.schema(table.schema().to_arrow())
        wider = widened_schema(held, incoming)
        if wider is None:
            return None
        scan = pl.scan_delta(table, version=table.version())

        def batches() -> Iterator[pa.RecordBatch]:
            for frame in scan.collect_batches():
                yield from frame.to_arrow().cast(wider).to_batches()

        try:
            with rust_panics_logged():
                write_deltalake(
                    self.uri,
                    pa.RecordBatchReader.from_batches(wider, batches()),
                    mode="overwrite",
                    schema_mode="overwrite",
                    partition_by=self.partition_columns() or None,
                    storage_options=self.storage_options,
                    commit_properties=self._props(None, "widen"),
                )
        except (DeltaError, OSError, pa.ArrowInvalid) as exc:
            raise TableWriteError(f"widening the columns of {self.uri} failed: {exc}") from exc
        return wider

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

    def merge(
        self,
        source: pa.Table,
        plan: MergePlan,
        txn: Txn | None,
        *,
        commit: CommitInfo | None = None,
    ) -> WriteOutcome:
        """One MERGE of ``source`` into the table as ``plan`` describes, tagged with ``txn``.

        A table that does not exist yet is created, with the plan's layout, by appending the
        source rows its insert clause takes (there is nothing to match).

        Args:
            source: the rows (every column but the plan's source-only ones is a table
                column).
            plan: match, pruning and clauses (:mod:`cdc.store.plan`).
            txn: the app transaction (None: a write that is not a micro-batch's, e.g. a
                gold build; it is never skipped).
            commit: what the commit records (default: ``<plan operation>-merge`` and
                ``txn``).

        Raises:
            CommitConflictError: another writer committed a conflicting change meanwhile.
            TableWriteError: the MERGE failed otherwise.
        """
        if source.num_rows == 0:
            return WriteOutcome(skipped=False)
        if txn is not None and self.committed(txn):
            return WriteOutcome(skipped=True)
        table = self.table()
        if table is None:
            if txn is None:
                return self.replace(_inserted(source, plan), plan.layout, commit)
            return self.append(
                _inserted(source, plan),
                txn,
                operation=f"{plan.operation}-create",
                layout=plan.layout,
            )
        if CURRENT_PARTITION not in self.partition_columns():
            plan = replace(plan, match_source={}, prune={})  # an unpartitioned dimension
        table = self._evolve(table, source, plan)
        except_cols = list(plan.source_only)
        try:
            merger = table.merge(
                source,
                predicate=plan.condition("IS NOT DISTINCT FROM"),
                source_alias="s",
                target_alias="t",
                merge_schema=True,  # a contract version may add (nullable) columns
                commit_properties=(
                    self._props(txn, f"{plan.operation}-merge")
                    if commit is None
                    else commit_properties(commit, txn)
                ),
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


def _columns_of(source: pa.Table, plan: MergePlan) -> pa.Table:
    return source.drop_columns([c for c in plan.source_only if c in source.column_names])


def commit_properties(info: CommitInfo, txn: Txn | None = None) -> CommitProperties:
    """The delta-rs commit properties of a commit: its :class:`~cdc.store.plan.CommitInfo` as
    ``userMetadata`` and, for a micro-batch's write, its app transaction."""
    return CommitProperties(
        app_transactions=(
            None if txn is None else [Transaction(app_id=txn.app_id, version=txn.version)]
        ),
        custom_metadata={"userMetadata": info.user_metadata()},
        max_commit_retries=20,
    )


def _inserted(source: pa.Table, plan: MergePlan) -> pa.Table:
    """The source rows a plan's insert clause takes, without the source-only columns."""
    action = plan.inserted()
    if action is not None:
        source = source.filter(pc.equal(source.column(ACTION_COLUMN), action))
    return _columns_of(source, plan)


def _writable(properties: Mapping[str, str]) -> dict[str, str] | None:
    """Table properties delta-rs can honour when it creates a table: it writes no deletion
    vectors, so a table it writes does not enable them.

    Nor does it take a layout's statistics columns (:meth:`TableLayout.table_properties`):
    delta-rs reads a file's statistics from the Parquet footer it has just written (no pass
    over the values, so narrowing them saves nothing), and deltalake 1.6 collects none for a
    nested leaf named in ``delta.dataSkippingStatsColumns`` (``key.id``), which is what a late
    key's history read of bronze prunes by. A table it creates keeps Delta's default."""
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

    def optimize(
        self, uri: str, zorder: Sequence[str] = (), *, target_size: int, purge: bool = False
    ) -> None:
        """Compact (Z-ORDER by ``zorder``) with delta-rs (which writes no deletion vectors:
        ``purge`` has nothing to do). See :meth:`TableStore.optimize`."""
        table = self._open_latest(uri)
        props = commit_properties(CommitInfo("optimize", WRITER))
        if zorder:
            table.optimize.z_order(
                list(zorder),
                target_size=target_size,
                max_concurrent_tasks=2,
                commit_properties=props,
            )
        else:
            table.optimize.compact(
                target_size=target_size, max_concurrent_tasks=2, commit_properties=props
            )

    def vacuum(self, uri: str, retention_hours: float, *, dry_run: bool) -> int:
        """VACUUM with delta-rs. See :meth:`TableStore.vacuum`."""
        table = self._open_latest(uri)
        deleted = table.vacuum(
            retention_hours=int(retention_hours),
            dry_run=dry_run,
            enforce_retention_duration=False,
            commit_properties=commit_properties(CommitInfo("vacuum", WRITER)),
        )
        return len(deleted)

    def _open_latest(self, uri: str) -> DeltaTable:
        """A handle of its own at the latest version (a maintenance commit moves it)."""
        table = self._load(uri, None)
        if table is None:
            raise TableReadError(f"no Delta table at {uri}")
        return table
