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
    try:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": "cdc-status",
                "enable.auto.commit": False,
                **settings.kafka.client_config(),
            }
        )
        try:
            meta = consumer.list_topics(topic, timeout=3)
            parts = meta.topics[topic].partitions if topic in meta.topics else {}
            return {
                str(p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=3)[1]
                for p in sorted(parts)
            }
        finally:
            consumer.close()
    except Exception:
        return None


def _table_line(role: str, uri: str, store: TableStore) -> str:
    info = store.info(uri)
    if info is None:
        return f"  {role:<10} {uri}: not created yet"
    return f"  {role:<10} {uri}: version {info.version}, {info.rows} rows, {info.files} files"


def pipeline_status(settings: Settings, name: str) -> str:
    """A short human-readable status block for one pipeline."""
    pipeline = settings.pipeline(name)
    lines = [f"{name}: topic {pipeline.topic} -> {pipeline.target}"]
    committed = committed_offsets(settings.checkpoint_path(name))
    latest = _high_watermarks(settings, pipeline.topic)
    if committed is None:
        lines.append("  offsets    no batch committed yet")
    else:
        batch, offsets = committed
        positions: dict[str, Any] = offsets.get(pipeline.topic, {})
        lines.append(f"  offsets    batch {batch}: {json.dumps(positions, sort_keys=True)}")
    if latest is None:
        lines.append("  lag        broker unreachable")
    else:
        done = committed[1].get(pipeline.topic, {}) if committed else {}
        lag = {p: max(0, end - int(done.get(p, 0))) for p, end in latest.items()}
        lines.append(f"  lag        {sum(lag.values())} records {json.dumps(lag, sort_keys=True)}")
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    for role, uri in table_paths(settings, pipeline).items():
        lines.append(_table_line(role, uri, store))
    return "\n".join(lines)
