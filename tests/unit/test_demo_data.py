"""The demo data set: deterministic, valid where it should be, invalid where it should be,
and its expected outcomes agree with the pure SCD2 fold. No Kafka, no Spark."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from cdc.config.settings import load_settings
from cdc.core.scd2 import Scd2Spec
from cdc.ingest.changes import business_columns, scd2_changes, split_batch
from cdc.ingest.contracts import QuarantineReason, TopicContract
from cdc.ingest.decoder import TopicDecoder
from cdc.ingest.produce import OutboundRecord, default_partition, parse_lines
from cdc.ingest.registry import FileRegistry
from cdc_demo.data import (
    BASE_TIME,
    FACT_TOPICS,
    KEYS,
    SCD2_TOPICS,
    TOPICS,
    UNTRACKED,
    Dataset,
    Line,
    generate,
    merged_lines,
    write_jsonl,
)
from tests.support.decoding import decode_messages
from tests.support.scd2_one_pass import scd2_from_events

CRM = ("crm.accounts", "crm.contacts", "crm.opportunities")
REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 3


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate()


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _encode(
    lines: list[Line], registry: FileRegistry, contract: TopicContract
) -> list[OutboundRecord]:
    records, errors = parse_lines([json.dumps(line) for line in lines], registry, contract)
    assert [str(e) for e in errors] == []
    return records


PRODUCED_AT_MS = 1_795_435_200_000
"""2026-11-23T12:00:00Z: a Kafka timestamp later than every generated time."""


def _decode(
    topic: str,
    lines: list[Line],
    registry: FileRegistry,
    contract: TopicContract,
    stamp: str = "connector",
) -> pa.Table:
    """Encode like ``cdc produce`` and decode like the source, with Kafka coordinates.

    ``stamp`` picks each record's Kafka timestamp: ``connector`` — the connector time of the
    change it carries, a tombstone its delete's (what Debezium does); ``produced`` — one
    instant after every generated time (what ``cdc produce`` does when it replays history).
    """
    records = _encode(lines, registry, contract)
    next_offset: dict[int, int] = defaultdict(int)
    messages = []
    last_ts = 0
    for line, record in zip(lines, records, strict=True):
        value = line.get("value")
        if value is not None:
            last_ts = (
                value["ts_ms"]
                if "ts_ms" in value
                else _ms(
                    next(
                        v
                        for k, v in value.items()
                        if k in ("event_ts", "occurred_at", "effective_at")
                    )
                )
            )
        assert record.key is not None
        partition = default_partition(record.key, PARTITIONS)
        offset = next_offset[partition]
        kafka_ts = last_ts if stamp == "connector" else PRODUCED_AT_MS
        messages.append((topic, partition, offset, kafka_ts, record.key, record.value))
        next_offset[partition] += 1
    return pa.Table.from_batches([decode_messages(TopicDecoder(registry, contract), messages)])


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_data() -> None:
    first, second = (
        generate(seed=11, contacts=60, accounts=10, opportunities=20),
        generate(seed=11, contacts=60, accounts=10, opportunities=20),
    )
    assert first.lines == second.lines
    assert first.invalid == second.invalid
    assert first.expected == second.expected


def test_other_seed_other_data() -> None:
    assert generate(seed=1).lines != generate(seed=2).lines


def test_counts_are_honoured(dataset: Dataset) -> None:
    e = dataset.expected
    assert e["crm.accounts"].distinct_keys == 50
    assert e["crm.contacts"].distinct_keys == 300
    assert e["crm.opportunities"].distinct_keys == 120
    assert e["events.orders"].distinct_event_ids == 600
    assert e["events.behavior"].distinct_event_ids == 1500
    assert e["ref.fx_rates"].versions == 30 * 8  # every business day moves every pair
    assert tuple(dataset) == TOPICS
    for topic in TOPICS:
        assert e[topic].lines == len(dataset[topic])
        assert e[topic].invalid == len(dataset.invalid[topic]) >= 4


def test_small_data_sets_work() -> None:
    tiny = generate(
        seed=3, accounts=1, contacts=1, opportunities=1, orders=1, behavior=1, fx_days=1
    )
    assert tiny.expected["crm.accounts"].distinct_keys == 1
    assert tiny.expected["events.orders"].distinct_event_ids == 1


def test_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="counts must be >= 0: orders"):
        generate(orders=-1)
    with pytest.raises(ValueError, match="accounts must be >= 1"):
        generate(accounts=0)


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("topic", TOPICS)
def test_valid_lines_encode_and_pass_the_contract(
    topic: str, dataset: Dataset, registry: FileRegistry, contracts: dict[str, TopicContract]
) -> None:
    decoded = _decode(topic, dataset[topic], registry, contracts[topic])
    errors = [e for e in decoded.column("error").to_pylist() if e is not None]
    assert errors == []
    assert decoded.num_rows == dataset.expected[topic].lines


@pytest.mark.parametrize("topic", TOPICS)
def test_invalid_lines_are_producible_and_quarantined_for_their_reason(
    topic: str, dataset: Dataset, registry: FileRegistry, contracts: dict[str, TopicContract]
) -> None:
    items = dataset.invalid_details[topic]
    assert [item.line for item in items] == dataset.invalid[topic]
    records = _encode(dataset.invalid[topic], registry, contracts[topic])
    messages = [(topic, 0, i, 0, r.key, r.value) for i, r in enumerate(records)]
    batch = decode_messages(TopicDecoder(registry, contracts[topic]), messages)
    assert batch.column("error_code").to_pylist() == [item.reason for item in items]
    assert {item.reason for item in items} >= {
        QuarantineReason.RULE_VIOLATION,
        QuarantineReason.NOT_FRAMED,
        QuarantineReason.UNKNOWN_SCHEMA_ID,
        QuarantineReason.DECODE_ERROR,
    }
    assert dataset.expected[topic].quarantine_reasons == dict(
        Counter(item.reason for item in items)
    )


def test_invalid_payloads_are_what_they_claim(dataset: Dataset) -> None:
    import base64

    raw = {
        item.reason: base64.b64decode(item.line["value_b64"])
        for item in dataset.invalid_details["crm.contacts"]
        if "value_b64" in item.line
    }
    assert raw[QuarantineReason.UNKNOWN_SCHEMA_ID][:5] == b"\x00\x00\x00\x27\x0f"
    assert raw[QuarantineReason.DECODE_ERROR][:5] == b"\x00\x00\x00\x00\x0f"  # v3, id 15
    assert raw[QuarantineReason.NOT_FRAMED][:1] == b"{"


# --------------------------------------------------------------------------- envelopes


def _distinct(lines: list[Line]) -> list[Line]:
    """The lines without exact re-deliveries (the first delivery stays)."""
    seen: set[str] = set()
    out = []
    for line in lines:
        fingerprint = json.dumps(line, sort_keys=True)
        if fingerprint not in seen:
            seen.add(fingerprint)
            out.append(line)
    return out


@pytest.mark.parametrize("topic", CRM)
def test_envelope_sequencing(topic: str, dataset: Dataset) -> None:
    lines = _distinct(dataset[topic])
    key_field = KEYS[topic][0]
    seen_stream = False
    last_commit: dict[str, int] = {}
    last_after: dict[str, Line | None] = {}
    ops: Counter[str] = Counter()
    previous_lsn = 0
    for index, line in enumerate(lines):
        key = line["key"][key_field]
        value = line["value"]
        if value is None:
            # A tombstone follows its delete immediately.
            before = lines[index - 1]
            assert before["key"] == line["key"] and before["value"]["op"] == "d"
            continue
        op, source = value["op"], value["source"]
        ops[op] += 1
        assert source["snapshot"] is (op == "r")
        if op == "r":
            assert not seen_stream, "snapshot rows come first"
        else:
            seen_stream = True
        assert source["ts_ms"] > last_commit.get(key, 0), "commit time increases per key"
        assert source["ts_ms"] < value["ts_ms"] <= source["ts_ms"] + 900
        assert source["lsn"] > previous_lsn
        previous_lsn = source["lsn"]
        last_commit[key] = source["ts_ms"]
        if op in ("r", "c"):
            assert value["before"] is None and value["after"][key_field] == key
            assert last_after.get(key) is None
        elif op == "u":
            assert value["before"] == last_after[key] and value["after"] != value["before"]
        else:
            assert value["after"] is None and value["before"] == last_after[key]
            assert lines[index + 1] == {"key": line["key"], "value": None}
        last_after[key] = value["after"]
    assert ops["r"] and ops["c"] and ops["u"] and ops["d"]
    assert dataset.expected[topic].deletes == ops["d"]
    assert dataset.expected[topic].tombstones == ops["d"]


def test_stream_commits_leave_room_for_the_connector(dataset: Dataset) -> None:
    # The next commit of any table comes after the previous change was published, so a
    # tombstone stamped with its delete's time sorts before the key's next change.
    changes = sorted(
        (line["value"]["source"]["ts_ms"], line["value"]["ts_ms"])
        for topic in CRM
        for line in _distinct(dataset[topic])
        if line["value"] is not None and not line["value"]["source"]["snapshot"]
    )
    for (_, published), (next_commit, _) in pairwise(changes):
        assert next_commit > published


@pytest.mark.parametrize("topic", CRM)
def test_updates_cover_tracked_and_untracked_only_changes(topic: str, dataset: Dataset) -> None:
    untracked = set(UNTRACKED[topic])
    kinds: Counter[str] = Counter()
    changed: Counter[str] = Counter()
    for line in dataset[topic]:
        value = line["value"]
        if value is None or value["op"] != "u":
            continue
        diff = {c for c in value["after"] if value["after"][c] != value["before"][c]}
        assert "updated_at" in diff
        kinds["untracked-only" if diff <= untracked else "tracked"] += 1
        changed.update(diff)
    assert kinds["untracked-only"] > 0 and kinds["tracked"] > 0
    assert all(changed[c] > 0 for c in untracked)
    if topic == "crm.contacts":
        assert changed["email"] and changed["last_name"] and changed["account_id"]
    if topic == "crm.opportunities":
        assert changed["stage"] and changed["amount"]


@pytest.mark.parametrize("topic", CRM)
def test_reinserts_follow_deletes(topic: str, dataset: Dataset) -> None:
    key_field = KEYS[topic][0]
    deleted: set[str] = set()
    reinserted = 0
    for line in _distinct(dataset[topic]):
        if line["value"] is None:
            continue
        key = line["key"][key_field]
        if line["value"]["op"] == "d":
            deleted.add(key)
        elif line["value"]["op"] == "c" and key in deleted:
            reinserted += 1
            deleted.discard(key)
    assert reinserted == dataset.expected[topic].reinserts
    if topic != "crm.accounts":
        assert reinserted >= 1


@pytest.mark.parametrize("topic", TOPICS)
def test_redeliveries_are_exact_copies_of_earlier_lines(topic: str, dataset: Dataset) -> None:
    seen: set[str] = set()
    repeats = 0
    for line in dataset[topic]:
        fingerprint = json.dumps(line, sort_keys=True)
        if fingerprint in seen:
            repeats += 1
            assert line["value"] is not None
        seen.add(fingerprint)
    assert repeats == dataset.expected[topic].duplicates >= 1


def test_realistic_values(dataset: Dataset) -> None:
    contacts = [
        line["value"]["after"]
        for line in dataset["crm.contacts"]
        if line["value"] is not None and line["value"]["after"] is not None
    ]
    email = re.compile(r"[a-z0-9.]+@[a-z0-9]+\.[a-z.]+")
    assert all(email.fullmatch(c["email"]) for c in contacts)
    phones = [c["phone"] for c in contacts]
    assert None in phones and any(p and p.startswith("+") for p in phones)
    opportunities = [
        line["value"]["after"]
        for line in dataset["crm.opportunities"]
        if line["value"] is not None and line["value"]["after"] is not None
    ]
    assert all(re.fullmatch(r"\d+\.\d{2}", o["amount"]) for o in opportunities)
    assert {o["stage"] for o in opportunities} == {
        "prospecting",
        "qualification",
        "proposal",
        "negotiation",
        "closed_won",
        "closed_lost",
    }
    times = [
        _ms(line["value"]["after"]["updated_at"])
        for line in dataset["crm.accounts"]
        if line["value"] is not None and line["value"]["after"] is not None
    ]
    assert min(times) >= int(BASE_TIME.timestamp() * 1000)


@pytest.mark.parametrize("topic", FACT_TOPICS)
def test_fact_events_have_uuid_ids(topic: str, dataset: Dataset) -> None:
    ids = [line["value"]["event_id"] for line in dataset[topic]]
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert len(set(ids)) == dataset.expected[topic].distinct_event_ids
    assert len(ids) - len(set(ids)) == dataset.expected[topic].duplicates


def test_fx_rates_walk_daily(dataset: Dataset) -> None:
    per_pair: dict[tuple[str, str], list[Line]] = defaultdict(list)
    for line in _distinct(dataset["ref.fx_rates"]):
        value = line["value"]
        assert re.fullmatch(r"\d+\.\d{8}", value["rate"])
        per_pair[(value["base_currency"], value["quote_currency"])].append(value)
    assert len(per_pair) == 8
    currencies = {c for pair in per_pair for c in pair}
    assert currencies == {"EUR", "USD", "GBP", "JPY", "CHF"}
    for values in per_pair.values():
        days = [datetime.fromisoformat(v["effective_at"]) for v in values]
        assert days == sorted(days) and all(d.weekday() < 5 for d in days)
        rates = [Decimal(v["rate"]) for v in values]
        assert all(abs(b / a - 1) < Decimal("0.02") for a, b in pairwise(rates))


# --------------------------------------------------------------------------- expected outcomes


def _spec(topic: str, columns: list[str]) -> Scd2Spec:
    settings = load_settings("local", config_dir=REPO / "config", environ={})
    pipeline = next(p for p in settings.pipelines.values() if p.topic == topic)
    return Scd2Spec.build(
        pipeline.keys, columns, pipeline.track_history, pipeline.track_history_except
    )


def test_untracked_columns_match_the_configuration() -> None:
    settings = load_settings("local", config_dir=REPO / "config", environ={})
    for topic in CRM:
        pipeline = next(p for p in settings.pipelines.values() if p.topic == topic)
        assert set(pipeline.track_history_except) == set(UNTRACKED[topic])
    fx = next(p for p in settings.pipelines.values() if p.topic == "ref.fx_rates")
    assert fx.track_history == ("rate",)


@pytest.mark.parametrize("stamp", ["connector", "produced"])
@pytest.mark.parametrize("topic", SCD2_TOPICS)
def test_expected_dimension_matches_the_scd2_fold(
    topic: str,
    stamp: str,
    dataset: Dataset,
    registry: FileRegistry,
    contracts: dict[str, TopicContract],
) -> None:
    # "produced": tombstones carry a Kafka time after the key's re-insert; they must still
    # act where they sit in the log (right after their delete), not close the re-insert.
    decoded = _decode(topic, dataset[topic], registry, contracts[topic], stamp)
    valid = split_batch(decoded, 0, datetime(2026, 2, 1, tzinfo=UTC)).valid
    source_format = "flat" if topic == "ref.fx_rates" else "envelope"
    spec = _spec(topic, business_columns(valid.schema, source_format))
    sequence_by = "effective_at" if source_format == "flat" else None
    dim = scd2_from_events(scd2_changes(valid, spec, source_format, sequence_by), spec)
    expected = dataset.expected[topic]
    assert dim.height == expected.versions
    assert dim.filter(pl.col("is_current")).height == expected.current_rows
    assert dim.select(spec.keys).unique().height == expected.distinct_keys


@pytest.mark.parametrize("topic", FACT_TOPICS)
def test_expected_facts_match_dedup(topic: str, dataset: Dataset) -> None:
    ids = {line["value"]["event_id"] for line in dataset[topic]}
    assert len(ids) == dataset.expected[topic].distinct_event_ids


# --------------------------------------------------------------------------- files


def test_write_jsonl_spreads_invalid_lines(dataset: Dataset, tmp_path: Path) -> None:
    files = write_jsonl(dataset, tmp_path / "input")
    assert sorted(files) == sorted(TOPICS)
    for topic, path in files.items():
        assert path == tmp_path / "input" / f"{topic}.jsonl"
        read: list[dict[str, Any]] = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
        assert read == merged_lines(dataset, topic)
        assert len(read) == len(dataset[topic]) + len(dataset.invalid[topic])
        positions = [i for i, line in enumerate(read) if line in dataset.invalid[topic]]
        assert positions[0] > 0 and positions[-1] < len(read) - 1
    only_valid = write_jsonl(dataset, tmp_path / "valid", include_invalid=False)
    lines = only_valid["crm.contacts"].read_text("utf-8").splitlines()
    assert [json.loads(x) for x in lines] == dataset["crm.contacts"]
