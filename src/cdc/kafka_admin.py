"""Small Kafka admin helpers: reachability, partition counts, topic creation."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cdc.errors import BrokerUnavailableError, ConfigError

__all__ = ["admin_client", "ensure_topic", "partition_count"]

_MISSING_TOPIC = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)


def admin_client(bootstrap: str, client_config: Mapping[str, Any] | None = None) -> AdminClient:
    """An AdminClient for ``bootstrap`` with extra librdkafka settings (security, ...)."""
    return AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap})


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
        # brokers with auto-create on (Tansu does) create it with their default partitions.
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
