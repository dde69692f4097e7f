"""N Debezium contact envelopes over K keys, encoded straight to Confluent Avro and produced.

Fast on purpose: rows come from a fixed template (no JSON, no RNG), are encoded with
fastavro's ``schemaless_writer`` against the registry's latest schema and framed by hand, so
generating 200k events takes seconds, not minutes.

Event ``i`` belongs to key ``i % K`` (round ``i // K``): round 0 inserts the key; later
rounds update it — every third update changes the email (a tracked column: new SCD2
version), the others only ``phone``/``updated_at`` (untracked: in place) — and one key in
25 per round is deleted, then inserted again in its next round. The commit time
``source.ts_ms`` grows by 3 ms per event. Key ``k`` goes to partition ``k % partitions`` so
a key's events keep their order. Every event is an envelope (no tombstones), so N is
the number of changes both engines apply.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from fastavro import schemaless_writer

from cdc.ingest.registry import SchemaRegistry

__all__ = ["BASE_MS", "ProduceStats", "encode_events", "produce_events"]

BASE_MS = 1_767_600_000_000
"""2026-01-05T08:00:00Z: the first event's commit time."""

_FIRST = ("Anna", "Lukas", "Sofia", "Mateo", "Emma", "Noah", "Mia", "Liam", "Hugo", "Léa")
_LAST = (
    "Müller",
    "Schmidt",
    "García",
    "Rossi",
    "Dubois",
    "Smith",
    "Tanaka",
    "Jansen",
    "Nielsen",
    "Kowalski",
)
_DELETE_EVERY = 25


@dataclass(frozen=True)
class ProduceStats:
    """What :func:`produce_events` sent.

    Attributes:
        topic: the topic written.
        events: records sent.
        keys: distinct keys.
        partitions: topic partitions.
        deletes: ``d`` envelopes among the events.
        encode_seconds: time spent encoding.
        produce_seconds: time from the first send to the last delivery report.
    """

    topic: str
    events: int
    keys: int
    partitions: int
    deletes: int
    encode_seconds: float
    produce_seconds: float


def _row(key: int, round_: int, email_version: int, ts_ms: int) -> dict[str, Any]:
    first, last = _FIRST[key % len(_FIRST)], _LAST[(key // len(_FIRST)) % len(_LAST)]
    suffix = f".{email_version}" if email_version else ""
    return {
        "contact_id": f"CON-{key:07d}",
        "account_id": f"ACC-{key % 997:05d}",
        "email": f"{first.lower()[:4]}.{key}{suffix}@example.com",
        "first_name": first,
        "last_name": last,
        "phone": None if round_ % 4 == 3 else f"+49 30 {key % 1000:03d} {round_:04d}",
        "updated_at": ts_ms,
        "marketing_opt_in": key % 3 == 0,
        "job_title": None,
    }


def encode_events(
    events: int, keys: int, partitions: int, registry: SchemaRegistry
) -> Iterator[tuple[int, bytes, bytes]]:
    """Yield ``(partition, key bytes, value bytes)`` for each event, in commit order.

    Args:
        events: how many events.
        keys: how many distinct contacts.
        partitions: partitions of the target topic.
        registry: where ``crm.contacts-key`` / ``crm.contacts-value`` live.
    """
    key_schema = registry.latest("crm.contacts-key")
    value_schema = registry.latest("crm.contacts-value")
    key_header = b"\x00" + key_schema.schema_id.to_bytes(4, "big")
    value_header = b"\x00" + value_schema.schema_id.to_bytes(4, "big")
    state: dict[int, dict[str, Any] | None] = {}
    email_versions: dict[int, int] = {}
    lsn = 24_000_000
    for i in range(events):
        key, round_ = i % keys, i // keys
        commit = BASE_MS + 3 * i
        lsn += 97
        previous = state.get(key)
        if previous is None:
            op, before = "c", None
            after: dict[str, Any] | None = _row(key, round_, email_versions.get(key, 0), commit)
        elif round_ > 0 and (key + round_) % _DELETE_EVERY == 0:
            op, before, after = "d", previous, None
        else:
            op, before = "u", previous
            if round_ % 3 == 0:
                email_versions[key] = email_versions.get(key, 0) + 1
            after = _row(key, round_, email_versions.get(key, 0), commit)
        state[key] = after
        envelope = {
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": commit + 2,
            "source": {
                "version": "2.7.3.Final",
                "connector": "postgresql",
                "name": "crm",
                "db": "crm",
                "table": "contacts",
                "ts_ms": commit,
                "lsn": lsn,
                "txId": 10_000 + i,
                "snapshot": False,
            },
        }
        key_buffer, value_buffer = BytesIO(), BytesIO()
        schemaless_writer(key_buffer, key_schema.parsed, {"contact_id": f"CON-{key:07d}"})
        schemaless_writer(value_buffer, value_schema.parsed, envelope)
        yield (
            key % partitions,
            key_header + key_buffer.getvalue(),
            value_header + value_buffer.getvalue(),
        )


def count_deletes(events: int, keys: int) -> int:
    """How many ``d`` envelopes :func:`encode_events` emits (without encoding anything)."""
    live = [False] * keys
    deletes = 0
    for i in range(events):
        key, round_ = i % keys, i // keys
        if not live[key]:
            live[key] = True
        elif round_ > 0 and (key + round_) % _DELETE_EVERY == 0:
            live[key] = False
            deletes += 1
    return deletes


def produce_events(
    bootstrap: str,
    topic: str,
    events: int,
    keys: int,
    partitions: int,
    registry: SchemaRegistry,
    timeout_s: float = 300.0,
) -> ProduceStats:
    """Create ``topic`` and fill it with :func:`encode_events`.

    Args:
        bootstrap: the broker.
        topic: a fresh topic name (created with ``partitions`` partitions).
        events: how many events.
        keys: how many distinct keys.
        partitions: partitions to create.
        registry: the schema registry.
        timeout_s: deadline for all deliveries.

    Returns:
        Counts and timings.

    Raises:
        RuntimeError: a delivery failed or timed out.
    """
    from confluent_kafka import Producer

    from cdc.runtime.kafka_admin import ensure_topic

    ensure_topic(bootstrap, topic, partitions)
    started = time.perf_counter()
    encoded = list(encode_events(events, keys, partitions, registry))
    encode_seconds = time.perf_counter() - started
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            # A key's events must keep their order in its partition, retries included.
            "max.in.flight.requests.per.connection": 1,
        }
    )
    failures: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    deadline = time.monotonic() + timeout_s
    started = time.perf_counter()
    for partition, key, value in encoded:
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, partition=partition, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    if left or failures:
        raise RuntimeError(f"produce to {topic}: {left} undelivered, failures: {failures[:3]}")
    return ProduceStats(
        topic=topic,
        events=events,
        keys=min(keys, events),
        partitions=partitions,
        deletes=count_deletes(events, keys),
        encode_seconds=encode_seconds,
        produce_seconds=time.perf_counter() - started,
    )
