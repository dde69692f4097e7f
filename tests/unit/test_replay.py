"""Replay planning (pure), checkpoint state, transaction base and the pipeline lock."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from cdc.config.lake import table_paths, txn_app_id
from cdc.config.settings import Settings
from cdc.core.offsets import Watermarks
from cdc.errors import ConfigError, PipelineRunningError
from cdc.ops.replay import (
    PartitionReplay,
    ReplayOutcome,
    ReplayPlan,
    ReplayPosition,
    dry_run_report,
    format_plan,
    next_txn_base,
    parse_offsets_arg,
    parse_timestamp_arg,
    plan_replay,
    replay_pipeline,
)
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.checkpoint import (
    IDENTITY_FILE,
    START_FILE,
    TOPIC_FILE,
    TXN_BASE_FILE,
    CheckpointState,
    read_checkpoint_state,
    read_identity,
    read_topic_id,
    write_topic_id,
)
from cdc.pipeline.checkpoint_guard import committed_txn_versions
from cdc.runtime.locks import LockHolder, PipelineLock, lock_path
from tests.support.local_settings import local_settings

T = "crm.contacts"
MARKS = {(T, 0): Watermarks(0, 10), (T, 1): Watermarks(2, 7), (T, 2): Watermarks(0, 0)}


# --------------------------------------------------------------------------------------------
# --offsets and --timestamp


def test_offsets_arg_parses_the_sources_shape() -> None:
    assert parse_offsets_arg('{"crm.contacts": {"0": 3, "2": 0}}', T) == {(T, 0): 3, (T, 2): 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{oops",
            "--offsets '{oops' is not valid JSON (Expecting property name enclosed in double"
            ' quotes at position 1); expected {"crm.contacts": {"0": 42}}',
        ),
        (
            '{"crm.accounts": {"0": 1}}',
            "--offsets names topic crm.accounts; the pipeline reads only crm.contacts",
        ),
        ('{"crm.contacts": {"0": -2}}', "--offsets: offsets must be >= 0, got crm.contacts/0"),
        (
            '{"crm.contacts": {"x": 1}}',
            "--offsets: partition 'x' of topic 'crm.contacts' is not an integer",
        ),
        (
            '{"crm.contacts": {}}',
            '--offsets names no partition; expected {"crm.contacts": {"0": 42}}',
        ),
        ("[1]", '--offsets must be a JSON object like {"topic": {"0": 42}}, got [1]'),
    ],
)
def test_offsets_arg_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_offsets_arg(text, T)
    assert str(info.value) == message


def test_timestamp_arg_needs_iso_8601_with_a_timezone() -> None:
    assert parse_timestamp_arg("2026-01-05T08:00:00Z") == 1_767_600_000_000
    assert parse_timestamp_arg(" 2026-01-05T09:00:00.250+01:00 ") == 1_767_600_000_250
    with pytest.raises(ConfigError) as info:
        parse_timestamp_arg("2026-01-05T08:00:00")
    assert str(info.value) == (
        "--timestamp '2026-01-05T08:00:00' has no timezone; add Z or an offset like +01:00"
    )
    with pytest.raises(ConfigError) as info:
        parse_timestamp_arg("yesterday")
    assert str(info.value) == (
        "--timestamp 'yesterday' is not an ISO 8601 time like 2026-01-05T08:00:00Z"
    )
    with pytest.raises(ConfigError, match="before 1970"):
        parse_timestamp_arg("1969-12-31T23:59:59Z")
    with pytest.raises(ConfigError) as info:
        parse_timestamp_arg("2999-01-01T00:00:00Z")
    assert str(info.value) == (
        "--timestamp '2999-01-01T00:00:00Z' is in the future: no record is from then"
    )


def test_positions_record_the_request_as_written() -> None:
    assert ReplayPosition.earliest().requested == "--earliest"
    position = ReplayPosition.from_timestamp("2026-01-05T08:00:00Z")
    assert (position.kind, position.timestamp_ms) == ("timestamp", 1_767_600_000_000)
    assert position.requested == "--timestamp 2026-01-05T08:00:00Z"
    position = ReplayPosition.from_offsets('{"crm.contacts": {"1": 4}}', T)
    assert position.offsets == {(T, 1): 4}
    assert position.requested == '--offsets {"crm.contacts": {"1": 4}}'


# --------------------------------------------------------------------------------------------
# Plan arithmetic


def _rows(plan: ReplayPlan) -> list[tuple[int, int, int, int, int]]:
    return [(p.partition, p.start, p.end, p.re_read, p.already_landed) for p in plan.partitions]


def test_earliest_rereads_everything_and_counts_what_landed() -> None:
    plan = plan_replay("c", T, ReplayPosition.earliest(), MARKS, {0: [(0, 8)], 1: [(0, 7)]})
    assert _rows(plan) == [(0, 0, 10, 10, 8), (1, 2, 7, 5, 5), (2, 0, 0, 0, 0)]
    assert (plan.re_read, plan.already_landed) == (15, 13)
    assert plan.starting_offsets() == {T: {"0": 0, "1": 2, "2": 0}}


def test_nothing_landed_means_nothing_already_landed() -> None:
    plan = plan_replay("c", T, ReplayPosition.earliest(), MARKS, {})
    assert _rows(plan) == [(0, 0, 10, 10, 0), (1, 2, 7, 5, 0), (2, 0, 0, 0, 0)]


def test_explicit_offsets_and_partitions_not_named_resume_where_they_stopped() -> None:
    position = ReplayPosition.from_offsets('{"crm.contacts": {"0": 4}}', T)
    plan = plan_replay("c", T, position, MARKS, {0: [(0, 9)], 1: [(2, 6)]})
    assert _rows(plan) == [(0, 4, 10, 6, 5), (1, 6, 7, 1, 0), (2, 0, 0, 0, 0)]
    # Nothing landed on partition 1: it starts at its earliest offset, like a new partition.
    plan = plan_replay("c", T, position, MARKS, {0: [(0, 9)]})
    assert _rows(plan)[1] == (1, 2, 7, 5, 0)


def test_landed_beyond_the_end_counts_only_up_to_the_end() -> None:
    # Rows past the end are of records the broker lost: new records take their offsets again.
    plan = plan_replay("c", T, ReplayPosition.earliest(), MARKS, {1: [(0, 50)], 2: [(0, 3)]})
    assert _rows(plan)[1:] == [(1, 2, 7, 5, 5), (2, 0, 0, 0, 0)]
    assert plan.partitions[1].landed == ((0, 7),) and plan.partitions[2].landed == ()


def test_landed_counts_offsets_not_a_high_water_mark() -> None:
    # Offsets 3..5 of partition 0 never landed (a crash lost them, a checkpoint was deleted):
    # they are neither counted as landed nor skipped by a replay from the earliest offset.
    plan = plan_replay("c", T, ReplayPosition.earliest(), MARKS, {0: [(0, 3), (6, 10)]})
    assert _rows(plan)[0] == (0, 0, 10, 10, 7)
    # Unnamed partitions resume after the last landed offset; the gap shows as skipped.
    position = ReplayPosition.from_offsets('{"crm.contacts": {"1": 2}}', T)
    plan = plan_replay("c", T, position, MARKS, {0: [(0, 3), (6, 10)]})
    first = plan.partitions[0]
    assert (first.start, first.skipped, first.first_skipped) == (10, 3, 3)


def test_timestamp_uses_the_brokers_answer_and_no_record_means_the_end() -> None:
    position = ReplayPosition.from_timestamp("2026-01-05T08:00:00Z")
    plan = plan_replay("c", T, position, MARKS, {0: [(0, 10)]}, {(T, 0): 6, (T, 1): -1})
    assert _rows(plan) == [(0, 6, 10, 4, 4), (1, 7, 7, 0, 0), (2, 0, 0, 0, 0)]


def test_explicit_offsets_are_checked_against_the_broker() -> None:
    position = ReplayPosition.from_offsets('{"crm.contacts": {"0": 11, "1": 1, "2": 0, "5": 0}}', T)
    with pytest.raises(ConfigError) as info:
        plan_replay("c", T, position, MARKS, {})
    assert str(info.value) == (
        "--offsets: crm.contacts/0 offset 11 is beyond the end of the partition (10);"
        " crm.contacts/1 offset 1 is below the earliest available offset (2);"
        " crm.contacts/5 does not exist (partitions: 0, 1, 2)"
    )
    # The end itself is allowed: nothing to re-read there.
    ok = ReplayPosition.from_offsets('{"crm.contacts": {"0": 10}}', T)
    assert _rows(plan_replay("c", T, ok, MARKS, {}))[0] == (0, 10, 10, 0, 0)


def test_a_topic_without_partitions_cannot_be_replayed() -> None:
    with pytest.raises(ConfigError) as info:
        plan_replay("c", "nope", ReplayPosition.earliest(), MARKS, {})
    assert str(info.value) == "topic nope does not exist on the broker; nothing to replay"


def test_plan_table() -> None:
    plan = ReplayPlan(
        "crm_contacts",
        T,
        '--offsets {"crm.contacts": {"0": 2, "1": 12}}',
        (
            PartitionReplay(T, 0, start=2, end=120, landed=((0, 100),)),
            PartitionReplay(T, 1, start=12, end=12, landed=((0, 5),)),
        ),
    )
    assert format_plan(plan, dry_run=True).splitlines() == [
        'replay crm_contacts (topic crm.contacts) from --offsets {"crm.contacts": {"0": 2,'
        ' "1": 12}}: dry run, nothing changed',
        "topic         partition  from   to  offsets  already landed",
        "crm.contacts          0     2  120      118              98",
        "crm.contacts          1    12   12        0               0",
        "total                                   118              98",
        "note: crm.contacts/1 skips 7 offsets from 5 on, none of them a record in bronze or"
        " quarantine",
    ]


def test_summary_lines() -> None:
    plan = ReplayPlan("p", T, "--earliest", (PartitionReplay(T, 0, 0, 5, ((0, 5),)),))
    prepared = ReplayOutcome(plan, "/c/p", "/c/p.replaced-20260105T080000Z", 3, ran=False)
    assert prepared.summary() == (
        "prepared p to restart from --earliest: 5 offsets to re-read (5 records already in"
        " bronze/quarantine); previous checkpoint kept as p.replaced-20260105T080000Z;"
        " start the pipeline to apply it"
    )
    stats = [BatchStats(0, input_rows=3, inserted=1), BatchStats(1, input_rows=2, bronze_rows=2)]
    ran = ReplayOutcome(plan, "/c/p", None, 0, ran=True, batches=stats)
    assert ran.summary() == (
        "replayed p from --earliest: read 5 records in 2 batches (bronze +2, quarantine +0;"
        " silver 1 inserted, 0 updated, 0 closed); there was no previous checkpoint"
    )


# --------------------------------------------------------------------------------------------
# What the checkpoint and the tables hold


def _write_log(folder: Path, batch: int, offsets: dict[str, dict[str, int]] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = "v1\n{}\n" + json.dumps(offsets) if offsets is not None else "v1\n{}"
    (folder / str(batch)).write_text(body)


def test_checkpoint_state_reads_committed_and_unfinished_batches(tmp_path: Path) -> None:
    cp = tmp_path / "p"
    assert read_checkpoint_state(str(cp)) == CheckpointState(str(cp), exists=False)
    _write_log(cp / "offsets", 0, {T: {"0": 3}})
    _write_log(cp / "offsets", 1, {T: {"0": 5, "1": 2}})
    _write_log(cp / "commits", 0, None)
    (cp / "offsets" / ".1.crc").write_text("x")
    (cp / TXN_BASE_FILE).write_text('{"base": 7}')
    (cp / START_FILE).write_text('{"startingOffsets": {}, "landed": {"crm.contacts": {"1": 9}}}')
    state = read_checkpoint_state(str(cp))
    assert state.committed == {T: {"0": 3}}
    assert state.unfinished == (1, {T: {"0": 5, "1": 2}})
    assert state.txn_base == 7
    assert state.start == {"startingOffsets": {}, "landed": {T: {"1": 9}}}
    _write_log(cp / "commits", 1, None)
    assert read_checkpoint_state(str(cp)).unfinished is None


def test_next_txn_base() -> None:
    assert next_txn_base({"bronze": None, "silver": None}) == 0
    assert next_txn_base({"bronze": 0}) == 1
    assert next_txn_base({"bronze": 4, "quarantine": None, "silver": 9}) == 10


def _settings(tmp_path: Path) -> Settings:
    return local_settings(tmp_path)


def test_committed_txn_versions_per_table(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    name = "crm_contacts"
    paths = table_paths(settings, settings.pipeline(name))

    def commit(role: str, version: int, app: str | None = None) -> None:
        uri = paths[role]
        txn = Transaction(app_id=app or txn_app_id(name, role, uri), version=version)
        write_deltalake(
            uri,
            pa.table({"x": [version]}),
            mode="append",
            commit_properties=CommitProperties(app_transactions=[txn]),
        )

    assert committed_txn_versions(settings, name) == {
        "bronze": None,
        "quarantine": None,
        "silver": None,
        "orphans": None,
    }
    assert next_txn_base(committed_txn_versions(settings, name)) == 0
    for version in (0, 1, 4):
        commit("bronze", version)
    commit("quarantine", 2)
    commit("silver", 3)
    commit("silver", 50, app="cdc/another_pipeline/silver/dim_contact")  # not ours
    versions = committed_txn_versions(settings, name)
    assert versions == {"bronze": 4, "quarantine": 2, "silver": 3, "orphans": None}
    assert next_txn_base(versions) == 5


# --------------------------------------------------------------------------------------------
# The pipeline lock


def _clock() -> datetime:
    return datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)


def test_lock_refuses_a_second_holder_with_who_holds_it(tmp_path: Path) -> None:
    first = PipelineLock(tmp_path, "crm_contacts", clock=_clock)
    with first:
        assert first.held
        holder = LockHolder.from_text(lock_path(tmp_path, "crm_contacts").read_text())
        assert holder == LockHolder(os.getpid(), socket.gethostname(), "2026-01-05T08:00:00Z")
        with pytest.raises(PipelineRunningError) as info:
            PipelineLock(tmp_path, "crm_contacts").acquire()
        assert str(info.value) == (
            f"pipeline crm_contacts is running (pid {os.getpid()} on host"
            f" {socket.gethostname()} since 2026-01-05T08:00:00Z); stop it before replaying"
        )
        second = PipelineLock(tmp_path, "crm_contacts", action="starting it again")
        with pytest.raises(PipelineRunningError, match=r"stop it before starting it again$"):
            second.acquire()
        assert not second.held
        assert second.is_held_elsewhere()
        with PipelineLock(tmp_path, "crm_accounts"):  # another pipeline: its own lock
            pass
    assert lock_path(tmp_path, "crm_contacts").read_text() == ""  # the file stays, emptied
    assert not PipelineLock(tmp_path, "crm_contacts").is_held_elsewhere()
    with PipelineLock(tmp_path, "crm_contacts"):
        pass


def test_lock_file_sits_beside_the_checkpoint_folder(tmp_path: Path) -> None:
    assert lock_path(tmp_path, "p") == tmp_path / "p.lock"
    assert lock_path(f"file://{tmp_path}", "p") == tmp_path / "p.lock"
    with pytest.raises(ConfigError) as info:
        lock_path("s3://bucket/checkpoints", "p")
    assert str(info.value) == (
        "checkpoints.root s3://bucket/checkpoints is not a local path; pipeline locks (flock)"
        " need one"
    )


def test_refusal_while_the_holder_has_not_written_its_name_yet(tmp_path: Path) -> None:
    lock = PipelineLock(tmp_path / "new", "p")
    assert lock.refusal() == (
        f"pipeline p is running (holder not recorded yet in {tmp_path / 'new' / 'p.lock'});"
        " stop it before replaying"
    )


# --------------------------------------------------------------------------------------------
# Planning and preparing against a fake broker (no Kafka, no Spark)


class _FakeMetadata:
    """The two broker lookups a replay makes."""

    def __init__(self, by_time: dict[tuple[str, int], int] | None = None) -> None:
        self.by_time = by_time or {}
        self.asked: int | None = None

    def topic_watermarks(self, topics: list[str]) -> dict[tuple[str, int], Watermarks]:
        return {tp: wm for tp, wm in MARKS.items() if tp[0] in topics}

    def offsets_for_times(self, tps: list[tuple[str, int]], timestamp_ms: int) -> dict[Any, int]:
        self.asked = timestamp_ms
        return {tp: self.by_time.get(tp, -1) for tp in tps}

    def topic_id(self, topic: str) -> str | None:
        return TOPIC_ID if topic == T else None


TOPIC_ID = "7Jx1eT3mQ9ahc9b5Y3pZnA"


def _land(
    settings: Settings,
    role: str,
    offsets: dict[int, list[int]],
    topic_id: Any,
    txn_version: int | None = None,
) -> None:
    """Rows of the pipeline's topic at these offsets in its bronze or quarantine table."""
    name = "crm_contacts"
    uri = table_paths(settings, settings.pipeline(name))[role]
    rows = [(p, o) for p, os_ in offsets.items() for o in os_]
    txns = [] if txn_version is None else [Transaction(txn_app_id(name, role, uri), txn_version)]
    write_deltalake(
        uri,
        pa.table(
            {
                "topic": [T] * len(rows),
                "partition": pa.array([p for p, _ in rows], pa.int32()),
                "offset": pa.array([o for _, o in rows], pa.int64()),
                "_topic_id": pa.array([topic_id] * len(rows), pa.string()),
            }
        ),
        mode="append",
        commit_properties=CommitProperties(app_transactions=txns),
    )


def test_dry_run_looks_up_the_timestamp_and_changes_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    checkpoint = Path(settings.checkpoint_path("crm_contacts"))
    _write_log(checkpoint / "offsets", 0, {T: {"0": 8, "1": 7, "2": 0}})
    _write_log(checkpoint / "commits", 0, None)
    _land(settings, "bronze", {0: list(range(8)), 1: list(range(2, 7))}, TOPIC_ID)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    meta = _FakeMetadata({(T, 0): 5})
    position = ReplayPosition.from_timestamp("2026-01-05T08:00:00Z")
    report = dry_run_report(settings, "crm_contacts", position, meta)  # type: ignore[arg-type]
    assert meta.asked == 1_767_600_000_000
    assert report.splitlines() == [
        "replay crm_contacts (topic crm.contacts) from --timestamp 2026-01-05T08:00:00Z:"
        " dry run, nothing changed",
        "topic         partition  from  to  offsets  already landed",
        "crm.contacts          0     5  10        5               3",
        "crm.contacts          1     7   7        0               0",
        "crm.contacts          2     0   0        0               0",
        "total                                    5               3",
    ]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_prepare_moves_the_checkpoint_aside_and_writes_the_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    name = "crm_contacts"
    checkpoint = Path(settings.checkpoint_path(name))
    # The checkpoint says little (batch 0 committed offset 4 of partition 0); the tables say
    # what landed: bronze and quarantine together hold partition 0 up to offset 6 (offset 2
    # was invalid; offset 6 was written before rows kept topic ids), partition 1 up to 2.
    # Offset 7 is a row of an earlier incarnation of the topic: it does not count.
    _write_log(checkpoint / "offsets", 0, {T: {"0": 4, "1": 3, "2": 0}})
    _write_log(checkpoint / "commits", 0, None)
    _write_log(checkpoint / "offsets", 1, {T: {"0": 6, "1": 3, "2": 0}})
    (checkpoint / TXN_BASE_FILE).write_text('{"base": 3}')
    _land(settings, "bronze", {0: [0, 1], 1: [0, 1, 2]}, TOPIC_ID, txn_version=3)
    _land(settings, "bronze", {0: [3, 4, 5]}, TOPIC_ID, txn_version=4)
    _land(settings, "quarantine", {0: [2]}, TOPIC_ID)
    _land(settings, "quarantine", {0: [6]}, None)
    _land(settings, "quarantine", {0: [7]}, "an-earlier-incarnation")
    now = datetime(2026, 1, 5, 9, 30, 0, tzinfo=UTC)
    outcome = replay_pipeline(
        settings,
        name,
        ReplayPosition.earliest(),
        runner=None,
        metadata=_FakeMetadata(),  # type: ignore[arg-type]
        now=now,
    )
    replaced = checkpoint.parent / f"{name}.replaced-20260105T093000Z"
    assert outcome.replaced == str(replaced) and outcome.checkpoint == str(checkpoint)
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [
        "crm_contacts",
        "crm_contacts.lock",
        "crm_contacts.replaced-20260105T093000Z",
    ]
    assert (replaced / "offsets" / "1").exists()  # kept as it was, for audit
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        IDENTITY_FILE,
        START_FILE,
        TOPIC_FILE,
        TXN_BASE_FILE,
    ]
    # The new checkpoint belongs to the pipeline and to its tables as they are.
    identity = read_identity(checkpoint)
    assert identity is not None
    assert (identity.pipeline, identity.topic) == (name, T)
    paths = table_paths(settings, settings.pipeline(name))
    assert {r: (m.uri, m.txn_version) for r, m in identity.tables.items()} == {
        "bronze": (paths["bronze"], 4),
        "quarantine": (paths["quarantine"], None),
    }
    assert identity.tables["bronze"].table_id == str(
        DeltaTable(paths["bronze"]).metadata().id
    )
    assert json.loads((checkpoint / START_FILE).read_text()) == {
        "startingOffsets": {T: {"0": 0, "1": 2, "2": 0}},
        "landed_ranges": {"0": [[0, 7]], "1": [[0, 3]]},
        "topic_id": TOPIC_ID,
        "replayed_from": "crm_contacts.replaced-20260105T093000Z",
        "requested": "--earliest",
    }
    assert read_topic_id(checkpoint, T) == TOPIC_ID
    assert json.loads((checkpoint / TXN_BASE_FILE).read_text()) == {"base": 5}
    assert outcome.summary() == (
        "prepared crm_contacts to restart from --earliest: 15 offsets to re-read (8 records"
        " already in bronze/quarantine); previous checkpoint kept as"
        " crm_contacts.replaced-20260105T093000Z; start the pipeline to apply it"
    )

    # Again within the same second: a distinct audit folder; what landed is read again.
    replay_pipeline(
        settings,
        name,
        ReplayPosition.earliest(),
        runner=None,
        metadata=_FakeMetadata(),  # type: ignore[arg-type]
        now=now,
    )
    assert (checkpoint.parent / f"{name}.replaced-20260105T093000Z-2" / START_FILE).exists()
    start = json.loads((checkpoint / START_FILE).read_text())
    assert start["landed_ranges"] == {"0": [[0, 7]], "1": [[0, 3]]}
    assert start["replayed_from"] == "crm_contacts.replaced-20260105T093000Z-2"


def test_rows_of_unknown_incarnation_do_not_count_once_the_topic_was_recreated(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    checkpoint = Path(settings.checkpoint_path("crm_contacts"))
    write_topic_id(checkpoint, T, "the-topic-before-it-was-recreated")
    _land(settings, "bronze", {0: [0, 1, 2]}, None)
    _land(settings, "bronze", {0: [3, 4]}, "the-topic-before-it-was-recreated")
    _land(settings, "bronze", {0: [0, 1]}, TOPIC_ID)
    outcome = replay_pipeline(
        settings,
        "crm_contacts",
        ReplayPosition.earliest(),
        runner=None,
        metadata=_FakeMetadata(),  # type: ignore[arg-type]
    )
    assert [p.landed for p in outcome.plan.partitions] == [((0, 2),), (), ()]


def test_replay_refuses_while_the_lock_is_held(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    checkpoint = Path(settings.checkpoint_path("crm_contacts"))
    checkpoint.mkdir(parents=True)
    held = PipelineLock(settings.checkpoints.root, "crm_contacts", action="starting it again")
    with held, pytest.raises(PipelineRunningError, match=r"stop it before replaying$"):
        replay_pipeline(
            settings,
            "crm_contacts",
            ReplayPosition.earliest(),
            runner=None,
            metadata=_FakeMetadata(),  # type: ignore[arg-type]
        )
    assert sorted(p.name for p in checkpoint.parent.iterdir() if p.is_dir()) == ["crm_contacts"]
