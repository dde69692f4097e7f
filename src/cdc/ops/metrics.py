"""Prometheus metrics, liveness and readiness of a running ``cdc run`` (on the driver).

:class:`ServiceMetrics` owns one registry of the service's metrics (labels of bounded
cardinality: pipeline, phase, reason, change, kind, topic and partition). Two feeds update it:

* the batch writers' :class:`~cdc.pipeline.batch.BatchStats` (through ``on_batch``): rows read,
  appended and quarantined by reason, SCD2 rows inserted/updated/closed, duplicates, commit
  retries, batch time by phase, the time of the last successful batch (freshness), SCD2
  invariant violations by kind (:mod:`cdc.ops.verify`), expectation failures by rule and action
  (:mod:`cdc.pipeline.expectations`; rules are the config's, so their labels stay bounded);
* Spark's :class:`StreamingQueryListener` events (:class:`QueryListener`): queries started,
  active and failed, rows per second, and the consumer lag of every topic-partition (the
  source's latest offsets against the batch's end offsets).

:class:`MetricsServer` serves ``/metrics`` (Prometheus text format), ``/healthz`` (the
process answers) and ``/readyz`` (every pipeline's query is active and the broker answers;
503 with the reason otherwise).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from cdc.config.settings import SlaSettings
from cdc.core.invariants import SCD2_KINDS
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.queries import error_line

# pyspark is imported where the Spark listener class is built: the metrics and their unit
# tests need no JVM otherwise.

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["METRIC_NAMES", "PHASES", "MetricsServer", "QueryListener", "ServiceMetrics"]

log = logging.getLogger(__name__)

# ``*_created`` series (a start time per labelled counter) double the series count and no
# dashboard or alert of the service reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

PHASES = ("read", "bronze", "state", "fold", "merge", "check")
"""The steps of a batch (see :attr:`cdc.pipeline.batch.BatchStats.phases`)."""

_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

METRIC_NAMES = (
    "cdc_input_records_total",
    "cdc_bronze_records_total",
    "cdc_quarantined_records_total",
    "cdc_scd2_rows_total",
    "cdc_duplicate_events_total",
    "cdc_commit_retries_total",
    "cdc_batches_total",
    "cdc_batch_duration_seconds",
    "cdc_batch_phase_seconds",
    "cdc_last_batch_timestamp_seconds",
    "cdc_last_record_timestamp_seconds",
    "cdc_caught_up_timestamp_seconds",
    "cdc_input_records_per_second",
    "cdc_consumer_lag_records",
    "cdc_query_active",
    "cdc_query_starts_total",
    "cdc_query_failures_total",
    "cdc_broker_up",
    "cdc_sla_freshness_seconds",
    "cdc_sla_no_records_seconds",
    "cdc_sla_quarantine_ratio",
    "cdc_scd2_invariant_violations_total",
    "cdc_scd2_invariant_last_check_violations",
    "cdc_expectation_failures_total",
    "cdc_unavailable_values_total",
    "cdc_lineage_events_total",
)
"""Every metric the service exports (``cdc_lineage_events_total``: :mod:`cdc.lineage`, when
lineage is on; histograms add ``_bucket``, ``_sum`` and ``_count``;
counters are exposed with their ``_total`` name)."""


class ServiceMetrics:
    """The service's metrics, in a registry of their own."""

    def __init__(
        self,
        pipelines: Iterable[str],
        registry: CollectorRegistry | None = None,
        sla: Mapping[str, SlaSettings] | None = None,
    ):
        """Create the metrics; every pipeline's series exist from the start (at zero).

        Args:
            pipelines: the pipelines this process runs.
            registry: where to register (default: a new one).
            sla: each pipeline's service levels, exported for the alert rules to compare
                with (default: :class:`~cdc.config.settings.SlaSettings` defaults).
        """
        pipelines = list(pipelines)
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = ["pipeline"]
        self.input_records = Counter("cdc_input_records", "Records read from Kafka.", p, registry=r)
        self.bronze_records = Counter(
            "cdc_bronze_records", "Valid records appended to bronze.", p, registry=r
        )
        self.quarantined = Counter(
            "cdc_quarantined_records",
            "Invalid records appended to quarantine, by reason (error code).",
            [*p, "reason"],
            registry=r,
        )
        self.unavailable_values = Counter(
            "cdc_unavailable_values",
            "Change events whose column held a placeholder for an unchanged value (a TOASTed"
            " PostgreSQL column: docs/scd2.md, Unchanged values), by column.",
            [*p, "column"],
            registry=r,
        )
        self.scd2_rows = Counter(
            "cdc_scd2_rows",
            "Silver rows written: change is inserted, updated (a current row replaced) or"
            " closed (a history interval ended).",
            [*p, "change"],
            registry=r,
        )
        self.duplicates = Counter(
            "cdc_duplicate_events", "Change events silver already held (no-ops).", p, registry=r
        )
        self.retries = Counter(
            "cdc_commit_retries",
            "MERGE attempts retried because another writer committed first.",
            p,
            registry=r,
        )
        self.batches = Counter("cdc_batches", "Micro-batches written.", p, registry=r)
        self.batch_seconds = Histogram(
            "cdc_batch_duration_seconds",
            "Wall time of a micro-batch, read to last commit.",
            p,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.phase_seconds = Histogram(
            "cdc_batch_phase_seconds",
            "Wall time of a micro-batch's phases (read, bronze, state, fold, merge, check).",
            [*p, "phase"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.last_batch = Gauge(
            "cdc_last_batch_timestamp_seconds",
            "Unix time the pipeline's last micro-batch finished its commits (freshness).",
            p,
            registry=r,
        )
        self.last_record = Gauge(
            "cdc_last_record_timestamp_seconds",
            "Unix time the pipeline last wrote a batch that held records.",
            p,
            registry=r,
        )
        self.caught_up = Gauge(
            "cdc_caught_up_timestamp_seconds",
            "Unix time the pipeline was last caught up with its topic (no lag): data freshness.",
            p,
            registry=r,
        )
        sla_gauges = {
            "freshness_seconds": Gauge(
                "cdc_sla_freshness_seconds",
                "SLA: longest time the pipeline may go without being caught up.",
                p,
                registry=r,
            ),
            "no_records_seconds": Gauge(
                "cdc_sla_no_records_seconds",
                "SLA: longest time the pipeline may go without reading a record.",
                p,
                registry=r,
            ),
            "quarantine_ratio": Gauge(
                "cdc_sla_quarantine_ratio",
                "SLA: largest share of records quarantined over five minutes.",
                p,
                registry=r,
            ),
        }
        self.rows_per_second = Gauge(
            "cdc_input_records_per_second",
            "Records per second the last micro-batch processed (Spark's progress).",
            p,
            registry=r,
        )
        self.lag = Gauge(
            "cdc_consumer_lag_records",
            "Offsets between the end of the last micro-batch and the partition's latest offset.",
            [*p, "topic", "partition"],
            registry=r,
        )
        self.active = Gauge(
            "cdc_query_active", "1 while the pipeline's streaming query runs.", p, registry=r
        )
        self.starts = Counter("cdc_query_starts", "Streaming queries started.", p, registry=r)
        self.failures = Counter(
            "cdc_query_failures", "Streaming queries that stopped with an error.", p, registry=r
        )
        self.broker_up = Gauge(
            "cdc_broker_up", "1 when the last readiness probe reached the broker.", registry=r
        )
        self.invariant_violations = Counter(
            "cdc_scd2_invariant_violations",
            "SCD2 invariant violations found in the keys a batch touched, by kind (a violation"
            " is counted again by each later batch that touches its key).",
            [*p, "kind"],
            registry=r,
        )
        self.invariant_last_check = Gauge(
            "cdc_scd2_invariant_last_check_violations",
            "SCD2 invariant violations the pipeline's last after-batch check found (0: sound).",
            p,
            registry=r,
        )
        self.expectation_failures = Counter(
            "cdc_expectation_failures",
            "Records that failed a data-quality expectation, by rule and action (warn: counted,"
            " drop: quarantined); a fail rule stops the query instead.",
            [*p, "rule", "action"],
            registry=r,
        )
        self._lock = threading.Lock()
        self._errors: dict[str, str] = {}
        for name in pipelines:
            for counter in (self.input_records, self.bronze_records, self.duplicates):
                counter.labels(name)
            for counter in (self.retries, self.batches, self.starts, self.failures):
                counter.labels(name)
            for change in ("inserted", "updated", "closed"):
                self.scd2_rows.labels(name, change)
            for kind in SCD2_KINDS:
                self.invariant_violations.labels(name, kind)
            self.active.labels(name).set(0)
            levels = (sla or {}).get(name) or SlaSettings()
            for key, gauge in sla_gauges.items():
                gauge.labels(name).set(float(getattr(levels, key)))

    # ------------------------------------------------------------------------- feeds

    def on_batch(self, name: str, stats: BatchStats) -> None:
        """Record one written micro-batch (the writers' ``on_batch`` callback)."""
        self.input_records.labels(name).inc(stats.input_rows)
        self.bronze_records.labels(name).inc(stats.bronze_rows)
        for reason, count in stats.quarantine_reasons.items():
            self.quarantined.labels(name, reason).inc(count)
        self.scd2_rows.labels(name, "inserted").inc(stats.inserted)
        self.scd2_rows.labels(name, "updated").inc(stats.updated)
        self.scd2_rows.labels(name, "closed").inc(stats.closed)
        self.duplicates.labels(name).inc(stats.duplicates)
        self.retries.labels(name).inc(stats.retries)
        self.batches.labels(name).inc()
        self.batch_seconds.labels(name).observe(stats.seconds)
        for phase, seconds in stats.phases.items():
            self.phase_seconds.labels(name, phase).observe(seconds)
        self.last_batch.labels(name).set(time.time())
        if stats.input_rows:
            self.last_record.labels(name).set(time.time())
        if stats.invariant_violations is not None:
            for kind, count in stats.invariant_violations.items():
                self.invariant_violations.labels(name, kind).inc(count)
            self.invariant_last_check.labels(name).set(sum(stats.invariant_violations.values()))
        for column, count in stats.unavailable_values.items():
            self.unavailable_values.labels(name, column).inc(count)
        for rule, per_action in stats.expectation_failures.items():
            for action, count in per_action.items():
                self.expectation_failures.labels(name, rule, action).inc(count)

    def query_started(self, name: str) -> None:
        """A pipeline's query started (its freshness is counted from now)."""
        self.starts.labels(name).inc()
        now = time.time()
        self.caught_up.labels(name).set(now)
        self.last_record.labels(name).set(now)
        self.active.labels(name).set(1)
        with self._lock:
            self._errors.pop(name, None)

    def query_stopped(self, name: str, error: str | None) -> None:
        """A pipeline's query stopped (``error``: why it failed; None: stopped or drained)."""
        self.active.labels(name).set(0)
        if error is not None:
            self.failures.labels(name).inc()
            with self._lock:
                self._errors[name] = error

    def query_progress(self, name: str, progress: dict[str, Any]) -> None:
        """Rows per second and per-partition lag from a query progress (Spark's JSON)."""
        rate = progress.get("processedRowsPerSecond")
        if rate is not None:
            self.rows_per_second.labels(name).set(float(rate))
        behind = 0
        for source in progress.get("sources") or []:
            for (topic, partition), lag in consumer_lag(source).items():
                self.lag.labels(name, topic, str(partition)).set(lag)
                behind += lag
        if behind == 0:
            self.caught_up.labels(name).set(time.time())

    def query_idle(self, name: str) -> None:
        """The query found no new record: it is caught up."""
        self.caught_up.labels(name).set(time.time())

    def failures_by_pipeline(self) -> dict[str, str]:
        """The error of every pipeline whose query failed (for ``/readyz``)."""
        with self._lock:
            return dict(self._errors)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return bytes(generate_latest(self.registry))


def consumer_lag(source: dict[str, Any]) -> dict[tuple[str, int], int]:
    """Per topic-partition, latest offset minus the batch's end offset (Spark source progress).

    Spark's Kafka source reports ``endOffset`` and ``latestOffset`` as JSON text (or
    objects) ``{topic: {"<partition>": offset}}``; a partition missing from ``endOffset``
    (new, not read yet) lags by its whole latest offset.
    """
    end, latest = _offsets(source.get("endOffset")), _offsets(source.get("latestOffset"))
    return {
        (topic, partition): max(0, offset - end.get((topic, partition), 0))
        for (topic, partition), offset in latest.items()
    }


def _offsets(value: Any) -> dict[tuple[str, int], int]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    if not isinstance(value, dict):
        return {}
    out: dict[tuple[str, int], int] = {}
    for topic, partitions in value.items():
        if isinstance(partitions, dict):
            for partition, offset in partitions.items():
                if str(partition).lstrip("-").isdigit() and isinstance(offset, int):
                    out[(str(topic), int(partition))] = int(offset)
    return out


# ---------------------------------------------------------------------------------- Spark


def _listener_class() -> type:
    from pyspark.sql.streaming.listener import StreamingQueryListener

    class _Listener(StreamingQueryListener):  # type: ignore[misc]
        def __init__(self, metrics: ServiceMetrics) -> None:
            self.metrics = metrics
            self.names: dict[str, str] = {}

        def onQueryStarted(self, event: Any) -> None:
            if event.name:
                self.names[str(event.id)] = event.name
                self.metrics.query_started(event.name)

        def onQueryProgress(self, event: Any) -> None:
            progress = event.progress
            if progress.name:
                self.metrics.query_progress(progress.name, json.loads(progress.json))

        def onQueryIdle(self, event: Any) -> None:
            # Spark posts no progress event for a trigger that finds no new record, only
            # this one (every spark.sql.streaming.noDataProgressEventInterval, 10 s by
            # default): an idle query is caught up, and its freshness must not age.
            name = self.names.get(str(event.id))
            if name is not None:
                self.metrics.query_idle(name)

        def onQueryTerminated(self, event: Any) -> None:
            name = self.names.pop(str(event.id), None)
            if name is not None:
                error = event.exception
                self.metrics.query_stopped(name, _first_line(error) if error else None)

    return _Listener


def _first_line(text: str) -> str:
    return error_line(text) or text.strip().splitlines()[0]


class QueryListener:
    """Feeds :class:`ServiceMetrics` from Spark's streaming query events."""

    def __init__(self, spark: SparkSession, metrics: ServiceMetrics) -> None:
        """Register the listener on ``spark`` (remove it with :meth:`close`)."""
        self._spark = spark
        self._listener = _listener_class()(metrics)
        spark.streams.addListener(self._listener)

    def close(self) -> None:
        """Unregister the listener."""
        self._spark.streams.removeListener(self._listener)


# ----------------------------------------------------------------------------- HTTP


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a background thread."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        host: str,
        port: int,
        broker_up: Callable[[], bool],
        broker_check_s: float = 5.0,
    ) -> None:
        """Bind the server (port 0: any free port, see :attr:`port`).

        Args:
            metrics: what ``/metrics`` exposes and ``/readyz`` judges by.
            host: interface to bind.
            port: TCP port.
            broker_up: probe of the broker (True when it answers); called at most once per
                ``broker_check_s`` (its answer is cached between).
            broker_check_s: how long a probe's answer is reused.

        Raises:
            OSError: the port cannot be bound.
        """
        self.metrics = metrics
        self._broker_up = broker_up
        self._broker_check_s = broker_check_s
        self._broker_checked = (-float("inf"), False)
        self._probe_lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, content_type = server.respond(self.path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics endpoint: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="cdc-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._httpd.server_address[1])

    def start(self) -> MetricsServer:
        """Serve on a daemon thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def broker_reachable(self) -> bool:
        """The broker probe's answer, at most ``broker_check_s`` old."""
        with self._probe_lock:
            checked_at, up = self._broker_checked
            if time.monotonic() - checked_at >= self._broker_check_s:
                try:
                    up = bool(self._broker_up())
                except Exception as exc:  # a probe must never take the endpoint down
                    log.debug("broker probe failed: %s", exc)
                    up = False
                self._broker_checked = (time.monotonic(), up)
                self.metrics.broker_up.set(1 if up else 0)
            return up

    def respond(self, path: str) -> tuple[int, bytes, str]:
        """Status, body and content type for a GET of ``path``."""
        route = path.split("?", 1)[0]
        text = "text/plain; charset=utf-8"
        if route == "/metrics":
            self.broker_reachable()
            return 200, self.metrics.exposition(), CONTENT_TYPE_LATEST
        if route == "/healthz":
            return 200, b"ok\n", text
        if route == "/readyz":
            problems = [
                f"pipeline {name} failed: {error}"
                for name, error in sorted(self.metrics.failures_by_pipeline().items())
            ]
            inactive = [
                name
                for name, value in _gauge_values(self.metrics.active).items()
                if value == 0 and name not in self.metrics.failures_by_pipeline()
            ]
            problems += [f"pipeline {name} is not running" for name in sorted(inactive)]
            if not self.broker_reachable():
                problems.append("the Kafka broker does not answer")
            if problems:
                return 503, ("\n".join(problems) + "\n").encode(), text
            return 200, b"ready\n", text
        return 404, b"not found: try /metrics, /healthz or /readyz\n", text


def _gauge_values(gauge: Gauge) -> dict[str, float]:
    """A one-label gauge's value per label."""
    values: dict[str, float] = {}
    for family in gauge.collect():
        for sample in family.samples:
            values[next(iter(sample.labels.values()))] = float(sample.value)
    return values
