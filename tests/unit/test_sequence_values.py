"""Values a sequence cannot hold are quarantined by the decoder; every value it can hold encodes
in order, and nothing overflows (issue: one hostile ``source.ts_ms`` corrupted a key's history).

Properties run over the whole signed 64-bit range of every numeric position field the
registry's envelopes carry (``lsn``, ``txId``, ``pos``, ``row``, ``event_serial_no``,
``ts_ms``; there is no ``ts_us``/``ts_ns``), binlog indexes of any length, SQL Server LSNs,
and Kafka partitions and offsets: once on the pure check and encoding, once through the
decoder on Avro bytes (the columnar and the fastavro paths).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.config.settings import SequenceField
from cdc.core.scd2 import Scd2Spec
from cdc.core.sequence import (
    MAX_PARTITION,
    MAX_TIME_MS,
    Ordering,
    PositionField,
    SequenceCheck,
    TimeWindow,
    decode_offset,
    decode_partition,
    decode_time_ms,
    ordering_for,
)
from cdc.errors import ConfigError
from cdc.ingest.changes import scd2_changes
from cdc.ingest.contracts import QuarantineReason, TopicContract
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.produce import encode_datum
from cdc.ingest.registry import FileRegistry
from cdc.pipeline.kafka_source import DecoderSpec, topic_decoder
from tests.support.decoding import decode_messages
from tests.support.envelopes import (
    SOURCE_TYPE,
    T0,
    bronze_schema,
    contact_envelope,
    contact_row,
)
from tests.support.lake import lake_settings
from tests.support.paths import REPO_ROOT
from tests.support.scd2_one_pass import scd2_from_events

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
NOW_MS = T0 + 30 * 86_400_000
"""The checking clock of these tests: 30 days after the tests' source clock starts."""
WINDOW = TimeWindow()
LO, HI = WINDOW.bounds(NOW_MS)
SPEC = Scd2Spec.build(["id"], ["id", "name"])
TIME_CODE, POSITION_CODE = "source_time_out_of_range", "position_out_of_range"


def _edges(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Any value of the range, biased towards its bounds and the window's."""
    edges = [lo, hi, 0, -1, 1, LO - 1, LO, HI, HI + 1, MAX_TIME_MS, MAX_TIME_MS + 1, T0]
    return st.one_of(st.integers(lo, hi), st.sampled_from([e for e in edges if lo <= e <= hi]))


TIMES = st.one_of(_edges(-(2**63), 2**63 - 1), st.integers(LO, HI))
PARTITIONS = st.one_of(_edges(-(2**31), 2**31 - 1), st.integers(0, MAX_PARTITION))
OFFSETS = st.one_of(_edges(-(2**63), 2**63 - 1), st.integers(0, 2**63 - 1))
BINLOG = st.one_of(
    st.none(),
    st.builds(
        lambda zeros, index: f"mysql-bin.{'0' * zeros}{index}",
        st.integers(0, 8),
        st.one_of(st.integers(0, 10**18 - 1), st.integers(0, 10**25)),
    ),
)
LSN = st.one_of(
    st.none(),
    st.integers(0, 2**80 - 1).map(
        lambda n: f"{n:020x}"[:8] + ":" + f"{n:020x}"[8:16] + ":" + f"{n:020x}"[16:]
    ),
)
CONNECTORS = ("postgresql", "mysql", "mariadb", "sqlserver", "mongodb")


@st.composite
def source_records(draw: st.DrawFn, connector: str) -> dict[str, Any]:
    """One change of key ``k`` with every ordering field drawn from its whole range."""
    return {
        "connector": connector,
        "ts_ms": draw(TIMES),
        "lsn": draw(st.one_of(st.none(), INT64)),
        "txId": draw(st.one_of(st.none(), INT64)),
        "file": draw(BINLOG),
        "pos": draw(st.one_of(st.none(), INT64)),
        "row": draw(st.one_of(st.none(), INT32)),
        "commit_lsn": draw(LSN),
        "change_lsn": draw(LSN),
        "event_serial_no": draw(st.one_of(st.none(), INT64)),
        "partition": draw(PARTITIONS),
        "offset": draw(OFFSETS),
        "name": draw(st.sampled_from("ab")),
    }


def bronze(records: list[dict[str, Any]]) -> pa.Table:
    """Decoded envelope rows of key ``k``, as the writers receive them."""
    value_type = pa.struct(
        [
            ("op", pa.string()),
            ("after", pa.struct([("id", pa.string()), ("name", pa.string())])),
            ("source", SOURCE_TYPE),
        ]
    )
    rows = [
        {
            "topic": "t",
            "partition": r["partition"],
            "offset": r["offset"],
            "timestamp": datetime.fromtimestamp(T0 / 1000, UTC),
            "key": {"id": "k"},
            "value": {
                "op": "u",
                "after": {"id": "k", "name": r["name"]},
                "source": {f.name: r.get(f.name) for f in SOURCE_TYPE},
            },
        }
        for r in records
    ]
    schema = bronze_schema(pa.struct([("id", pa.string())]), value_type)
    return pa.Table.from_pylist(rows, schema)


def _binlog_digits(name: str | None) -> int:
    if name is None:
        return 0
    return len(name.rpartition(".")[2].lstrip("0"))


def expected_code(r: dict[str, Any]) -> str | None:
    """The model of the check: the first of time, binlog, partition, offset that does not fit."""
    if not LO <= r["ts_ms"] <= HI:
        return TIME_CODE
    if r["connector"] in ("mysql", "mariadb") and _binlog_digits(r["file"]) > 18:
        return POSITION_CODE
    if not 0 <= r["partition"] <= MAX_PARTITION or r["offset"] < 0:
        return POSITION_CODE
    return None


def _unsigned(n: int | None) -> int:
    """A number's place in the encoding (a null sorts with the smallest number)."""
    return 0 if n is None else n + 2**63


def _lsn(text: str | None) -> int:
    return 0 if text is None else int(text.replace(":", ""), 16)


def expected_order(r: dict[str, Any]) -> tuple[int, ...]:
    """The model of the sequence: the connector's position, then time, partition, offset."""
    connector = r["connector"]
    if connector == "postgresql":
        position = (_unsigned(r["lsn"]), _unsigned(r["txId"]), 0)
    elif connector in ("mysql", "mariadb"):
        index = None if r["file"] is None else int(r["file"].rpartition(".")[2])
        position = (_unsigned(index), _unsigned(r["pos"]), _unsigned(r["row"]))
    elif connector == "sqlserver":
        position = (_lsn(r["commit_lsn"]), _lsn(r["change_lsn"]), _unsigned(r["event_serial_no"]))
    else:
        position = (0, 0, 0)
    return (*position, r["ts_ms"], r["partition"], r["offset"])


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def _cmp(a: Any, b: Any) -> int:
    return _sign((a > b) - (a < b))


# ------------------------------------------------------------------ the check and the encoding


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), connector=st.sampled_from(CONNECTORS))
def test_every_int64_position_encodes_in_order_or_is_quarantined(
    data: st.DataObject, connector: str
) -> None:
    records = data.draw(st.lists(source_records(connector), min_size=1, max_size=6))
    table = bronze(records)
    check = SequenceCheck(ordering_for(None, "envelope"), "envelope", WINDOW)
    verdict = check.violations(pl.from_arrow(table), NOW_MS)  # type: ignore[arg-type]
    assert verdict["code"].to_list() == [expected_code(r) for r in records]
    assert verdict["error"].is_null().to_list() == [expected_code(r) is None for r in records]

    # Every record encodes without raising and at the layout's width, accepted or not (a
    # record that bronze held before the check existed is clamped, never overflows).
    width = ordering_for(None, "envelope").width
    every = scd2_changes(table, SPEC, "envelope", None)
    assert every["_seq"].str.len_chars().to_list() == [width] * len(records)

    accepted = [r for r in records if expected_code(r) is None]
    if not accepted:
        return
    events = scd2_changes(bronze(accepted), SPEC, "envelope", None)
    seqs = events["_seq"].to_list()
    decoded = events.select(
        t=decode_time_ms(pl.col("_seq")),
        p=decode_partition(pl.col("_seq")),
        o=decode_offset(pl.col("_seq")),
    )
    assert decoded.rows() == [(r["ts_ms"], r["partition"], r["offset"]) for r in accepted]
    for a, sa in zip(accepted, seqs, strict=True):
        for b, sb in zip(accepted, seqs, strict=True):
            assert _cmp(sa, sb) == _cmp(expected_order(a), expected_order(b)), (a, b)
    # Valid times are made of accepted times only: timestamps Delta holds, no overflow.
    rows = scd2_from_events(events, SPEC)
    times = {r["ts_ms"] for r in accepted}
    for column in ("valid_from", "valid_to"):
        ms = rows[column].dt.epoch("ms").drop_nulls().to_list()
        assert set(ms) <= times, column


@settings(max_examples=200, deadline=None)
@given(
    n=st.lists(INT64, min_size=1, max_size=6),
    data=st.data(),
)
def test_a_composite_number_and_time_position_encodes_in_order_or_is_quarantined(
    n: list[int], data: st.DataObject
) -> None:
    """A flat pipeline sequenced by ``[version (number), changed_at (time, epoch ms)]``."""
    t = data.draw(st.lists(TIMES, min_size=len(n), max_size=len(n)))
    kafka = data.draw(st.lists(OFFSETS, min_size=len(n), max_size=len(n)))
    sequence_by = [SequenceField(path="version"), SequenceField(path="changed_at", kind="time")]
    ordering = ordering_for(sequence_by, "flat")
    table = pa.table(
        {
            "topic": pa.array(["t"] * len(n)),
            "partition": pa.array([0] * len(n), pa.int32()),
            "offset": pa.array(kafka, pa.int64()),
            "timestamp": pa.array([T0 * 1000] * len(n), pa.timestamp("us", "UTC")),
            "key": pa.array([{"id": "k"}] * len(n)),
            "value": pa.array(
                [
                    {"id": "k", "name": "x", "version": v, "changed_at": c}
                    for v, c in zip(n, t, strict=True)
                ]
            ),
        }
    )
    verdict = SequenceCheck(ordering, "flat", WINDOW).violations(pl.from_arrow(table), NOW_MS)  # type: ignore[arg-type]
    want = [
        TIME_CODE if not LO <= c <= HI else POSITION_CODE if o < 0 else None
        for c, o in zip(t, kafka, strict=True)
    ]
    assert verdict["code"].to_list() == want
    events = scd2_changes(table, SPEC, "flat", sequence_by)
    assert events["_seq"].str.len_chars().to_list() == [ordering.width] * len(n)
    kept = [i for i, code in enumerate(want) if code is None]
    model = [(n[i] + 2**63, t[i] + 2**63, t[i], 0, kafka[i]) for i in kept]
    seqs = [events["_seq"][i] for i in kept]
    for a, sa in zip(model, seqs, strict=True):
        for b, sb in zip(model, seqs, strict=True):
            assert _cmp(sa, sb) == _cmp(a, b)


def test_a_position_time_outside_the_window_is_quarantined_too() -> None:
    """Not only the sequence time: a far-future time in the position would pin the key's
    order (every later change would sort before it)."""
    ordering = Ordering(
        fields=(PositionField("source.lsn", "number"), PositionField("source.pos", "time"))
    )
    table = bronze(
        [
            {
                "connector": "x",
                "ts_ms": T0,
                "lsn": 1,
                "pos": 2**62,
                "partition": 0,
                "offset": 0,
                "name": "a",
            },
            {
                "connector": "x",
                "ts_ms": T0,
                "lsn": 2,
                "pos": T0,
                "partition": 0,
                "offset": 1,
                "name": "b",
            },
        ]
    )
    found = SequenceCheck(ordering, "envelope", WINDOW).violations(pl.from_arrow(table), NOW_MS)  # type: ignore[arg-type]
    assert found["code"].to_list() == [TIME_CODE, None]
    assert found["error"][0].startswith(
        "source.pos 4611686018427387904 (not a date of the years 1 to 9999) is outside the"
        " accepted source times (source_time_window), 1970-01-01T00:00:00.000Z to "
    )


def test_the_window_bounds() -> None:
    assert TimeWindow().bounds(NOW_MS) == (0, NOW_MS + 86_400_000)
    assert TimeWindow(max_ahead_ms=None).bounds(NOW_MS) == (0, MAX_TIME_MS)
    assert TimeWindow(not_before_ms=-5, max_ahead_ms=None).bounds(0) == (0, MAX_TIME_MS)
    assert TimeWindow(max_ahead_ms=2**62).bounds(NOW_MS)[1] == MAX_TIME_MS


def test_a_bronze_row_from_before_the_check_is_clamped_not_overflowed() -> None:
    """What bronze already holds is read back as history: it must not break the layout."""
    hostile = {"connector": "postgresql", "lsn": 1, "partition": 0, "offset": 0, "name": "a"}
    normal = {
        "connector": "postgresql",
        "lsn": 2,
        "ts_ms": T0,
        "partition": 0,
        "offset": 1,
        "name": "b",
    }
    events = scd2_changes(bronze([{**hostile, "ts_ms": 2**63 - 1}, normal]), SPEC, "envelope", None)
    assert events["_seq"].str.len_chars().to_list() == [ordering_for(None, "envelope").width] * 2
    rows = scd2_from_events(events, SPEC)
    assert rows["valid_from"].to_list()[0] == datetime(9999, 12, 31, 23, 59, 59, 999000, UTC)


# ------------------------------------------------------------------------------ the decoder


def _encode(registry: FileRegistry, subject: str, datum: Any) -> bytes:
    return encode_datum(registry.latest(subject), datum)


def contact_value(registry: FileRegistry, r: dict[str, Any]) -> bytes:
    """A contract-valid contact envelope with ``r``'s source fields."""
    datum = contact_envelope("c", 0, None, contact_row())
    datum["source"].update({f.name: r.get(f.name) for f in SOURCE_TYPE})
    return _encode(registry, "crm.contacts-value", datum)


@pytest.fixture(scope="module")
def contact_key(registry: FileRegistry) -> bytes:
    return _encode(registry, "crm.contacts-key", {"contact_id": "c1"})


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), connector=st.sampled_from(CONNECTORS))
def test_the_decoder_quarantines_what_no_sequence_holds_on_both_paths(
    registry: FileRegistry,
    contracts: dict[str, TopicContract],
    contact_key: bytes,
    data: st.DataObject,
    connector: str,
) -> None:
    records = data.draw(st.lists(source_records(connector), min_size=1, max_size=5))
    # Tombstones carry no source time: their Kafka timestamp is their time.
    tombstone_ms = data.draw(st.lists(_edges(-(2**63), 2**63 - 1), max_size=2))
    messages = [
        ("crm.contacts", r["partition"], r["offset"], T0, contact_key, contact_value(registry, r))
        for r in records
    ] + [("crm.contacts", 0, i, ms, contact_key, None) for i, ms in enumerate(tombstone_ms)]
    check = SequenceCheck(ordering_for(None, "envelope"), "envelope", WINDOW)
    batches = [
        decode_messages(
            TopicDecoder(
                registry,
                contracts["crm.contacts"],
                columnar=columnar,
                sequence=check,
                clock=lambda: NOW_MS / 1000,
            ),
            messages,
        )
        for columnar in (True, False)
    ]
    assert batches[0].equals(batches[1])  # one verdict whichever path decoded a record
    rows = batches[0].to_pylist()
    want = [expected_code(r) for r in records] + [
        None if LO <= ms <= HI else TIME_CODE for ms in tombstone_ms
    ]
    assert [r["error_code"] for r in rows] == want
    for row, message in zip(rows, messages, strict=True):
        assert row["value_raw"] == message[5]  # raw bytes kept, quarantined or not
        if row["error_code"] is not None:
            assert row["value"] is None
    # A Kafka timestamp no timestamp holds is none, never a wrapped-around time.
    stamps = [row["timestamp"] for row in rows[len(records) :]]
    assert stamps == [
        EPOCH + timedelta(milliseconds=ms) if 0 <= ms <= MAX_TIME_MS else None
        for ms in tombstone_ms
    ]


def test_the_quarantine_reasons_are_distinct_codes() -> None:
    assert QuarantineReason.SOURCE_TIME_OUT_OF_RANGE == TIME_CODE
    assert QuarantineReason.POSITION_OUT_OF_RANGE == POSITION_CODE


def test_a_time_too_far_ahead_of_the_clock_is_quarantined(
    registry: FileRegistry, contracts: dict[str, TopicContract], contact_key: bytes
) -> None:
    check = SequenceCheck(
        ordering_for(None, "envelope"), "envelope", TimeWindow(max_ahead_ms=3_600_000)
    )
    base = {"connector": "postgresql", "lsn": 1, "partition": 0, "offset": 0, "name": "a"}
    messages = [
        (
            "crm.contacts",
            0,
            i,
            T0,
            contact_key,
            contact_value(registry, {**base, "ts_ms": T0 + ahead}),
        )
        for i, ahead in enumerate([0, 3_600_000, 3_600_001])
    ]
    decoder = TopicDecoder(
        registry, contracts["crm.contacts"], sequence=check, clock=lambda: T0 / 1000
    )
    rows = decode_messages(decoder, messages).to_pylist()
    assert [r["error_code"] for r in rows] == [None, None, TIME_CODE]
    assert rows[2]["error"] == (
        "source.ts_ms 1767603600001 (2026-01-05T09:00:00.001Z) is outside the accepted source"
        " times (source_time_window), 1970-01-01T00:00:00.000Z to 2026-01-05T09:00:00.000Z"
    )


# ----------------------------------------------------------------------------- configuration


def test_the_window_comes_from_the_config(tmp_path: Path) -> None:
    settings = lake_settings(
        tmp_path,
        "defaults.source_time_window.not_before=2000-01-01",
        "pipelines.fx_rates.source_time_window.max_ahead_seconds=null",
    )
    contacts = SequenceCheck.of(settings, settings.pipeline("crm_contacts"))
    assert contacts is not None
    assert contacts.window == TimeWindow(not_before_ms=946_684_800_000, max_ahead_ms=86_400_000)
    fx = SequenceCheck.of(settings, settings.pipeline("fx_rates"))
    assert fx is not None  # its own key, the other from the defaults
    assert fx.window == TimeWindow(not_before_ms=946_684_800_000, max_ahead_ms=None)
    assert fx.ordering == Ordering(legacy_path="effective_at")
    assert SequenceCheck.of(settings, settings.pipeline("orders")) is None  # facts: no sequence
    # The pipeline's decoder carries its check; the decoder of a facts topic none.
    spec = DecoderSpec.from_settings(settings, settings.pipeline("crm_contacts"))
    assert spec.sequence == contacts
    assert DecoderSpec.from_settings(settings, settings.pipeline("orders")).sequence is None
    assert DecoderSpec.from_settings(settings).sequence is None


def test_a_window_before_1970_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        lake_settings(tmp_path, "defaults.source_time_window.not_before=1969-12-31T23:59:59Z")
    assert str(refused.value).endswith(
        "defaults.source_time_window.not_before: Value error, 1969-12-31T23:59:59+00:00 is"
        " before 1970-01-01T00:00:00Z, which no sequence holds"
    )
    with pytest.raises(ConfigError, match="max_ahead_seconds: Input should be greater than"):
        lake_settings(tmp_path, "pipelines.crm_contacts.source_time_window.max_ahead_seconds=-1")


def test_a_flat_pipelines_effective_time_before_the_window_is_quarantined(tmp_path: Path) -> None:
    """fx_rates is sequenced by ``effective_at`` (a timestamp): its value is the time."""
    settings = lake_settings(tmp_path, "defaults.source_time_window.not_before=2000-01-01")
    spec = DecoderSpec.from_settings(settings, settings.pipeline("fx_rates"))
    decoder = topic_decoder(spec, "ref.fx_rates")
    registry = FileRegistry.load(REPO_ROOT / "schemas" / "avro")
    key = _encode(registry, "ref.fx_rates-key", {"base_currency": "EUR", "quote_currency": "USD"})

    def rate(effective: datetime) -> bytes:
        return _encode(
            registry,
            "ref.fx_rates-value",
            {
                "base_currency": "EUR",
                "quote_currency": "USD",
                "rate": Decimal("1.10000000"),
                "effective_at": effective.isoformat(),
                "provider": "ecb",
            },
        )

    messages = [
        ("ref.fx_rates", 0, 0, T0, key, rate(datetime(2026, 1, 5, tzinfo=UTC))),
        ("ref.fx_rates", 0, 1, T0, key, rate(datetime(1999, 12, 31, tzinfo=UTC))),
    ]
    rows = decode_messages(decoder, messages).to_pylist()
    assert [r["error_code"] for r in rows] == [None, TIME_CODE]
    assert rows[1]["error"].startswith(
        "effective_at 946598400000 (1999-12-31T00:00:00.000Z) is outside the accepted source"
        " times (source_time_window), 2000-01-01T00:00:00.000Z to "
    )
