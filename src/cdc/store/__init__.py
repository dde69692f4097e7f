"""The table-store interface and its two writers (see :mod:`cdc.store.base`)."""

from __future__ import annotations

from cdc.store.base import TableInfo, TableLogState, TableStore, Txn, WriteOutcome
from cdc.store.delta_rs import DeltaRsStore

__all__ = [
    "DeltaRsStore",
    "TableInfo",
    "TableLogState",
    "TableStore",
    "Txn",
    "WriteOutcome",
    "store_for",
]


def store_for(writer: str, storage_options: dict[str, str] | None = None) -> TableStore:
    """The table store of ``lake.writer`` (table-level operations; see each module for writes).

    Args:
        writer: ``delta-rs`` or ``delta-spark``.
        storage_options: object-store settings, credentials resolved.
    """
    if writer == "delta-spark":
        from cdc.store.delta_spark import DeltaSparkStore

        return DeltaSparkStore(storage_options)
    return DeltaRsStore(storage_options)
