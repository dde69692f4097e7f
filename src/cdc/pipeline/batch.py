"""The path of every pipeline's micro-batch, whichever writer runs it.

:class:`BatchWriter` owns the path (read → topic identity → expectations → bronze and
quarantine appends → SCD2 fold and MERGE, or facts → counts → report) and its rules: the
batch's stats, its app transactions (``(cdc/<pipeline>/<table>, txn_base + batch_id)``: a
batch re-run after a crash is skipped table by table where it already committed), the
crash-injection stages, the SCD2 spec and the retry of a lost commit race. A writer supplies
its engine's steps: :class:`cdc.pipeline.batch_local.LocalBatchWriter` (delta-rs, one process) and
:class:`cdc.pipeline.batch_spark.DistributedBatchWriter` (delta-spark, on the executors).
"""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pyarrow as pa

from cdc.config.lake import pipeline_tables, txn_app_id
from cdc.config.settings import PipelineSettings, Settings
from cdc.core.ranges import Ranges, ranges_from_json
from cdc.core.scd2 import DIM_SYSTEM_COLUMNS, Scd2Spec
from cdc.errors import CdcError, CommitConflictError
from cdc.ingest.changes import FACT_LINEAGE, business_columns
from cdc.ingest.schema_changes import (
    SchemaChange,
    SchemaChangeError,
    column_changes,
    describe,
    key_changes,
)
from cdc.pipeline.checkpoint import (
    CheckpointIdentity,
    TableMark,
    read_identity,
    read_start_file,
    read_txn_base,
    write_identity,
)
from cdc.pipeline.expectations import Counts, Expectations, expectations_for, record_counts
from cdc.pipeline.topic_identity import BROKER_PATIENCE_S, check_topic_identity
from cdc.runtime.faults import FaultHook
from cdc.store import store_for
from cdc.store.base import Txn, WriteOutcome

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from cdc.ingest.decoder import TopicDecoder

__all__ = ["MAX_COMMIT_ATTEMPTS", "BatchStats", "BatchWriter", "start_file_landed"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Batch = TypeVar("_Batch")

MAX_COMMIT_ATTEMPTS = 5
"""MERGE attempts per batch when another writer commits to the table in between."""


def _backoff(attempt: int) -> None:
    """Exponential back-off with jitter between MERGE attempts (another writer is busy)."""
    time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))


@dataclass
class BatchStats:
    """What one micro-batch did (also fed to metrics)."""

    batch_id: int
    input_rows: int = 0
    bronze_rows: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    """Of :attr:`quarantined`, how many per error code (``decode_error``, ...)."""
    valid_rows: int = 0
    """Rows that passed the contract and the expectations, landed before or not: silver's
    input."""
    inserted: int = 0
    updated: int = 0
    closed: int = 0
    duplicates: int = 0
    late_keys: int = 0
    unavailable_values: dict[str, int] = field(default_factory=dict)
    """Change events holding a placeholder for an unchanged value (TOAST), per column."""
    retries: int = 0
    skipped_tables: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per step: ``read`` (fetch and decode), ``bronze`` (expectations, bronze and
    quarantine appends), ``state`` (reading the rows the fold needs: delta-rs; on
    delta-spark the reads run inside the fold's jobs), ``fold`` (SCD2), ``merge`` (silver and
    orphans commits), ``check`` (the SCD2 invariants of the keys the batch touched, from
    the fold's rows: delta-rs; on delta-spark they are checked inside the fold)."""
    invariant_violations: dict[str, int] | None = None
    """SCD2 invariant violations per kind in the rows of the batch's keys once merged (empty:
    sound; None: not checked, e.g. a facts batch). See :mod:`cdc.ops.verify`."""
    expectation_failures: Counts = field(default_factory=dict)
    """Records that failed each ``warn``/``drop`` expectation: ``{rule: {action: n}}`` (every
    such rule, zeros included). See :mod:`cdc.pipeline.expectations`."""

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the time spent in the block to ``phases[phase]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - started


def start_file_landed(start: dict[str, Any] | None, topic: str) -> Ranges:
    """The landed ranges a replay's start file holds (nothing for a checkpoint of ``cdc run``).

    A start file written before the ranges existed holds per-partition high-water marks
    (``landed``, ``landed_quarantine``): every offset below them had landed.
    """
    if not start:
        return {}
    if "landed_ranges" in start:
        return ranges_from_json(start["landed_ranges"])
    marks: dict[str, int] = {}
    for key in ("landed", "landed_quarantine"):
        for partition, offset in ((start.get(key) or {}).get(topic) or {}).items():
            marks[partition] = max(marks.get(partition, 0), int(offset))
    return ranges_from_json({p: [[0, o]] for p, o in marks.items()})


class BatchWriter(ABC, Generic[_Batch]):
    """The ``foreachBatch`` function of one pipeline (called on the driver).

    This class owns a micro-batch's path, the same on both writers (:meth:`_run`): read the
    batch → check the topic's identity → judge the expectations (a ``fail`` rule stops here)
    → append bronze and quarantine → fold the changes and MERGE them (SCD2) or insert the
    facts → record the counts → report. A writer supplies only its engine's steps (the
    abstract methods), on its own representation of the batch (``_Batch``).
    """

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
        self.uris = pipeline_tables(settings, pipeline)
        """The pipeline's tables by role: bronze, quarantine, silver (and orphans)."""
        self.fault_hook = fault_hook
        self.on_batch = on_batch
        self._spec: Scd2Spec | None = None
        self._txn_base: int | None = None
        self._landed: Ranges = start_file_landed(read_start_file(checkpoint), pipeline.topic)
        """Offsets bronze or quarantine held when a replay prepared this checkpoint."""
        self.expectations: Expectations | None = expectations_for(name, pipeline, settings)
        """The pipeline's data-quality rules, checked against its record at start."""
        self._identity: CheckpointIdentity | None = None
        self._checked_schema: pa.Schema | None = None

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        """Write one micro-batch to the pipeline's tables (exactly once per table)."""
        started = time.monotonic()
        stats = BatchStats(batch_id=batch_id)
        batch = self._hold(batch_df, stats)
        try:
            self._run(batch, batch_id, datetime.now(UTC), stats, None, check_topic=True)
        finally:
            self._release(batch)
        stats.seconds = time.monotonic() - started
        self._report(stats)

    def _run(
        self,
        batch: _Batch,
        batch_id: int,
        now: datetime,
        stats: BatchStats,
        topic_id: str | None,
        *,
        check_topic: bool,
    ) -> None:
        """The path of one batch (see the class docstring)."""
        with stats.timed("read"):
            self._count(batch, stats)
            if stats.input_rows:
                self._check_schema(self._arrow_schema(batch))
        if check_topic:
            # After the read: a topic recreated while the batch was fetched is caught here,
            # before anything is written. A broker that is briefly away is waited for, as
            # Spark's source waits for it.
            topic_id = check_topic_identity(
                self.settings, self.name, self.checkpoint, patience_s=BROKER_PATIENCE_S
            )
        with stats.timed("bronze"):
            if self.expectations is not None:  # a fail rule raises: nothing may be written
                stats.expectation_failures = self._judge(batch, batch_id)
            self._split(batch, batch_id, now, topic_id, stats)
            if self.pipeline.kind == "scd2" and self.settings.unavailable_values(self.name):
                self._unavailable(batch, now, stats)
        self._fault("before-commit", batch_id)
        for role in ("bronze", "quarantine"):
            rows = stats.bronze_rows if role == "bronze" else stats.quarantined
            if not rows:
                continue
            with stats.timed("bronze"):
                if self._append(role, batch, batch_id, now, topic_id).skipped:
                    stats.skipped_tables.append(role)
        self._count_expectations(stats)
        self._fault("mid-commit", batch_id)
        if stats.valid_rows:
            if self.pipeline.kind == "scd2":
                self._scd2(batch, batch_id, stats)
            else:
                self._facts(batch, batch_id, stats)
        self._fault("after-commit", batch_id)

    # ------------------------------------------------------------------ the engine's steps

    @abstractmethod
    def _hold(self, batch_df: DataFrame, stats: BatchStats) -> _Batch:
        """Take the micro-batch in the engine's form (kept until :meth:`_release`)."""

    def _release(self, batch: _Batch) -> None:
        """Let go of what :meth:`_hold` kept."""

    @abstractmethod
    def _count(self, batch: _Batch, stats: BatchStats) -> None:
        """Read the batch (fetch and decode, where the engine is lazy); at least
        ``stats.input_rows``."""

    @abstractmethod
    def _arrow_schema(self, batch: _Batch) -> pa.Schema:
        """The decoded batch's schema, as Arrow (its ``key`` and ``value`` structs)."""

    @abstractmethod
    def _widen(self, role: str, incoming: pa.Schema) -> bool:
        """Widen the columns of the table of ``role`` whose ``incoming`` type is wider (the
        store's ``widen``); whether it did."""

    @abstractmethod
    def _judge(self, batch: _Batch, batch_id: int) -> Counts:
        """Apply the expectations: ``drop`` failures are marked for quarantine, ``fail``
        raises ``ExpectationFailedError``."""

    @abstractmethod
    def _split(
        self, batch: _Batch, batch_id: int, now: datetime, topic_id: str | None, stats: BatchStats
    ) -> None:
        """Split the judged batch into bronze, quarantine and valid rows (rows bronze or
        quarantine already hold are not appended again); count them into ``stats``: bronze
        and quarantine rows, quarantine reasons, valid rows."""

    @abstractmethod
    def _unavailable(self, batch: _Batch, now: datetime, stats: BatchStats) -> None:
        """Count the split's placeholders for unchanged values per column
        (``stats.unavailable_values``) and move the records whose placeholders nothing can
        stand for (:func:`cdc.core.scd2.unresolvable_unavailable`) from the valid rows to
        quarantine, recounting ``stats``: before anything lands."""

    @abstractmethod
    def _append(
        self, role: str, batch: _Batch, batch_id: int, now: datetime, topic_id: str | None
    ) -> WriteOutcome:
        """Append the batch's rows of ``role`` (``bronze``, ``quarantine``) not landed before,
        with the audit columns (batch id, time, topic id)."""

    @abstractmethod
    def _scd2(self, batch: _Batch, batch_id: int, stats: BatchStats) -> None:
        """Fold the batch's valid changes (:func:`cdc.core.scd2.fold_pass`, as many passes as keys
        need) and MERGE the result into the dimension; check the keys' rows after it."""

    @abstractmethod
    def _facts(self, batch: _Batch, batch_id: int, stats: BatchStats) -> None:
        """Insert the batch's facts (:func:`cdc.ingest.changes.fact_rows`) whose event id the table
        does not hold."""

    def txn(self, role: str, batch_id: int) -> Txn:
        """The app transaction of this batch's write to the table ``role``."""
        app_id = txn_app_id(self.name, role, self.uris[role])
        return Txn(app_id=app_id, version=self.txn_base() + batch_id)

    def txn_base(self) -> int:
        """Added to batch ids (a replay's checkpoint starts its batches at 0 again)."""
        if self._txn_base is None:
            self._txn_base = read_txn_base(self.checkpoint)
        return self._txn_base

    def _count_expectations(self, stats: BatchStats) -> None:
        """Add the batch's expectation failures to the totals ``cdc status`` reads (call it
        after the bronze and quarantine commits)."""
        if self.expectations is not None:
            record_counts(self.checkpoint, stats.batch_id, stats.expectation_failures)

    def _fault(self, stage: str, batch_id: int) -> None:
        if self.fault_hook is not None:
            self.fault_hook(stage, batch_id)

    def _note_commits(self, stats: BatchStats) -> None:
        """Record in the checkpoint's identity that the tables hold this batch's commits.

        Bronze and quarantine take the batch's txn version (it committed there, or had
        already: a skipped write). A table the identity has no mark of yet (created during
        this run) is read once for its Delta id. A later start checks the tables still hold
        all of it (:mod:`cdc.pipeline.checkpoint_guard`).
        """
        written = {
            "bronze": stats.bronze_rows > 0,
            "quarantine": stats.quarantined > 0,
            "silver": stats.inserted + stats.updated + stats.closed > 0,
        }
        roles = [r for r, w in written.items() if w or r in stats.skipped_tables]
        if not roles:
            return
        before = self._identity or read_identity(self.checkpoint)
        if before is None:
            before = CheckpointIdentity(self.name, self.pipeline.topic, {})
        version = self.txn_base() + stats.batch_id
        marks = dict(before.tables)
        for role in roles:
            uri, mark = self.uris[role], marks.get(role)
            if mark is None or mark.uri != uri:
                options = self.settings.lake.resolved_storage_options()
                state = store_for(self.settings.lake.writer, options).log_state(
                    uri, txn_app_id(self.name, role, uri)
                )
                if state is None:
                    continue
                mark = TableMark(uri, state.table_id, state.txn_version)
            landed = role in ("bronze", "quarantine")
            if landed and (mark.txn_version is None or mark.txn_version < version):
                mark = TableMark(mark.uri, mark.table_id, version)
            marks[role] = mark
        after = CheckpointIdentity(before.pipeline, before.topic, marks)
        if after != before:
            write_identity(self.checkpoint, after)
        self._identity = after

    def _report(self, stats: BatchStats) -> None:
        self._note_commits(stats)
        counts = {
            "input": stats.input_rows,
            "bronze": stats.bronze_rows,
            "quarantined": stats.quarantined,
            "inserted": stats.inserted,
            "updated": stats.updated,
            "closed": stats.closed,
            "duplicates": stats.duplicates,
            "late_keys": stats.late_keys,
            "retries": stats.retries,
        }
        log.info(
            "pipeline %s batch %d (%s): %s in %.2fs",
            self.name,
            stats.batch_id,
            self.settings.lake.writer,
            ", ".join(f"{k} {v}" for k, v in counts.items() if v),
            stats.seconds,
            extra={
                "pipeline": self.name,
                "batch_id": stats.batch_id,
                "writer": self.settings.lake.writer,
                "counts": counts,
                "seconds": round(stats.seconds, 3),
                "phases": {k: round(v, 3) for k, v in stats.phases.items()},
            },
        )
        if self.on_batch is not None:
            self.on_batch(self.name, stats)

    def _check_schema(self, schema: pa.Schema) -> None:
        """Apply the pipeline's ``schema_changes`` to what the reader schema changes in the
        silver table's columns (:mod:`cdc.ingest.schema_changes`); checked again only when the
        batch's schema changes. Raises :class:`SchemaChangeError` (nothing written yet) for a
        breaking change under ``fail``. A widened type widens the tables that hold the column
        (bronze's value struct, silver) before anything is written."""
        if schema == self._checked_schema:
            return
        options = self.settings.lake.resolved_storage_options()
        handle = store_for(self.settings.lake.writer, options).handle(self.uris["silver"])
        if handle is not None:
            held = pa.schema(handle.schema().to_arrow())
            changes = self._schema_changes(held, schema)
            breaking = [c for c in changes if c.breaking]
            if breaking:
                self._on_breaking(breaking)
            elif changes:
                log.info("pipeline %s: the schema %s: tables evolve", self.name, describe(changes))
        row = pa.schema(list(self._row_type(schema)))
        roles = (("bronze", schema), ("quarantine", schema), ("silver", row), ("orphans", row))
        for role, incoming in roles:
            if role in self.uris and self._widen(role, incoming):
                log.warning(
                    "pipeline %s: %s widened %s's columns to the reader's types",
                    self.name,
                    self._decoder().reader_version(),
                    role,
                )
        self._checked_schema = schema

    def _row_type(self, schema: pa.Schema) -> pa.StructType:
        """The reader's row: an envelope's ``after`` image (a dimension), else the value."""
        value = schema.field("value").type
        if self.pipeline.kind == "scd2" and self.pipeline.source_format == "envelope":
            return value.field("after").type
        return value

    def _schema_changes(self, held: pa.Schema, schema: pa.Schema) -> list[SchemaChange]:
        p = self.pipeline
        value = self._row_type(schema)
        if p.kind == "scd2":  # the row: an envelope's after image; keys come from the Kafka key
            ignore: tuple[str, ...] = (*DIM_SYSTEM_COLUMNS, *p.keys)
        else:  # a fact is the value's fields plus its lineage
            ignore = tuple(name for name, _ in FACT_LINEAGE)
        decoder = self._decoder()
        changes = column_changes(held, value, aliases=decoder.row_aliases(), ignore=ignore)
        if p.kind == "scd2":
            changes += key_changes(p.keys, schema.field("key").type)
        return changes

    def _on_breaking(self, breaking: list[SchemaChange]) -> None:
        what = describe(breaking)
        version = self._decoder().reader_version()
        target = self.uris["silver"].rstrip("/").rsplit("/", 1)[-1]
        if self.settings.schema_changes(self.name).breaking == "ignore":
            log.warning(
                "pipeline %s: %s %s that silver/%s holds; schema_changes.breaking is ignore:"
                " the table keeps its columns",
                self.name,
                version,
                what,
                target,
            )
            return
        raise SchemaChangeError(
            f"pipeline {self.name}: {version} {what} that silver/{target} holds;"
            " schema_changes.breaking is fail, so nothing was written (set it to ignore to"
            " keep the table's columns, or make the change compatible)"
        )

    def _decoder(self) -> TopicDecoder:
        from cdc.pipeline.kafka_source import DecoderSpec, topic_decoder

        spec = DecoderSpec.from_settings(self.settings, self.pipeline)
        return topic_decoder(spec, self.pipeline.topic)

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
                    unavailable=self.settings.unavailable_values(self.name),
                )
            except ValueError as exc:
                raise CdcError(f"pipeline {self.name}: {exc}") from None
        return self._spec

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
