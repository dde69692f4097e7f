"""``cdc run``'s runs: the process, each pipeline's streaming query, each micro-batch.

* The process is a run of job ``run`` (START when ``cdc run`` starts, COMPLETE when its
  queries drained or were stopped, FAIL when one failed).
* Each pipeline's query is a run of job ``stream.<pipeline>``, a child of the process run:
  START names the topic as input and bronze, quarantine and silver as outputs, with their
  schemas; each micro-batch is a RUNNING event with the rows it read from the topic and
  wrote to each table (the writers' :class:`~cdc.pipeline.batch.BatchStats`, through ``on_batch``:
  the same on both writers); the last event (COMPLETE, FAIL with the error, or ABORT when
  another query's failure stopped it) carries the rows of the whole run.
* With the delta-spark writer, the Spark agent reports each Spark job (the appends and
  the MERGE, with their schemas) as a child of the process run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cdc.config.settings import Settings
from cdc.lineage.datasets import batch_tables, stream_tables
from cdc.lineage.runs import (
    Lineage,
    LineageRun,
    RunHandle,
    ended_by_outcome,
    error_of,
    opened_lineage,
)
from cdc.lineage.spark_agent import attached_agent
from cdc.pipeline.batch import BatchStats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["StreamingLineage", "streaming_run"]

log = logging.getLogger(__name__)

BatchCallback = Callable[[str, BatchStats], None]


class StreamingLineage(RunHandle):
    """The runs of one ``cdc run``: the process and a query per pipeline (ended together, as
    one run handle)."""

    def __init__(self, lineage: Lineage, settings: Settings, names: Sequence[str]) -> None:
        self.process = lineage.run("run", processing="STREAMING", job_type="APPLICATION")
        self.tables = {name: stream_tables(settings, name) for name in names}
        self.queries: dict[str, LineageRun] = {
            name: lineage.run(
                f"stream.{name}",
                inputs=[topic],
                outputs=outputs.values(),
                parent=self.process.ref,
                processing="STREAMING",
                job_type="STREAMING_QUERY",
            )
            for name, (topic, outputs) in self.tables.items()
        }
        self.totals: dict[str, dict[Any, int]] = {name: {} for name in names}

    def start(self) -> None:
        """START of the process, then of each query."""
        self.process.start()
        for query in self.queries.values():
            query.start()

    def on_batch(self, name: str, stats: BatchStats) -> None:
        """A written micro-batch: RUNNING (never raises: the batch is committed)."""
        try:
            topic, outputs = self.tables[name]
            inputs, written = batch_tables(topic, outputs, stats)
            self.queries[name].running(inputs, written)
            totals = self.totals[name]
            for table in [*inputs, *written]:
                totals[table.id] = totals.get(table.id, 0) + (table.rows or 0)
            self.queries[name].count(totals)
        except Exception as exc:
            log.warning("lineage: pipeline %s batch %s not reported: %s", name, stats.batch_id, exc)

    def complete(self) -> None:
        """Every query, then the process: COMPLETE."""
        for query in self.queries.values():
            query.complete()
        self.process.complete()

    def abort(self) -> None:
        """Interrupted: ABORT."""
        for query in self.queries.values():
            query.abort()
        self.process.abort()

    def failed(self, exc: BaseException) -> None:
        """A query (``exc.pipeline``), or the start, failed: FAIL; the other queries, which
        its failure stopped, ABORT."""
        message, trace = error_of(exc)
        culprit = getattr(exc, "pipeline", None)
        for name, query in self.queries.items():
            if culprit is None or name == culprit:
                query.fail(message, trace)
            else:
                query.abort()
        self.process.fail(message, trace)


@contextmanager
def streaming_run(
    settings: Settings,
    names: Sequence[str],
    spark: Any = None,
    registry: CollectorRegistry | None = None,
) -> Iterator[BatchCallback | None]:
    """Run ``cdc run``'s queries inside their lineage runs (see the module docstring).

    Yields the ``on_batch`` feed of the RUNNING events (None when lineage is off).

    Args:
        settings: the service settings.
        names: the pipelines the process runs.
        spark: the driver's session (the Spark agent is attached to it on delta-spark).
        registry: where the emitter's counter goes (the service's metrics).

    Raises:
        ConfigError: lineage is on and its transport's settings are malformed.
    """
    with opened_lineage(settings, registry) as lineage:
        if lineage is None:
            yield None
            return
        stream = StreamingLineage(lineage, settings, names)
        stream.start()
        on_spark = spark if settings.lake.writer == "delta-spark" else None
        with attached_agent(on_spark, settings, stream.process.ref), ended_by_outcome(stream):
            yield stream.on_batch
