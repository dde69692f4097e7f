"""Wiring: Kafka source → ``foreachBatch`` → bronze, quarantine and silver, one query per pipeline.

Each micro-batch is collected to the driver as Arrow, split into valid and quarantined rows
(pure, :mod:`cdc.changes`) and written to three Delta tables, each commit carrying the app
transaction ``(cdc/<pipeline>/<table>, txn_base + batch_id)``. Spark's checkpoint holds the
offsets; a batch re-run after a crash is skipped table by table where it already committed.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl

from cdc.changes import business_columns, fact_rows, scd2_changes, split_batch
from cdc.checkpoint import read_start_file, read_topic_id, read_txn_base, write_topic_id
from cdc.config import PipelineSettings, Settings, parse_duration_seconds
from cdc.errors import CdcError, CommitConflictError, DataLossError
from cdc.kafka_source import decoded_stream
from cdc.scd2 import Scd2Spec, apply_scd2, empty_dimension, late_keys
from cdc.store.delta_rs import DeltaSink, Txn

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

__all__ = [
    "BatchStats",
    "BatchWriter",
    "PipelineFailedError",
    "check_topic_identity",
    "error_line",
    "fault_hook_from_env",
    "run_pipelines",
    "start_query",
    "table_paths",
    "txn_app_id",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

def txn_app_id(pipeline: str, role: str, table_uri: str) -> str:
    """The app-transaction id of one pipeline's writes to one table."""
    return f"cdc/{pipeline}/{role}/{Path(table_uri).name}"


FaultHook = Callable[[str, int], None]
"""Called with (stage, batch_id) around each commit; tests use it to inject crashes."""


FAULT_ENV = "CDC_FAULT_INJECT"
FAULT_STAGES = ("before-commit", "mid-commit", "after-commit")


def fault_hook_from_env(environ: dict[str, str] | None = None) -> FaultHook | None:
    """A hook that SIGKILLs this process at ``$CDC_FAULT_INJECT`` = ``<stage>:<batch_id>``.

    For crash tests only: ``cdc run`` refuses it in the ``prod`` env. Stages are
    ``before-commit`` (nothing written), ``mid-commit`` (bronze and quarantine written,
    silver not) and ``after-commit`` (all tables written, Spark's commit log not).
    """
    import os
    import signal

    spec = (environ if environ is not None else dict(os.environ)).get(FAULT_ENV)
    if not spec:
        return None
    stage, _, batch = spec.partition(":")
    if stage not in FAULT_STAGES or not batch.isdigit():
        raise CdcError(
            f"{FAULT_ENV}={spec!r}: expected <stage>:<batch_id>, "
            f"stage one of {', '.join(FAULT_STAGES)}"
        )
    target = int(batch)

    def hook(at: str, batch_id: int) -> None:
        if at == stage and batch_id == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


class PipelineFailedError(CdcError):
    """A streaming query stopped with an error."""


def table_paths(settings: Settings, pipeline: PipelineSettings) -> dict[str, str]:
    """Delta table URIs of a pipeline: bronze, quarantine and silver."""
    topic_dir = pipeline.topic.replace(".", "_")
    return {
        "bronze": settings.lake.path("bronze", topic_dir),
        "quarantine": settings.lake.path("quarantine", topic_dir),
        "silver": settings.lake.path("silver", pipeline.target),
    }


MAX_COMMIT_ATTEMPTS = 5
"""MERGE attempts per batch when another writer commits to the table in between."""


def _backoff(attempt: int) -> None:
    """Exponential back-off with jitter between MERGE attempts (another writer is busy)."""
    time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))


def orphans_path(settings: Settings, pipeline: PipelineSettings) -> str:
    """Side table of an SCD2 pipeline: keys with no row yet whose deletes were seen."""
    return settings.lake.path("silver", f"_orphans_{pipeline.target}")


@dataclass
class BatchStats:
    """What one micro-batch did (also fed to metrics)."""

    batch_id: int
    input_rows: int = 0
    bronze_rows: int = 0
    quarantined: int = 0
    inserted: int = 0
    updated: int = 0
    closed: int = 0
    duplicates: int = 0
    late_keys: int = 0
    retries: int = 0
    skipped_tables: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per step: ``read`` (the Spark job that fetches and decodes), ``bronze``
    (bronze and quarantine appends), ``state`` (reading the rows the fold needs), ``fold``
    (SCD2), ``merge`` (silver and orphans commits)."""

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the time spent in the block to ``phases[phase]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - started


class BatchWriter:
    """The ``foreachBatch`` function of one pipeline (runs on the driver)."""

    def __init__(
        self,
        name: str,
        pipeline: PipelineSettings,
        settings: Settings,
        checkpoint: str,
        fault_hook: FaultHook | None = None,
        on_batch: Callable[[str, BatchStats], None] | None = None,
    ) -> None:
        self.name = name
        self.pipeline = pipeline
        self.settings = settings
        self.checkpoint = checkpoint
        storage = settings.lake.resolved_storage_options()
        paths = table_paths(settings, pipeline)
        # SCD2 history is append-only in its own partition; a MERGE rewrites current rows only.
        partitions = {"silver": ["is_current"]} if pipeline.kind == "scd2" else {}
        self.sinks = {
            role: DeltaSink(uri, storage, partitions.get(role)) for role, uri in paths.items()
        }
        if pipeline.kind == "scd2":
            self.sinks["orphans"] = DeltaSink(orphans_path(settings, pipeline), storage)
        self.fault_hook = fault_hook
        self.on_batch = on_batch
        self._spec: Scd2Spec | None = None
        self._txn_base: int | None = None
        start = read_start_file(checkpoint)
        self._landed: dict[str, dict[str, int]] = (start or {}).get("landed", {})
        self._landed_quarantine: dict[str, dict[str, int]] = (start or {}).get(
            "landed_quarantine", self._landed
        )

    def txn(self, role: str, batch_id: int) -> Txn:
        app_id = txn_app_id(self.name, role, self.sinks[role].uri)
        return Txn(app_id=app_id, version=self.txn_base() + batch_id)

    def txn_base(self) -> int:
        if self._txn_base is None:
            self._txn_base = read_txn_base(self.checkpoint)
        return self._txn_base

    def _fault(self, stage: str, batch_id: int) -> None:
        if self.fault_hook is not None:
            self.fault_hook(stage, batch_id)

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        table = batch_df.toArrow()
        read = time.monotonic() - started
        # After the read: a topic recreated while the batch was fetched is caught here, before
        # anything is written. A broker that is briefly away is waited for, as Spark's source
        # waits for it.
        check_topic_identity(
            self.settings, self.name, self.checkpoint, patience_s=BROKER_PATIENCE_S
        )
        stats = self.process(table, batch_id, datetime.now(UTC))
        stats.phases["read"] = read
        stats.seconds = time.monotonic() - started
        log.info("pipeline %s batch %d: %s", self.name, batch_id, stats)
        if self.on_batch is not None:
            self.on_batch(self.name, stats)

    def process(self, table: Any, batch_id: int, now: datetime) -> BatchStats:
        """Write one decoded batch (Arrow) to bronze, quarantine and silver."""
        stats = BatchStats(batch_id=batch_id, input_rows=table.num_rows)
        split = split_batch(table, batch_id, now)
        if self._landed or self._landed_quarantine:
            split = split.without_landed(self._landed, self._landed_quarantine)
        stats.bronze_rows, stats.quarantined = split.bronze.num_rows, split.quarantine.num_rows
        self._fault("before-commit", batch_id)
        for role, data in (("bronze", split.bronze), ("quarantine", split.quarantine)):
            with stats.timed("bronze"):
                skipped = (
                    data.num_rows
                    and self.sinks[role].append(data, self.txn(role, batch_id)).skipped
                )
            if skipped:
                stats.skipped_tables.append(role)
        self._fault("mid-commit", batch_id)
        if split.valid.num_rows:
            if self.pipeline.kind == "scd2":
                self._merge_scd2(split.valid, batch_id, stats)
            else:
                self._merge_facts(split.valid, batch_id, stats)
        self._fault("after-commit", batch_id)
        return stats

    def _scd2_spec(self, schema: Any) -> Scd2Spec:
        p = self.pipeline
        columns = business_columns(schema, p.source_format)
        # A new reader version (e.g. an added optional field) changes the columns mid-run.
        if self._spec is None or self._spec.columns != tuple(c for c in columns if c not in p.keys):
            try:
                self._spec = Scd2Spec.build(
                    keys=p.keys,
                    columns=columns,
                    track_history=p.track_history,
                    track_history_except=p.track_history_except,
                )
            except ValueError as exc:
                raise CdcError(f"pipeline {self.name}: {exc}") from None
        return self._spec

    def _merge_scd2(self, valid: Any, batch_id: int, stats: BatchStats) -> None:
        spec = self._scd2_spec(valid.schema)
        p = self.pipeline
        changes = scd2_changes(valid, spec, p.source_format, p.sequence_by)
        keys = list(spec.keys)
        sink, orphans = self.sinks["silver"], self.sinks["orphans"]
        txn = self.txn("silver", batch_id)

        def merge_once() -> None:
            if sink.committed(txn):
                stats.skipped_tables.append("silver")
                return
            with stats.timed("state"):
                affected = changes.select(keys).unique()
                seen = orphans.read_keys(affected)
                existing = sink.read_scd2_rows(
                    affected,
                    lambda rows: late_keys(
                        _with_columns_of(rows, changes, spec), changes, spec, seen
                    ),
                )
                if existing is None:
                    existing = empty_dimension(spec, dict(changes.schema))
                else:
                    existing = _with_columns_of(existing, changes, spec)
                late = late_keys(existing, changes, spec, seen)
                history = self._history(late, spec) if late.height else None
            with stats.timed("fold"):
                result = apply_scd2(existing, changes, spec, history=history, seen=seen)
            with stats.timed("merge"):
                # Orphans first: if we die before the MERGE, the re-run still sees them.
                if result.orphans is not None and result.orphans.height:
                    orphans.append(
                        result.orphans.to_arrow(compat_level=pl.CompatLevel.oldest()),
                        self.txn("orphans", batch_id),
                    )
                sink.merge_scd2(result, keys, txn)
            stats.inserted, stats.updated = result.inserted, result.updated
            stats.closed, stats.duplicates = result.closed, result.duplicate_events
            stats.late_keys = late.height

        self._with_retries(merge_once, batch_id, stats, log_attempt=True)

    def _history(self, late: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame | None:
        """Every change event ever received for ``late`` keys, from bronze (the raw log)."""
        p = self.pipeline
        first = spec.keys[0]
        rows = self.sinks["bronze"].read_where(f"key.{first}", late.get_column(first))
        if rows is None or rows.height == 0:
            return None
        events = scd2_changes(
            rows.to_arrow(compat_level=pl.CompatLevel.oldest()),
            spec,
            p.source_format,
            p.sequence_by,
        )
        return events.join(late, on=list(spec.keys), how="semi", nulls_equal=True)

    def _merge_facts(self, valid: Any, batch_id: int, stats: BatchStats) -> None:
        event_id = self.pipeline.event_id
        assert event_id is not None
        rows = fact_rows(valid, event_id)
        outcome = self._with_retries(
            lambda: self.sinks["silver"].insert_new(rows, event_id, self.txn("silver", batch_id)),
            batch_id,
            stats,
        )
        if outcome.skipped:
            stats.skipped_tables.append("silver")
        stats.inserted = outcome.rows
        stats.duplicates = int(valid.num_rows) - rows.height

    def _with_retries(
        self,
        attempt_once: Callable[[], _T],
        batch_id: int,
        stats: BatchStats,
        *,
        log_attempt: bool = False,
    ) -> _T:
        """Run one write attempt, again after a back-off while another writer commits first.

        Args:
            attempt_once: reads what it needs and commits; raises ``CommitConflictError`` when
                another writer committed to the table in between.
            batch_id: the batch, for the log.
            stats: the batch's stats; counts the retries.
            log_attempt: name the attempt number in the log line of a retry.

        Returns:
            What the attempt that got through returned.

        Raises:
            CommitConflictError: all ``MAX_COMMIT_ATTEMPTS`` attempts conflicted.
        """
        attempt = 1
        while True:
            try:
                return attempt_once()
            except CommitConflictError as exc:
                if attempt == MAX_COMMIT_ATTEMPTS:
                    raise
                if log_attempt:
                    log.warning(
                        "pipeline %s batch %d: %s; retrying (%d)", self.name, batch_id, exc, attempt
                    )
                else:
                    log.warning("pipeline %s batch %d: %s; retrying", self.name, batch_id, exc)
                stats.retries += 1
                _backoff(attempt)
                attempt += 1


def _with_columns_of(rows: pl.DataFrame, changes: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Rows written before the contract gained a column get it as null (schema evolution)."""
    missing = [c for c in (*spec.keys, *spec.columns) if c not in rows.columns]
    if not missing:
        return rows
    return rows.with_columns(pl.lit(None, dtype=changes.schema[c]).alias(c) for c in missing)


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
        spark: the driver's session (see :func:`cdc.spark.build_session`).
        settings: service settings.
        name: pipeline name.
        available_now: drain what is in Kafka now and stop, instead of running continuously.
        fault_hook: test hook called around commits (never set in production).
        on_batch: callback with each batch's stats (metrics).
    """
    pipeline = settings.pipeline(name)
    checkpoint = settings.checkpoint_path(name)
    check_topic_identity(settings, name, checkpoint)
    batch_writer: type[BatchWriter] = BatchWriter
    if settings.lake.writer == "delta-spark":
        from cdc.batch_spark import DistributedBatchWriter

        batch_writer = DistributedBatchWriter
    writer = (
        decoded_stream(spark, settings, pipeline, checkpoint)
        .writeStream.queryName(name)
        .option("checkpointLocation", checkpoint)
        .foreachBatch(batch_writer(name, pipeline, settings, checkpoint, fault_hook, on_batch))
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        seconds = parse_duration_seconds(settings.spark.trigger_interval)
        writer = writer.trigger(processingTime=f"{int(seconds * 1000)} milliseconds")
    return writer.start()


BROKER_PATIENCE_S = 300.0
"""How long a running query's per-batch topic check waits for an unreachable broker (a broker
restart takes seconds; Spark's Kafka source rides such an outage out too)."""


def current_topic_id(settings: Settings, topic: str) -> str | None:
    """The cluster's id of ``topic`` now (None: no such topic), asked with the service's
    Kafka settings.

    Raises:
        BrokerUnavailableError: the cluster did not answer within ``kafka.connect_timeout_s``.
    """
    from cdc.kafka_admin import topic_id

    kafka = settings.kafka
    return topic_id(
        kafka.bootstrap_servers,
        topic,
        client_config=kafka.client_config(),
        timeout_s=kafka.connect_timeout_s,
    )


def check_topic_identity(
    settings: Settings, name: str, checkpoint: str, *, patience_s: float | None = None
) -> None:
    """Refuse offsets that belong to another incarnation of the pipeline's topic.

    The first time the topic is seen, its id is recorded in the checkpoint. From then on, a
    different id (the topic was deleted and created again, or the broker lost its data and the
    topic came back) means the checkpoint's offsets name records that no longer exist, or
    other records: reading on would skip or mix them silently.

    Args:
        settings: service settings.
        name: the pipeline.
        checkpoint: its checkpoint folder.
        patience_s: keep asking an unreachable cluster this long (None: one request of
            ``kafka.connect_timeout_s``, the fast failure a start wants).

    Raises:
        DataLossError: the topic's id differs from the recorded one, or the topic is gone.
        BrokerUnavailableError: the cluster did not answer in time.
    """
    from cdc.errors import BrokerUnavailableError

    topic = settings.pipeline(name).topic
    deadline = time.monotonic() + (patience_s or 0.0)
    while True:
        try:
            current = current_topic_id(settings, topic)
            break
        except BrokerUnavailableError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("pipeline %s: %s; waiting for the broker", name, exc)
            time.sleep(1.0)
    recorded = read_topic_id(checkpoint, topic)
    if recorded is None:
        if current is not None:
            write_topic_id(checkpoint, topic, current)
        return
    if current == recorded:
        return
    now = "no longer exists" if current is None else f"now has id {current}"
    raise DataLossError(
        f"pipeline {name}: topic {topic} {now}, but checkpoint {checkpoint} holds offsets of"
        f" topic id {recorded} (the topic was deleted and recreated, or the broker lost its"
        f" data): its offsets do not name the records now in the topic. Re-read the topic with"
        f" `cdc replay --pipeline {name} --earliest`"
    )


def _query_error(query: StreamingQuery) -> str | None:
    exc = query.exception()
    if exc is None:
        return None
    text = str(getattr(exc, "desc", None) or exc)
    return error_line(text) or repr(exc)


_EXCEPTION_LINE = re.compile(
    r"^[\s:]*(Caused by: )?(?:[\w$]+\.)*(\w+(?:Error|Exception)): (.+)$"
)


def error_line(text: str) -> str | None:
    """The line that says what went wrong in a failed query's (Python + JVM) error text.

    Our own errors (``cdc.errors``) win, in their ``Name: message`` form; otherwise the last
    ``SomethingError: message`` line of the Python traceback, else the JVM's root cause (its
    last ``Caused by:``), else its first exception line, else the first line.
    """
    from cdc import errors

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
) -> None:
    """Run pipelines until they finish (available-now) or one fails / the process is stopped.

    Raises:
        PipelineFailedError: a query stopped with an error (the others are stopped too).
    """
    queries = {
        n: start_query(spark, settings, n, available_now, fault_hook, on_batch) for n in names
    }
    try:
        while True:
            for name, query in queries.items():
                if not query.isActive:
                    error = _query_error(query)
                    if error is not None:
                        raise PipelineFailedError(f"pipeline {name} failed: {error}")
            if all(not q.isActive for q in queries.values()):
                return
            time.sleep(poll_seconds)
    finally:
        for query in queries.values():
            if query.isActive:
                query.stop()
