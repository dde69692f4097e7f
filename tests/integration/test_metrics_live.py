"""Metrics of a running pipeline, scraped by the test and by a real Prometheus.

The service's own wiring (``cdc run``'s :func:`cdc.cli._serve_metrics`: the endpoint and
Spark's query listener) on the session's SparkSession; the counters move as records flow,
the lag of each partition drains to zero, and a query that fails turns ``/readyz`` red.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from cdc.cli import _serve_metrics
from cdc.config.settings import Settings
from cdc.pipeline.queries import start_query
from cdc.runtime.kafka_admin import ensure_topic
from tests.support.endpoints import free_port, metric_samples
from tests.support.endpoints import http_get as _get
from tests.support.envelopes import change
from tests.support.kafka import delete_topic, produce
from tests.support.local_settings import make_settings
from tests.support.prometheus import prometheus_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PIPELINE = "crm_contacts"
TOPIC = "crm.contacts"
SELECT = f'{{pipeline="{PIPELINE}"}}'


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = _get(port, "/metrics")
    assert status == 200
    return metric_samples(text)


def _until(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _metered(bootstrap: str, root: Path, trigger: str) -> tuple[Settings, int]:
    """Local settings with the metrics endpoint on a free port, and the port."""
    port = free_port()
    settings = make_settings(
        bootstrap,
        root,
        f"spark.trigger_interval={trigger}",
        "metrics.enabled=true",
        f"metrics.port={port}",
    )
    return settings, port


def _contacts(start: int, n: int) -> list[dict[str, Any]]:
    return [change(f"c{i}", "c", 1000 * (i + 1), email=f"c{i}@x.io") for i in range(start, n)]


def test_a_running_pipeline_exports_moving_metrics_prometheus_records_them_and_readyz_fails(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    settings, port = _metered(fresh_kafka, tmp_path, "300 ms")
    ensure_topic(fresh_kafka, TOPIC, 3)
    produce(fresh_kafka, TOPIC, _contacts(0, 6), tmp_path)
    pipeline = (("pipeline", PIPELINE),)
    with ExitStack() as stack:
        metrics = _serve_metrics(settings, [PIPELINE], spark, stack)
        assert _get(port, "/healthz") == (200, "ok\n")
        assert _get(port, "/readyz") == (503, f"pipeline {PIPELINE} is not running\n")
        query = start_query(spark, settings, PIPELINE, False, on_batch=metrics.on_batch)
        stack.callback(lambda: query.stop() if query.isActive else None)

        def input_records() -> float:
            return _scrape(port).get(("cdc_input_records_total", pipeline), -1)

        _until(lambda: input_records() == 6, "the first six records in the metrics")
        _until(lambda: _get(port, "/readyz")[0] == 200, "readiness")
        got = _scrape(port)
        assert got[("cdc_bronze_records_total", pipeline)] == 6
        assert got[("cdc_scd2_rows_total", (("change", "inserted"), *pipeline))] == 6
        assert got[("cdc_query_active", pipeline)] == 1
        assert got[("cdc_query_starts_total", pipeline)] == 1
        assert time.time() - got[("cdc_last_batch_timestamp_seconds", pipeline)] < 120
        assert got[("cdc_batch_phase_seconds_count", (("phase", "merge"), *pipeline))] >= 1

        def lags() -> dict[str, float]:
            return {
                dict(labels)["partition"]: value
                for (name, labels), value in _scrape(port).items()
                if name == "cdc_consumer_lag_records"
            }

        _until(lambda: sorted(lags()) == ["0", "1", "2"], "a lag series per partition")
        _until(lambda: set(lags().values()) == {0.0}, "the lag to drain")

        with prometheus_server([f"127.0.0.1:{port}"], tmp_path) as prometheus:
            prometheus.wait_for(f"cdc_input_records_total{SELECT}", 6)
            produce(fresh_kafka, TOPIC, _contacts(6, 10), tmp_path)
            _until(lambda: input_records() == 10, "four more records in the metrics")
            prometheus.wait_for(f"cdc_input_records_total{SELECT}", 10)
            prometheus.wait_for(
                f'cdc_scd2_rows_total{{pipeline="{PIPELINE}",change="inserted"}}', 10
            )
            assert prometheus.value(f"cdc_query_active{SELECT}") == 1
            assert prometheus.value(f"sum(cdc_consumer_lag_records{SELECT})") is not None

        # The topic recreated under the running query: it stops, and readiness says why.
        delete_topic(fresh_kafka, TOPIC)
        ensure_topic(fresh_kafka, TOPIC, 1)
        produce(fresh_kafka, TOPIC, _contacts(20, 23), tmp_path)
        _until(lambda: not query.isActive, "the query to stop")
        _until(lambda: _get(port, "/readyz")[0] == 503, "readiness to fail")
        body = _get(port, "/readyz")[1]
        assert body.startswith(f"pipeline {PIPELINE} failed: "), body
        got = _scrape(port)
        assert got[("cdc_query_active", pipeline)] == 0
        assert got[("cdc_query_failures_total", pipeline)] == 1
    # The stack closed the endpoint.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_an_idle_caught_up_query_keeps_its_caught_up_time_fresh(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    """A query that finds no new record gets no progress event from Spark, only idle events
    (every ``spark.sql.streaming.noDataProgressEventInterval``): each one is "caught up now",
    so the freshness of a quiet pipeline does not age while nothing happens."""
    settings, port = _metered(fresh_kafka, tmp_path, "200 ms")
    ensure_topic(fresh_kafka, TOPIC, 1)
    produce(fresh_kafka, TOPIC, _contacts(0, 2), tmp_path)
    pipeline = (("pipeline", PIPELINE),)
    interval = "spark.sql.streaming.noDataProgressEventInterval"
    before = spark.conf.get(interval, None)

    def restore() -> None:
        if before is None:
            spark.conf.unset(interval)
        else:
            spark.conf.set(interval, before)

    spark.conf.set(interval, "500ms")  # read when the query starts
    with ExitStack() as stack:
        stack.callback(restore)
        metrics = _serve_metrics(settings, [PIPELINE], spark, stack)
        query = start_query(spark, settings, PIPELINE, False, on_batch=metrics.on_batch)
        stack.callback(lambda: query.stop() if query.isActive else None)

        def sample(name: str) -> float:
            return _scrape(port).get((name, pipeline), -1)

        _until(lambda: sample("cdc_input_records_total") == 2, "the two records in the metrics")
        batches = sample("cdc_batches_total")
        last_batch = sample("cdc_last_batch_timestamp_seconds")
        caught_up = sample("cdc_caught_up_timestamp_seconds")
        # No record arrives from here on: only idle triggers can move the caught-up time.
        for _ in range(3):
            previous = caught_up
            _until(
                lambda: sample("cdc_caught_up_timestamp_seconds") > previous,  # noqa: B023
                "an idle trigger to refresh the caught-up time",
                timeout=60,
            )
            caught_up = sample("cdc_caught_up_timestamp_seconds")
        assert caught_up > last_batch
        assert sample("cdc_batches_total") == batches  # no batch ran: the idle events did it
        assert sample("cdc_input_records_total") == 2
        assert query.isActive
