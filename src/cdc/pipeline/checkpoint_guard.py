"""At every start, a pipeline's checkpoint must agree with its tables and its topic.

Every commit to a pipeline's tables carries the app transaction ``txn_base + batch_id`` of
the checkpoint that made it. A checkpoint whose batches end below the tables' highest version
was deleted, truncated or replaced: Spark would re-read records from its older position, the
writers would skip those batches as "already committed" (their versions are), and the records
would land in no table, silently. The run stops instead, in one line that names the
checkpoint, what disagrees, and the replay that lands exactly what the tables miss.

The other way round is refused too. The checkpoint records whose it is
(:data:`cdc.pipeline.checkpoint.IDENTITY_FILE`: the pipeline, its topic, each table's Delta id and
the app-transaction version the checkpoint knows the table to hold, updated by every batch that
commits to bronze or quarantine). Another pipeline's checkpoint, a table deleted (or created
again, or replaced) behind the checkpoint's back, or a table restored to an older state than
the checkpoint's batches reached would make a run read on from where the checkpoint is while
the tables lack what it read: those records would be in no table. A checkpoint made before
the identity file existed gets it at its first start (its offsets must name the pipeline's
topic); from then on every start compares.

A checkpoint whose offsets lie beyond the end of its topic (same topic id) is refused: the
broker lost records it had acknowledged, and new records would take their offsets. So is a
partition whose log was truncated and refilled past the checkpoint's offsets under the same
topic id: the record the tables landed last below the checkpoint's position is no longer the
one the broker holds at that offset (:mod:`cdc.pipeline.refill`).

:func:`check_checkpoint` runs every check at a query start; :func:`checkpoint_problem` runs
them without writing anything, for ``cdc status``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cdc.config.lake import pipeline_tables, txn_app_id
from cdc.config.settings import Settings
from cdc.core.offsets import TopicPartitionId, Watermarks
from cdc.core.ranges import first_gap
from cdc.errors import BrokerUnavailableError, DataLossError
from cdc.pipeline.checkpoint import (
    CheckpointIdentity,
    TableMark,
    has_offsets,
    read_checkpoint_state,
    read_identity,
    read_topic_id,
    recorded_topic,
    write_identity,
)
from cdc.pipeline.refill import find_refills, topic_landed_ranges
from cdc.pipeline.topic_identity import check_topic_identity, current_topic_id
from cdc.runtime.kafka_admin import KafkaMetadata
from cdc.store import store_for

if TYPE_CHECKING:
    from cdc.pipeline.kafka_loss import KafkaDataLoss
    from cdc.store import TableLogState

__all__ = [
    "check_checkpoint",
    "check_checkpoint_belongs",
    "check_checkpoint_matches_tables",
    "check_checkpoint_within_topic",
    "check_log_not_refilled",
    "checkpoint_problem",
    "committed_txn_versions",
    "data_loss_message",
    "identity_now",
    "record_identity",
    "resume_offsets",
    "table_log_states",
]

TableStates = Mapping[str, "TableLogState | None"]
"""Per role, the table's id and the pipeline's committed version (None: no table)."""


def check_checkpoint(settings: Settings, name: str, checkpoint: str) -> None:
    """Every check of a query start, then the checkpoint's identity is recorded.

    Args:
        settings: service settings.
        name: the pipeline.
        checkpoint: its checkpoint folder.

    Raises:
        DataLossError: the checkpoint and the tables or the topic disagree (the message
            names the repair).
        BrokerUnavailableError: the broker did not answer.
    """
    states = _run_checks(settings, name, checkpoint, starting=True)
    record_identity(settings, name, checkpoint, states)


def checkpoint_problem(settings: Settings, name: str, *, broker: bool = True) -> str | None:
    """What :func:`check_checkpoint` would refuse, without writing anything (``cdc status``).

    Args:
        settings: service settings.
        name: the pipeline.
        broker: the broker is reachable (False: only the checks against the tables run).

    Returns:
        The refusal's message; None when the checkpoint is sound (or the broker stopped
        answering midway: a start would fail on that first).
    """
    checkpoint = settings.checkpoint_path(name)
    try:
        _run_checks(settings, name, checkpoint, starting=False, broker=broker)
    except DataLossError as exc:
        return str(exc)
    except BrokerUnavailableError:
        return None
    return None


def committed_txn_versions(settings: Settings, name: str) -> dict[str, int | None]:
    """The pipeline's committed app-transaction version in each of its tables.

    Args:
        settings: service settings.
        name: pipeline name.

    Returns:
        Version per role (``bronze``, ``quarantine``, ``silver``, and ``orphans`` for the
        side table of an SCD2 pipeline); None where the table does not exist or holds no
        transaction of this pipeline.
    """
    return {
        role: None if state is None else state.txn_version
        for role, state in table_log_states(settings, name).items()
    }


def table_log_states(settings: Settings, name: str) -> dict[str, TableLogState | None]:
    """Each of the pipeline's tables' Delta id and committed app-transaction version.

    Args:
        settings: service settings.
        name: pipeline name.

    Returns:
        Per role (as :func:`committed_txn_versions`), one read of the table's log; None
        where the table does not exist.
    """
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    pipeline = settings.pipeline(name)
    tables = pipeline_tables(settings, pipeline)
    return {role: store.log_state(uri, txn_app_id(name, role, uri)) for role, uri in tables.items()}


def _run_checks(
    settings: Settings, name: str, checkpoint: str, *, starting: bool, broker: bool = True
) -> TableStates:
    """The checks in order; returns the tables' states they compared with.

    ``starting``: a query start (the topic id is recorded when first seen); otherwise
    nothing is written.
    """
    states = table_log_states(settings, name)
    check_checkpoint_belongs(settings, name, checkpoint, states, broker=broker)
    check_checkpoint_matches_tables(settings, name, checkpoint, states, broker=broker)
    offsets = has_offsets(checkpoint)
    # A start records the topic's id when first seen; the other topic checks compare the
    # checkpoint's offsets.
    if not starting and not (broker and offsets):
        return states
    topic_id = check_topic_identity(settings, name, checkpoint, record=starting)
    if offsets:
        watermarks = _watermarks(settings, settings.pipeline(name).topic)
        check_checkpoint_within_topic(settings, name, checkpoint, watermarks)
        check_log_not_refilled(settings, name, checkpoint, topic_id, watermarks)
    return states


def resume_offsets(
    settings: Settings,
    name: str,
    watermarks: Mapping[TopicPartitionId, Watermarks] | None = None,
    topic_id: str | None = None,
) -> dict[str, int]:
    """Per partition, the first available offset that bronze and quarantine do not hold.

    A replay from there lands every record the tables miss and re-reads only the ones after
    (which it recognises, see :mod:`cdc.pipeline.landed`). Landed offsets whose records the topic no
    longer holds (a log refilled under the same id, :mod:`cdc.pipeline.refill`) count as not held.

    Args:
        settings: service settings.
        name: the pipeline.
        watermarks: the topic's watermarks (default: asked of the broker).
        topic_id: the topic's id (default: asked of the broker).

    Returns:
        ``{"<partition>": offset}``.
    """
    topic = settings.pipeline(name).topic
    if watermarks is None:
        watermarks = _watermarks(settings, topic)
    if topic_id is None:
        topic_id = current_topic_id(settings, topic)
    recorded = read_topic_id(settings.checkpoint_path(name), topic)
    marks = {p: wm for (t, p), wm in watermarks.items() if t == topic}
    ranges, _ = topic_landed_ranges(
        settings, name, topic_id, marks, legacy_rows=recorded is None or recorded == topic_id
    )
    return {str(p): min(first_gap(ranges, p, wm.low), wm.high) for p, wm in sorted(marks.items())}


def _watermarks(settings: Settings, topic: str) -> dict[TopicPartitionId, Watermarks]:
    meta = KafkaMetadata.for_settings(settings.kafka)
    try:
        return meta.topic_watermarks([topic])
    finally:
        meta.close()


def _replay_command(name: str, topic: str, offsets: Mapping[str, int]) -> str:
    resume = json.dumps({topic: dict(offsets)}, separators=(",", ":"))
    return f"cdc replay --pipeline {name} --offsets '{resume}'"


def _repair(
    settings: Settings,
    name: str,
    watermarks: Mapping[TopicPartitionId, Watermarks] | None = None,
    *,
    broker: bool = True,
) -> str:
    """The replay that lands exactly what the tables miss (its offsets from the broker)."""
    if broker:
        try:
            topic = settings.pipeline(name).topic
            return _replay_command(name, topic, resume_offsets(settings, name, watermarks))
        except BrokerUnavailableError:
            pass
    return (
        f"cdc replay --pipeline {name} --offsets at the first offsets the tables do not hold"
        " (the broker is unreachable: a run names them)"
    )


def check_checkpoint_belongs(
    settings: Settings,
    name: str,
    checkpoint: str,
    states: TableStates,
    *,
    broker: bool = True,
) -> None:
    """Refuse another pipeline's checkpoint, and one whose tables lost what it committed.

    Args:
        settings: service settings.
        name: the pipeline.
        checkpoint: its checkpoint folder.
        states: the pipeline's tables now (see :func:`table_log_states`).
        broker: the broker is reachable (to name the repair's offsets).

    Raises:
        DataLossError: the checkpoint names another pipeline or topic; or a table it
            committed to is gone, is another table (Delta id), or holds fewer of its commits.
    """
    identity = read_identity(checkpoint)
    topic = settings.pipeline(name).topic
    # Whatever the identity says, the offsets and the topic file must name our topic (all a
    # checkpoint made before the identity file can be checked by).
    state = read_checkpoint_state(checkpoint)
    entries = [state.committed] + ([state.unfinished[1]] if state.unfinished else [])
    named = {t for entry in entries for t in (entry or {})}
    named.add(recorded_topic(checkpoint) or topic)
    others = sorted(named - {topic})
    if identity is not None and (identity.pipeline != name or identity.topic != topic):
        whose = (
            f"belongs to pipeline {identity.pipeline} (topic {identity.topic}), not to"
            f" pipeline {name} (topic {topic})"
        )
    elif others:
        whose = f"holds offsets of topic {', '.join(others)}, not of the pipeline's topic {topic}"
    else:
        problems = [] if identity is None else _table_problems(settings, name, identity, states)
        if not problems:
            return
        raise DataLossError(
            f"pipeline {name}: checkpoint {checkpoint} is ahead of its tables"
            f" ({'; '.join(problems)}): a run would go on from the checkpoint's position, and"
            " the records of the missing commits would be in no table. Restore the tables"
            " (`cdc dr restore`), or land exactly what they miss:"
            f" {_repair(settings, name, broker=broker)}"
        )
    raise DataLossError(
        f"pipeline {name}: checkpoint {checkpoint} {whose}: a run would go on from another"
        " pipeline's position and skip or lose this one's records. Put the pipeline's own"
        f" checkpoint back, or land exactly what the tables miss:"
        f" {_repair(settings, name, broker=broker)}"
    )


def _table_problems(
    settings: Settings, name: str, identity: CheckpointIdentity, states: TableStates
) -> list[str]:
    """What each table the checkpoint committed to lacks of it (empty: nothing)."""
    uris = pipeline_tables(settings, settings.pipeline(name))
    problems: list[str] = []
    for role, mark in sorted(identity.tables.items()):
        if role not in uris:
            continue  # the pipeline no longer has such a table
        uri, state = uris[role], states.get(role)
        moved = f" (the checkpoint's was {mark.uri})" if mark.uri != uri else ""
        if state is None:
            reach = "" if mark.txn_version is None else f" up to txn version {mark.txn_version}"
            problems.append(
                f"{role} table {uri} does not exist{moved}, but the checkpoint's batches"
                f" committed to it{reach}"
            )
        elif state.table_id != mark.table_id:
            problems.append(
                f"{role} table {uri} is another table than the checkpoint's{moved} (Delta"
                f" table id {state.table_id}, not {mark.table_id}: deleted and created again,"
                " or replaced)"
            )
        elif mark.txn_version is not None and (
            state.txn_version is None or state.txn_version < mark.txn_version
        ):
            held = "none" if state.txn_version is None else f"up to {state.txn_version}"
            problems.append(
                f"{role} table {uri} holds the pipeline's commits {held} only, the checkpoint's"
                f" up to txn version {mark.txn_version} (restored to an older state?)"
            )
    return problems


def record_identity(settings: Settings, name: str, checkpoint: str, states: TableStates) -> None:
    """Write the checkpoint's identity: the pipeline, its topic and its tables as they are.

    Called once every check passed (the tables hold at least what the identity recorded).

    Args:
        settings: service settings.
        name: the pipeline.
        checkpoint: its checkpoint folder.
        states: the pipeline's tables now.
    """
    write_identity(checkpoint, identity_now(settings, name, read_identity(checkpoint), states))


def identity_now(
    settings: Settings,
    name: str,
    previous: CheckpointIdentity | None,
    states: TableStates,
) -> CheckpointIdentity:
    """The identity of a checkpoint of ``name`` whose tables are as ``states`` says.

    Args:
        settings: service settings.
        name: the pipeline.
        previous: what the checkpoint recorded before (its versions are kept when higher).
        states: the pipeline's tables now.
    """
    marks: dict[str, TableMark] = {}
    for role, uri in pipeline_tables(settings, settings.pipeline(name)).items():
        state = states.get(role)
        if state is None:
            continue  # not created yet
        version = state.txn_version
        before = None if previous is None else previous.tables.get(role)
        if before is not None and before.table_id == state.table_id:
            version = _highest(version, before.txn_version)
        marks[role] = TableMark(uri, state.table_id, version)
    return CheckpointIdentity(name, settings.pipeline(name).topic, marks)


def _highest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def check_checkpoint_matches_tables(
    settings: Settings,
    name: str,
    checkpoint: str,
    states: TableStates | None = None,
    *,
    broker: bool = True,
) -> None:
    """Refuse to start a pipeline whose checkpoint is behind its own tables.

    Args:
        settings: service settings.
        name: the pipeline.
        checkpoint: its checkpoint folder.
        states: the pipeline's tables now (default: read).
        broker: the broker is reachable (to name the repair's offsets).

    Raises:
        DataLossError: the checkpoint is missing, empty or ends before the batches the
            tables hold (a checkpoint a replay prepared is accepted: it starts past them).
    """
    if states is None:
        states = table_log_states(settings, name)
    versions = [s.txn_version for s in states.values() if s is not None]
    top = max((v for v in versions if v is not None), default=None)
    if top is None:
        return
    state = read_checkpoint_state(checkpoint)
    if state.last_batch is None:
        if state.start is not None:
            return  # prepared by `cdc replay`: its batches start past the tables' versions
        problem = "has no batches" if state.exists else "does not exist"
    else:
        reach = state.txn_base + state.last_batch
        if top <= reach:
            return
        problem = f"ends at batch {state.last_batch} (txn version {reach})"
    raise DataLossError(
        f"pipeline {name}: checkpoint {checkpoint} {problem}, but the pipeline's tables hold"
        f" its commits up to txn version {top} (the checkpoint was deleted, truncated or"
        " replaced): a run would take the records it re-reads for committed and land none of"
        " them. Restore the checkpoint, or land exactly what the tables miss:"
        f" {_repair(settings, name, broker=broker)}"
    )


def check_checkpoint_within_topic(
    settings: Settings,
    name: str,
    checkpoint: str,
    watermarks: Mapping[TopicPartitionId, Watermarks] | None = None,
) -> None:
    """Refuse a checkpoint whose offsets lie beyond the end of the topic.

    The topic id is unchanged (see :func:`cdc.pipeline.topic_identity.check_topic_identity`), yet a
    partition ends below the offsets the checkpoint read up to, or is gone: the broker lost
    records it had acknowledged (a truncated log, an unclean leader election, a restore from
    an older backup). Spark would wait for offsets that new records will fill again, and
    take those new records for ones it had read.

    Args:
        settings: service settings.
        name: the pipeline.
        checkpoint: its checkpoint folder.
        watermarks: the topic's watermarks (default: asked of the broker).

    Raises:
        DataLossError: a partition is gone or ends before the checkpoint's offsets.
    """
    state = read_checkpoint_state(checkpoint)
    topic = settings.pipeline(name).topic
    read_up_to: dict[int, int] = {}
    entries = [state.committed] + ([state.unfinished[1]] if state.unfinished else [])
    for entry in entries:
        for partition, offset in ((entry or {}).get(topic) or {}).items():
            read_up_to[int(partition)] = max(read_up_to.get(int(partition), 0), int(offset))
    if not read_up_to:
        return
    if watermarks is None:
        watermarks = _watermarks(settings, topic)
    ends = {p: wm.high for (t, p), wm in watermarks.items() if t == topic}
    ahead = [
        f"{topic}/{p} at {offset} but the partition "
        + ("is gone" if p not in ends else f"ends at {ends[p]}")
        for p, offset in sorted(read_up_to.items())
        if p not in ends or offset > ends[p]
    ]
    if not ahead:
        return
    raise DataLossError(
        f"pipeline {name}: checkpoint {checkpoint} is ahead of its topic ({'; '.join(ahead)}):"
        " the broker lost records it had acknowledged, and new records would reuse their"
        f" offsets unseen. Land exactly what the tables miss: {_repair(settings, name, watermarks)}"
    )


def check_log_not_refilled(
    settings: Settings,
    name: str,
    checkpoint: str,
    topic_id: str | None,
    watermarks: Mapping[TopicPartitionId, Watermarks] | None = None,
) -> None:
    """Refuse a checkpoint whose partitions were truncated and refilled past its offsets.

    The topic id is unchanged and every partition reaches the checkpoint's offsets, yet the
    record bronze or quarantine landed last below the checkpoint's position is not the one
    the broker now holds at that offset: the log lost its tail and new records took the lost
    ones' offsets. Spark would read on from the checkpoint's position and skip the new
    records below it.

    Args:
        settings: service settings.
        name: the pipeline.
        checkpoint: its checkpoint folder.
        topic_id: the topic's id now (see :func:`cdc.pipeline.topic_identity.check_topic_identity`).
        watermarks: the topic's watermarks (default: asked of the broker).

    Raises:
        DataLossError: a partition's landed records are no longer the topic's.
    """
    state = read_checkpoint_state(checkpoint)
    topic = settings.pipeline(name).topic
    position = {int(p): int(o) for p, o in ((state.committed or {}).get(topic) or {}).items()}
    if not position or topic_id is None:
        return
    if watermarks is None:
        watermarks = _watermarks(settings, topic)
    marks = {p: wm for (t, p), wm in watermarks.items() if t == topic}
    recorded = read_topic_id(checkpoint, topic)
    refills = find_refills(
        settings,
        name,
        topic_id,
        position,
        marks,
        legacy_rows=recorded is None or recorded == topic_id,
    )
    if not refills:
        return
    found = "; ".join(
        f"{r.describe()}, so offsets {r.start} to {position[r.partition]} are new records"
        for r in refills
    )
    raise DataLossError(
        f"pipeline {name}: topic {topic} was truncated and refilled under the same topic id"
        f" ({found}): checkpoint {checkpoint} would read on past them and never land them."
        f" Land them: {_repair(settings, name, watermarks)}"
    )


def data_loss_message(settings: Settings, name: str, loss: KafkaDataLoss) -> str:
    """The one line for a query Spark stopped because Kafka no longer holds its records.

    Args:
        settings: service settings.
        name: the pipeline.
        loss: what Spark's error says was lost (see :mod:`cdc.pipeline.kafka_loss`).

    Returns:
        The line: the partition and offsets, and the replay that lands what is still there.
    """
    return (
        f"pipeline {name}: Kafka no longer holds records the query was to read:"
        f" {loss.line()}: aged out by retention, deleted, or lost by the broker. Land what"
        f" the topic still holds: {_repair(settings, name)}"
    )
