"""At every start, a pipeline's checkpoint must agree with its tables and its topic.

Every commit to a pipeline's tables carries the app transaction ``txn_base + batch_id`` of
the checkpoint that made it. A checkpoint whose batches end below the tables' highest version
was deleted, truncated or replaced: Spark would re-read records from its older position, the
writers would skip those batches as "already committed" (their versions are), and the records
would land in no table, silently. The run stops instead, in one line that names the
checkpoint, what disagrees, and the replay that lands exactly what the tables miss.

A checkpoint whose offsets lie beyond the end of its topic (same topic id) is refused too:
the broker lost records it had acknowledged, and new records would take their offsets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cdc.checkpoint import read_checkpoint_state, read_topic_id
from cdc.config import Settings
from cdc.errors import DataLossError
from cdc.landed import first_gap, landed_ranges
from cdc.offsets import TopicPartitionId, Watermarks
from cdc.topic_identity import current_topic_id

__all__ = [
    "check_checkpoint_matches_tables",
    "check_checkpoint_within_topic",
    "resume_offsets",
]


def resume_offsets(
    settings: Settings,
    name: str,
    watermarks: Mapping[TopicPartitionId, Watermarks] | None = None,
    topic_id: str | None = None,
) -> dict[str, int]:
    """Per partition, the first available offset that bronze and quarantine do not hold.

    A replay from there lands every record the tables miss and re-reads only the ones after
    (which it recognises, see :mod:`cdc.landed`).

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
    ranges = landed_ranges(
        settings, name, topic_id, legacy_rows=recorded is None or recorded == topic_id
    )
    return {
        str(p): min(first_gap(ranges, p, wm.low), wm.high)
        for (t, p), wm in sorted(watermarks.items())
        if t == topic
    }


def _watermarks(settings: Settings, topic: str) -> dict[TopicPartitionId, Watermarks]:
    from cdc.kafka_admin import KafkaMetadata

    meta = KafkaMetadata.for_settings(settings.kafka)
    try:
        return meta.topic_watermarks([topic])
    finally:
        meta.close()


def _replay_command(name: str, topic: str, offsets: Mapping[str, int]) -> str:
    resume = json.dumps({topic: dict(offsets)}, separators=(",", ":"))
    return f"cdc replay --pipeline {name} --offsets '{resume}'"


def check_checkpoint_matches_tables(settings: Settings, name: str, checkpoint: str) -> None:
    """Refuse to start a pipeline whose checkpoint is behind its own tables.

    Raises:
        DataLossError: the checkpoint is missing, empty or ends before the batches the
            tables hold (a checkpoint a replay prepared is accepted: it starts past them).
    """
    from cdc.replay import committed_txn_versions

    versions = committed_txn_versions(settings, name)
    top = max((v for v in versions.values() if v is not None), default=None)
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
    topic = settings.pipeline(name).topic
    resume = _replay_command(name, topic, resume_offsets(settings, name))
    raise DataLossError(
        f"pipeline {name}: checkpoint {checkpoint} {problem}, but the pipeline's tables hold"
        f" its commits up to txn version {top} (the checkpoint was deleted, truncated or"
        " replaced): a run would take the records it re-reads for committed and land none of"
        " them. Restore the checkpoint, or land exactly what the tables miss:"
        f" {resume}"
    )


def check_checkpoint_within_topic(settings: Settings, name: str, checkpoint: str) -> None:
    """Refuse a checkpoint whose offsets lie beyond the end of the topic.

    The topic id is unchanged (see :func:`cdc.topic_identity.check_topic_identity`), yet a
    partition ends below the offsets the checkpoint read up to, or is gone: the broker lost
    records it had acknowledged (a truncated log, an unclean leader election, a restore from
    an older backup). Spark would wait for offsets that new records will fill again, and
    take those new records for ones it had read.

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
    resume = _replay_command(name, topic, resume_offsets(settings, name, watermarks))
    raise DataLossError(
        f"pipeline {name}: checkpoint {checkpoint} is ahead of its topic ({'; '.join(ahead)}):"
        " the broker lost records it had acknowledged, and new records would reuse their"
        f" offsets unseen. Land exactly what the tables miss: {resume}"
    )
