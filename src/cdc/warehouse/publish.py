"""``cdc publish``: gold tables to the warehouse, incrementally per Delta version.

The warehouse's control table names, per table, the Delta version it holds (P); the Delta
table is at V.

* V = P: nothing to do, the table is up to date (a re-run publishes nothing).
* Otherwise the changes from P to V are computed by reading both versions and comparing them
  by key (:func:`diff_versions`: rows new or different at V are upserts, keys of P missing at
  V are deletes), staged, and applied in one transaction that also moves the control row from
  P to V (:meth:`cdc.warehouse.Warehouse.apply`).
* A full load of V (every row upserted, every other key deleted), logged with its reason,
  when nothing was published yet, when P can no longer be read (vacuumed, or its log cleaned
  up), when P > V (the table was re-created) or when the warehouse table was dropped.

Crash-safe: a publish killed at any point before its commit changed nothing (the control row
still names P), and the next run computes the same changes again.

Comparing two snapshots rather than reading the change data feed works for every Delta
table, whoever wrote it and whatever its properties; it reads both versions (the warehouse
gets only the changes). Schema evolution: columns the Delta table gained are added to the
warehouse table (nullable); a dropped column or a column whose warehouse type changes is a
one-line error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import polars as pl
import pyarrow as pa

from cdc.config.settings import Settings
from cdc.core.widening import compare_types
from cdc.errors import CdcError, ConfigError, TableReadError
from cdc.gold import GOLD_KEYS, GOLD_TABLES, gold_path
from cdc.runtime.faults import FaultHook
from cdc.store import DeltaRsStore, TableSnapshot
from cdc.warehouse import ApplyPlan, Dialect, SchemaMismatchError, Warehouse, open_warehouse
from cdc.warehouse.base import DELETE, OP_COLUMN, UPSERT, first_line

__all__ = [
    "Changes",
    "PublishError",
    "PublishResult",
    "check_keys",
    "check_schema",
    "diff_versions",
    "publish",
    "publish_table",
    "staged_rows",
]

log = logging.getLogger(__name__)

_ROW = "__cdc_row"
_OLD = "__cdc_old"


class PublishError(CdcError):
    """A Delta table cannot be published as it is (missing, or keys not unique)."""


@dataclass(frozen=True)
class Changes:
    """What changed between two versions of a table."""

    upserts: pa.Table
    """Rows new at the later version, or different from the earlier one's."""
    deletes: pa.Table
    """Key columns of the rows the later version no longer has."""


@dataclass(frozen=True)
class PublishResult:
    """What ``cdc publish`` did to one table."""

    table: str
    version: int
    previous: int | None
    mode: Literal["up to date", "incremental", "full"]
    upserted: int = 0
    deleted: int = 0
    rows: int = 0
    reason: str = ""
    """Why a full load."""
    added_columns: tuple[str, ...] = field(default=())
    seconds: float = 0.0

    def line(self) -> str:
        """One line for the terminal."""
        if self.mode == "up to date":
            return f"{self.table}: up to date at version {self.version}"
        how = (
            f"in full ({self.reason})" if self.mode == "full" else f"(from version {self.previous})"
        )
        text = (
            f"{self.table}: published version {self.version} {how}: {self.upserted} rows"
            f" upserted, {self.deleted} deleted in {self.seconds:.1f}s"
        )
        if self.added_columns and self.mode == "incremental":
            text += f"; columns added: {', '.join(self.added_columns)}"
        return text


# ------------------------------------------------------------------ pure functions


def check_keys(rows: pa.Table, keys: Sequence[str], table: str) -> None:
    """Refuse rows whose keys are missing, null or not unique (a MERGE needs one row per key).

    Raises:
        PublishError: naming the problem and how many rows have it.
    """
    missing = [k for k in keys if k not in rows.schema.names]
    if missing:
        raise PublishError(
            f"{table}: key column(s) {', '.join(missing)} not in the table"
            f" (columns: {', '.join(rows.schema.names)})"
        )
    for key in keys:
        nulls = rows.column(key).null_count
        if nulls:
            raise PublishError(f"{table}: {nulls} row(s) with a null {key}")
    frame = _frame(rows.select(list(keys)))
    duplicated = int(frame.is_duplicated().sum())
    if duplicated:
        example = frame.filter(frame.is_duplicated()).row(0, named=True)
        raise PublishError(
            f"{table}: {duplicated} rows share a key ({', '.join(keys)}), e.g. {example}"
        )


def check_schema(
    before: pa.Schema, after: pa.Schema, dialect: Dialect, table: str, versions: tuple[int, int]
) -> None:
    """Refuse a change between two versions' schemas that the warehouse table cannot follow.

    Columns added are fine (they are added to the warehouse table), and so are types widened
    (``int`` to ``bigint``, a decimal with more digits: :func:`cdc.core.widening.compare_types`;
    the warehouse column's type follows). A column dropped, or one whose type changes
    otherwise (``string`` to ``double``, ``bigint`` to ``int``), is not.

    Raises:
        SchemaMismatchError: naming the column and the two versions.
    """
    old, new = versions
    for column in before:
        if column.name not in after.names:
            raise SchemaMismatchError(
                f"{table}: column {column.name!r} was dropped between versions {old} and {new};"
                " drop the warehouse table to publish it again in full"
            )
        was, now = dialect.column_type(column), dialect.column_type(after.field(column.name))
        if was != now and compare_types(column.type, after.field(column.name).type) != "widened":
            raise SchemaMismatchError(
                f"{table}: column {column.name!r} changed from {was} to {now} between versions"
                f" {old} and {new}; drop the warehouse table to publish it again in full"
            )


def widened_fields(before: pa.Schema, after: pa.Schema, dialect: Dialect) -> list[pa.Field]:
    """The columns of ``after`` whose type widened since ``before`` and whose warehouse type
    changes with it (``int`` to ``bigint``; Snowflake's ``NUMBER(38,0)`` holds both)."""
    return [
        after.field(c.name)
        for c in before
        if c.name in after.names
        and compare_types(c.type, after.field(c.name).type) == "widened"
        and dialect.column_type(c) != dialect.column_type(after.field(c.name))
    ]


def _frame(rows: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    return frame


def diff_versions(old: pa.Table, new: pa.Table, keys: Sequence[str]) -> Changes:
    """The changes that turn ``old`` into ``new``, by key.

    Args:
        old: the earlier version's rows (columns added since are taken as null in it).
        new: the later version's rows (one per key).
        keys: the key columns.

    Returns:
        Upserts (rows of ``new`` with no identical row in ``old``) and deletes (keys of
        ``old`` that ``new`` does not have), in ``new``'s types.
    """
    columns = new.schema.names
    later = _frame(new).with_row_index(_ROW)
    earlier = _frame(old)
    earlier = earlier.with_columns(
        pl.lit(None, dtype=later.schema[c]).alias(c) for c in columns if c not in earlier.columns
    ).select(columns)
    # One join on the keys, then a column-by-column comparison (nulls equal, NaN equal to
    # NaN): cheaper than a join on every column.
    others = [c for c in columns if c not in keys]
    before = earlier.rename({c: f"{c}{_OLD}" for c in others}).with_columns(
        pl.lit(True).alias(_OLD)
    )
    joined = later.join(before, on=list(keys), how="left", nulls_equal=True)
    same = pl.col(_OLD).is_not_null()
    for c in others:
        same = same & pl.col(c).eq_missing(pl.col(f"{c}{_OLD}"))
    changed = joined.filter(~same)
    gone = (
        earlier.select(keys)
        .with_row_index(_ROW)
        .join(later.select(keys), on=list(keys), how="anti", nulls_equal=True)
    )
    key_schema = pa.schema([new.schema.field(k) for k in keys])
    return Changes(
        upserts=new.take(pa.array(changed.get_column(_ROW).sort(), pa.uint32())),
        deletes=old.select(list(keys))
        .take(pa.array(gone.get_column(_ROW).sort(), pa.uint32()))
        .cast(key_schema),
    )


def staged_rows(changes: Changes, schema: pa.Schema) -> pa.Table:
    """The staging table's rows: upserts (``U``) then deletes (``D``: keys, other columns
    null), with :data:`cdc.warehouse.OP_COLUMN`."""
    upserts = changes.upserts.cast(schema)
    op_field = pa.field(OP_COLUMN, pa.string(), nullable=False)
    upserts = upserts.append_column(op_field, pa.array([UPSERT] * upserts.num_rows, pa.string()))
    n = changes.deletes.num_rows
    deletes = pa.table(
        [
            changes.deletes.column(f.name).cast(f.type)
            if f.name in changes.deletes.schema.names
            else pa.nulls(n, f.type)
            for f in schema
        ]
        + [pa.array([DELETE] * n, pa.string())],
        schema=upserts.schema,
    )
    return pa.concat_tables([upserts, deletes])


# ----------------------------------------------------------------------------- I/O


def _classic(t: pa.DataType) -> pa.DataType:
    """``t`` with view types replaced by their classic forms (pyarrow's kernels, ``take``
    among them, and the drivers' loaders know those)."""
    if pa.types.is_string_view(t):
        return pa.large_string()
    if pa.types.is_binary_view(t):
        return pa.large_binary()
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.large_list(t.value_field.with_type(_classic(t.value_type)))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.large_list(t.value_field.with_type(_classic(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_classic(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(
            t.key_field.with_type(_classic(t.key_type)),
            t.item_field.with_type(_classic(t.item_type)),
        )
    return t


def _read(snapshot: TableSnapshot) -> pa.Table:
    """Every row of a table version (deletion vectors honoured), in classic Arrow types."""
    rows = snapshot.read()
    schema = pa.schema([f.with_type(_classic(f.type)) for f in rows.schema])
    return rows if schema == rows.schema else rows.cast(schema)


def publish_table(
    warehouse: Warehouse,
    table: str,
    uri: str,
    keys: Sequence[str],
    *,
    storage_options: dict[str, str] | None = None,
    fault_hook: FaultHook | None = None,
    now: Callable[[], datetime] | None = None,
) -> PublishResult:
    """Publish one Delta table's current version to ``warehouse`` (connected, control table
    ensured).

    Args:
        warehouse: the open warehouse.
        table: the warehouse table's name (and the control table's key).
        uri: the Delta table.
        keys: its key columns (one row per key).
        storage_options: object-store settings of the lake (credentials resolved).
        fault_hook: called with (stage, version) at ``before-commit`` (rows staged),
            ``mid-commit`` (statements run, not committed) and ``after-commit``.
        now: the clock of ``published_at``.

    Raises:
        PublishError: no Delta table at ``uri``, or its keys are null or not unique.
        TableReadError: the table's current version cannot be read.
        SchemaMismatchError: the table's schema changed in a way the warehouse cannot follow.
        PublishConflictError: another publish of the table committed first.
        WarehouseError: the warehouse refused a statement.
    """
    started = time.monotonic()
    store = DeltaRsStore(dict(storage_options or {}))
    current = store.snapshot(uri)  # the version published, whatever commits follow
    if current is None:
        raise PublishError(f"no Delta table at {uri}")
    version = current.version
    previous = warehouse.published_version(table)
    existing = warehouse.columns(table)
    if previous == version and existing is not None:
        log.info("%s: up to date at version %d", table, version)
        return PublishResult(table, version, previous, "up to date")
    try:
        new = _read(current)
    except TableReadError:
        raise
    except Exception as exc:  # a data file missing or unreadable
        raise TableReadError(
            f"cannot read version {version} of the Delta table at {uri}: {first_line(exc)}"
        ) from None
    check_keys(new, keys, table)
    old: pa.Table | None = None
    if previous is None:
        reason = "nothing published yet"
    elif existing is None:
        reason = f"the warehouse table is missing (control table: version {previous})"
    elif previous > version:
        reason = f"version {previous} was published, the table is at {version}: re-created"
    else:
        try:
            before = store.snapshot(uri, previous)
            if before is None:  # deleted since it was opened
                raise TableReadError(f"no Delta table at {uri}")
            old = _read(before)
        except Exception as exc:  # DeltaError, an object-store error: either way unreadable
            reason = f"version {previous} is no longer readable, vacuumed? ({first_line(exc)})"
    if old is not None:
        assert previous is not None
        check_schema(old.schema, new.schema, warehouse.dialect, table, (previous, version))
        changes = diff_versions(old, new, keys)
        log.info(
            "%s: versions %d -> %d: %d upserts, %d deletes",
            table,
            previous,
            version,
            changes.upserts.num_rows,
            changes.deletes.num_rows,
        )
    else:
        # A first publish is routine; any other full load is worth an operator's notice.
        level = logging.INFO if previous is None else logging.WARNING
        log.log(level, "%s: full load of version %d: %s", table, version, reason)
        changes = Changes(upserts=new, deletes=new.select(list(keys)).slice(0, 0))
    widened = [] if old is None else widened_fields(old.schema, new.schema, warehouse.dialect)
    added = warehouse.ensure_table(table, new.schema, keys, existing, widened=widened)
    warehouse.stage(table, staged_rows(changes, new.schema))

    def at(stage: str) -> None:
        if fault_hook is not None:
            fault_hook(stage, version)

    at("before-commit")
    plan = ApplyPlan(
        table=table,
        schema=new.schema,
        keys=tuple(keys),
        version=version,
        previous=previous,
        rows=new.num_rows,
        published_at=(now or (lambda: datetime.now(UTC)))(),
        full=old is None,
    )
    applied = warehouse.apply(plan, before_commit=lambda: at("mid-commit"))
    at("after-commit")
    return PublishResult(
        table,
        version,
        previous,
        "incremental" if old is not None else "full",
        upserted=applied.upserted,
        deleted=applied.deleted,
        rows=new.num_rows,
        reason="" if old is not None else reason,
        added_columns=tuple(added) if existing is not None else (),
        seconds=time.monotonic() - started,
    )


def publish(
    settings: Settings,
    tables: Sequence[str] | None = None,
    *,
    fault_hook: FaultHook | None = None,
    on_result: Callable[[PublishResult], None] | None = None,
    now: Callable[[], datetime] | None = None,
) -> list[PublishResult]:
    """Publish gold tables (all, or ``tables``) to the configured warehouse.

    Args:
        settings: the service settings (``warehouse:`` names the target).
        tables: gold table names (default: every gold table).
        fault_hook: see :func:`publish_table`.
        on_result: called after each table (the CLI prints its line).
        now: the clock of ``published_at``.

    Raises:
        ConfigError: an unknown table name, or the warehouse settings are incomplete.
        PublishError: a gold table is not built yet.
        WarehouseUnavailableError: the warehouse cannot be reached.
    """
    names = list(dict.fromkeys(tables or GOLD_TABLES))
    unknown = [n for n in names if n not in GOLD_TABLES]
    if unknown:
        raise ConfigError(
            f"unknown gold table(s) {', '.join(unknown)}; valid: {', '.join(GOLD_TABLES)}"
        )
    target = open_warehouse(settings)  # its settings checked before the lake is read
    storage = settings.lake.resolved_storage_options()
    store = DeltaRsStore(storage)
    unbuilt = [n for n in names if not store.exists(gold_path(settings, n))]
    if unbuilt:
        raise PublishError(
            f"gold table(s) {', '.join(unbuilt)} not built yet under"
            f" {settings.lake.path('gold')} (run 'cdc gold build')"
        )
    results = []
    with target as warehouse:
        log.info("publishing %s to %s", ", ".join(names), warehouse.describe())
        warehouse.ensure_control()
        for name in names:
            result = publish_table(
                warehouse,
                name,
                gold_path(settings, name),
                GOLD_KEYS[name],
                storage_options=storage,
                fault_hook=fault_hook,
                now=now,
            )
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
