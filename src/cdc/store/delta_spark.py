"""delta-spark writes: appends and MERGEs that run on the executors, each carrying an app
transaction (exactly-once).

Appends pass the transaction as the writer options ``txnAppId``/``txnVersion``; MERGEs take it
from the session confs ``spark.databricks.delta.write.txnAppId``/``txnVersion``. Those confs
are set on the session the micro-batch belongs to (each streaming query runs in a session of
its own, so concurrent queries cannot see each other's) and removed in a ``finally`` right
after the MERGE, so no later write of the same query inherits them (the trap of
delta-io/delta#1999 and #3934: a leaked version silently skips every later write). A write
whose version is already committed is skipped before any job runs.

Dimensions are created with deletion vectors on: a MERGE that closes a version marks the old
row deleted instead of rewriting its file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from cdc.core.scd2 import ACTION_COLUMN
from cdc.errors import CommitConflictError, ConfigError, TableWriteError
from cdc.runtime.spark_errors import spark_condition
from cdc.store.base import TableStore, Txn, WriteOutcome
from cdc.store.plan import CURRENT_PARTITION, CommitInfo, MergePlan, TableLayout

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "S3A_OPTIONS",
    "TXN_APP_ID_CONF",
    "TXN_VERSION_CONF",
    "WRITER",
    "DeltaSparkStore",
    "hadoop_options",
    "spark_path",
]

log = logging.getLogger(__name__)

TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
MATERIALIZE_SOURCE_CONF = "spark.databricks.delta.merge.materializeSource"
RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"

WRITER = "delta-spark"


class DeltaSparkStore(TableStore):
    """Delta tables written by Spark (the distributed writer)."""

    writer = WRITER

    def __init__(
        self, storage_options: dict[str, str] | None = None, spark: SparkSession | None = None
    ) -> None:
        """Create the store.

        Args:
            storage_options: object-store settings (credentials resolved), for every table.
            spark: the session of table maintenance (:meth:`optimize`, :meth:`vacuum`);
                appends and MERGEs run in their DataFrame's own session.
        """
        super().__init__(storage_options)
        self.spark = spark

    def describe(self) -> str:
        """One line naming the writer."""
        return "delta-spark (MERGE on the executors, deletion vectors)"

    def _session_options(self) -> dict[str, str]:
        """Object-store settings as Hadoop options of each read/write."""
        return hadoop_options(self.storage_options)

    def append(
        self,
        df: DataFrame,
        uri: str,
        txn: Txn,
        *,
        operation: str = "append",
        layout: TableLayout | None = None,
    ) -> WriteOutcome:
        """Append ``df`` in one commit tagged with ``txn`` (the schema may gain columns).

        Args:
            df: the rows (not collected: the executors write them).
            uri: the table.
            txn: its app transaction; an already committed version is skipped.
            operation: the commit's operation (:class:`~cdc.store.plan.CommitInfo`).
            layout: partition columns and table properties if the append creates the table.

        Returns:
            Whether it was skipped, and the table version.

        Raises:
            TableWriteError: the write failed.
        """
        handle = self.handle(uri)
        if handle is not None and _committed(handle, txn):
            return WriteOutcome(skipped=True)
        info = CommitInfo(operation, WRITER, txn.app_id, txn.version)
        writer = (
            df.write.format("delta")
            .mode("append")
            .option("txnAppId", txn.app_id)
            .option("txnVersion", str(txn.version))
            .option("mergeSchema", "true")
            .option("userMetadata", info.user_metadata())
        )
        for key, value in self._session_options().items():
            writer = writer.option(key, value)
        if handle is None and layout is not None:
            if layout.partition_by:
                writer = writer.partitionBy(*layout.partition_by)
            for key, value in _table_properties(layout, df).items():
                writer = writer.option(key, value)
        try:
            writer.save(spark_path(uri))
        except Exception as exc:  # py4j surfaces JVM errors as several types
            raise _write_error("append to", uri, exc) from exc
        return WriteOutcome(skipped=False, table_version=_last_version(df.sparkSession))

    def widen(self, session: SparkSession, uri: str, incoming: pa.Schema) -> pa.Schema | None:
        """Give the table's columns (and fields nested in them) the wider types of
        ``incoming`` (:func:`cdc.core.widening.widened_schema`); the schema it now has, or None
        when nothing widens (or there is no table).

        The table is rewritten once with the wider types (an overwrite of its own snapshot,
        ``overwriteSchema``), in one commit that keeps its id, partitions, properties and app
        transactions. Not Delta's type widening (``ALTER COLUMN ... TYPE``, no file
        rewritten): that adds the ``typeWidening`` table feature, which deltalake 1.6 cannot
        read, and the service's other commands (status, verify, gold, publish) read with it.
        A rerun after a crash finds the types wide and writes nothing.

        Raises:
            TableWriteError: the rewrite failed (the table is as it was).
        """
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_type

        from cdc.core.widening import widened_schema

        handle = self.handle(uri)
        if handle is None:
            return None
        held = pa.schema(handle.schema().to_arrow())
        wider = widened_schema(held, incoming)
        if wider is None:
            return None
        table = self.read_df(session, uri)
        assert table is not None
        # A struct casts field by field in order: the widened schema keeps the held order.
        columns = [
            F.col(f"`{f.name}`")
            if f.type == held.field(f.name).type
            else F.col(f"`{f.name}`").cast(from_arrow_type(f.type)).alias(f.name)
            for f in wider
        ]
        info = CommitInfo("widen", WRITER)
        writer = (
            table.select(*columns)
            .write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .option("userMetadata", info.user_metadata())
        )
        for key, value in self._session_options().items():
            writer = writer.option(key, value)
        partitions = list(handle.metadata().partition_columns)
        if partitions:
            writer = writer.partitionBy(*partitions)
        try:
            writer.save(spark_path(uri))
        except Exception as exc:  # py4j surfaces JVM errors as several types
            raise _write_error("widening the columns of", uri, exc) from exc
        return wider

    def merge(
        self,
        source: DataFrame,
        uri: str,
        plan: MergePlan,
        txn: Txn,
        *,
        materialized: bool = False,
    ) -> WriteOutcome:
        """One Delta MERGE of ``source`` into the table as ``plan`` describes.

        A table that does not exist yet is created, with the plan's layout, by appending the
        source rows its insert clause takes.

        Args:
            source: the rows to merge (their session is the micro-batch's); every column but
                the plan's source-only ones is a table column.
            uri: the table.
            plan: match, pruning and clauses (:mod:`cdc.store.plan`).
            txn: the app transaction; an already committed version is skipped.
            materialized: ``source`` is already computed and kept (a ``localCheckpoint``):
                Delta need not persist it again (``merge.materializeSource=none``; by default
                it copies any source that is not a plain Delta scan, in a job of its own).

        Returns:
            Whether it was skipped, rows written, and the table version.

        Raises:
            CommitConflictError: another writer committed a conflicting change meanwhile.
            TableWriteError: the MERGE failed otherwise.
        """
        handle = self.handle(uri)
        if handle is not None and _committed(handle, txn):
            return WriteOutcome(skipped=True)
        from pyspark.sql import functions as F

        if handle is None:
            action = plan.inserted()
            new = source if action is None else source.where(F.col(ACTION_COLUMN) == action)
            new = new.drop(*[c for c in plan.source_only if c in source.columns])
            return self.append(
                new, uri, txn, operation=f"{plan.operation}-create", layout=plan.layout
            )
        from delta.tables import DeltaTable

        if CURRENT_PARTITION not in handle.metadata().partition_columns:
            plan = replace(plan, match_source={}, prune={})  # an unpartitioned dimension
        columns = [c for c in source.columns if c not in plan.source_only]
        assign: dict[str, str | Column] = {f"`{c}`": f"s.`{c}`" for c in columns}
        session = source.sparkSession
        info = CommitInfo(f"{plan.operation}-merge", WRITER, txn.app_id, txn.version)
        confs = {MATERIALIZE_SOURCE_CONF: "none"} if materialized else {}
        with _txn_confs(session, txn, info, confs):
            try:
                options = self._session_options()
                target = (
                    DeltaTable.forPath(session, spark_path(uri), options)
                    if options
                    else DeltaTable.forPath(session, spark_path(uri))
                )
                builder = (
                    target.alias("t")
                    .merge(source.alias("s"), plan.condition("<=>"))
                    .withSchemaEvolution()
                )
                for clause in plan.clauses:
                    when: Any = plan.when(clause)  # None: unconditional (the builder takes it)
                    if clause.kind == "delete":
                        builder = builder.whenMatchedDelete(condition=when)
                    elif clause.kind == "update":
                        builder = builder.whenMatchedUpdate(condition=when, set=assign)
                    else:
                        builder = builder.whenNotMatchedInsert(condition=when, values=assign)
                metrics = builder.execute().first()
            except Exception as exc:
                raise _write_error("merge into", uri, exc) from exc
        rows = 0
        if metrics is not None:
            found = metrics.asDict()
            rows = sum(
                int(found.get(name) or 0)
                for name in ("num_inserted_rows", "num_updated_rows", "num_deleted_rows")
            )
        return WriteOutcome(skipped=False, rows=rows, table_version=_last_version(session))

    def read_df(self, session: SparkSession, uri: str) -> DataFrame | None:
        """The table as a Spark DataFrame (None when it does not exist)."""
        if not self.exists(uri):
            return None
        reader = session.read.format("delta")
        for key, value in self._session_options().items():
            reader = reader.option(key, value)
        return reader.load(spark_path(uri))

    def optimize(
        self, uri: str, zorder: Sequence[str] = (), *, target_size: int, purge: bool = False
    ) -> None:
        """``OPTIMIZE`` (``ZORDER BY`` ``zorder``), then ``REORG TABLE ... APPLY (PURGE)`` when
        ``purge``, as Spark SQL in the maintenance session (Spark sizes the files by its own
        ``spark.databricks.delta.optimize.maxFileSize``). See :meth:`TableStore.optimize`."""
        session = self._maintenance_session()
        table = _sql_table(uri)
        columns = ", ".join(f"`{c}`" if "." not in c else c for c in zorder)
        with _session_confs(session, {USER_METADATA_CONF: _user_metadata("optimize")}):
            session.sql(f"OPTIMIZE {table}{f' ZORDER BY ({columns})' if zorder else ''}").collect()
            if purge:
                session.sql(f"REORG TABLE {table} APPLY (PURGE)").collect()

    def vacuum(self, uri: str, retention_hours: float, *, dry_run: bool) -> int:
        """``VACUUM ... RETAIN <hours> HOURS [DRY RUN]`` as Spark SQL in the maintenance
        session (Delta's own retention check off for the call). See
        :meth:`TableStore.vacuum`."""
        session = self._maintenance_session()
        confs = {
            RETENTION_CHECK_CONF: "false",  # the floor is enforced by the caller
            USER_METADATA_CONF: _user_metadata("vacuum"),
        }
        with _session_confs(session, confs):
            rows = session.sql(
                f"VACUUM {_sql_table(uri)} RETAIN {retention_hours:g} HOURS"
                f"{' DRY RUN' if dry_run else ''}"
            ).collect()
        if dry_run:
            return len(rows)  # one row per file that would go
        # Spark returns the table's path, not the files: its log's VACUUM END has them.
        done = next((h for h in self.history(uri) if h.get("operation") == "VACUUM END"), {})
        return int((done.get("operationMetrics") or {}).get("numDeletedFiles", 0))

    def _maintenance_session(self) -> SparkSession:
        if self.spark is None:
            raise ConfigError("the delta-spark lake is maintained through Spark: no session given")
        return self.spark


def _sql_table(uri: str) -> str:
    """The table as Spark SQL names a Delta table by its path."""
    return "delta.`" + spark_path(uri).replace("`", "``") + "`"


def _user_metadata(operation: str) -> str:
    return CommitInfo(operation, WRITER).user_metadata()


def _committed(handle: Any, txn: Txn) -> bool:
    done = handle.transaction_version(txn.app_id)
    return done is not None and int(done) >= txn.version


LAST_VERSION_CONF = "spark.databricks.delta.lastCommitVersionInSession"
"""Set by Delta on the session after each commit it makes: the table version written."""


def _last_version(session: SparkSession) -> int | None:
    value = session.conf.get(LAST_VERSION_CONF, None)
    return None if value in (None, "") else int(value)


S3A_OPTIONS = {
    "AWS_REGION": "fs.s3a.endpoint.region",
    "AWS_ENDPOINT_URL": "fs.s3a.endpoint",
    "AWS_ACCESS_KEY_ID": "fs.s3a.access.key",
    "AWS_SECRET_ACCESS_KEY": "fs.s3a.secret.key",
    "AWS_SESSION_TOKEN": "fs.s3a.session.token",
}
"""``lake.storage_options`` (delta-rs's names, shared by both writers) → S3A's Hadoop options.
Without keys, S3A uses the AWS SDK's default credentials chain (on Kubernetes: the pod's
web-identity token)."""


def spark_path(uri: str) -> str:
    """The table's path as Hadoop names it: ``s3://`` is the S3A filesystem (``s3a://``)."""
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri


def hadoop_options(storage_options: dict[str, str]) -> dict[str, str]:
    """Hadoop options of a read/write: ``fs.*`` keys as given, AWS keys as S3A's."""
    options = {k: v for k, v in storage_options.items() if k.startswith("fs.")}
    for key, value in storage_options.items():
        if key in S3A_OPTIONS:
            options.setdefault(S3A_OPTIONS[key], value)
    if "AWS_ENDPOINT_URL" in storage_options:  # an S3-compatible server, not AWS
        options.setdefault("fs.s3a.path.style.access", "true")
    if storage_options.get("AWS_ALLOW_HTTP", "").lower() == "true":
        options.setdefault("fs.s3a.connection.ssl.enabled", "false")
    return options


@contextmanager
def _txn_confs(
    session: SparkSession, txn: Txn, info: CommitInfo, extra: dict[str, str]
) -> Iterator[None]:
    """Set the Delta txn and commit-metadata confs (and ``extra``) on ``session`` for one
    write, and always put them back as they were."""
    wanted = {
        TXN_APP_ID_CONF: txn.app_id,
        TXN_VERSION_CONF: str(txn.version),
        USER_METADATA_CONF: info.user_metadata(),
        **extra,
    }
    with _session_confs(session, wanted):
        yield


@contextmanager
def _session_confs(session: SparkSession, wanted: dict[str, str]) -> Iterator[None]:
    """Set ``wanted`` on ``session`` for the block, and always put them back as they were."""
    conf = session.conf
    before: dict[str, str | None] = {key: conf.get(key, None) for key in wanted}
    for key, value in wanted.items():
        conf.set(key, value)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                conf.unset(key)
            else:
                conf.set(key, old)


_JVM_ERROR = re.compile(r"^[\s:]*((?:[\w$]+\.)*[\w$]+(?:Exception|Error)): (.+)$")


def _write_error(what: str, uri: str, exc: Exception) -> TableWriteError:
    condition = spark_condition(exc)
    text = str(exc)
    if condition is not None:
        # Delta 4.4 on Spark 4.2 cannot render its own messages (its text reads "Cannot find
        # main error class"): the condition and its parameters say what failed.
        first = condition
        text = f"{condition}\n{text}"
    else:
        lines = text.strip().splitlines()
        # py4j's text starts "An error occurred while calling oN.execute."; the JVM's reason
        # is the first "pkg.SomeException: message" line after it.
        reasons = [
            m.group(1).rsplit(".", 1)[-1] + ": " + m.group(2)
            for m in map(_JVM_ERROR.match, lines)
            if m
        ]
        first = reasons[0] if reasons else (lines[0] if lines else type(exc).__name__)
    conflicts = (
        "ConcurrentAppendException",
        "ConcurrentDeleteReadException",
        "ConcurrentDeleteDeleteException",
        "ConcurrentTransactionException",
        "DELTA_CONCURRENT",
    )
    if any(name in text for name in conflicts):
        return CommitConflictError(f"{what} {uri} conflicted: {first}")
    return TableWriteError(f"{what} {uri} failed: {first}")


def _table_properties(layout: TableLayout, df: DataFrame) -> dict[str, str]:
    """The layout's table properties for a table created with ``df``'s schema."""
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        schema = to_arrow_schema(df.schema, timezone="UTC")
    except Exception as exc:  # a type Arrow cannot hold: Delta's default statistics
        log.warning("table statistics left to Delta's default: %s", exc)
        return dict(layout.properties)
    return layout.table_properties(schema)
