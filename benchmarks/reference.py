"""The single-process reference: consume → fastavro → SCD2 → delta-rs MERGE, no Spark.

One confluent-kafka consumer reads every partition of the topic; records are cut into
micro-batches of the same size as the pipeline's ``maxRecordsPerTrigger``; each batch is
decoded with fastavro (writer schema by the Confluent id), normalised with
:func:`cdc.ingest.changes.scd2_changes`, folded with :func:`cdc.core.scd2.apply_scd2` (which drops
re-deliveries of an event and keeps the last state per key in sequence order) and merged
with :class:`cdc.store.delta_rs.DeltaSink` — the same functions and writer the pipeline's
``foreachBatch`` uses, so the comparison measures the engine, not the merge semantics.
Unlike the pipeline, it writes no bronze table and checks no contract rules. With
``decoder="columnar"`` it decodes with the pipeline's vectorised decoder instead of fastavro.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import polars as pl
import pyarrow as pa
from fastavro import schemaless_reader
from tests.support.decoding import decode_messages

from cdc.config.settings import PipelineSettings
from cdc.core.scd2 import Scd2Spec, apply_scd2, empty_dimension, merge_source, touches_history
from cdc.ingest.changes import business_columns, scd2_changes
from cdc.ingest.contracts import TopicContract, avro_to_arrow_type
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.registry import SchemaRegistry
from cdc.store.delta_rs import DeltaSink, Txn
from cdc.store.plan import scd2_merge_plan

__all__ = ["LiveReference", "ReferenceResult", "run_reference"]

_Record = tuple[int, int, int, bytes, bytes | None]
"""``(partition, offset, timestamp_ms, key, value)``."""


@dataclass
class ReferenceResult:
    """Timings of one reference run (seconds) and what it wrote.

    Attributes:
        events: records consumed.
        batches: micro-batches merged.
        seconds: wall time from the consumer's creation to the last commit.
        phases: seconds per phase: consume, decode, scd2 (normalise + fold), merge (read
            the keys' rows + MERGE).
    """

    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(
        default_factory=lambda: {"consume": 0.0, "decode": 0.0, "scd2": 0.0, "merge": 0.0}
    )
    batch_ends: list[tuple[int, float]] = field(default_factory=list)
    """``(records, time.perf_counter() after its MERGE)`` per batch (steady-state rates)."""
    visible: list[tuple[dict[int, int], float]] = field(default_factory=list)
    """``({partition: end offset}, time.time() after its MERGE)`` per batch (latency)."""


class _Decoder:
    """fastavro by Confluent schema id, into the Arrow layout the pipeline's source yields."""

    def __init__(self, registry: SchemaRegistry, key_subject: str, value_subject: str) -> None:
        self.registry = registry
        self.writers: dict[int, Any] = {}
        self.key_type = avro_to_arrow_type(registry.latest(key_subject).schema)
        self.value_type = avro_to_arrow_type(registry.latest(value_subject).schema)

    def _read(self, data: bytes) -> Any:
        schema_id = int.from_bytes(data[1:5], "big")
        writer = self.writers.get(schema_id)
        if writer is None:
            writer = self.writers[schema_id] = self.registry.by_id(schema_id).parsed
        buffer = BytesIO(data)
        buffer.seek(5)
        return schemaless_reader(buffer, writer, None)

    def table(self, topic: str, records: list[_Record]) -> pa.Table:
        keys = [self._read(key) for _, _, _, key, _ in records]
        values = [None if value is None else self._read(value) for *_, value in records]
        return pa.table(
            {
                "topic": pa.array([topic] * len(records), pa.string()),
                "partition": pa.array([r[0] for r in records], pa.int32()),
                "offset": pa.array([r[1] for r in records], pa.int64()),
                "timestamp": pa.array([r[2] * 1000 for r in records], pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")
                ),
                "key": pa.array(keys, self.key_type),
                "value": pa.array(values, self.value_type),
            }
        )


class _ColumnarDecoder:
    """The pipeline's own decoder (:class:`cdc.ingest.decoder.TopicDecoder`, columnar), no
    rules."""

    def __init__(
        self, registry: SchemaRegistry, topic: str, key_subject: str, value_subject: str
    ) -> None:
        self.decoder = TopicDecoder(
            registry, TopicContract(topic, key_subject, value_subject, kind="envelope")
        )

    def table(self, topic: str, records: list[_Record]) -> pa.Table:
        batch = decode_messages(self.decoder, [(topic, *record) for record in records])
        return pa.Table.from_batches([batch]).select(
            ["topic", "partition", "offset", "timestamp", "key", "value"]
        )


class _Merger:
    """One micro-batch at a time: decode -> normalise -> fold -> MERGE, timed per phase."""

    def __init__(
        self,
        topic: str,
        silver_uri: str,
        pipeline: PipelineSettings,
        registry: SchemaRegistry,
        key_subject: str,
        value_subject: str,
        result: ReferenceResult,
        decoder: str = "fastavro",
    ) -> None:
        self.topic = topic
        self.pipeline = pipeline
        self.decoder: _Decoder | _ColumnarDecoder = (
            _ColumnarDecoder(registry, topic, key_subject, value_subject)
            if decoder == "columnar"
            else _Decoder(registry, key_subject, value_subject)
        )
        self.sink = DeltaSink(silver_uri)
        self.spec: Scd2Spec | None = None
        self.result = result

    def merge(self, records: list[_Record]) -> None:
        pipeline, result = self.pipeline, self.result
        t0 = time.perf_counter()
        table = self.decoder.table(self.topic, records)
        t1 = time.perf_counter()
        if self.spec is None:
            self.spec = Scd2Spec.build(
                keys=pipeline.keys,
                columns=business_columns(table.schema, pipeline.source_format),
                track_history=pipeline.track_history,
                track_history_except=pipeline.track_history_except,
            )
        spec = self.spec
        changes = scd2_changes(table, spec, pipeline.source_format, pipeline.sequence_by)
        t2 = time.perf_counter()
        existing = _fold_rows(self.sink, changes, spec)
        t3 = time.perf_counter()
        scd2 = apply_scd2(existing, changes, spec)
        t4 = time.perf_counter()
        source = merge_source(scd2)
        self.sink.merge(
            source.to_arrow(compat_level=pl.CompatLevel.oldest()),
            scd2_merge_plan(spec.keys, current_only=not touches_history(source)),
            Txn("cdc-bench/reference/silver", result.batches),
        )
        t5 = time.perf_counter()
        result.phases["decode"] += t1 - t0
        result.phases["scd2"] += (t2 - t1) + (t4 - t3)  # normalise + fold
        result.phases["merge"] += (t3 - t2) + (t5 - t4)  # read the keys' rows + MERGE
        result.batches += 1
        result.events += len(records)
        result.batch_ends.append((len(records), t5))
        ends: dict[int, int] = {}
        for partition, offset, *_ in records:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        result.visible.append((ends, time.time()))


def _fold_rows(sink: DeltaSink, changes: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """The rows the fold needs, read as the pipeline's first passes read them: the current
    rows of the batch's keys (their partition only), and every row of the keys that have no
    current row (deleted before, or new)."""
    keys = list(spec.keys)
    wanted = changes.select(keys).unique()
    current = sink.read_keys(wanted, current=True)
    if current is None:
        return empty_dimension(spec, dict(changes.schema))
    missing = wanted.join(current.select(keys), on=keys, how="anti", nulls_equal=True)
    past = sink.read_keys(missing, current=False) if missing.height else None
    return current if past is None else pl.concat([current, past], how="diagonal_relaxed")


def _consumer(bootstrap: str, topic: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"cdc-bench-reference-{topic}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )


def _append(messages: list[Any], pending: list[_Record], positions: dict[int, int]) -> None:
    for message in messages:
        if message.error() is not None:
            raise RuntimeError(f"reference consumer: {message.error()}")
        partition, offset, key = message.partition(), message.offset(), message.key()
        assert partition is not None and offset is not None and key is not None
        positions[partition] = offset + 1
        pending.append((partition, offset, message.timestamp()[1], key, message.value()))


def run_reference(
    bootstrap: str,
    topic: str,
    silver_uri: str,
    pipeline: PipelineSettings,
    registry: SchemaRegistry,
    batch_size: int,
    key_subject: str = "crm.contacts-key",
    value_subject: str = "crm.contacts-value",
    fetch_size: int = 10_000,
    decoder: str = "fastavro",
) -> ReferenceResult:
    """Drain ``topic`` into the SCD2 table at ``silver_uri`` in one process.

    Args:
        bootstrap: the broker.
        topic: the topic to read from the beginning to its current end.
        silver_uri: a fresh Delta table location.
        pipeline: the pipeline whose keys, tracked columns and sequence it mirrors.
        registry: the schema registry.
        batch_size: records per micro-batch (the pipeline's ``maxRecordsPerTrigger``).
        key_subject: registry subject of the keys (its latest version is the Arrow layout).
        value_subject: registry subject of the values (likewise).
        fetch_size: most records per ``consume()`` call.
        decoder: ``fastavro`` (the reference as specified: one ``schemaless_reader`` call
            per key and value) or ``columnar`` (the pipeline's vectorised decoder, to
            compare the engines with the same decoding on both sides).

    Returns:
        Counts and timings.

    Raises:
        RuntimeError: the consumer reported an error.
    """
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    result = ReferenceResult()
    started = time.perf_counter()
    consumer = _consumer(bootstrap, topic)
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    positions = dict.fromkeys(partitions, 0)
    merger = _Merger(
        topic, silver_uri, pipeline, registry, key_subject, value_subject, result, decoder
    )
    pending: list[_Record] = []
    try:
        while any(positions[p] < ends[p] for p in partitions):
            t0 = time.perf_counter()
            # consume() waits for num_messages or the timeout: never ask for more than is left.
            left = sum(ends[p] - positions[p] for p in partitions)
            wanted = max(1, min(fetch_size, left))
            _append(consumer.consume(num_messages=wanted, timeout=1.0), pending, positions)
            result.phases["consume"] += time.perf_counter() - t0
            while len(pending) >= batch_size:
                merger.merge(pending[:batch_size])
                del pending[:batch_size]
        if pending:
            merger.merge(pending)
    finally:
        consumer.close()
    result.seconds = time.perf_counter() - started
    return result


class LiveReference:
    """The reference as a live consumer: every ``trigger_s``, merge what arrived (latency mode).

    Run :meth:`run` in a thread; :meth:`stop` ends it after the current batch.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        silver_uri: str,
        pipeline: PipelineSettings,
        registry: SchemaRegistry,
        trigger_s: float = 1.0,
        key_subject: str = "crm.contacts-key",
        value_subject: str = "crm.contacts-value",
    ) -> None:
        self.result = ReferenceResult()
        self._bootstrap, self._topic, self._trigger_s = bootstrap, topic, trigger_s
        self._merger = _Merger(
            topic, silver_uri, pipeline, registry, key_subject, value_subject, self.result
        )
        self._stopping = False
        self.error: BaseException | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in progress."""
        self._stopping = True

    def run(self) -> None:
        """Consume from the beginning and merge once per trigger until stopped."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        consumer = _consumer(self._bootstrap, self._topic)
        try:
            metadata = consumer.list_topics(self._topic, timeout=10)
            partitions = sorted(metadata.topics[self._topic].partitions)
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
            positions = dict.fromkeys(partitions, 0)
            pending: list[_Record] = []
            next_trigger = time.monotonic() + self._trigger_s
            while not self._stopping:
                wait = max(0.0, next_trigger - time.monotonic())
                _append(consumer.consume(num_messages=10_000, timeout=wait), pending, positions)
                if time.monotonic() >= next_trigger:
                    next_trigger += self._trigger_s
                    if pending:
                        self._merger.merge(pending)
                        pending = []
                    next_trigger = max(next_trigger, time.monotonic())
        except BaseException as exc:  # reported by the caller
            self.error = exc
        finally:
            consumer.close()
