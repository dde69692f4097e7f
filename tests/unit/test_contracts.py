"""Contracts: loading, Avro -> Arrow mapping, decoding and every quarantine reason."""

from __future__ import annotations

import copy
import io
import json
import pickle
import random
import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cdc.errors import ConfigError
from cdc.ingest.contracts import (
    QuarantineReason,
    TopicContract,
    avro_to_arrow_type,
    load_contracts,
    parse_contracts,
)
from cdc.ingest.decoder import TopicDecoder, validate_contracts
from cdc.ingest.registry import AvroType, FileRegistry, RegisteredSchema, frame
from tests.support.decoding import decode_messages, kafka_batch

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
SOURCE = {
    "version": "2.5",
    "connector": "postgresql",
    "name": "crm",
    "db": "crm",
    "table": "contacts",
    "ts_ms": T0,
    "lsn": 42,
    "txId": 7,
    "snapshot": False,
}


def contact(**overrides: Any) -> dict[str, Any]:
    row = {
        "contact_id": "c1",
        "account_id": "a1",
        "email": "jo@example.com",
        "first_name": "Jo",
        "last_name": "Doe",
        "phone": None,
        "updated_at": T0,
    }
    row.update(overrides)
    return row


def envelope(op: str, before: Any = None, after: Any = None) -> dict[str, Any]:
    return {"before": before, "after": after, "op": op, "ts_ms": T0 + 5, "source": SOURCE}


def encode(schema: RegisteredSchema, datum: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.parsed, datum)
    return frame(schema.schema_id, out.getvalue())


@pytest.fixture(scope="module")
def decoder(registry: FileRegistry, contracts: dict[str, TopicContract]) -> TopicDecoder:
    return TopicDecoder(registry, contracts["crm.contacts"])


@pytest.fixture(scope="module")
def key(registry: FileRegistry) -> bytes:
    return encode(registry.latest("crm.contacts-key"), {"contact_id": "c1"})


def decode_one(decoder: TopicDecoder, key: bytes | None, value: bytes | None) -> dict[str, Any]:
    batch = decode_messages(decoder, [("crm.contacts", 1, 10, T0, key, value)])
    assert batch.schema == decoder.arrow_schema
    assert batch.num_rows == 1
    return dict(batch.to_pylist()[0])


def quarantined(row: dict[str, Any]) -> tuple[str, str]:
    assert row["value"] is None
    return row["error_code"], row["error"]


# --------------------------------------------------------------------------- contracts file


def test_shipped_contracts_fit_the_registry(
    registry: FileRegistry, contracts: dict[str, TopicContract]
) -> None:
    assert sorted(contracts) == [
        "crm.accounts",
        "crm.contacts",
        "crm.opportunities",
        "events.behavior",
        "events.orders",
        "ref.fx_rates",
    ]
    assert validate_contracts(contracts, registry) == []
    fx = contracts["ref.fx_rates"]
    assert (fx.kind, fx.key_subject, fx.rules.ranges["rate"].min) == (
        "flat",
        "ref.fx_rates-key",
        Decimal("0.00000001"),
    )


BASE_SPEC = {"key_subject": "crm.contacts-key", "value_subject": "crm.contacts-value"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {**BASE_SPEC, "kind": "flat", "rule": {}},
            "c.yaml: topic 't': unknown key(s) rule (valid keys: decimals, key_required,"
            " key_subject, kind, rules, tags, value_subject)",
        ),
        (
            {**BASE_SPEC, "kind": "flat", "rules": {"requires": []}},
            "c.yaml: topic 't' rules: unknown key(s) requires (valid keys: allowed, patterns, "
            "ranges, required)",
        ),
        (
            {**BASE_SPEC, "kind": "debezium"},
            "c.yaml: topic 't': kind 'debezium' is invalid (valid: envelope, flat)",
        ),
        (
            {"kind": "flat", "value_subject": "x"},
            "c.yaml: topic 't': 'key_subject' is required and must be a string",
        ),
        (
            {**BASE_SPEC, "kind": "flat", "rules": {"patterns": {"a": "("}}},
            "c.yaml: topic 't' rules: pattern for 'a' is invalid: missing ), unterminated "
            "subpattern at position 0",
        ),
        (
            {**BASE_SPEC, "kind": "flat", "rules": {"ranges": {"a": {"min": 5, "max": 1}}}},
            "c.yaml: topic 't' rules range 'a': min 5 is greater than max 1",
        ),
        (
            {**BASE_SPEC, "kind": "flat", "rules": {"ranges": {"a": {"low": 1}}}},
            "c.yaml: topic 't' rules range 'a': unknown key(s) low (valid keys: max, min)",
        ),
    ],
)
def test_contract_errors_list_valid_keys(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_contracts({"t": spec}, source="c.yaml")
    assert str(exc.value) == message


def test_missing_contracts_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^contracts file .*/none\.yaml does not exist$"):
        load_contracts(tmp_path / "none.yaml")


def test_rule_paths_are_checked_against_the_reader_schema(registry: FileRegistry) -> None:
    contract = parse_contracts(
        {"t": {**BASE_SPEC, "kind": "envelope", "rules": {"required": ["after.mail"]}}}
    )["t"]
    with pytest.raises(ConfigError) as exc:
        TopicDecoder(registry, contract)
    assert str(exc.value) == (
        "contract 't': rule path 'after.mail': no field 'mail' (fields: contact_id, account_id, "
        "email, first_name, last_name, phone, updated_at, marketing_opt_in, job_title)"
    )
    ranged = parse_contracts(
        {"t": {**BASE_SPEC, "kind": "flat", "rules": {"ranges": {"after.email": {"min": 1}}}}}
    )["t"]
    with pytest.raises(ConfigError, match=r"range on 'after.email' needs a number, not string"):
        TopicDecoder(registry, ranged)


# --------------------------------------------------------------------------- Avro -> Arrow


def test_avro_to_arrow_mapping() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "s", "type": "string"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}},
            {"name": "i", "type": "int"},
            {"name": "l", "type": ["null", "long"], "default": None},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "b", "type": "boolean"},
            {"name": "by", "type": "bytes"},
            {"name": "fx", "type": {"type": "fixed", "name": "F", "size": 4}},
            {
                "name": "m",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2},
            },
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "tu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "dt", "type": {"type": "int", "logicalType": "date"}},
            {"name": "a", "type": {"type": "array", "items": "string"}},
            {"name": "mp", "type": {"type": "map", "values": ["null", "int"]}},
            {"name": "r", "type": ["null", {"type": "record", "name": "S", "fields": []}]},
        ],
    }
    assert avro_to_arrow_type(schema) == pa.struct(
        [
            pa.field("s", pa.string(), nullable=False),
            pa.field("e", pa.string(), nullable=False),
            pa.field("i", pa.int32(), nullable=False),
            pa.field("l", pa.int64()),
            pa.field("f", pa.float32(), nullable=False),
            pa.field("d", pa.float64(), nullable=False),
            pa.field("b", pa.bool_(), nullable=False),
            pa.field("by", pa.binary(), nullable=False),
            pa.field("fx", pa.binary(), nullable=False),
            pa.field("m", pa.decimal128(18, 2), nullable=False),
            pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("tu", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("dt", pa.date32(), nullable=False),
            pa.field("a", pa.list_(pa.field("item", pa.string(), nullable=False)), nullable=False),
            pa.field("mp", pa.map_(pa.string(), pa.int32()), nullable=False),
            pa.field("r", pa.struct([])),
        ]
    )


def test_nested_nullable_relaxes_every_nested_field() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "s", "type": "string"},
            {"name": "a", "type": {"type": "array", "items": "int"}},
            {
                "name": "r",
                "type": {
                    "type": "record",
                    "name": "S",
                    "fields": [
                        {"name": "b", "type": "boolean"},
                    ],
                },
            },
        ],
    }
    assert avro_to_arrow_type(schema, nested_nullable=True) == pa.struct(
        [
            pa.field("s", pa.string()),
            pa.field("a", pa.list_(pa.int32())),
            pa.field("r", pa.struct([pa.field("b", pa.bool_())])),
        ]
    )


def test_multi_type_union_is_a_config_error() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "u", "type": ["string", "int"]}]}
    with pytest.raises(ConfigError) as exc:
        avro_to_arrow_type(schema)
    assert str(exc.value) == (
        "'u': union union[string, int] has several non-null branches; only [null, T] unions "
        "map to Arrow"
    )


def test_output_schema_is_exact(decoder: TopicDecoder, registry: FileRegistry) -> None:
    # Nested fields are all nullable (see avro_to_arrow_type's nested_nullable).
    value_type = avro_to_arrow_type(
        registry.latest("crm.contacts-value").schema, nested_nullable=True
    )
    assert decoder.arrow_schema == pa.schema(
        [
            pa.field("topic", pa.string(), nullable=False),
            pa.field("partition", pa.int32(), nullable=False),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("key_raw", pa.binary()),
            pa.field("value_raw", pa.binary()),
            pa.field("key_schema_id", pa.int32()),
            pa.field("value_schema_id", pa.int32()),
            pa.field("key", pa.struct([pa.field("contact_id", pa.string())])),
            pa.field("value", value_type),
            pa.field("extra_fields", pa.list_(pa.string())),
            pa.field("error_code", pa.string()),
            pa.field("error", pa.string()),
        ]
    )
    after = value_type.field("after").type
    assert [f.name for f in after][-2:] == ["marketing_opt_in", "job_title"]
    assert after.field("updated_at").type == pa.timestamp("us", tz="UTC")


# --------------------------------------------------------------------------- decoding


def test_valid_envelope(decoder: TopicDecoder, registry: FileRegistry, key: bytes) -> None:
    value = encode(registry.latest("crm.contacts-value"), envelope("c", after=contact()))
    row = decode_one(decoder, key, value)
    ts = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert row["timestamp"] == ts
    assert (row["topic"], row["partition"], row["offset"]) == ("crm.contacts", 1, 10)
    assert (row["key_raw"], row["value_raw"]) == (key, value)
    assert (row["key_schema_id"], row["value_schema_id"]) == (3, 15)
    assert row["key"] == {"contact_id": "c1"}
    assert row["value"]["after"] == {
        **contact(),
        "updated_at": ts,
        "marketing_opt_in": False,
        "job_title": None,
    }
    assert row["value"]["source"]["lsn"] == 42
    assert (row["extra_fields"], row["error_code"], row["error"]) == (None, None, None)


def test_tombstone_is_valid(decoder: TopicDecoder, key: bytes) -> None:
    row = decode_one(decoder, key, None)
    assert (row["key"], row["value"], row["value_schema_id"], row["error_code"]) == (
        {"contact_id": "c1"},
        None,
        None,
        None,
    )


def test_delete_skips_after_rules(
    decoder: TopicDecoder, registry: FileRegistry, key: bytes
) -> None:
    value = encode(registry.latest("crm.contacts-value"), envelope("d", before=contact()))
    row = decode_one(decoder, key, value)
    assert row["error_code"] is None
    assert row["value"]["after"] is None


def test_v1_writer_is_read_with_v2_defaults(
    decoder: TopicDecoder, registry: FileRegistry, key: bytes
) -> None:
    value = encode(registry.get("crm.contacts-value", 1), envelope("u", contact(), contact()))
    row = decode_one(decoder, key, value)
    assert row["error_code"] is None
    assert row["value_schema_id"] == 4
    assert row["value"]["after"]["marketing_opt_in"] is False
    assert row["value"]["after"]["job_title"] is None
    assert row["extra_fields"] is None


def test_every_message_yields_one_row_in_order(
    decoder: TopicDecoder, registry: FileRegistry, key: bytes
) -> None:
    good = encode(registry.latest("crm.contacts-value"), envelope("c", after=contact()))
    messages = [("crm.contacts", 0, i, -1, key, good if i % 2 else b"junk") for i in range(6)]
    batch = decode_messages(decoder, messages)
    assert batch.column("offset").to_pylist() == list(range(6))
    assert batch.column("error_code").to_pylist() == ["not_framed", None] * 3
    assert batch.column("timestamp").null_count == 6
    assert decode_messages(decoder, []).num_rows == 0


def _writer_registry(registry_path: Path, tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    """The registry plus a subject whose versions are contact envelopes with other rows."""
    root = tmp_path / "avro"
    shutil.copytree(registry_path, root)
    base = json.loads((root / "crm.contacts-value" / "v1.avsc").read_text())
    index = json.loads((root / "index.json").read_text())
    index["subjects"]["test.writers-value"] = []
    (root / "test.writers-value").mkdir()
    for version, fields in enumerate(rows, start=1):
        schema = copy.deepcopy(base)
        schema["fields"][0]["type"][1]["fields"] = fields
        (root / "test.writers-value" / f"v{version}.avsc").write_text(json.dumps(schema))
        index["subjects"]["test.writers-value"].append({"version": version, "id": 100 + version})
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_extra_writer_fields_are_tolerated_and_counted(
    registry_path: Path, tmp_path: Path, contracts: dict[str, TopicContract], key: bytes
) -> None:
    base = json.loads((registry_path / "crm.contacts-value" / "v2.avsc").read_text())
    fields = base["fields"][0]["type"][1]["fields"] + [{"name": "nickname", "type": "string"}]
    registry = FileRegistry.load(_writer_registry(registry_path, tmp_path, [fields]))
    decoder = TopicDecoder(registry, contracts["crm.contacts"])
    row_value = {**contact(), "marketing_opt_in": True, "job_title": "cto", "nickname": "J"}
    value = encode(registry.by_id(101), envelope("c", after=row_value))
    row = decode_one(decoder, key, value)
    assert row["error_code"] is None
    assert row["value_schema_id"] == 101
    assert row["extra_fields"] == ["value.before.nickname", "value.after.nickname"]
    assert "nickname" not in row["value"]["after"]
    assert row["value"]["after"]["job_title"] == "cto"


def test_unresolvable_writer_is_a_schema_mismatch(
    registry_path: Path, tmp_path: Path, contracts: dict[str, TopicContract], key: bytes
) -> None:
    base = json.loads((registry_path / "crm.contacts-value" / "v1.avsc").read_text())
    without_email = [f for f in base["fields"][0]["type"][1]["fields"] if f["name"] != "email"]
    registry = FileRegistry.load(_writer_registry(registry_path, tmp_path, [without_email]))
    decoder = TopicDecoder(registry, contracts["crm.contacts"])
    row_value = {k: v for k, v in contact().items() if k != "email"}
    row = decode_one(decoder, key, encode(registry.by_id(101), envelope("c", after=row_value)))
    assert quarantined(row) == (
        "schema_mismatch",
        "value writer schema 101 (test.writers-value v1) cannot be read as crm.contacts-value "
        "v3: field 'value.before.email' was added without a default (and 1 more)",
    )
    assert row["value_schema_id"] == 101
    assert row["key"] == {"contact_id": "c1"}


@pytest.mark.parametrize(
    ("make_value", "code", "error"),
    [
        (
            lambda r: b"hello",
            "not_framed",
            "value is not framed: bad magic byte 104 (expected 0)",
        ),
        (
            lambda r: b"\x00\x00\x00",
            "not_framed",
            "value is not framed: too short for the Confluent wire format: 3 bytes, need at "
            "least 5",
        ),
        (
            lambda r: b"",
            "not_framed",
            "value is not framed: too short for the Confluent wire format: 0 bytes, need at "
            "least 5",
        ),
        (
            lambda r: frame(999, b"\x00"),
            "unknown_schema_id",
            "value schema id 999 is not in the registry",
        ),
        (
            lambda r: encode(r.latest("crm.contacts-value"), envelope("c", after=contact()))[:-4],
            "decode_error",
            "value is truncated: the Avro body of writer schema 15 (crm.contacts-value v3) "
            "ends early",
        ),
        (
            lambda r: (
                encode(r.latest("crm.contacts-value"), envelope("c", after=contact())) + b"\x00\x00"
            ),
            "decode_error",
            "value has 2 trailing byte(s) after the Avro body of writer schema 15 "
            "(crm.contacts-value v3)",
        ),
        (
            lambda r: frame(15, b"\x04"),
            "decode_error",
            "value could not be decoded with writer schema 15 (crm.contacts-value v3): "
            "IndexError: list index out of range",
        ),
        (
            lambda r: encode(r.latest("events.orders-value"), _order()),
            "schema_mismatch",
            "value writer schema 8 (events.orders-value v1) cannot be read as "
            "crm.contacts-value v3: field 'value' changed type record com.acme.events.orders.Value"
            " -> record com.acme.crm.contacts.Envelope",
        ),
        (
            lambda r: frame(13, b"\x00" * 1_048_600),
            "oversize",
            "message is 1048613 bytes (key + value), over max_message_bytes 1048576",
        ),
        (
            lambda r: encode(
                r.latest("crm.contacts-value"), envelope("c", after=contact(email="nope"))
            ),
            "rule_violation",
            r"after.email: 'nope' does not match pattern '[^@\s]+@[^@\s]+\.[^@\s]+'",
        ),
        (
            lambda r: encode(
                r.latest("crm.contacts-value"), envelope("c", after=contact(email=""))
            ),
            "rule_violation",
            r"after.email: required but empty; after.email: '' does not match pattern "
            r"'[^@\s]+@[^@\s]+\.[^@\s]+'",
        ),
        (
            lambda r: encode(r.latest("crm.contacts-value"), envelope("x", after=contact())),
            "rule_violation",
            "op: 'x' is not one of c, u, d, r",
        ),
        (
            lambda r: encode(r.latest("crm.contacts-value"), envelope("u", before=contact())),
            "rule_violation",
            "after: null for op 'u' (required for c, u, r)",
        ),
        (
            lambda r: encode(r.latest("crm.contacts-value"), envelope("d")),
            "rule_violation",
            "before: null for op 'd' (required for d)",
        ),
    ],
    ids=[
        "bad-magic",
        "too-short",
        "empty",
        "unknown-id",
        "truncated",
        "trailing-bytes",
        "corrupt-body",
        "other-topic-schema",
        "oversize",
        "email-pattern",
        "empty-email",
        "bad-op",
        "update-without-after",
        "delete-without-before",
    ],
)
def test_quarantine_reasons(
    decoder: TopicDecoder,
    registry: FileRegistry,
    key: bytes,
    make_value: Any,
    code: str,
    error: str,
) -> None:
    value = make_value(registry)
    row = decode_one(decoder, key, value)
    assert quarantined(row) == (code, error)
    assert QuarantineReason(code) == code
    assert row["value_raw"] == value
    assert row["key_raw"] == key


def _order() -> dict[str, Any]:
    return {
        "event_id": "e1",
        "order_id": "o1",
        "account_id": "a1",
        "contact_id": None,
        "status": "new",
        "amount": Decimal("10.00"),
        "currency": "EUR",
        "ordered_at": T0,
        "event_ts": T0,
    }


@pytest.mark.parametrize(
    ("make_key", "error"),
    [
        (lambda r: None, "key is absent (crm.contacts requires a key)"),
        (
            lambda r: b"c1",
            "key is not framed: too short for the Confluent wire format: 2 bytes, need at least 5",
        ),
        (lambda r: frame(77, b"\x04c1"), "key schema id 77 is not in the registry"),
        (
            lambda r: frame(3, b"\x09"),
            "key is truncated: the Avro body of writer schema 3 (crm.contacts-key v1) ends early",
        ),
        (
            lambda r: encode(r.latest("crm.accounts-key"), {"account_id": "a1"}),
            "key writer schema 1 (crm.accounts-key v1) cannot be read as crm.contacts-key v1: "
            "field 'key' changed type record com.acme.crm.accounts.Key -> record "
            "com.acme.crm.contacts.Key",
        ),
    ],
    ids=["absent", "not-framed", "unknown-id", "truncated", "other-key-schema"],
)
def test_missing_key(
    decoder: TopicDecoder, registry: FileRegistry, make_key: Any, error: str
) -> None:
    value = encode(registry.latest("crm.contacts-value"), envelope("c", after=contact()))
    row = decode_one(decoder, make_key(registry), value)
    assert quarantined(row) == ("missing_key", error)
    assert row["key"] is None


@pytest.mark.parametrize("columnar", [True, False], ids=["columnar", "fastavro"])
def test_a_negative_schema_id_is_not_framed(
    registry: FileRegistry, contracts: dict[str, TopicContract], key: bytes, columnar: bool
) -> None:
    """Confluent's clients read the id signed: a header with its top bit set holds a negative
    id, which no registry assigns; both paths quarantine it as not framed, saying why."""
    decoder = TopicDecoder(registry, contracts["crm.contacts"], columnar=columnar)
    good = encode(registry.latest("crm.contacts-value"), envelope("c", after=contact()))
    negative = b"\x00\x80\x00\x00\x0f" + good[5:]  # id 15 with the top bit set
    messages = [
        ("crm.contacts", 0, 1, T0, key, good),
        ("crm.contacts", 0, 2, T0, key, negative),
        ("crm.contacts", 0, 3, T0, b"\x00\xff\xff\xff\xfd\x04c1", good),
    ]
    rows = decode_messages(decoder, messages).to_pylist()
    assert [(r["error_code"], r["error"]) for r in rows] == [
        (None, None),
        (
            "not_framed",
            "value is not framed: negative schema id -2147483633 (a registry assigns"
            " 0..2147483647)",
        ),
        (
            "missing_key",
            "key is not framed: negative schema id -3 (a registry assigns 0..2147483647)",
        ),
    ]
    assert [r["value_schema_id"] for r in rows] == [15, None, None]
    assert rows[2]["key_schema_id"] is None


def test_key_optional_when_the_contract_says_so(
    registry: FileRegistry, contracts: dict[str, TopicContract]
) -> None:
    contract = contracts["crm.contacts"]
    relaxed = TopicContract(
        contract.topic,
        contract.key_subject,
        contract.value_subject,
        "envelope",
        contract.rules,
        key_required=False,
    )
    value = encode(registry.latest("crm.contacts-value"), envelope("c", after=contact()))
    row = decode_one(TopicDecoder(registry, relaxed), None, value)
    assert (row["key"], row["error_code"]) == (None, None)


def test_key_decoded_even_when_value_is_quarantined(decoder: TopicDecoder, key: bytes) -> None:
    row = decode_one(decoder, key, b"junk")
    assert row["key"] == {"contact_id": "c1"}
    assert row["key_schema_id"] == 3


def test_smaller_size_limit(registry: FileRegistry, contracts: dict[str, TopicContract]) -> None:
    decoder = TopicDecoder(registry, contracts["crm.contacts"], max_message_bytes=10)
    row = decode_one(decoder, b"k" * 6, b"v" * 5)
    assert quarantined(row) == (
        "oversize",
        "message is 11 bytes (key + value), over max_message_bytes 10",
    )


# --------------------------------------------------------------------------- topic rules


def _flat(
    registry: FileRegistry,
    contracts: dict[str, TopicContract],
    topic: str,
    key: dict[str, Any],
    value: dict[str, Any],
) -> dict[str, Any]:
    decoder = TopicDecoder(registry, contracts[topic])
    k = encode(registry.latest(f"{topic}-key"), key)
    v = encode(registry.latest(f"{topic}-value"), value)
    return dict(decode_messages(decoder, [(topic, 0, 0, T0, k, v)]).to_pylist()[0])


def test_opportunity_rules(registry: FileRegistry, contracts: dict[str, TopicContract]) -> None:
    opp = {
        "opportunity_id": "o1",
        "account_id": "a1",
        "contact_id": None,
        "name": "Deal",
        "stage": "won",
        "amount": Decimal("1000.00"),
        "currency": "USD",
        "close_date": date(2024, 3, 1),
        "probability": 150,
        "updated_at": T0,
    }
    topic = "crm.opportunities"
    bad = _flat(registry, contracts, topic, {"opportunity_id": "o1"}, envelope("c", after=opp))
    assert quarantined(bad) == (
        "rule_violation",
        "after.stage: 'won' is not one of prospecting, qualification, proposal, negotiation, "
        "closed_won, closed_lost; after.probability: 150 is above the maximum 100",
    )
    fixed = {**opp, "stage": "closed_won", "probability": 100}
    good = _flat(registry, contracts, topic, {"opportunity_id": "o1"}, envelope("c", after=fixed))
    assert good["error_code"] is None
    assert good["value"]["after"]["close_date"] == date(2024, 3, 1)
    assert good["value"]["after"]["amount"] == Decimal("1000.00")


def test_behavior_and_fx_rules(registry: FileRegistry, contracts: dict[str, TopicContract]) -> None:
    event = {
        "event_id": "e1",
        "contact_id": "c1",
        "session_id": "s1",
        "event_type": "scroll",
        "url": None,
        "properties": {"ab": "x"},
        "occurred_at": T0,
    }
    row = _flat(registry, contracts, "events.behavior", {"contact_id": "c1"}, event)
    assert quarantined(row) == (
        "rule_violation",
        "event_type: 'scroll' is not one of page_view, click, signup, download, email_open",
    )
    ok = _flat(
        registry,
        contracts,
        "events.behavior",
        {"contact_id": "c1"},
        {**event, "event_type": "click"},
    )
    assert ok["value"]["properties"] == [("ab", "x")]
    rate = {
        "base_currency": "EUR",
        "quote_currency": "USD",
        "rate": Decimal("0E-8"),
        "effective_at": T0,
        "provider": "ecb",
    }
    fx_key = {"base_currency": "EUR", "quote_currency": "USD"}
    zero = _flat(registry, contracts, "ref.fx_rates", fx_key, rate)
    assert quarantined(zero) == (
        "rule_violation",
        "rate: 0.00000000 is below the minimum 0.00000001",
    )
    tiny = _flat(registry, contracts, "ref.fx_rates", fx_key, {**rate, "rate": Decimal("1E-8")})
    assert tiny["error_code"] is None


def test_decoder_pickles_for_executors(decoder: TopicDecoder, key: bytes) -> None:
    decode_messages(decoder, [("crm.contacts", 0, 0, T0, key, None)])
    clone = pickle.loads(pickle.dumps(decoder))
    row = decode_one(clone, key, None)
    assert row["key"] == {"contact_id": "c1"}
    assert clone.arrow_schema == decoder.arrow_schema


# --------------------------------------------------------------------------- columnar path
# The vectorised decoder must produce exactly what fastavro + the per-record checks produce,
# for clean records (which it decodes) and for everything else (which it hands back).


_NICE = {
    "email": ["jo@example.com", "zoë.ü@exämple.de", "x@y.z"],
    "country": ["DE", "FR"],
    "currency": ["USD", "EUR"],
    "base_currency": ["USD"],
    "quote_currency": ["EUR", "JPY"],
    "stage": ["proposal", "closed_won"],
    "event_type": ["click", "signup"],
    "op": ["c", "u", "d", "r"],
}


def _random_datum(node: AvroType, rng: random.Random, name: str = "") -> Any:
    """A value of ``node`` that fastavro can write, edge values included.

    Mostly values that pass the shipped contracts (so that most rows take the columnar
    path), sometimes values that break them.
    """
    kind, logical = node.kind, node.logical
    if kind == "union":
        branches = node.branches
        if name in ("before", "after") or rng.random() < 0.7:
            branches = node.non_null_branches() or branches
        return _random_datum(rng.choice(branches), rng, name)
    if kind == "record":
        record = {f.name: _random_datum(f.type, rng, f.name) for f in node.fields}
        if {"op", "before", "after"} <= record.keys() and rng.random() < 0.9:
            record["before" if record["op"] in ("c", "r") else "after"] = None
        return record
    if kind == "string" and name in _NICE and rng.random() < 0.9:
        return rng.choice(_NICE[name])
    if kind == "null":
        return None
    if kind == "boolean":
        return rng.random() < 0.5
    if logical == "timestamp-millis":
        return rng.choice(
            [0, -1, T0, 253_402_300_799_999, -62_135_596_800_000, rng.randrange(2**41)]
        )
    if logical == "date":
        return rng.choice([0, -719_162, 2_932_896, rng.randrange(-(10**5), 10**5)])
    if logical == "decimal":
        assert node.precision is not None and node.scale is not None
        limit = 10**node.precision
        digits = rng.choice([0, 1, limit - 1, rng.randrange(limit), rng.randrange(2**70)])
        return Decimal(digits * rng.choice([1, -1])).scaleb(-node.scale)
    if kind == "int":
        return rng.choice(
            [0, -1, 1, 63, -64, 64, 2**31 - 1, -(2**31), rng.randrange(-(2**31), 2**31)]
        )
    if kind == "long":
        return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-(2**63), 2**63)])
    if kind in ("float", "double"):
        return rng.choice(
            [0.0, -0.0, 1.5, -2.25, float("inf"), 1e300 if kind == "double" else 3e38]
        )
    if kind == "string":
        return rng.choice(
            ["", "x", "jo@example.com", "DE", "Zoë Ünïcødé ✓ 🐍", "a" * 300, "USD", "EUR", "paid"]
        )
    if kind in ("bytes", "fixed"):
        size = node.size if kind == "fixed" else rng.randrange(0, 40)
        return bytes(rng.randrange(256) for _ in range(size or 0))
    if kind == "enum":
        return rng.choice(node.symbols)
    if kind == "array":
        assert node.items is not None
        return [_random_datum(node.items, rng) for _ in range(rng.randrange(3))]
    if kind == "map":
        assert node.items is not None
        return {f"k{i}": _random_datum(node.items, rng) for i in range(rng.randrange(3))}
    raise AssertionError(kind)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """A damaged copy: a flipped byte, a cut, extra bytes or a forged varint."""
    how = rng.randrange(5)
    if how == 0 and len(data) > 5:
        at = rng.randrange(5, len(data))
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
    if how == 1:
        return data[: rng.randrange(len(data))]
    if how == 2:
        return data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
    if how == 3 and len(data) > 6:
        at = rng.randrange(5, len(data))
        return data[:at] + b"\xff" * rng.randrange(1, 12) + b"\x01" + data[at:]
    return bytes([rng.randrange(3)]) + data[1:]


def _random_messages(
    registry: FileRegistry, contract: TopicContract, rng: random.Random, count: int
) -> list[tuple[str, int, int, int, bytes | None, bytes | None]]:
    key_schema = registry.latest(contract.key_subject)
    latest = registry.latest(contract.value_subject)
    versions = list(range(1, latest.version + 1))
    messages: list[tuple[str, int, int, int, bytes | None, bytes | None]] = []
    for offset in range(count):
        writer = (
            latest
            if rng.random() < 0.85
            else registry.get(contract.value_subject, rng.choice(versions))
        )
        key: bytes | None = encode(key_schema, _random_datum(key_schema.avro_type, rng))
        try:
            value: bytes | None = encode(writer, _random_datum(writer.avro_type, rng))
        except ValueError:  # a decimal too wide for fastavro to write
            continue
        roll = rng.random()
        if roll < 0.05:
            value = None
        elif roll < 0.07:
            key = None
        elif roll < 0.25:
            value = _mutate(value, rng)  # type: ignore[arg-type]
        elif roll < 0.28:
            key = _mutate(key, rng)  # type: ignore[arg-type]
        stamp = rng.choice([T0 + offset, -1])
        messages.append((contract.topic, rng.randrange(3), offset, stamp, key, value))
    return messages


@pytest.mark.parametrize("seed", range(6))
def test_columnar_decoding_equals_fastavro_for_every_contract(
    registry: FileRegistry, contracts: dict[str, TopicContract], seed: int
) -> None:
    for topic, contract in sorted(contracts.items()):
        rng = random.Random(f"{seed}-{topic}")
        messages = _random_messages(registry, contract, rng, 300)
        expected = decode_messages(TopicDecoder(registry, contract, columnar=False), messages)
        got = decode_messages(TopicDecoder(registry, contract), messages)
        assert got.schema == expected.schema
        assert got.to_pylist() == expected.to_pylist(), topic
        assert got.equals(expected), topic


def test_columnar_decoding_of_clean_envelopes(
    registry: FileRegistry, contracts: dict[str, TopicContract], key: bytes
) -> None:
    value_schema = registry.latest("crm.contacts-value")
    old = contact(marketing_opt_in=True, job_title=None)
    new = contact(email="jo.2@example.com", phone="+1 555", marketing_opt_in=False, job_title="CTO")
    values = [
        encode(value_schema, envelope("c", after=old)),
        encode(value_schema, envelope("u", before=old, after=new)),
        None,
        encode(value_schema, envelope("d", before=new)),
        encode(value_schema, envelope("u", before=old, after=contact(email="broken"))),
    ]
    messages = [("crm.contacts", 0, i, T0 + i, key, v) for i, v in enumerate(values)]
    decoder = TopicDecoder(registry, contracts["crm.contacts"])
    got = decode_messages(decoder, messages)
    assert got.equals(
        decode_messages(TopicDecoder(registry, contracts["crm.contacts"], columnar=False), messages)
    )
    rows = got.to_pylist()
    assert [r["error_code"] for r in rows] == [None, None, None, None, "rule_violation"]
    assert rows[1]["value"]["after"]["job_title"] == "CTO"
    assert rows[2]["value"] is None and rows[2]["value_schema_id"] is None
    assert rows[3]["value"]["after"] is None


@pytest.mark.parametrize("columnar", [True, False])
def test_value_wider_than_its_arrow_type_is_quarantined_not_raised(
    registry: FileRegistry, contracts: dict[str, TopicContract], columnar: bool
) -> None:
    # fastavro writes and reads a decimal with more digits than its precision (rounding it);
    # pyarrow refuses the result. One such record must not fail the whole batch.
    topic = "ref.fx_rates"
    fx_key = encode(
        registry.latest(f"{topic}-key"), {"base_currency": "EUR", "quote_currency": "USD"}
    )
    rate = {
        "base_currency": "EUR",
        "quote_currency": "USD",
        "rate": Decimal("1.5"),
        "effective_at": T0,
        "provider": "ecb",
    }
    schema = registry.latest(f"{topic}-value")
    wider = copy.deepcopy(schema.schema)  # same bytes on the wire, only the writer's check differs
    next(f for f in wider["fields"] if f["name"] == "rate")["type"]["precision"] = 38
    wide = io.BytesIO()
    fastavro.schemaless_writer(
        wide, fastavro.parse_schema(wider), {**rate, "rate": Decimal(2**70).scaleb(-8)}
    )
    messages = [
        (topic, 0, 0, T0, fx_key, encode(schema, rate)),
        (topic, 0, 1, T0, fx_key, frame(schema.schema_id, wide.getvalue())),
    ]
    rows = decode_messages(TopicDecoder(registry, contracts[topic], columnar=columnar), messages)
    good, bad = rows.to_pylist()
    assert good["error_code"] is None and good["value"]["rate"] == Decimal("1.50000000")
    assert bad["value"] is None and bad["error_code"] == "decode_error"
    assert bad["error"].startswith("value does not fit its Arrow type: ArrowInvalid: Decimal")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("columnar", [True, False], ids=["columnar", "fastavro"])
def test_a_slice_of_a_spark_kafka_batch_and_epoch_ms_timestamps_decode_alike(
    registry: FileRegistry, contracts: dict[str, TopicContract], seed: int, columnar: bool
) -> None:
    """Spark hands ``mapInArrow`` slices of its batches: a slice gives the rows of the whole
    batch's slice, clean and broken records alike; timestamps as epoch milliseconds instead
    of Spark's timestamp type give the same rows."""
    for topic, contract in sorted(contracts.items()):
        rng = random.Random(f"spark-{seed}-{topic}")
        messages = _random_messages(registry, contract, rng, 200)
        decoder = TopicDecoder(registry, contract, columnar=columnar)
        batch = kafka_batch(messages)
        whole = decoder.decode_records(batch)
        assert whole.column("offset").to_pylist() == [m[2] for m in messages], topic
        assert decoder.decode_records(batch.slice(37, 101)).equals(whole.slice(37, 101)), topic
        at = batch.schema.get_field_index("timestamp")
        epoch_ms = pc.divide(batch.column(at).cast(pa.int64()), 1000)
        as_ms = batch.set_column(at, "timestamp", epoch_ms)
        assert decoder.decode_records(as_ms).equals(whole), topic


@pytest.mark.parametrize("columnar", [True, False], ids=["columnar", "fastavro"])
def test_source_positions_that_cannot_be_ordered_are_quarantined(
    registry: FileRegistry, contracts: dict[str, TopicContract], key: bytes, columnar: bool
) -> None:
    decoder = TopicDecoder(registry, contracts["crm.contacts"], columnar=columnar)
    schema = registry.latest("crm.contacts-value")

    def with_source(**fields: Any) -> bytes:
        value = envelope("c", after=contact())
        value["source"] = {**SOURCE, **fields}
        return encode(schema, value)

    ok = decode_one(decoder, key, with_source(connector="mysql", file="mysql-bin.000010", pos=4))
    assert ok["error_code"] is None
    no_index = decode_one(decoder, key, with_source(connector="mysql", file="mysql-bin", pos=4))
    assert quarantined(no_index)[1].startswith("source.file: 'mysql-bin' does not match pattern")
    bad_lsn = decode_one(decoder, key, with_source(connector="sqlserver", commit_lsn="27:758:5"))
    assert "source.commit_lsn: '27:758:5' does not match pattern" in quarantined(bad_lsn)[1]
