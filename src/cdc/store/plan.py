"""What a write asks of a Delta table, described once as data and rendered by each store.

Both writers apply the same table rules: the SCD2 MERGE (which columns match and with which
equality, which partition a MERGE may prune to, its clauses, how the table is created), the
insert-only MERGE of facts, and the metadata every commit carries. They are written here once;
:mod:`cdc.store.delta_rs` renders them for delta-rs and :mod:`cdc.store.delta_spark` for
delta-spark, so the two writers cannot drift apart. Pure: no engine is imported. (The MERGE
source of an SCD2 result, :func:`cdc.core.scd2.merge_source`, is built by the pure fold.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pyarrow as pa

from cdc.core.scd2 import ACTION_COLUMN, WAS_CURRENT_COLUMN

__all__ = [
    "APPEND_LAYOUTS",
    "BRONZE_LAYOUT",
    "COMMIT_METADATA_KEY",
    "CURRENT_PARTITION",
    "DIMENSION_LAYOUT",
    "QUARANTINE_LAYOUT",
    "STATS_COLUMNS_PROPERTY",
    "Clause",
    "CommitInfo",
    "MergePlan",
    "TableLayout",
    "dimension_layout",
    "facts_merge_plan",
    "read_commit_info",
    "scd2_merge_plan",
]

CURRENT_PARTITION = "is_current"
"""The dimension's partition column: a MERGE of in-order changes reads current rows only."""

COMMIT_METADATA_KEY = "cdc"
"""``commitInfo.userMetadata`` of every commit the service makes is ``{"cdc": {...}}``."""


STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
"""The Delta table property naming the columns whose per-file statistics a write collects."""


@dataclass(frozen=True)
class TableLayout:
    """How a table is created by its first write (an existing table keeps its own layout).

    Attributes:
        partition_by: partition columns.
        properties: Delta table properties (``delta.*``).
        stats: the columns whose min/max/null-count statistics every write collects (a
            struct stands for its leaves); only leaves of a type that prunes are kept (numbers,
            strings, dates, timestamps). None: Delta's default, the first 32 leaf columns,
            whatever they are. Collecting statistics is a pass over every written value of
            those columns: a wide payload struct costs a write more than it ever prunes.
    """

    partition_by: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    stats: tuple[str, ...] | None = None

    def table_properties(self, schema: pa.Schema) -> dict[str, str]:
        """The properties of a table this layout creates with ``schema``: :attr:`properties`
        and, when :attr:`stats` is set, :data:`STATS_COLUMNS_PROPERTY` naming the eligible
        leaves of those columns that ``schema`` has (partition columns never have stats)."""
        properties = dict(self.properties)
        if self.stats is not None:
            wanted = [c for c in self.stats if c not in self.partition_by]
            leaves = [
                path
                for f in schema
                if f.name in wanted
                for path in _prunable_leaves(f.type, (f.name,))
            ]
            # An empty list would fall back to Delta's default; the record count is kept anyway.
            if leaves:
                properties[STATS_COLUMNS_PROPERTY] = ",".join(_column_path(p) for p in leaves)
        return properties


def _prunable_leaves(kind: pa.DataType, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    if pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            child = kind.field(i)
            yield from _prunable_leaves(child.type, (*path, child.name))
    elif (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_date(kind)
        or pa.types.is_timestamp(kind)
    ):
        yield path


def _column_path(path: tuple[str, ...]) -> str:
    """A column path as Delta parses it (a name with a dot, comma or backtick quoted)."""
    return ".".join(
        f"`{part.replace('`', '``')}`" if any(ch in part for ch in ".,` ") else part
        for part in path
    )


_KAFKA_STATS = ("topic", "partition", "offset", "timestamp", "_batch_id")
"""What bronze and quarantine are read by: a Kafka position (replay, landed ranges, audits)
and the batch that wrote it."""

BRONZE_LAYOUT = TableLayout(stats=(*_KAFKA_STATS, "key"))
"""Bronze: statistics on the Kafka coordinates, the batch and the decoded key (a late key's
history is read by key), not on the payload (the widest struct of the lake)."""

QUARANTINE_LAYOUT = TableLayout(stats=(*_KAFKA_STATS, "error_code"))
"""Quarantine: statistics on the Kafka coordinates, the batch and the reason."""

APPEND_LAYOUTS = {"bronze": BRONZE_LAYOUT, "quarantine": QUARANTINE_LAYOUT}
"""The layout of each table a micro-batch appends its raw records to, by role. (Facts keep
Delta's default statistics: their flat business columns are what readers filter by.)"""


def dimension_layout(keys: tuple[str, ...] | list[str] = ()) -> TableLayout:
    """An SCD2 dimension: partitioned by ``is_current`` (history only grows by appends; a
    MERGE of in-order changes reads and rewrites the current partition), with deletion vectors
    (a MERGE that closes a version marks the old row deleted instead of copying its file), and
    statistics on the keys and the version's bounds (what a lookup of a key, or of the version
    valid at a time, prunes by). Only the dimension has deletion vectors: bronze, quarantine,
    facts and orphans are appended or inserted into, and a table whose protocol has the feature
    costs every scan a file listing."""
    return replace(
        DIMENSION_LAYOUT,
        stats=(*keys, "_seq_open", "valid_from", "valid_to") if keys else None,
    )


DIMENSION_LAYOUT = TableLayout(
    partition_by=(CURRENT_PARTITION,),
    properties={"delta.enableDeletionVectors": "true"},
)
"""The dimension's partitioning and properties, whatever its keys (:func:`dimension_layout`)."""


@dataclass(frozen=True)
class Clause:
    """One WHEN clause of a MERGE.

    Attributes:
        kind: ``delete`` (matched), ``update`` (matched: every target column from the source)
            or ``insert`` (not matched: every target column from the source).
        action: only source rows whose :data:`ACTION_COLUMN` holds this value (None: all).
    """

    kind: Literal["delete", "update", "insert"]
    action: str | None = None


@dataclass(frozen=True)
class MergePlan:
    """A MERGE of a source (alias ``s``) into a table (alias ``t``), engine-free.

    Attributes:
        operation: what the MERGE writes (``scd2``, ``facts``): its commits are
            ``<operation>-merge``, or ``<operation>-create`` when it creates the table.
        match: columns matched with null-safe equality (``t.c <=> s.c``).
        match_source: extra ``t.<target> <=> s.<source>`` equalities (the row's partition).
        prune: target literals ANDed to the match (``t.is_current = true``): the partitions
            the MERGE reads and rewrites.
        clauses: WHEN clauses, in order.
        source_only: source columns that are not table columns (never written).
        layout: how the table is created when it does not exist (the source rows that an
            ``insert`` clause would take are appended instead).
    """

    operation: str
    match: tuple[str, ...]
    clauses: tuple[Clause, ...]
    match_source: Mapping[str, str] = field(default_factory=dict)
    prune: Mapping[str, bool | int | str] = field(default_factory=dict)
    source_only: tuple[str, ...] = ()
    layout: TableLayout = field(default_factory=TableLayout)

    def condition(self, null_safe: str) -> str:
        """The ON condition in SQL, with the engine's null-safe equality operator.

        Args:
            null_safe: ``<=>`` (Spark) or ``IS NOT DISTINCT FROM`` (DataFusion).
        """
        # Every column-to-column equality with the same operator: DataFusion makes hash-join
        # keys of one kind only, so one `=` among `IS NOT DISTINCT FROM`s turned the keys
        # into a filter over a join on the partition column alone (a MERGE of 50k rows into
        # 20k keys took 21 s instead of 0.2 s).
        pairs = [*((c, c) for c in self.match), *self.match_source.items()]
        parts = [f"t.`{t}` {null_safe} s.`{s}`" for t, s in pairs]
        parts += [f"t.`{c}` = {_literal(v)}" for c, v in self.prune.items()]
        # Parenthesised: DataFusion binds IS NOT DISTINCT FROM looser than AND.
        return " AND ".join(f"({part})" for part in parts)

    def when(self, clause: Clause) -> str | None:
        """The SQL condition of ``clause`` (None: unconditional)."""
        return None if clause.action is None else f"s.`{ACTION_COLUMN}` = '{clause.action}'"

    def inserted(self) -> str | None:
        """The action of the ``insert`` clause's rows (a table created by the plan's first
        write appends those), or None when every source row is inserted."""
        return next((c.action for c in self.clauses if c.kind == "insert"), None)


def _literal(value: bool | int | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def scd2_merge_plan(keys: tuple[str, ...] | list[str], *, current_only: bool) -> MergePlan:
    """The SCD2 MERGE of fold results (``_cdc_action`` ``U``/``D``) into a dimension.

    A source row matches the version it rewrites by ``(keys, _seq_open)`` and that row's
    partition (:data:`WAS_CURRENT_COLUMN`): ``D`` deletes it, ``U`` updates it or inserts a
    new version.

    Args:
        keys: the dimension's key columns.
        current_only: no source row rewrites a history row (an in-order batch): the MERGE
            then names the current partition as a literal, and reads no history at all.
    """
    return MergePlan(
        operation="scd2",
        match=(*keys, "_seq_open"),
        match_source={CURRENT_PARTITION: WAS_CURRENT_COLUMN},
        prune={CURRENT_PARTITION: True} if current_only else {},
        clauses=(Clause("delete", "D"), Clause("update", "U"), Clause("insert", "U")),
        source_only=(ACTION_COLUMN, WAS_CURRENT_COLUMN),
        layout=dimension_layout(keys),
    )


def facts_merge_plan(event_id: str) -> MergePlan:
    """Insert the facts whose event id the table does not hold yet (an event lands once)."""
    return MergePlan(operation="facts", match=(event_id,), clauses=(Clause("insert"),))


@dataclass(frozen=True)
class CommitInfo:
    """What every commit of the service records, whoever writes it (one shape in the log).

    Written as ``commitInfo.userMetadata = {"cdc": {...}}`` (compact JSON) by both stores and
    the gold build.

    Attributes:
        operation: what the commit does (``append``, ``scd2-merge``, ``facts-merge``,
            ``gold-build``, ...).
        writer: ``delta-rs`` or ``delta-spark``.
        app_id: the app transaction's id (None for commits without one).
        version: the app transaction's version.
        extra: further facts of the commit (the gold build's input versions).
    """

    operation: str
    writer: str
    app_id: str | None = None
    version: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def user_metadata(self) -> str:
        """The ``userMetadata`` string of the commit."""
        body: dict[str, Any] = {"operation": self.operation, "writer": self.writer}
        if self.app_id is not None:
            body["app_id"] = self.app_id
            body["version"] = self.version
        body.update(self.extra)
        return json.dumps({COMMIT_METADATA_KEY: body}, separators=(",", ":"), sort_keys=True)


def read_commit_info(commit: Mapping[str, Any]) -> dict[str, Any] | None:
    """The service's metadata of one ``commitInfo`` (a Delta history entry), or None.

    The body of ``userMetadata = {"cdc": {...}}``; commits written before that shape are read
    too, so a lake written by an earlier release keeps its meaning:

    * the delta-rs writer's ``commitInfo`` fields ``cdc.operation``, ``cdc.app_id`` and
      ``cdc.batch`` become ``operation``, ``app_id`` and ``version`` (``writer``: delta-rs);
    * the delta-spark writer's ``userMetadata = "cdc <app_id> <version>"`` (its appends)
      becomes ``app_id`` and ``version`` (``operation``: append; ``writer``: delta-spark).

    Args:
        commit: a history entry (delta-rs ``DeltaTable.history()`` or the log's
            ``commitInfo``).
    """
    raw = commit.get("userMetadata")
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return _legacy_spark(raw)
        body = parsed.get(COMMIT_METADATA_KEY) if isinstance(parsed, dict) else None
        if isinstance(body, dict):
            return dict(body)
    return _legacy_delta_rs(commit)


_LEGACY_OPERATION, _LEGACY_APP_ID, _LEGACY_BATCH = "cdc.operation", "cdc.app_id", "cdc.batch"
"""The ``commitInfo`` fields the delta-rs writer wrote before :class:`CommitInfo`."""


def _legacy_delta_rs(commit: Mapping[str, Any]) -> dict[str, Any] | None:
    operation = commit.get(_LEGACY_OPERATION)
    if not isinstance(operation, str):
        return None
    body: dict[str, Any] = {"operation": operation, "writer": "delta-rs"}
    app_id, batch = commit.get(_LEGACY_APP_ID), commit.get(_LEGACY_BATCH)
    if isinstance(app_id, str) and batch is not None and str(batch).isdigit():
        body["app_id"], body["version"] = app_id, int(str(batch))
    return body


def _legacy_spark(raw: str) -> dict[str, Any] | None:
    parts = raw.split(" ")
    if len(parts) != 3 or parts[0] != COMMIT_METADATA_KEY or not parts[2].isdigit():
        return None
    return {
        "operation": "append",
        "writer": "delta-spark",
        "app_id": parts[1],
        "version": int(parts[2]),
    }
