"""``cdc snapshot``: ask a Debezium connector for an incremental snapshot of one table.

Debezium re-reads a table on request while it keeps streaming: an ``execute-snapshot`` signal
on its Kafka signal channel (``signal.enabled.channels`` including ``kafka``, the topic
``signal.kafka.topic``, by default ``<topic.prefix>-signal``). The channel reads partition 0 of
that topic and acts on a record whose key is the connector's logical name (``topic.prefix``)
and whose value is the signal as JSON::

    {"id": "<unique>", "type": "execute-snapshot",
     "data": {"data-collections": ["public.contacts"], "type": "INCREMENTAL",
              "additional-conditions": [{"data-collection": "public.contacts",
                                          "filter": "region = 'EU'"}]}}

The snapshot's rows then arrive on the table's topic as ``op: r`` among its streaming changes;
the SCD2 fold orders them by source position like every change (docs/scd2.md), so a row read
before a newer change never overrides it. :func:`send_snapshot_signal` writes the signal;
:func:`watch_snapshot` reports the snapshot rows as they arrive on the topic (read from the
end offsets the signal was sent at, decoded with the pipeline's contract).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cdc.errors import BrokerUnavailableError, ConfigError

if TYPE_CHECKING:
    from cdc.config.settings import PipelineSettings, Settings

__all__ = [
    "SnapshotProgress",
    "SnapshotSignal",
    "send_snapshot_signal",
    "signal_for",
    "watch_snapshot",
]


@dataclass(frozen=True)
class SnapshotSignal:
    """One ``execute-snapshot`` signal, as Debezium's Kafka signal channel reads it.

    Attributes:
        connector: the connector's logical name (``topic.prefix``): the record's key.
        topic: the connector's signal topic (``signal.kafka.topic``).
        collections: the data collections to snapshot (``schema.table`` for PostgreSQL).
        kind: ``incremental`` (while streaming) or ``blocking`` (streaming paused).
        filter: a SQL condition restricting the rows read (``additional-conditions``).
        id: the signal's id (unique; Debezium logs it).
    """

    connector: str
    topic: str
    collections: tuple[str, ...]
    kind: Literal["incremental", "blocking"] = "incremental"
    filter: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def key(self) -> bytes:
        """The record's key: the connector's name (Debezium compares it as a string)."""
        return self.connector.encode()

    def value(self) -> bytes:
        """The record's value: the signal as compact JSON."""
        data: dict[str, Any] = {
            "data-collections": list(self.collections),
            "type": self.kind.upper(),
        }
        if self.filter:
            data["additional-conditions"] = [
                {"data-collection": c, "filter": self.filter} for c in self.collections
            ]
        body = {"id": self.id, "type": "execute-snapshot", "data": data}
        return json.dumps(body, separators=(",", ":")).encode()


def signal_for(
    settings: Settings,
    name: str,
    *,
    kind: Literal["incremental", "blocking"] = "incremental",
    filter: str | None = None,
) -> SnapshotSignal:
    """The signal that snapshots pipeline ``name``'s table (:attr:`PipelineSettings.debezium`;
    unset fields come from the topic name ``<topic.prefix>.<schema>.<table>``)."""
    pipeline = settings.pipeline(name)
    connector, collection, topic = _source_of(pipeline)
    return SnapshotSignal(connector, topic, (collection,), kind, filter)


def _source_of(pipeline: PipelineSettings) -> tuple[str, str, str]:
    own = pipeline.debezium
    prefix, _, rest = pipeline.topic.partition(".")
    connector = own.connector if own and own.connector else prefix
    collection = own.data_collection if own and own.data_collection else rest
    if not connector or not collection:
        raise ConfigError(
            f"topic {pipeline.topic!r} is not <topic.prefix>.<schema>.<table>: set the"
            " pipeline's debezium.connector and debezium.data_collection"
        )
    topic = own.signal_topic if own and own.signal_topic else f"{connector}-signal"
    return connector, collection, topic


def send_snapshot_signal(settings: Settings, signal: SnapshotSignal) -> None:
    """Write ``signal`` to partition 0 of its topic (created with one partition if missing).

    Raises:
        BrokerUnavailableError: the broker did not take it.
    """
    from confluent_kafka import Producer

    from cdc.runtime.kafka_admin import ensure_topic

    kafka = settings.kafka
    client = kafka.client_config()
    ensure_topic(kafka.bootstrap_servers, signal.topic, partitions=1, client_config=client)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, **client, "acks": "all"})
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(
        signal.topic, key=signal.key(), value=signal.value(), partition=0, on_delivery=delivered
    )
    left = producer.flush(kafka.connect_timeout_s)
    if left or failures:
        why = failures[0] if failures else "no acknowledgement in time"
        raise BrokerUnavailableError(
            f"Kafka at {kafka.bootstrap_servers}: the snapshot signal was not written to"
            f" {signal.topic}: {why}"
        )


@dataclass
class SnapshotProgress:
    """The snapshot rows (``op: r``) seen on the topic since the signal."""

    rows: int = 0
    keys: set[tuple[Any, ...]] = field(default_factory=set)
    changes: int = 0
    """Other records of the topic meanwhile (streaming changes)."""
    last_row_at: float | None = None

    def line(self, table: str) -> str:
        return (
            f"snapshot of {table}: {self.rows} rows read ({len(self.keys)} keys),"
            f" {self.changes} streaming changes meanwhile"
        )


def watch_snapshot(
    settings: Settings,
    name: str,
    start: dict[int, int],
    *,
    wait_s: float,
    quiet_s: float,
    report: Callable[[SnapshotProgress], None],
    clock: Callable[[], float] = time.monotonic,
) -> SnapshotProgress:
    """Follow pipeline ``name``'s topic from ``start`` (its end offsets when the signal was
    sent), counting the snapshot rows, until ``quiet_s`` pass without one after the first, or
    ``wait_s`` in all; ``report`` is called every few seconds and at the end."""
    from cdc.pipeline.kafka_source import DecoderSpec, topic_decoder

    pipeline = settings.pipeline(name)
    decoder = topic_decoder(DecoderSpec.from_settings(settings, pipeline), pipeline.topic)
    keys = list(pipeline.keys)
    progress = SnapshotProgress()
    began = last_report = clock()
    for batch in _records(settings, pipeline.topic, start, lambda: clock() - began < wait_s):
        decoded = decoder.decode_records(batch)
        for row in decoded.to_pylist():
            value = row["value"]
            if row["error_code"] is not None or value is None:
                progress.changes += 1
                continue
            if value.get("op") == "r":
                progress.rows += 1
                key = row["key"] or {}
                progress.keys.add(tuple(key.get(k) for k in keys))
                progress.last_row_at = clock()
            else:
                progress.changes += 1
        now = clock()
        if now - last_report >= 5:
            report(progress)
            last_report = now
        if progress.last_row_at is not None and now - progress.last_row_at >= quiet_s:
            break
    report(progress)
    return progress


def _records(
    settings: Settings, topic: str, start: dict[int, int], more: Callable[[], bool]
) -> Iterator[Any]:
    """Batches of the topic's records from ``start``, in the Kafka source's columns."""
    from confluent_kafka import Consumer, TopicPartition

    from cdc.ingest.decoder import kafka_batch
    from cdc.runtime.kafka_admin import consumer_config

    kafka = settings.kafka
    config = {"bootstrap.servers": kafka.bootstrap_servers, **kafka.client_config()}
    consumer = Consumer(consumer_config(config, None, **{"auto.offset.reset": "earliest"}))
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in sorted(start.items())])
        while more():
            messages = consumer.consume(num_messages=1000, timeout=0.5)
            found = [m for m in messages if m.error() is None]
            yield kafka_batch(
                [
                    # A consumed record always has its topic, partition and offset.
                    (
                        topic,
                        m.partition() or 0,
                        m.offset() or 0,
                        m.timestamp()[1],
                        m.key(),
                        m.value(),
                    )
                    for m in found
                ]
            )
    finally:
        consumer.close()
