"""Spark's built-in Kafka source, decoded on the executors.

A pipeline reads its topic with ``spark.readStream.format("kafka")``: Spark plans the offset
ranges, keeps them in the query's checkpoint and fetches them in executor tasks. The same tasks
decode every record (Confluent framing, Avro with the registry's writer schema, the topic's
contract) through ``mapInArrow`` with the columnar :class:`~cdc.ingest.decoder.TopicDecoder`, so
the driver only sees the decoded batch that ``foreachBatch`` is handed.

The options users know keep their Spark meaning: ``startingOffsets``,
``startingOffsetsByTimestamp``, ``maxOffsetsPerTrigger``, ``minPartitions``,
``maxRecordsPerPartition``, ``failOnDataLoss`` and every ``kafka.*`` client setting.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cdc.config.settings import PipelineSettings, Settings
from cdc.core.sequence import SequenceCheck
from cdc.errors import ConfigError
from cdc.ingest.contracts import TopicContract, debezium_contract, load_contracts
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.registry import FileRegistry, HttpRegistry
from cdc.pipeline.checkpoint import has_offsets, read_start_file

# pyspark is imported where the stream is built: `cdc status` (through the expectations) and
# the unit tests use the decoder spec and the options without it.

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from cdc.ingest.registry import SchemaRegistry

__all__ = [
    "KAFKA_COLUMNS",
    "SPARK_KAFKA_OPTIONS",
    "DecoderSpec",
    "decoded_stream",
    "source_options",
    "topic_decoder",
]

KAFKA_COLUMNS = ("topic", "partition", "offset", "timestamp", "key", "value")
"""The columns of Spark's Kafka source that the decoder reads."""

SPARK_KAFKA_OPTIONS = (
    "endingOffsets",
    "endingOffsetsByTimestamp",
    "endingTimestamp",
    "failOnDataLoss",
    "fetchOffset.numRetries",
    "fetchOffset.retryIntervalMs",
    "groupIdPrefix",
    "includeHeaders",
    "kafkaConsumer.pollTimeoutMs",
    "maxOffsetsPerTrigger",
    "maxRecordsPerPartition",
    "maxTriggerDelay",
    "minOffsetsPerTrigger",
    "minPartitions",
    "startingOffsets",
    "startingOffsetsByTimestamp",
    "startingOffsetsByTimestampStrategy",
    "startingTimestamp",
)
"""Options of Spark's Kafka source a pipeline may set in ``source_options`` (plus ``kafka.*``).

``subscribe`` is the pipeline's ``topic``; ``assign`` and ``subscribePattern`` do not fit a
pipeline that owns one topic."""

START_OPTION_KEYS = ("startingOffsets", "startingOffsetsByTimestamp", "startingTimestamp")


@dataclass(frozen=True)
class DecoderSpec:
    """What an executor needs to build a topic's decoder (small and picklable)."""

    registry_path: str | None
    # Both may hold credentials (resolved): never in a repr.
    registry_url: str | None = field(repr=False)
    registry_client: tuple[tuple[str, str], ...] = field(repr=False)
    contracts_path: str
    max_message_bytes: int
    sequence: SequenceCheck | None = None
    """The pipeline's sequence check (an SCD2 pipeline's decoder quarantines the records
    whose sequence cannot be encoded); None: no check."""
    unavailable: tuple[str, ...] = ()
    """The pipeline's placeholders for unchanged values: a leaf holding one passes the
    contract's patterns and allowed values (it is not a value)."""
    default_contract: bool = False
    """A topic without a contract is read with Debezium's envelope and no rules (a table of
    a ``databases`` stanza); otherwise it is refused."""

    @classmethod
    def from_settings(
        cls, settings: Settings, pipeline: PipelineSettings | None = None
    ) -> DecoderSpec:
        """The decoder settings of the service, with ``pipeline``'s sequence check if given."""
        registry = settings.registry
        url = registry.resolved_url()
        return cls(
            registry_path=None if url else str(registry.path),
            registry_url=url,
            registry_client=tuple(sorted(registry.client_config().items())),
            contracts_path=str(registry.contracts),
            max_message_bytes=settings.defaults.max_message_bytes,
            sequence=None if pipeline is None else SequenceCheck.of(settings, pipeline),
            unavailable=_unavailable(settings, pipeline),
            default_contract=pipeline is not None and pipeline.database is not None,
        )


def _unavailable(settings: Settings, pipeline: PipelineSettings | None) -> tuple[str, ...]:
    if pipeline is None or pipeline.kind != "scd2":
        return ()
    own = pipeline.unavailable_values
    return settings.defaults.unavailable_values if own is None else own


def registry_for(settings: Settings) -> SchemaRegistry:
    """The service's schema registry (file or HTTP), as the decoders read it."""
    spec = DecoderSpec.from_settings(settings)
    stamp = (
        _stamp(os.path.join(spec.registry_path, "index.json"))
        if spec.registry_url is None and spec.registry_path is not None
        else (0, 0)
    )
    return _cached_registry(spec.registry_path, spec.registry_url, spec.registry_client, stamp)


def topic_decoder(spec: DecoderSpec, topic: str) -> TopicDecoder:
    """The decoder of ``topic``, built once per Python process and registry/contracts version.

    Executor workers are reused across tasks and queries, so the cache key includes the
    modification stamp of the contracts file and of the file registry's index: registering a
    new schema version takes effect without restarting Spark.

    Raises:
        ConfigError: the topic has no contract.
        SchemaNotFoundError: a contract subject is not in the registry.
    """
    registry_stamp = (
        _stamp(os.path.join(spec.registry_path, "index.json"))
        if spec.registry_url is None and spec.registry_path is not None
        else (0, 0)
    )
    return _cached_decoder(spec, topic, registry_stamp, _stamp(spec.contracts_path))


def _stamp(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached_decoder(
    spec: DecoderSpec,
    topic: str,
    registry_stamp: tuple[int, int],
    contracts_stamp: tuple[int, int],
) -> TopicDecoder:
    contracts = _cached_contracts(spec.contracts_path, contracts_stamp)
    contract = contracts.get(topic)
    if contract is None and spec.default_contract:
        contract = debezium_contract(topic)
    if contract is None:
        known = ", ".join(sorted(contracts)) or "none"
        raise ConfigError(
            f"no contract for topic {topic!r} in {spec.contracts_path} (contracts: {known})"
        )
    registry = _cached_registry(
        spec.registry_path, spec.registry_url, spec.registry_client, registry_stamp
    )
    return TopicDecoder(
        registry,
        contract,
        max_message_bytes=spec.max_message_bytes,
        sequence=spec.sequence,
        unavailable=spec.unavailable,
    )


@functools.lru_cache(maxsize=8)
def _cached_contracts(path: str, stamp: tuple[int, int]) -> Mapping[str, TopicContract]:
    return load_contracts(path)


@functools.lru_cache(maxsize=8)
def _cached_registry(
    path: str | None,
    url: str | None,
    client: tuple[tuple[str, str], ...],
    stamp: tuple[int, int],
) -> SchemaRegistry:
    if url is not None:
        return HttpRegistry(url, dict(client))
    assert path is not None
    return FileRegistry.load(path)


def _decode_partition(
    spec: DecoderSpec, topic: str, schema: pa.Schema
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: Kafka records in, decoded rows (``schema``) out."""

    def decode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        decoder = topic_decoder(spec, topic)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            decoded = decoder.decode_records(batch)
            # Spark checks batches against its own Arrow rendering of the schema (field names
            # inside lists, string widths); conform to it.
            yield decoded if decoded.schema.equals(schema) else decoded.cast(schema)

    return decode


def source_options(
    settings: Settings, pipeline: PipelineSettings, checkpoint: str | None = None
) -> dict[str, str]:
    """Options of Spark's Kafka source for one pipeline.

    Precedence, lowest first: the service defaults, the pipeline's own keys, the
    ``source_options`` of ``defaults`` and of the pipeline, then a replay's start position
    (``cdc-start.json`` in a checkpoint that has no offsets yet; Spark itself ignores every
    starting option once the checkpoint holds offsets).

    Raises:
        ConfigError: a ``source_options`` key is not an option of Spark's Kafka source.
    """
    defaults = settings.defaults
    max_records = pipeline.max_records_per_trigger or defaults.max_records_per_trigger
    fail = (
        defaults.fail_on_data_loss
        if pipeline.fail_on_data_loss is None
        else pipeline.fail_on_data_loss
    )
    options: dict[str, str] = {
        "kafka.bootstrap.servers": settings.kafka.bootstrap_servers,
        "subscribe": pipeline.topic,
        "startingOffsets": pipeline.starting_offsets or defaults.starting_offsets,
        "failOnDataLoss": str(fail).lower(),
        "maxRecordsPerPartition": str(defaults.max_records_per_partition),
        # Producers write in transactions (`cdc produce`): never read an aborted record.
        "kafka.isolation.level": "read_committed",
    }
    if max_records:
        options["maxOffsetsPerTrigger"] = str(max_records)
    for key, value in settings.kafka.java_config().items():
        options[f"kafka.{key}"] = value
    for source in (defaults.source_options, pipeline.source_options):
        for key, value in source.items():
            _check_option(key)
            if key in START_OPTION_KEYS:
                for start_key in START_OPTION_KEYS:
                    options.pop(start_key, None)
            options[key] = value
    start = _replay_start(checkpoint) if checkpoint else None
    if start is not None:
        for start_key in START_OPTION_KEYS:
            options.pop(start_key, None)
        options["startingOffsets"] = json.dumps(start, sort_keys=True)
    return options


def _check_option(key: str) -> None:
    if key.startswith("kafka."):
        return
    if key not in SPARK_KAFKA_OPTIONS:
        valid = ", ".join(SPARK_KAFKA_OPTIONS)
        raise ConfigError(
            f"unknown source option {key!r}; valid: {valid}, or kafka.<client setting>"
        )


def _replay_start(checkpoint: str) -> dict[str, Any] | None:
    start = read_start_file(checkpoint)
    if start is None or has_offsets(checkpoint):
        return None
    offsets: dict[str, Any] = start["startingOffsets"]
    return offsets


def decoded_stream(
    spark: SparkSession, settings: Settings, pipeline: PipelineSettings, checkpoint: str
) -> DataFrame:
    """The pipeline's topic as a stream of decoded rows (decoded on the executors).

    Args:
        spark: the driver's session.
        settings: service settings.
        pipeline: the pipeline whose topic is read.
        checkpoint: the query's checkpoint (for a replay's start position).

    Returns:
        A streaming DataFrame with the decoder's schema (see :mod:`cdc.ingest.contracts`).

    Raises:
        ConfigError: options or the topic's contract are invalid.
    """
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    spec = DecoderSpec.from_settings(settings, pipeline)
    schema = from_arrow_schema(topic_decoder(spec, pipeline.topic).arrow_schema)
    reader = spark.readStream.format("kafka")
    for key, value in source_options(settings, pipeline, checkpoint).items():
        reader = reader.option(key, value)
    arrow_schema = to_arrow_schema(schema, timezone="UTC")
    decode = _decode_partition(spec, pipeline.topic, arrow_schema)
    return reader.load().select(*KAFKA_COLUMNS).mapInArrow(decode, schema)
