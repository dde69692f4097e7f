"""Bounded fuzzing (Hypothesis) of what reads untrusted bytes and text.

* Confluent framing: any bytes either split into (id, body) or raise ``FramingError``.
* The topic decoder: any key/value bytes (random, or a valid frame around a random or
  mutated Avro body) give exactly one row per record, either decoded or quarantined with a
  reason; the columnar path and the per-record fastavro path agree on every one.
* ``cdc produce``'s line parser: any text gives every non-blank line back as a record or an
  error naming its line, and never raises.

Bounded (``max_examples``) so the tier stays fast; a failure prints the minimal input.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.ingest.contracts import TopicContract
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.produce import encode_datum, parse_lines
from cdc.ingest.registry import FileRegistry, frame, unframe
from cdc.ingest.registry.framing import FramingError
from tests.support.decoding import decode_messages
from tests.support.envelopes import T0

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.binary(max_size=64))
def test_unframe_splits_or_refuses_any_bytes(data: bytes) -> None:
    try:
        schema_id, body = unframe(data)
    except FramingError:
        # Too short, another magic byte, or the top bit of the id set (a negative id).
        assert len(data) < 5 or data[0] != 0 or data[1] >= 0x80
        return
    # The header's id as a signed 32-bit number (as Confluent's Java clients read it), never
    # negative here, the body the rest; every frame that splits is one frame() writes.
    assert (schema_id, bytes(body)) == (int.from_bytes(data[1:5], "big", signed=True), data[5:])
    assert schema_id >= 0
    assert frame(schema_id, bytes(body)) == data


def _values(registry: FileRegistry) -> st.SearchStrategy[bytes | None]:
    value_schema = registry.latest("crm.contacts-value")
    after = {
        "contact_id": "c1",
        "account_id": "a1",
        "email": "jo@example.com",
        "first_name": "Jo",
        "last_name": "Doe",
        "updated_at": T0,
    }
    datum = {
        "before": None,
        "after": after,
        "op": "c",
        "ts_ms": T0,
        "source": {
            "version": "2",
            "connector": "pg",
            "name": "crm",
            "db": "crm",
            "table": "contacts",
            "ts_ms": T0,
        },
    }
    framed = encode_datum(value_schema, datum)
    good = bytes(unframe(framed)[1])

    def mutate(body: bytes, position: int, byte: int, cut: int) -> bytes:
        if not body:
            return body
        i = position % len(body)
        return (body[:i] + bytes([byte]) + body[i + 1 :])[: max(1, len(body) - cut)]

    mutated = st.builds(
        mutate, st.just(good), st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 8)
    )
    ids = st.sampled_from([value_schema.schema_id, 9999, 0])
    return st.one_of(
        st.just(framed),  # decodes: the clean path is fuzzed too
        st.none(),
        st.binary(max_size=80),
        st.builds(lambda i, b: frame(i, b), ids, st.binary(max_size=80)),
        st.builds(lambda b: frame(value_schema.schema_id, b), mutated),
    )


@FUZZ
@given(data=st.data())
def test_decoder_gives_one_row_per_record_decoded_or_quarantined(
    registry: FileRegistry, contracts: dict[str, TopicContract], data: st.DataObject
) -> None:
    contract = contracts["crm.contacts"]
    key = encode_datum(registry.latest("crm.contacts-key"), {"contact_id": "c1"}, root="key")
    keys = st.one_of(st.just(key), st.none(), st.binary(max_size=16))
    records = data.draw(st.lists(st.tuples(keys, _values(registry)), min_size=1, max_size=6))
    messages = [("crm.contacts", 0, i, T0 + i, k, v) for i, (k, v) in enumerate(records)]
    columnar = decode_messages(TopicDecoder(registry, contract), messages)
    rows = decode_messages(TopicDecoder(registry, contract, columnar=False), messages)
    assert columnar.num_rows == rows.num_rows == len(messages)
    assert columnar.to_pylist() == rows.to_pylist()
    for row in rows.to_pylist():
        # Decoded (a value, or a tombstone with no value) or quarantined with a reason.
        if row["error_code"] is not None:
            assert row["error"], row
        assert row["offset"] is not None


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            _JSONISH.map(json.dumps),
            st.builds(
                lambda k, v: json.dumps({"key": k, "value": v}),
                _JSONISH,
                _JSONISH,
            ),
        ),
        max_size=6,
    )
)
def test_produce_parser_answers_every_line_and_never_raises(
    registry: FileRegistry, contracts: dict[str, TopicContract], lines: list[str]
) -> None:
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    records, errors = parse_lines(lines, registry, contracts["crm.contacts"])
    answered = sorted([r.line for r in records] + [e.line for e in errors])
    assert answered == [n for n, line in enumerate(lines, start=1) if line.strip()]
    for error in errors:
        assert str(error).startswith(f"line {error.line}: ")
