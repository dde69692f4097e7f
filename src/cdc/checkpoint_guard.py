"""At every start, a pipeline's checkpoint must account for what its tables already hold.

Every commit to a pipeline's tables carries the app transaction ``txn_base + batch_id`` of
the checkpoint that made it. A checkpoint whose batches end below the tables' highest version
was deleted, truncated or replaced: Spark would re-read records from its older position, the
writers would skip those batches as "already committed" (their versions are), and the records
would land in no table, silently. The run stops instead, in one line that names the
checkpoint, what disagrees, and the replay that resumes exactly after what the tables hold.
"""

from __future__ import annotations

import json

from cdc.checkpoint import read_checkpoint_state
from cdc.config import Settings
from cdc.errors import DataLossError
from cdc.lake import table_paths

__all__ = ["check_checkpoint_matches_tables", "landed_in_tables"]


def landed_in_tables(settings: Settings, name: str) -> dict[str, int]:
    """Per partition of the pipeline's topic, one past the last offset bronze or quarantine hold.

    Returns:
        ``{partition: offset}`` (partitions with no row are absent).
    """
    from cdc.store import store_for

    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    topic = settings.pipeline(name).topic.replace("'", "''")
    paths = table_paths(settings, settings.pipeline(name))
    landed: dict[str, int] = {}
    for role in ("bronze", "quarantine"):
        if not store.exists(paths[role]):
            continue
        rows = store.query(
            paths[role],
            'SELECT "partition" AS p, max("offset") AS o FROM t'
            f" WHERE topic = '{topic}' GROUP BY \"partition\"",
        ).to_pylist()
        for row in rows:
            p = str(row["p"])
            landed[p] = max(landed.get(p, 0), int(row["o"]) + 1)
    return dict(sorted(landed.items(), key=lambda kv: int(kv[0])))


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
    resume = json.dumps({topic: landed_in_tables(settings, name)}, separators=(",", ":"))
    raise DataLossError(
        f"pipeline {name}: checkpoint {checkpoint} {problem}, but the pipeline's tables hold"
        f" its commits up to txn version {top} (the checkpoint was deleted, truncated or"
        " replaced): a run would take the records it re-reads for committed and land none of"
        " them. Restore the checkpoint, or resume right after what the tables hold:"
        f" cdc replay --pipeline {name} --offsets '{resume}'"
    )
