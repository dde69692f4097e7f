"""What each run reads and writes, as datasets with their schemas and column lineage.

Schemas come from the governance catalog (:func:`cdc.governance.catalog.build_catalog`),
which derives every table from the writers' own functions, so an event's schema is what the
writers write; column lineage of the gold tables from :data:`cdc.gold.tables.GOLD_LINEAGE`,
and of the published warehouse tables (a copy of gold, column by column). A schema that
cannot be derived (a topic without a contract) is left out of the events, never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from cdc.config.lake import table_paths
from cdc.config.settings import Settings
from cdc.gold import gold_path
from cdc.gold.tables import GOLD_LINEAGE, GOLD_SOURCES
from cdc.governance.catalog import build_catalog
from cdc.ingest.contracts import load_contracts
from cdc.ingest.registry import FileRegistry
from cdc.lineage.events import Column, Table, columns_of
from cdc.lineage.naming import (
    DatasetId,
    duckdb_dataset,
    kafka_dataset,
    postgres_dataset,
    snowflake_dataset,
    table_dataset,
)
from cdc.pipeline.batch import BatchStats
from cdc.warehouse.postgres import dsn_parts

if TYPE_CHECKING:
    from cdc.governance.catalog import Catalog

__all__ = [
    "batch_tables",
    "count_rows",
    "dr_tables",
    "gold_tables",
    "lake_table",
    "maintain_tables",
    "publish_tables",
    "sla_tables",
    "stream_tables",
    "warehouse_dataset",
]

log = logging.getLogger(__name__)

STREAM_OUTPUTS = ("bronze", "quarantine", "silver")
"""The tables a streaming query's events name as outputs (the SCD2 orphans side table is the
writer's bookkeeping, not data)."""

_catalogs: dict[int, tuple[Settings, Catalog | None]] = {}


def _catalog(settings: Settings) -> Catalog | None:
    """The catalog of ``settings`` (built once per settings object; None when it cannot be)."""
    cached = _catalogs.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    catalog: Catalog | None
    try:
        catalog = build_catalog(
            settings,
            load_contracts(settings.registry.contracts),
            FileRegistry.load(settings.registry.path),
        )
    except Exception as exc:  # lineage reports without schemas rather than stop the run
        log.info("lineage: table schemas unknown (%s); events carry none", exc)
        catalog = None
    _catalogs[id(settings)] = (settings, catalog)
    return catalog


def _columns(settings: Settings, ref: str) -> tuple[Column, ...] | None:
    catalog = _catalog(settings)
    table = None if catalog is None else catalog.tables.get(ref)
    if table is None:
        return None
    return columns_of(pa.schema([(c.name, c.type) for c in table.columns]))


def lake_table(
    uri: str, columns: tuple[Column, ...] | None = None, rows: int | None = None
) -> Table:
    """A lake table at ``uri``."""
    return Table(table_dataset(uri), columns, rows)


def stream_tables(settings: Settings, name: str) -> tuple[Table, dict[str, Table]]:
    """A pipeline's topic and its output tables by role (bronze, quarantine, silver)."""
    pipeline = settings.pipeline(name)
    topic = Table(kafka_dataset(settings.kafka.bootstrap_servers, pipeline.topic))
    paths = table_paths(settings, pipeline)
    layer_names = {
        "bronze": f"bronze.{pipeline.topic.replace('.', '_')}",
        "quarantine": f"quarantine.{pipeline.topic.replace('.', '_')}",
        "silver": f"silver.{pipeline.target}",
    }
    outputs = {
        role: lake_table(paths[role], _columns(settings, layer_names[role]))
        for role in STREAM_OUTPUTS
    }
    return topic, outputs


def batch_tables(
    topic: Table, outputs: Mapping[str, Table], stats: BatchStats
) -> tuple[list[Table], list[Table]]:
    """One micro-batch: the records it read and the rows it wrote to each table.

    Silver's count is its rows written: versions inserted, current rows updated in place and
    intervals closed (an SCD2 MERGE), or facts inserted.
    """
    rows = {
        "bronze": stats.bronze_rows,
        "quarantine": stats.quarantined,
        "silver": stats.inserted + stats.updated + stats.closed,
    }
    return (
        [Table(topic.id, rows=stats.input_rows)],
        [Table(t.id, rows=rows[role]) for role, t in outputs.items()],
    )


def _silver_uri(settings: Settings, target: str) -> str:
    return settings.lake.path("silver", target)


def _silver_column(settings: Settings, source: str) -> tuple[DatasetId, str]:
    """``dim_account.name`` -> (the silver table's dataset, ``name``)."""
    table, _, column = source.partition(".")
    return table_dataset(_silver_uri(settings, table)), column


def gold_tables(settings: Settings, names: Sequence[str]) -> tuple[list[Table], list[Table]]:
    """A gold build: the silver tables it reads, the gold tables with their column lineage."""
    sources = sorted({s for name in names for s in GOLD_SOURCES[name]})
    inputs = [
        lake_table(_silver_uri(settings, s), _columns(settings, f"silver.{s}")) for s in sources
    ]
    outputs = []
    for name in names:
        lineage = {
            column: [_silver_column(settings, source) for source in origins]
            for column, origins in GOLD_LINEAGE[name].items()
        }
        outputs.append(
            Table(
                table_dataset(gold_path(settings, name)),
                _columns(settings, f"gold.{name}"),
                column_lineage=lineage,
            )
        )
    return inputs, outputs


def warehouse_dataset(settings: Settings, table: str) -> DatasetId:
    """The warehouse table ``cdc publish`` writes for gold table ``table``.

    Raises:
        ConfigError: the warehouse settings cannot name it (a DuckDB file on an object-store
            lake without ``warehouse.path``; a DSN that does not parse).
    """
    wh = settings.warehouse
    if wh.target == "duckdb":
        return duckdb_dataset(wh.duckdb_path(settings.lake), wh.schema, table)
    if wh.target == "postgres":
        fields = {"host": wh.host, "port": wh.port, "dbname": wh.database, "user": wh.user}
        parts = {**dsn_parts(wh.resolved_dsn() or ""), **{k: v for k, v in fields.items() if v}}
        return postgres_dataset(parts, wh.schema, table)
    return snowflake_dataset(wh.account or "", wh.database or "", wh.schema, table)


def publish_tables(settings: Settings, names: Sequence[str]) -> tuple[list[Table], list[Table]]:
    """A publish: each gold table in, its warehouse table out (column for column)."""
    inputs, outputs = [], []
    for name in names:
        columns = _columns(settings, f"gold.{name}")
        gold = Table(table_dataset(gold_path(settings, name)), columns)
        lineage = {c.name: [(gold.id, c.name)] for c in columns or ()}
        inputs.append(gold)
        outputs.append(Table(warehouse_dataset(settings, name), columns, column_lineage=lineage))
    return inputs, outputs


def _layer_ref(uri: str) -> str:
    layer, _, table = "/".join(uri.rstrip("/").split("/")[-2:]).partition("/")
    return f"{layer}.{table}"


def maintain_tables(settings: Settings, uris: Iterable[str]) -> list[Table]:
    """``cdc maintain``: each table is read and rewritten (OPTIMIZE, VACUUM) in place."""
    return [lake_table(uri, _columns(settings, _layer_ref(uri))) for uri in uris]


def dr_tables(
    settings: Settings,
    location: str,
    names: Iterable[str],
    to: str | None = None,
    rows: Mapping[str, int] | None = None,
) -> tuple[list[Table], list[Table]]:
    """DR: a snapshot copies lake tables to ``<location>/tables/<layer>/<table>``; a restore
    (``to``) copies them from there to ``<to>/<layer>/<table>``.

    Args:
        settings: the settings (the lake root).
        location: the DR location.
        names: ``<layer>/<table>`` names.
        to: a restore's target lake root (None: a snapshot).
        rows: rows copied per table (a snapshot's outcome).
    """
    lake, dr = [], []
    for name in names:
        root = settings.lake.root if to is None else to
        columns = _columns(settings, name.replace("/", ".", 1))
        n = None if rows is None else rows.get(name)
        lake.append(lake_table(f"{root.rstrip('/')}/{name}", columns, n))
        dr.append(lake_table(f"{location.rstrip('/')}/tables/{name}", columns, n))
    return (lake, dr) if to is None else (dr, lake)


def sla_tables(settings: Settings, names: Iterable[str]) -> list[Table]:
    """``cdc sla check``: the topics and the bronze and quarantine tables it judges."""
    tables = []
    for name in names:
        topic, outputs = stream_tables(settings, name)
        tables += [topic, outputs["bronze"], outputs["quarantine"]]
    return tables


def count_rows(tables: Iterable[tuple[str, int]]) -> dict[DatasetId, int]:
    """``{dataset: rows}`` of ``(uri, rows)`` pairs of lake tables."""
    return {table_dataset(uri): rows for uri, rows in tables}
