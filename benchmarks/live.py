"""A running query: steady-state drain rate and event-commit → visible-in-silver latency.

Both modes start the pipeline's query with a processing-time trigger (``start_query(...,
available_now=False)``) and watch its ``on_batch`` callback, which ``foreachBatch`` calls after
the batch's silver MERGE returned. Kafka offsets map events to batches: the end offsets of
batch *n* are in the query's checkpoint (``offsets/<n>``).
"""

from __future__ import annotations

import bisect
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from cdc.config.settings import Settings
    from cdc.pipeline.batch import BatchStats

__all__ = [
    "Batch",
    "RateProducer",
    "batch_end_offsets",
    "latencies",
    "percentile",
    "run_query_until",
    "steady_rate",
]


@dataclass(frozen=True)
class Batch:
    """One micro-batch as the ``on_batch`` callback saw it."""

    batch_id: int
    rows: int
    seconds: float
    ended: float
    """``time.perf_counter()`` when the callback ran (after the silver MERGE)."""
    visible_at: float
    """``time.time()`` at the same instant (comparable with Kafka delivery times)."""
    ends: dict[int, int] = field(default_factory=dict)
    """``{partition: end offset}`` (read from the checkpoint while the batch runs: Spark
    keeps only the last ``minBatchesToRetain`` offset files)."""
    phases: dict[str, float] = field(default_factory=dict)
    """The batch's :attr:`cdc.pipeline.batch.BatchStats.phases`."""


def run_query_until(
    spark: SparkSession,
    settings: Settings,
    pipeline: str,
    done: Callable[[list[Batch]], bool],
    timeout_s: float,
    on_start: Callable[[], None] | None = None,
) -> list[Batch]:
    """Start ``pipeline``'s query (processing-time trigger), run until ``done(batches)``.

    Args:
        spark: the session.
        settings: settings whose ``spark.trigger_interval`` sets the trigger.
        pipeline: the pipeline name.
        done: called with the batches so far after each batch; True stops the query.
        timeout_s: fail when ``done`` is not reached by then.
        on_start: called once the query has started.

    Returns:
        Every batch the query ran, in order.

    Raises:
        RuntimeError: the query failed or the deadline passed.
    """
    from cdc.pipeline.queries import start_query

    batches: list[Batch] = []
    finished = threading.Event()

    checkpoint = settings.checkpoint_path(pipeline)

    def on_batch(name: str, stats: BatchStats) -> None:
        ended, visible_at = time.perf_counter(), time.time()
        ends = batch_end_offsets(checkpoint, stats.batch_id)
        batches.append(
            Batch(
                stats.batch_id,
                stats.input_rows,
                stats.seconds,
                ended,
                visible_at,
                ends,
                dict(stats.phases),
            )
        )
        if done(batches):
            finished.set()

    query = start_query(spark, settings, pipeline, available_now=False, on_batch=on_batch)
    try:
        if on_start is not None:
            on_start()
        deadline = time.monotonic() + timeout_s
        while not finished.wait(0.2):
            if not query.isActive:
                raise RuntimeError(f"query {pipeline} stopped: {query.exception()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"query {pipeline} did not finish within {timeout_s:.0f}s "
                    f"({sum(b.rows for b in batches):,} rows in {len(batches)} batches)"
                )
    finally:
        query.stop()
    return batches


def steady_rate(ends: Sequence[tuple[int, float]], warmup_rows: int) -> tuple[float, int, float]:
    """Rows/s after the warm-up: from the end of the batch that completed ``warmup_rows``.

    Args:
        ends: ``(rows, end time)`` per batch, in order.
        warmup_rows: rows counted as warm-up (their batches are excluded).

    Returns:
        ``(rows per second, rows measured, seconds measured)``.
    """
    seen = 0
    start: float | None = None
    measured = 0
    last = 0.0
    for rows, ended in ends:
        if start is None:
            seen += rows
            if seen >= warmup_rows:
                start = ended
            continue
        measured += rows
        last = ended
    if start is None or measured == 0:
        return float("nan"), 0, 0.0
    seconds = last - start
    return measured / seconds, measured, seconds


def batch_end_offsets(checkpoint: str | Path, batch_id: int) -> dict[int, int]:
    """``{partition: end offset}`` of one batch, from the query's offset log (one topic).

    The log's third line is the Kafka source's offset, ``{"topic": {"0": 123, ...}}``.
    """
    lines = (Path(checkpoint) / "offsets" / str(batch_id)).read_text().splitlines()
    offsets: dict[str, dict[str, int]] = json.loads(lines[2])
    (partitions,) = offsets.values()
    return {int(p): int(o) for p, o in partitions.items()}


def latencies(
    delivered: Sequence[tuple[int, int, float]],
    visible: Sequence[tuple[dict[int, int], float]],
) -> tuple[list[float], int]:
    """Seconds from each event's delivery to the end of the batch that made it visible.

    Args:
        delivered: ``(partition, offset, delivery time)`` per event.
        visible: ``({partition: end offset}, time visible)`` per batch, in commit order.

    Returns:
        ``(latencies, events that no batch covered)``.
    """
    per_partition: dict[int, tuple[list[int], list[float]]] = {}
    covered: dict[int, int] = {}
    for ends, at in visible:
        for partition, end in ends.items():
            if end > covered.get(partition, 0):
                covered[partition] = end
                offsets, times = per_partition.setdefault(partition, ([], []))
                offsets.append(end)
                times.append(at)
    out: list[float] = []
    missing = 0
    for partition, offset, at in delivered:
        offsets, times = per_partition.get(partition, ([], []))
        index = bisect.bisect_right(offsets, offset)
        if index == len(offsets):
            missing += 1
            continue
        out.append(times[index] - at)
    return out, missing


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class RateProducer:
    """Sends pre-encoded events at ``rate`` per second in a thread; records delivery times."""

    bootstrap: str
    topic: str
    events: list[tuple[int, bytes, bytes]]
    rate: float
    linger_ms: int
    delivered: list[tuple[int, int, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sent_seconds: float = 0.0

    def run(self) -> None:
        """Produce everything on schedule, then flush."""
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": self.linger_ms,
                "compression.type": "none",
            }
        )

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self.failures.append(str(err))
            else:
                self.delivered.append((msg.partition(), msg.offset(), time.time()))

        started = time.perf_counter()
        for index, (partition, key, value) in enumerate(self.events):
            due = started + index / self.rate
            ahead = due - time.perf_counter()
            if ahead > 0.002:
                producer.poll(ahead)
            producer.produce(
                self.topic, value=value, key=key, partition=partition, on_delivery=on_delivery
            )
            producer.poll(0)
        producer.flush(60)
        self.sent_seconds = time.perf_counter() - started
