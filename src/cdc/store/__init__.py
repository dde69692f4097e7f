"""The only way to the service's Delta tables: open, read, write, maintain.

Split by operation, as delta-rs splits its own API: :mod:`cdc.store.base` (the
:class:`TableStore` interface: a table's latest state through kept handles, its history,
files, queries, OPTIMIZE and VACUUM), :mod:`cdc.store.table` (one version, fixed: a
:class:`TableSnapshot`), :mod:`cdc.store.plan` (what a write asks, as data: MERGE plans, table
layouts, the one commit-metadata shape :class:`~cdc.store.plan.CommitInfo`), the writers
:mod:`cdc.store.delta_rs` and :mod:`cdc.store.delta_spark` (each renders the plans for its
engine), and :mod:`cdc.store.files` (the tables' files, for copies of whole tables). Nothing
outside this package imports ``deltalake`` or ``delta``, or reads a Delta table with Spark:
a test holds the rest of ``src/`` to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdc.store.base import TableInfo, TableLogState, TableStore, Txn, WriteOutcome
from cdc.store.delta_rs import DeltaRsStore
from cdc.store.table import DataFile, TableFiles, TableSnapshot

# The delta-spark store is imported when chosen: it loads delta-spark's Python API, which the
# delta-rs writer and the companions never need.

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "DataFile",
    "DeltaRsStore",
    "TableFiles",
    "TableInfo",
    "TableLogState",
    "TableSnapshot",
    "TableStore",
    "Txn",
    "WriteOutcome",
    "store_for",
]


def store_for(
    writer: str,
    storage_options: dict[str, str] | None = None,
    spark: SparkSession | None = None,
) -> TableStore:
    """The table store of ``lake.writer`` (table-level operations; see each module for writes).

    Args:
        writer: ``delta-rs`` or ``delta-spark``.
        storage_options: object-store settings, credentials resolved.
        spark: the session that maintains the delta-spark lake (OPTIMIZE, VACUUM).
    """
    if writer == "delta-spark":
        from cdc.store.delta_spark import DeltaSparkStore

        return DeltaSparkStore(storage_options, spark)
    return DeltaRsStore(storage_options)
