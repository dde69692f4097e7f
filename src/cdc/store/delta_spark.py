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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cdc.errors import CommitConflictError, TableWriteError
from cdc.store.base import TableStore, Txn, WriteOutcome

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "S3A_OPTIONS",
    "TXN_APP_ID_CONF",
    "TXN_VERSION_CONF",
    "DeltaSparkStore",
    "hadoop_options",
    "spark_path",
]

log = logging.getLogger(__name__)

TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"

MergeClauses = Callable[[Any], Any]
"""Adds the WHEN clauses to a ``DeltaMergeBuilder`` and returns it."""


class DeltaSparkStore(TableStore):
    """Delta tables written by Spark (the distributed writer)."""

    writer = "delta-spark"

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
        partition_by: Sequence[str] = (),
        properties: dict[str, str] | None = None,
    ) -> WriteOutcome:
        """Append ``df`` in one commit tagged with ``txn`` (the schema may gain columns).

        Args:
            df: the rows (not collected: the executors write them).
            uri: the table.
            txn: its app transaction; an already committed version is skipped.
            partition_by: partition columns when the append creates the table.
            properties: table properties when the append creates the table.

        Returns:
            Whether it was skipped, and the table version.

        Raises:
            TableWriteError: the write failed.
        """
        if self.committed(uri, txn):
            return WriteOutcome(skipped=True)
        creating = not self.exists(uri)
        writer = (
            df.write.format("delta")
            .mode("append")
            .option("txnAppId", txn.app_id)
            .option("txnVersion", str(txn.version))
            .option("mergeSchema", "true")
            .option("userMetadata", f"cdc {txn.app_id} {txn.version}")
        )
        for key, value in self._session_options().items():
            writer = writer.option(key, value)
        if creating:
            if partition_by:
                writer = writer.partitionBy(*partition_by)
            for key, value in (properties or {}).items():
                writer = writer.option(key, value)
        try:
            writer.save(spark_path(uri))
        except Exception as exc:  # py4j surfaces JVM errors as several types
            raise _write_error("append to", uri, exc) from exc
        return WriteOutcome(skipped=False, table_version=self._version(uri))

    def merge(
        self,
        source: DataFrame,
        uri: str,
        on: str,
        clauses: MergeClauses,
        txn: Txn,
    ) -> WriteOutcome:
        """One Delta MERGE of ``source`` (alias ``s``) into the table (alias ``t``).

        Args:
            source: the rows to merge (their session is the micro-batch's).
            uri: an existing table.
            on: the match condition.
            clauses: adds the WHEN clauses to the merge builder.
            txn: the app transaction; an already committed version is skipped.

        Returns:
            Whether it was skipped, rows written, and the table version.

        Raises:
            CommitConflictError: another writer committed a conflicting change meanwhile.
            TableWriteError: the MERGE failed otherwise.
        """
        if self.committed(uri, txn):
            return WriteOutcome(skipped=True)
        from delta.tables import DeltaTable

        session = source.sparkSession
        with _txn_confs(session, txn):
            try:
                options = self._session_options()
                target = (
                    DeltaTable.forPath(session, spark_path(uri), options)
                    if options
                    else DeltaTable.forPath(session, spark_path(uri))
                )
                builder = target.alias("t").merge(source.alias("s"), on).withSchemaEvolution()
                clauses(builder).execute()
            except Exception as exc:
                raise _write_error("merge into", uri, exc) from exc
        metrics = self._last_metrics(session, uri)
        rows = sum(
            int(metrics.get(name, 0))
            for name in (
                "numTargetRowsInserted",
                "numTargetRowsUpdated",
                "numTargetRowsDeleted",
            )
        )
        return WriteOutcome(skipped=False, rows=rows, table_version=self._version(uri))

    def _version(self, uri: str) -> int | None:
        table = self._open(uri)
        return None if table is None else int(table.version())

    def _last_metrics(self, session: SparkSession, uri: str) -> dict[str, str]:
        table = self._open(uri)
        if table is None:
            return {}
        history = table.history(1)
        metrics = history[0].get("operationMetrics", {}) if history else {}
        return {str(k): str(v) for k, v in dict(metrics).items()}

    def read_df(self, session: SparkSession, uri: str) -> DataFrame | None:
        """The table as a Spark DataFrame (None when it does not exist)."""
        if not self.exists(uri):
            return None
        reader = session.read.format("delta")
        for key, value in self._session_options().items():
            reader = reader.option(key, value)
        return reader.load(spark_path(uri))


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
def _txn_confs(session: SparkSession, txn: Txn) -> Iterator[None]:
    """Set the Delta txn confs on ``session`` for one write, and always remove them."""
    conf = session.conf
    conf.set(TXN_APP_ID_CONF, txn.app_id)
    conf.set(TXN_VERSION_CONF, str(txn.version))
    try:
        yield
    finally:
        conf.unset(TXN_APP_ID_CONF)
        conf.unset(TXN_VERSION_CONF)


_JVM_ERROR = re.compile(r"^[\s:]*((?:[\w$]+\.)*[\w$]+(?:Exception|Error)): (.+)$")


def _write_error(what: str, uri: str, exc: Exception) -> TableWriteError:
    text = str(getattr(exc, "desc", None) or exc)
    lines = text.strip().splitlines()
    # py4j's text starts "An error occurred while calling oN.execute."; the JVM's reason is
    # the first "pkg.SomeException: message" line after it.
    reasons = [
        m.group(1).rsplit(".", 1)[-1] + ": " + m.group(2) for m in map(_JVM_ERROR.match, lines) if m
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
