"""The order-insensitivity property end to end: Kafka (3 partitions) → Spark → Delta.

Change events are produced in a random order that does not follow their source commit
times, read in small micro-batches, and silver must equal the one-pass SCD2 over every
record bronze received, sorted by sequence.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from cdc.config.lake import table_paths
from cdc.core.scd2 import Scd2Spec
from cdc.ingest.changes import business_columns, scd2_changes
from cdc.pipeline.queries import run_pipelines
from tests.support.envelopes import change
from tests.support.kafka import produce
from tests.support.local_settings import make_settings
from tests.support.scd2_one_pass import scd2_from_events
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def random_log(rng: random.Random, keys: int, events: int) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for _ in range(events):
        cid = f"k{rng.randrange(keys)}"
        ts = rng.randrange(0, 40) * 100  # equal commit times happen
        roll = rng.random()
        if roll < 0.15:
            lines.append(change(cid, "d", ts))
            if rng.random() < 0.7:
                lines.append({"key": {"contact_id": cid}, "value": None})  # tombstone
        else:
            op = rng.choice(["c", "u", "u", "r"])
            email = rng.choice(["a@x.io", "b@x.io"])
            lines.append(change(cid, op, ts, email=email, phone=rng.choice(["1", "2", None])))
    return lines


# delta-spark costs seconds per micro-batch (Spark jobs, a MERGE): larger batches, fewer seeds.
@pytest.mark.parametrize(
    ("writer", "seed", "per_batch"),
    [
        ("delta-rs", 1, 9),
        ("delta-rs", 2, 9),
        ("delta-rs", 3, 9),
        *((WRITERS[1], s, 20) for s in (1, 2)),
    ],
)
def test_silver_equals_one_sorted_pass_whatever_the_log_order(
    spark: Any, fresh_kafka: str, tmp_path: Path, seed: int, writer: str, per_batch: int
) -> None:
    rng = random.Random(seed)
    bootstrap = fresh_kafka
    lines = random_log(rng, keys=6, events=70)
    # Two produce calls: the second half arrives after a first run has committed.
    produce(bootstrap, "crm.contacts", lines[:35], tmp_path)
    settings = make_settings(
        bootstrap,
        tmp_path,
        f"pipelines.crm_contacts.max_records_per_trigger={per_batch}",
        f"lake.writer={writer}",
    )
    run_pipelines(spark, settings, ["crm_contacts"], available_now=True)
    produce(bootstrap, "crm.contacts", lines[35:], tmp_path)
    run_pipelines(spark, settings, ["crm_contacts"], available_now=True)

    paths = table_paths(settings, settings.pipeline("crm_contacts"))
    bronze = DeltaTable(paths["bronze"]).to_pyarrow_table()  # appends only: no deletion vectors
    assert bronze.num_rows == len(lines)
    pipeline = settings.pipeline("crm_contacts")
    spec = Scd2Spec.build(
        keys=pipeline.keys,
        columns=business_columns(bronze.schema, "envelope"),
        track_history_except=pipeline.track_history_except,
    )
    expected = scd2_from_events(scd2_changes(bronze, spec, "envelope", None), spec)
    silver = read_table(paths["silver"])
    order = ["contact_id", "_seq_open"]
    assert silver.sort(order).equals(expected.sort(order).select(silver.columns))
