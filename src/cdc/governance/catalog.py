"""Every table the service writes, its columns, and the classification tags each column carries.

Tags start in the contracts (``schemas/contracts.yaml``, ``tags: {after.email: [pii]}``) and
travel with the data:

* **bronze** ``<topic>``: ``value`` (both images of an envelope) and ``value_raw`` (its
  bytes) carry every tag of the topic;
* **quarantine** ``<topic>``: ``value_raw`` and ``error`` (a rule violation quotes the
  offending value) carry every tag of the topic;
* **silver** ``<target>``: a column carries the tags of its field (``after.email`` ->
  ``email`` of an envelope's dimension; ``email`` of a flat record); the SCD2 orphans table
  holds keys only;
* **gold** ``<table>``: a column carries the tags of the silver columns it is computed from
  (:data:`cdc.gold.tables.GOLD_LINEAGE`), except those :data:`~cdc.gold.tables.GOLD_DECLASSIFIED`
  drops with a reason; the warehouse tables ``cdc publish`` writes are the gold tables.

The columns are computed by the writers' own functions on an empty batch (the decoder's
output schema, :func:`cdc.ingest.changes.split_batch`, :func:`cdc.core.scd2.empty_dimension`,
:func:`cdc.ingest.changes.fact_rows`), so the catalog cannot disagree with what they write.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa

from cdc.config.lake import pipeline_tables
from cdc.config.settings import PipelineSettings, Settings
from cdc.core.scd2 import Scd2Spec, empty_dimension, empty_orphans
from cdc.errors import ConfigError
from cdc.gold import gold_path
from cdc.gold.tables import GOLD_DECLASSIFIED, GOLD_KEYS, GOLD_LINEAGE, GOLD_SCHEMAS, GOLD_TABLES
from cdc.ingest.changes import business_columns, fact_rows, scd2_changes, split_batch
from cdc.ingest.contracts import TopicContract, debezium_contract
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.registry import SchemaRegistry

__all__ = ["Catalog", "CatalogColumn", "CatalogTable", "build_catalog", "catalog_from_tables"]


@dataclass(frozen=True)
class CatalogColumn:
    """One column of a table and its tags."""

    name: str
    type: pa.DataType
    tags: frozenset[str] = frozenset()
    origin: tuple[str, ...] = ()
    """Where the tags come from (``crm.contacts after.email``, ``silver.dim_account.x``)."""
    declassified: Mapping[str, str] = field(default_factory=dict)
    """Tags of its sources this column does not carry, with the reason."""

    @property
    def is_string(self) -> bool:
        """Whether the column holds text (masks that rewrite text apply to it)."""
        t = self.type
        return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


@dataclass(frozen=True)
class CatalogTable:
    """A table of one layer: its lake location and columns in table order."""

    layer: str
    name: str
    location: str
    columns: tuple[CatalogColumn, ...]
    keys: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """``layer.name``: how the policy names the table."""
        return f"{self.layer}.{self.name}"

    def column(self, name: str) -> CatalogColumn | None:
        """The column called ``name`` (None: no such column)."""
        return next((c for c in self.columns if c.name == name), None)

    @property
    def tagged(self) -> dict[str, frozenset[str]]:
        """Column -> tags, for the columns that carry any."""
        return {c.name: c.tags for c in self.columns if c.tags}


@dataclass(frozen=True)
class Catalog:
    """Every table the service writes, by ``layer.name``."""

    tables: Mapping[str, CatalogTable]

    def __iter__(self) -> Iterator[CatalogTable]:
        return iter(self.tables.values())

    def table(self, ref: str) -> CatalogTable:
        """The table ``layer.name``.

        Raises:
            ConfigError: no such table (the message lists the layer's tables).
        """
        try:
            return self.tables[ref]
        except KeyError:
            layer = ref.split(".", 1)[0]
            valid = ", ".join(t.ref for t in self.layer(layer)) or "(none)"
            raise ConfigError(f"no table {ref!r}; tables of {layer}: {valid}") from None

    def layer(self, layer: str) -> list[CatalogTable]:
        """The tables of one layer, in catalog order."""
        return [t for t in self if t.layer == layer]

    def tags_in_use(self) -> dict[str, list[str]]:
        """Tag -> the columns (``layer.table.column``) carrying it."""
        found: dict[str, list[str]] = {}
        for table in self:
            for column in table.columns:
                for tag in sorted(column.tags):
                    found.setdefault(tag, []).append(f"{table.ref}.{column.name}")
        return found


def catalog_from_tables(tables: list[CatalogTable]) -> Catalog:
    """A catalog of the given tables (tests and tools build small ones)."""
    return Catalog({t.ref: t for t in tables})


def _row_field(path: str, contract: TopicContract) -> str:
    """The silver column a tagged value path lands in (``after.email`` -> ``email``)."""
    parts = path.split(".")
    if contract.kind == "envelope":
        return parts[1] if len(parts) > 1 and parts[0] in ("after", "before") else ""
    return parts[0]


def _topic_tags(contract: TopicContract) -> tuple[frozenset[str], tuple[str, ...]]:
    tags = frozenset(t for names in contract.tags.values() for t in names)
    origin = tuple(f"{contract.topic} {path}" for path in sorted(contract.tags))
    return tags, origin


def _columns(
    schema: pa.Schema, tagged: Mapping[str, tuple[frozenset[str], tuple[str, ...]]]
) -> tuple[CatalogColumn, ...]:
    empty: tuple[frozenset[str], tuple[str, ...]] = (frozenset(), ())
    return tuple(CatalogColumn(f.name, f.type, *tagged.get(f.name, empty)) for f in schema)


def _pipeline_tables(
    settings: Settings, name: str, pipeline: PipelineSettings, decoder: TopicDecoder
) -> list[CatalogTable]:
    """Bronze, quarantine, silver (and an SCD2 pipeline's orphans table) of one pipeline."""
    contract = decoder.contract
    topic_tags = _topic_tags(contract)
    paths = pipeline_tables(settings, pipeline)
    split = split_batch(decoder.arrow_schema.empty_table(), 0, datetime(1970, 1, 1, tzinfo=UTC))
    topic = pipeline.topic.replace(".", "_")
    whole = dict.fromkeys(("value", "value_raw"), topic_tags) if topic_tags[0] else {}
    raw = dict.fromkeys(("value_raw", "error"), topic_tags) if topic_tags[0] else {}
    tables = [
        CatalogTable("bronze", topic, paths["bronze"], _columns(split.valid.schema, whole)),
        CatalogTable(
            "quarantine", topic, paths["quarantine"], _columns(split.quarantine.schema, raw)
        ),
    ]
    by_column: dict[str, tuple[set[str], list[str]]] = {}
    for path, names in sorted(contract.tags.items()):
        column = _row_field(path, contract)
        if column:
            tags, origin = by_column.setdefault(column, (set(), []))
            tags.update(names)
            origin.append(f"{contract.topic} {path}")
    row_tags = {c: (frozenset(t), tuple(o)) for c, (t, o) in by_column.items()}
    valid = split.valid
    if pipeline.kind == "scd2":
        try:
            spec = Scd2Spec.build(
                keys=pipeline.keys,
                columns=business_columns(valid.schema, pipeline.source_format),
                track_history=pipeline.track_history,
                track_history_except=pipeline.track_history_except,
            )
        except ValueError as exc:
            raise ConfigError(f"pipeline {name}: {exc}") from None
        changes = scd2_changes(valid, spec, pipeline.source_format, pipeline.sequence_by)
        silver = empty_dimension(spec, dict(changes.schema)).to_arrow().schema
        keys = spec.keys
        orphans = empty_orphans(spec, dict(changes.schema))
        orphan_table = CatalogTable(
            "silver",
            paths["orphans"].rstrip("/").rsplit("/", 1)[-1],
            paths["orphans"],
            _columns(orphans.to_arrow().schema, row_tags),
            keys,
        )
    else:
        assert pipeline.event_id is not None
        silver = fact_rows(valid, pipeline.event_id).to_arrow().schema
        keys = (pipeline.event_id,)
        orphan_table = None
    tables.append(
        CatalogTable("silver", pipeline.target, paths["silver"], _columns(silver, row_tags), keys)
    )
    if orphan_table is not None:
        tables.append(orphan_table)
    return tables


def _gold_tables(settings: Settings, silver: Mapping[str, CatalogTable]) -> list[CatalogTable]:
    """The gold tables, their columns tagged through :data:`GOLD_LINEAGE`."""
    tables = []
    for name in GOLD_TABLES:
        schema = pl.DataFrame(schema=GOLD_SCHEMAS[name]).to_arrow().schema
        lineage = GOLD_LINEAGE[name]
        declassified = GOLD_DECLASSIFIED.get(name, {})
        columns = []
        for f in schema:
            if f.name not in lineage:
                raise ConfigError(f"gold.{name}.{f.name} has no entry in GOLD_LINEAGE")
            tags: set[str] = set()
            origin: list[str] = []
            for source in lineage[f.name]:
                table, _, column = source.partition(".")
                found = silver.get(table)
                col = found.column(column) if found is not None else None
                if col is None:
                    raise ConfigError(
                        f"gold.{name}.{f.name} is computed from silver.{source}, which no"
                        " pipeline writes"
                    )
                if col.tags:
                    tags |= col.tags
                    origin.append(f"silver.{source}")
            dropped = declassified.get(f.name, {})
            stale = sorted(set(dropped) - tags)
            if stale:
                raise ConfigError(
                    f"gold.{name}.{f.name} declassifies tag(s) {', '.join(stale)} that its"
                    " sources do not carry"
                )
            columns.append(
                CatalogColumn(
                    f.name, f.type, frozenset(tags - set(dropped)), tuple(origin), dict(dropped)
                )
            )
        tables.append(
            CatalogTable("gold", name, gold_path(settings, name), tuple(columns), GOLD_KEYS[name])
        )
    return tables


def build_catalog(
    settings: Settings, contracts: Mapping[str, TopicContract], registry: SchemaRegistry
) -> Catalog:
    """Every table the configured pipelines and the gold build write, with column tags.

    Args:
        settings: the service settings (pipelines, lake paths).
        contracts: the topic contracts (their ``tags``).
        registry: the registry holding the contracts' subjects (the reader schemas).

    Returns:
        The catalog, bronze and quarantine and silver per pipeline, then gold.

    Raises:
        ConfigError: a pipeline's topic has no contract, a tag path does not fit the schema,
            or the gold lineage names a silver column no pipeline writes.
    """
    tables: list[CatalogTable] = []
    for name, pipeline in settings.pipelines.items():
        contract = contracts.get(pipeline.topic)
        if contract is None and pipeline.database is not None:  # a database's table
            contract = debezium_contract(pipeline.topic)
        if contract is None:
            raise ConfigError(
                f"pipeline {name}: topic {pipeline.topic} has no contract"
                f" (topics with one: {', '.join(sorted(contracts))})"
            )
        tables += _pipeline_tables(settings, name, pipeline, TopicDecoder(registry, contract))
    silver = {t.name: t for t in tables if t.layer == "silver"}
    tables += _gold_tables(settings, silver)
    return catalog_from_tables(tables)
