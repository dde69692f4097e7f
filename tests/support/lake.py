"""A small lake with every table the service writes, without Kafka or a query.

The demo data set (small counts), valid and invalid lines of every topic, is encoded like
``cdc produce`` encodes it and decoded by each pipeline's own decoder (the one Spark's Kafka
source runs on the executors), then written by the pipeline's delta-rs writer (the
``foreachBatch`` function of ``cdc run``): bronze, quarantine, silver dimensions, the orphans
table of a dimension (a delete of a key it never saw) and facts. ``cdc gold build`` then
builds gold on it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from cdc.config import Settings
from cdc.demo_data import Line, generate, merged_lines
from cdc.kafka_source import DecoderSpec, topic_decoder
from cdc.produce import default_partition, parse_lines
from cdc.registry import FileRegistry

__all__ = ["ORPHAN_DELETE", "decoded_lines", "write_small_lake"]

ORPHAN_DELETE: Line = {
    "key": {"contact_id": "never-seen"},
    "value": {
        "before": {
            "contact_id": "never-seen",
            "account_id": "a-gone",
            "email": "gone@example.com",
            "first_name": "No",
            "last_name": "Body",
            "phone": None,
            "updated_at": 1_767_600_000_000,
        },
        "after": None,
        "op": "d",
        "ts_ms": 1_767_600_000_005,
        "source": {
            "version": "2.7.0",
            "connector": "postgresql",
            "name": "crm",
            "db": "crm",
            "table": "contacts",
            "ts_ms": 1_767_600_000_000,
            "lsn": 1,
            "txId": None,
            "snapshot": False,
        },
    },
}
"""A delete of a contact the dimension never had: it leaves a marker in the orphans table."""


def decoded_lines(
    settings: Settings, pipeline: str, lines: list[Line], partitions: int = 3
) -> pa.Table:
    """``lines`` encoded like ``cdc produce`` and decoded by the pipeline's decoder.

    Each record's Kafka timestamp is one instant after every generated time (what
    ``cdc produce`` gives a replayed history); offsets count per partition from 0.
    """
    p = settings.pipeline(pipeline)
    registry = FileRegistry.load(settings.registry.path)
    decoder = topic_decoder(DecoderSpec.from_settings(settings, p), p.topic)
    records, errors = parse_lines([json.dumps(line) for line in lines], registry, decoder.contract)
    assert [str(e) for e in errors] == []
    produced_at = int(datetime(2026, 11, 23, 12, tzinfo=UTC).timestamp() * 1000)
    offsets: dict[int, int] = defaultdict(int)
    messages: list[tuple[str, int, int, int, bytes | None, bytes | None]] = []
    for record in records:
        assert record.key is not None
        partition = default_partition(record.key, partitions)
        messages.append(
            (p.topic, partition, offsets[partition], produced_at, record.key, record.value)
        )
        offsets[partition] += 1
    return pa.Table.from_batches([decoder.decode_batch(messages)])


def write_small_lake(settings: Settings, seed: int = 7) -> dict[str, Any]:
    """Write every enabled pipeline's tables from a small demo data set (delta-rs writer).

    Returns:
        Each pipeline's batch stats.
    """
    from cdc.batch_local import LocalBatchWriter

    dataset = generate(
        seed, accounts=6, contacts=24, opportunities=10, orders=40, behavior=60, fx_days=6
    )
    stats = {}
    now = datetime.now(UTC)
    for name, pipeline in settings.selected(None).items():
        lines = merged_lines(dataset, pipeline.topic)
        if pipeline.topic == "crm.contacts":
            lines = [*lines, ORPHAN_DELETE]
        writer = LocalBatchWriter(name, pipeline, settings, settings.checkpoint_path(name))
        stats[name] = writer.process(decoded_lines(settings, name, lines), 0, now)
    return stats
