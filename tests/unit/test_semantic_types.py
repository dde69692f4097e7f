"""Debezium's semantic types decoded as the Delta types they stand for (issue 25, item 5).

A PostgreSQL table as Debezium's Avro converter registers it (``connect.name`` beside each
Avro type, :mod:`tests.support.debezium_types`): ``numeric`` without a scale
(``VariableScaleDecimal``), ``date``, ``timestamp`` at three precisions, ``timestamptz``
(``ZonedTimestamp``) and times of day. Both decoder paths (columnar and fastavro) give the same
exact values; a value that does not fit its type is quarantined as ``value_out_of_range`` with
a line naming the field, never rounded.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from cdc.errors import ConfigError
from cdc.ingest.contracts import TopicContract, parse_contracts
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.registry import FileRegistry
from cdc.ingest.semantic import SEMANTIC_TYPES
from tests.support.debezium_types import CONTRACT, T0, encode, envelope, row, vsd, write_registry
from tests.support.decoding import decode_messages
from tests.support.paths import REPO_ROOT


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> FileRegistry:
    return FileRegistry.load(write_registry(tmp_path_factory.mktemp("avro")))


@pytest.fixture(scope="module")
def contract() -> TopicContract:
    return parse_contracts(CONTRACT)["pg.things"]


def decode(
    registry: FileRegistry, contract: TopicContract, rows: list[dict[str, Any]], columnar: bool
) -> pa.RecordBatch:
    decoder = TopicDecoder(registry, contract, columnar=columnar)
    messages = []
    for n, r in enumerate(rows):
        value = envelope(r, n)
        messages.append(
            (
                "pg.things",
                0,
                n,
                T0,
                encode(registry, "pg.things-key", {"id": r["id"]}),
                encode(registry, "pg.things-value", value),
            )
        )
    batch = decode_messages(decoder, messages)
    assert batch.schema == decoder.arrow_schema
    return batch


@pytest.mark.parametrize("columnar", [True, False], ids=["columnar", "fastavro"])
def test_every_debezium_time_and_decimal_lands_exactly(
    registry: FileRegistry, contract: TopicContract, columnar: bool
) -> None:
    rows = [
        row(
            1,
            amount=vsd("12.5"),  # scale 1 into decimal(10, 2): exact
            ratio=vsd("0.000000000123"),  # no contract entry: decimal(38, 10)... too many places
            born=20_458,  # 2026-01-05
            at_ms=T0 + 123,
            at_us=(T0 * 1000) + 123_456,
            at_ns=(T0 * 1_000_000) + 123_456_789,
            zoned="2026-01-05T09:00:00.123456789+01:00",
            t_ms=3_723_004,  # 01:02:03.004
            t_us=3_723_004_005,
            t_ns=3_723_004_005_006,
        ),
        row(
            2, amount=vsd("-99999999.99"), ratio=vsd("123.4500000000"), zoned="2026-01-05T08:00:00Z"
        ),
        row(3, amount=vsd("1.234")),  # three places: does not fit decimal(10, 2)
        row(4, amount=vsd("100000000.00")),  # nine integer digits: does not fit either
        row(5, zoned="yesterday"),
        row(6, at_us=400_000_000_000_000_000),  # the year 14645: past 9999-12-31
        row(7),  # every column null
    ]
    batch = decode(registry, contract, rows, columnar)
    after = batch.schema.field("value").type.field("after").type
    types = {f.name: f.type for f in after}
    assert types["amount"] == pa.decimal128(10, 2)
    assert types["ratio"] == pa.decimal128(38, 10)
    assert types["born"] == pa.date32()
    assert types["at_ms"] == types["at_us"] == types["at_ns"] == pa.timestamp("us")
    assert types["zoned"] == pa.timestamp("us", tz="UTC")
    assert types["t_ms"] == types["t_us"] == types["t_ns"] == pa.int64()

    codes = batch.column("error_code").to_pylist()
    errors = batch.column("error").to_pylist()
    assert codes == [
        "value_out_of_range",
        None,
        "value_out_of_range",
        "value_out_of_range",
        "value_out_of_range",
        "value_out_of_range",
        None,
    ]
    assert errors[0] == "after.ratio: 1.23E-10 has more than 10 decimal places"
    assert errors[2] == "after.amount: 1.234 has more than 2 decimal places"
    assert errors[3] == "after.amount: 100000000.00 does not fit decimal(10, 2)"
    assert errors[4] == "after.zoned: 'yesterday' is not an ISO-8601 timestamp with an offset"
    assert errors[5].startswith("after.at_us: ") and errors[5].endswith(
        "is not a timestamp of the years 1 to 9999"
    )
    values = batch.column("value").to_pylist()
    assert values[0] is None  # quarantined: the decoded value is not kept
    good = values[1]["after"]
    assert good["amount"] == Decimal("-99999999.99") and good["ratio"] == Decimal("123.4500000000")
    assert good["zoned"] == datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    assert values[6]["after"] == {"id": 7, **dict.fromkeys(list(types)[1:])}


@pytest.mark.parametrize("columnar", [True, False], ids=["columnar", "fastavro"])
def test_times_keep_every_digit_delta_holds(
    registry: FileRegistry, contract: TopicContract, columnar: bool
) -> None:
    rows = [
        row(
            1,
            amount=vsd("0.5"),
            born=20_458,
            at_ms=T0 + 123,
            at_us=(T0 * 1000) + 123_456,
            at_ns=(T0 * 1_000_000) + 123_456_789,
            zoned="2026-01-05T09:00:00.123456789+01:00",
            t_ms=3_723_004,
            t_us=3_723_004_005,
            t_ns=3_723_004_005_006,
        )
    ]
    got = decode(registry, contract, rows, columnar).column("value").to_pylist()[0]["after"]
    at = datetime(2026, 1, 5, 8, 0, 0)
    assert got["amount"] == Decimal("0.50")
    assert got["born"] == date(2026, 1, 5)
    assert got["at_ms"] == at.replace(microsecond=123_000)
    assert got["at_us"] == at.replace(microsecond=123_456)
    assert got["at_ns"] == at.replace(microsecond=123_456)  # Delta holds µs
    assert got["zoned"] == datetime(2026, 1, 5, 8, 0, 0, 123_456, tzinfo=UTC)
    assert (got["t_ms"], got["t_us"], got["t_ns"]) == (3_723_004_000, 3_723_004_005, 3_723_004_005)


def test_a_contract_decimal_must_be_a_precision_and_scale() -> None:
    bad = {"pg.things": {**CONTRACT["pg.things"], "decimals": {"amount": [10, 12]}}}
    with pytest.raises(ConfigError, match=r"'amount' must be \[precision, scale\]"):
        parse_contracts(bad)


def test_the_reference_lists_every_semantic_type() -> None:
    text = (REPO_ROOT / "docs" / "reference" / "debezium-types.md").read_text()
    for name in SEMANTIC_TYPES:
        assert f"`{name}`" in text, name
