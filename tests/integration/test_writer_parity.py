"""Both writers, the same input, every table equal.

One mixed history goes through the real broker and Spark's Kafka source twice, once per
writer (``lake.writer`` delta-rs and delta-spark), cut into the same micro-batches: contacts
(an SCD2 dimension) with late changes, resends, deletes, tombstones, deletes of keys never
seen and poison records; orders (facts) with repeated event ids, an expectation that drops
and one that warns. Every table the pipelines write — bronze, quarantine, the dimension, its
orphan markers, the facts — must hold the same rows on both lakes; so must the batches'
counts. The rules they apply are defined once (:mod:`cdc.core.scd2`, :mod:`cdc.ingest.changes`,
:mod:`cdc.store.plan`, :mod:`cdc.pipeline.expectations`); this is what shows the two renderings
agree.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.config.lake import pipeline_tables
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.queries import run_pipelines
from tests.support.envelopes import T0, change
from tests.support.kafka import produce
from tests.support.local_settings import make_settings
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINES = ("crm_contacts", "orders")
BATCH = 9
"""maxOffsetsPerTrigger: many small batches, so late changes cross batch boundaries."""
AUDIT = ("_ingested_at", "_quarantined_at")
"""Columns that hold the wall clock of the write (the only ones that may differ)."""


def contact_history(seed: int) -> list[dict[str, Any]]:
    """Changes of six contacts, a fifth of them out of order, with resends, deletes,
    tombstones, a delete of a key never seen, and records the contracts refuse."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(70):
        cid = f"c{rng.randrange(6)}"
        ts = 1_000 * (i + 1)
        roll = rng.random()
        if roll < 0.1:
            events.append(change(cid, "d", ts))
        elif roll < 0.15:
            events.append({"key": {"contact_id": cid}, "value": None})  # tombstone
        else:
            events.append(
                change(
                    cid,
                    "u" if i else "c",
                    ts,
                    email=f"{cid}.{rng.choice('ab')}@acme.io",
                    phone=rng.choice([None, "+1 1", "+1 2"]),
                )
            )
    late = rng.sample(range(len(events)), 14)  # moved later in the log than their position
    moved = [events[i] for i in late]
    kept = [e for i, e in enumerate(events) if i not in set(late)]
    for event in moved:
        kept.insert(rng.randrange(len(kept) + 1), event)
    kept += rng.sample(kept, 5)  # resends: the same change again, later in the log
    kept.append(change("never-seen", "d", 71_000))
    poison = [
        {"key": {"contact_id": "p1"}, "value_b64": base64.b64encode(b"not avro").decode()},
        change("p2", "c", 72_000, email="not-an-email"),  # a contract rule
    ]
    for record in poison:
        kept.insert(rng.randrange(len(kept) + 1), record)
    return kept


def order_history(seed: int) -> list[dict[str, Any]]:
    """Orders with repeated event ids, amounts the ``drop`` rule refuses, and missing
    contacts the ``warn`` rule counts."""
    rng = random.Random(seed)
    lines = []
    for i in range(40):
        eid = f"e{rng.randrange(30)}"  # repeats: re-deliveries of an event
        lines.append(
            {
                "key": {"order_id": f"o{i}"},
                "value": {
                    "event_id": eid,
                    "order_id": f"o{i}",
                    "account_id": f"a{rng.randrange(3)}",
                    "contact_id": rng.choice([None, "c1"]),
                    "status": "placed",
                    "amount": rng.choice(["0.00", "5.00", "12.50"]),
                    "currency": "EUR",
                    "ordered_at": T0 + i,
                    "event_ts": T0 + i + 10,
                },
            }
        )
    return lines


def _table(uri: str) -> pl.DataFrame:
    frame = read_table(uri)
    frame = frame.drop([c for c in AUDIT if c in frame.columns])
    flat = [c for c, dtype in frame.schema.items() if not dtype.is_nested()]
    return frame.select(sorted(frame.columns)).sort(sorted(flat), nulls_last=True)


@pytest.mark.parametrize("seed", [3, 11])
def test_both_writers_write_the_same_tables(
    spark: Any, fresh_kafka: str, tmp_path: Path, seed: int
) -> None:
    produce(fresh_kafka, "crm.contacts", contact_history(seed), tmp_path)
    produce(fresh_kafka, "events.orders", order_history(seed), tmp_path)
    tables: dict[str, dict[str, pl.DataFrame]] = {}
    counts: dict[str, dict[str, list[tuple[int, ...]]]] = {}
    for writer in WRITERS:
        settings = make_settings(
            fresh_kafka,
            tmp_path / writer,
            f"lake.writer={writer}",
            f"defaults.max_records_per_trigger={BATCH}",
        )
        batches: dict[str, list[tuple[int, ...]]] = {}

        def on_batch(name: str, stats: BatchStats, into: dict[str, Any] = batches) -> None:
            into.setdefault(name, []).append(
                (
                    stats.batch_id,
                    stats.input_rows,
                    stats.bronze_rows,
                    stats.quarantined,
                    stats.inserted,
                    stats.updated,
                    stats.closed,
                    stats.duplicates,
                    stats.late_keys,
                )
            )

        run_pipelines(spark, settings, list(PIPELINES), available_now=True, on_batch=on_batch)
        counts[writer] = {name: sorted(found) for name, found in batches.items()}
        tables[writer] = {
            f"{name}/{role}": _table(uri)
            for name in PIPELINES
            for role, uri in pipeline_tables(settings, settings.pipeline(name)).items()
            if role != "orphans" or Path(uri).exists()
        }
    rs, spark_tables = tables["delta-rs"], tables["delta-spark"]
    assert sorted(rs) == sorted(spark_tables)
    assert {"crm_contacts/orphans", "orders/silver"} <= set(rs)  # the history reached both
    for name, frame in rs.items():
        other = spark_tables[name]
        assert frame.columns == other.columns, name
        assert frame.height > 0, name
        assert frame.equals(other.cast(frame.schema, strict=False)), name
    assert counts["delta-rs"] == counts["delta-spark"]
    silver = rs["crm_contacts/silver"]
    assert silver.filter(~pl.col("is_current")).height > 0  # versions were closed
    assert counts["delta-rs"]["crm_contacts"][-1][0] >= 5  # many batches, late ones among them
    assert sum(batch[-1] for batch in counts["delta-rs"]["crm_contacts"]) > 0  # late keys
