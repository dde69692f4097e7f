"""Duplicate delivery: a producer sends the same records again (new offsets, same content).

Some records are re-sent right after themselves (a retried produce request) and a window of
the stream is re-sent at the end (a producer replaying after a timeout). Each delivery is a
distinct Kafka record, so bronze (or quarantine) holds every delivery once; a re-delivered
change is an exact duplicate of one already applied (same key, source commit time and
content), so silver equals the clean run's, lineage included.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from tests.support.faults import (
    BUSINESS,
    Rec,
    Reference,
    assert_exactly_once,
    assert_frames_equal,
    base_stream,
    cdc_run,
    coordinate_map,
    produce,
    read_tables,
    remap_rows,
    remap_silver,
    settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUDIT = ["_ingested_at", "_quarantined_at", "_batch_id", "_topic_id"]
WINDOW = slice(14, 27)
"""Re-sent at the end: untracked and tracked updates, deletes and their tombstones."""


def redelivered_stream() -> tuple[list[Rec], dict[str, str]]:
    """The base stream with duplicates; returns the records and {duplicate rid: original rid}."""
    base = base_stream()
    ops = {r.rid: (r.event.op if r.event else r.reason) for r in base}
    immediate = {
        next(r.rid for r in base if r.datum and r.datum["op"] == "c"),
        next(r.rid for r in base if ops[r.rid] == "T"),
        next(r.rid for r in base if r.reason == "rule_violation"),
    }
    recs: list[Rec] = []
    copies: dict[str, str] = {}
    for rec in base:
        recs.append(rec)
        if rec.rid in immediate:
            recs.append(replace(rec, rid=f"{rec.rid}#retry"))
            copies[f"{rec.rid}#retry"] = rec.rid
    window = base[WINDOW]
    assert {ops[r.rid] for r in window} >= {"U", "D", "T"}
    for rec in window:
        recs.append(replace(rec, rid=f"{rec.rid}#again"))
        copies[f"{rec.rid}#again"] = rec.rid
    return recs, copies


def test_duplicate_delivery_lands_twice_in_bronze_and_once_in_silver(
    fresh_kafka: str, reference: Reference, tmp_path: Path
) -> None:
    recs, copies = redelivered_stream()
    sent = produce(fresh_kafka, recs)
    run = cdc_run(fresh_kafka, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = read_tables(settings(fresh_kafka, tmp_path))
    assert_exactly_once(got, sent)  # every delivery once, in bronze or quarantine

    ref = reference.tables
    assert got.bronze is not None and got.quarantine is not None and got.silver is not None
    assert ref.bronze is not None and ref.quarantine is not None and ref.silver is not None
    # Bronze/quarantine: the clean run's rows plus, per duplicate, its original's row again.
    ref_at = {x.rec.rid: x.coords for x in reference.sent}
    originals = coordinate_map(sent, reference.sent)
    copied = {x.coords: ref_at[copies[x.rec.rid]] for x in sent if x.rec.rid in copies}
    deliveries = {**originals, **copied}
    for role in ("bronze", "quarantine"):
        want = ref.get(role)
        found = got.get(role)
        assert want is not None and found is not None
        want = want.drop(AUDIT, strict=False)
        each = pl.DataFrame(
            list(deliveries.values()),
            schema={"partition": want.schema["partition"], "offset": want.schema["offset"]},
            orient="row",
        )
        assert_frames_equal(
            remap_rows(found, deliveries).drop(AUDIT, strict=False),
            want.join(each, on=["partition", "offset"], how="inner").select(want.columns),
            ["partition", "offset"],
            role,
        )
    # Silver: the same versions with the same values and validity as the clean run ...
    versions = ["contact_id", *BUSINESS, "valid_from", "valid_to", "is_current"]
    assert_frames_equal(
        got.silver.select(versions),
        ref.silver.select(versions),
        ["contact_id", "valid_from"],
        "silver versions",
    )
    # ... and exactly the clean run's rows: no lineage or sequence points at a re-delivery.
    assert_frames_equal(
        remap_silver(got.silver, originals), ref.silver, ["contact_id", "_seq_open"], "silver"
    )
    assert_frames_equal(got.orphans, ref.orphans, ["contact_id"], "orphans")
