"""``cdc maintain``: compaction with Z-ORDER, VACUUM and table health, on either writer.

Every MERGE and append adds small files; a batch with late keys reads bronze by key. OPTIMIZE
compacts each table and clusters it on the columns its readers filter by
(:func:`maintenance_tables`: silver on its keys or event time, bronze on the key so the late-key
history read skips files, from ``pipelines.<name>.zorder``). On the delta-spark lake it runs as
Spark SQL (``OPTIMIZE ... ZORDER BY``, then ``REORG TABLE ... APPLY (PURGE)`` where deletion
vectors are left); on the delta-rs lake, through delta-rs. Both commit as ordinary Delta
transactions: a stream writing at the same time loses nothing (a conflicting commit is retried
by whichever side lost the race).

Z-ORDER columns are chosen per table from its layout (:func:`zorder_columns`): the configured
columns the table has, less its partition columns (Delta refuses to Z-ORDER on one: gold's
``customer_features`` is partitioned by ``as_of_date``, a grain column); with none left the
table is compacted only. A table that fails is reported and the others still run.

VACUUM refuses a retention below ``maintenance.min_retention_hours`` unless forced. Health
compares file counts, the small-file ratio and versions since the last OPTIMIZE with
thresholds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cdc.config.lake import pipeline_tables
from cdc.config.settings import PipelineSettings, Settings
from cdc.errors import CdcError, ConfigError, first_line
from cdc.gold import GOLD_KEYS, GOLD_TABLES, gold_path
from cdc.store import TableStore, store_for

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "FileStats",
    "HealthReport",
    "MaintenanceError",
    "OptimizeOutcome",
    "TableRef",
    "VacuumOutcome",
    "file_stats",
    "health",
    "maintenance_tables",
    "optimize",
    "retention",
    "vacuum",
    "zorder_columns",
]


class MaintenanceError(CdcError):
    """A maintenance operation failed on some tables (each one is reported on its own)."""


@dataclass(frozen=True)
class TableRef:
    """One table of the lake and how OPTIMIZE clusters it."""

    pipeline: str
    role: str
    uri: str
    zorder: tuple[str, ...]

    @property
    def name(self) -> str:
        """``<layer>/<table>``, as ``--table`` names it."""
        parts = self.uri.rstrip("/").split("/")
        return "/".join(parts[-2:])


def _zorder(pipeline: PipelineSettings, role: str) -> tuple[str, ...]:
    if role == "bronze":
        if pipeline.zorder.bronze is not None:
            return pipeline.zorder.bronze
        return tuple(f"key.{k}" for k in pipeline.keys)
    if role == "silver":
        if pipeline.zorder.silver is not None:
            return pipeline.zorder.silver
        if pipeline.kind == "scd2":
            return pipeline.keys
        return (pipeline.event_id,) if pipeline.event_id else ()
    return ()


def maintenance_tables(settings: Settings, table: str | None = None) -> list[TableRef]:
    """The lake's tables (of enabled pipelines), or those ``table`` names.

    Args:
        settings: service settings.
        table: a pipeline name (its tables), ``gold`` (the gold tables), ``<layer>/<table>``
            (e.g. ``silver/dim_contact``, ``gold/daily_revenue``), or None for all.

    Raises:
        ConfigError: ``table`` names no table (the message lists the valid names).
    """
    refs: list[TableRef] = []
    for name in settings.selected(None):
        pipeline = settings.pipeline(name)
        paths = pipeline_tables(settings, pipeline)
        refs += [TableRef(name, role, uri, _zorder(pipeline, role)) for role, uri in paths.items()]

    # Gold tables (``cdc gold build``): clustered on their grain; ``--table gold`` names them all.
    refs += [TableRef("gold", "gold", gold_path(settings, g), GOLD_KEYS[g]) for g in GOLD_TABLES]
    if table is None:
        return refs
    chosen = [r for r in refs if table in (r.pipeline, r.name)]
    if not chosen:
        valid = ", ".join(sorted({r.name for r in refs}))
        raise ConfigError(f"--table {table!r} names no table or pipeline; tables: {valid}")
    return chosen


@dataclass(frozen=True)
class FileStats:
    """A table's live data files."""

    files: int
    bytes: int
    small_files: int
    deletion_vectors: int

    def describe(self) -> str:
        dv = f", {self.deletion_vectors} with deletion vectors" if self.deletion_vectors else ""
        return f"{self.files} files, {_size(self.bytes)}{dv}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def file_stats(store: TableStore, uri: str, small_bytes: int) -> FileStats | None:
    """Files, bytes, small files and files with deletion vectors (None: no table)."""
    found = store.files(uri)
    if found is None:
        return None
    sizes = [f.size for f in found.files]
    small = sum(1 for s in sizes if s < small_bytes)
    return FileStats(len(sizes), sum(sizes), small, found.deletion_vectors)


def _last(history: list[dict[str, Any]], *operations: str) -> dict[str, Any] | None:
    return next((h for h in history if h.get("operation") in operations), None)


def _failure(operation: str, ref: TableRef, exc: Exception) -> str:
    """``OPTIMIZE <table> failed: <the error's first line>``."""
    return f"{operation} {ref.name} failed: {first_line(exc)}"


@dataclass(frozen=True)
class OptimizeOutcome:
    """What OPTIMIZE did to one table, or why it failed.

    Attributes:
        table: the table.
        before: its files before (None when they could not be read).
        after: its files after (None when it failed).
        seconds: time spent on it.
        zorder: the columns it was Z-ORDERed by (empty: compacted only).
        error: ``OPTIMIZE <table> failed: ...`` (None when it succeeded).
    """

    table: TableRef
    before: FileStats | None
    after: FileStats | None
    seconds: float
    zorder: tuple[str, ...] = ()
    error: str | None = None

    def line(self) -> str:
        """The table's line: files before and after, or the failure."""
        if self.error is not None or self.before is None or self.after is None:
            return str(self.error)
        on = f" ZORDER BY ({', '.join(self.zorder)})" if self.zorder else ""
        return (
            f"{self.table.name}: {self.before.describe()} -> {self.after.describe()}{on}"
            f" in {self.seconds:.1f}s"
        )


def zorder_columns(ref: TableRef, schema: Any, partitions: Sequence[str]) -> tuple[str, ...]:
    """The columns to Z-ORDER a table by: its configured ones that it has, less partitions.

    Delta (both engines) refuses to Z-ORDER on a partition column, and a column the table
    lacks cannot cluster anything; with nothing left the table is compacted only.

    Args:
        ref: the table and its configured columns.
        schema: the table's Arrow schema.
        partitions: the table's partition columns.
    """
    return tuple(
        c for c in ref.zorder if c.split(".")[0] not in partitions and _has_column(schema, c)
    )


def optimize(
    settings: Settings, refs: list[TableRef], spark: SparkSession | None = None
) -> list[OptimizeOutcome]:
    """Compact (and Z-ORDER) each existing table; purge deletion vectors on delta-spark.

    A table that fails does not stop the others: its outcome carries the error.

    Args:
        settings: service settings (``lake.writer`` picks the engine).
        refs: the tables.
        spark: the session for the delta-spark lake (required there).
    """
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options(), spark)
    small = settings.maintenance.small_file_bytes
    assert spark is not None or settings.lake.writer != "delta-spark", (
        "the delta-spark lake is maintained through Spark"
    )
    out: list[OptimizeOutcome] = []
    for ref in refs:
        started = time.monotonic()
        before: FileStats | None = None
        try:
            before = file_stats(store, ref.uri, small)
            if before is None:
                continue
            layout = store.snapshot(ref.uri)
            assert layout is not None
            columns = zorder_columns(ref, layout.schema(), layout.partition_columns())
            store.optimize(
                ref.uri,
                columns,
                target_size=settings.maintenance.target_file_bytes,
                purge=before.deletion_vectors > 0,
            )
            after = file_stats(store, ref.uri, small)
        except Exception as exc:
            failed = _failure("OPTIMIZE", ref, exc)
            out.append(OptimizeOutcome(ref, before, None, time.monotonic() - started, (), failed))
            continue
        assert after is not None
        out.append(OptimizeOutcome(ref, before, after, time.monotonic() - started, columns))
    return out


def _has_column(schema: Any, dotted: str) -> bool:
    """Whether an Arrow schema has the (possibly nested) column."""
    head, *rest = dotted.split(".")
    if head not in schema.names:
        return False
    kind = schema.field(head).type
    for part in rest:
        names = [kind.field(i).name for i in range(kind.num_fields)] if kind.num_fields else []
        if part not in names:
            return False
        kind = kind.field(part).type
    return True


@dataclass(frozen=True)
class VacuumOutcome:
    """What VACUUM did to one table (``error``: why it failed, the others still ran)."""

    table: TableRef
    files: int
    dry_run: bool
    retention_hours: float
    error: str | None = None

    def line(self) -> str:
        """The table's line: files deleted (or that would be), or the failure."""
        if self.error is not None:
            return self.error
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{self.table.name}: {verb} {self.files} files no version of the last"
            f" {self.retention_hours:g} hours needs"
        )


def retention(settings: Settings, retention_hours: float | None, force: bool) -> float:
    """The VACUUM retention to use: the request, checked against the configured floor.

    Raises:
        ConfigError: negative, or below ``maintenance.min_retention_hours`` and not forced.
    """
    floor = settings.maintenance.min_retention_hours
    hours = floor if retention_hours is None else retention_hours
    if hours < 0:
        raise ConfigError(f"--retention-hours {hours:g} is negative")
    if hours < floor and not force:
        raise ConfigError(
            f"--retention-hours {hours:g} is below maintenance.min_retention_hours ({floor:g}):"
            " files a running query, a replay or a DR snapshot may still read would go; pass"
            " --force if nothing reads older versions"
        )
    return hours


def vacuum(
    settings: Settings,
    refs: list[TableRef],
    retention_hours: float | None,
    *,
    dry_run: bool,
    force: bool,
    spark: SparkSession | None = None,
) -> list[VacuumOutcome]:
    """Delete files no table version within the retention needs.

    A table that fails does not stop the others: its outcome carries the error.

    Raises:
        ConfigError: the retention is below ``maintenance.min_retention_hours`` and not forced.
    """
    hours = retention(settings, retention_hours, force)
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options(), spark)
    assert spark is not None or settings.lake.writer != "delta-spark", (
        "the delta-spark lake is maintained through Spark"
    )
    out: list[VacuumOutcome] = []
    for ref in refs:
        try:
            if not store.exists(ref.uri):
                continue
            files = store.vacuum(ref.uri, hours, dry_run=dry_run)
        except Exception as exc:
            failed = _failure("VACUUM", ref, exc)
            out.append(VacuumOutcome(ref, 0, dry_run, hours, failed))
            continue
        out.append(VacuumOutcome(ref, files, dry_run, hours))
    return out


@dataclass(frozen=True)
class HealthReport:
    table: TableRef
    stats: FileStats
    versions: int
    versions_since_optimize: int
    last_optimize: str | None
    last_vacuum: str | None
    problems: list[str]

    def line(self) -> str:
        ratio = self.stats.small_files / self.stats.files if self.stats.files else 0.0
        verdict = "ok" if not self.problems else "UNHEALTHY: " + "; ".join(self.problems)
        return (
            f"{self.table.name}: {self.stats.describe()}, {ratio:.0%} small,"
            f" {self.versions} versions ({self.versions_since_optimize} since OPTIMIZE),"
            f" last OPTIMIZE {self.last_optimize or 'never'}, last VACUUM"
            f" {self.last_vacuum or 'never'}: {verdict}"
        )


def _when(commit: dict[str, Any] | None) -> str | None:
    if commit is None or commit.get("timestamp") is None:
        return None
    return datetime.fromtimestamp(int(commit["timestamp"]) / 1000, UTC).isoformat(
        timespec="seconds"
    )


def health(settings: Settings, refs: list[TableRef]) -> list[HealthReport]:
    """File, small-file and version counts of each existing table against the thresholds."""
    m = settings.maintenance
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    out: list[HealthReport] = []
    for ref in refs:
        stats = file_stats(store, ref.uri, m.small_file_bytes)
        if stats is None:
            continue
        history = store.history(ref.uri)
        version = int(history[0]["version"])  # the latest commit's
        optimized = _last(history, "OPTIMIZE", "REORG")
        vacuumed = _last(history, "VACUUM END")
        since = (
            version - int(optimized["version"])
            if optimized and "version" in optimized
            else (version + 1)
        )
        problems = []
        if stats.files > m.max_files:
            problems.append(f"{stats.files} files > {m.max_files}")
        if stats.files >= m.min_files_judged and stats.files:
            ratio = stats.small_files / stats.files
            if ratio > m.max_small_file_ratio:
                problems.append(
                    f"{ratio:.0%} of files are small (< {_size(m.small_file_bytes)})"
                    f" > {m.max_small_file_ratio:.0%}: run cdc maintain optimize"
                )
        if since > m.max_versions_since_optimize:
            problems.append(f"{since} versions since OPTIMIZE > {m.max_versions_since_optimize}")
        out.append(
            HealthReport(
                ref, stats, version + 1, since, _when(optimized), _when(vacuumed), problems
            )
        )
    return out
