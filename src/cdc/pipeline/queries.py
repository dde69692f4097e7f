"""Query lifecycle: one Spark streaming query per pipeline, Kafka source → ``foreachBatch``.

:func:`start_query` checks the checkpoint against its tables and topic
(:func:`cdc.pipeline.checkpoint_guard.check_checkpoint`), builds the decoded
Kafka stream (:mod:`cdc.pipeline.kafka_source`) and hands each micro-batch to the writer that
``lake.writer`` selects: :class:`cdc.pipeline.batch_local.LocalBatchWriter` (delta-rs, one process)
or :class:`cdc.pipeline.batch_spark.DistributedBatchWriter` (delta-spark, on the executors).
:func:`run_pipelines` runs queries until they finish or one fails, and turns a failed query's
Python + JVM error text into one line (:func:`error_line`; Spark's Kafka data loss into the
partition, offsets and repair, :mod:`cdc.pipeline.kafka_loss`). Spark's checkpoint holds the
offsets; the writers make every table's commit exactly once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cdc import errors
from cdc.config.lake import table_paths
from cdc.config.settings import Settings, parse_duration_seconds
from cdc.core.sequence import SUFFIX_WIDTH, ordering_for
from cdc.errors import CdcError, ConfigError, DataLossError
from cdc.pipeline.batch import BatchStats, BatchWriter
from cdc.pipeline.checkpoint_guard import check_checkpoint, data_loss_message
from cdc.pipeline.kafka_loss import data_loss_of
from cdc.pipeline.kafka_source import decoded_stream
from cdc.runtime.faults import FaultHook
from cdc.runtime.spark_errors import spark_condition
from cdc.store import store_for

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

log = logging.getLogger(__name__)

__all__ = [
    "PipelineFailedError",
    "check_table_layout",
    "error_line",
    "run_pipelines",
    "start_query",
    "with_trigger",
]


class PipelineFailedError(CdcError):
    """A streaming query stopped with an error."""

    pipeline: str | None = None
    """The pipeline whose query failed."""


def start_query(
    spark: SparkSession,
    settings: Settings,
    name: str,
    available_now: bool,
    fault_hook: FaultHook | None = None,
    on_batch: Callable[[str, BatchStats], None] | None = None,
) -> StreamingQuery:
    """Start one pipeline's streaming query.

    Args:
        spark: the driver's session (see :func:`cdc.runtime.spark.build_session`).
        settings: service settings.
        name: pipeline name.
        available_now: drain what is in Kafka now and stop, instead of running continuously.
        fault_hook: test hook called around commits (never set in production).
        on_batch: callback with each batch's stats (metrics).
    """
    pipeline = settings.pipeline(name)
    checkpoint = settings.checkpoint_path(name)
    check_checkpoint(settings, name, checkpoint)
    check_table_layout(settings, name)
    batch_writer: type[BatchWriter[Any]]
    # Each writer is imported when chosen: delta-spark's loads delta and its JVM classes,
    # which a delta-rs run never needs.
    if settings.lake.writer == "delta-spark":
        from cdc.pipeline.batch_spark import DistributedBatchWriter

        batch_writer = DistributedBatchWriter
    else:
        from cdc.pipeline.batch_local import LocalBatchWriter

        batch_writer = LocalBatchWriter
    writer = (
        decoded_stream(spark, settings, pipeline, checkpoint)
        .writeStream.queryName(name)
        .option("checkpointLocation", checkpoint)
        .foreachBatch(batch_writer(name, pipeline, settings, checkpoint, fault_hook, on_batch))
    )
    query: StreamingQuery = with_trigger(writer, settings, available_now).start()
    return query


def with_trigger(writer: Any, settings: Settings, available_now: bool) -> Any:
    """A ``DataStreamWriter`` with the service's trigger: available-now, or the configured
    ``spark.trigger_interval``."""
    if available_now:
        return writer.trigger(availableNow=True)
    seconds = parse_duration_seconds(settings.spark.trigger_interval)
    return writer.trigger(processingTime=f"{int(seconds * 1000)} milliseconds")


def _query_error(query: StreamingQuery) -> str | None:
    exc = query.exception()
    if exc is None:
        return None
    text = str(getattr(exc, "desc", None) or exc)
    line = error_line(text)
    if line is None or "Cannot find main error class" in line:
        # A Delta error Delta 4.4 could not build on Spark 4.2 (see cdc.runtime.spark_errors).
        line = spark_condition(exc) or line
    return line or repr(exc)


_EXCEPTION_LINE = re.compile(r"^[\s:]*(Caused by: )?(?:[\w$]+\.)*(\w+(?:Error|Exception)): (.+)$")


def error_line(text: str) -> str | None:
    """The line that says what went wrong in a failed query's (Python + JVM) error text.

    Our own errors (``cdc.errors``) win, in their ``Name: message`` form; otherwise the last
    ``SomethingError: message`` line of the Python traceback, else the JVM's root cause (its
    last ``Caused by:``), else its first exception line, else the first line.
    """
    ours = set(errors.__all__)
    found: list[tuple[str, str]] = []
    causes: list[tuple[str, str]] = []
    for line in text.splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match:
            entry = (match.group(2), match.group(3).strip())
            (causes if match.group(1) else found).append(entry)
    for name, message in found:
        if name in ours:
            return f"{name}: {message}"
    # py4j's own line only says which JVM call failed; the JVM's reason comes after it.
    found = [(n, m) for n, m in found if not m.startswith("An error occurred while calling")]
    python = [(n, m) for n, m in found if not n.endswith("Exception")]
    if python:
        name, message = python[-1]
        return f"{name}: {message}"
    if causes:  # the JVM's root cause says more than its wrappers
        name, message = causes[-1]
        return f"{name}: {message}"
    if found:
        name, message = found[0]
        return f"{name}: {message}"
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else None


def run_pipelines(
    spark: SparkSession,
    settings: Settings,
    names: list[str],
    available_now: bool,
    fault_hook: FaultHook | None = None,
    on_batch: Callable[[str, BatchStats], None] | None = None,
    poll_seconds: float = 0.5,
    discover: Callable[[Settings], Settings] | None = None,
) -> None:
    """Run pipelines until they finish (available-now) or one fails / the process is stopped.

    A table of a ``databases`` stanza (:mod:`cdc.pipeline.databases`) is its own query: its
    failure stops that table only (logged at once; raised, with every other such failure,
    once the rest are done). ``discover`` (the settings with the tables found since) is called
    every ``discover_every_seconds`` of the stanzas: a new table's query starts at once.

    Raises:
        PipelineFailedError: a query stopped with an error (the others are stopped too), or
            tables of a database did (after the others finished).
        DataLossError: a query stopped because Kafka no longer holds records it had to read
            (``failOnDataLoss``); the message names them and the repairing replay.
    """
    queries = {
        n: start_query(spark, settings, n, available_now, fault_hook, on_batch) for n in names
    }
    failed_tables: dict[str, str] = {}
    # Discovery adds tables of the stanzas whose tables this run was given (all, or one).
    databases = {settings.pipeline(n).database for n in names} - {None}
    every = min((db.discover_every_seconds for db in settings.databases.values()), default=0.0)
    next_look = time.monotonic() + every if discover is not None and every else None
    try:
        while True:
            # Whether all have stopped is read before their errors: a query that stops between
            # the two is then still read for its error (read after, its failure went unseen).
            finished = all(not q.isActive for q in queries.values())
            for name, query in list(queries.items()):
                if query.isActive or name in failed_tables:
                    continue
                error = _query_error(query)
                if error is None:
                    continue
                loss = data_loss_of(query.exception())
                if loss is not None:  # Spark's paragraph, as partition, offsets, repair
                    lost = DataLossError(data_loss_message(settings, name, loss))
                    lost.pipeline = name
                    raise lost
                if settings.pipeline(name).database is not None:  # one table of a database
                    failed_tables[name] = error
                    log.error(
                        "pipeline %s failed (its database's other tables go on): %s", name, error
                    )
                    continue
                failed = PipelineFailedError(f"pipeline {name} failed: {error}")
                failed.pipeline = name
                raise failed
            if next_look is not None and time.monotonic() >= next_look:
                assert discover is not None
                settings = discover(settings)
                for name, pipeline in settings.pipelines.items():
                    new = pipeline.database is not None and name not in queries
                    if new and pipeline.enabled and pipeline.database in databases:
                        log.info(
                            "pipeline %s: new table %s, its query starts", name, pipeline.topic
                        )
                        queries[name] = start_query(
                            spark, settings, name, available_now, fault_hook, on_batch
                        )
                next_look = time.monotonic() + every
            if finished and all(not q.isActive for q in queries.values()):
                break
            time.sleep(poll_seconds)
    finally:
        for query in queries.values():
            if query.isActive:
                query.stop()
    if failed_tables:
        listed = "; ".join(f"{n}: {e}" for n, e in sorted(failed_tables.items()))
        failed = PipelineFailedError(
            f"{len(failed_tables)} table(s) failed, the others ran: {listed}"
        )
        failed.pipeline = sorted(failed_tables)[0]
        raise failed


def check_table_layout(settings: Settings, name: str) -> None:
    """Refuse to fold a pipeline's changes onto a dimension sequenced another way.

    Sequences of different layouts do not compare (a table written before source positions
    existed holds ``time.partition.offset``): folding new changes onto it would order them
    wrongly without a sign. The check reads one row.

    Raises:
        ConfigError: the silver table's sequences have another width than the pipeline's.
    """
    pipeline = settings.pipeline(name)
    if pipeline.kind != "scd2":
        return
    ordering = ordering_for(pipeline.sequence_by, pipeline.source_format)
    uri = table_paths(settings, pipeline)["silver"]
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    if not store.exists(uri) or "_seq_open" not in store.columns(uri):
        return
    found = store.query(uri, "SELECT length(_seq_open) AS n FROM t LIMIT 1").column("n")
    if not len(found) or found[0].as_py() in (None, ordering.width):
        return
    width = found[0].as_py()
    held = "source time, partition, offset" if width == SUFFIX_WIDTH else f"{width} characters"
    raise ConfigError(
        f"pipeline {name}: {pipeline.target} was sequenced by another sequence_by ({held}) than"
        f" the pipeline's now ({ordering.describe()}): set pipelines.{name}.sequence_by to"
        " what the table was built with (source.ts_ms for tables from before source positions),"
        " or rebuild it into a new lake root from the earliest offsets"
    )
