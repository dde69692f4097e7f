"""Producing to a real broker: framing, schema ids, partition placement, high watermarks."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from cdc.errors import BrokerUnavailableError, ProduceError
from cdc.ingest.contracts import TopicContract, load_contracts
from cdc.ingest.produce import (
    OutboundRecord,
    default_partition,
    parse_lines,
    produce_file,
    produce_records,
)
from cdc.ingest.registry import FileRegistry, unframe
from cdc.runtime.kafka_admin import ensure_topic, partition_count

pytestmark = pytest.mark.integration

SOURCE = {
    "version": "2.5",
    "connector": "postgresql",
    "name": "crm",
    "db": "crm",
    "table": "contacts",
    "ts_ms": 1_700_000_000_000,
}


@pytest.fixture
def topic_contracts(contracts_path: Path) -> tuple[str, dict[str, TopicContract]]:
    """A fresh topic with the crm.contacts contract, so other tests' data cannot interfere."""
    topic = f"itest.contacts.{uuid.uuid4().hex[:8]}"
    contract = replace(load_contracts(contracts_path)["crm.contacts"], topic=topic)
    return topic, {topic: contract}


def contact_line(i: int, **extra: Any) -> dict[str, Any]:
    after = {
        "contact_id": f"c{i}",
        "account_id": "a1",
        "email": f"c{i}@example.com",
        "first_name": "Jo",
        "last_name": f"Doe{i}",
        "updated_at": 1_700_000_000_000 + i,
    }
    value = {"before": None, "after": after, "op": "c", "ts_ms": 1, "source": SOURCE}
    return {"key": {"contact_id": f"c{i % 17}"}, "value": value, **extra}


def read_all(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Any]]:
    """Every committed record of the topic, as the pipelines read it (``read_committed``)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got: dict[int, list[Any]] = {p: [] for p in range(partitions)}
        at_end: set[int] = set()
        deadline = time.monotonic() + 30
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, "timed out reading back"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                continue
            at_end.discard(msg.partition())
            got[msg.partition()].append(msg)
        return got
    finally:
        consumer.close()


def test_produce_file_round_trip(
    kafka_bootstrap: str,
    registry: FileRegistry,
    topic_contracts: tuple[str, dict[str, TopicContract]],
    tmp_path: Path,
) -> None:
    topic, contracts = topic_contracts
    lines = [contact_line(i) for i in range(60)]
    lines[5]["partition"] = 2
    lines[6] = {"key": {"contact_id": "c6"}, "value": None}  # a tombstone
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path = tmp_path / "contacts.jsonl"
    path.write_text(text)
    records, errors = parse_lines(text.splitlines(), registry, contracts[topic])
    assert errors == []

    report = produce_file(kafka_bootstrap, registry, contracts, topic, path, partitions_if_create=3)

    # Explicit partitions win; otherwise Java's default partitioner over the framed key.
    expected: dict[int, list[tuple[bytes | None, bytes | None]]] = {0: [], 1: [], 2: []}
    for record in records:
        assert record.key is not None
        p = record.partition if record.partition is not None else default_partition(record.key, 3)
        expected[p].append((record.key, record.value))
    assert partition_count(kafka_bootstrap, topic) == 3
    assert report.sent == 60
    assert report.per_partition == {p: len(v) for p, v in expected.items() if v}

    got = read_all(kafka_bootstrap, topic, 3)
    for p in range(3):
        # Same records, same per-partition order as the input.
        assert [(m.key(), m.value()) for m in got[p]] == expected[p]
        assert [m.offset() for m in got[p]] == list(range(len(expected[p])))
    values = [m.value() for ms in got.values() for m in ms]
    assert values.count(None) == 1
    assert {unframe(v)[0] for v in values if v is not None} == {15}  # crm.contacts-value v3
    assert {unframe(m.key())[0] for ms in got.values() for m in ms} == {3}


def test_high_watermarks_count_every_record_and_the_commit_marker(
    kafka_bootstrap: str, registry: FileRegistry, contracts_path: Path
) -> None:
    # Many records per partition in few batches: every record counts in the high watermark
    # (a broker that reported the last batch's base offset + 1 would under-count), plus the
    # one commit marker the transaction wrote on each partition it touched.
    topic = f"itest.wm.{uuid.uuid4().hex[:8]}"
    contract = replace(load_contracts(contracts_path)["crm.contacts"], topic=topic)
    lines = [json.dumps(contact_line(i, partition=i % 4)) for i in range(400)]
    records, errors = parse_lines(lines, registry, contract)
    assert errors == []
    assert ensure_topic(kafka_bootstrap, topic, 4) == 4
    assert ensure_topic(kafka_bootstrap, topic, 9) == 4  # an existing topic keeps its count

    report = produce_records(kafka_bootstrap, records, topic=topic)

    assert report.per_partition == {0: 100, 1: 100, 2: 100, 3: 100}
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "wm"})
    try:
        marks = [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(4)
        ]
    finally:
        consumer.close()
    assert marks == [(0, 101)] * 4
    assert {p: len(ms) for p, ms in read_all(kafka_bootstrap, topic, 4).items()} == {
        0: 100,
        1: 100,
        2: 100,
        3: 100,
    }


def test_default_partition_agrees_with_librdkafka_murmur2(kafka_bootstrap: str) -> None:
    topic = f"itest.murmur.{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_bootstrap, topic, 5)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    placed: dict[bytes, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None
        placed[msg.key()] = msg.partition()

    keys = [f"key-{i}".encode() for i in range(40)]
    for key in keys:
        producer.produce(topic, key=key, value=b"x", on_delivery=on_delivery)
    assert producer.flush(10) == 0
    assert placed == {key: default_partition(key, 5) for key in keys}


def test_records_for_missing_partitions_or_topics_are_refused(
    kafka_bootstrap: str, registry: FileRegistry, contracts_path: Path
) -> None:
    topic = f"itest.refuse.{uuid.uuid4().hex[:8]}"
    record = OutboundRecord(line=3, key=b"k", value=b"v", partition=7)
    with pytest.raises(ProduceError) as exc:
        produce_records(kafka_bootstrap, [record], topic=topic)
    assert str(exc.value) == f"topic {topic} does not exist on {kafka_bootstrap}"
    ensure_topic(kafka_bootstrap, topic, 2)
    with pytest.raises(ProduceError) as exc:
        produce_records(kafka_bootstrap, [record], topic=topic)
    assert str(exc.value) == "line 3: partition 7 does not exist (the topic has 2)"


def test_a_record_larger_than_the_topic_accepts_sends_nothing(
    kafka_bootstrap: str,
    registry: FileRegistry,
    topic_contracts: tuple[str, dict[str, TopicContract]],
    tmp_path: Path,
) -> None:
    # Two good lines, then a 2 MB one: the whole file is refused before anything is sent
    # (it used to deliver the first two, then fail with MSG_SIZE_TOO_LARGE).
    topic, contracts = topic_contracts
    big = contact_line(2)
    big["value"]["after"]["last_name"] = "x" * 2_000_000
    path = tmp_path / "contacts.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in (contact_line(0), contact_line(1), big)))
    ensure_topic(kafka_bootstrap, topic, 3)
    with pytest.raises(ProduceError) as exc:
        produce_file(kafka_bootstrap, registry, contracts, topic, path)
    assert re.fullmatch(
        r"1 record\(s\) larger than the (topic's max\.message\.bytes|producer's message\.max"
        r"\.bytes) \(\d+\): line 3 is about \d+ bytes; nothing was sent",
        str(exc.value),
    ), str(exc.value)
    assert read_all(kafka_bootstrap, topic, 3) == {0: [], 1: [], 2: []}


def test_a_failed_produce_leaves_nothing_visible(kafka_bootstrap: str) -> None:
    """All or nothing: records delivered before the failure belong to an aborted transaction.

    The failure is a deadline far too short for 200 MB. The produce that follows must be
    visible at once: a transaction left open instead of aborted would hold every reader
    (``read_committed``) back until the broker timed it out.
    """
    topic = f"itest.txn.{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_bootstrap, topic, 2)
    big = [OutboundRecord(line=i + 1, key=b"k%d" % i, value=b"x" * 20_000) for i in range(10_000)]
    with pytest.raises(ProduceError) as exc:
        produce_records(kafka_bootstrap, big, topic=topic, timeout_s=0.1)
    assert str(exc.value).endswith(
        "; the transaction was aborted, no record of this file is visible"
    )
    assert "\n" not in str(exc.value)
    good = [OutboundRecord(line=1, key=b"a", value=b"1", partition=0)]
    assert produce_records(kafka_bootstrap, good, topic=topic).sent == 1
    got = read_all(kafka_bootstrap, topic, 2)
    assert [(m.key(), m.value()) for m in got[0]] == [(b"a", b"1")] and got[1] == []


def test_unreachable_cluster_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    record = OutboundRecord(line=1, key=b"k", value=b"v")
    with pytest.raises(BrokerUnavailableError) as exc:
        produce_records(f"127.0.0.1:{port}", [record], topic="t", connect_timeout_s=1)
    message = str(exc.value)
    assert message.startswith(f"Kafka at 127.0.0.1:{port} did not answer within 1s: ")
    assert "\n" not in message
