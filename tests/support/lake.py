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
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from cdc.companions.maintenance import TableRef, maintenance_tables
from cdc.config.settings import Settings, load_settings
from cdc.ingest.produce import default_partition, parse_lines
from cdc.ingest.registry import FileRegistry
from cdc.pipeline.kafka_source import DecoderSpec, topic_decoder
from cdc_demo.data import Line, generate, merged_lines
from tests.support.decoding import decode_messages
from tests.support.envelopes import contact_envelope, contact_row
from tests.support.tables import read_table

_REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "ORPHAN_DELETE",
    "decoded_lines",
    "existing_tables",
    "lake_settings",
    "optimized_tables",
    "scheduled_arguments",
    "table_contents",
    "write_small_lake",
]

ORPHAN_DELETE: Line = {
    "key": {"contact_id": "never-seen"},
    "value": contact_envelope("d", 0, contact_row("never-seen"), None),
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
    return pa.Table.from_batches([decode_messages(decoder, messages)])


def write_small_lake(settings: Settings, spark: Any = None, seed: int = 7) -> None:
    """Write every enabled pipeline's tables from a small demo data set, in one batch each.

    Args:
        settings: the lake (``lake.writer`` picks the writer).
        spark: the session, for the delta-spark writer (which also asks the broker of
            ``kafka.bootstrap_servers`` for the topic's id, as every batch does).
        seed: the data set's seed.
    """
    from cdc.pipeline.batch_local import LocalBatchWriter
    from cdc.pipeline.batch_spark import DistributedBatchWriter

    dataset = generate(
        seed, accounts=6, contacts=24, opportunities=10, orders=40, behavior=60, fx_days=6
    )
    now = datetime.now(UTC)
    for name, pipeline in settings.selected(None).items():
        lines = merged_lines(dataset, pipeline.topic)
        if pipeline.topic == "crm.contacts":
            lines = [*lines, ORPHAN_DELETE]
        batch = decoded_lines(settings, name, lines)
        checkpoint = settings.checkpoint_path(name)
        if settings.lake.writer == "delta-spark":
            DistributedBatchWriter(name, pipeline, settings, checkpoint)(
                spark.createDataFrame(batch), 0
            )
        else:
            LocalBatchWriter(name, pipeline, settings, checkpoint).process(batch, 0, now)


def existing_tables(settings: Settings) -> list[TableRef]:
    """The lake's tables (as ``cdc maintain`` lists them) that have been written."""
    return [r for r in maintenance_tables(settings) if Path(r.uri, "_delta_log").is_dir()]


def table_contents(settings: Settings) -> dict[str, pl.DataFrame]:
    """Every written table's rows (deletion vectors honoured), in one order whatever the files."""
    out = {}
    for ref in existing_tables(settings):
        frame = read_table(ref.uri)
        flat = [c for c, dtype in frame.schema.items() if not dtype.is_nested()]
        out[ref.name] = frame.sort(flat, nulls_last=True)
    return out


def scheduled_arguments(job: str, env: str = "local") -> list[str]:
    """The arguments the schedule (the Helm chart's ScheduledSparkApplication, rendered by the
    pinned helm for prod) gives ``batch/maintain.py`` for ``job``, with ``--env`` set to
    ``env``."""
    from tests.support.deploy_tools import render

    for doc in render("prod"):
        if doc["kind"] == "ScheduledSparkApplication" and doc["metadata"]["name"].endswith(
            f"maintain-{job}"
        ):
            template = doc["spec"]["template"]
            assert template["mainApplicationFile"].endswith("/batch/maintain.py")
            arguments = list(template["arguments"])
            at = arguments.index("--env")
            return [*arguments[: at + 1], env, *arguments[at + 2 :]]
    raise AssertionError(f"no scheduled job maintain-{job}")


def lake_settings(root: Path, *overrides: str) -> Settings:
    """The local config with its lake and checkpoints under ``root``."""
    return load_settings(
        "local",
        [f"lake.root={root / 'lake'}", f"checkpoints.root={root / 'cp'}", *overrides],
        config_dir=_REPO / "config",
        environ={},
    )


def optimized_tables(output: str, refs: list[TableRef]) -> dict[str, str]:
    """``cdc maintain optimize``'s lines by table, once each has been checked: one line per
    table of ``refs``, in their order, each saying files before ``->`` after."""
    lines = output.splitlines()
    assert [line.split(":")[0] for line in lines] == [r.name for r in refs]
    assert all(" -> " in line for line in lines), lines
    return {line.split(":")[0]: line for line in lines}
