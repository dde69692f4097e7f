"""The ``cdc_kafka`` Python data source: Spark-facing classes over the offset logic and Kafka I/O.

Where each method runs matters:

* ``DataSource.schema()`` runs once per query definition, in a planner Python worker.
* The stream reader's ``initialOffset``/``latestOffset``/``partitions``/``commit``/
  ``reportLatestOffset``/``prepareForTriggerAvailableNow`` run in one long-lived Python worker per
  query ("driver side"); it keeps one cached consumer for metadata and offsets.
* ``read(partition)`` runs in executor Python workers, on a *pickled copy* of the reader, once
  per offset range: it fetches with a fresh consumer and decodes in the same task.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pyspark.sql.datasource import (
    DataSource,
    DataSourceReader,
    DataSourceStreamReader,
    InputPartition,
)
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import StructType

from cdc.errors import ConfigError, DataLossError
from cdc.source._kafka import KafkaMetadata, fetch_range
from cdc.source.offsets import (
    DataLoss,
    OffsetJson,
    OffsetRange,
    PartitionOffsets,
    next_end_offsets,
    offsets_from_json,
    offsets_to_json,
    pack_ranges,
    partitions_needing_earliest,
    plan_ranges,
    ranges_between,
    reconcile_start,
    resolve_ending_offsets,
    resolve_starting_offsets,
)
from cdc.source.options import SourceOptions

if TYPE_CHECKING:
    import pyarrow as pa

    from cdc.contracts import TopicContract, TopicDecoder
    from cdc.registry import SchemaRegistry

__all__ = [
    "DATA_SOURCE_NAME",
    "KafkaBatchReader",
    "KafkaDataSource",
    "KafkaInputPartition",
    "KafkaStreamReader",
    "data_loss_count",
]

DATA_SOURCE_NAME = "cdc_kafka"

_log = logging.getLogger("cdc.source")

_FAIL_HINT = (
    "set failOnDataLoss=false to skip the lost records and continue,"
    " or reset the pipeline's offsets with `cdc replay`"
)

_data_loss_events = 0
_DATA_LOSS_LOCK = threading.Lock()


def data_loss_count() -> int:
    """Data-loss events tolerated (``failOnDataLoss=false``) so far in this Python process.

    Each Spark Python worker is its own process: events found while planning count in the
    query's source worker, events found while reading in executor workers.
    """
    return _data_loss_events


class KafkaInputPartition(InputPartition):
    """One Spark task: one or more offset ranges, read one after the other."""

    def __init__(self, *ranges: OffsetRange) -> None:
        """Wrap ``ranges`` (picklable, shipped to executors)."""
        super().__init__(ranges)
        self.ranges = ranges

    def __repr__(self) -> str:
        spans = ", ".join(f"{r.topic}/{r.partition} [{r.start}, {r.end})" for r in self.ranges)
        return f"KafkaInputPartition({spans})"


class KafkaDataSource(DataSource):
    """Spark data source ``cdc_kafka``: Avro-framed Kafka topics, decoded by their contract.

    Read with ``spark.readStream.format("cdc_kafka")`` (micro-batch, incl. Trigger.AvailableNow)
    or ``spark.read.format("cdc_kafka")`` (a bounded replay between two sets of offsets).

    Options (strings; names are case-insensitive):

    * ``kafka.bootstrap.servers`` (required), any ``kafka.<librdkafka setting>``.
    * ``subscribe`` (required): comma-separated topics, all sharing one contract. Partitions
      (or topics) that appear later are read from their earliest offset.
    * ``startingOffsets``: ``earliest`` (default), ``latest`` or JSON
      ``{"topic": {"0": 23, "1": -2}}`` (-2 earliest, -1 latest; unlisted partitions start at
      earliest). ``startingTimestamp`` (epoch ms) wins over it; a partition without a record
      that new starts at its end. Both apply only to a query without a checkpoint.
    * ``endingOffsets`` (batch reads only): ``latest`` (default) or JSON (-1 latest).
    * ``maxRecordsPerTrigger``: cap on the offsets of one micro-batch (``ReadMaxRows``).
    * ``maxRecordsPerPartition`` (200000): larger ranges are split over several tasks.
    * ``minRecordsPerTask`` (10000): smaller ranges are read together by one task (a small
      micro-batch over many partitions then runs one task, not one per partition).
    * ``failOnDataLoss`` (true): fail, or warn and continue from the nearest valid offset,
      when offsets the query expected are gone.
    * ``registry.path`` or ``registry.url`` (+ ``registry.client.<setting>``),
      ``contracts.path`` (required), ``maxMessageBytes``: passed to the decoder.
    * ``pollTimeoutMs`` (1000), ``fetchBatchSize`` (10000 messages per ``consume()``),
      ``fetchTimeoutMs`` (120000: a task fails when no record arrives for this long).
    """

    @classmethod
    def name(cls) -> str:
        """The short name used in ``format(...)``."""
        return DATA_SOURCE_NAME

    def _parsed(self) -> SourceOptions:
        return SourceOptions.parse(self.options)

    def schema(self) -> StructType:
        """The Spark schema of the subscribed topics' shared contract.

        Returns:
            The StructType converted from the decoder's Arrow schema.

        Raises:
            ConfigError: options are invalid, a topic has no contract, or the subscribed topics
                do not share one schema.
        """
        from pyspark.sql.pandas.types import from_arrow_schema

        options = self._parsed()
        schemas = {topic: _decoder(options, topic).arrow_schema for topic in options.topics}
        first_topic = options.topics[0]
        first = schemas[first_topic]
        different = [topic for topic, schema in schemas.items() if not schema.equals(first)]
        if different:
            raise ConfigError(
                "all topics read by one cdc_kafka source must share one contract;"
                f" {', '.join(different)} decode(s) differently from {first_topic}"
            )
        return from_arrow_schema(first)

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        """Micro-batch reader (see :class:`KafkaStreamReader`)."""
        return KafkaStreamReader(self._parsed(), schema)

    def reader(self, schema: StructType) -> KafkaBatchReader:
        """Bounded batch reader (see :class:`KafkaBatchReader`)."""
        return KafkaBatchReader(self._parsed(), schema)


class _RangeReader:
    """Executor-side reading shared by the stream and batch readers."""

    _options: SourceOptions
    _schema: StructType

    def _read_range(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        if not isinstance(partition, KafkaInputPartition):
            return  # Spark plans one empty InputPartition(None) when a batch read has none
        from pyspark.sql.pandas.types import to_arrow_schema

        options = self._options
        # Spark validates batches against its own Arrow rendering of the schema; field names
        # inside lists and string/binary widths may differ from the decoder's, so conform.
        expected = to_arrow_schema(self._schema, timezone="UTC")

        def on_loss(loss: DataLoss) -> None:
            _handle_data_loss([loss], options.fail_on_data_loss, set())

        for offset_range in partition.ranges:
            decoder = _decoder(options, offset_range.topic)
            for messages in fetch_range(
                options.kafka_config,
                offset_range,
                on_data_loss=on_loss,
                poll_timeout_ms=options.poll_timeout_ms,
                batch_size=options.fetch_batch_size,
                fetch_timeout_ms=options.fetch_timeout_ms,
            ):
                batch = decoder.decode_batch(messages)
                if not batch.schema.equals(expected):
                    batch = batch.cast(expected)
                yield batch


class KafkaStreamReader(_RangeReader, DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batch reader with admission control and Trigger.AvailableNow support.

    Offsets are ``{topic: {"<partition>": next_offset}}``; see :mod:`cdc.source.offsets`.
    """

    def __init__(self, options: SourceOptions, schema: StructType) -> None:
        """Create the reader; no connection is made until Spark asks for offsets.

        Args:
            options: parsed source options.
            schema: the output schema Spark resolved from :meth:`KafkaDataSource.schema`.
        """
        self._options = options
        self._schema = schema
        self._metadata: KafkaMetadata | None = None
        self._target: PartitionOffsets | None = None
        self._latest: PartitionOffsets | None = None
        self._reported: set[tuple[str, int, str, int]] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Executors get a pickled copy: ship options and schema, never the driver's consumer.
        state = dict(self.__dict__)
        state["_metadata"] = None
        return state

    @property
    def _client(self) -> KafkaMetadata:
        if self._metadata is None:
            self._metadata = KafkaMetadata(self._options.kafka_config)
        return self._metadata

    def initialOffset(self) -> OffsetJson:
        """Offsets a new query starts from (``startingTimestamp`` / ``startingOffsets``).

        Returns:
            ``{topic: {"<partition>": offset}}`` for every existing subscribed partition.
        """
        options = self._options
        watermarks = self._client.topic_watermarks(options.topics)
        found = None
        if options.starting.timestamp_ms is not None:
            found = self._client.offsets_for_times(watermarks, options.starting.timestamp_ms)
        start = resolve_starting_offsets(options.starting, watermarks, found)
        _log.info("cdc_kafka initial offsets: %s", offsets_to_json(start))
        return offsets_to_json(start)

    def getDefaultReadLimit(self) -> ReadLimit:
        """``ReadMaxRows(maxRecordsPerTrigger)`` when that option is set, else all available."""
        limit = self._options.max_records_per_trigger
        return ReadMaxRows(limit) if limit is not None else ReadAllAvailable()

    def latestOffset(self, start: dict[str, Any], limit: ReadLimit) -> OffsetJson:
        """End offsets of the next micro-batch.

        Args:
            start: the batch's start offsets (the previous end, or the initial offsets).
            limit: ``ReadMaxRows`` caps the batch's records; anything else reads all available
                (``ReadAllAvailable`` must ignore ``maxRecordsPerTrigger``).

        Returns:
            ``{topic: {"<partition>": offset}}``; equal to ``start`` when there is nothing new.

        Raises:
            DataLossError: offsets were lost and ``failOnDataLoss`` is true.
        """
        start_offsets = offsets_from_json(start, "start offsets")
        watermarks = self._client.topic_watermarks(self._options.topics)
        self._latest = {tp: wm.high for tp, wm in watermarks.items()}
        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        end, losses = next_end_offsets(
            start_offsets, watermarks, max_records=max_rows, target=self._target
        )
        _handle_data_loss(losses, self._options.fail_on_data_loss, self._reported)
        return offsets_to_json(end)

    def reportLatestOffset(self) -> OffsetJson | None:
        """High watermarks seen by the last ``latestOffset`` call (for lag metrics)."""
        return offsets_to_json(self._latest) if self._latest else None

    def prepareForTriggerAvailableNow(self) -> None:
        """Record the current end of every partition; later batches never read past it."""
        watermarks = self._client.topic_watermarks(self._options.topics)
        self._target = {tp: wm.high for tp, wm in watermarks.items()}
        _log.info("cdc_kafka Trigger.AvailableNow target: %s", offsets_to_json(self._target))

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> Sequence[InputPartition]:
        """Spark tasks of a micro-batch: ranges split at maxRecordsPerPartition, packed into
        tasks of at least minRecordsPerTask records.

        Args:
            start: the batch's start offsets.
            end: the batch's end offsets.

        Returns:
            One :class:`KafkaInputPartition` per task (none for an empty batch).

        Raises:
            DataLossError: offsets were lost and ``failOnDataLoss`` is true.
        """
        if start == end:
            return []
        start_offsets = offsets_from_json(start, "start offsets")
        end_offsets = offsets_from_json(end, "end offsets")
        needed = partitions_needing_earliest(start_offsets, end_offsets)
        earliest = (
            {tp: wm.low for tp, wm in self._client.watermarks(sorted(needed)).items()}
            if needed
            else {}
        )
        ranges, losses = ranges_between(start_offsets, end_offsets, earliest)
        _handle_data_loss(losses, self._options.fail_on_data_loss, self._reported)
        options = self._options
        planned = plan_ranges(ranges, options.max_records_per_partition)
        return [KafkaInputPartition(*t) for t in pack_ranges(planned, options.min_records_per_task)]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        """Fetch and decode one range (runs on an executor)."""
        return self._read_range(partition)

    def commit(self, end: dict[str, Any]) -> None:
        """Nothing to do: Spark's checkpoint is the only record of progress."""

    def stop(self) -> None:
        """Close the driver-side consumer."""
        if self._metadata is not None:
            self._metadata.close()
            self._metadata = None


class KafkaBatchReader(_RangeReader, DataSourceReader):
    """Bounded read from ``startingOffsets``/``startingTimestamp`` to ``endingOffsets``.

    For replay tooling and inspection: the same ranges, splitting and decoding as streaming.
    """

    def __init__(self, options: SourceOptions, schema: StructType) -> None:
        """Create the reader.

        Args:
            options: parsed source options.
            schema: the output schema.
        """
        self._options = options
        self._schema = schema

    def partitions(self) -> Sequence[InputPartition]:
        """Ranges between the starting and ending offsets, split and packed like streaming.

        Returns:
            One :class:`KafkaInputPartition` per task.

        Raises:
            ConfigError: an explicit ending offset is beyond the partition's end.
            DataLossError: an explicit start offset is out of range and ``failOnDataLoss`` is
                true.
        """
        options = self._options
        client = KafkaMetadata(options.kafka_config)
        try:
            watermarks = client.topic_watermarks(options.topics)
            found = None
            if options.starting.timestamp_ms is not None:
                found = client.offsets_for_times(watermarks, options.starting.timestamp_ms)
            start = resolve_starting_offsets(options.starting, watermarks, found)
            end = resolve_ending_offsets(options.ending, watermarks)
        finally:
            client.close()
        beyond = sorted(tp for tp, offset in end.items() if offset > watermarks[tp].high)
        if beyond:
            detail = ", ".join(
                f"{t}/{p}={end[(t, p)]} (end {watermarks[(t, p)].high})" for t, p in beyond
            )
            raise ConfigError(f"endingOffsets is beyond the end of the partition: {detail}")
        effective, losses = reconcile_start(start, watermarks)
        _handle_data_loss(losses, options.fail_on_data_loss, set())
        ranges = [
            OffsetRange(topic, partition, begin, end[(topic, partition)])
            for (topic, partition), begin in sorted(effective.items())
            if begin < end[(topic, partition)]
        ]
        planned = plan_ranges(ranges, options.max_records_per_partition)
        return [KafkaInputPartition(*t) for t in pack_ranges(planned, options.min_records_per_task)]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        """Fetch and decode one range (runs on an executor)."""
        return self._read_range(partition)


def _handle_data_loss(
    losses: Iterable[DataLoss], fail: bool, reported: set[tuple[str, int, str, int]]
) -> None:
    """Raise for data loss (failOnDataLoss=true) or log and count each new event once."""
    global _data_loss_events
    events = list(losses)
    if not events:
        return
    if fail:
        details = "; ".join(loss.describe() for loss in events)
        raise DataLossError(f"{details}; {_FAIL_HINT}")
    for loss in events:
        if loss.key in reported:
            continue
        reported.add(loss.key)
        with _DATA_LOSS_LOCK:
            _data_loss_events += 1
        if loss.resume_offset is not None:
            action = f"continuing from offset {loss.resume_offset}"
        else:
            action = "skipping the missing records"
        _log.warning("%s; failOnDataLoss=false: %s", loss.describe(), action)


def _decoder(options: SourceOptions, topic: str) -> TopicDecoder:
    """The decoder of ``topic``, built once per Python process and registry/contracts version.

    Executor workers are reused across tasks and queries, so the cache key includes the
    modification stamp of the contracts file and of the file registry's index: registering a
    new schema version takes effect without restarting Spark.
    """
    registry_stamp = (
        _stamp(os.path.join(options.registry_path, "index.json"))
        if options.registry_url is None and options.registry_path is not None
        else (0, 0)
    )
    return _cached_decoder(
        options.registry_path,
        options.registry_url,
        tuple(sorted(options.registry_client_config.items())),
        options.contracts_path,
        topic,
        options.max_message_bytes,
        registry_stamp,
        _stamp(options.contracts_path),
    )


def _stamp(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached_decoder(
    registry_path: str | None,
    registry_url: str | None,
    registry_client: tuple[tuple[str, str], ...],
    contracts_path: str,
    topic: str,
    max_message_bytes: int | None,
    registry_stamp: tuple[int, int],
    contracts_stamp: tuple[int, int],
) -> TopicDecoder:
    from cdc.contracts import TopicDecoder

    contracts = _cached_contracts(contracts_path, contracts_stamp)
    contract = contracts.get(topic)
    if contract is None:
        known = ", ".join(sorted(contracts)) or "none"
        raise ConfigError(
            f"no contract for topic {topic!r} in {contracts_path} (contracts: {known})"
        )
    registry = _cached_registry(registry_path, registry_url, registry_client, registry_stamp)
    if max_message_bytes is None:
        return TopicDecoder(registry, contract)
    return TopicDecoder(registry, contract, max_message_bytes=max_message_bytes)


@functools.lru_cache(maxsize=8)
def _cached_contracts(path: str, stamp: tuple[int, int]) -> Mapping[str, TopicContract]:
    from cdc.contracts import load_contracts

    return load_contracts(path)


@functools.lru_cache(maxsize=8)
def _cached_registry(
    path: str | None,
    url: str | None,
    client: tuple[tuple[str, str], ...],
    stamp: tuple[int, int],
) -> SchemaRegistry:
    from cdc.registry import FileRegistry, HttpRegistry

    if url is not None:
        return HttpRegistry(url, dict(client))
    assert path is not None  # SourceOptions requires registry.path or registry.url
    return FileRegistry.load(path)
