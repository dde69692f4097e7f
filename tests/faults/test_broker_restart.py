"""The broker goes away mid-stream: it comes back with its log, or it comes back empty.

**Its log kept** (a restart, a crash): Kafka keeps every topic, record and offset on disk, so
the pipeline only has to wait for it and go on.

* The broker is stopped and started again while a query is reading; records are produced
  before and after. The query rides out the outage and its tables equal the clean reference
  run (0 lost, 0 duplicated).
* The broker is SIGKILLed while a real ``cdc run --available-now`` is reading: the run waits,
  finishes what it planned, exits 0; the next run reads what was produced after the crash.

**Its data lost** (``restart(wipe=True)``: a new, empty cluster): a producer creates the topic
again and offsets restart at 0. The pipeline recorded the topic's id in its checkpoint; the
topic now has another id, so ``cdc run`` refuses in one line, exit code 2, before touching
tables or checkpoint, whatever ``failOnDataLoss`` says and however many records came back
(more than the query had read leave no offset "beyond the end" for Spark to notice). The
error says what to do: ``cdc replay --earliest`` then reads every new record once, and silver
is the one-pass SCD2 of old and new changes together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdc.config.settings import Settings
from cdc.errors import DataLossError
from cdc.pipeline.checkpoint import read_topic_id
from cdc.pipeline.queries import run_pipelines, start_query
from cdc.runtime.broker import EmbeddedBroker
from cdc.runtime.kafka_admin import topic_id
from tests.support.faults import (
    BATCH,
    PARTITIONS,
    PIPELINE,
    TOPIC,
    Rec,
    Reference,
    Sent,
    StreamBuilder,
    Tables,
    assert_exactly_once,
    assert_frames_equal,
    assert_one_error,
    assert_same_tables,
    assert_silver_matches_model,
    base_builder,
    base_stream,
    cdc_replay,
    cdc_run,
    checkpoint_batches,
    committed_position,
    end_offsets,
    produce,
    read_tables,
    settings,
    start_cdc_run,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BEFORE = 24
"""Records of the base stream produced before the broker goes away (six batches)."""
DRAIN_S = 180.0
"""Deadline for a query to read everything once the broker is back."""


# --------------------------------------------------------------------------- log kept


def assert_mid_run(s: Settings, sent: list[Sent]) -> None:
    """The query has committed a batch, and more of ``sent`` is left than the batch that may
    be in flight: some of it can only be read from the broker once it is back."""
    position = committed_position(s)
    left = sum(end - position.get(p, 0) for p, end in end_offsets(sent).items())
    assert position and left > BATCH, f"not mid-run: committed {position}, {left} left"


def test_broker_stopped_and_started_mid_query_keeps_its_log_and_the_query_goes_on(
    spark: Any, own_broker: EmbeddedBroker, reference: Reference, tmp_path: Path
) -> None:
    stream = base_stream()
    sent = produce(own_broker.bootstrap, stream[:BEFORE])
    s = settings(own_broker.bootstrap, tmp_path)
    query = start_query(spark, s, PIPELINE, available_now=False)

    def committed(up_to: dict[int, int] | None = None) -> bool:
        """Whether the query committed a batch (ending at ``up_to``); fails if it stopped."""
        assert query.isActive, f"the query stopped: {query.exception()}"
        position = committed_position(s)
        return bool(position) if up_to is None else position == up_to

    try:
        wait_until(committed, DRAIN_S, "a first batch")
        assert_mid_run(s, sent)
        own_broker.restart()  # a clean stop, then the same broker from its log on disk
        assert query.isActive, f"the query stopped: {query.exception()}"
        sent += produce(own_broker.bootstrap, stream[BEFORE:])
        end = end_offsets(sent)
        wait_until(lambda: committed(end), DRAIN_S, f"the query read up to {end}")
    finally:
        query.stop()
    assert query.exception() is None, query.exception()

    # Offsets went on where they were: the same records at the same offsets as the clean run.
    assert [x.coords for x in sent] == [x.coords for x in reference.sent]
    got = read_tables(s)
    assert_exactly_once(got, sent)
    assert_same_tables(got, reference.tables)
    assert checkpoint_batches(s, "commits") == checkpoint_batches(s, "offsets")


def test_broker_killed_mid_cdc_run_and_restarted_from_its_log_loses_and_repeats_nothing(
    own_broker: EmbeddedBroker, reference: Reference, tmp_path: Path
) -> None:
    stream = base_stream()
    sent = produce(own_broker.bootstrap, stream[:BEFORE])
    s = settings(own_broker.bootstrap, tmp_path)
    output = tmp_path / "run.log"
    run = start_cdc_run(own_broker.bootstrap, tmp_path, output)
    try:
        wait_until(
            lambda: run.poll() is not None or bool(committed_position(s)), 300, "a first batch"
        )
        assert run.poll() is None, f"exit {run.returncode}\n{output.read_text()[-3000:]}"
        assert_mid_run(s, sent)
        own_broker.kill()
        own_broker.restart()  # Kafka recovers its log after the unclean shutdown
        sent += produce(own_broker.bootstrap, stream[BEFORE:])
        code = run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert code == 0, output.read_text()[-3000:]
    # Available-now: the run read exactly what the topic held when it started.
    assert committed_position(s) == end_offsets(sent[:BEFORE])

    rest = cdc_run(own_broker.bootstrap, tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert [x.coords for x in sent] == [x.coords for x in reference.sent]
    got = read_tables(s)
    assert_exactly_once(got, sent)
    assert_same_tables(got, reference.tables)
    assert checkpoint_batches(s, "commits") == checkpoint_batches(s, "offsets")


# --------------------------------------------------------------------------- data lost


def fewer_after_restart(builder: StreamBuilder) -> list[Rec]:
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


def more_after_restart(builder: StreamBuilder) -> list[Rec]:
    """New contacts and changes after the broker came back: more per partition than read."""
    b = builder.continue_as("m")
    for i in range(20, 20 + 17 * PARTITIONS):
        b.upsert(f"c{i:02d}", "c", email=f"c{i}@new.acme.io")
    b.upsert("c03", email="user3.after@acme.io")  # tracked update of an old contact
    b.delete("c11")
    b.tombstone("c11")
    recs: list[Rec] = b.recs
    return recs


@dataclass(frozen=True)
class Wiped:
    """A pipeline that drained the base stream, then its broker lost everything."""

    settings: Settings
    old: list[Sent]
    new: list[Sent]
    before: Tables
    planned: set[int]
    read_up_to: dict[int, int]
    new_end: dict[int, int]
    old_id: str
    new_id: str


def refusal(s: Settings, now: str, old_id: str) -> str:
    """:func:`cdc.pipeline.topic_identity.check_topic_identity`'s message for this pipeline."""
    return (
        f"pipeline {PIPELINE}: topic {TOPIC} {now}, but checkpoint"
        f" {s.checkpoint_path(PIPELINE)} holds offsets of topic id {old_id} (the topic was"
        f" deleted and recreated, or the broker lost its data): the checkpoint's offsets do not"
        f" name the records now in the topic. Re-read the topic with"
        f" `cdc replay --pipeline {PIPELINE} --earliest`"
    )


def drain_then_wipe_the_broker(
    spark: Any,
    broker: EmbeddedBroker,
    root: Path,
    flag: str,
    produce_after: Callable[[StreamBuilder], list[Rec]],
) -> Wiped:
    builder = base_builder()
    old = produce(broker.bootstrap, builder.recs)
    s = settings(broker.bootstrap, root, flag)
    run_pipelines(spark, s, [PIPELINE], available_now=True)  # the part before the loss
    before = read_tables(s)
    assert_exactly_once(before, old)
    checkpoint = s.checkpoint_path(PIPELINE)
    old_id = read_topic_id(checkpoint, TOPIC)
    assert old_id is not None and old_id == topic_id(broker.bootstrap, TOPIC)
    read_up_to = committed_position(s)
    assert read_up_to == end_offsets(old)

    broker.restart(wipe=True)  # a new, empty cluster: every topic, record and offset is gone
    # Until a producer creates the topic again, the pipeline refuses to start.
    with pytest.raises(DataLossError) as gone:
        run_pipelines(spark, s, [PIPELINE], available_now=True)
    assert str(gone.value) == refusal(s, "no longer exists", old_id)

    new = produce(broker.bootstrap, produce_after(builder))
    new_id = topic_id(broker.bootstrap, TOPIC)
    assert new_id is not None and new_id != old_id
    new_end = end_offsets(new)
    for p in range(PARTITIONS):
        offsets = [x.offset for x in new if x.rec.partition == p]
        assert offsets == list(range(new_end[p])), "offsets must restart at 0"
    assert read_topic_id(checkpoint, TOPIC) == old_id
    planned = checkpoint_batches(s, "offsets")
    return Wiped(s, old, new, before, planned, read_up_to, new_end, old_id, new_id)


def assert_refused_in_one_line(w: Wiped, run: Any) -> None:
    """Exit 2 and exactly one ``cdc: error:`` line, the last on stderr; no traceback."""
    error = f"cdc: error: {refusal(w.settings, f'now has id {w.new_id}', w.old_id)}"
    assert assert_one_error(run) == error, run.stderr[-3000:]
    # The error comes right after the "running" line: no batch was started.
    assert run.stderr.rstrip("\n").splitlines()[-2:] == [
        f"running {PIPELINE} (available-now, env local)",
        error,
    ], run.stderr[-3000:]


def assert_nothing_moved(w: Wiped) -> None:
    after = read_tables(w.settings)
    assert after.versions == w.before.versions
    assert_same_tables(after, w.before)
    assert_frames_equal(after.bronze, w.before.bronze, ["partition", "offset"], "bronze")
    assert checkpoint_batches(w.settings, "offsets") == w.planned
    assert committed_position(w.settings) == w.read_up_to
    assert read_topic_id(w.settings.checkpoint_path(PIPELINE), TOPIC) == w.old_id


def test_broker_that_lost_its_data_stops_the_run_in_one_line_and_moves_nothing(
    spark: Any, own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    flag = "defaults.fail_on_data_loss=true"
    w = drain_then_wipe_the_broker(spark, own_broker, tmp_path, flag, fewer_after_restart)
    assert all(w.new_end[p] < w.read_up_to[p] for p in range(PARTITIONS))

    run = cdc_run(own_broker.bootstrap, tmp_path, flag)
    assert_refused_in_one_line(w, run)
    assert_nothing_moved(w)


def test_data_loss_is_refused_without_fail_on_data_loss_and_a_replay_reads_new_records_once(
    spark: Any, own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # More records than the query had read: no offset is "beyond the end", and with
    # failOnDataLoss=false Spark would quietly start past the new records below the old
    # offsets. The topic id tells the loss apart.
    flag = "defaults.fail_on_data_loss=false"
    w = drain_then_wipe_the_broker(spark, own_broker, tmp_path, flag, more_after_restart)
    assert all(w.new_end[p] > w.read_up_to[p] for p in range(PARTITIONS))

    run = cdc_run(own_broker.bootstrap, tmp_path, flag)
    assert_refused_in_one_line(w, run)
    assert_nothing_moved(w)

    # What the error says to do: re-read the topic from its earliest offsets.
    replay = cdc_replay(own_broker.bootstrap, tmp_path, "--earliest", "--set", flag)
    assert replay.returncode == 0, replay.stderr[-3000:]
    valid = sum(1 for x in w.new if x.rec.reason is None)
    assert f"read {len(w.new)} records in " in replay.stdout, replay.stdout
    assert f"(bronze +{valid}, quarantine +0; " in replay.stdout, replay.stdout
    after = read_tables(w.settings)
    assert_exactly_once(after, w.old + w.new, single_epoch=False)
    # Old records stay as they were (same rows, same batch ids and ingestion times) ...
    assert after.bronze is not None and w.before.bronze is not None
    old_ts = [x.rec.ts for x in w.old]
    kept = after.bronze.filter(after.bronze["timestamp"].dt.epoch("ms").is_in(old_ts))
    assert_frames_equal(kept, w.before.bronze, ["partition", "offset"], "old bronze rows")
    assert_frames_equal(
        after.quarantine, w.before.quarantine, ["partition", "offset"], "quarantine"
    )
    # ... and silver is the SCD2 of old and new changes together, each applied once.
    assert_silver_matches_model(after.silver, w.old + w.new)
    # The new checkpoint belongs to the topic as it is now.
    assert read_topic_id(w.settings.checkpoint_path(PIPELINE), TOPIC) == w.new_id
    assert committed_position(w.settings) == w.new_end
