"""Kafka records as Spark's Kafka source hands them to the decoder, built from plain tuples.

The service decodes only what Spark's Kafka source reads (:meth:`cdc.ingest.decoder.TopicDecoder.
decode_records`, run by ``mapInArrow`` on the executors). Tests and benchmarks that hold
records as ``(topic, partition, offset, timestamp_ms, key, value)`` tuples go through the
same method: :func:`cdc.ingest.decoder.kafka_batch` lays the tuples out as the source's columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from cdc.ingest.contracts import KafkaMessage
from cdc.ingest.decoder import TopicDecoder, kafka_batch

__all__ = ["decode_messages", "kafka_batch"]


def decode_messages(decoder: TopicDecoder, messages: Sequence[KafkaMessage]) -> pa.RecordBatch:
    """Decode and validate ``messages`` as the pipeline does: one row per message, in order.

    Args:
        decoder: the topic's decoder.
        messages: ``(topic, partition, offset, timestamp_ms, key, value)`` tuples.

    Returns:
        A batch with the decoder's :attr:`~cdc.ingest.decoder.TopicDecoder.arrow_schema`.
    """
    return decoder.decode_records(kafka_batch(messages))
