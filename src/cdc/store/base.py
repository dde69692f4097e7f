"""The table-store interface: what the service asks of its Delta tables, whoever writes them.

Two implementations sit behind it (``lake.writer``):

* ``delta-rs`` (:mod:`cdc.store.delta_rs`): one process; the batch is collected to the
  driver and written with delta-rs (fast on small batches, no JVM work per write);
* ``delta-spark`` (:mod:`cdc.store.delta_spark`): distributed; appends and MERGEs run on the
  executors, with deletion vectors; nothing of the batch goes through the driver.

Every write carries a :class:`Txn`: the table records ``(app_id, version)`` in the commit, and a
write whose version is already committed for its app id is skipped (exactly-once across
crashes). Reads that must work whoever wrote the table (deletion vectors included) go through
:meth:`TableStore.read`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cdc.errors import TableReadError

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

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
        version: ask for one instead.

        Args:
            uri: the table.
            version: a version to open (a handle of its own, not kept).

        Raises:
            TableReadError: the log cannot be read (corrupt, or the storage refused).
        """
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        table = self._handles.get(uri) if version is None else None
        try:
            if table is not None:
                table.update_incremental()
                return table
            table = DeltaTable(uri, version=version, storage_options=self.storage_options)
            if version is not None:
                return table
        except TableNotFoundError:
            self._handles.pop(uri, None)
            return None
        except Exception as exc:  # DeltaError, OSError: a corrupt log, storage refused
            self._handles.pop(uri, None)
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise TableReadError(f"cannot read the Delta table at {uri}: {first.strip()}") from None
        self._handles[uri] = table
        return table

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

    def read(self, uri: str) -> pa.Table | None:
        """The whole table at its latest version (None when it does not exist)."""
        if not self.exists(uri):
            return None
        return self.query(uri, "SELECT * FROM t")

    def query(self, uri: str, sql: str) -> pa.Table:
        """Run ``sql`` over the table registered as ``t`` (deletion vectors honoured).

        Raises:
            TableNotFoundError: there is no table at ``uri``.
        """
        import pyarrow as pa
        from deltalake import QueryBuilder

        table = self.handle(uri)
        if table is None:
            from deltalake.exceptions import TableNotFoundError

            raise TableNotFoundError(f"no Delta table at {uri}")
        reader = QueryBuilder().register("t", table).execute(sql)
        return pa.table(reader.read_all())

    @abstractmethod
    def describe(self) -> str:
        """One line naming the writer, for logs and benchmark output."""
