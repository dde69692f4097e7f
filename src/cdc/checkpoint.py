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
  again gets a new id, and its offsets mean other records).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "START_FILE",
    "TOPIC_FILE",
    "TXN_BASE_FILE",
    "committed_offsets",
    "has_offsets",
    "read_start_file",
    "read_topic_id",
    "read_txn_base",
    "write_json",
    "write_topic_id",
]

TXN_BASE_FILE = "cdc-txn-base.json"
"""``{"base": N}``: the app-transaction version of the checkpoint's batch 0."""

START_FILE = "cdc-start.json"
"""Written by ``cdc replay`` into a fresh checkpoint: where the new query starts and what the
previous checkpoint had already landed.

``{"startingOffsets": {topic: {"<p>": offset}}, "landed": {topic: {"<p>": offset}}}``.
``startingOffsets`` is used only while the checkpoint has no offsets of its own. Records
below ``landed`` were appended to bronze/quarantine by the previous checkpoint; a replay
re-reads them for silver but does not append them again.
"""

TOPIC_FILE = "cdc-topic.json"
"""``{"topic": name, "topic_id": id}``: the topic whose offsets this checkpoint holds."""


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
    folder = Path(checkpoint) / "offsets"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def read_topic_id(checkpoint: str | Path, topic: str) -> str | None:
    """The topic id recorded for ``topic`` in the checkpoint, or None."""
    path = Path(checkpoint) / TOPIC_FILE
    if not path.exists():
        return None
    recorded = json.loads(path.read_text())
    return str(recorded["topic_id"]) if recorded.get("topic") == topic else None


def write_topic_id(checkpoint: str | Path, topic: str, topic_id: str) -> None:
    """Record the id of the topic whose offsets the checkpoint holds."""
    write_json(Path(checkpoint) / TOPIC_FILE, {"topic": topic, "topic_id": topic_id})


def _latest_log_entry(folder: Path) -> tuple[int, list[str]] | None:
    if not folder.is_dir():
        return None
    ids = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    if not ids:
        return None
    batch = max(ids)
    return batch, (folder / str(batch)).read_text().splitlines()


def committed_offsets(checkpoint: str | Path) -> tuple[int, dict[str, dict[str, int]]] | None:
    """The last committed batch id and its end offsets from a Spark checkpoint.

    Spark writes ``offsets/<batch>`` before running a batch and ``commits/<batch>`` after
    it; the committed position is the offsets entry of the latest committed batch.
    """
    root = Path(checkpoint)
    commit = _latest_log_entry(root / "commits")
    if commit is None:
        return None
    batch = commit[0]
    lines = (root / "offsets" / str(batch)).read_text().splitlines()
    # v1, then the batch metadata, then one line per source.
    offsets: dict[str, dict[str, int]] = json.loads(lines[2]) if len(lines) > 2 else {}
    return batch, offsets
