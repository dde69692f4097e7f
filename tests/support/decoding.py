"""Kafka records as Spark's Kafka source hands them to the decoder, built from plain tuples.

The service decodes only what Spark's Kafka source reads (:meth:`cdc.ingest.decoder.TopicDecoder.
decode_records`, run by ``mapInArrow`` on the executors). Tests and benchmarks that hold
records as ``(topic, partition, offset, timestamp_ms, key, value)`` tuples go through the
same method: :func:`kafka_batch` lays the tuples out as the source's columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from cdc.core.sequence import MAX_TIME_MS
from cdc.ingest.contracts import KafkaMessage
from cdc.ingest.decoder import TopicDecoder

__all__ = ["decode_messages", "kafka_batch"]


def kafka_batch(messages: Sequence[KafkaMessage]) -> pa.RecordBatch:
    """``messages`` in the columns, order and types of Spark's Kafka source.

    Args:
        messages: ``(topic, partition, offset, timestamp_ms, key, value)`` tuples; a
            timestamp that is negative (Kafka's "none") or past 9999-12-31 becomes null.

    Returns:
        A batch with ``key``, ``value``, ``topic``, ``partition``, ``offset``, ``timestamp``
        and ``timestampType``.
    """
    topics, partitions, offsets, stamps, keys, values = (
        tuple(zip(*messages, strict=True)) if messages else ((),) * 6
    )
    micros = [t * 1000 if t is not None and 0 <= t <= MAX_TIME_MS else None for t in stamps]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(keys, pa.binary()),
            pa.array(values, pa.binary()),
            pa.array(topics, pa.string()),
            pa.array(partitions, pa.int32()),
            pa.array(offsets, pa.int64()),
            pa.array(micros, pa.timestamp("us", "UTC")),
            pa.array([0] * len(micros), pa.int32()),
        ],
        names=["key", "value", "topic", "partition", "offset", "timestamp", "timestampType"],
    )


def decode_messages(decoder: TopicDecoder, messages: Sequence[KafkaMessage]) -> pa.RecordBatch:
    """Decode and validate ``messages`` as the pipeline does: one row per message, in order.

    Args:
        decoder: the topic's decoder.
        messages: ``(topic, partition, offset, timestamp_ms, key, value)`` tuples.

    Returns:
        A batch with the decoder's :attr:`~cdc.ingest.decoder.TopicDecoder.arrow_schema`.
    """
    return decoder.decode_records(kafka_batch(messages))
