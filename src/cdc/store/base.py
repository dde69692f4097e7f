"""The table-store interface: what the service asks of its Delta tables, whoever writes them.

Two implementations sit behind it (``lake.writer``):

* ``delta-rs`` (:mod:`cdc.store.delta_rs`): one process; the batch is collected to the
  driver and written with delta-rs (fast on small batches, no JVM work per write);
* ``delta-spark`` (:mod:`cdc.store.delta_spark`): distributed; appends and MERGEs run on the
  executors, with deletion vectors; nothing of the batch goes through the driver.

Every write carries a :class:`Txn`: the table records ``(app_id, version)`` in the commit, and a
write whose version is already committed for its app id is skipped (exactly-once across
crashes). Reads that must work whoever wrote the table (deletion vectors included) go through
:meth:`TableStore.read` and :meth:`TableStore.query`.

Every operation here is named for what it does, and nothing outside :mod:`cdc.store` opens a
table: a table's latest state (:meth:`~TableStore.version`, :meth:`~TableStore.info`,
:meth:`~TableStore.history`, :meth:`~TableStore.files`, queries) is read through a handle the
store keeps and brings up to date; one version, fixed, through a
:class:`~cdc.store.table.TableSnapshot` (:meth:`~TableStore.snapshot`), never by moving a
kept handle; :meth:`~TableStore.optimize` and :meth:`~TableStore.vacuum` run on each store's
engine and commit the service's metadata like every write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from cdc.errors import TableReadError, first_line
from cdc.store.table import TableFiles, TableSnapshot, data_files, run_query

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TableInfo", "TableLogState", "TableStore", "Txn", "WriteOutcome"]


@dataclass(frozen=True)
class Txn:
    """The idempotency token of one table write."""

    app_id: str
    version: int


@dataclass(frozen=True)
class WriteOutcome:
    """What a write did: ``skipped`` when the version was already committed."""

    skipped: bool
    rows: int = 0
    table_version: int | None = None


@dataclass(frozen=True)
class TableInfo:
    """A table's state for ``cdc status`` and maintenance."""

    uri: str
    version: int
    rows: int
    files: int


@dataclass(frozen=True)
class TableLogState:
    """A table's Delta id and one app id's committed version, from one read of its log."""

    table_id: str
    """``metaData.id``: a new one whenever a table is created at a path."""
    txn_version: int | None
    """The app id's last committed version (None: none)."""


class TableStore(ABC):
    """Table-level operations shared by both writers (status, replay, maintenance, tests)."""

    writer: str
    """``delta-rs`` or ``delta-spark``."""

    def __init__(self, storage_options: dict[str, str] | None = None) -> None:
        """Create the store.

        Args:
            storage_options: object-store settings (credentials resolved), for every table.
        """
        self.storage_options = dict(storage_options or {})
        self._handles: dict[str, DeltaTable] = {}

    def handle(self, uri: str, version: int | None = None) -> DeltaTable | None:
        """The delta-rs handle of a table's log, or None when there is no table (the log is
        the same whoever wrote it). The only way the service opens a table.

        Without ``version``: the latest version, through a handle the store keeps and brings
        up to date with the log's new commits (no re-read of the whole log; a writer's store
        serves every batch of its query this way). Do not move a kept handle to another
        version: ask for one instead (or for a :meth:`snapshot`).

        Args:
            uri: the table.
            version: a version to open (a handle of its own, not kept).

        Raises:
            TableReadError: the log cannot be read (corrupt, or the storage refused), or it
                has no such version.
        """
        if version is not None:
            return self._load(uri, version)
        table = self._handles.get(uri)
        if table is None:
            table = self._load(uri, None)
            if table is not None:
                self._handles[uri] = table
            return table
        try:
            table.update_incremental()
        except Exception as exc:  # the table was deleted behind the handle, storage refused
            self._handles.pop(uri, None)
            if _not_found(exc):
                return None
            raise _unreadable(uri, exc) from None
        return table

    def _load(self, uri: str, version: int | None) -> DeltaTable | None:
        """A new handle of the table at ``version`` (None: latest); None when no table."""
        try:
            return DeltaTable(uri, version=version, storage_options=self.storage_options)
        except Exception as exc:  # DeltaError, OSError: a corrupt log, storage refused
            if _not_found(exc):
                return None
            raise _unreadable(uri, exc) from None

    def snapshot(self, uri: str, version: int | None = None) -> TableSnapshot | None:
        """The table at one version, fixed: reads through it see that version whatever
        commits follow (None when there is no table).

        Args:
            uri: the table.
            version: the version (None: the latest, as of this call).

        Raises:
            TableReadError: the log cannot be read, or it has no such version.
        """
        table = self._load(uri, version)
        return None if table is None else TableSnapshot(uri, table, self.storage_options)

    def forget(self, uri: str) -> None:
        """Drop the kept handle of ``uri`` (the table was deleted or replaced behind it)."""
        self._handles.pop(uri, None)

    def exists(self, uri: str) -> bool:
        """Whether a Delta table exists at ``uri``."""
        return self.handle(uri) is not None

    def columns(self, uri: str) -> list[str]:
        """The table's top-level column names, from its log (none when it does not exist)."""
        table = self.handle(uri)
        return [] if table is None else [f.name for f in table.schema().fields]

    def log_state(self, uri: str, app_id: str) -> TableLogState | None:
        """The table's id and the last version committed for ``app_id`` (None: no table)."""
        table = self.handle(uri)
        if table is None:
            return None
        version = table.transaction_version(app_id)
        return TableLogState(str(table.metadata().id), None if version is None else int(version))

    def txn_version(self, uri: str, app_id: str) -> int | None:
        """The last version committed for ``app_id`` in the table (None: none, or no table)."""
        state = self.log_state(uri, app_id)
        return None if state is None else state.txn_version

    def committed(self, uri: str, txn: Txn) -> bool:
        """Whether ``txn.version`` (or a later one) is already committed for ``txn.app_id``."""
        done = self.txn_version(uri, txn.app_id)
        return done is not None and done >= txn.version

    def version(self, uri: str) -> int | None:
        """The table's latest version (None when it does not exist)."""
        table = self.handle(uri)
        return None if table is None else int(table.version())

    def history(self, uri: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's commits, newest first, each with its ``version`` (none when it does
        not exist); :func:`~cdc.store.plan.read_commit_info` reads the service's metadata of
        one.

        Read from the latest version only: delta-rs numbers the commits of a handle loaded
        at an older version wrongly (it lists the newest commits under that version).

        Args:
            uri: the table.
            limit: at most this many commits (None: all the log holds).
        """
        table = self.handle(uri)
        return [] if table is None else list(table.history(limit))

    def files(self, uri: str) -> TableFiles | None:
        """The live data files of the latest version (None when it does not exist)."""
        table = self.handle(uri)
        return None if table is None else data_files(table)

    def info(self, uri: str) -> TableInfo | None:
        """Version, live rows and data files of the table (None when it does not exist).

        Rows are counted by a query, so rows hidden by deletion vectors are not counted.
        """
        table = self.handle(uri)
        if table is None:
            return None
        files = len(table.file_uris())
        count = self.query(uri, "SELECT count(*) AS n FROM t").column("n")[0].as_py()
        return TableInfo(uri=uri, version=int(table.version()), rows=int(count), files=files)

    def read(self, uri: str, version: int | None = None) -> pa.Table | None:
        """The whole table at ``version`` (None: its latest; None when it does not exist).

        Raises:
            TableReadError: the log or the storage refused, or there is no such version.
        """
        if version is not None:
            snapshot = self.snapshot(uri, version)
            return None if snapshot is None else snapshot.read()
        if not self.exists(uri):
            return None
        return self.query(uri, "SELECT * FROM t")

    def query(self, uri: str, sql: str) -> pa.Table:
        """Run ``sql`` over the table's latest version registered as ``t`` (deletion vectors
        honoured); :meth:`snapshot` queries a fixed version.

        Raises:
            TableReadError: there is no table at ``uri``, or the log or the storage refused.
        """
        table = self.handle(uri)
        if table is None:
            raise TableReadError(f"no Delta table at {uri}")
        return run_query(table, sql, f"the Delta table at {uri}")

    @abstractmethod
    def optimize(
        self, uri: str, zorder: Sequence[str] = (), *, target_size: int, purge: bool = False
    ) -> None:
        """Compact the table's small files into files of about ``target_size`` bytes,
        clustered by ``zorder`` (Z-ORDER) when columns are given.

        Args:
            uri: the table (it exists).
            zorder: columns to cluster by (never a partition column); empty: compact only.
            target_size: the size of the files written, where the engine takes one.
            purge: also rewrite the files that have deletion vectors without the rows they
                mark (where the engine writes deletion vectors).
        """

    @abstractmethod
    def vacuum(self, uri: str, retention_hours: float, *, dry_run: bool) -> int:
        """Delete the files no version within ``retention_hours`` needs.

        The service's floor (``maintenance.min_retention_hours``) is enforced by the caller;
        the engine's own check is off.

        Args:
            uri: the table (it exists).
            retention_hours: versions younger than this stay readable.
            dry_run: delete nothing; count what would go.

        Returns:
            The files deleted (or, with ``dry_run``, that would be).
        """

    @abstractmethod
    def describe(self) -> str:
        """One line naming the writer, for logs and benchmark output."""


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, TableNotFoundError)


def _unreadable(uri: str, exc: BaseException) -> TableReadError:
    return TableReadError(f"cannot read the Delta table at {uri}: {first_line(exc)}")
