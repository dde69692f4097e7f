"""The one Kafka metadata client: partitions, watermarks, timestamps, topic ids, topic admin,
and the few records a check reads back (:meth:`KafkaMetadata.records`).

Everything outside Spark that asks the cluster about topics goes through here (``cdc produce``,
``cdc replay``, ``cdc status``, the pipeline's topic-identity check, the tests). No consumer
made here ever joins a group or commits: Spark's checkpoint is the only record of progress.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]
from confluent_kafka.cimpl import NewPartitions, NewTopic

from cdc.core.offsets import TopicPartitionId, Watermarks
from cdc.errors import BrokerUnavailableError, ConfigError

if TYPE_CHECKING:
    from cdc.config.settings import KafkaSettings

__all__ = [
    "FetchedRecord",
    "KafkaMetadata",
    "admin_client",
    "consumer_config",
    "create_partitions",
    "ensure_topic",
    "partition_count",
    "require_broker",
    "topic_id",
    "topic_max_message_bytes",
]

_librdkafka_log = logging.getLogger("cdc.kafka.librdkafka")

_TRANSIENT = ("Coordinator load in progress",)
"""librdkafka warnings about states it retries by itself (a transaction coordinator that is
still loading right after a broker starts): debug, not something an operator acts on."""


class _TransientFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and any(t in record.getMessage() for t in _TRANSIENT):
            _librdkafka_log.debug("%s", record.getMessage())
            return False
        return True


_librdkafka_log.addFilter(_TransientFilter())

REQUEST_TIMEOUT_S = 30.0
"""Deadline of one metadata or offsets request."""

_RECORD_READER: dict[str, Any] = {
    "isolation.level": "read_uncommitted",  # the record at an offset, whatever its transaction
    "enable.partition.eof": True,
    "auto.offset.reset": "error",  # never jump elsewhere than asked
}
"""Settings of the consumer :meth:`KafkaMetadata.records` reads with."""

_MISSING_TOPIC = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)


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
    config.setdefault("group.id", f"cdc-meta-{uuid.uuid4().hex}")
    config["enable.auto.commit"] = False
    config["enable.auto.offset.store"] = False
    config["logger"] = _librdkafka_log
    config.update(overrides)
    return config


@dataclass(frozen=True)
class FetchedRecord:
    """One record as the broker holds it now (what a check compares with a landed row)."""

    offset: int
    timestamp_ms: int | None
    """The record's Kafka timestamp (None: the producer set none)."""
    key: bytes | None
    value: bytes | None


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

    @classmethod
    def for_settings(cls, kafka: KafkaSettings) -> KafkaMetadata:
        """The client of the service's cluster: its servers, client settings and timeout."""
        config = {"bootstrap.servers": kafka.bootstrap_servers, **kafka.client_config()}
        return cls(config, timeout_s=kafka.connect_timeout_s)

    @property
    def bootstrap(self) -> str:
        """The cluster's bootstrap servers."""
        return str(self._config.get("bootstrap.servers", "?"))

    def topic_id(self, topic: str) -> str | None:
        """The cluster's id of ``topic`` (None: no such topic); see :func:`topic_id`."""
        extra = {k: v for k, v in self._config.items() if k != "bootstrap.servers"}
        return topic_id(self.bootstrap, topic, client_config=extra, timeout_s=self._timeout_s)

    def _get(self) -> Any:
        if self._consumer is None:
            self._consumer = _client(Consumer, consumer_config(self._config))
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

    def topic_names(self) -> list[str]:
        """Every topic of the cluster but its internal ones, sorted.

        Raises:
            BrokerUnavailableError: the cluster did not answer.
        """
        consumer = self._get()
        try:
            metadata = consumer.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._unavailable("the list of topics", exc) from exc
        return sorted(t for t in metadata.topics if not t.startswith("__"))

    def partitions(self, topics: Iterable[str]) -> list[TopicPartitionId]:
        """Existing partitions of ``topics``; topics that do not exist have none.

        Args:
            topics: topic names.

        Returns:
            Sorted ``(topic, partition)`` pairs.

        Raises:
            BrokerUnavailableError: the cluster did not answer, or refused a topic.
        """
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

    def records(
        self, spans: Mapping[TopicPartitionId, tuple[int, int]]
    ) -> dict[TopicPartitionId, dict[int, FetchedRecord]]:
        """The records the broker holds now in ``[start, stop)`` of each partition.

        Reads uncommitted records too (a record of a transaction still open or aborted is
        still the record at its offset); transaction markers hold no record, and offsets
        compacted away hold none either: both are absent from the answer.

        Args:
            spans: ``(start, stop)`` per partition (an empty span reads nothing).

        Returns:
            Per partition, record by offset.

        Raises:
            BrokerUnavailableError: the cluster did not answer, or not within the timeout.
        """
        wanted = {tp: span for tp, span in spans.items() if span[1] > span[0]}
        found: dict[TopicPartitionId, dict[int, FetchedRecord]] = {tp: {} for tp in spans}
        if not wanted:
            return found
        consumer = Consumer(consumer_config(self._config, None, **_RECORD_READER))
        pending = set(wanted)
        try:
            consumer.assign([TopicPartition(t, p, wanted[(t, p)][0]) for t, p in sorted(wanted)])
            deadline = time.monotonic() + self._timeout_s
            while pending:
                if time.monotonic() > deadline:
                    raise BrokerUnavailableError(
                        f"Kafka at {self.bootstrap} did not return the records of"
                        f" {', '.join(f'{t}/{p}' for t, p in sorted(pending))}"
                        f" within {self._timeout_s:g}s"
                    )
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    tp = (message.topic(), message.partition())
                    if tp not in pending:
                        continue
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF or error.code() in (
                            KafkaError.OFFSET_OUT_OF_RANGE,
                            KafkaError._AUTO_OFFSET_RESET,
                        ):
                            pending.discard(tp)  # the end, or nothing left at the start
                            continue
                        raise BrokerUnavailableError(
                            f"Kafka at {self.bootstrap}: cannot read {tp[0]}/{tp[1]}: {error.str()}"
                        )
                    offset, stop = int(message.offset() or 0), wanted[tp][1]
                    if offset < stop:
                        kind, stamp = message.timestamp()
                        found[tp][offset] = FetchedRecord(
                            offset,
                            int(stamp) if kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0 else None,
                            message.key(),
                            message.value(),
                        )
                    if offset >= stop - 1:
                        pending.discard(tp)
                        consumer.pause([TopicPartition(tp[0], tp[1])])
        except KafkaException as exc:
            raise self._unavailable("records", exc) from exc
        finally:
            consumer.close()
        return found

    def _unavailable(self, what: str, exc: Exception) -> BrokerUnavailableError:
        return BrokerUnavailableError(
            f"cannot reach Kafka at {self.bootstrap} within {self._timeout_s:g}s ({what}: {exc})"
        )


def admin_client(bootstrap: str, client_config: Mapping[str, Any] | None = None) -> AdminClient:
    """An AdminClient for ``bootstrap`` with extra librdkafka settings (security, ...).

    librdkafka's own log lines (connection chatter, "Purging unserved events" on close) go to
    Python logging, not to the terminal of the command that made the client.
    """
    config = {**(client_config or {}), "bootstrap.servers": bootstrap}
    config.setdefault("logger", _librdkafka_log)
    admin: AdminClient = _client(AdminClient, config)
    return admin


_PROPERTY = re.compile(r'property:? "([^"]+)"')


def _client(factory: Any, config: dict[str, Any]) -> Any:
    """``factory(config)``; settings librdkafka refuses become one line naming the setting.

    librdkafka's own text quotes the refused value, which may be a password or a secret
    reference's value: only the setting's name is repeated.

    Raises:
        ConfigError: librdkafka refuses a setting's name or value.
    """
    try:
        return factory(config)
    except KafkaException as exc:
        found = _PROPERTY.search(str(exc))
        name = f"kafka.client.{found.group(1)}" if found else "kafka.client"
        raise ConfigError(
            f"{name}: librdkafka refuses this setting (its name or its value, not shown here)"
        ) from None


def require_broker(kafka: KafkaSettings) -> None:
    """Fail in one line when the configured Kafka cluster cannot be reached.

    Raises:
        BrokerUnavailableError: no answer within ``kafka.connect_timeout_s``.
        ConfigError: librdkafka refuses a ``kafka.client`` setting.
    """
    bootstrap, timeout = kafka.bootstrap_servers, kafka.connect_timeout_s
    admin = admin_client(bootstrap, kafka.client_config())
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        hint = " (start the embedded one with 'cdc broker')" if kafka.embedded else ""
        raise BrokerUnavailableError(
            f"cannot reach Kafka at {bootstrap} within {timeout:g}s{hint}"
        ) from None


def topic_max_message_bytes(
    bootstrap: str,
    topic: str,
    *,
    client_config: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
    admin: AdminClient | None = None,
) -> int:
    """The largest record batch the topic accepts (its ``max.message.bytes``).

    Args:
        admin: an existing client to reuse.

    Raises:
        BrokerUnavailableError: the cluster did not answer within ``timeout_s``.
    """
    client = admin or admin_client(bootstrap, client_config)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        configs = client.describe_configs([resource], request_timeout=timeout_s)[resource].result(
            timeout=timeout_s
        )
    except Exception as exc:  # KafkaException, or a timeout of the future
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap}: cannot read the configuration of {topic}: {exc}"
        ) from exc
    return int(configs["max.message.bytes"].value)


def partition_count(
    bootstrap: str,
    topic: str,
    *,
    client_config: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
    admin: AdminClient | None = None,
) -> int | None:
    """Number of partitions of ``topic``, or None when the topic does not exist.

    Args:
        bootstrap: ``host:port[,host:port]``.
        topic: Topic name.
        client_config: Extra librdkafka settings.
        timeout_s: How long to wait for the cluster's metadata.
        admin: An existing client to reuse.

    Returns:
        The partition count, or None.

    Raises:
        BrokerUnavailableError: No broker answered within ``timeout_s``.
    """
    client = admin or admin_client(bootstrap, client_config)
    try:
        # All topics, not list_topics(topic=...): a metadata request naming a topic lets
        # brokers with auto.create.topics.enable create it with their default partitions.
        metadata = client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap} did not answer within {timeout_s:g}s: {exc.args[0]}"
        ) from exc
    found = metadata.topics.get(topic)
    if found is None:
        return None
    if found.error is not None and found.error.code() in _MISSING_TOPIC:
        return None
    if found.error is not None:
        raise BrokerUnavailableError(f"Kafka at {bootstrap}: metadata for {topic}: {found.error}")
    return len(found.partitions) or None


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    client_config: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
    replication_factor: int = -1,
) -> int:
    """Create ``topic`` with ``partitions`` partitions unless it exists.

    Args:
        bootstrap: ``host:port[,host:port]``.
        topic: Topic name.
        partitions: Partition count for a new topic (an existing topic keeps its own).
        client_config: Extra librdkafka settings.
        timeout_s: Deadline for the cluster to answer and the topic to appear.
        replication_factor: For a new topic; -1 takes the cluster's default.

    Returns:
        The topic's partition count.

    Raises:
        ConfigError: ``partitions`` is below 1.
        BrokerUnavailableError: The cluster cannot be reached or the topic does not appear.
    """
    if partitions < 1:
        raise ConfigError(f"partitions must be at least 1, got {partitions}")
    admin = admin_client(bootstrap, client_config)
    existing = partition_count(bootstrap, topic, timeout_s=timeout_s, admin=admin)
    if existing is not None:
        return existing
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)],
        request_timeout=timeout_s,
    )
    try:
        futures[topic].result(timeout=timeout_s)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise BrokerUnavailableError(
                f"Kafka at {bootstrap}: cannot create topic {topic}: {exc.args[0]}"
            ) from exc
    # Metadata propagates asynchronously; poll until the topic is visible.
    deadline = time.monotonic() + timeout_s
    while True:
        count = partition_count(bootstrap, topic, timeout_s=timeout_s, admin=admin)
        if count is not None:
            return count
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"Kafka at {bootstrap}: topic {topic} was created but is not visible "
                f"after {timeout_s:g}s"
            )
        time.sleep(0.05)


def topic_id(
    bootstrap: str,
    topic: str,
    *,
    client_config: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> str | None:
    """The cluster-assigned id of ``topic`` (new each time a topic is created), or None.

    A topic deleted and created again under the same name gets a new id, so a stored id tells
    a recreated topic apart from the one a checkpoint's offsets belong to.

    Args:
        bootstrap: ``host:port[,host:port]``.
        topic: Topic name.
        client_config: Extra librdkafka settings.
        timeout_s: How long to wait for the cluster.

    Returns:
        The id as Kafka prints it (base64), or None when the topic does not exist.

    Raises:
        BrokerUnavailableError: No broker answered within ``timeout_s``.
    """
    admin = admin_client(bootstrap, client_config)
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic]
    try:
        description = future.result(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() in _MISSING_TOPIC:
            return None
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap}: cannot describe topic {topic}: {exc}"
        ) from exc
    except Exception as exc:  # a future's own timeout
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap} did not describe topic {topic} within {timeout_s:g}s"
        ) from exc
    return str(description.topic_id)


def create_partitions(
    bootstrap: str,
    topic: str,
    total: int,
    *,
    client_config: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> int:
    """Grow ``topic`` to ``total`` partitions (Kafka never shrinks a topic).

    Args:
        bootstrap: ``host:port[,host:port]``.
        topic: An existing topic.
        total: The partition count wanted; at least the current count.
        client_config: Extra librdkafka settings.
        timeout_s: Deadline for the cluster to answer and the partitions to appear.

    Returns:
        The topic's partition count afterwards.

    Raises:
        ConfigError: The topic does not exist, or ``total`` is below its current count.
        BrokerUnavailableError: The cluster cannot be reached or refused the change.
    """
    admin = admin_client(bootstrap, client_config)
    current = partition_count(bootstrap, topic, timeout_s=timeout_s, admin=admin)
    if current is None:
        raise ConfigError(f"topic {topic} does not exist on {bootstrap}")
    if total < current:
        raise ConfigError(
            f"topic {topic} has {current} partitions; Kafka cannot shrink it to {total}"
        )
    if total == current:
        return current
    futures = admin.create_partitions([NewPartitions(topic, total)], request_timeout=timeout_s)
    try:
        futures[topic].result(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap}: cannot add partitions to {topic}: {exc.args[0]}"
        ) from exc
    deadline = time.monotonic() + timeout_s
    while (count := partition_count(bootstrap, topic, timeout_s=timeout_s, admin=admin)) != total:
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"Kafka at {bootstrap}: {topic} still has {count} partitions after {timeout_s:g}s"
            )
        time.sleep(0.05)
    return total
