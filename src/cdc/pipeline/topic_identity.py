"""The identity of a pipeline's topic: offsets in a checkpoint belong to one incarnation."""

from __future__ import annotations

import logging
import time

from cdc.config.lake import table_paths
from cdc.config.settings import Settings
from cdc.core.ranges import TOPIC_ID_COLUMN
from cdc.errors import BrokerUnavailableError, DataLossError
from cdc.pipeline.checkpoint import read_topic_id, write_topic_id
from cdc.runtime.kafka_admin import topic_id
from cdc.store import store_for

__all__ = ["BROKER_PATIENCE_S", "check_topic_identity", "current_topic_id"]

log = logging.getLogger(__name__)


BROKER_PATIENCE_S = 300.0
"""How long a running query's per-batch topic check waits for an unreachable broker (a broker
restart takes seconds; Spark's Kafka source rides such an outage out too)."""


def current_topic_id(settings: Settings, topic: str) -> str | None:
    """The cluster's id of ``topic`` now (None: no such topic), asked with the service's
    Kafka settings.

    Raises:
        BrokerUnavailableError: the cluster did not answer within ``kafka.connect_timeout_s``.
    """
    kafka = settings.kafka
    return topic_id(
        kafka.bootstrap_servers,
        topic,
        client_config=kafka.client_config(),
        timeout_s=kafka.connect_timeout_s,
    )


def _ids_in_tables(settings: Settings, name: str) -> set[str]:
    """The topic ids the pipeline's bronze and quarantine rows were read from."""
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    pipeline = settings.pipeline(name)
    topic = pipeline.topic.replace("'", "''")
    ids: set[str] = set()
    for role, uri in table_paths(settings, pipeline).items():
        if role == "silver" or TOPIC_ID_COLUMN not in store.columns(uri):
            continue  # no table, or rows written before they kept topic ids
        rows = store.query(
            uri,
            f"SELECT DISTINCT {TOPIC_ID_COLUMN} AS id FROM t"
            f" WHERE topic = '{topic}' AND {TOPIC_ID_COLUMN} IS NOT NULL",
        )
        ids.update(str(v) for v in rows.column("id").to_pylist())
    return ids


def check_topic_identity(
    settings: Settings,
    name: str,
    checkpoint: str,
    *,
    patience_s: float | None = None,
    record: bool = True,
) -> str | None:
    """Refuse offsets that belong to another incarnation of the pipeline's topic.

    The first time the topic is seen, its id is recorded in the checkpoint (unless the
    pipeline's bronze or quarantine rows were read from other ids only). From then on, a
    different id (the topic was deleted and created again, or the broker lost its data and the
    topic came back) means the checkpoint's offsets name records that no longer exist, or
    other records: reading on would skip or mix them silently.

    Args:
        settings: service settings.
        name: the pipeline.
        checkpoint: its checkpoint folder.
        patience_s: keep asking an unreachable cluster this long (None: one request of
            ``kafka.connect_timeout_s``, the fast failure a start wants).
        record: record a first-seen id in the checkpoint (False: only check, as
            ``cdc status`` does).

    Returns:
        The topic's id (None: the topic does not exist and no id was recorded).

    Raises:
        DataLossError: the topic's id differs from the recorded one, or the topic is gone.
        BrokerUnavailableError: the cluster did not answer in time.
    """
    topic = settings.pipeline(name).topic
    deadline = time.monotonic() + (patience_s or 0.0)
    while True:
        try:
            current = current_topic_id(settings, topic)
            break
        except BrokerUnavailableError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("pipeline %s: %s; waiting for the broker", name, exc)
            time.sleep(1.0)
    recorded = read_topic_id(checkpoint, topic)
    if recorded is None and current is not None:
        # A checkpoint that never recorded an id (made before ids were kept, or its file was
        # lost): the tables' rows say which incarnation was read before.
        seen = _ids_in_tables(settings, name)
        if not seen or current in seen:
            if record:
                write_topic_id(checkpoint, topic, current)
            return current
        held = f"the pipeline's tables hold records of topic id {', '.join(sorted(seen))} only"
    elif recorded is None or current == recorded:
        return current
    else:
        held = f"checkpoint {checkpoint} holds offsets of topic id {recorded}"
    now = "no longer exists" if current is None else f"now has id {current}"
    raise DataLossError(
        f"pipeline {name}: topic {topic} {now}, but {held} (the topic was deleted and"
        " recreated, or the broker lost its data): the checkpoint's offsets do not name the"
        f" records now in the topic. Re-read the topic with"
        f" `cdc replay --pipeline {name} --earliest`"
    )
