"""JSON lines -> framed Avro: conversion, exact error text, partitioning. No broker needed."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cdc.errors import ConfigError, ProduceError
from cdc.ingest.contracts import TopicContract
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.produce import default_partition, murmur2, parse_lines, produce_file
from cdc.ingest.registry import FileRegistry, unframe
from tests.support.decoding import decode_messages

SOURCE = {
    "version": "2.5",
    "connector": "postgresql",
    "name": "crm",
    "db": "crm",
    "table": "t",
    "ts_ms": 1_700_000_000_000,
}


def contact_line(**after: Any) -> str:
    row = {
        "contact_id": "c1",
        "account_id": "a1",
        "email": "jo@example.com",
        "first_name": "Jo",
        "last_name": "Doe",
        "updated_at": "2024-01-31T12:00:00.123+01:00",
    }
    row.update(after)
    value = {"before": None, "after": row, "op": "c", "ts_ms": 5, "source": SOURCE}
    return json.dumps({"key": {"contact_id": row["contact_id"]}, "value": value})


def opportunity_line(**after: Any) -> str:
    row = {
        "opportunity_id": "o1",
        "account_id": "a1",
        "name": "Deal",
        "stage": "proposal",
        "amount": 1234.5,
        "currency": "USD",
        "close_date": "2024-03-01",
        "probability": 40,
        "updated_at": 1_700_000_000_000,
    }
    row.update(after)
    value = {"before": None, "after": row, "op": "c", "ts_ms": 5, "source": SOURCE}
    return json.dumps({"key": {"opportunity_id": "o1"}, "value": value})


def test_lines_encode_with_the_latest_schema_and_decode_back(
    registry: FileRegistry, contracts: dict[str, TopicContract]
) -> None:
    contract = contracts["crm.contacts"]
    tombstone = json.dumps({"key": {"contact_id": "c2"}, "value": None, "partition": 2})
    records, errors = parse_lines([contact_line(), "", tombstone], registry, contract)
    assert errors == []
    assert [(r.line, r.partition) for r in records] == [(1, None), (3, 2)]
    assert unframe(records[0].value or b"")[0] == 15  # crm.contacts-value v3
    assert unframe(records[0].key or b"")[0] == 3
    assert records[1].value is None

    batch = decode_messages(
        TopicDecoder(registry, contract),
        [("crm.contacts", 0, i, 0, r.key, r.value) for i, r in enumerate(records)],
    )
    rows = batch.to_pylist()
    assert [r["error_code"] for r in rows] == [None, None]
    after = rows[0]["value"]["after"]
    assert after["updated_at"] == datetime(2024, 1, 31, 11, 0, 0, 123_000, tzinfo=UTC)
    assert (after["phone"], after["marketing_opt_in"], after["job_title"]) == (None, False, None)
    assert rows[0]["value"]["source"]["snapshot"] is False
    assert rows[1]["key"] == {"contact_id": "c2"}


def test_decimals_and_dates_are_exact(
    registry: FileRegistry, contracts: dict[str, TopicContract]
) -> None:
    contract = contracts["crm.opportunities"]
    lines = [
        opportunity_line(),
        opportunity_line(amount="0.10", close_date=None),
        opportunity_line(amount=7, close_date=19_783),
        opportunity_line(amount="1.500"),
    ]
    records, errors = parse_lines(lines, registry, contract)
    assert errors == []
    rows = decode_messages(
        TopicDecoder(registry, contract),
        [("crm.opportunities", 0, i, 0, r.key, r.value) for i, r in enumerate(records)],
    ).to_pylist()
    got = [(r["value"]["after"]["amount"], r["value"]["after"]["close_date"]) for r in rows]
    assert got == [
        (Decimal("1234.50"), date(2024, 3, 1)),
        (Decimal("0.10"), None),
        (Decimal("7.00"), date(2024, 3, 1)),
        (Decimal("1.50"), date(2024, 3, 1)),
    ]


def test_raw_bytes_lines_pass_through_unchanged(
    registry: FileRegistry, contracts: dict[str, TopicContract]
) -> None:
    line = json.dumps({"key": None, "value_b64": base64.b64encode(b"not avro").decode()})
    records, errors = parse_lines([line], registry, contracts["crm.contacts"])
    assert errors == []
    assert (records[0].key, records[0].value) == (None, b"not avro")


BAD_LINES = [
    (contact_line(email=42), "line 1: value.after.email: expected string, got 42"),
    (contact_line(phone=3), "line 1: value.after.phone: expected string, got 3"),
    (
        contact_line(marketing_opt_in="yes"),
        'line 1: value.after.marketing_opt_in: expected boolean, got "yes"',
    ),
    (
        contact_line(nick="x"),
        "line 1: value.after: unknown field(s) nick for record com.acme.crm.contacts.Value",
    ),
    (
        contact_line(updated_at="2024-01-01T00:00:00"),
        'line 1: value.after.updated_at: timestamp "2024-01-01T00:00:00" has no UTC offset '
        "(add Z or +00:00)",
    ),
    (
        contact_line(updated_at="yesterday"),
        'line 1: value.after.updated_at: invalid ISO-8601 timestamp "yesterday"',
    ),
    (
        contact_line(updated_at="2024-01-01T00:00:00.0001Z"),
        'line 1: value.after.updated_at: timestamp "2024-01-01T00:00:00.0001Z" is more precise '
        "than timestamp-millis",
    ),
    (
        contact_line(updated_at=True),
        "line 1: value.after.updated_at: expected timestamp-millis (ISO-8601 string with offset "
        "or epoch milliseconds), got true",
    ),
    (contact_line(contact_id=5), "line 1: key.contact_id: expected string, got 5"),
    ('{"key": ', "line 1: invalid JSON: Expecting value: line 1 column 9 (char 8)"),
    ("[1]", "line 1: expected a JSON object, got [1]"),
    (
        '{"key": null, "value": null, "topic": "x"}',
        "line 1: unknown key(s) topic (valid keys: key, key_b64, partition, value, value_b64)",
    ),
    ('{"key": null}', "line 1: missing 'value' (or 'value_b64'); use null for none"),
    ('{"value": null}', "line 1: missing 'key' (or 'key_b64'); use null for none"),
    (
        '{"key": null, "key_b64": "", "value": null}',
        "line 1: 'key' and 'key_b64' are mutually exclusive",
    ),
    (
        '{"key": null, "value_b64": "!!"}',
        "line 1: value_b64: invalid base64: Only base64 data is allowed",
    ),
    (
        '{"key": null, "value": null, "partition": -1}',
        "line 1: partition: expected a non-negative integer, got -1",
    ),
    (
        '{"key": null, "value": null, "partition": "1"}',
        'line 1: partition: expected a non-negative integer, got "1"',
    ),
    ('{"key": {}, "value": null}', "line 1: key.contact_id: missing required field"),
    (
        '{"key": "c1", "value": null}',
        'line 1: key: expected record com.acme.crm.contacts.Key, got "c1"',
    ),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_line_errors_name_line_and_path(
    registry: FileRegistry, contracts: dict[str, TopicContract], line: str, message: str
) -> None:
    records, errors = parse_lines([line], registry, contracts["crm.contacts"])
    assert records == []
    assert [str(e) for e in errors] == [message]


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ({"amount": 1.234}, "value.after.amount: 1.234 has more than 2 fractional digits"),
        (
            {"amount": "12345678901234567.5"},
            'value.after.amount: "12345678901234567.5" does not fit decimal(18,2)',
        ),
        ({"amount": "NaN"}, 'value.after.amount: expected decimal(18,2), got "NaN"'),
        ({"amount": "ten"}, 'value.after.amount: expected decimal(18,2), got "ten"'),
        ({"close_date": "2024-02-30"}, 'value.after.close_date: invalid ISO date "2024-02-30"'),
        ({"probability": 2**31}, "value.after.probability: 2147483648 is out of range for int"),
        ({"probability": 1.5}, "value.after.probability: expected int, got 1.5"),
    ],
)
def test_exact_number_errors(
    registry: FileRegistry,
    contracts: dict[str, TopicContract],
    after: dict[str, Any],
    message: str,
) -> None:
    lines = ["", opportunity_line(**after)]
    _, errors = parse_lines(lines, registry, contracts["crm.opportunities"])
    assert [str(e) for e in errors] == [f"line 2: {message}"]


def test_every_bad_line_is_reported(
    registry: FileRegistry, contracts: dict[str, TopicContract]
) -> None:
    lines = [contact_line(), contact_line(email=1), contact_line(), "nope", contact_line()]
    records, errors = parse_lines(lines, registry, contracts["crm.contacts"])
    assert [r.line for r in records] == [1, 3, 5]
    assert [e.line for e in errors] == [2, 4]


def test_produce_file_sends_nothing_when_any_line_is_bad(
    registry: FileRegistry, contracts: dict[str, TopicContract], tmp_path: Path
) -> None:
    path = tmp_path / "contacts.jsonl"
    lines = [contact_line()] + [contact_line(email=i) for i in range(25)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProduceError) as exc:
        # An unreachable bootstrap proves nothing was attempted: validation fails first.
        produce_file("127.0.0.1:9", registry, contracts, "crm.contacts", path)
    message = str(exc.value)
    head, *listed = message.splitlines()
    assert head == f"{path}: 25 invalid line(s), nothing was sent:"
    assert listed[0] == "line 2: value.after.email: expected string, got 0"
    assert listed[19] == "line 21: value.after.email: expected string, got 19"
    assert listed[20:] == ["... and 5 more"]


def test_produce_file_needs_a_contract(
    registry: FileRegistry, contracts: dict[str, TopicContract], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"^topic nope has no contract \(topics: crm\.accounts, "):
        produce_file("127.0.0.1:9", registry, contracts, "nope", tmp_path / "x.jsonl")


# --------------------------------------------------------------------------- partitioning

# From Kafka's UtilsTest.testMurmur2: the Java client's reference values.
MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), list(MURMUR2.items()))
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_default_partition_is_positive_modulo() -> None:
    assert default_partition(b"21", 3) == (-973932308 & 0x7FFFFFFF) % 3
    assert {default_partition(bytes([i]), 5) for i in range(200)} == set(range(5))


@pytest.mark.parametrize(
    ("data", "line", "byte"),
    [
        (b"\xf7\x00\x13binary", 1, "0xf7"),  # a binary file
        (contact_line().encode() + b'\n{"key": {"contact_id": "c\xe9"}}\n', 2, "0xe9"),  # Latin-1
    ],
)
def test_a_file_that_is_not_utf8_is_one_line_and_sends_nothing(
    registry: FileRegistry,
    contracts: dict[str, TopicContract],
    tmp_path: Path,
    data: bytes,
    line: int,
    byte: str,
) -> None:
    path = tmp_path / "contacts.jsonl"
    path.write_bytes(data)
    with pytest.raises(ProduceError) as exc:
        produce_file("127.0.0.1:9", registry, contracts, "crm.contacts", path)
    assert str(exc.value) == (
        f"{path}: line {line} is not UTF-8 text (byte {byte}): expected JSON lines;"
        " nothing was sent"
    )
