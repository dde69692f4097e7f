"""Kafka loses records the pipeline had read, or had still to read: one line, then the repair.

**Deleted before they were read** (retention, ``deleteRecords``): Spark's Kafka source stops
the query with its paragraph ("Some data may have been lost because they are not available
in Kafka any more; ...") and a JVM trace; ``cdc run`` said only its first line, naming neither
the partition nor a repair. Now: one line with the partition, the offsets and the replay
that lands what the topic still holds.

**Truncated and refilled under the same topic id** (the broker restored from an older copy
of its disk, then new records): the new records take the offsets of the lost ones, past the
checkpoint's position. Offsets alone cannot tell (the topic id is the same and every
partition reaches the checkpoint's offsets): ``cdc run`` read on from the checkpoint and
skipped the new records below it, exit 0. Now the run compares the last records bronze and
quarantine landed with what the broker holds at their offsets (timestamps and bytes), stops
in one line naming the partition, the offsets and the replay; the replay lands the new
records (bronze keeps the lost ones, which were real records), silver is the one-pass SCD2 of
every change.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cdc.pipeline.queries import run_pipelines
from cdc.runtime.broker import EmbeddedBroker
from cdc.runtime.kafka_admin import topic_id
from tests.support.faults import (
    PARTITIONS,
    PIPELINE,
    TOPIC,
    Sent,
    StreamBuilder,
    assert_exactly_once,
    assert_one_error,
    assert_silver_matches_model,
    base_builder,
    cdc_replay,
    cdc_run,
    checkpoint_batches,
    committed_position,
    end_offsets,
    produce,
    read_tables,
    settings,
)
from tests.support.tables import WRITERS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPLAY = re.compile(r" cdc replay --pipeline crm_contacts --offsets '(\S+)'$")


def one_error(run: subprocess.CompletedProcess[str]) -> str:
    """The run's one error line (see :func:`assert_one_error`), Spark's paragraph not shown."""
    line = assert_one_error(run)
    assert "Some data may have been lost" not in run.stderr, run.stderr[-3000:]
    return line.removeprefix("cdc: error: ")


def more_changes(builder: StreamBuilder, prefix: str, rounds: int) -> StreamBuilder:
    """``rounds`` tracked updates of every contact the builder has (after its records)."""
    follow = builder.continue_as(prefix)
    for r in range(rounds):
        for cid in sorted(follow.state):
            follow.upsert(cid, email=f"{cid}.{prefix}{r}@acme.io")
    return follow


def delete_records_below(bootstrap: str, below: dict[int, int]) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [TopicPartition(TOPIC, p, o) for p, o in sorted(below.items())]
    for future in admin.delete_records(wanted).values():
        future.result(timeout=30)


@pytest.mark.parametrize("writer", WRITERS)
def test_records_deleted_before_the_query_read_them_stop_it_in_one_line_naming_the_repair(
    spark: Any, fresh_kafka: str, tmp_path: Path, writer: str
) -> None:
    extra = (f"lake.writer={writer}",)
    builder = base_builder()
    first = produce(fresh_kafka, builder.recs)
    s = settings(fresh_kafka, tmp_path, *extra)
    run_pipelines(spark, s, [PIPELINE], available_now=True)
    read_up_to = committed_position(s)
    more = produce(fresh_kafka, more_changes(builder, "m", 2).recs)
    end = end_offsets(first + more)
    # Retention takes every new record but the last two of each partition: the query had
    # read none of them.
    kept = {p: end[p] - 2 for p in range(PARTITIONS)}
    assert all(kept[p] > read_up_to[p] for p in range(PARTITIONS))
    delete_records_below(fresh_kafka, kept)
    planned = checkpoint_batches(s, "commits")

    message = one_error(cdc_run(fresh_kafka, tmp_path, *extra))
    found = re.fullmatch(
        rf"pipeline {PIPELINE}: Kafka no longer holds records the query was to read:"
        r" crm\.contacts/(\d) offsets \[(\d+), (\d+)\) can no longer be read"
        r" \(KAFKA_DATA_LOSS\.COULD_NOT_READ_OFFSET_RANGE\): aged out by retention, deleted,"
        r" or lost by the broker\. Land what the topic still holds:"
        rf" cdc replay --pipeline {PIPELINE} --offsets '(\S+)'",
        message,
    )
    assert found is not None, message
    partition, start, stop = (int(found.group(i)) for i in (1, 2, 3))
    assert start == read_up_to[partition] and start < stop <= kept[partition], message
    resume = json.loads(found.group(4))
    assert resume == {TOPIC: {str(p): kept[p] for p in range(PARTITIONS)}}
    assert checkpoint_batches(s, "commits") == planned  # nothing committed

    replay = cdc_replay(fresh_kafka, tmp_path, "--offsets", found.group(4), "--set", extra[0])
    assert replay.returncode == 0, replay.stderr[-3000:]
    still_there = [x for x in more if x.offset >= kept[x.rec.partition]]
    after = read_tables(s)
    assert_exactly_once(after, first + still_there)


def restore_broker(broker: EmbeddedBroker, backup: Path) -> None:
    """The broker comes back from an older copy of its disk (same cluster, same topic ids)."""
    broker.stop()
    shutil.rmtree(broker.data_dir)
    shutil.copytree(backup, broker.data_dir)
    broker.restart()


def test_a_log_refilled_under_the_same_topic_id_stops_the_run_and_the_replay_lands_it(
    spark: Any, own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap
    builder = base_builder()
    first = produce(bootstrap, builder.recs)
    backup = tmp_path / "broker-backup"
    own_broker.stop()
    shutil.copytree(own_broker.data_dir, backup)
    own_broker.restart()
    lost_builder = more_changes(builder, "l", 1)
    lost = produce(bootstrap, lost_builder.recs)
    s = settings(bootstrap, tmp_path)
    run_pipelines(spark, s, [PIPELINE], available_now=True)
    assert_exactly_once(read_tables(s), first + lost)
    read_up_to = committed_position(s)
    the_id = topic_id(bootstrap, TOPIC)

    restore_broker(own_broker, backup)  # the topic lost `lost`, under the same id
    assert topic_id(bootstrap, TOPIC) == the_id
    refill = produce(bootstrap, more_changes(lost_builder, "r", 2).recs)
    refilled_end = end_offsets(first + refill)
    assert all(refilled_end[p] > read_up_to[p] for p in range(PARTITIONS))
    lost_from = end_offsets(first)
    before = read_tables(s)
    planned = checkpoint_batches(s, "offsets")

    message = one_error(cdc_run(bootstrap, tmp_path))
    assert message.startswith(
        f"pipeline {PIPELINE}: topic {TOPIC} was truncated and refilled under the same topic id"
        f" ({TOPIC}/0 offset "
    ), message
    for p in range(PARTITIONS):
        assert re.search(
            rf"{re.escape(TOPIC)}/{p} offset \d+ holds a record of \S+Z where bronze or"
            rf" quarantine landed one of \S+Z, so offsets {lost_from[p]} to {read_up_to[p]}"
            " are new records",
            message,
        ), message
    command = REPLAY.search(message)
    assert command is not None, message
    assert json.loads(command.group(1)) == {TOPIC: {str(p): lost_from[p] for p in lost_from}}
    after_refusal = read_tables(s)
    assert after_refusal.versions == before.versions  # nothing written
    assert checkpoint_batches(s, "offsets") == planned  # nothing read

    replay = cdc_replay(bootstrap, tmp_path, "--offsets", command.group(1))
    assert replay.returncode == 0, replay.stderr[-3000:]
    valid = sum(1 for x in refill if x.rec.reason is None)
    assert f"(bronze +{valid}, quarantine +0; " in replay.stdout, replay.stdout
    after = read_tables(s)
    # Bronze keeps the lost records (they were real) beside the new ones at their offsets.
    every: list[Sent] = first + lost + refill
    assert_exactly_once(after, every, single_epoch=False)
    assert_silver_matches_model(after.silver, every)
    # The replay's checkpoint is sound: the next run starts and has nothing to do.
    again = cdc_run(bootstrap, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_tables(s).versions == after.versions
