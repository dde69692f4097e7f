"""A whole database in one job: a pipeline per table topic, generated from ``databases``.

A Debezium connector writes one topic per captured table (``<topic.prefix>.<schema>.<table>``)
and registers its key and value subjects (``<topic>-key``, ``<topic>-value``). A ``databases``
stanza names the topics to capture (``include``/``exclude`` regular expressions) and what
every table's pipeline looks like; :func:`expand` turns each matching topic whose subjects
the registry (file or HTTP) holds into a pipeline:

* its name ``<database>__<table>``, its silver table ``target`` (``{table}`` by default);
* its keys: the fields of the key subject's latest schema (the table's primary key);
* its settings: the stanza's ``pipeline``, then the table's entry in ``tables`` (by topic,
  or by the table's name alone);
* its contract: the topic's entry in the contracts file if there is one, else Debezium's
  envelope with no rules (:func:`cdc.pipeline.kafka_source.topic_decoder`).

A topic that matches but has no subjects yet (no record written) is left for a later look; a
pipeline of the configuration wins over a generated one for its topic. ``cdc run`` expands at
start and again every ``discover_every_seconds``: a table created while it runs gets a query
of its own, its tables created on its first record. Each table is its own streaming query, so
one table's poison record lands in its own quarantine and one table's failure stops that
table's query only (:func:`cdc.pipeline.queries.run_pipelines`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cdc.config.settings import NAME_PATTERN, PipelineSettings, Settings
from cdc.errors import ConfigError, SchemaNotFoundError

if TYPE_CHECKING:
    from cdc.ingest.registry import SchemaRegistry

__all__ = ["expand", "generated", "list_topics", "matches", "pipeline_name", "with_tables"]

log = logging.getLogger(__name__)

_OWN = ("topic", "target", "keys", "database")
"""Pipeline keys the expansion sets itself (a stanza's ``pipeline`` may not)."""


def matches(settings: Settings, database: str, topic: str) -> bool:
    """Whether ``topic`` is one of ``database``'s tables (included, not excluded)."""
    db = settings.databases[database]
    if not re.fullmatch(db.include, topic):
        return False
    return not any(re.fullmatch(pattern, topic) for pattern in db.exclude)


def pipeline_name(database: str, topic: str) -> str:
    """``<database>__<table>``: the topic's last dotted part, made a pipeline name."""
    table = re.sub(r"[^A-Za-z0-9_]", "_", topic.rsplit(".", 1)[-1])
    name = f"{database}__{table}"
    if not re.fullmatch(NAME_PATTERN, name):  # too long, or a table named by digits alone
        raise ConfigError(f"database {database!r}: topic {topic!r} gives no pipeline name")
    return name


def expand(settings: Settings, topics: Iterable[str], registry: SchemaRegistry) -> Settings:
    """``settings`` with a pipeline for each matching topic of every ``databases`` stanza.

    Args:
        settings: the configuration (its own pipelines are kept as they are).
        topics: the cluster's topics.
        registry: where each table's subjects are.

    Raises:
        ConfigError: a generated pipeline is not valid (its message names the topic).
    """
    if not settings.databases:
        return settings
    configured = {p.topic for p in settings.pipelines.values() if p.database is None}
    found: dict[str, PipelineSettings] = {}
    for database, db in settings.databases.items():
        unknown = sorted(set(db.pipeline) & set(_OWN))
        if unknown:
            raise ConfigError(
                f"database {database!r}: pipeline sets {', '.join(unknown)}, which each"
                " table's topic and key subject decide"
            )
        for topic in sorted(set(topics)):
            if topic in configured or not matches(settings, database, topic):
                continue
            keys = _key_fields(registry, topic)
            if keys is None:
                continue
            name = pipeline_name(database, topic)
            if name in found or (
                name in settings.pipelines and settings.pipelines[name].database is None
            ):
                raise ConfigError(
                    f"database {database!r}: topic {topic!r} would be pipeline {name!r},"
                    " which another topic or the configuration already names"
                )
            found[name] = _pipeline(settings, database, topic, keys)
    return settings.model_copy(update={"pipelines": {**settings.pipelines, **found}})


def with_tables(settings: Settings) -> Settings:
    """:func:`expand` over the cluster's topics now, with the service's registry.

    Raises:
        BrokerUnavailableError: the cluster did not answer.
    """
    from cdc.pipeline.kafka_source import registry_for

    return expand(settings, list_topics(settings), registry_for(settings))


def generated(settings: Settings) -> dict[str, PipelineSettings]:
    """The pipelines a ``databases`` stanza generated."""
    return {n: p for n, p in settings.pipelines.items() if p.database is not None}


def list_topics(settings: Settings) -> list[str]:
    """The cluster's topics (for :func:`expand`)."""
    from cdc.runtime.kafka_admin import KafkaMetadata

    meta = KafkaMetadata.for_settings(settings.kafka)
    try:
        return meta.topic_names()
    finally:
        meta.close()


def _key_fields(registry: SchemaRegistry, topic: str) -> tuple[str, ...] | None:
    try:
        key = registry.latest(f"{topic}-key")
        registry.latest(f"{topic}-value")
    except SchemaNotFoundError:
        log.info("topic %s matches but has no key and value subjects yet: left for later", topic)
        return None
    node = key.avro_type
    if node.kind == "union":
        node = node.non_null_branches()[0]
    if node.kind != "record" or not node.fields:
        raise ConfigError(
            f"topic {topic!r}: its key subject {topic}-key is not a record of the table's"
            " primary key columns"
        )
    return tuple(f.name for f in node.fields)


def _pipeline(
    settings: Settings, database: str, topic: str, keys: tuple[str, ...]
) -> PipelineSettings:
    db = settings.databases[database]
    parts = topic.split(".")
    own = db.tables.get(topic) or db.tables.get(parts[-1]) or {}
    names = {
        "table": parts[-1],
        "schema": parts[-2] if len(parts) > 1 else "",
        "database": database,
    }
    spec: dict[str, Any] = {
        "kind": db.kind,
        **db.pipeline,
        **own,
        "topic": topic,
        "keys": list(keys),
        "database": database,
    }
    target = own.get("target") or db.target.format(**names)
    spec["target"] = re.sub(r"[^A-Za-z0-9_]", "_", target)
    if spec["kind"] == "facts":
        spec.pop("keys")
    try:
        return PipelineSettings.model_validate(spec)
    except ValueError as exc:
        first = str(exc).splitlines()
        raise ConfigError(
            f"database {database!r}: topic {topic!r}: {' '.join(first[:3])}"
        ) from None
