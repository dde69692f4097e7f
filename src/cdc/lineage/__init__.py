"""OpenLineage emission: what every run read and wrote.

This package owns the service's lineage: dataset names (:mod:`~cdc.lineage.naming`: one
scheme, the namespace from the lake URI and the name from the table path, Kafka and the
warehouses as OpenLineage's naming spec says, agreeing with the Spark agent), run events
built as pure functions (:mod:`~cdc.lineage.events`), their sending on a background thread
through ``openlineage-python``'s client with the transport of ``lineage:`` (:mod:`~cdc.
lineage.emitter`: never blocks, failures counted in ``cdc_lineage_events_total`` and logged
once per interval), the runs (:mod:`~cdc.lineage.runs`: START, RUNNING, COMPLETE, FAIL,
ABORT; :func:`companion_run` for the companion commands; :mod:`~cdc.lineage.streaming` for
``cdc run``'s queries and micro-batches), what each run reads and writes
(:mod:`~cdc.lineage.datasets`) and the OpenLineage Spark agent attached to a run's session
(:mod:`~cdc.lineage.spark_agent`). It may import :mod:`cdc.config.settings`, :mod:`cdc.errors`,
:mod:`cdc.runtime.logs`, :mod:`cdc.runtime.jvm`, :mod:`cdc.config.lake`, :mod:`cdc.pipeline.batch`
(the batch stats), the gold tables' declarations, the governance catalog (table schemas), the
warehouses' DSN parsing, ``openlineage-python`` and ``prometheus_client``; nothing imports it but
the CLI.
"""

from __future__ import annotations

from cdc.lineage.emitter import Emitter, LineageMetrics
from cdc.lineage.naming import DatasetId, kafka_dataset, table_dataset
from cdc.lineage.runs import NO_RUN, Lineage, LineageRun, RunHandle, companion_run, open_lineage
from cdc.lineage.streaming import streaming_run

__all__ = [
    "NO_RUN",
    "DatasetId",
    "Emitter",
    "Lineage",
    "LineageMetrics",
    "LineageRun",
    "RunHandle",
    "companion_run",
    "kafka_dataset",
    "open_lineage",
    "streaming_run",
    "table_dataset",
]
