"""Reads of one table version: a :class:`TableSnapshot`, and what its files are.

A snapshot is the table at one version, fixed: every read through it sees that version
whatever commits follow, so a job that records "built from version V" (the gold build),
"published version V" (``cdc publish``) or "V before the replay" (``cdc replay --diff``) reads
exactly V. :meth:`cdc.store.base.TableStore.snapshot` opens one. Reads honour deletion vectors
whoever wrote the table (delta-rs queries and Polars' Delta scan both apply them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
from deltalake import QueryBuilder
from deltalake.exceptions import DeltaError

from cdc.errors import TableReadError, first_line
from cdc.store.files import filesystem, log_entries

if TYPE_CHECKING:
    from deltalake import DeltaTable

__all__ = ["DataFile", "TableFiles", "TableSnapshot"]


@dataclass(frozen=True)
class DataFile:
    """One live data file of a table version.

    Attributes:
        path: as the log names it, relative to the table's folder.
        size: bytes.
        rows: rows written in it (its statistics; None when the writer kept none). Rows a
            deletion vector marks deleted are still counted.
    """

    path: str
    size: int
    rows: int | None


@dataclass(frozen=True)
class TableFiles:
    """The live data files of a table version.

    Attributes:
        version: the table version.
        files: its data files.
        deletion_vectors: how many of them have rows marked deleted (a deletion vector).
    """

    version: int
    files: tuple[DataFile, ...]
    deletion_vectors: int


class TableSnapshot:
    """One version of a Delta table, fixed (open one with ``TableStore.snapshot``).

    Attributes:
        uri: the table.
        version: the version every read sees.
        table_id: the table's id (a table deleted and created again has another).
    """

    def __init__(self, uri: str, table: DeltaTable, storage_options: dict[str, str]) -> None:
        self.uri = uri
        self._table = table  # loaded at its version and never moved (never shared)
        self._storage_options = storage_options
        self.version = int(table.version())
        self.table_id = str(table.metadata().id)
        self._what = f"version {self.version} of the Delta table at {uri}"

    def schema(self) -> pa.Schema:
        """The version's Arrow schema."""
        return pa.schema(self._table.schema().to_arrow())

    def columns(self) -> list[str]:
        """The version's top-level column names."""
        return [f.name for f in self._table.schema().fields]

    def partition_columns(self) -> list[str]:
        """The table's partition columns (fixed when it was created)."""
        return list(self._table.metadata().partition_columns)

    def query(self, sql: str) -> pa.Table:
        """Run ``sql`` over this version, registered as ``t`` (deletion vectors honoured).

        Raises:
            TableReadError: the log or the storage refused (a data file a vacuum deleted
                surfaces from the query engine as it is).
        """
        return run_query(self._table, sql, self._what)

    def read(self) -> pa.Table:
        """Every row of this version."""
        return self.query("SELECT * FROM t")

    def scan(self) -> pl.LazyFrame:
        """This version as a Polars lazy frame: filters on it prune partitions, files and
        row groups by their statistics."""
        return pl.scan_delta(self._table, version=self.version)

    def files(self) -> TableFiles:
        """This version's live data files."""
        return data_files(self._table)

    def rows(self) -> int:
        """Live rows: from the files' statistics when every file has them and none has a
        deletion vector, otherwise counted by a query."""
        return count_rows(self._table, self.files(), self._what)

    def copy_order(self) -> list[str]:
        """Every file a copy of this version needs, relative to the table's folder, in the
        order to copy them: the data files it references and the deletion-vector files
        beside them, then its log up to this version. A copy stopped half-way never has a
        log entry whose files are missing.

        A data file outside the table's folder keeps its full path (a copy cannot place it).
        """
        fs, root = filesystem(self.uri, self._storage_options)
        # delta-rs names local files by their absolute path
        prefix = root if "://" in self.uri else os.path.abspath(root)
        data = []
        for uri in self._table.file_uris():
            path = uri.split("://", 1)[1] if "://" in uri else uri
            data.append(path[len(prefix) :].lstrip("/") if path.startswith(prefix) else path)
        vectors, logs = log_entries(fs, root, self.version)
        return sorted(set(data)) + vectors + logs


def run_query(table: DeltaTable, sql: str, what: str) -> pa.Table:
    """``sql`` over the delta-rs handle ``table`` at the version it is loaded at, as ``t``.

    Raises:
        TableReadError: delta-rs or the storage refused (``what`` names the table).
    """
    try:
        return pa.table(QueryBuilder().register("t", table).execute(sql).read_all())
    except (DeltaError, OSError) as exc:
        raise TableReadError(f"cannot read {what}: {first_line(exc)}") from None


def data_files(table: DeltaTable) -> TableFiles:
    """The live data files of the version ``table`` is loaded at."""
    actions = pa.table(table.get_add_actions(flatten=True))
    rows = (
        actions.column("num_records").to_pylist()
        if "num_records" in actions.column_names
        else [None] * actions.num_rows
    )
    files = tuple(
        DataFile(str(path), int(size), None if n is None else int(n))
        for path, size, n in zip(
            actions.column("path").to_pylist(),
            actions.column("size_bytes").to_pylist(),
            rows,
            strict=True,
        )
    )
    vectors = pa.table(table.deletion_vectors()).num_rows  # files with rows marked deleted
    return TableFiles(int(table.version()), files, vectors)


def count_rows(table: DeltaTable, files: TableFiles, what: str) -> int:
    """Live rows of ``table`` (see :meth:`TableSnapshot.rows`)."""
    counts = [f.rows for f in files.files]
    if files.deletion_vectors == 0 and all(n is not None for n in counts):
        return sum(n for n in counts if n is not None)
    found = run_query(table, "SELECT count(*) AS n FROM t", what).column("n")[0].as_py()
    return int(found)
