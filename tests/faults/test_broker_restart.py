"""A broker that loses its data mid-stream (Tansu, in-memory store, restarted).

The pipeline drains the base stream; the broker restarts and comes back empty; producers
send new records, whose offsets restart at 0. When fewer arrive than the query had read,
every partition looks like "the query's offset is beyond the end of the partition".

* ``failOnDataLoss=true``: ``cdc run`` fails with one line on stderr naming every lost
  topic/partition, exit code 2, no traceback, and neither tables nor checkpoint move.
* ``failOnDataLoss=false``: the run logs the loss, reads the new records from offset 0, and
  the tables hold every old record once (unchanged) plus every new record once; silver
  equals the one-pass SCD2 model over old and new changes together.
* Producers that write *more* records after the restart than the query had read leave no
  offset "beyond the end": the loss is still a loss, and ``failOnDataLoss=true`` must still
  stop the run rather than skip the new records below the checkpoint's offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdc.broker import EmbeddedBroker
from cdc.config import Settings
from cdc.pipelines import run_pipelines
from tests.faults.harness import (
    PARTITIONS,
    PIPELINE,
    TOPIC,
    Rec,
    Sent,
    StreamBuilder,
    Tables,
    assert_exactly_once,
    assert_frames_equal,
    assert_same_tables,
    assert_silver_matches_model,
    base_builder,
    cdc_run,
    checkpoint_batches,
    produce,
    read_tables,
    settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def after_restart(builder: StreamBuilder) -> list[Rec]:
    """New changes after the broker came back: at most 3 per partition (< what was read)."""
    b = builder.continue_as("n")
    for cid in ("c12", "c13", "c14"):
        b.upsert(cid, "c", email=f"{cid}@new.acme.io")  # new contacts, one per partition
    b.upsert("c03", email="user3.after@acme.io")  # tracked update of an old contact
    b.upsert("c04", phone="+1 555 0104")  # untracked update of an old contact
    b.delete("c11")  # delete + tombstone of an old contact
    b.tombstone("c11")
    recs: list[Rec] = b.recs
    return recs


def many_after_restart(builder: StreamBuilder) -> list[Rec]:
    """New contacts after the broker came back: 17 per partition (> what was read)."""
    b = builder.continue_as("m")
    for i in range(20, 20 + 17 * PARTITIONS):
        b.upsert(f"c{i:02d}", "c", email=f"c{i}@new.acme.io")
    recs: list[Rec] = b.recs
    return recs


@dataclass(frozen=True)
class Restarted:
    """A pipeline that drained the base stream, then its broker lost everything."""

    settings: Settings
    old: list[Sent]
    new: list[Sent]
    before: Tables
    planned: set[int]
    read_up_to: dict[int, int]
    new_end: dict[int, int]


def drain_then_lose_the_broker(
    spark: Any,
    broker: EmbeddedBroker,
    root: Path,
    flag: str,
    produce_after: Any,
) -> Restarted:
    builder = base_builder()
    old = produce(broker.bootstrap, builder.recs)
    s = settings(broker.bootstrap, root, flag)
    run_pipelines(spark, s, [PIPELINE], available_now=True)  # the part before the restart
    before = read_tables(s)
    assert_exactly_once(before, old)
    broker.restart()  # in-memory store: every topic, record and offset is gone
    new = produce(broker.bootstrap, produce_after(builder))
    read_up_to = {p: sum(1 for x in old if x.rec.partition == p) for p in range(PARTITIONS)}
    new_end = {p: sum(1 for x in new if x.rec.partition == p) for p in range(PARTITIONS)}
    for p in range(PARTITIONS):
        offsets = [x.offset for x in new if x.rec.partition == p]
        assert offsets == list(range(new_end[p])), "offsets must restart at 0"
    return Restarted(s, old, new, before, checkpoint_batches(s, "offsets"), read_up_to, new_end)


def assert_one_line_data_loss_error(stderr: str) -> str:
    """Exit 2's message: one ``cdc: error:`` line naming DataLossError; no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(errors) == 1, stderr[-3000:]
    error = errors[0]
    assert error.startswith(f"cdc: error: pipeline {PIPELINE} failed: "), error
    assert "DataLossError" in error, error
    assert "failOnDataLoss=false" in error, error
    # One line: the error, after Spark's start-up banner and the "running" line.
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not re.search(r"^\s+at [\w$.]+\(", stderr, re.M), "a Java stack trace"
    assert stderr.rstrip("\n").splitlines()[-2:] == [
        f"running {PIPELINE} (available-now, env local)",
        error,
    ], stderr[-3000:]
    return error


def assert_nothing_moved(r: Restarted) -> None:
    after = read_tables(r.settings)
    assert after.versions == r.before.versions
    assert_same_tables(after, r.before)
    assert_frames_equal(after.bronze, r.before.bronze, ["partition", "offset"], "bronze")
    assert checkpoint_batches(r.settings, "offsets") == r.planned


def test_broker_restart_with_fail_on_data_loss_fails_in_one_line_and_moves_nothing(
    spark: Any, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    flag = "defaults.fail_on_data_loss=true"
    r = drain_then_lose_the_broker(spark, broker, tmp_path, flag, after_restart)
    assert all(r.new_end[p] < r.read_up_to[p] for p in range(PARTITIONS))

    run = cdc_run(broker.bootstrap, tmp_path, flag)
    assert run.returncode == 2, run.stderr[-3000:]
    assert_nothing_moved(r)
    error = assert_one_line_data_loss_error(run.stderr)
    for p in range(PARTITIONS):
        assert (
            f"data loss on {TOPIC}/{p}: the query's offset {r.read_up_to[p]} is beyond the"
            f" end of the partition {r.new_end[p]}" in error
        ), error


def test_broker_restart_without_fail_on_data_loss_reads_new_records_once(
    spark: Any, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    flag = "defaults.fail_on_data_loss=false"
    r = drain_then_lose_the_broker(spark, broker, tmp_path, flag, after_restart)

    run = cdc_run(broker.bootstrap, tmp_path, flag)
    assert run.returncode == 0, run.stderr[-3000:]
    for p in range(PARTITIONS):  # the tolerated loss is visible, per partition
        assert f"data loss on {TOPIC}/{p}" in run.stderr, run.stderr[-3000:]
    after = read_tables(r.settings)
    assert_exactly_once(after, r.old + r.new, single_epoch=False)
    # Old records stay as they were (same rows, same batch ids and ingestion times) ...
    assert after.bronze is not None and r.before.bronze is not None
    old_ids = [x.rec.ts for x in r.old]
    kept = after.bronze.filter(after.bronze["timestamp"].dt.epoch("ms").is_in(old_ids))
    assert_frames_equal(kept, r.before.bronze, ["partition", "offset"], "old bronze rows")
    assert_frames_equal(
        after.quarantine, r.before.quarantine, ["partition", "offset"], "quarantine"
    )
    # ... and silver is the SCD2 of old and new changes together, each applied once.
    assert_silver_matches_model(after.silver, r.old + r.new)
