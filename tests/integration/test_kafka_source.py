"""Spark's Kafka source against the real broker: what the old stand-in broker could not show.

Partitions added to a running query, a topic deleted and recreated (with fewer or with more
records than the query had read), and the source options users know. The broker is the
session's; each test starts with no topics.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdc.config.lake import table_paths
from cdc.errors import ConfigError, DataLossError
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.checkpoint import TOPIC_FILE
from cdc.pipeline.kafka_source import source_options
from cdc.pipeline.queries import run_pipelines, start_query
from cdc.runtime.kafka_admin import create_partitions, ensure_topic
from tests.support.envelopes import change
from tests.support.kafka import delete_topic, produce
from tests.support.local_settings import make_settings
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOPIC = "crm.contacts"
PIPELINE = "crm_contacts"


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _bronze_rows(uri: str) -> int:
    return read_table(uri).height if Path(uri, "_delta_log").is_dir() else 0


def _topic_with_contacts(bootstrap: str, tmp_path: Path, count: int, partitions: int = 1) -> None:
    """The topic with ``partitions`` partitions and ``count`` new contacts c0, c1, ..."""
    ensure_topic(bootstrap, TOPIC, partitions)
    lines = [change(f"c{i}", "c", 1000 * i, email=f"c{i}@x.io") for i in range(count)]
    produce(bootstrap, TOPIC, lines, tmp_path)


def test_partitions_added_to_a_running_query_are_read(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    _topic_with_contacts(fresh_kafka, tmp_path, 5)
    settings = make_settings(fresh_kafka, tmp_path, "spark.trigger_interval=200 ms")
    bronze = table_paths(settings, settings.pipeline(PIPELINE))["bronze"]
    query = start_query(spark, settings, PIPELINE, available_now=False)
    try:
        _wait_for(lambda: _bronze_rows(bronze) == 5, "the first five records")
        assert create_partitions(fresh_kafka, TOPIC, 3) == 3
        later = [
            {**change(f"n{i}", "c", 9000 + i, email=f"n{i}@x.io"), "partition": 1 + i % 2}
            for i in range(6)
        ]
        produce(fresh_kafka, TOPIC, later, tmp_path)
        _wait_for(lambda: _bronze_rows(bronze) == 11, "the records of the new partitions")
        assert query.isActive and query.exception() is None
    finally:
        query.stop()
    rows = read_table(bronze)
    assert sorted(rows.get_column("partition").unique().to_list()) == [0, 1, 2]
    assert rows.filter(rows.get_column("partition") > 0).height == 6


@pytest.mark.parametrize("recreated_records", [2, 12], ids=["fewer", "more"])
def test_a_recreated_topic_is_data_loss_never_a_silent_skip(
    spark: Any, fresh_kafka: str, tmp_path: Path, recreated_records: int
) -> None:
    """After a delete + create, the offsets of the checkpoint name other records: with fewer
    records Spark would see offsets go back; with more it would silently skip the first ones
    (offsets below the checkpoint's) and read the rest. The topic id tells both apart."""
    settings = make_settings(fresh_kafka, tmp_path)
    _topic_with_contacts(fresh_kafka, tmp_path, 6)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    bronze = table_paths(settings, settings.pipeline(PIPELINE))["bronze"]
    assert _bronze_rows(bronze) == 6

    delete_topic(fresh_kafka, TOPIC)
    ensure_topic(fresh_kafka, TOPIC, 1)
    produce(
        fresh_kafka,
        TOPIC,
        [change(f"r{i}", "c", 50_000 + i, email=f"r{i}@x.io") for i in range(recreated_records)],
        tmp_path,
    )
    with pytest.raises(DataLossError, match="was deleted and recreated") as failed:
        run_pipelines(spark, settings, [PIPELINE], available_now=True)
    message = str(failed.value)
    assert f"topic {TOPIC} now has id" in message
    assert "holds offsets of topic id" in message
    # A checkpoint that lost its record of the id: the tables' rows tell instead.
    topic_file = Path(settings.checkpoint_path(PIPELINE)) / TOPIC_FILE
    saved = topic_file.read_text()
    topic_file.unlink()
    with pytest.raises(DataLossError, match="the pipeline's tables hold records of topic id"):
        run_pipelines(spark, settings, [PIPELINE], available_now=True)
    assert not topic_file.exists()
    topic_file.write_text(saved)
    assert "cdc replay --pipeline crm_contacts --earliest" in message
    assert "\n" not in message
    assert _bronze_rows(bronze) == 6  # nothing of the new topic was written

    # The repair the message names: every record of the new topic lands exactly once. The
    # tables' rows say which incarnation they came from, so this holds even when the old
    # checkpoint is gone too (the rows at offsets 0..5 are not the new topic's 0..5).
    from cdc.ops.replay import ReplayPosition, replay_pipeline, run_available_now

    if recreated_records > 6:
        shutil.rmtree(settings.checkpoint_path(PIPELINE))
    outcome = replay_pipeline(
        settings, PIPELINE, ReplayPosition.earliest(), runner=run_available_now
    )
    assert outcome.plan.re_read == recreated_records + 1  # and the produce's commit marker
    assert outcome.plan.already_landed == 0
    rows = read_table(bronze)
    assert rows.height == 6 + recreated_records
    new = rows.filter(rows.get_column("key").struct.field("contact_id").str.starts_with("r"))
    assert sorted(new.get_column("offset").to_list()) == list(range(recreated_records))


def test_a_topic_recreated_under_a_running_query_stops_it(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(fresh_kafka, tmp_path, "spark.trigger_interval=200 ms")
    _topic_with_contacts(fresh_kafka, tmp_path, 4)
    bronze = table_paths(settings, settings.pipeline(PIPELINE))["bronze"]
    query = start_query(spark, settings, PIPELINE, available_now=False)
    try:
        _wait_for(lambda: _bronze_rows(bronze) == 4, "the first records")
        delete_topic(fresh_kafka, TOPIC)
        ensure_topic(fresh_kafka, TOPIC, 1)
        produce(
            fresh_kafka,
            TOPIC,
            [change(f"r{i}", "c", 50_000 + i, email=f"r{i}@x.io") for i in range(9)],
            tmp_path,
        )
        _wait_for(lambda: not query.isActive, "the query to stop")
        error = str(query.exception())
    finally:
        if query.isActive:
            query.stop()
    # Either Spark's own check (a partition went missing or its offsets went back) or ours (a
    # new topic id) stops it; both name the loss. What matters: nothing new was written.
    assert any(
        text in error
        for text in ("was deleted and recreated", "data may have been lost", "may have been missed")
    ), error
    assert _bronze_rows(bronze) == 4


def test_max_offsets_per_trigger_caps_each_batch(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    _topic_with_contacts(fresh_kafka, tmp_path, 23, partitions=2)
    settings = make_settings(
        fresh_kafka, tmp_path, "pipelines.crm_contacts.max_records_per_trigger=5"
    )
    seen: list[BatchStats] = []
    run_pipelines(
        spark, settings, [PIPELINE], available_now=True, on_batch=lambda _, s: seen.append(s)
    )
    sizes = [s.input_rows for s in seen]
    assert sum(sizes) == 23
    assert max(sizes) <= 5 and len(sizes) >= 5


def test_starting_offsets_by_timestamp_passes_through(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    import json

    from confluent_kafka import Producer

    from cdc.ingest.contracts import load_contracts
    from cdc.ingest.produce import parse_lines
    from cdc.ingest.registry import FileRegistry
    from tests.support.paths import CONTRACTS_PATH, REGISTRY_PATH

    ensure_topic(fresh_kafka, TOPIC, 1)
    lines = [change(f"c{i}", "c", 1000 * i, email=f"c{i}@x.io") for i in range(10)]
    records, errors = parse_lines(
        [json.dumps(line) for line in lines],
        FileRegistry.load(REGISTRY_PATH),
        load_contracts(CONTRACTS_PATH)[TOPIC],
    )
    assert errors == []
    producer = Producer({"bootstrap.servers": fresh_kafka})
    base_ms = 1_767_600_000_000
    for i, record in enumerate(records):
        producer.produce(
            TOPIC, value=record.value, key=record.key, partition=0, timestamp=base_ms + i
        )
    assert producer.flush(10) == 0
    settings = make_settings(
        fresh_kafka,
        tmp_path,
        f'pipelines.crm_contacts.source_options={{"startingOffsetsByTimestamp": '
        f'"{{\\"{TOPIC}\\": {{\\"0\\": {base_ms + 6}}}}}"}}',
    )
    assert source_options(settings, settings.pipeline(PIPELINE))["startingOffsetsByTimestamp"]
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    rows = read_table(table_paths(settings, settings.pipeline(PIPELINE))["bronze"])
    assert sorted(rows.get_column("offset").to_list()) == [6, 7, 8, 9]


def test_unknown_source_option_is_one_line(fresh_kafka: str, tmp_path: Path) -> None:
    settings = make_settings(
        fresh_kafka, tmp_path, 'pipelines.crm_contacts.source_options={"maxOffsetPerTrigger": "5"}'
    )
    with pytest.raises(ConfigError, match="unknown source option 'maxOffsetPerTrigger'; valid: "):
        source_options(settings, settings.pipeline(PIPELINE))
