"""``cdc status``: per pipeline, committed offsets against the topic's end, the lag, the last
batch (when it finished, how long it took), whether the checkpoint agrees with its tables and
topic (what the next start would refuse, :mod:`cdc.pipeline.checkpoint_guard`), each table's
version, rows and files, and the records that failed each data-quality expectation
(:mod:`cdc.pipeline.expectations`).

:func:`pipeline_status` gathers it (the checkpoint, the broker, the tables);
:func:`format_status` prints it for people and :meth:`PipelineStatus.to_json` for scripts.
Nothing here prints a secret setting's value: only names, offsets, counts, the tables' paths
(storage credentials are options, never part of a path) and the expectations' checks.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdc.config.lake import pipeline_tables
from cdc.config.settings import Settings
from cdc.errors import BrokerUnavailableError
from cdc.pipeline.checkpoint import committed_offsets
from cdc.pipeline.checkpoint_guard import checkpoint_problem
from cdc.pipeline.expectations import RuleTotal, read_counts, rule_totals
from cdc.runtime.kafka_admin import KafkaMetadata
from cdc.store import TableStore, store_for

__all__ = ["BatchTiming", "PipelineStatus", "TableStatus", "format_status", "pipeline_status"]


@dataclass(frozen=True)
class TableStatus:
    """One table of the pipeline (``exists`` False: not created yet)."""

    role: str
    uri: str
    exists: bool
    version: int | None = None
    rows: int | None = None
    files: int | None = None


@dataclass(frozen=True)
class BatchTiming:
    """The last committed batch, from the checkpoint's logs."""

    batch: int
    finished_at: str
    """UTC ISO time Spark wrote the batch's commit."""
    seconds: float
    """From the batch's offsets entry (planned) to its commit entry."""


@dataclass(frozen=True)
class PipelineStatus:
    """What ``cdc status`` reports for one pipeline."""

    pipeline: str
    topic: str
    target: str
    committed: dict[str, int] | None
    """Committed next offset per partition (None: no batch committed yet)."""
    latest: dict[str, int] | None
    """The topic's end offset per partition (None: the broker did not answer)."""
    last_batch: BatchTiming | None
    tables: list[TableStatus] = field(default_factory=list)
    expectations: list[RuleTotal] = field(default_factory=list)
    """Records that failed each data-quality rule, over every batch that landed."""
    checkpoint_problem: str | None = None
    """Why the next start would refuse the checkpoint (None: it agrees with its tables and
    topic; see :func:`cdc.pipeline.checkpoint_guard.checkpoint_problem`)."""

    @property
    def lag(self) -> dict[str, int] | None:
        """Offsets behind the end, per partition (None: the broker did not answer)."""
        if self.latest is None:
            return None
        done = self.committed or {}
        return {p: max(0, end - int(done.get(p, 0))) for p, end in self.latest.items()}

    def to_json(self) -> dict[str, Any]:
        """The status as JSON-ready data (``cdc status --json``)."""
        lag = self.lag
        out = asdict(self)
        out["lag"] = None if lag is None else {"total": sum(lag.values()), "partitions": lag}
        return out


def _high_watermarks(settings: Settings, topic: str) -> dict[str, int] | None:
    """End offsets per partition (None: the cluster did not answer)."""
    meta = KafkaMetadata.for_settings(settings.kafka)
    try:
        marks = meta.topic_watermarks([topic])
    except BrokerUnavailableError:
        return None
    finally:
        meta.close()
    return {str(p): wm.high for (_, p), wm in sorted(marks.items())}


def _last_batch(checkpoint: str, batch: int) -> BatchTiming | None:
    commit = Path(checkpoint) / "commits" / str(batch)
    planned = Path(checkpoint) / "offsets" / str(batch)
    try:
        done, start = os.stat(commit).st_mtime, os.stat(planned).st_mtime
    except OSError:
        return None
    finished = datetime.fromtimestamp(done, UTC).isoformat(timespec="seconds")
    return BatchTiming(batch=batch, finished_at=finished, seconds=round(max(0.0, done - start), 3))


def _table(role: str, uri: str, store: TableStore) -> TableStatus:
    info = store.info(uri)
    if info is None:
        return TableStatus(role, uri, exists=False)
    return TableStatus(role, uri, True, info.version, info.rows, info.files)


def pipeline_status(
    settings: Settings, name: str, broker: bool = True, tables: bool = True
) -> PipelineStatus:
    """Gather one pipeline's status.

    Args:
        settings: service settings.
        name: the pipeline.
        broker: ask the cluster for the topic's end offsets (False: it is known to be
            unreachable; the lag is then unknown).
        tables: read each table's version, rows and files (False: the status lists none;
            ``cdc sla check`` reads what it needs of them itself).
    """
    pipeline = settings.pipeline(name)
    checkpoint = settings.checkpoint_path(name)
    found = committed_offsets(checkpoint)
    committed = None
    last = None
    if found is not None:
        batch, offsets = found
        committed = {str(p): int(o) for p, o in (offsets.get(pipeline.topic) or {}).items()}
        last = _last_batch(checkpoint, batch)
    latest = _high_watermarks(settings, pipeline.topic) if broker else None
    found_tables: list[TableStatus] = []
    if tables:
        store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
        paths = pipeline_tables(settings, pipeline)
        found_tables = [_table(role, uri, store) for role, uri in paths.items()]
    totals = rule_totals(pipeline.expectations, read_counts(checkpoint))
    problem = checkpoint_problem(settings, name, broker=broker) if tables else None
    return PipelineStatus(
        name,
        pipeline.topic,
        pipeline.target,
        committed,
        latest,
        last,
        found_tables,
        totals,
        problem,
    )


def format_status(status: PipelineStatus) -> str:
    """A pipeline's status for people: a header line, offsets and lag, the last batch, then
    one line per table and one per expectation (records that failed it)."""
    lines = [f"{status.pipeline}: topic {status.topic} -> {status.target}"]
    if status.committed is None:
        lines.append("  offsets     no batch committed yet")
    else:
        parts = ", ".join(
            f"{p}: {o}/{(status.latest or {}).get(p, '?')}"
            for p, o in sorted(status.committed.items(), key=lambda kv: int(kv[0]))
        )
        lines.append(f"  offsets     committed/end per partition: {parts}")
    lag = status.lag
    if lag is None:
        lines.append("  lag         unknown: the broker is unreachable")
    else:
        per = ", ".join(f"{p}: {n}" for p, n in sorted(lag.items(), key=lambda kv: int(kv[0])))
        lines.append(f"  lag         {sum(lag.values())} records ({per})")
    if status.checkpoint_problem is not None:
        lines.append(f"  checkpoint  REFUSED at the next start: {status.checkpoint_problem}")
    if status.last_batch is not None:
        b = status.last_batch
        lines.append(f"  last batch  {b.batch}, finished {b.finished_at}, took {b.seconds:g}s")
    for t in status.tables:
        if not t.exists:
            lines.append(f"  {t.role:<11} {t.uri}: not created yet")
        else:
            lines.append(
                f"  {t.role:<11} {t.uri}: version {t.version}, {t.rows} rows, {t.files} files"
            )
    for e in status.expectations:
        if e.failed is None:
            lines.append(f"  expectation {e.rule} (fail: {e.check}): stops the query")
        else:
            check = e.check or "no longer configured"
            lines.append(f"  expectation {e.rule} ({e.action}: {check}): {e.failed} failed")
    return "\n".join(lines)
