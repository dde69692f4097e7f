"""Poison messages interleaved with the base stream.

Garbage bytes, a Confluent header with an unknown schema id, a truncated Avro body, a
message over ``max_message_bytes`` and a tombstone whose key cannot be decoded: each lands
in quarantine with its exact reason code, raw bytes and Kafka position; the valid records
produce the same bronze and silver as the clean run without the poison (compared at the
offsets the clean run gave them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.ingest.registry import frame
from tests.support.faults import (
    TOPIC,
    Rec,
    Reference,
    assert_exactly_once,
    assert_frames_equal,
    base_stream,
    cdc_run,
    coordinate_map,
    envelope,
    key_bytes,
    produce,
    read_tables,
    remap_rows,
    remap_silver,
    settings,
    value_bytes,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_MESSAGE_BYTES = 2048
UNKNOWN_ID = 424_242


def poisoned_stream() -> tuple[list[Rec], dict[str, Rec]]:
    """The base stream with five poison records inserted between valid ones."""
    base = base_stream()
    sample = base[5].value  # a real contact envelope (writer: crm.contacts-value latest)
    assert sample is not None
    body = sample[5:]
    huge = envelope(
        "c",
        0,
        None,
        {
            "contact_id": "c02",
            "account_id": "a2",
            "email": "huge@acme.io",
            "first_name": "Huge",
            "last_name": "X" * 3000,
            "phone": None,
            "updated_at": 0,
        },
    )
    poison = {
        "garbage": (2, key_bytes("c05"), bytes(range(255, 127, -1))),
        "unknown_schema_id": (9, key_bytes("c06"), frame(UNKNOWN_ID, body)),
        "truncated": (15, key_bytes("c07"), sample[: 5 + len(body) // 2]),
        "oversize": (22, key_bytes("c02"), value_bytes(huge)),
        # Framed with the key schema's id, but the Avro string length runs past the end.
        "undecodable_key_tombstone": (30, frame(3, b"\x40ab"), None),
    }
    reasons = {
        "garbage": "not_framed",
        "unknown_schema_id": "unknown_schema_id",
        "truncated": "decode_error",
        "oversize": "oversize",
        "undecodable_key_tombstone": "missing_key",
    }
    recs = list(base)
    placed: dict[str, Rec] = {}
    for name, (after, key, value) in sorted(poison.items(), key=lambda kv: -kv[1][0]):
        neighbour = base[after]
        partition = (neighbour.partition + 1) % 3  # land between other partitions' records
        rec = Rec(f"poison-{name}", partition, neighbour.ts + 5, key, value, reasons[name])
        recs.insert(after + 1, rec)
        placed[name] = rec
    return recs, placed


def test_poison_is_quarantined_with_its_reason_and_valid_records_equal_clean_run(
    fresh_kafka: str, reference: Reference, tmp_path: Path
) -> None:
    recs, poison = poisoned_stream()
    sent = produce(fresh_kafka, recs)
    limit = f"defaults.max_message_bytes={MAX_MESSAGE_BYTES}"
    run = cdc_run(fresh_kafka, tmp_path, limit)
    assert run.returncode == 0, run.stderr[-3000:]
    got = read_tables(settings(fresh_kafka, tmp_path, limit))

    # Every record once, poison in quarantine with its reason code and exact raw bytes.
    assert_exactly_once(got, sent)
    assert got.quarantine is not None
    at = {x.rec.rid: x for x in sent}
    rows = {(r["partition"], r["offset"]): r for r in got.quarantine.iter_rows(named=True)}
    for name, rec in poison.items():
        row = rows[at[rec.rid].coords]
        assert row["topic"] == TOPIC
        assert (row["key_raw"], row["value_raw"]) == (rec.key, rec.value), name
        assert row["error_code"] == rec.reason, f"{name}: {row['error_code']}: {row['error']}"
        assert row["error"], name
    by_name = {name: rows[at[rec.rid].coords] for name, rec in poison.items()}
    assert by_name["unknown_schema_id"]["value_schema_id"] == UNKNOWN_ID
    assert str(UNKNOWN_ID) in by_name["unknown_schema_id"]["error"]
    # The code is what matters; the text names the writer schema (fastavro reports a body
    # cut short as IndexError or EOFError depending on where the cut falls).
    assert "writer schema 15 (crm.contacts-value v3)" in by_name["truncated"]["error"]
    oversize = by_name["oversize"]
    size = len(oversize["key_raw"]) + len(oversize["value_raw"])
    assert f"{size} bytes" in oversize["error"] and str(MAX_MESSAGE_BYTES) in oversize["error"]
    assert by_name["undecodable_key_tombstone"]["value_raw"] is None

    # Valid records: the same tables as the clean run, at the clean run's offsets.
    where = coordinate_map(sent, reference.sent)
    audit = ["_ingested_at", "_quarantined_at", "_batch_id", "_topic_id"]
    ref = reference.tables
    assert got.bronze is not None and ref.bronze is not None and ref.quarantine is not None
    assert_frames_equal(
        remap_rows(got.bronze, where).drop(audit, strict=False),
        ref.bronze.drop(audit, strict=False),
        ["partition", "offset"],
        "bronze",
    )
    assert_frames_equal(
        remap_rows(got.quarantine, where).drop(audit, strict=False),
        ref.quarantine.drop(audit, strict=False),
        ["partition", "offset"],
        "quarantine (the clean run's own bad records)",
    )
    assert got.silver is not None and ref.silver is not None
    assert_frames_equal(
        remap_silver(got.silver, where), ref.silver, ["contact_id", "_seq_open"], "silver"
    )
    assert_frames_equal(got.orphans, ref.orphans, ["contact_id"], "orphans")
