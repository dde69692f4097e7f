"""The files of a pipeline's checkpoint folder: the one module that reads and writes them.

Spark's own logs (written by the Kafka source and the query):

* ``offsets/<batch>``: ``v1``, the batch metadata, then one line per source with its end
  offsets ``{"topic": {"<partition>": next_offset}}``; written before the batch runs;
* ``commits/<batch>``: written after ``foreachBatch`` returned.

Beside them, the service keeps:

* :data:`TXN_BASE_FILE`: the app-transaction version of batch 0 (``cdc replay`` restarts batch
  ids at 0 and moves the base above every version already committed);
* :data:`START_FILE`: where a replayed query starts and what earlier checkpoints landed;
* :data:`TOPIC_FILE`: the Kafka topic id the offsets belong to (a topic deleted and created
  again gets a new id, and its offsets mean other records);
* :data:`IDENTITY_FILE`: the pipeline, topic and tables the checkpoint belongs to, with each
  table's Delta id and the app-transaction version the checkpoint knows it to hold
  (:class:`CheckpointIdentity`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "IDENTITY_FILE",
    "START_FILE",
    "TOPIC_FILE",
    "TXN_BASE_FILE",
    "CheckpointIdentity",
    "CheckpointState",
    "TableMark",
    "committed_offsets",
    "has_offsets",
    "read_checkpoint_state",
    "read_identity",
    "read_start_file",
    "read_topic_id",
    "read_txn_base",
    "recorded_topic",
    "write_identity",
    "write_json",
    "write_topic_id",
]

TXN_BASE_FILE = "cdc-txn-base.json"
"""``{"base": N}``: the app-transaction version of the checkpoint's batch 0."""

START_FILE = "cdc-start.json"
"""Written by ``cdc replay`` into a fresh checkpoint: where the new query starts and what the
previous checkpoint had already landed.

``{"startingOffsets": {topic: {"<p>": offset}}, "landed_ranges": {"<p>": [[lo, hi]]},
"topic_id": id}``. ``startingOffsets`` is used only while the checkpoint has no offsets of its
own. Offsets in ``landed_ranges`` are held by bronze or quarantine (read from the tables when
the replay was planned, see :mod:`cdc.pipeline.landed`); the new query re-reads them for silver but
does not append them again.
"""

TOPIC_FILE = "cdc-topic.json"
"""``{"topic": name, "topic_id": id}``: the topic whose offsets this checkpoint holds."""


IDENTITY_FILE = "cdc-identity.json"
"""``{"pipeline": name, "topic": name, "tables": {role: {"uri", "table_id", "txn_version"}}}``:
whose checkpoint this is (see :class:`CheckpointIdentity`). Checkpoints made before the file
existed get it at their next start."""


@dataclass(frozen=True)
class TableMark:
    """What a checkpoint knows of one of its pipeline's tables."""

    uri: str
    table_id: str
    """The Delta table id (``metaData.id``): new whenever a table is created, so a table
    deleted and created again, or another table copied in its place, has another one."""
    txn_version: int | None
    """The highest app-transaction version of the pipeline the table is known to hold (seen
    at a query start, or committed by one of the checkpoint's batches); None: none yet."""


@dataclass(frozen=True)
class CheckpointIdentity:
    """Whose checkpoint this is: the pipeline, its topic and its tables (by role)."""

    pipeline: str
    topic: str
    tables: dict[str, TableMark]

    def to_json(self) -> dict[str, Any]:
        """The :data:`IDENTITY_FILE` content."""
        return {
            "pipeline": self.pipeline,
            "topic": self.topic,
            "tables": {
                role: {"uri": m.uri, "table_id": m.table_id, "txn_version": m.txn_version}
                for role, m in sorted(self.tables.items())
            },
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> CheckpointIdentity:
        """Inverse of :meth:`to_json`."""
        tables = {
            str(role): TableMark(
                str(m["uri"]),
                str(m["table_id"]),
                None if m.get("txn_version") is None else int(m["txn_version"]),
            )
            for role, m in (value.get("tables") or {}).items()
        }
        return cls(str(value["pipeline"]), str(value["topic"]), tables)


def read_identity(checkpoint: str | Path) -> CheckpointIdentity | None:
    """The checkpoint's :data:`IDENTITY_FILE` (None: a checkpoint made before it existed)."""
    path = Path(checkpoint) / IDENTITY_FILE
    return CheckpointIdentity.from_json(json.loads(path.read_text())) if path.exists() else None


def write_identity(checkpoint: str | Path, identity: CheckpointIdentity) -> None:
    """Write the checkpoint's :data:`IDENTITY_FILE` (atomically)."""
    write_json(Path(checkpoint) / IDENTITY_FILE, identity.to_json())


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON atomically (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def read_start_file(checkpoint: str | Path) -> dict[str, Any] | None:
    """The replay start file of a checkpoint, or None."""
    path = Path(checkpoint) / START_FILE
    return json.loads(path.read_text()) if path.exists() else None


def read_txn_base(checkpoint: str | Path) -> int:
    """The app-transaction version of the checkpoint's batch 0 (0 unless a replay set it)."""
    path = Path(checkpoint) / TXN_BASE_FILE
    return int(json.loads(path.read_text())["base"]) if path.exists() else 0


def has_offsets(checkpoint: str | Path) -> bool:
    """Whether Spark has planned at least one batch in this checkpoint."""
    return bool(_log_ids(Path(checkpoint) / "offsets"))


def read_topic_id(checkpoint: str | Path, topic: str) -> str | None:
    """The topic id recorded for ``topic`` in the checkpoint, or None."""
    recorded = _topic_file(checkpoint)
    return str(recorded["topic_id"]) if recorded.get("topic") == topic else None


def recorded_topic(checkpoint: str | Path) -> str | None:
    """The topic the checkpoint's :data:`TOPIC_FILE` names (None: no file)."""
    topic = _topic_file(checkpoint).get("topic")
    return None if topic is None else str(topic)


def _topic_file(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / TOPIC_FILE
    recorded: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return recorded


def write_topic_id(checkpoint: str | Path, topic: str, topic_id: str) -> None:
    """Record the id of the topic whose offsets the checkpoint holds."""
    write_json(Path(checkpoint) / TOPIC_FILE, {"topic": topic, "topic_id": topic_id})


def _log_ids(folder: Path) -> list[int]:
    """Batch ids of a Spark checkpoint log folder (``offsets`` or ``commits``), ascending."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _offsets_entry(checkpoint: Path, batch: int) -> dict[str, dict[str, int]]:
    """The end offsets of ``offsets/<batch>``: ``{topic: {partition: offset}}``."""
    lines = (checkpoint / "offsets" / str(batch)).read_text().splitlines()
    # v1, then the batch metadata, then one line per source.
    entry: dict[str, dict[str, int]] = json.loads(lines[2]) if len(lines) > 2 else {}
    return entry


def committed_offsets(checkpoint: str | Path) -> tuple[int, dict[str, dict[str, int]]] | None:
    """The last committed batch id and its end offsets from a Spark checkpoint.

    Spark writes ``offsets/<batch>`` before running a batch and ``commits/<batch>`` after
    it; the committed position is the offsets entry of the latest committed batch.
    """
    root = Path(checkpoint)
    commits = _log_ids(root / "commits")
    if not commits:
        return None
    return commits[-1], _offsets_entry(root, commits[-1])


@dataclass(frozen=True)
class CheckpointState:
    """What a pipeline's checkpoint holds: Spark's logs and the files a replay writes."""

    path: str
    exists: bool
    committed: dict[str, dict[str, int]] | None = None
    """End offsets of the last committed batch (None: none committed)."""
    unfinished: tuple[int, dict[str, dict[str, int]]] | None = None
    """A batch planned (``offsets/<id>``) but not committed: its id and end offsets."""
    last_batch: int | None = None
    """The last batch planned (``offsets/<id>``), committed or not (None: none)."""
    txn_base: int = 0
    start: dict[str, Any] | None = None
    """The checkpoint's own start file, when a replay created it."""


def read_checkpoint_state(checkpoint: str) -> CheckpointState:
    """Read a Spark checkpoint's offsets and commits logs and the files replay writes.

    Args:
        checkpoint: the checkpoint folder (it may not exist).

    Returns:
        The state.
    """
    root = Path(checkpoint)
    if not root.is_dir():
        return CheckpointState(path=checkpoint, exists=False)
    offsets, commits = _log_ids(root / "offsets"), _log_ids(root / "commits")
    committed = _offsets_entry(root, commits[-1]) if commits else None
    unfinished = None
    if offsets and (not commits or offsets[-1] > commits[-1]):
        unfinished = (offsets[-1], _offsets_entry(root, offsets[-1]))
    return CheckpointState(
        path=checkpoint,
        exists=True,
        committed=committed,
        unfinished=unfinished,
        last_batch=offsets[-1] if offsets else None,
        txn_base=read_txn_base(root),
        start=read_start_file(checkpoint),
    )
