"""Kafka I/O of the source (confluent-kafka): driver-side metadata and executor-side fetches.

Everything here talks to the broker; the decisions about offsets are in
:mod:`cdc.source.offsets`. No consumer ever joins a group or commits: Spark's checkpoint is the
only record of progress.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from cdc.errors import BrokerUnavailableError, CdcError
from cdc.source.offsets import (
    DataLoss,
    DataLossKind,
    OffsetRange,
    TopicPartitionId,
    Watermarks,
)

__all__ = ["KafkaMetadata", "Message", "fetch_range"]

_log = logging.getLogger("cdc.source")
_librdkafka_log = logging.getLogger("cdc.source.librdkafka")

Message = tuple[str, int, int, int, bytes | None, bytes | None]
"""``(topic, partition, offset, timestamp_ms, key, value)`` as the decoder takes it."""

REQUEST_TIMEOUT_S = 30.0
"""Deadline of one driver-side metadata or offsets request."""

FETCH_QUEUE_BACKOFF_MS = 10
"""librdkafka ``fetch.queue.backoff.ms`` of the range readers (a ``kafka.*`` option wins)."""


def consumer_config(
    kafka_config: Mapping[str, str],
    defaults: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """librdkafka settings for one of our consumers (never joins a group, never commits).

    Args:
        kafka_config: the ``kafka.*`` options, prefix removed.
        defaults: settings used unless the user passed their own.
        **overrides: settings the caller needs whatever the user passed.

    Returns:
        The configuration dict for ``confluent_kafka.Consumer``.
    """
    config: dict[str, Any] = {**(defaults or {}), **kafka_config}
    # librdkafka insists on a group id even for assign-only consumers; a fresh one per consumer
    # guarantees nothing ever reads or writes a committed offset.
    config.setdefault("group.id", f"cdc-source-{uuid.uuid4().hex}")
    config["enable.auto.commit"] = False
    config["enable.auto.offset.store"] = False
    config["logger"] = _librdkafka_log
    config.update(overrides)
    return config


class KafkaMetadata:
    """Driver-side view of the subscribed partitions and their offsets (one cached consumer)."""

    def __init__(
        self,
        kafka_config: Mapping[str, str],
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        """Create the client; the consumer is opened on first use.

        Args:
            kafka_config: the ``kafka.*`` options, prefix removed.
            timeout_s: deadline of each metadata or offsets request.
        """
        self._config = dict(kafka_config)
        self._timeout_s = timeout_s
        self._consumer: Any = None

    @property
    def bootstrap(self) -> str:
        """The cluster's bootstrap servers."""
        return str(self._config.get("bootstrap.servers", "?"))

    def _get(self) -> Any:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer(consumer_config(self._config))
        else:
            # Serve queued librdkafka log events (the consumer is never assigned, so this
            # returns at once); otherwise they pile up during a long broker outage.
            self._consumer.poll(0)
        return self._consumer

    def close(self) -> None:
        """Close the consumer if one was opened."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def partitions(self, topics: Iterable[str]) -> list[TopicPartitionId]:
        """Existing partitions of ``topics``; topics that do not exist have none.

        Args:
            topics: topic names.

        Returns:
            Sorted ``(topic, partition)`` pairs.

        Raises:
            BrokerUnavailableError: the cluster did not answer, or refused a topic.
        """
        from confluent_kafka import KafkaError, KafkaException

        consumer = self._get()
        result: list[TopicPartitionId] = []
        for topic in topics:
            try:
                metadata = consumer.list_topics(topic, timeout=self._timeout_s)
            except KafkaException as exc:
                raise self._unavailable(f"metadata for topic {topic!r}", exc) from exc
            info = metadata.topics.get(topic)
            if info is None:
                continue
            if info.error is not None:
                if info.error.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_TOPIC,
                    KafkaError.LEADER_NOT_AVAILABLE,
                ):
                    continue
                raise BrokerUnavailableError(
                    f"Kafka at {self.bootstrap} refused metadata for topic {topic!r}:"
                    f" {info.error.str()}"
                )
            result.extend((topic, partition) for partition in info.partitions)
        return sorted(result)

    def watermarks(self, tps: Iterable[TopicPartitionId]) -> dict[TopicPartitionId, Watermarks]:
        """Low and high watermarks of each partition, straight from the broker.

        Args:
            tps: partitions to query.

        Returns:
            Watermarks per partition; partitions that vanished meanwhile are left out.

        Raises:
            BrokerUnavailableError: the cluster did not answer.
        """
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        consumer = self._get()
        result: dict[TopicPartitionId, Watermarks] = {}
        for topic, partition in tps:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=self._timeout_s, cached=False
                )
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_PARTITION,
                    KafkaError._UNKNOWN_TOPIC,
                ):
                    continue
                raise self._unavailable(f"offsets of {topic}/{partition}", exc) from exc
            result[(topic, partition)] = Watermarks(int(low), int(high))
        return result

    def topic_watermarks(self, topics: Iterable[str]) -> dict[TopicPartitionId, Watermarks]:
        """Watermarks of every existing partition of ``topics``.

        Args:
            topics: topic names.

        Returns:
            Watermarks per partition.

        Raises:
            BrokerUnavailableError: the cluster did not answer.
        """
        return self.watermarks(self.partitions(topics))

    def offsets_for_times(
        self, tps: Iterable[TopicPartitionId], timestamp_ms: int
    ) -> dict[TopicPartitionId, int]:
        """Earliest offset whose timestamp is >= ``timestamp_ms``, per partition (-1: none).

        Args:
            tps: partitions to query.
            timestamp_ms: epoch milliseconds.

        Returns:
            The broker's answer per partition.

        Raises:
            BrokerUnavailableError: the cluster did not answer.
        """
        from confluent_kafka import KafkaException, TopicPartition

        wanted = [TopicPartition(topic, partition, timestamp_ms) for topic, partition in tps]
        if not wanted:
            return {}
        try:
            found = self._get().offsets_for_times(wanted, timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._unavailable(f"offsets for timestamp {timestamp_ms}", exc) from exc
        result: dict[TopicPartitionId, int] = {}
        for tp in found:
            if tp.error is not None:
                raise BrokerUnavailableError(
                    f"Kafka at {self.bootstrap} could not look up timestamp {timestamp_ms}"
                    f" on {tp.topic}/{tp.partition}: {tp.error.str()}"
                )
            result[(tp.topic, tp.partition)] = int(tp.offset)
        return result

    def _unavailable(self, what: str, exc: Exception) -> BrokerUnavailableError:
        return BrokerUnavailableError(
            f"cannot reach Kafka at {self.bootstrap} within {self._timeout_s:g}s ({what}: {exc})"
        )


def fetch_range(
    kafka_config: Mapping[str, str],
    offset_range: OffsetRange,
    *,
    on_data_loss: Callable[[DataLoss], None],
    poll_timeout_ms: int = 1000,
    batch_size: int = 10_000,
    fetch_timeout_ms: int = 120_000,
    consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[list[Message]]:
    """Read the records of ``offset_range`` with a fresh assign-only consumer.

    Yields one list per ``consume()`` call. The range ends at the first record at or past its
    end, or at the partition's end once that is at or past the range's end, so offset gaps
    (compacted or transactional topics) are not mistaken for missing records. Records that truly
    disappeared (below the earliest offset, or above a partition end that fell) are passed to
    ``on_data_loss``, which raises to fail the task or returns to skip them.

    Args:
        kafka_config: the ``kafka.*`` options, prefix removed.
        offset_range: the records to read.
        on_data_loss: called once per data-loss event.
        poll_timeout_ms: timeout of each ``consume()`` call.
        batch_size: most messages per ``consume()`` call.
        fetch_timeout_ms: fail when no record arrives for this long.
        consumer_factory: builds the consumer from its config (tests); default confluent-kafka.
        clock: monotonic seconds (tests).

    Yields:
        Lists of ``(topic, partition, offset, timestamp_ms, key, value)``.

    Raises:
        BrokerUnavailableError: nothing could be fetched within ``fetch_timeout_ms``.
        CdcError: the broker reported a fatal error.
    """
    if offset_range.size == 0:
        return
    from confluent_kafka import KafkaError, TopicPartition

    topic, partition, end = offset_range.topic, offset_range.partition, offset_range.end
    config = consumer_config(
        kafka_config,
        {
            # librdkafka prefetches up to 100k messages by default; a task that reads a bounded
            # range would mostly fetch records beyond its end (another task's split).
            "queued.min.messages": max(1, min(batch_size, offset_range.size)),
            # With that small a queue, one fetch response (up to fetch.max.bytes) overfills
            # it, and librdkafka then postpones the partition's next fetch by this backoff:
            # 1 s by default, a stall after every response (50k contacts: 2.1 s -> 0.12 s).
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        },
        **{"enable.partition.eof": True, "auto.offset.reset": "error"},
    )
    if consumer_factory is None:
        from confluent_kafka import Consumer

        consumer_factory = Consumer
    consumer = consumer_factory(config)
    bootstrap = kafka_config.get("bootstrap.servers", "?")

    def watermarks() -> Watermarks | None:
        from confluent_kafka import KafkaException

        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=poll_timeout_ms / 1000, cached=False
            )
        except KafkaException:
            return None
        return Watermarks(int(low), int(high))

    def offsets_deleted(expected: int, wm: Watermarks) -> DataLoss:
        """Retention removed ``[expected, wm.low)``: reading resumes at the earliest offset."""
        return DataLoss(topic, partition, DataLossKind.OFFSETS_DELETED, expected, wm, wm.low)

    try:
        consumer.assign([TopicPartition(topic, partition, offset_range.start)])
        position = offset_range.start
        first_record = True
        last_progress = clock()
        while position < end:
            wanted = max(1, min(batch_size, end - position))
            messages = consumer.consume(num_messages=wanted, timeout=poll_timeout_ms / 1000)
            chunk: list[Message] = []
            done = False
            reassign_at: int | None = None
            for message in messages:
                error = message.error()
                if error is not None:
                    code = error.code()
                    if code == KafkaError._PARTITION_EOF:
                        eof = message.offset() or 0
                        if eof >= end:
                            done = True
                            break
                        wm = watermarks()
                        if wm is not None and wm.high < end:
                            # The partition ends before the range does: records vanished.
                            on_data_loss(
                                DataLoss(
                                    topic,
                                    partition,
                                    DataLossKind.RECORDS_MISSING,
                                    max(position, wm.high),
                                    wm,
                                    None,
                                )
                            )
                            done = True
                            break
                        continue  # more may still come (e.g. an open transaction)
                    if code in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
                        wm = watermarks()
                        if wm is not None and position < wm.low:
                            on_data_loss(offsets_deleted(position, wm))
                            position = reassign_at = wm.low
                            break
                        if wm is not None and position >= wm.high:
                            on_data_loss(
                                DataLoss(
                                    topic,
                                    partition,
                                    DataLossKind.RECORDS_MISSING,
                                    position,
                                    wm,
                                    None,
                                )
                            )
                            done = True
                            break
                        reassign_at = position
                        break
                    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
                        on_data_loss(
                            DataLoss(topic, partition, DataLossKind.PARTITION_GONE, position)
                        )
                        done = True
                        break
                    if error.fatal():
                        raise CdcError(
                            f"Kafka at {bootstrap} failed reading {topic}/{partition}:"
                            f" {error.str()}"
                        )
                    _log.debug("transient error reading %s/%d: %s", topic, partition, error.str())
                    continue
                offset = message.offset()
                if offset is None or offset < position:
                    continue
                if offset >= end:
                    done = True
                    break
                if offset > position and first_record:
                    # A gap before the first record is data loss only if retention removed it;
                    # compaction and transaction markers leave gaps too.
                    wm = watermarks()
                    if wm is not None and wm.low > position:
                        on_data_loss(offsets_deleted(position, wm))
                first_record = False
                _, timestamp = message.timestamp()
                chunk.append(
                    (topic, partition, offset, int(timestamp), message.key(), message.value())
                )
                position = offset + 1
            if chunk:
                last_progress = clock()
                yield chunk
            if done:
                return
            if reassign_at is not None:
                consumer.assign([TopicPartition(topic, partition, reassign_at)])
                first_record = True
                continue
            if not chunk and clock() - last_progress > fetch_timeout_ms / 1000:
                raise BrokerUnavailableError(
                    f"cannot fetch {topic}/{partition} offsets [{position}, {end}) from Kafka at"
                    f" {bootstrap} within {fetch_timeout_ms / 1000:g}s"
                )
    finally:
        consumer.close()
