"""``cdc gold build``: read silver at pinned versions, refresh each gold table, MERGE the diff.

Every silver table a gold table reads is pinned at its latest version when the build starts,
and read there (:meth:`cdc.store.TableStore.snapshot`: delta-rs queries, which honour the
deletion vectors delta-spark writes), so one build sees one consistent silver. A gold commit
records, in the service's commit metadata (:class:`cdc.store.plan.CommitInfo`, operation
``gold-build``), the silver versions (and table ids) it was built from, the reference day and
a fingerprint of the rules (reporting currency, regions, :data:`LOGIC_VERSION`):

* ``silver``: ``{"dim_account": {"version": 12, "id": "..."}, ...}`` (null: no table);
* ``as_of``: the reference day (ISO date);
* ``rules``: the fingerprint; ``mode``: ``full`` or ``incremental``; ``table``: the gold table.

Builds of earlier releases recorded the same facts as ``commitInfo`` fields
(``cdc.gold.silver`` as JSON text, ``cdc.gold.as_of``, ``cdc.gold.rules``); they are still
read, so the first build after an upgrade stays incremental.

The next build reads each changed silver table again at the recorded version and refreshes
only the grains the difference touches (:mod:`cdc.gold.refresh`). It builds in full instead
when there is no recorded build, ``--full`` is given, the rules or the table's columns
changed, a silver table was replaced (another table id) or its recorded version can no longer
be read (vacuumed). Either way the result is diffed against the gold table and only rows that
differ are written, in one MERGE: a build that changes nothing writes no version.

Gold tables are written by delta-rs in this process whatever ``lake.writer`` is; nothing here
needs Spark.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import pyarrow as pa

from cdc.config.lake import table_paths
from cdc.config.settings import Settings
from cdc.core.scd2 import ACTION_COLUMN
from cdc.errors import ConfigError, TableReadError
from cdc.gold.frames import (
    SILVER_COLUMNS,
    SILVER_TABLES,
    GoldRules,
    conform,
    empty_silver,
    reference_day,
)
from cdc.gold.refresh import Previous, Refresh, Scope, changed_rows, plan, refresh
from cdc.gold.tables import GOLD_KEYS, GOLD_SCHEMAS, GOLD_SOURCES, GOLD_TABLES
from cdc.store import DeltaRsStore, TableSnapshot
from cdc.store.delta_rs import WRITER
from cdc.store.plan import Clause, CommitInfo, MergePlan, TableLayout, read_commit_info

__all__ = ["LOGIC_VERSION", "GoldResult", "build_gold", "gold_path", "parse_day", "rules_of"]

log = logging.getLogger(__name__)

LOGIC_VERSION = 1
"""Bumped whenever a gold column's meaning or type changes: tables built under another
version are rebuilt in full by the next build."""

_LAYOUTS = {"customer_features": TableLayout(partition_by=("as_of_date",))}
"""A features build adds one ``as_of_date``: a partition of its own, no other file rewritten."""
_FACT_IDS = {"fact_orders": "event_id", "fact_behavior": "event_id"}
"""The id of each fact table's rows: a row never changes once its id is written."""
OPERATION = "gold-build"
"""The operation of a gold build's commits (:class:`~cdc.store.plan.CommitInfo`)."""
_LEGACY_SILVER, _LEGACY_AS_OF, _LEGACY_RULES = "cdc.gold.silver", "cdc.gold.as_of", "cdc.gold.rules"
"""The ``commitInfo`` fields builds of earlier releases recorded their inputs in."""
_RECENT_COMMITS = 50


@dataclass(frozen=True)
class GoldResult:
    """What a build did to one gold table.

    Attributes:
        table: the gold table name.
        version: the Delta version the build committed (None: nothing written).
        rows: rows in the table after the build.
        changed: whether the build wrote anything.
        mode: ``full`` or ``incremental``.
        upserted: rows inserted or rewritten.
        deleted: rows removed (grains that no longer exist).
        as_of: the build's reference day.
        seconds: wall time of the table's build.
    """

    table: str
    version: int | None
    rows: int
    changed: bool
    mode: str = "incremental"
    upserted: int = 0
    deleted: int = 0
    as_of: date | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """One line for the CLI."""
        head = f"gold/{self.table}: "
        if self.changed:
            head += f"changed, version {self.version}"
            what = f"{self.mode}: {self.upserted} upserted, {self.deleted} deleted; "
        else:
            head += "unchanged, no new version"
            what = f"{self.mode}; " if self.mode == "full" else ""
        as_of = self.as_of.isoformat() if self.as_of else "-"
        return f"{head}, {self.rows} rows ({what}as of {as_of}) in {self.seconds:.1f}s"


def parse_day(text: str, what: str) -> date:
    """A day written ``YYYY-MM-DD`` (``what`` names the option in the error).

    Raises:
        ConfigError: ``text`` is not such a day.
    """
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise ConfigError(f"{what} {text!r} is not a day (YYYY-MM-DD)")


def gold_path(settings: Settings, name: str) -> str:
    """The URI of gold table ``name``."""
    return settings.lake.path("gold", name)


def rules_of(settings: Settings) -> GoldRules:
    """The gold rules of ``settings.gold``."""
    return GoldRules.of(settings.gold.currency, settings.gold.regions)


@dataclass(frozen=True)
class _Pin:
    version: int
    table_id: str

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "id": self.table_id}


@dataclass(frozen=True)
class _LastBuild:
    silver: dict[str, _Pin | None]
    as_of: date
    rules: str


def _frame(rows: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _merge_plan(name: str) -> MergePlan:
    """Upserts (``U``) and deletes (``D``) of whole rows by the table's grain."""
    return MergePlan(
        operation="gold",
        match=GOLD_KEYS[name],
        clauses=(Clause("delete", "D"), Clause("update", "U"), Clause("insert", "U")),
        source_only=(ACTION_COLUMN,),
        layout=_LAYOUTS.get(name, TableLayout()),
    )


def _select(name: str) -> str:
    return "SELECT " + ", ".join(f'"{c}"' for c in SILVER_COLUMNS[name]) + " FROM t"


class _Silver:
    """The silver tables of one build, each pinned at the version it had when first asked."""

    def __init__(self, settings: Settings, store: DeltaRsStore) -> None:
        self._store = store
        self._uris = {
            p.target: table_paths(settings, p)["silver"] for p in settings.pipelines.values()
        }
        self._pinned: dict[str, TableSnapshot | None] = {}
        self._frames: dict[str, pl.DataFrame] = {}
        self._changes: dict[tuple[str, int], pl.DataFrame | None] = {}

    def uri(self, name: str, table: str) -> str:
        try:
            return self._uris[name]
        except KeyError:
            raise ConfigError(
                f"gold/{table} reads silver/{name}, but no pipeline has target {name}"
            ) from None

    def _snapshot(self, name: str, table: str) -> TableSnapshot | None:
        """``name`` at the version it had when first asked (None: no such table yet)."""
        if name not in self._pinned:
            self._pinned[name] = self._store.snapshot(self.uri(name, table))
        return self._pinned[name]

    def pin(self, name: str, table: str) -> _Pin | None:
        """The version the build reads ``name`` at (None: no such table yet)."""
        snapshot = self._snapshot(name, table)
        return None if snapshot is None else _Pin(snapshot.version, snapshot.table_id)

    def frame(self, name: str, table: str) -> pl.DataFrame:
        """Silver table ``name`` at its pinned version, as gold reads it."""
        if name not in self._frames:
            snapshot = self._snapshot(name, table)
            if snapshot is None:
                self._frames[name] = empty_silver(name)
            else:
                self._frames[name] = self._conform(name, _frame(snapshot.query(_select(name))))
        return self._frames[name]

    def newest(self, name: str, column: str) -> datetime | None:
        """The greatest ``column`` of ``name`` at its pinned version (None: no table, no row,
        or no pipeline writes it)."""
        if name not in self._uris:
            return None
        if name in self._frames:
            value = self._frames[name].get_column(column).max()
        else:
            snapshot = self._snapshot(name, "")
            if snapshot is None:
                return None
            value = _frame(snapshot.query(f'SELECT max("{column}") AS newest FROM t')).item()
        return value if isinstance(value, datetime) else None

    def changes(self, name: str, table: str, before: _Pin) -> pl.DataFrame | None:
        """The rows of ``name`` that differ between version ``before`` and the pinned one
        (:func:`~cdc.gold.refresh.changed_rows`); None when ``before`` cannot be read.

        A fact row never changes once written (the pipeline inserts each event id once), so
        for facts only the old version's event ids are read: new ids are added rows, and the
        old rows of ids that vanished (a manual delete) are read only when there are some.
        """
        key = (name, before.version)
        if key not in self._changes:
            self._changes[key] = self._diff(name, table, before)
        return self._changes[key]

    def _diff(self, name: str, table: str, before: _Pin) -> pl.DataFrame | None:
        current = self.frame(name, table)
        if name not in _FACT_IDS:
            old = self._read_at(name, table, before, _select(name))
            return None if old is None else changed_rows(self._conform(name, old), current)
        ids = _FACT_IDS[name]
        old_ids = self._read_at(name, table, before, f'SELECT "{ids}" FROM t')
        if old_ids is None:
            return None
        old_ids = old_ids.select(pl.col(ids).cast(pl.String))
        added = current.join(old_ids, on=ids, how="anti")
        gone = old_ids.join(current.select(ids), on=ids, how="anti")
        if gone.is_empty():
            return added
        old = self._read_at(name, table, before, _select(name))
        if old is None:
            return None
        return pl.concat([self._conform(name, old).join(gone, on=ids, how="semi"), added])

    def _read_at(self, name: str, table: str, pin: _Pin, sql: str) -> pl.DataFrame | None:
        """``sql`` over ``name`` at an older version (None: that version cannot be read)."""
        uri = self.uri(name, table)
        try:
            snapshot = self._store.snapshot(uri, pin.version)
            if snapshot is None:
                raise TableReadError(f"no Delta table at {uri}")
            return _frame(snapshot.query(sql))
        except Exception as exc:  # vacuumed files, a cleaned-up log: rebuild in full
            log.info("silver/%s version %d is not readable (%s)", name, pin.version, exc)
            return None

    @staticmethod
    def _conform(name: str, frame: pl.DataFrame) -> pl.DataFrame:
        try:
            return conform(name, frame)
        except ValueError as exc:
            raise TableReadError(str(exc)) from None


def _last_build(store: DeltaRsStore, uri: str) -> _LastBuild | None:
    """The newest gold build recorded in the table's history (None: none).

    Usually the latest commit; a maintenance commit (OPTIMIZE, VACUUM) may follow it, so the
    recent commits are searched first and the whole history only when they hold no build.
    """
    recent = store.history(uri, _RECENT_COMMITS)
    entries = recent if len(recent) < _RECENT_COMMITS else [*recent, *store.history(uri)]
    for entry in entries:
        found = _recorded(entry)
        if found is not None:
            return found
    return None


def _recorded(commit: dict[str, Any]) -> _LastBuild | None:
    """The inputs a gold build's commit recorded (None: not a build's commit)."""
    info = read_commit_info(commit) or {}
    if info.get("operation") == OPERATION and "silver" in info:
        pins, as_of, rules = info["silver"], info["as_of"], info.get("rules")
    elif _LEGACY_SILVER in commit:  # written by an earlier release
        pins = json.loads(commit[_LEGACY_SILVER])
        as_of, rules = commit[_LEGACY_AS_OF], commit.get(_LEGACY_RULES)
    else:
        return None
    return _LastBuild(
        silver={
            n: None if p is None else _Pin(int(p["version"]), str(p["id"])) for n, p in pins.items()
        },
        as_of=date.fromisoformat(as_of),
        rules=str(rules),
    )


def _arrow(frame: pl.DataFrame) -> pa.Table:
    # Classic Arrow types (large_string, not string_view) for delta-rs.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


class _GoldTable:
    """One gold table: its state when the build started, its rows in a scope, its writes."""

    def __init__(self, settings: Settings, store: DeltaRsStore, name: str) -> None:
        self.name = name
        self.uri = gold_path(settings, name)
        self.store = store
        self.snapshot = store.snapshot(self.uri)

    @property
    def columns(self) -> list[str]:
        """The table's columns (none when it does not exist)."""
        return [] if self.snapshot is None else self.snapshot.columns()

    @property
    def compatible(self) -> bool:
        """Whether the table exists with the columns this code writes."""
        return self.columns == list(GOLD_SCHEMAS[self.name])

    def dates(self) -> list[date]:
        """The ``as_of_date`` s of ``customer_features`` (none when it has no such column)."""
        if self.snapshot is None or "as_of_date" not in self.columns:
            return []
        found = self.snapshot.scan().select("as_of_date").unique()
        return sorted(found.collect().get_column("as_of_date").to_list())

    def rows_in(self, scope: Scope) -> pl.DataFrame:
        """The table's rows in ``scope``, in the gold types."""
        if self.snapshot is None or scope.empty:
            return pl.DataFrame(schema=GOLD_SCHEMAS[self.name])
        schema = GOLD_SCHEMAS[self.name]
        rows = scope.select(self.snapshot.scan()).collect()
        return rows.select([pl.col(c).cast(t) for c, t in schema.items()])

    def write(
        self, upserts: pl.DataFrame, deletes: pl.DataFrame, commit: CommitInfo, replace: bool
    ) -> int:
        """Commit the upserts and deletes (``replace``: overwrite the table with ``upserts``).

        Returns:
            The committed version.
        """
        sink = self.store.sink(self.uri)
        plan = _merge_plan(self.name)
        if replace or self.snapshot is None:
            done = sink.replace(_arrow(upserts), plan.layout, commit)
        else:
            source = pl.concat(
                [
                    upserts.with_columns(pl.lit("U").alias(ACTION_COLUMN)),
                    deletes.with_columns(pl.lit("D").alias(ACTION_COLUMN)),
                ],
                how="diagonal_relaxed",
            ).select(*upserts.columns, ACTION_COLUMN)
            done = sink.merge(_arrow(source), plan, None, commit=commit)
        assert done.table_version is not None  # a build writes only when something changed
        self.snapshot = self.store.snapshot(self.uri, done.table_version)
        return done.table_version

    def rows(self) -> int:
        return 0 if self.snapshot is None else self.snapshot.rows()


def _build_table(
    settings: Settings,
    store: DeltaRsStore,
    silver: _Silver,
    name: str,
    rules: GoldRules,
    as_of: date,
    full: bool,
) -> GoldResult:
    started = time.monotonic()
    gold = _GoldTable(settings, store, name)
    sources = GOLD_SOURCES[name]
    pins = {s: silver.pin(s, name) for s in sources}
    fingerprint = rules.fingerprint(LOGIC_VERSION)
    last = _last_build(store, gold.uri) if gold.snapshot is not None else None
    compatible = gold.compatible
    incremental = not full and compatible and last is not None and last.rules == fingerprint

    def result(version: int | None, mode: str, upserted: int = 0, deleted: int = 0) -> GoldResult:
        return GoldResult(
            table=name,
            version=version,
            rows=gold.rows(),
            changed=version is not None,
            mode=mode,
            upserted=upserted,
            deleted=deleted,
            as_of=as_of,
            seconds=time.monotonic() - started,
        )

    previous: Previous | None = None
    if incremental:
        assert last is not None
        if all(last.silver.get(s) == pins[s] for s in sources) and _same_reference(
            name, last.as_of, as_of
        ):
            return result(None, "incremental")
        previous = _previous(silver, name, last, pins)
        if previous is None:
            log.info("gold/%s: a recorded silver version is gone; building in full", name)
    current = {s: silver.frame(s, name) if s in sources else empty_silver(s) for s in SILVER_TABLES}
    # A features table built by another version of this code keeps its days (recomputed).
    dates = gold.dates() if name == "customer_features" else []
    refreshed: Refresh = refresh(name, current, rules, as_of, previous, dates)
    existing = (
        gold.rows_in(refreshed.scope) if compatible else pl.DataFrame(schema=GOLD_SCHEMAS[name])
    )
    upserts, deletes = plan(name, existing, refreshed)
    mode = "incremental" if previous is not None else "full"
    replace = not compatible
    if not replace and upserts.is_empty() and deletes.is_empty():
        return result(None, mode)
    commit = CommitInfo(
        OPERATION,
        WRITER,
        extra={
            "table": name,
            "mode": mode,
            "silver": {s: None if p is None else p.to_json() for s, p in sorted(pins.items())},
            "as_of": as_of.isoformat(),
            "rules": fingerprint,
        },
    )
    rows = refreshed.rows if replace else upserts
    version = gold.write(rows, deletes, commit, replace)
    return result(version, mode, rows.height, 0 if replace else deletes.height)


def _same_reference(name: str, before: date, after: date) -> bool:
    """Whether moving the reference day from ``before`` to ``after`` leaves ``name`` alone."""
    if name == "daily_revenue":
        return True
    if name == "opportunity_pipeline":
        return before.replace(day=1) == after.replace(day=1)
    return before == after


def _previous(
    silver: _Silver, name: str, last: _LastBuild, pins: dict[str, _Pin | None]
) -> Previous | None:
    """What changed in ``name``'s silver since its last build (None: a version it was built
    from can no longer be read, or a silver table was replaced: build in full)."""
    changes: dict[str, pl.DataFrame] = {}
    for source, pin in pins.items():
        before = last.silver.get(source)
        if before == pin:
            continue
        if before is None:
            changes[source] = silver.frame(source, name)
        elif pin is None or pin.table_id != before.table_id:
            log.info("gold/%s: silver/%s was replaced since the last build", name, source)
            return None
        else:
            changed = silver.changes(source, name, before)
            if changed is None:
                return None
            changes[source] = changed
    return Previous(changes, last.as_of)


def build_gold(
    settings: Settings,
    tables: Sequence[str] | None = None,
    full: bool = False,
    as_of: date | None = None,
    today: date | None = None,
) -> list[GoldResult]:
    """Build gold tables from silver: incrementally, or in full with ``full``.

    Args:
        settings: service settings (the lake, the pipelines' silver targets, ``gold``).
        tables: gold tables to build (None: all of :data:`~cdc.gold.tables.GOLD_TABLES`).
        full: recompute every grain (the result equals an incremental build's).
        as_of: the reference day: the last day of ``customer_360``'s 90-day window and of
            ``opportunity_pipeline``'s months, and the day ``customer_features`` describes.
            Default: the UTC day of the newest order or behaviour event in silver, but not
            after ``today``.
        today: the current UTC day (default: the clock's).

    Returns:
        One result per table, in the order asked.

    Raises:
        ConfigError: an unknown table name, or a silver table no pipeline writes.
        TableReadError, TableWriteError, CommitConflictError: a table could not be read or
            written (a concurrent build of the same table conflicts: run it again).
    """
    names = list(GOLD_TABLES if tables is None else dict.fromkeys(tables))
    unknown = [n for n in names if n not in GOLD_TABLES]
    if unknown:
        raise ConfigError(f"unknown gold table {unknown[0]!r}; valid: {', '.join(GOLD_TABLES)}")
    # Gold reads and writes through delta-rs whatever the lake's writer: its queries honour
    # the deletion vectors delta-spark leaves.
    store = DeltaRsStore(settings.lake.resolved_storage_options())
    silver = _Silver(settings, store)
    rules = rules_of(settings)
    if as_of is None:
        newest = [
            silver.newest("fact_orders", "event_ts"),
            silver.newest("fact_behavior", "occurred_at"),
        ]
        as_of = reference_day(newest, today or datetime.now(UTC).date())
    return [_build_table(settings, store, silver, n, rules, as_of, full) for n in names]
