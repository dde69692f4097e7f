"""The tests' side of Kafka: records produced as ``cdc produce`` sends them, topics deleted,
high watermarks read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdc.runtime.kafka_admin import KafkaMetadata, partition_count
from tests.support.paths import CONTRACTS_PATH, REGISTRY_PATH
from tests.support.polling import wait_until

__all__ = ["delete_all_topics", "delete_topic", "high_watermarks", "produce"]


def produce(bootstrap: str, topic: str, lines: list[dict[str, Any]], tmp: Path) -> int:
    """Send ``lines`` (``cdc produce``'s JSON lines) to ``topic`` with the project's registry.

    The lines are written to a new ``<topic>-<n>.jsonl`` in ``tmp`` first, as a user's file.

    Returns:
        How many records were sent.
    """
    from cdc.ingest.contracts import load_contracts
    from cdc.ingest.produce import produce_file
    from cdc.ingest.registry import FileRegistry

    path = tmp / f"{topic}-{len(list(tmp.glob('*.jsonl')))}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = produce_file(
        bootstrap, FileRegistry.load(REGISTRY_PATH), load_contracts(CONTRACTS_PATH), topic, path
    )
    return int(report.sent)


def high_watermarks(bootstrap: str, topic: str = "crm.contacts") -> dict[str, int]:
    """Each partition's high watermark (the next offset), by partition number as text."""
    meta = KafkaMetadata({"bootstrap.servers": bootstrap})
    try:
        marks = meta.topic_watermarks([topic])
    finally:
        meta.close()
    return {str(p): wm.high for (_, p), wm in sorted(marks.items())}


def delete_topic(bootstrap: str, topic: str) -> None:
    """Delete ``topic`` and wait until the cluster no longer has it."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic], operation_timeout=30)[topic].result()
    wait_until(lambda: partition_count(bootstrap, topic) is None, 30, f"{topic} deleted")


def delete_all_topics(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Delete every non-internal topic and wait until the cluster no longer lists them."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if not t.startswith("__")]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=timeout_s).values():
            future.result()
    wait_until(
        lambda: all(t.startswith("__") for t in admin.list_topics(timeout=10).topics),
        timeout_s,
        "the deleted topics to leave the cluster's list",
    )
