"""Spark's Kafka data-loss errors (``KAFKA_DATA_LOSS.*``), read into what was lost. Pure.

With ``failOnDataLoss=true`` Spark's Kafka source stops a query when records it has to read
are gone: aged out by retention, deleted, a partition deleted, an offset reset. Its error is
a paragraph ("Some data may have been lost because they are not available in Kafka any
more; ...") whose last line, the reason, names the partition and offsets, inside a JVM trace.
:func:`data_loss_of` reads the condition's reason (and so its parameters) out of the error
text, by the templates of spark-sql-kafka's ``kafka-error-conditions.json``: PySpark 4.2's
``StreamingQuery.exception()`` is built from the JVM exception's text, without the JVM object
(its ``getCondition()`` is None), and a failure in a task of ``foreachBatch``'s jobs reaches
the query through the Python proxy, as text only. :class:`KafkaDataLoss` says it in one line,
for :mod:`cdc.pipeline.queries` to name the repair.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DATA_LOSS_CONDITION", "KafkaDataLoss", "data_loss_of", "parse_data_loss"]

DATA_LOSS_CONDITION = "KAFKA_DATA_LOSS"
"""The error condition of Spark's Kafka source for lost records (sub-conditions below it)."""

_HEADLINE = "Some data may have been lost because they are not available in Kafka any more"

# The reason templates of spark-sql-kafka 4.x (error/kafka-error-conditions.json), as
# patterns over the message text; their groups are the template's parameters.
_TP = r"(?P<topicPartition>\S+?)"
_REASONS: dict[str, re.Pattern[str]] = {
    "COULD_NOT_READ_OFFSET_RANGE": re.compile(
        rf"Could not read records in offset \[(?P<startOffset>\d+), (?P<endOffset>\d+)\)"
        rf" for topic partition {_TP}\s"
    ),
    "START_OFFSET_RESET": re.compile(
        rf"Starting offset for {_TP} was (?P<offset>-?\d+) but consumer reset to"
        r" (?P<fetchedOffset>-?\d+)"
    ),
    "PARTITION_OFFSET_CHANGED": re.compile(
        rf"Partition {_TP} offset was changed from (?P<prevOffset>-?\d+) to (?P<newOffset>-?\d+)"
    ),
    "ADDED_PARTITION_DOES_NOT_START_FROM_OFFSET_ZERO": re.compile(
        rf"Added partition {_TP} starts from (?P<startOffset>\d+) instead of 0"
    ),
    "PARTITIONS_DELETED": re.compile(r"Partitions (?P<partitions>.+?) have been deleted"),
    "INITIAL_OFFSET_NOT_FOUND_FOR_PARTITIONS": re.compile(
        r"Cannot find initial offsets for partitions (?P<partitions>.+?)\. They may"
    ),
}


@dataclass(frozen=True)
class KafkaDataLoss:
    """Records Spark's Kafka source could no longer read."""

    condition: str
    """``KAFKA_DATA_LOSS.<REASON>`` (the reason unknown: ``KAFKA_DATA_LOSS``)."""
    what: str
    """The partitions and offsets, in words: ``crm.contacts/2 offsets [11, 15) are gone``."""

    def line(self) -> str:
        """``<what> (<condition>)``."""
        return f"{self.what} ({self.condition})"


def _partition(text: str) -> str:
    """``crm.contacts-2`` (Kafka's TopicPartition text) as ``crm.contacts/2``."""
    topic, _, number = str(text).rpartition("-")
    return f"{topic}/{number}" if topic and number.isdigit() else str(text)


def _partitions(text: str) -> str:
    """``Set(t-0, t-1)`` (a Scala set's text) as ``t/0, t/1``."""
    inner = re.sub(r"^\w*\((.*)\)$", r"\1", str(text).strip())
    return ", ".join(_partition(p.strip()) for p in inner.split(",") if p.strip())


def _what(reason: str, p: Mapping[str, str]) -> str:
    if reason == "COULD_NOT_READ_OFFSET_RANGE":
        return (
            f"{_partition(p['topicPartition'])} offsets [{p['startOffset']}, {p['endOffset']})"
            " can no longer be read"
        )
    if reason == "START_OFFSET_RESET":
        return (
            f"{_partition(p['topicPartition'])} was to be read from offset {p['offset']}, but"
            f" the broker resets it to {p['fetchedOffset']}"
        )
    if reason == "PARTITION_OFFSET_CHANGED":
        return (
            f"{_partition(p['topicPartition'])} went back from offset {p['prevOffset']} to"
            f" {p['newOffset']}"
        )
    if reason == "ADDED_PARTITION_DOES_NOT_START_FROM_OFFSET_ZERO":
        return (
            f"new partition {_partition(p['topicPartition'])} starts at offset"
            f" {p['startOffset']}: its records below it are gone"
        )
    if reason.startswith("PARTITIONS_DELETED"):
        return f"partitions {_partitions(p['partitions'])} of the checkpoint are gone"
    if reason == "INITIAL_OFFSET_NOT_FOUND_FOR_PARTITIONS":
        return f"partitions {_partitions(p['partitions'])} have no offsets to start from"
    return "records the query had to read are gone"


def parse_data_loss(text: str) -> KafkaDataLoss | None:
    """Read a Kafka data-loss error out of a failed query's text (None: it is none).

    Args:
        text: the error text (Python traceback, JVM trace, or both).

    Returns:
        The loss, its reason read from the first reason line Spark's template matches.
    """
    if _HEADLINE not in text:
        return None
    tail = text[text.index(_HEADLINE) :] + "\n"
    found = [(m.start(), reason, m) for reason, r in _REASONS.items() if (m := r.search(tail))]
    if not found:
        return KafkaDataLoss(DATA_LOSS_CONDITION, _what("", {}))
    _, reason, match = min(found, key=lambda f: f[0])
    return KafkaDataLoss(f"{DATA_LOSS_CONDITION}.{reason}", _what(reason, match.groupdict()))


def data_loss_of(exc: BaseException | None) -> KafkaDataLoss | None:
    """The Kafka data loss that stopped a query (None: it stopped for another reason).

    Args:
        exc: the query's exception (``StreamingQuery.exception()``).

    Returns:
        The loss, read from ``str(exc)``.
    """
    return None if exc is None else parse_data_loss(str(exc))
