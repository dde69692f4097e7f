"""``cdc status``: committed offsets, lag and table versions of a pipeline."""

from __future__ import annotations

import json
from typing import Any

from cdc.checkpoint import committed_offsets
from cdc.config import Settings
from cdc.lake import table_paths
from cdc.store import TableStore, store_for

__all__ = ["pipeline_status"]


def _high_watermarks(settings: Settings, topic: str) -> dict[str, int] | None:
    """End offsets per partition (None: the cluster did not answer)."""
    from cdc.errors import BrokerUnavailableError
    from cdc.kafka_admin import KafkaMetadata

    meta = KafkaMetadata.for_settings(settings.kafka)
    try:
        marks = meta.topic_watermarks([topic])
    except BrokerUnavailableError:
        return None
    finally:
        meta.close()
    return {str(p): wm.high for (_, p), wm in sorted(marks.items())}


def _table_line(role: str, uri: str, store: TableStore) -> str:
    info = store.info(uri)
    if info is None:
        return f"  {role:<10} {uri}: not created yet"
    return f"  {role:<10} {uri}: version {info.version}, {info.rows} rows, {info.files} files"


def pipeline_status(settings: Settings, name: str, broker: bool = True) -> str:
    """A short human-readable status block for one pipeline.

    Args:
        settings: service settings.
        name: the pipeline.
        broker: ask the cluster for the lag (False: it is known to be unreachable).
    """
    pipeline = settings.pipeline(name)
    lines = [f"{name}: topic {pipeline.topic} -> {pipeline.target}"]
    committed = committed_offsets(settings.checkpoint_path(name))
    latest = _high_watermarks(settings, pipeline.topic) if broker else None
    if committed is None:
        lines.append("  offsets    no batch committed yet")
    else:
        batch, offsets = committed
        positions: dict[str, Any] = offsets.get(pipeline.topic, {})
        lines.append(f"  offsets    batch {batch}: {json.dumps(positions, sort_keys=True)}")
    if latest is None:
        lines.append("  lag        unknown: the broker is unreachable")
    else:
        done = committed[1].get(pipeline.topic, {}) if committed else {}
        lag = {p: max(0, end - int(done.get(p, 0))) for p, end in latest.items()}
        lines.append(f"  lag        {sum(lag.values())} records {json.dumps(lag, sort_keys=True)}")
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    for role, uri in table_paths(settings, pipeline).items():
        lines.append(_table_line(role, uri, store))
    return "\n".join(lines)
