"""``cdc replay``: restart a pipeline from given offsets, a timestamp or the earliest offsets.

A replay never edits a checkpoint in place. Under the pipeline's lock (:mod:`cdc.runtime.locks`) it
moves ``<checkpoints.root>/<pipeline>`` aside to ``<pipeline>.replaced-<UTC stamp>`` (kept for
audit, never deleted) and creates a fresh checkpoint holding two files that
:mod:`cdc.pipeline.checkpoint` reads and writes:

* :data:`~cdc.pipeline.checkpoint.START_FILE`: where the new query starts (``startingOffsets``) and
  which offsets bronze and quarantine already hold (``landed_ranges``, read from the tables'
  rows by :func:`cdc.pipeline.landed.landed_ranges`, never from the old checkpoint, which may be
  lost, truncated or of a recreated topic), so re-read records feed silver again without being
  appended twice;
* :data:`~cdc.pipeline.checkpoint.TXN_BASE_FILE`: the app-transaction version of the new batch 0,
  one
  above every version the pipeline committed to its tables, so the new batches (whose ids
  restart at 0) are not skipped as already committed;
* :data:`~cdc.pipeline.checkpoint.IDENTITY_FILE` and :data:`~cdc.pipeline.checkpoint.TOPIC_FILE`:
  whose
  checkpoint it is (the pipeline, its tables as planned, the topic's id), checked at the
  run's start (:mod:`cdc.pipeline.checkpoint_guard`).

Landed offsets whose records the topic no longer holds (a log truncated and refilled under
the same topic id, :mod:`cdc.pipeline.refill`) are not counted as landed: the replay lands the new
records at those offsets.

Silver re-applies everything re-read: events it already holds are no-ops (SCD2 and facts are
idempotent), and corrected events appended to the topic since are placed in history.

Planning (:func:`plan_replay`, :func:`next_txn_base`, :func:`format_plan`) is pure; the rest
reads the checkpoint, the broker and the tables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cdc.config.settings import Settings
from cdc.core.offsets import (
    OffsetJson,
    PartitionOffsets,
    TopicPartitionId,
    Watermarks,
    offsets_from_json,
    offsets_to_json,
)
from cdc.core.ranges import Ranges, count_in, first_gap, ranges_to_json
from cdc.errors import CdcError, ConfigError
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.checkpoint import (
    START_FILE,
    TXN_BASE_FILE,
    CheckpointState,
    read_checkpoint_state,
    read_topic_id,
    write_identity,
    write_topic_id,
)
from cdc.pipeline.checkpoint_guard import identity_now, table_log_states
from cdc.pipeline.queries import run_pipelines
from cdc.pipeline.refill import topic_landed_ranges
from cdc.runtime.kafka_admin import KafkaMetadata
from cdc.runtime.locks import PipelineLock
from cdc.runtime.spark import build_session

if TYPE_CHECKING:
    from cdc.store import TableLogState

__all__ = [
    "PartitionReplay",
    "ReplayError",
    "ReplayOutcome",
    "ReplayPlan",
    "ReplayPosition",
    "Runner",
    "dry_run_report",
    "format_plan",
    "next_txn_base",
    "parse_offsets_arg",
    "parse_timestamp_arg",
    "plan_replay",
    "replay_pipeline",
    "run_available_now",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Runner = Callable[[Settings, str, Callable[[str, BatchStats], None]], None]
"""Runs one pipeline until it has drained the topic: ``(settings, name, on_batch)``."""


class ReplayError(CdcError):
    """A replay cannot be prepared from the pipeline's current state."""


# --------------------------------------------------------------------------------------------
# The requested position


@dataclass(frozen=True)
class ReplayPosition:
    """Where the user asked the replay to start.

    ``kind`` is ``offsets`` (``offsets`` holds explicit offsets), ``timestamp``
    (``timestamp_ms``, compared with Kafka record timestamps) or ``earliest``.
    ``requested`` is the request as the user wrote it, recorded in the start file.
    """

    kind: Literal["offsets", "timestamp", "earliest"]
    requested: str
    offsets: PartitionOffsets = field(default_factory=dict)
    timestamp_ms: int | None = None

    @classmethod
    def earliest(cls) -> ReplayPosition:
        """Every partition from its earliest available offset."""
        return cls("earliest", "--earliest")

    @classmethod
    def from_offsets(cls, text: str, topic: str) -> ReplayPosition:
        """Explicit offsets, validated for shape (see :func:`parse_offsets_arg`)."""
        return cls("offsets", f"--offsets {text.strip()}", offsets=parse_offsets_arg(text, topic))

    @classmethod
    def from_timestamp(cls, text: str) -> ReplayPosition:
        """A point in time (see :func:`parse_timestamp_arg`)."""
        return cls(
            "timestamp", f"--timestamp {text.strip()}", timestamp_ms=parse_timestamp_arg(text)
        )


def parse_offsets_arg(text: str, topic: str) -> PartitionOffsets:
    """Parse ``--offsets``: JSON ``{topic: {"<partition>": offset}}`` naming the pipeline's topic.

    Partitions it does not name keep their current position (nothing is re-read there).

    Args:
        text: the option's value.
        topic: the pipeline's topic, the only one the JSON may name.

    Returns:
        The requested offset per topic-partition (checked against the broker later, by
        :func:`plan_replay`).

    Raises:
        ConfigError: not JSON, not of that shape, another topic, a negative offset, or empty.
    """
    example = f'{{"{topic}": {{"0": 42}}}}'
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--offsets {text.strip()!r} is not valid JSON ({exc.msg} at position {exc.pos});"
            f" expected {example}"
        ) from None
    offsets = offsets_from_json(decoded, "--offsets")
    others = sorted({t for t, _ in offsets} - {topic})
    if others:
        raise ConfigError(
            f"--offsets names topic {', '.join(others)}; the pipeline reads only {topic}"
        )
    if not offsets:
        raise ConfigError(f"--offsets names no partition; expected {example}")
    return offsets


def parse_timestamp_arg(text: str) -> int:
    """Parse ``--timestamp``: ISO 8601 with a timezone, to epoch milliseconds.

    Args:
        text: e.g. ``2026-01-05T08:00:00Z`` or ``2026-01-05T09:00:00.250+01:00``.

    Returns:
        Epoch milliseconds.

    Raises:
        ConfigError: not ISO 8601, no timezone, before 1970, or in the future (no record
            is from there: a replay from it would re-read nothing and reset the checkpoint).
    """
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--timestamp {value!r} is not an ISO 8601 time like 2026-01-05T08:00:00Z"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigError(f"--timestamp {value!r} has no timezone; add Z or an offset like +01:00")
    millis = (moment - _EPOCH) // timedelta(milliseconds=1)
    if millis < 0:
        raise ConfigError(f"--timestamp {value!r} is before 1970-01-01T00:00:00Z")
    if moment > datetime.now(UTC):
        raise ConfigError(f"--timestamp {value!r} is in the future: no record is from then")
    return int(millis)


# --------------------------------------------------------------------------------------------
# The plan (pure)


@dataclass(frozen=True)
class PartitionReplay:
    """What a replay re-reads on one partition."""

    topic: str
    partition: int
    start: int
    """First offset the new checkpoint reads."""
    end: int
    """The partition's end (high watermark) when planned."""
    landed: tuple[tuple[int, int], ...] = ()
    """Offset ranges ``[start, end)`` bronze or quarantine already hold (see
    :mod:`cdc.pipeline.landed`)."""
    earliest: int = 0
    """The partition's earliest available offset."""

    @property
    def re_read(self) -> int:
        """Offsets from ``start`` to ``end`` (records, and the markers that commit producer
        transactions, which hold none)."""
        return max(0, self.end - self.start)

    @property
    def already_landed(self) -> int:
        """Of :attr:`re_read`, the records already in bronze/quarantine (silver only)."""
        return count_in({self.partition: list(self.landed)}, self.partition, self.start, self.end)

    @property
    def first_skipped(self) -> int:
        """The first available offset never landed (where :attr:`skipped` begins)."""
        return first_gap({self.partition: list(self.landed)}, self.partition, self.earliest)

    @property
    def skipped(self) -> int:
        """Available offsets with no landed record that this position jumps over (records
        never landed, or transaction markers)."""
        stop = min(self.start, self.end)
        if stop <= self.earliest:
            return 0
        ranges = {self.partition: list(self.landed)}
        return stop - self.earliest - count_in(ranges, self.partition, self.earliest, stop)


@dataclass(frozen=True)
class ReplayPlan:
    """Where a replay starts on every partition of the pipeline's topic."""

    pipeline: str
    topic: str
    requested: str
    partitions: tuple[PartitionReplay, ...]

    @property
    def re_read(self) -> int:
        """Offsets re-read over all partitions."""
        return sum(p.re_read for p in self.partitions)

    @property
    def already_landed(self) -> int:
        """Re-read records that are already in bronze/quarantine."""
        return sum(p.already_landed for p in self.partitions)

    def starting_offsets(self) -> OffsetJson:
        """The new checkpoint's ``startingOffsets``."""
        return offsets_to_json({(p.topic, p.partition): p.start for p in self.partitions})


def plan_replay(
    pipeline: str,
    topic: str,
    position: ReplayPosition,
    watermarks: Mapping[TopicPartitionId, Watermarks],
    landed: Ranges,
    timestamp_offsets: Mapping[TopicPartitionId, int] | None = None,
) -> ReplayPlan:
    """Decide the start offset of every partition of ``topic``.

    * ``earliest``: each partition's low watermark;
    * ``timestamp``: the broker's first offset at or after the time (``timestamp_offsets``);
      a partition with no such record (-1) starts at its end;
    * ``offsets``: the given offsets; partitions they do not name resume right after what
      the tables hold (the end of their last landed range, else the low watermark).

    Args:
        pipeline: pipeline name.
        topic: its topic.
        position: the requested position.
        watermarks: current watermarks of the topic's partitions.
        landed: the offsets bronze or quarantine hold for the topic as it is now (see
            :func:`cdc.pipeline.landed.landed_ranges`); a partition missing landed nothing.
        timestamp_offsets: for ``timestamp``, the broker's answer per partition.

    Returns:
        The plan, partitions sorted.

    Raises:
        ConfigError: the topic has no partitions, or an explicit offset names a partition
            that does not exist or lies outside ``[low, high]``.
    """
    marks = {tp: wm for tp, wm in watermarks.items() if tp[0] == topic}
    if not marks:
        raise ConfigError(f"topic {topic} does not exist on the broker; nothing to replay")
    if position.kind == "offsets":
        _check_offsets(position.offsets, marks)
    found = timestamp_offsets or {}
    parts: list[PartitionReplay] = []
    for tp in sorted(marks):
        wm = marks[tp]
        # Rows past the partition's end are records the broker lost (the log was truncated
        # under the same topic id): new records will take those offsets again.
        spans = tuple((lo, min(hi, wm.high)) for lo, hi in landed.get(tp[1], []) if lo < wm.high)
        done = spans[-1][1] if spans else 0
        if position.kind == "earliest":
            start = wm.low
        elif position.kind == "timestamp":
            offset = found.get(tp, -1)
            start = wm.high if offset < 0 else min(max(offset, wm.low), wm.high)
        elif tp in position.offsets:
            start = position.offsets[tp]
        else:
            start = min(max(done, wm.low), wm.high)
        parts.append(PartitionReplay(tp[0], tp[1], start, wm.high, spans, wm.low))
    return ReplayPlan(pipeline, topic, position.requested, tuple(parts))


def _check_offsets(
    offsets: Mapping[TopicPartitionId, int], marks: Mapping[TopicPartitionId, Watermarks]
) -> None:
    problems: list[str] = []
    existing = ", ".join(str(p) for _, p in sorted(marks))
    for tp in sorted(offsets):
        where, offset = f"{tp[0]}/{tp[1]}", offsets[tp]
        wm = marks.get(tp)
        if wm is None:
            problems.append(f"{where} does not exist (partitions: {existing})")
        elif offset > wm.high:
            problems.append(
                f"{where} offset {offset} is beyond the end of the partition ({wm.high})"
            )
        elif offset < wm.low:
            problems.append(
                f"{where} offset {offset} is below the earliest available offset ({wm.low})"
            )
    if problems:
        raise ConfigError("--offsets: " + "; ".join(problems))


def format_plan(plan: ReplayPlan, *, dry_run: bool = False) -> str:
    """The plan as a table with totals (what ``--dry-run`` prints).

    Args:
        plan: the plan.
        dry_run: say in the title that nothing was changed.

    Returns:
        Lines: a title, a header, one row per partition, a total row, then one note per
        partition whose start jumps over offsets with no landed record.
    """
    header = ("topic", "partition", "from", "to", "offsets", "already landed")
    rows = [
        (p.topic, str(p.partition), str(p.start), str(p.end), str(p.re_read), str(p.already_landed))
        for p in plan.partitions
    ]
    total = ("total", "", "", "", str(plan.re_read), str(plan.already_landed))
    table = [header, *rows, total]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    title = f"replay {plan.pipeline} (topic {plan.topic}) from {plan.requested}"
    if dry_run:
        title += ": dry run, nothing changed"
    out = [title, *map(line, table)]
    for p in plan.partitions:
        if p.skipped:
            out.append(
                f"note: {p.topic}/{p.partition} skips {p.skipped} offsets from {p.first_skipped}"
                " on, none of them a record in bronze or quarantine"
            )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# What the tables hold (small reads)


def next_txn_base(versions: Mapping[str, int | None]) -> int:
    """The app-transaction version of a fresh checkpoint's batch 0.

    Args:
        versions: the pipeline's committed version per table (None: table or app id absent).

    Returns:
        One more than the highest committed version (0 when none).
    """
    return 1 + max((v for v in versions.values() if v is not None), default=-1)


# --------------------------------------------------------------------------------------------
# Planning against the live pipeline, and doing it


@dataclass(frozen=True)
class _Context:
    plan: ReplayPlan
    state: CheckpointState
    txn_base: int
    topic_id: str | None
    """The topic's id when planned (the landed ranges are this incarnation's)."""
    tables: Mapping[str, TableLogState | None] = field(default_factory=dict)
    """The pipeline's tables when planned (the new checkpoint's identity)."""

    def landed(self) -> Ranges:
        """The landed ranges the plan counted with (clipped to each partition's end)."""
        return {p.partition: list(p.landed) for p in self.plan.partitions if p.landed}


def _plan_live(
    settings: Settings,
    name: str,
    position: ReplayPosition,
    metadata: KafkaMetadata | None,
) -> _Context:
    pipeline = settings.pipeline(name)
    state = read_checkpoint_state(settings.checkpoint_path(name))
    tables = table_log_states(settings, name)
    versions = {role: None if s is None else s.txn_version for role, s in tables.items()}

    own = metadata is None
    meta = KafkaMetadata.for_settings(settings.kafka) if metadata is None else metadata
    try:
        watermarks = meta.topic_watermarks([pipeline.topic])
        by_time = None
        if position.kind == "timestamp" and position.timestamp_ms is not None:
            by_time = meta.offsets_for_times(sorted(watermarks), position.timestamp_ms)
        topic_id = meta.topic_id(pipeline.topic)
        recorded = read_topic_id(settings.checkpoint_path(name), pipeline.topic)
        # Rows written before bronze kept topic ids count as this incarnation's unless the
        # checkpoint shows the topic was recreated since. Landed offsets whose records the
        # topic no longer holds (a log refilled under the same id) do not count.
        landed, _ = topic_landed_ranges(
            settings,
            name,
            topic_id,
            {p: wm for (t, p), wm in watermarks.items() if t == pipeline.topic},
            legacy_rows=recorded is None or recorded == topic_id,
            metadata=meta,
        )
    finally:
        if own:
            meta.close()
    plan = plan_replay(name, pipeline.topic, position, watermarks, landed, by_time)
    return _Context(plan, state, next_txn_base(versions), topic_id, tables)


def dry_run_report(
    settings: Settings,
    name: str,
    position: ReplayPosition,
    metadata: KafkaMetadata | None = None,
) -> str:
    """What a replay would re-read, per partition; changes nothing.

    Args:
        settings: service settings.
        name: pipeline name.
        position: the requested position.
        metadata: broker client (default: one from ``settings``).

    Returns:
        The plan table (see :func:`format_plan`), with a last line when the pipeline is
        running now (the replay itself would then be refused).

    Raises:
        ConfigError: the position is invalid for the topic.
        BrokerUnavailableError: Kafka cannot be reached.
    """
    plan = _plan_live(settings, name, position, metadata).plan
    text = format_plan(plan, dry_run=True)
    lock = PipelineLock(settings.checkpoints.root, name)
    if lock.is_held_elsewhere():
        text += f"\nnote: {lock.refusal()}"
    return text


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did."""

    plan: ReplayPlan
    checkpoint: str
    replaced: str | None
    """Where the previous checkpoint was moved (None: there was none)."""
    txn_base: int
    ran: bool
    batches: list[BatchStats] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the terminal."""
        kept = (
            f"previous checkpoint kept as {Path(self.replaced).name}"
            if self.replaced
            else "there was no previous checkpoint"
        )
        if not self.ran:
            return (
                f"prepared {self.plan.pipeline} to restart from {self.plan.requested}:"
                f" {self.plan.re_read} offsets to re-read ({self.plan.already_landed} records"
                f" already in bronze/quarantine); {kept}; start the pipeline to apply it"
            )
        b = self.batches

        def total(attr: str) -> int:
            return sum(int(getattr(s, attr)) for s in b)

        return (
            f"replayed {self.plan.pipeline} from {self.plan.requested}: read {total('input_rows')}"
            f" records in {len(b)} batch{'es' if len(b) != 1 else ''} (bronze"
            f" +{total('bronze_rows')}, quarantine +{total('quarantined')}; silver"
            f" {total('inserted')} inserted, {total('updated')} updated,"
            f" {total('closed')} closed); {kept}"
        )


def _replaced_name(root: Path, name: str, now: datetime) -> Path:
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = root / f"{name}.replaced-{stamp}"
    n = 2
    while target.exists():
        target = root / f"{name}.replaced-{stamp}-{n}"
        n += 1
    return target


def _prepare_checkpoint(
    settings: Settings, name: str, context: _Context, now: datetime
) -> tuple[str, str | None]:
    checkpoint = Path(settings.checkpoint_path(name))
    root = checkpoint.parent
    root.mkdir(parents=True, exist_ok=True)
    replaced = _replaced_name(root, name, now) if context.state.exists else None
    start = {
        "startingOffsets": context.plan.starting_offsets(),
        "landed_ranges": ranges_to_json(context.landed()),
        "topic_id": context.topic_id,
        "replayed_from": replaced.name if replaced else None,
        "requested": context.plan.requested,
    }
    fresh = root / f".{name}.replay-{now.astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    try:
        fresh.mkdir()
        (fresh / START_FILE).write_text(json.dumps(start, indent=2, sort_keys=True) + "\n")
        (fresh / TXN_BASE_FILE).write_text(json.dumps({"base": context.txn_base}) + "\n")
        if context.topic_id is not None:
            # A topic recreated between this plan and the run is caught at the run's start.
            write_topic_id(fresh, context.plan.topic, context.topic_id)
        # The new checkpoint belongs to the tables as planned (a table lost between this plan
        # and the run is caught at the run's start).
        write_identity(fresh, identity_now(settings, name, None, context.tables))
        if replaced is not None:
            os.rename(checkpoint, replaced)
        try:
            os.rename(fresh, checkpoint)
        except OSError:
            if replaced is not None:
                os.rename(replaced, checkpoint)
            raise
    except OSError as exc:
        raise ReplayError(f"cannot prepare the new checkpoint {checkpoint}: {exc}") from exc
    return str(checkpoint), None if replaced is None else str(replaced)


def replay_pipeline(
    settings: Settings,
    name: str,
    position: ReplayPosition,
    *,
    runner: Runner | None,
    metadata: KafkaMetadata | None = None,
    now: datetime | None = None,
) -> ReplayOutcome:
    """Replay a pipeline: lock, move its checkpoint aside, start a fresh one, run it.

    Args:
        settings: service settings.
        name: pipeline name.
        position: where to restart.
        runner: drains the pipeline (default CLI: :func:`run_available_now`); None only
            prepares the checkpoint, for the always-on app to pick up when restarted.
        metadata: broker client (default: one from ``settings``).
        now: current time, for the name of the moved-aside folder (default: now).

    Returns:
        What was done.

    Raises:
        PipelineRunningError: the pipeline is running (its lock is held).
        ConfigError: the position is invalid for the topic.
        ReplayError: the checkpoint could not be replaced.
        PipelineFailedError: the replayed run failed (the new checkpoint stays, so a later
            ``cdc run`` resumes it).
    """
    with PipelineLock(settings.checkpoints.root, name, action="replaying"):
        context = _plan_live(settings, name, position, metadata)
        checkpoint, replaced = _prepare_checkpoint(
            settings, name, context, now or datetime.now(UTC)
        )
        stats: list[BatchStats] = []
        if runner is not None:
            runner(settings, name, lambda _name, batch: stats.append(batch))
        return ReplayOutcome(
            plan=context.plan,
            checkpoint=checkpoint,
            replaced=replaced,
            txn_base=context.txn_base,
            ran=runner is not None,
            batches=stats,
        )


def run_available_now(
    settings: Settings, name: str, on_batch: Callable[[str, BatchStats], None]
) -> None:
    """The default :data:`Runner`: ``cdc run --pipeline NAME --available-now``, in-process.

    Args:
        settings: service settings.
        name: pipeline name.
        on_batch: called with each batch's stats.
    """
    spark = build_session(
        app_name=f"cdc-{settings.env}-replay",
        master=settings.spark.master,
        conf=settings.spark.conf,
        object_store=settings.lake.on_object_store,
    )
    run_pipelines(spark, settings, [name], available_now=True, on_batch=on_batch)
